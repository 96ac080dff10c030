//! The runtime's guarantees against the real broker, with the example counting topology
//! (`herald example count`): exactly-once across SIGKILLs, state handed over on rebalance,
//! dead letters for bad input; and, in-process, the guard of a processing loop blocked inside
//! one step.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{free_port, http_get, Consumed, Rng};
use herald_engine::{
    model::{DeadLetter, SchemaRegistry},
    runtime::{
        LiveRuntime, ProcessError, Processor, ProcessorContext, RuntimeConfig, ShutdownFlag,
        SourceRecord, StreamTopology,
    },
};

/// Topics and settings of one scenario.
struct Scenario {
    input: String,
    output: String,
    dead_letters: String,
    app_id: String,
    state: tempfile::TempDir,
}

impl Scenario {
    fn new(name: &str, partitions: i32) -> Self {
        let scenario = Self {
            input: common::unique(&format!("{name}-in")),
            output: common::unique(&format!("{name}-out")),
            dead_letters: common::unique(&format!("{name}-dlq")),
            app_id: common::unique(name),
            state: tempfile::tempdir().unwrap(),
        };
        common::create_topics(&[
            (&scenario.input, partitions),
            (&scenario.output, partitions),
            (&scenario.dead_letters, 1),
        ]);
        scenario
    }

    fn spawn(&self, instance: &str) -> std::process::Child {
        self.spawn_with(instance, &[])
    }

    fn spawn_with(&self, instance: &str, extra: &[&str]) -> std::process::Child {
        self.spawn_as(instance, instance, extra)
    }

    /// An instance keeping its state in `<state>/<dir>`, with instance id `instance`.
    fn spawn_as(&self, dir: &str, instance: &str, extra: &[&str]) -> std::process::Child {
        let state_dir = self.state.path().join(dir);
        let mut args = vec![
            "--input",
            &self.input,
            "--output",
            &self.output,
            "--app-id",
            &self.app_id,
            "--dead-letter-topic",
            &self.dead_letters,
            "--instance-id",
            instance,
            "--state-dir",
            state_dir.to_str().unwrap(),
            "--transaction-timeout-ms",
            "5000",
        ];
        args.extend_from_slice(extra);
        common::spawn_counter(&args, &self.log())
    }

    fn log(&self) -> std::path::PathBuf {
        self.state.path().join("instances.log")
    }

    fn outputs(&self, expected: usize) -> Vec<Consumed> {
        common::read_committed(
            &self.output,
            expected,
            Duration::from_secs(3),
            Duration::from_secs(300),
        )
    }

    /// Counts per key in the RocksDB store of every task dir under `instance`'s state.
    fn store_counts(&self, instance: &str) -> BTreeMap<String, u64> {
        let app_dir = self.state.path().join(instance).join(&self.app_id);
        let mut counts = BTreeMap::new();
        for task in std::fs::read_dir(&app_dir).unwrap() {
            let db_path = task.unwrap().path().join("rocksdb");
            let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), &db_path).unwrap();
            let db = rocksdb::DB::open_cf_for_read_only(
                &rocksdb::Options::default(),
                &db_path,
                &families,
                false,
            )
            .unwrap();
            let cf = db.cf_handle("counts").unwrap();
            for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                let (key, value) = item.unwrap();
                let count: u64 = serde_json::from_slice(&value).unwrap();
                assert!(
                    counts.insert(String::from_utf8(key.to_vec()).unwrap(), count).is_none(),
                    "key in two tasks"
                );
            }
        }
        counts
    }
}

/// `records` inputs over `keys` keys: key `k{i % keys}`, value `v{i}`.
fn inputs(records: usize, keys: usize) -> Vec<(String, Vec<u8>)> {
    (0..records).map(|i| (format!("k{}", i % keys), format!("v{i}").into_bytes())).collect()
}

