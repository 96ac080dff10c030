//! `herald api`'s `/readyz` (issue 15): 503 with its reason as JSON while the brokers do not
//! answer or the tables it reads are not read to their end, 200 once they are; served on
//! `--metrics-addr` from the process's first moment, before the API listens. A partition added
//! to a table's topic is read too; SIGTERM stops the API at any point of its start-up.

mod common;

use std::{path::Path, time::Duration};

use common::{
    create_topics, delete_topics_starting_with, free_port, poll_until, spawn_herald, tail, unique,
    KillOnDrop,
};
use serde_json::{json, Value};

/// A `herald api` on topics under `prefix` (read, not created), with `brokers`, its
/// `/readyz` at `metrics`; killed on drop.
struct Api {
    process: KillOnDrop,
    listen: String,
    metrics: String,
}

impl Api {
    fn start(prefix: &str, brokers: &str, dir: &Path) -> Self {
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, "read viewer read-0123456789abcdef\n").unwrap();
        let (listen, metrics) =
            (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let args = [
            "api",
            "--brokers",
            brokers,
            "--listen",
            &listen,
            "--metrics-addr",
            &metrics,
            "--topic-prefix",
            prefix,
            "--tokens",
            tokens.to_str().unwrap(),
        ];
        let process = spawn_herald(&args, &dir.join("api.log"));
        Self { process, listen, metrics }
    }

