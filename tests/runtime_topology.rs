//! A two-stage topology with a global table, run live against the real broker: the first
//! sub-topology looks records up in a global table and repartitions them through an internal
//! topic to the second, which keeps totals in a store.

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use herald_engine::{
    kafka::{apply_topology, TopicOutcome},
    runtime::{
        replay::{self, ReplayInput, ReplayOptions, ReplaySink},
        LiveRuntime, ProcessError, Processor, ProcessorContext, RuntimeConfig, ShutdownFlag,
        SourceRecord, StreamTopology, TaskId,
    },
    topology::{CleanupPolicy, TopicSpec, Topology},
};
use rdkafka::consumer::{BaseConsumer, Consumer};

/// `<currency>:<amount>` → amount × rate of the currency (global table), keyed by currency.
struct Convert {
    internal: String,
    global_changes: Arc<AtomicUsize>,
}

impl Processor for Convert {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError> {
        let text = std::str::from_utf8(record.value.unwrap_or_default())
            .map_err(|e| ProcessError::reject(e.to_string()))?;
        let (currency, amount) =
            text.split_once(':').ok_or_else(|| ProcessError::reject("expected currency:amount"))?;
        let rate = ctx
            .global("rates")
            .and_then(|rates| rates.get(currency.as_bytes()))
            .ok_or_else(|| ProcessError::reject(format!("no rate for {currency}")))?;
        let rate: i64 = std::str::from_utf8(rate).unwrap().parse().unwrap();
        let amount: i64 = amount.parse().map_err(|_| ProcessError::reject("bad amount"))?;
        ctx.send(&self.internal, currency.as_bytes(), (amount * rate).to_string().as_bytes())?;
        Ok(())
    }

    fn on_global_change(&mut self, table: &str, _key: &[u8], _value: Option<&[u8]>) {
        assert_eq!(table, "rates");
        self.global_changes.fetch_add(1, Ordering::SeqCst);
    }
}

/// Running total per currency.
struct Total {
    output: String,
}

impl Processor for Total {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError> {
        let key = record.key.unwrap_or_default();
        let value: i64 =
            std::str::from_utf8(record.value.unwrap_or_default()).unwrap().parse().unwrap();
        let mut totals = ctx.store("totals")?;
        let total = totals.get_as::<i64>(key)?.unwrap_or(0) + value;
        totals.put_as(key, &total)?;
        ctx.send(&self.output, key, total.to_string().as_bytes())?;
        Ok(())
    }
}