/// Asserts that the outputs are exactly one `v{i}:{n}` per input, with per-key counts 1..=n.
fn assert_exactly_once(outputs: &[Consumed], records: usize, keys: usize, log: &Path) {
    let mut seen_values = HashMap::new();
    let mut counts_per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for output in outputs {
        let key = String::from_utf8(output.key.clone()).unwrap();
        let text = String::from_utf8(output.value.clone().unwrap()).unwrap();
        let (value, count) = text.rsplit_once(':').unwrap();
        *seen_values.entry(value.to_string()).or_insert(0) += 1;
        counts_per_key.entry(key).or_default().push(count.parse().unwrap());
    }
    let duplicates: Vec<_> = seen_values.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        duplicates.is_empty(),
        "duplicated outputs, e.g. {duplicates:?}\n{}",
        common::tail(log, 40)
    );
    let missing: Vec<_> = (0..records)
        .map(|i| format!("v{i}"))
        .filter(|v| !seen_values.contains_key(v))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "lost outputs, e.g. {missing:?} of {} seen\n{}",
        seen_values.len(),
        common::tail(log, 40)
    );
    assert_eq!(outputs.len(), records);
    for (key, mut counts) in counts_per_key {
        counts.sort_unstable();
        let expected: Vec<u64> = (1..=(records / keys) as u64).collect();
        assert_eq!(counts, expected, "counts of {key}");
    }
}

#[test]
fn sigkill_at_random_points_never_duplicates_or_loses_an_output() {
    const RECORDS: usize = 200_000;
    const KEYS: usize = 1_000;
    let scenario = Scenario::new("crash", 4);
    // The input arrives over several seconds while instances are started and killed.
    let input = scenario.input.clone();
    let producer = std::thread::spawn(move || {
        let all = inputs(RECORDS, KEYS);
        for chunk in all.chunks(RECORDS / 20) {
            common::produce(&input, chunk.to_vec());
            std::thread::sleep(Duration::from_millis(500));
        }
    });

    let seed = common::now_ms() as u64 | 1;
    let mut rng = Rng(seed);
    println!("crash test seed {seed}; instance log {}", scenario.log().display());
    // Each kill lands at a random moment after the instance has visibly resumed producing, so
    // it interrupts work in progress (restores, open transactions, pending commits).
    let mut progress = common::end_offsets(&scenario.output);
    let mut kills = 0;
    while kills < 6 {
        let instance = scenario.spawn("a");
        let resumed = (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            common::end_offsets(&scenario.output) > progress
        });
        assert!(resumed, "instance made no progress\n{}", common::tail(&scenario.log(), 40));
        std::thread::sleep(Duration::from_millis(rng.between(50, 1_500)));
        common::kill_hard(instance);
        kills += 1;
        progress = common::end_offsets(&scenario.output);
        println!("kill {kills}: output end offsets {progress}");
    }
    producer.join().unwrap();
    let instance = scenario.spawn("a");
    let outputs = scenario.outputs(RECORDS);
    common::stop_gracefully(instance);

    assert_exactly_once(&outputs, RECORDS, KEYS, &scenario.log());
    let counts = scenario.store_counts("a");
    assert_eq!(counts.len(), KEYS);
    assert!(
        counts.values().all(|c| *c == (RECORDS / KEYS) as u64),
        "store counts differ from inputs"
    );
}

#[test]
fn a_stopped_instances_partitions_and_state_move_to_the_survivor() {
    const RECORDS: usize = 40_000;
    const KEYS: usize = 200;
    let scenario = Scenario::new("rebalance", 4);
    let mut first = inputs(RECORDS, KEYS);
    let second = first.split_off(RECORDS / 2);

    let a = scenario.spawn("a");
    let b = scenario.spawn("b");
    common::produce(&scenario.input, first);
    // Both instances have processed and committed the first half.
    assert_eq!(scenario.outputs(RECORDS / 2).len(), RECORDS / 2);
    let b_tasks =
        std::fs::read_dir(scenario.state.path().join("b").join(&scenario.app_id)).unwrap().count();
    assert!(b_tasks > 0, "the second instance owned partitions before it stopped");
    common::kill_hard(b);
    common::produce(&scenario.input, second);
    let outputs = scenario.outputs(RECORDS);
    common::stop_gracefully(a);

    assert_exactly_once(&outputs, RECORDS, KEYS, &scenario.log());
    for task in std::fs::read_dir(scenario.state.path().join("a").join(&scenario.app_id)).unwrap() {
        let task = task.unwrap().path();
        assert!(
            task.join("checkpoint.json").exists(),
            "graceful stop checkpoints {}",
            task.display()
        );
    }
    let counts = scenario.store_counts("a");
    assert_eq!(counts.len(), KEYS, "the survivor holds every key's state");
    assert!(counts.values().all(|c| *c == (RECORDS / KEYS) as u64), "restored counts are exact");
}