    /// `/readyz`: status, Content-Type and body as JSON, or none while nothing listens.
    fn readyz(&self) -> Option<(u16, String, Value)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut response = agent.get(&format!("http://{}/readyz", self.metrics)).call().ok()?;
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.body_mut().read_to_string().unwrap();
        Some((status, kind, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    /// Polls `/readyz` until `wanted` holds of its answer (up to `limit`); the last answer.
    fn readyz_until(
        &self,
        limit: Duration,
        wanted: impl Fn(u16, &Value) -> bool,
        log: &Path,
    ) -> (u16, String, Value) {
        let mut last = None;
        let held = poll_until(limit, || {
            last = self.readyz();
            last.as_ref().is_some_and(|(status, _, body)| wanted(*status, body))
        });
        assert!(held, "/readyz answered {last:?}\n--- api log\n{}", tail(log, 30));
        last.unwrap()
    }

    /// `GET path` on the API with the read token: status and body as JSON (status 0 while
    /// nothing listens).
    fn get(&self, path: &str) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let request = agent
            .get(&format!("http://{}{path}", self.listen))
            .header("Authorization", "Bearer read-0123456789abcdef");
        let Ok(mut response) = request.call() else { return (0, Value::Null) };
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (response.status().as_u16(), serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    /// Whether the API itself listens.
    fn serves(&self) -> bool {
        std::net::TcpStream::connect(&self.listen).is_ok()
    }
}

/// Deletes the topics under its prefix on drop.
struct Topics(String);

impl Drop for Topics {
    fn drop(&mut self) {
        delete_topics_starting_with(&[&self.0]);
    }
}

fn reason(body: &Value) -> &str {
    body["reason"].as_str().unwrap_or_default()
}

#[test]
fn readyz_says_the_brokers_are_unreachable_while_they_do_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("api.log");
    let prefix = format!("{}-", unique("readyz-closed"));
    // Nothing listens on port 1: the API waits for its brokers, saying so.
    let api = Api::start(&prefix, "127.0.0.1:1", dir.path());
    let unreachable = |status: u16, body: &Value| status == 503 && reason(body).contains("brokers");
    let (status, kind, body) = api.readyz_until(Duration::from_secs(60), unreachable, &log);
    assert_eq!((status, kind.as_str()), (503, "application/json"));
    assert_eq!(body["ready"], json!(false));
    assert!(
        reason(&body).starts_with("brokers 127.0.0.1:1 unreachable: no answer since 20"),
        "the reason names the brokers and since when they have not answered: {body}"
    );
    // Still waiting a few checks later, still alive, and not serving the API.
    let (status, _, later) = api.readyz().expect("/readyz still answers");
    assert_eq!(
        (status, reason(&later).starts_with("brokers 127.0.0.1:1 unreachable")),
        (503, true)
    );
    assert!(!api.serves(), "the API listens before it can serve");
    let health = common::http_get(&api.metrics, "/healthz");
    assert_eq!(health.0, 200);
}

#[test]
fn readyz_is_ready_once_the_tables_are_read_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("api.log");
    let prefix = format!("{}-", unique("readyz-real"));
    let _topics = Topics(prefix.clone());
    let api = Api::start(&prefix, &common::kafka().brokers, dir.path());
    let campaigns = format!("{prefix}herald.campaigns");
    // The brokers answer, but the campaigns topic does not exist yet: not ready, saying which
    // table it is reading.
    let reading = |status: u16, body: &Value| status == 503 && reason(body).contains("reading");
    let (_, kind, body) = api.readyz_until(Duration::from_secs(60), reading, &log);
    assert_eq!(kind, "application/json");
    assert_eq!(body, json!({"ready": false, "reason": format!("reading {campaigns} to its end")}));
    assert!(!api.serves(), "the API listens before it has read its campaigns");

    // The API's tables appear (the segments topic it creates itself): ready, and serving.
    let names = ["campaigns", "stats", "campaign-events"].map(|t| format!("{prefix}herald.{t}"));
    create_topics(&names.iter().map(|n| (n.as_str(), 2)).collect::<Vec<_>>());
    let ready = |status: u16, _: &Value| status == 200;
    let (_, kind, body) = api.readyz_until(Duration::from_secs(90), ready, &log);
    assert_eq!((kind.as_str(), body), ("application/json", json!({"ready": true})));
    assert!(poll_until(Duration::from_secs(10), || api.serves()), "{}", tail(&log, 30));
}

#[test]
fn readyz_is_ready_when_retention_emptied_a_table_partition() {
    use rdkafka::{
        admin::{AdminClient, AdminOptions},
        client::DefaultClientContext,
        Offset, TopicPartitionList,
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("api.log");
    let prefix = format!("{}-", unique("readyz-emptied"));
    let _topics = Topics(prefix.clone());
    let names = ["campaigns", "stats", "campaign-events"].map(|t| format!("{prefix}herald.{t}"));
    create_topics(&names.iter().map(|n| (n.as_str(), 2)).collect::<Vec<_>>());
    // Campaign events written long ago, then deleted by retention: the partition's end is 3,
    // and it holds no record.
    let events = &names[2];
    common::produce(events, (0..3).map(|i| ("c1".to_string(), format!("old-{i}").into_bytes())));
    let mut everything = TopicPartitionList::new();
    for partition in 0..2 {
        everything.add_partition_offset(events, partition, Offset::End).unwrap();
    }
    let admin: AdminClient<DefaultClientContext> =
        common::kafka().client_config().create().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deleted =
        runtime.block_on(admin.delete_records(&everything, &AdminOptions::new())).unwrap();
    let lows: Vec<i64> = deleted.elements().iter().filter_map(|e| e.offset().to_raw()).collect();
    assert_eq!(lows.iter().sum::<i64>(), 3, "the records are gone: {deleted:?}");

    let api = Api::start(&prefix, &common::kafka().brokers, dir.path());
    let ready = |status: u16, _: &Value| status == 200;
    let (_, _, body) = api.readyz_until(Duration::from_secs(90), ready, &log);
    assert_eq!(body, json!({"ready": true}));
    assert!(poll_until(Duration::from_secs(10), || api.serves()), "{}", tail(&log, 30));
}

#[test]
fn a_partition_added_to_a_table_topic_is_read_and_counts_for_readiness() {
    use rdkafka::{
        admin::{AdminClient, AdminOptions, NewPartitions},
        client::DefaultClientContext,
        producer::{BaseRecord, DefaultProducerContext, ThreadedProducer},
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("api.log");
    let prefix = format!("{}-", unique("readyz-added"));
    let _topics = Topics(prefix.clone());
    let names = ["campaigns", "stats", "campaign-events"].map(|t| format!("{prefix}herald.{t}"));
    create_topics(&names.iter().map(|n| (n.as_str(), 1)).collect::<Vec<_>>());
    let api = Api::start(&prefix, &common::kafka().brokers, dir.path());
    let ready = |status: u16, _: &Value| status == 200;
    api.readyz_until(Duration::from_secs(90), ready, &log);
    assert_eq!(api.get("/api/v1/segments"), (200, json!([])));

    // An operator adds a partition to the segments topic (the API created it with one) while
    // the API runs, and a segment is saved on the new partition.
    let segments = format!("{prefix}herald.segments");
    let admin: AdminClient<DefaultClientContext> =
        common::kafka().client_config().create().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let added = runtime
        .block_on(
            admin.create_partitions(&[NewPartitions::new(&segments, 2)], &AdminOptions::new()),
        )
        .unwrap();
    assert!(added.iter().all(Result::is_ok), "{added:?}");
    let producer: ThreadedProducer<DefaultProducerContext> =
        common::kafka().client_config().create().unwrap();
    let vip = "id: vip\nname: VIPs\nwho:\n  all:\n    - { property: state, equals: CA }\n";
    // The broker may not know the new partition at once: ask until it takes the record.
    let written = poll_until(Duration::from_secs(30), || {
        let record = BaseRecord::to(&segments).partition(1).key("vip").payload(vip);
        herald_engine::kafka::send_waiting(&producer, record).is_ok()
    });
    assert!(written, "the segment could not be written to partition 1 of {segments}");

    // The API reads it from the new partition, and stays ready: that partition too is read
    // to its end.
    let listed = json!([{ "id": "vip", "name": "VIPs", "used_by": [] }]);
    let mut last = None;
    let read = poll_until(Duration::from_secs(60), || {
        last = Some(api.get("/api/v1/segments"));
        last.as_ref().is_some_and(|(status, body)| (*status, body) == (200, &listed))
    });
    assert!(read, "the segment on the new partition is not read: {last:?}\n{}", tail(&log, 30));
    let (_, _, body) = api.readyz_until(Duration::from_secs(30), ready, &log);
    assert_eq!(body, json!({"ready": true}));
    assert!(
        std::fs::read_to_string(&log).unwrap().contains("reading partitions added to the topic"),
        "{}",
        tail(&log, 30)
    );
}

#[test]
fn sigterm_during_start_up_stops_the_api_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("api.log");
    let prefix = format!("{}-", unique("readyz-sigterm"));
    // Brokers that never answer: the start-up has no end of its own.
    let mut api = Api::start(&prefix, "127.0.0.1:1", dir.path());
    let waiting = |status: u16, body: &Value| status == 503 && reason(body).contains("brokers");
    api.readyz_until(Duration::from_secs(60), waiting, &log);

    let mut process = api.process.take();
    let pid = process.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut status = None;
    let exited = poll_until(Duration::from_secs(20), || {
        status = process.try_wait().unwrap();
        status.is_some()
    });
    if !exited {
        let _ = process.kill();
        let _ = process.wait();
    }
    assert!(exited, "still running after SIGTERM\n{}", tail(&log, 30));
    // It handled the signal (as PID 1 in a container an unhandled SIGTERM is ignored) and
    // exited by itself.
    let status = status.unwrap();
    assert_eq!(status.code(), Some(0), "{status}\n{}", tail(&log, 30));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("stopping on a signal"), "{}", tail(&log, 30));
}