#[test]
fn global_table_lookups_and_repartitioning_feed_a_second_stateful_stage() {
    let rates = common::unique("rates");
    let input = common::unique("payments");
    let internal = common::unique("by-currency");
    let output = common::unique("totals");
    let dead_letters = common::unique("pipeline-dlq");
    common::create_topics(&[
        (&rates, 1),
        (&input, 2),
        (&internal, 3),
        (&output, 3),
        (&dead_letters, 1),
    ]);
    common::produce(
        &rates,
        [("EUR".to_string(), b"2".to_vec()), ("USD".to_string(), b"1".to_vec())],
    );

    let global_changes = Arc::new(AtomicUsize::new(0));
    let topology = StreamTopology::builder(common::unique("pipeline"))
        .dead_letter_topic(&dead_letters)
        .global_table("rates", &rates)
        .sub_topology(
            "convert",
            {
                let (internal, changes) = (internal.clone(), Arc::clone(&global_changes));
                move |_| Convert {
                    internal: internal.clone(),
                    global_changes: Arc::clone(&changes),
                }
            },
            |s| s.source(&input).sink(&internal),
        )
        .sub_topology(
            "total",
            {
                let output = output.clone();
                move |_| Total { output: output.clone() }
            },
            |s| s.source(&internal).store("totals").sink(&output),
        )
        .build()
        .unwrap();
    let topology_for_replay = topology.clone();
    let state = tempfile::tempdir().unwrap();
    let shutdown = ShutdownFlag::default();
    let runtime = {
        let shutdown = shutdown.clone();
        let config = RuntimeConfig::new(common::kafka(), "a", state.path());
        std::thread::spawn(move || LiveRuntime::new(topology, config).run(&shutdown))
    };

    common::produce(
        &input,
        [("u1", "EUR:10"), ("u2", "USD:5"), ("u3", "EUR:1"), ("u4", "GBP:3")]
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())),
    );
    let totals = |expected: usize| {
        let mut last = BTreeMap::new();
        let records = common::read_committed(
            &output,
            expected,
            Duration::from_secs(2),
            Duration::from_secs(60),
        );
        for r in &records {
            last.insert(
                String::from_utf8(r.key.clone()).unwrap(),
                String::from_utf8(r.value.clone().unwrap()).unwrap(),
            );
        }
        (records.len(), last)
    };
    let (count, last) = totals(3);
    assert_eq!(count, 3);
    assert_eq!(
        last,
        BTreeMap::from([
            ("EUR".to_string(), "22".to_string()),
            ("USD".to_string(), "5".to_string())
        ])
    );
    let letters =
        common::read_committed(&dead_letters, 1, Duration::from_secs(1), Duration::from_secs(30));
    assert_eq!(letters.len(), 1, "GBP has no rate yet: rejected");

    // The global table changes while running; new records see the new rate.
    common::produce(&rates, [("GBP".to_string(), b"3".to_vec())]);
    std::thread::sleep(Duration::from_secs(2));
    common::produce(&input, [("u5".to_string(), b"GBP:3".to_vec())]);
    let (count, last) = totals(4);
    shutdown.request();
    runtime.join().unwrap().unwrap();

    assert_eq!(count, 4);
    assert_eq!(last["GBP"], "9");
    assert!(
        global_changes.load(Ordering::SeqCst) >= 1,
        "tasks are told about global table changes"
    );

    // Replaying the same topics on event time into shadow topics reproduces the live outputs.
    let prefix = format!("{}-", common::unique("shadow"));
    let summary = replay::run(
        &topology_for_replay,
        ReplayInput::Topics {
            kafka: common::kafka(),
            topics: vec![rates.clone(), input.clone()],
            from_ms: None,
            until_ms: None,
        },
        ReplaySink::ShadowTopics { kafka: common::kafka(), prefix: prefix.clone() },
        &ReplayOptions::default(),
    )
    .unwrap();
    assert_eq!(summary.records_in, 8, "3 rates and 5 payments");
    let shadow = common::read_committed(
        &format!("{prefix}{output}"),
        4,
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    let replayed: Vec<(String, String)> = shadow
        .iter()
        .map(|r| {
            (
                String::from_utf8(r.key.clone()).unwrap(),
                String::from_utf8(r.value.clone().unwrap()).unwrap(),
            )
        })
        .collect();
    assert_eq!(replayed.len(), 4);
    assert!(replayed.contains(&("GBP".to_string(), "9".to_string())), "{replayed:?}");
    assert!(replayed.contains(&("EUR".to_string(), "22".to_string())), "{replayed:?}");
    let shadow_letters = common::read_committed(
        &format!("{prefix}{dead_letters}"),
        1,
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    assert_eq!(shadow_letters.len(), 1, "the replay rejects u4 like the live run");
}

/// Sends each input record through the repartition topic `internal`, and what it reads there to
/// `output`.
struct Forward {
    internal: String,
    output: String,
}

impl Processor for Forward {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError> {
        let to = if record.topic == self.internal { &self.output } else { &self.internal };
        ctx.send(to, record.key.unwrap_or_default(), record.value.unwrap_or_default())?;
        Ok(())
    }
}

#[test]
fn a_repartition_topic_keeps_records_stamped_days_ago_until_its_tasks_committed_past_them() {
    let input = common::unique("purge-in");
    let internal = common::unique("purge-by-key");
    let output = common::unique("purge-out");
    let dead_letters = common::unique("purge-dlq");
    common::create_topics(&[(&input, 2), (&output, 2), (&dead_letters, 1)]);
    let topology = StreamTopology::builder(common::unique("purge"))
        .dead_letter_topic(&dead_letters)
        .sub_topology(
            "forward",
            {
                let (internal, output) = (internal.clone(), output.clone());
                move |_| Forward { internal: internal.clone(), output: output.clone() }
            },
            |s| s.source(&input).repartition(&internal).sink(&output),
        )
        .build()
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let shutdown = ShutdownFlag::default();
    let runtime = {
        let shutdown = shutdown.clone();
        let mut config = RuntimeConfig::new(common::kafka(), "a", state.path());
        config.purge_interval = Duration::from_millis(200);
        std::thread::spawn(move || LiveRuntime::new(topology, config).run(&shutdown))
    };
    // Stamped two days ago (an SDK batch of a device offline that long): the repartition
    // records carry that time, so a day's retention deletes them at the broker's next check.
    let stamped = common::now_ms() - 2 * 86_400_000;
    let keys: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    common::produce_at(
        &input,
        keys.iter().map(|k| (k.clone(), k.clone().into_bytes(), Some(stamped))),
    );
    let forwarded =
        common::read_committed(&output, 6, Duration::from_secs(1), Duration::from_secs(60));
    let mut got: Vec<String> =
        forwarded.iter().map(|r| String::from_utf8(r.key.clone()).unwrap()).collect();
    got.sort();
    assert_eq!(got, keys, "every record went through the repartition topic");

    let retention = retention_ms(&internal, 2);
    assert_eq!(retention, "-1", "the instance created {internal} keeping records by time");
    let purged = purged_within(&internal, 2, Duration::from_secs(30));
    shutdown.request();
    runtime.join().unwrap().unwrap();
    assert_eq!(purged, Ok(()), "consumed records of {internal} were not deleted");
    let left = common::read_committed(&internal, 0, Duration::from_secs(1), Duration::from_secs(5));
    assert!(left.is_empty(), "{} consumed records left in {internal}", left.len());
}

#[test]
fn a_topic_marked_internal_is_purged_and_its_time_retention_is_warned_about_at_start() {
    let input = common::unique("marked-in");
    let flow = common::unique("marked-flow");
    let output = common::unique("marked-out");
    let dead_letters = common::unique("marked-dlq");
    common::create_topics(&[(&input, 1), (&output, 1), (&dead_letters, 1)]);
    // Created as deployments before retention -1 had it: a day.
    assert_eq!(apply_one(&flow, 1, 86_400_000), TopicOutcome::Created);
    let forward = {
        let (flow, output) = (flow.clone(), output.clone());
        move |_: TaskId| Forward { internal: flow.clone(), output: output.clone() }
    };
    let topology = StreamTopology::builder(common::unique("marked"))
        .dead_letter_topic(&dead_letters)
        .sub_topology("first", forward.clone(), |s| s.source(&input).sink(&flow))
        .sub_topology("second", forward, |s| s.source(&flow).sink(&output))
        .internal_topic(&flow)
        .build()
        .unwrap();
    let logs = Captured::default();
    let state = tempfile::tempdir().unwrap();
    let shutdown = ShutdownFlag::default();
    let runtime = {
        let (shutdown, logs) = (shutdown.clone(), logs.clone());
        let mut config = RuntimeConfig::new(common::kafka(), "a", state.path());
        config.purge_interval = Duration::from_millis(200);
        std::thread::spawn(move || {
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || logs.clone())
                .finish();
            let _logging = tracing::subscriber::set_default(subscriber);
            LiveRuntime::new(topology, config).run(&shutdown)
        })
    };
    common::produce(&input, ["a", "b", "c"].map(|k| (k.to_string(), k.as_bytes().to_vec())));
    let forwarded =
        common::read_committed(&output, 3, Duration::from_secs(1), Duration::from_secs(60));
    assert_eq!(forwarded.len(), 3, "every record went through {flow}");
    let purged = purged_within(&flow, 1, Duration::from_secs(30));
    shutdown.request();
    runtime.join().unwrap().unwrap();
    assert_eq!(purged, Ok(()), "consumed records of {flow} were not deleted");
    let logs = logs.text();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("internal topic deletes records by time"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning, about {flow}'s retention, in:\n{logs}");
    assert!(
        warnings[0].contains(&format!("topic={flow}"))
            && warnings[0].contains("retention_ms=86400000")
            && warnings[0].contains(&format!("--entity-name {flow} --add-config retention.ms=-1")),
        "{}",
        warnings[0]
    );
}

/// Log output of a test's runtime thread.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Polls for up to `limit` until each of `topic`'s `partitions` with records has its records
/// deleted (its low watermark at the last commit marker: high watermark - 1); the (low, high)
/// watermarks of each partition otherwise.
fn purged_within(topic: &str, partitions: i32, limit: Duration) -> Result<(), Vec<(i64, i64)>> {
    let consumer: BaseConsumer = common::kafka().client_config().create().unwrap();
    let bounds = || {
        (0..partitions)
            .map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap())
            .collect::<Vec<(i64, i64)>>()
    };
    let purged =
        |bounds: &[(i64, i64)]| bounds.iter().all(|(low, high)| *high == 0 || *low == high - 1);
    match common::poll_until(limit, || purged(&bounds())) {
        true => Ok(()),
        false => Err(bounds()),
    }
}