#[test]
fn corrupt_records_go_to_the_dead_letter_topic_and_processing_continues() {
    let scenario = Scenario::new("dlq", 1);
    let mut records = inputs(10, 2);
    records.insert(4, ("k0".into(), vec![0xff, 0xfe, 0x00]));
    common::produce(&scenario.input, records);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let instance = scenario.spawn_with("a", &["--metrics-addr", &metrics_addr]);
    let outputs = scenario.outputs(10);
    let letters = common::read_committed(
        &scenario.dead_letters,
        1,
        Duration::from_secs(1),
        Duration::from_secs(60),
    );
    let (ready, _) = http_get(&metrics_addr, "/readyz");
    let (_, metrics) = http_get(&metrics_addr, "/metrics");
    common::stop_gracefully(instance);

    assert_eq!(ready, 200, "ready once restored and processing");
    let input_label = format!("topic=\"{}\"", scenario.input);
    let metric = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(&input_label))
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(metric("herald_runtime_records_in_total"), "11");
    assert_eq!(metric("herald_runtime_record_age_seconds_count"), "11", "an age per record read");
    assert_eq!(metric("herald_runtime_dead_letters_total"), "1");
    assert!(metrics.contains("herald_runtime_commit_seconds_bucket"), "{metrics}");

    assert_exactly_once(&outputs, 10, 2, &scenario.log());
    assert_eq!(letters.len(), 1);
    let letter: DeadLetter =
        SchemaRegistry::builtin().decode(letters[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(letter.source_topic, scenario.input);
    assert_eq!((letter.source_partition, letter.source_offset), (0, 4));
    assert!(letter.reason.contains("not UTF-8"), "{}", letter.reason);
    assert_eq!(letter.value, Some(vec![0xff, 0xfe, 0x00]), "the original bytes are kept");
}

#[test]
fn changelogs_are_created_with_the_topology_files_changelog_settings() {
    let scenario = Scenario::new("changelog-settings", 2);
    let file = scenario.state.path().join("topology.toml");
    std::fs::write(
        &file,
        "replication_factor = 1\n\
         [changelog]\n\
         configs = { \"min.compaction.lag.ms\" = \"4321\", \"segment.ms\" = \"7200000\" }\n\
         [[topic]]\nname = \"unused\"\npartitions = 1\ncleanup_policy = \"delete\"\n",
    )
    .unwrap();
    let instance = scenario.spawn_with("a", &["--topology", file.to_str().unwrap()]);
    let changelog = format!("{}-counts-changelog", scenario.app_id);
    let configs = (0..300).find_map(|_| {
        let configs = topic_configs(&changelog);
        if configs.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        configs
    });
    common::stop_gracefully(instance);

    let configs = configs.unwrap_or_else(|| {
        panic!("{changelog} was not created\n{}", common::tail(&scenario.log(), 20))
    });
    assert_eq!(configs["cleanup.policy"], "compact");
    assert_eq!(configs["min.compaction.lag.ms"], "4321", "from the topology file");
    assert_eq!(configs["segment.ms"], "7200000", "from the topology file");
}

/// The configs of `topic` as the broker describes them; `None` while it does not exist.
fn topic_configs(topic: &str) -> Option<BTreeMap<String, String>> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        common::kafka().client_config().create().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let described = runtime
        .block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new()))
        .unwrap();
    let resource = described.into_iter().next()?.ok()?;
    let configs: BTreeMap<String, String> =
        resource.entries.into_iter().filter_map(|entry| Some((entry.name, entry.value?))).collect();
    (!configs.is_empty()).then_some(configs)
}

/// Waits up to a minute for `child` to exit by itself.
fn exit_status(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    (0..600).find_map(|_| {
        let status = child.try_wait().unwrap();
        if status.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        status
    })
}

#[test]
fn a_second_process_with_the_same_instance_id_fences_the_first_which_rejoins_then_stops() {
    const RECORDS: usize = 2_000;
    const KEYS: usize = 50;
    let scenario = Scenario::new("same-id", 2);
    let mut first = inputs(RECORDS, KEYS);
    let second = first.split_off(RECORDS / 2);
    common::produce(&scenario.input, first);
    let mut a = scenario.spawn_as("a", "x", &[]);
    assert_eq!(scenario.outputs(RECORDS / 2).len(), RECORDS / 2);

    let b = scenario.spawn_as("b", "x", &[]);
    let status = exit_status(&mut a);
    let log = std::fs::read_to_string(scenario.log()).unwrap();
    let Some(status) = status else {
        common::kill_hard(a);
        common::kill_hard(b);
        panic!("the fenced instance kept running\n{}", common::tail(&scenario.log(), 30));
    };
    assert!(!status.success(), "the fenced instance fails: {status}");
    assert!(
        log.contains("fenced: another process joined") && log.contains("id \"x\""),
        "the error says why and names the id\n{}",
        common::tail(&scenario.log(), 30)
    );
    // Fenced, it joined again (a broker restart fences a static member too); fenced again and
    // again within minutes (the two fence each other every few seconds), it stopped.
    assert!(log.contains("joining the group again"), "{}", common::tail(&scenario.log(), 30));
    common::produce(&scenario.input, second);
    let outputs = scenario.outputs(RECORDS);
    common::stop_gracefully(b);
    assert_exactly_once(&outputs, RECORDS, KEYS, &scenario.log());
}

