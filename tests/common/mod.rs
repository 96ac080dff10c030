//! Shared helpers of the integration tests: they talk to the real broker that `make test`
//! starts (`HERALD_BROKERS`, default 127.0.0.1:9092).
#![allow(dead_code)] // each test binary uses a different subset

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use herald_engine::{
    kafka::{apply_topology, send_waiting, KafkaConfig, DEFAULT_BROKERS},
    topology::{CleanupPolicy, TopicSpec, Topology},
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
    Message, Offset, TopicPartitionList,
};

/// Connection settings for the test broker.
pub fn kafka() -> KafkaConfig {
    KafkaConfig::new(std::env::var("HERALD_BROKERS").unwrap_or_else(|_| DEFAULT_BROKERS.into()))
}

/// A name no other test run has used, so runs never see each other's topics.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("it-{prefix}-{}-{nanos}", std::process::id())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Creates `topics` as (name, partitions), deleted-retention, keeping every record
/// (`retention.ms` -1): tests stamp records with fixed past event times (2025-11-24 and the
/// like), older than the broker's 7 days, which its retention check, every 5 minutes, would
/// delete in the middle of a test (a replay of the topic then read nothing).
pub fn create_topics(topics: &[(&str, i32)]) {
    let topology = Topology {
        replication_factor: 1,
        topics: topics
            .iter()
            .map(|(name, partitions)| TopicSpec {
                name: name.to_string(),
                partitions: *partitions,
                cleanup_policy: CleanupPolicy::Delete,
                retention_ms: Some(-1),
                description: String::new(),
                configs: Default::default(),
            })
            .collect(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(apply_topology(&kafka(), &topology)).unwrap();
}

/// Produces (key, value) records to `topic`, partitioned by Kafka's murmur2 partitioner.
pub fn produce(topic: &str, records: impl IntoIterator<Item = (String, Vec<u8>)>) {
    produce_at(topic, records.into_iter().map(|(key, value)| (key, value, None)));
}

/// Produces (key, value, record timestamp) records to `topic` like [`produce`]; a record
/// without a timestamp gets the producer's clock.
pub fn produce_at(topic: &str, records: impl IntoIterator<Item = (String, Vec<u8>, Option<i64>)>) {
    let producer: ThreadedProducer<DefaultProducerContext> = kafka()
        .client_config()
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    for (key, value, timestamp) in records {
        let mut record = BaseRecord::to(topic).key(&key).payload(&value);
        if let Some(timestamp) = timestamp {
            record = record.timestamp(timestamp);
        }
        send_waiting(&producer, record).expect("produce");
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// One consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Reads `topic` from the beginning with `read_committed` until at least `expected` records
/// arrived and the topic has been quiet for `settle`, or `limit` passed (then returns what it
/// has; the caller's assertions report the shortfall).
pub fn read_committed(
    topic: &str,
    expected: usize,
    settle: Duration,
    limit: Duration,
) -> Vec<Consumed> {
    let consumer: BaseConsumer = kafka()
        .client_config()
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let started = Instant::now();
    let mut last = Instant::now();
    let mut records = Vec::new();
    while started.elapsed() < limit && (records.len() < expected || last.elapsed() < settle) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                records.push(Consumed {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().map(<[u8]>::to_vec),
                });
            }
            Some(Err(e)) => panic!("consume failed: {e}"),
            None => {}
        }
    }
    records
}

/// Starts `herald example count` with `args`, logging to `log`.
pub fn spawn_counter(args: &[&str], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["example", "count"])
        .args(args)
        .env("HERALD_BROKERS", kafka().brokers)
        .env("RUST_LOG", "info,librdkafka=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start herald")
}

/// Sends SIGTERM and waits for a clean exit.
pub fn stop_gracefully(mut child: Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "instance exited with {status} after SIGTERM");
}

/// Kills with SIGKILL: no transaction commit, no checkpoint.
pub fn kill_hard(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A small deterministic pseudo-random sequence (xorshift), seeded and printed by each test.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// Sum over partitions of `topic`'s high watermarks (records, aborted ones and transaction
/// markers included; 0 for a topic not created yet): a cheap progress indicator.
pub fn end_offsets(topic: &str) -> i64 {
    let consumer: BaseConsumer = kafka().client_config().create().unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            // 0 while the topic is being created (no leader yet).
            consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).map_or(0, |w| w.1)
        })
        .sum()
}

