//! Durable timers against the real broker: scheduled before a SIGKILL, they fire after the
//! restart exactly once; cancelled ones never fire.

mod common;

use std::{collections::BTreeMap, time::Duration};

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