/// Sends signal `name` (e.g. `-STOP`) to `child`.
fn signal(name: &str, child: &std::process::Child) {
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args([name, &pid]).status().unwrap().success());
}

#[test]
fn an_evicted_instance_does_not_fire_the_timers_of_tasks_given_away() {
    const KEYS: usize = 40;
    let scenario = Scenario::new("evicted", 2);
    let a = scenario.spawn("a");
    // A owns both partitions and has scheduled every key's timer when it is frozen; the group
    // evicts it (session timeout) and B takes its tasks over and fires the timers.
    let due = common::now_ms() + 15_000;
    let timers: Vec<(String, Vec<u8>)> = (0..KEYS)
        .map(|i| (format!("t{i}"), format!("schedule:{}", due + 250 * i as i64).into_bytes()))
        .collect();
    common::produce(&scenario.input, timers);
    assert_eq!(
        scenario.outputs(KEYS).len(),
        KEYS,
        "A scheduled the timers\n{}",
        common::tail(&scenario.log(), 30)
    );
    signal("-STOP", &a);
    let b = scenario.spawn("b");
    let fired_by_b = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        common::end_offsets(&scenario.output) >= common::end_offsets(&scenario.input) * 2 + 10
    });
    // A wakes up believing it still owns both tasks, with most of their timers due.
    signal("-CONT", &a);
    assert!(fired_by_b, "B took over and fired timers\n{}", common::tail(&scenario.log(), 30));
    let outputs = scenario.outputs(2 * KEYS);
    common::stop_gracefully(b);
    common::stop_gracefully(a);

    let mut fired: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for output in &outputs {
        let value = String::from_utf8(output.value.clone().unwrap()).unwrap();
        if value.starts_with("fired:") {
            fired.entry(String::from_utf8(output.key.clone()).unwrap()).or_default().push(value);
        }
    }
    let twice: Vec<_> = fired.iter().filter(|(_, values)| values.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "timers fired twice: {twice:?}\n{}",
        common::tail(&scenario.log(), 40)
    );
    for i in 0..KEYS {
        let expected = format!("fired:{}", due + 250 * i as i64);
        assert_eq!(fired.get(&format!("t{i}")), Some(&vec![expected]), "t{i} fired once");
    }
}

#[test]
fn an_output_over_the_record_size_limit_rejects_its_input_and_the_partition_goes_on() {
    let scenario = Scenario::new("too-large", 1);
    let big = "x".repeat(1_100);
    let records = vec![
        ("k0".to_string(), b"v0".to_vec()),
        ("k1".to_string(), big.clone().into_bytes()),
        ("k0".to_string(), b"v1".to_vec()),
    ];
    common::produce(&scenario.input, records);
    let instance = scenario.spawn_with("a", &["--max-record-bytes", "1100"]);
    let outputs = scenario.outputs(2);
    let letters = common::read_committed(
        &scenario.dead_letters,
        1,
        Duration::from_secs(1),
        Duration::from_secs(60),
    );
    common::stop_gracefully(instance);

    let values: Vec<String> =
        outputs.iter().map(|o| String::from_utf8(o.value.clone().unwrap()).unwrap()).collect();
    assert_eq!(values, ["v0:1", "v1:2"], "the records after the refused one are processed");
    assert_eq!(letters.len(), 1, "{}", common::tail(&scenario.log(), 20));
    let letter: DeadLetter =
        SchemaRegistry::builtin().decode(letters[0].value.as_deref().unwrap()).unwrap();
    assert_eq!((letter.source_partition, letter.source_offset), (0, 1));
    assert_eq!(
        letter.reason,
        format!(
            "a record for {} is 1104 bytes (key and value), over the limit of 1100 bytes \
             (message.max.bytes) (value of 1100 bytes left out: too large)",
            scenario.output
        ),
        "the letter itself would be too large with the value: it is left out"
    );
    assert_eq!(letter.value, None);
}

