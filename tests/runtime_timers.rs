//! Durable timers against the real broker: scheduled before a SIGKILL, they fire after the
//! restart exactly once; cancelled ones never fire. On event time, a timer due at T fires after
//! the records of time T, live and in a replay alike.

mod common;

use std::{collections::BTreeMap, time::Duration};

use herald_engine::{
    kafka::send_waiting,
    runtime::{
        example::counting_topology,
        replay::{self, ReplayInput, ReplayOptions, ReplaySink},
        Clock, LiveRuntime, RuntimeConfig, ShutdownFlag,
    },
};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[test]
fn timers_survive_sigkill_and_fire_exactly_once_and_cancelled_ones_never() {
    let input = common::unique("timers-in");
    let output = common::unique("timers-out");
    let dead_letters = common::unique("timers-dlq");
    let app_id = common::unique("timers");
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("instances.log");
    common::create_topics(&[(&input, 2), (&output, 2), (&dead_letters, 1)]);
    let spawn = || {
        common::spawn_counter(
            &[
                "--input",
                &input,
                "--output",
                &output,
                "--app-id",
                &app_id,
                "--dead-letter-topic",
                &dead_letters,
                "--instance-id",
                "a",
                "--state-dir",
                state.path().to_str().unwrap(),
            ],
            &log,
        )
    };

    // 20 keys get a timer 15 s from now; keys 0-4 cancel theirs; key 5 schedules the same
    // timer twice (one timer).
    let due = common::now_ms() + 15_000;
    let mut records: Vec<(String, Vec<u8>)> =
        (0..20).map(|k| (format!("t{k}"), format!("schedule:{due}").into_bytes())).collect();
    records.extend((0..5).map(|k| (format!("t{k}"), format!("cancel:{due}").into_bytes())));
    records.push(("t5".into(), format!("schedule:{due}").into_bytes()));
    let inputs = records.len();
    common::produce(&input, records);

    let instance = spawn();
    let before =
        common::read_committed(&output, inputs, Duration::from_secs(1), Duration::from_secs(60));
    common::kill_hard(instance);
    assert_eq!(before.len(), inputs, "every input processed before the kill");
    assert!(
        common::now_ms() < due,
        "the kill must happen before the timers are due; the machine was too slow this time"
    );

    let instance = spawn();
    let expected_outputs = inputs + 15;
    let after = common::read_committed(
        &output,
        expected_outputs,
        Duration::from_secs(3),
        Duration::from_secs(90),
    );
    common::stop_gracefully(instance);

    let mut fired: BTreeMap<String, usize> = BTreeMap::new();
    for record in &after {
        let text = String::from_utf8(record.value.clone().unwrap()).unwrap();
        if text.starts_with("fired:") {
            assert_eq!(text, format!("fired:{due}"));
            *fired.entry(String::from_utf8(record.key.clone()).unwrap()).or_default() += 1;
        }
    }
    let expected: BTreeMap<String, usize> = (5..20).map(|k| (format!("t{k}"), 1)).collect();
    assert_eq!(fired, expected, "fired exactly once per live timer\n{}", common::tail(&log, 30));
    assert_eq!(after.len(), expected_outputs);
}

/// Produces (key, value, timestamp) records in order to partition 0 of `topic`.
fn produce_at(topic: &str, records: &[(&str, String, i64)]) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        common::kafka().client_config().set("enable.idempotence", "true").create().unwrap();
    for (key, value, at) in records {
        let record = BaseRecord::to(topic).partition(0).key(*key).payload(value).timestamp(*at);
        send_waiting(&producer, record).expect("produce");
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn on_event_time_a_timer_due_at_t_fires_after_the_records_of_t_live_and_in_a_replay() {
    let input = common::unique("order-in");
    let output = common::unique("order-out");
    let dead_letters = common::unique("order-dlq");
    common::create_topics(&[(&input, 1), (&output, 1), (&dead_letters, 1)]);
    let t = 1_764_000_000_000i64;
    let due = t + 1_000;
    // Keys a and d wait until `due`; at `due`, another key's record comes first, then a cancels.
    produce_at(
        &input,
        &[
            ("a", format!("schedule:{due}"), t),
            ("d", format!("schedule:{due}"), t),
            ("x", "tick".into(), due),
            ("a", format!("cancel:{due}"), due),
            ("y", "later".into(), due + 1_000),
        ],
    );
    let expected: Vec<(String, String)> = [
        ("a", format!("schedule:{due}:1")),
        ("d", format!("schedule:{due}:1")),
        ("x", "tick:1".into()),
        ("a", format!("cancel:{due}:2")),
        ("d", format!("fired:{due}")),
        ("y", "later:1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let topology = counting_topology(&common::unique("order"), &input, &output)
        .unwrap()
        .with_dead_letter_topic(&dead_letters);
    let state = tempfile::tempdir().unwrap();
    let shutdown = ShutdownFlag::default();
    let live = {
        let (topology, shutdown) = (topology.clone(), shutdown.clone());
        let mut config = RuntimeConfig::new(common::kafka(), "a", state.path());
        config.clock = Clock::EventTime;
        std::thread::spawn(move || LiveRuntime::new(topology, config).run(&shutdown))
    };
    let outputs = common::read_committed(
        &output,
        expected.len(),
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    shutdown.request();
    live.join().unwrap().unwrap();
    let outputs: Vec<(String, String)> =
        outputs.iter().map(|r| (text(&r.key), text(r.value.as_deref().unwrap()))).collect();
    assert_eq!(outputs, expected, "live, on event time");

    let mut replayed = Vec::new();
    let sink = ReplaySink::Callback(Box::new(|topic, key, value, _| {
        if topic == output {
            replayed.push((text(key), text(value)));
        }
        Ok(())
    }));
    let input = ReplayInput::Topics {
        kafka: common::kafka(),
        topics: vec![input.clone()],
        from_ms: None,
        until_ms: None,
    };
    replay::run(&topology, input, sink, &ReplayOptions::default()).unwrap();
    assert_eq!(replayed, expected, "replayed");
}
