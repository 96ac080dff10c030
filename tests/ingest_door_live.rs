//! Against the real broker: Herald's ingest door with producers that are not Herald's. Profiles
//! written with librdkafka's default partitioner (CRC32), events with murmur2 and without a key,
//! an SDK retry of the same event id on another partition, hostile records; and anonymous users
//! who identify (Segment) while the engine is killed and restarted.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use herald_engine::{
    model::{
        topics::TopicNames, AppEvent, DeadLetter, Platform, Properties, PropertyValue, Record,
        SchemaRegistry, SendCommand, Skip,
    },
    payload,
};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const PARTITIONS: i32 = 4;

/// One deployment: topics under a unique prefix (the engine creates the repartition topic),
/// an engine serving its metrics on a port of its own.
struct Deployment {
    topics: TopicNames,
    prefix: String,
    app_id: String,
    dir: tempfile::TempDir,
    metrics: String,
}

impl Deployment {
    fn new(name: &str, campaign_yaml: &str) -> Self {
        let prefix = format!("{}-", common::unique(name));
        let topics = TopicNames::with_prefix(&prefix);
        let specs: Vec<(&str, i32)> = topics
            .all()
            .into_iter()
            .filter(|t| *t != topics.ingest_repartition)
            .map(|t| {
                let user_keyed = [
                    &topics.events,
                    &topics.profiles,
                    &topics.receipts,
                    &topics.send_gate,
                    &topics.push,
                ];
                (t, if user_keyed.iter().any(|u| *u == t) { PARTITIONS } else { 1 })
            })
            .collect();
        common::create_topics(&specs);
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let deployment = Self {
            prefix,
            app_id: common::unique(&format!("{name}-app")),
            dir: tempfile::tempdir().unwrap(),
            metrics: format!("127.0.0.1:{port}"),
            topics,
        };
        let file = deployment.dir.path().join("campaign.yaml");
        std::fs::write(&file, campaign_yaml).unwrap();
        let applied = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["campaign", "apply", "--topic", &deployment.topics.campaigns])
            .arg(&file)
            .env("HERALD_BROKERS", common::kafka().brokers)
            .output()
            .unwrap();
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
        deployment
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("engine.log")
    }

    fn spawn_engine(&self, extra: &[&str]) -> Running {
        let mut args = vec!["--metrics-addr", &self.metrics];
        args.extend_from_slice(extra);
        let state = self.dir.path().join("state");
        Running(Some(common::spawn_engine_with(
            &self.prefix,
            &self.app_id,
            &state,
            &self.log(),
            &args,
        )))
    }

    /// The engine's counter `name` (without the `herald_runtime_` prefix) under label value
    /// `label` (any label when empty), 0 when absent or unreachable.
    fn metric(&self, name: &str, label: &str) -> u64 {
        let Ok(mut stream) = TcpStream::connect(&self.metrics) else { return 0 };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        let full = format!("herald_runtime_{name}");
        body.lines()
            .filter(|l| l.starts_with(&format!("{full}{{")) || l.starts_with(&format!("{full} ")))
            .filter(|l| label.is_empty() || l.contains(&format!("=\"{label}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// Waits (up to 120 s) until `done` holds, polling every 200 ms.
    fn wait(&self, what: &str, done: impl Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "timed out waiting for {what}\n{}",
                common::tail(&self.log(), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the engine read `count` records of `topic` and everything it forwarded.
    fn wait_read(&self, topic: &str, count: u64) {
        self.wait(&format!("{count} records of {topic} read"), || {
            self.metric("records_in_total", topic) >= count
                && self.metric("records_in_total", &self.topics.ingest_repartition)
                    >= self.metric("ingest_forwarded_total", "")
        });
    }
}

/// A running engine, killed if the test panics before stopping it.
struct Running(Option<std::process::Child>);

impl Running {
    fn stop(mut self) {
        common::stop_gracefully(self.0.take().expect("running"));
    }

    fn kill(mut self) {
        common::kill_hard(self.0.take().expect("running"));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Produces `(key, value)` records with librdkafka's default partitioner (`consistent_random`:
/// CRC32 of the key), or without a key where the key is `None`.
fn produce_default(topic: &str, records: impl IntoIterator<Item = (Option<String>, Vec<u8>)>) {
    let producer: ThreadedProducer<DefaultProducerContext> =
        common::kafka().client_config().set("enable.idempotence", "true").create().unwrap();
    for (key, value) in records {
        let record = BaseRecord::<String, Vec<u8>>::to(topic).payload(&value);
        let record = match &key {
            Some(key) => record.key(key),
            None => record,
        };
        herald_engine::kafka::send_waiting(&producer, record).expect("produce");
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

fn event(user: &str, name: &str, id: &str, at: i64) -> Vec<u8> {
    let event = AppEvent {
        event_id: id.into(),
        app_id: "shop".into(),
        user_id: user.into(),
        name: name.into(),
        timestamp_ms: at,
        properties: Properties::new(),
        sdk_version: None,
    };
    SchemaRegistry::builtin().encode(&event).unwrap()
}

fn decode_all<R: Record>(records: &[common::Consumed]) -> Vec<R> {
    let registry = SchemaRegistry::builtin();
    records.iter().filter_map(|r| registry.decode::<R>(r.value.as_deref()?).ok()).collect()
}

const PING: &str =
    "id: ping\napp: shop\nname: Ping\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n";

#[test]
fn every_user_is_reached_whatever_the_producers_partitioner_duplicates_count_once_and_bad_records_are_dead_lettered(
) {
    const USERS: usize = 60;
    let deployment = Deployment::new("door", PING);
    let topics = &deployment.topics;
    let now = common::now_ms();
    let users: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
    // Purging off: the test reads the campaign flow the engine consumes.
    let engine = deployment.spawn_engine(&["--purge-interval-ms", "0"]);
    // Profiles from another team's producer: librdkafka's default partitioner.
    produce_default(
        &topics.profiles,
        users.iter().map(|u| {
            let (key, value) = common::profile(u, Platform::Ios, now);
            (Some(key), value)
        }),
    );
    deployment.wait_read(&topics.profiles, USERS as u64);
    let misplaced_profiles = deployment.metric("ingest_forwarded_total", "profile");

    // Events: murmur2 for two thirds, no key for the rest; those of the first ten with a key
    // sent twice (an SDK retry), the copy without a key.
    let id = |i: usize| format!("evt-{i}");
    common::produce(
        &topics.events,
        (0..USERS)
            .filter(|i| i % 3 != 2)
            .map(|i| (users[i].clone(), event(&users[i], "Ping", &id(i), now + 1))),
    );
    let unkeyed = (0..USERS)
        .filter(|i| i % 3 == 2 || *i < 10)
        .map(|i| (None, event(&users[i], "Ping", &id(i), now + 1)));
    let mut hostile = vec![
        ("timestamp_ms", event("user-0", "Ping", "far-future", now + 400 * 24 * 3_600_000)),
        ("timestamp_ms", event("user-0", "Ping", "long-ago", now - 40 * 24 * 3_600_000)),
        ("timestamp_ms", event("user-0", "Ping", "min", 0)),
        ("user_id", event("", "Ping", "nobody", now)),
    ];
    // i64::MIN does not even decode (times are 1970 to 9999).
    let min = SchemaRegistry::builtin()
        .encode_json("AppEvent", serde_json::json!({"event_id": "min", "app_id": "shop", "user_id": "user-0", "name": "Ping", "timestamp_ms": i64::MIN, "properties": {}}))
        .unwrap();
    hostile[2].1 = min;
    let mut crowded: AppEvent =
        SchemaRegistry::builtin().decode(&event("user-1", "Ping", "crowded", now)).unwrap();
    crowded.properties = (0..101).map(|i| (format!("p{i}"), PropertyValue::Long(i))).collect();
    hostile.push(("properties", SchemaRegistry::builtin().encode(&crowded).unwrap()));
    let hostile_count = hostile.len();
    produce_default(&topics.events, unkeyed.chain(hostile.into_iter().map(|(_, v)| (None, v))));

    // A later good record goes on after the bad ones.
    common::produce(
        &topics.events,
        [("late".to_string(), event("user-0", "Ping", "late", now + 2))],
    );
    let push = common::read_committed(
        &topics.push,
        USERS + 1,
        Duration::from_secs(5),
        Duration::from_secs(120),
    );
    let letters = common::read_committed(
        &topics.dead_letter,
        hostile_count,
        Duration::from_secs(1),
        Duration::from_secs(60),
    );
    let flow = common::read_committed(
        &topics.campaign_flow,
        1,
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    let duplicates = deployment.metric("ingest_duplicates_total", "event");
    let rejected: BTreeMap<&str, u64> =
        ["timestamp_ahead", "timestamp_too_old", "no_user", "too_many_properties", "undecodable"]
            .into_iter()
            .map(|reason| (reason, deployment.metric("ingest_rejected_total", reason)))
            .collect();
    engine.stop();

    let sends: Vec<SendCommand> = decode_all(&push);
    let mut sent: Vec<(String, String)> =
        sends.iter().map(|s| (s.user_id.clone(), s.message_id.clone())).collect();
    sent.sort();
    let mut expected: Vec<(String, String)> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            (
                u.clone(),
                payload::message_id("ping", &format!("trigger:{}", id(i)), u, &format!("d-{u}")),
            )
        })
        .chain([(
            "user-0".to_string(),
            payload::message_id("ping", "trigger:late", "user-0", "d-user-0"),
        )])
        .collect();
    expected.sort();
    assert_eq!(
        sent,
        expected,
        "each user once per event id, duplicates dropped\n{}",
        common::tail(&deployment.log(), 30)
    );
    let skips: Vec<Skip> = decode_all(&flow);
    assert!(skips.iter().all(|s| s.reason != "not_reachable"), "nobody unreachable: {skips:?}");
    assert!(misplaced_profiles > 0, "the default partitioner misplaced some profiles");
    let retried = (0..10).filter(|i| i % 3 != 2).count() as u64;
    assert_eq!(duplicates, retried, "each retried id is counted as a duplicate");

    let letters: Vec<DeadLetter> = decode_all(&letters);
    let mut reasons: Vec<String> = letters.iter().map(|l| l.reason.clone()).collect();
    reasons.sort();
    assert_eq!(letters.len(), hostile_count, "{reasons:#?}");
    assert!(letters.iter().all(|l| l.source_topic == topics.events), "{letters:?}");
    for field in ["timestamp_ms: ", "user_id: missing", "properties: 101 entries"] {
        assert!(
            reasons.iter().any(|r| r.starts_with(field)),
            "no reason names {field}: {reasons:#?}"
        );
    }
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("timestamp_ms") && r.contains("outside the accepted range")),
        "{reasons:#?}"
    );
    let expected_counts: BTreeMap<&str, u64> = [
        ("no_user", 1),
        ("timestamp_ahead", 1),
        ("timestamp_too_old", 1),
        ("too_many_properties", 1),
        ("undecodable", 1),
    ]
    .into();
    assert_eq!(rejected, expected_counts, "{reasons:#?}");
}

const BROWSERS: &str = r#"id: browsers
app: shop
name: Still thinking
who:
  all:
    - { did: Viewed Product, at_least: 2, at_most: 2, in_last_days: 30 }
when: { event: Checkout }
what: { title: "{{ profile.first_name }}", body: b }
"#;

/// A topology file: the default one reading `herald.events` as Segment JSON for app `shop`.
fn segment_topology(dir: &Path) -> PathBuf {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/default.toml");
    let text = std::fs::read_to_string(default).unwrap();
    let path = dir.join("topology.toml");
    std::fs::write(
        &path,
        format!("{text}\n[ingest.events]\nformat = \"segment\"\napp = \"shop\"\n"),
    )
    .unwrap();
    path
}

#[test]
fn anonymous_users_who_identify_are_sent_to_as_known_users_exactly_once_across_a_crash() {
    const USERS: usize = 40;
    let deployment = Deployment::new("alias", BROWSERS);
    let topics = &deployment.topics;
    let topology = segment_topology(deployment.dir.path());
    let topology = topology.to_str().unwrap();
    let now = common::now_ms();
    let anon = |i: usize| format!("anon-{i}");
    let known = |i: usize| format!("known-{i}");
    let engine = deployment.spawn_engine(&["--topology", topology]);
    // Anonymous visitors with a device and two product views; known users without a device.
    common::produce(
        &topics.profiles,
        (0..USERS).map(|i| common::profile(&anon(i), Platform::Android, now)),
    );
    common::produce(
        &topics.profiles,
        (0..USERS).map(|i| {
            let (_, bytes) = common::profile(&known(i), Platform::Android, now);
            let mut update: herald_engine::model::ProfileUpdate =
                SchemaRegistry::builtin().decode(&bytes).unwrap();
            update.devices_added.clear();
            update.set.insert("first_name".into(), PropertyValue::String(format!("K{i}")));
            (known(i), SchemaRegistry::builtin().encode(&update).unwrap())
        }),
    );
    common::produce(
        &topics.events,
        (0..USERS).flat_map(|i| {
            [1, 2].map(|n| {
                (anon(i), event(&anon(i), "Viewed Product", &format!("v-{i}-{n}"), now + n))
            })
        }),
    );
    deployment.wait_read(&topics.events, 2 * USERS as u64);
    deployment.wait_read(&topics.profiles, 2 * USERS as u64);

    // They identify (Segment, unkeyed as a collector might write them); the engine is killed
    // once merges have started, and restarted.
    let identify = |i: usize| {
        serde_json::json!({
            "type": "identify", "userId": known(i), "anonymousId": anon(i), "messageId": format!("i-{i}"),
            "timestamp": chrono::DateTime::from_timestamp_millis(now + 10).unwrap().to_rfc3339(),
        })
        .to_string()
        .into_bytes()
    };
    produce_default(&topics.events, (0..USERS).map(|i| (None, identify(i))));
    deployment.wait("merges to start", || deployment.metric("ingest_aliases_total", "merged") > 0);
    engine.kill();
    // An SDK retries every identify while the engine is down.
    produce_default(&topics.events, (0..USERS).map(|i| (None, identify(i))));
    let engine = deployment.spawn_engine(&["--topology", topology]);
    deployment.wait("every known user to have the anonymous device", || {
        let changelog = format!("{}-profiles-changelog", deployment.app_id);
        let records =
            common::read_committed(&changelog, 0, Duration::from_secs(1), Duration::from_secs(5));
        let latest: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            records.into_iter().map(|r| (r.key, r.value)).collect();
        (0..USERS).all(|i| {
            let profile = latest.get(known(i).as_bytes()).cloned().flatten().unwrap_or_default();
            String::from_utf8_lossy(&profile).contains(&format!("tok-{}", anon(i)))
        })
    });
    common::produce(
        &topics.events,
        (0..USERS).map(|i| (known(i), event(&known(i), "Checkout", &format!("c-{i}"), now + 20))),
    );
    let push = common::read_committed(
        &topics.push,
        USERS,
        Duration::from_secs(5),
        Duration::from_secs(120),
    );
    let letters = common::read_committed(
        &topics.dead_letter,
        0,
        Duration::from_secs(1),
        Duration::from_secs(5),
    );
    engine.stop();

    assert!(letters.is_empty(), "{:?}", decode_all::<DeadLetter>(&letters));
    let sends: Vec<SendCommand> = decode_all(&push);
    let mut sent: Vec<(String, String, String)> =
        sends.iter().map(|s| (s.user_id.clone(), s.token.clone(), s.message_id.clone())).collect();
    sent.sort();
    let mut expected: Vec<(String, String, String)> = (0..USERS)
        .map(|i| {
            let id = payload::message_id(
                "browsers",
                &format!("trigger:c-{i}"),
                &known(i),
                &format!("d-{}", anon(i)),
            );
            (known(i), format!("tok-{}", anon(i)), id)
        })
        .collect();
    expected.sort();
    assert_eq!(
        sent,
        expected,
        "each known user once, on the anonymous device, history merged once\n{}",
        common::tail(&deployment.log(), 30)
    );
}