#[test]
fn an_evicted_instance_checkpoints_only_what_it_wrote_and_later_restores_the_new_owners_writes() {
    const RECORDS: usize = 3_000;
    const KEYS: usize = 30;
    let scenario = Scenario::new("evicted-checkpoint", 2);
    let mut all = inputs(RECORDS, KEYS);
    let third = all.split_off(2 * RECORDS / 3);
    let second = all.split_off(RECORDS / 3);
    let a = scenario.spawn("a");
    common::produce(&scenario.input, all);
    assert_eq!(scenario.outputs(RECORDS / 3).len(), RECORDS / 3);

    // A is frozen and evicted; B takes its tasks over and writes their changelogs.
    signal("-STOP", &a);
    let b = scenario.spawn("b");
    common::produce(&scenario.input, second);
    assert_eq!(scenario.outputs(2 * RECORDS / 3).len(), 2 * RECORDS / 3, "B processed");
    // A wakes up, loses its tasks (closing them), and gets them all back once B is gone: it
    // must restore B's writes, which came after everything A had restored or committed.
    signal("-CONT", &a);
    common::stop_gracefully(b);
    common::produce(&scenario.input, third);
    let outputs = scenario.outputs(RECORDS);
    common::stop_gracefully(a);
    assert_exactly_once(&outputs, RECORDS, KEYS, &scenario.log());
}

/// Copies each record to its output, but first waits, inside the step, while `blocked` holds:
/// as a Kafka call or a store write that never returns would hold the processing loop.
struct Blocking {
    blocked: Arc<AtomicBool>,
    output: String,
}

impl Processor for Blocking {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError> {
        while self.blocked.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (key, value) = (record.key.unwrap_or_default(), record.value.unwrap_or_default());
        ctx.send(&self.output, key, value)?;
        Ok(())
    }
}

/// A processing loop blocked inside one step escapes the stall watch (it runs on the loop's
/// thread): the loop guard reports it in `herald_runtime_loop_blocked_seconds` (and the log)
/// once it passes the stall time, clears it when the loop runs again, and the record is then
/// processed once.
#[test]
fn a_processing_loop_blocked_inside_a_step_is_reported_then_cleared() {
    let name = common::unique("rt-blocked");
    let (input, output, dlq) = (format!("{name}-in"), format!("{name}-out"), format!("{name}-dlq"));
    common::create_topics(&[(&input, 2), (&output, 2), (&dlq, 1)]);
    let blocked = Arc::new(AtomicBool::new(true));
    let topology = StreamTopology::builder(&name)
        .dead_letter_topic(dlq.as_str())
        .sub_topology(
            "copy",
            {
                let (blocked, output) = (Arc::clone(&blocked), output.clone());
                move |_| Blocking { blocked: Arc::clone(&blocked), output: output.clone() }
            },
            |s| s.source(&input).sink(&output),
        )
        .build()
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = RuntimeConfig::new(common::kafka(), "a", state.path().join("state"));
    config.stall_after = Duration::from_secs(2);
    let runtime = Arc::new(LiveRuntime::new(topology, config));
    let metrics = Arc::clone(runtime.metrics());
    let shutdown = ShutdownFlag::default();
    let thread = {
        let (runtime, flag) = (Arc::clone(&runtime), shutdown.clone());
        std::thread::spawn(move || runtime.run(&flag))
    };
    common::produce(&input, [("k".to_string(), b"v".to_vec())]);
    let reported = common::poll_until(Duration::from_secs(90), || {
        metrics.loop_blocked_seconds.get() >= 2 || thread.is_finished()
    });
    let blocked_for = metrics.loop_blocked_seconds.get();
    blocked.store(false, Ordering::SeqCst);
    assert!(reported && blocked_for >= 2, "no blocked loop reported ({blocked_for} s)");
    let cleared =
        common::poll_until(Duration::from_secs(30), || metrics.loop_blocked_seconds.get() == 0);
    assert!(cleared, "still reported blocked after the loop ran again");
    let outputs =
        common::read_committed(&output, 1, Duration::from_secs(2), Duration::from_secs(60));
    let values: Vec<Option<&[u8]>> = outputs.iter().map(|r| r.value.as_deref()).collect();
    assert_eq!(values, vec![Some(b"v".as_slice())], "the record, processed once");
    shutdown.request();
    thread.join().expect("runtime thread").expect("the runtime's run");
    common::delete_topics_starting_with(&[&name]);
}