/// The last `lines` lines of a log file, for assertion messages.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls until `topic`'s end offsets reach `at_least` (observable progress of an engine whose
/// log is `log`, shown if it never does within two minutes).
pub fn wait_for_offsets(topic: &str, at_least: i64, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while end_offsets(topic) < at_least {
        assert!(Instant::now() < deadline, "{topic} did not grow\n{}", tail(log, 30));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `herald engine` on the topics under `prefix` as application `app_id` (instance `a`),
/// keeping its state in `state_dir` and appending its log to `log`.
pub fn spawn_engine(prefix: &str, app_id: &str, state_dir: &Path, log: &Path) -> Child {
    spawn_engine_with(prefix, app_id, state_dir, log, &[])
}

/// [`spawn_engine`] with `extra` arguments (e.g. `--app-config FILE`).
pub fn spawn_engine_with(
    prefix: &str,
    app_id: &str,
    state_dir: &Path,
    log: &Path,
    extra: &[&str],
) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["engine", "--topic-prefix", prefix, "--app-id", app_id, "--instance-id", "a"])
        .args(extra)
        .arg("--state-dir")
        .arg(state_dir)
        .env("HERALD_BROKERS", kafka().brokers)
        .env("RUST_LOG", "info,librdkafka=warn")
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A profile with one device (`engine/tests/replay_support/profiles.rs`, shared with the
/// engine's replay tests).
#[path = "../../engine/tests/replay_support/profiles.rs"]
mod profiles;
pub use profiles::profile_update;

/// A profile update of app `shop` giving `user` one device on `platform` (device `d-<user>`,
/// token `tok-<user>`), keyed by user.
pub fn profile(user: &str, platform: herald_engine::model::Platform, at: i64) -> (String, Vec<u8>) {
    profile_setting(user, platform, at, &[])
}

/// [`profile`] setting the properties `set` too.
pub fn profile_setting(
    user: &str,
    platform: herald_engine::model::Platform,
    at: i64,
    set: &[(&str, herald_engine::model::PropertyValue)],
) -> (String, Vec<u8>) {
    let update = profile_update(user, platform, at, set);
    (user.to_string(), herald_engine::model::SchemaRegistry::builtin().encode(&update).unwrap())
}

/// Starts `herald engine` as instance `instance` of application `app_id` on the topics under
/// `prefix`, keeping its state in `state_dir` and appending its log (no colours) to `log`:
/// several of them with their own ids and directories form one multi-instance deployment.
pub fn spawn_engine_instance(
    prefix: &str,
    app_id: &str,
    instance: &str,
    state_dir: &Path,
    log: &Path,
    extra: &[&str],
) -> Child {
    engine_command(prefix, app_id, instance, state_dir, log, extra).spawn().unwrap()
}

/// The command [`spawn_engine_instance`] runs, to add to (e.g. environment variables).
pub fn engine_command(
    prefix: &str,
    app_id: &str,
    instance: &str,
    state_dir: &Path,
    log: &Path,
    extra: &[&str],
) -> Command {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args(["engine", "--topic-prefix", prefix, "--app-id", app_id, "--instance-id", instance])
        .args(extra)
        .arg("--state-dir")
        .arg(state_dir)
        .env("HERALD_BROKERS", kafka().brokers)
        .env("RUST_LOG", "info,librdkafka=warn")
        .env("NO_COLOR", "1")
        .stderr(log);
    command
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves no engine behind;
/// [`KillOnDrop::take`] hands it back for a deliberate stop.
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The process, no longer killed on drop.
    pub fn take(&mut self) -> Child {
        self.0.take().expect("process already taken")
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("process taken").id()
    }

    /// Whether it is still running (not taken, not exited).
    pub fn running(&mut self) -> bool {
        self.0.as_mut().is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Deletes every topic whose name starts with one of `prefixes` (a passing test's topics and
/// changelogs: the broker keeps an open file per partition, and runs add up).
pub fn delete_topics_starting_with(prefixes: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let consumer: BaseConsumer = kafka().client_config().create().unwrap();
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).unwrap();
    let names: Vec<&str> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|name| prefixes.iter().any(|p| name.starts_with(p)))
        .collect();
    if names.is_empty() {
        return;
    }
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        kafka().client_config().create().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results = runtime.block_on(admin.delete_topics(&names, &AdminOptions::new())).unwrap();
    for result in results {
        if let Err((topic, error)) = result {
            eprintln!("could not delete {topic}: {error}");
        }
    }
}

/// Polls `condition` every 200 ms until it holds or `limit` passes; whether it held.
pub fn poll_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    condition()
}

/// The names (without prefix) of the topics an engine instance reads and writes.
pub const ENGINE_TOPICS: [&str; 11] = [
    "events",
    "profiles",
    "receipts",
    "send-gate",
    "campaigns",
    "campaign-flow",
    "app-throttle",
    "push",
    "stats",
    "campaign-events",
    "dead-letter",
];

/// A local TCP port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A minimal HTTP/1.0 GET of `path` at `addr`: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// `herald ARGS` in the background from the repository's root, its output (no colours) in
/// `log`, killed on drop.
pub fn spawn_herald(args: &[&str], log: &Path) -> KillOnDrop {
    let log = std::fs::File::create(log).unwrap();
    KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("HERALD_BROKERS", kafka().brokers)
            .env("RUST_LOG", "info,librdkafka=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Creates every topic of `topologies/default.toml` under `prefix`, with at most 2 partitions.
pub fn apply_default_topology(prefix: &str) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies/default.toml");
    let mut topology = Topology::load(&file).unwrap();
    for topic in &mut topology.topics {
        topic.name = format!("{prefix}{}", topic.name);
        topic.partitions = topic.partitions.min(2);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(apply_topology(&kafka(), &topology)).unwrap();
}

/// The senders' configuration (`herald send --config`) of app `shop` against the simulator
/// listening on `listen` with its keys and CA in `sim_dir`.
pub fn sim_senders_config(sim_dir: &Path, listen: &str) -> String {
    format!(
        "apps:\n  shop:\n    apns:\n      topic: com.example.shop\n      key_file: {sim}/apns-key.p8\n      key_id: KEY1234567\n      team_id: TEAM123456\n      endpoint: https://{listen}\n    fcm:\n      service_account_file: {sim}/fcm-service-account.json\n      endpoint: https://{listen}\n    ca_file: {sim}/sim-ca.pem\n",
        sim = sim_dir.display()
    )
}
