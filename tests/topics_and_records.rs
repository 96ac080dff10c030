//! Against the real broker: `herald topics apply` creates a topology's topics with the
//! configured partitions and cleanup policy, reports drift without changing anything, and a
//! typed record produced to a topic is consumed back identical.

mod common;

use std::{process::Command, time::Duration};

use herald_engine::model::{AppEvent, PropertyValue, SchemaRegistry};
use rdkafka::{
    admin::{AdminClient, AdminOptions, ResourceSpecifier},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
    Message, Offset, TopicPartitionList,
};

fn topology_file(dir: &tempfile::TempDir, body: &str) -> std::path::PathBuf {
    let path = dir.path().join("topology.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn topics_apply(path: &std::path::Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["topics", "apply", "--fail-on-drift", "--topology"])
        .arg(path)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .expect("run herald");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.code().is_some_and(|c| c == 0 || c == 2), "herald failed: {stderr}");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn describe(topic: &str) -> (usize, String, String) {
    let admin: AdminClient<DefaultClientContext> =
        common::kafka().client_config().create().unwrap();
    let metadata = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions = metadata.topics()[0].partitions().len();
    let configs = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let config = configs.into_iter().next().unwrap().unwrap();
    let value = |name: &str| config.get(name).and_then(|e| e.value.clone()).unwrap_or_default();
    (partitions, value("cleanup.policy"), value("retention.ms"))
}

#[tokio::test]
async fn topics_apply_creates_topics_then_reports_drift_without_changing_them() {
    let events = common::unique("events");
    let table = common::unique("table");
    let dir = tempfile::tempdir().unwrap();
    let path = topology_file(
        &dir,
        &format!(
            r#"
[[topic]]
name = "{events}"
partitions = 3
cleanup_policy = "delete"
retention_ms = 3600000

[[topic]]
name = "{table}"
partitions = 2
cleanup_policy = "compact"
"#
        ),
    );

    let (clean, out) = topics_apply(&path);
    assert!(clean, "{out}");
    assert!(out.contains(&format!("created  {events}")), "{out}");
    assert!(out.contains(&format!("created  {table}")), "{out}");
    assert_eq!(describe(&events).await, (3, "delete".into(), "3600000".into()));
    let (partitions, policy, _) = describe(&table).await;
    assert_eq!((partitions, policy.as_str()), (2, "compact"));

    // Second apply: nothing to do.
    let (clean, out) = topics_apply(&path);
    assert!(clean, "{out}");
    assert!(out.contains(&format!("ok       {events}")), "{out}");

    // A changed topology is reported, and the broker's topic stays as it was.
    let changed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("partitions = 3", "partitions = 6")
        .replace("cleanup_policy = \"compact\"", "cleanup_policy = \"delete\"");
    std::fs::write(&path, changed).unwrap();
    let (clean, out) = topics_apply(&path);
    assert!(!clean, "drift must fail with --fail-on-drift: {out}");
    assert!(out.contains(&format!("DIFFERS  {events}: partitions is 3 on the broker, 6")), "{out}");
    assert!(
        out.contains(&format!("DIFFERS  {table}: cleanup.policy is compact on the broker, delete")),
        "{out}"
    );
    assert_eq!(describe(&events).await.0, 3, "partition count never changed silently");
}

#[tokio::test]
async fn typed_record_round_trips_through_the_broker() {
    let topic = common::unique("roundtrip");
    let dir = tempfile::tempdir().unwrap();
    let path = topology_file(
        &dir,
        &format!("[[topic]]\nname = \"{topic}\"\npartitions = 1\ncleanup_policy = \"delete\"\n"),
    );
    assert!(topics_apply(&path).0);

    let event = AppEvent {
        event_id: "e-1".into(),
        app_id: "shop".into(),
        user_id: "ユーザー".into(),
        name: "Added To Cart".into(),
        timestamp_ms: 1_764_000_000_000,
        properties: [("price".to_string(), PropertyValue::Double(12.5))].into(),
        sdk_version: None,
    };
    let registry = SchemaRegistry::builtin();
    let bytes = registry.encode(&event).unwrap();
    let producer: FutureProducer = common::kafka().client_config().create().unwrap();
    producer
        .send(FutureRecord::to(&topic).key(&event.user_id).payload(&bytes), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let consumer: BaseConsumer =
        common::kafka().client_config().set("group.id", common::unique("group")).create().unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let message = (0..100)
        .find_map(|_| consumer.poll(Duration::from_millis(200)))
        .expect("a record within 20 s")
        .unwrap();
    assert_eq!(message.key(), Some(event.user_id.as_bytes()));
    let back: AppEvent = registry.decode(message.payload().unwrap()).unwrap();
    assert_eq!(back, event);
}

/// The names of the cluster's topics starting with `prefix`, sorted.
fn topics_starting_with(prefix: &str) -> Vec<String> {
    let consumer: BaseConsumer = common::kafka().client_config().create().unwrap();
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let mut names: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[test]
fn topics_delete_removes_exactly_the_topics_with_the_prefix() {
    let base = common::unique("prune");
    let (gone_a, gone_b, kept) =
        (format!("{base}-a-x"), format!("{base}-a-y"), format!("{base}-b-x"));
    common::create_topics(&[(&gone_a, 2), (&gone_b, 1), (&kept, 1)]);
    assert_eq!(topics_starting_with(&base), [gone_a.clone(), gone_b.clone(), kept.clone()]);

    let output = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["topics", "delete", "--prefix", &format!("{base}-a-")])
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .expect("run herald");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("deleted 2 topics"), "{stdout}");
    // Deletion completes asynchronously on the broker.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let only_kept = vec![kept];
    while topics_starting_with(&base) != only_kept && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(topics_starting_with(&base), only_kept);

    // Without a prefix nothing is deleted.
    let refused = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["topics", "delete"])
        .env("HERALD_BROKERS", common::kafka().brokers)
        .output()
        .expect("run herald");
    assert!(!refused.status.success());
    assert_eq!(topics_starting_with(&base), only_kept);
}