/// `topic`'s `retention.ms` (`partitions` partitions), as the broker describes it.
fn retention_ms(topic: &str, partitions: i32) -> String {
    match apply_one(topic, partitions, -1) {
        TopicOutcome::Differs(drift) => drift
            .iter()
            .find(|d| d.setting == "retention.ms")
            .map_or_else(|| "-1".to_string(), |d| d.actual.clone()),
        TopicOutcome::Matches => "-1".to_string(),
        TopicOutcome::Created => panic!("{topic} did not exist"),
    }
}

/// Creates `topic` (`partitions` partitions, deleted after `retention_ms`) when missing;
/// otherwise compares it with those settings (`herald topics apply`).
fn apply_one(topic: &str, partitions: i32, retention_ms: i64) -> TopicOutcome {
    let spec = Topology {
        replication_factor: 1,
        topics: vec![TopicSpec {
            name: topic.to_string(),
            partitions,
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: Some(retention_ms),
            description: String::new(),
            configs: Default::default(),
        }],
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = runtime.block_on(apply_topology(&common::kafka(), &spec)).unwrap();
    report.topics.into_iter().next().unwrap().1
}

#[test]
fn the_runtime_refuses_to_start_and_names_a_missing_sink_topic() {
    let input = common::unique("present-in");
    let dead_letters = common::unique("present-dlq");
    let output = common::unique("missing-out");
    common::create_topics(&[(&input, 1), (&dead_letters, 1)]);
    let topology = herald_engine::runtime::example::counting_topology(
        &common::unique("missing-sink"),
        &input,
        &output,
    )
    .unwrap()
    .with_dead_letter_topic(&dead_letters);
    let state = tempfile::tempdir().unwrap();
    let config = RuntimeConfig::new(common::kafka(), "a", state.path());
    let error = run_error(topology, config, &format!("started without its sink topic {output}"));
    assert!(
        error.contains(&format!("missing topics: {output} (written by count)")),
        "the error names the missing sink: {error}"
    );
    assert!(!error.contains(&input), "present topics are not reported: {error}");
}

#[test]
fn a_session_timeout_the_broker_refuses_stops_the_runtime_with_an_error_that_says_so() {
    // The broker's group.min.session.timeout.ms is 6 s by default: 3 s is refused at JoinGroup.
    let input = common::unique("session-in");
    let output = common::unique("session-out");
    let dead_letters = common::unique("session-dlq");
    common::create_topics(&[(&input, 1), (&output, 1), (&dead_letters, 1)]);
    let topology = herald_engine::runtime::example::counting_topology(
        &common::unique("session"),
        &input,
        &output,
    )
    .unwrap()
    .with_dead_letter_topic(&dead_letters);
    let state = tempfile::tempdir().unwrap();
    let mut kafka = common::kafka();
    kafka.properties.insert("session.timeout.ms".into(), "3000".into());
    let config = RuntimeConfig::new(kafka, "a", state.path());
    let error = run_error(topology, config, "kept retrying a refused session timeout");
    assert!(
        error.contains("session timeout") && error.contains("group.min.session.timeout.ms"),
        "the error says what the broker refused: {error}"
    );
}

/// The error `topology` run live with `config` stops with within a minute; panics saying the
/// runtime `failed_to` do so otherwise.
fn run_error(topology: StreamTopology, config: RuntimeConfig, failed_to: &str) -> String {
    let shutdown = ShutdownFlag::default();
    let (done, result) = std::sync::mpsc::channel();
    {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            done.send(LiveRuntime::new(topology, config).run(&shutdown).map_err(|e| e.to_string()))
        });
    }
    let outcome = result.recv_timeout(Duration::from_secs(60));
    shutdown.request();
    match outcome {
        Ok(Err(error)) => error,
        other => panic!("the runtime {failed_to}: {other:?}"),
    }
}
