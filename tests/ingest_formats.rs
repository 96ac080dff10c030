//! Ingest formats against the real broker and a real schema registry (Apicurio, started by
//! `deploy/local/registry.sh up`): the same logical profiles and events written as Herald JSON,
//! Segment-spec JSON, Confluent-format Avro and JSON of another shape read through a mapping give
//! byte-identical `sends.jsonl` in a topic replay and the same send commands live; hostile
//! records are dead-lettered with a reason while the engine goes on; a registry outage is
//! retried, never dead-lettered, and each record is processed once when the registry is back.

mod common;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use chrono::{DateTime, SecondsFormat};
use herald_engine::{
    kafka::apply_topology,
    model::{confluent, DeadLetter, SchemaRegistry, SendCommand},
    topology::{CleanupPolicy, TopicSpec, Topology},
};
use serde_json::{json, Value};

/// Users of the shared data set.
const USERS: usize = 12;

const CAMPAIGN: &str = "id: cart\napp: shop\nname: Cart\nwhen: { event: Added To Cart }\n\
    what: { title: \"{{ profile.first_name }} of {{ profile.city }}\", body: \"{{ event.item }} at {{ event.price }}\" }\n";

/// The registry's Confluent-compatible base URL, started once per test binary.
fn registry_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/registry.sh");
        let up = Command::new(script).arg("up").output().expect("run registry.sh");
        assert!(up.status.success(), "registry.sh up: {}", String::from_utf8_lossy(&up.stderr));
        let url = Command::new(script).arg("url").output().expect("run registry.sh url");
        String::from_utf8(url.stdout).unwrap().trim().to_string()
    })
}

fn herald(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{}\n{stderr}", String::from_utf8_lossy(&output.stdout));
    stderr
}

/// Topics of one deployment under `prefix` (user-keyed ones with 2 partitions); the events and
/// profiles topics take records up to 16 MiB.
fn create_topics(prefix: &str) {
    let spec = |name: &str, partitions: i32| TopicSpec {
        name: format!("{prefix}herald.{name}"),
        partitions,
        cleanup_policy: CleanupPolicy::Delete,
        retention_ms: None,
        description: String::new(),
        configs: if name == "events" || name == "profiles" {
            [("max.message.bytes".to_string(), (16 << 20).to_string())].into()
        } else {
            Default::default()
        },
    };
    let topics = ["events", "profiles", "receipts", "send-gate", "push"]
        .iter()
        .map(|n| spec(n, 2))
        .chain(
            [
                "campaigns",
                "campaign-flow",
                "app-throttle",
                "stats",
                "campaign-events",
                "dead-letter",
            ]
            .iter()
            .map(|n| spec(n, 1)),
        )
        .collect();
    let topology = Topology { replication_factor: 1, topics };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(apply_topology(&common::kafka(), &topology)).unwrap();
}

/// A topology file: the default one with `ingest` (TOML tables) appended.
fn topology_file(dir: &Path, ingest: &str) -> PathBuf {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/topologies/default.toml");
    let path = dir.join("topology.toml");
    std::fs::write(&path, std::fs::read_to_string(default).unwrap() + "\n" + ingest).unwrap();
    path
}

/// Publishes the campaign to the deployment's campaigns topic; returns its file.
fn apply_campaign(dir: &Path, prefix: &str) -> PathBuf {
    let file = dir.join("cart.yaml");
    std::fs::write(&file, CAMPAIGN).unwrap();
    let topic = format!("{prefix}herald.campaigns");
    ok(herald(&["campaign", "apply", "--topic", &topic, file.to_str().unwrap()], &[]));
    file
}

fn writes(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|line| line.to_string() + "\n").collect();
    std::fs::write(path, text).unwrap();
}

fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One logical data set: user `u<i>` has a profile (first name, city, one device) then adds an
/// item to the cart.
struct Data {
    base_ms: i64,
}

impl Data {
    fn profile_ms(&self, i: usize) -> i64 {
        self.base_ms + i as i64 * 100
    }

    fn event_ms(&self, i: usize) -> i64 {
        self.base_ms + 10_000 + i as i64 * 100
    }

    fn platform(i: usize) -> &'static str {
        if i % 2 == 0 {
            "ios"
        } else {
            "android"
        }
    }

    /// Herald's field names: (profile lines, event lines).
    fn herald(&self) -> (Vec<Value>, Vec<Value>) {
        let profiles = (0..USERS)
            .map(|i| {
                json!({"app_id": "shop", "user_id": format!("u{i}"), "timestamp_ms": self.profile_ms(i),
                       "set": {"first_name": format!("Ana{i}"), "city": "Paris"},
                       "devices_added": [{"device_id": format!("d-u{i}"), "platform": Self::platform(i).to_uppercase(),
                                          "token": format!("tok-u{i}")}]})
            })
            .collect();
        let events = (0..USERS)
            .map(|i| {
                json!({"event_id": format!("e-u{i}"), "app_id": "shop", "user_id": format!("u{i}"),
                       "name": "Added To Cart", "timestamp_ms": self.event_ms(i),
                       "properties": {"item": format!("tea-{i}"), "price": i as f64 + 0.5}})
            })
            .collect();
        (profiles, events)
    }

    /// Another JSON shape, read through a mapping: (profile lines, event lines).
    fn mapped(&self) -> (Vec<Value>, Vec<Value>) {
        let profiles = (0..USERS)
            .map(|i| {
                json!({"actor": {"id": format!("u{i}")}, "at": self.profile_ms(i),
                       "attributes": {"first_name": format!("Ana{i}"), "city": "Paris"},
                       "push_devices": [{"device_id": format!("d-u{i}"), "platform": Self::platform(i), "token": format!("tok-u{i}")}]})
            })
            .collect();
        let events = (0..USERS)
            .map(|i| {
                json!({"uuid": format!("e-u{i}"), "actor": {"id": format!("u{i}")}, "action": "Added To Cart",
                       "at": self.event_ms(i), "data": {"item": format!("tea-{i}"), "price": i as f64 + 0.5}})
            })
            .collect();
        (profiles, events)
    }

    /// Segment-spec messages, all on one stream: identify (traits, device in the context), then
    /// track.
    fn segment(&self) -> Vec<Value> {
        let identify = (0..USERS).map(|i| {
            json!({"type": "identify", "userId": format!("u{i}"), "timestamp": rfc3339(self.profile_ms(i)),
                   "messageId": format!("id-u{i}"), "traits": {"first_name": format!("Ana{i}"), "city": "Paris"},
                   "context": {"device": {"id": format!("d-u{i}"), "type": Self::platform(i), "token": format!("tok-u{i}")}}})
        });
        let track = (0..USERS).map(|i| {
            json!({"type": "track", "event": "Added To Cart", "userId": format!("u{i}"),
                   "messageId": format!("e-u{i}"), "timestamp": rfc3339(self.event_ms(i)),
                   "properties": {"item": format!("tea-{i}"), "price": i as f64 + 0.5}})
        });
        identify.chain(track).collect()
    }
}

/// One deployment of the data set in one format.
struct Deployment {
    prefix: String,
    topology: PathBuf,
    campaign: PathBuf,
    envs: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

impl Deployment {
    fn topic(&self, name: &str) -> String {
        format!("{}herald.{name}", self.prefix)
    }

    fn envs(&self) -> Vec<(&str, &str)> {
        self.envs.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn produce(&self, topic: &str, format: &str, schema: Option<&str>, lines: &[Value]) {
        self.produce_with(topic, format, schema, lines, &[]);
    }

    /// [`Deployment::produce`] of another shape: keyed and timed by fields (JSON pointers).
    fn produce_mapped(&self, topic: &str, lines: &[Value], key_field: &str, time_field: &str) {
        self.produce_with(
            topic,
            "json",
            None,
            lines,
            &["--key-field", key_field, "--time-field", time_field],
        );
    }

    fn produce_with(
        &self,
        topic: &str,
        format: &str,
        schema: Option<&str>,
        lines: &[Value],
        extra: &[&str],
    ) {
        let file = self._dir.path().join(format!("{topic}.{format}.jsonl"));
        writes(&file, lines);
        let topic = self.topic(topic);
        let mut args = vec![
            "produce",
            "--topic",
            &topic,
            "--format",
            format,
            "--file",
            file.to_str().unwrap(),
        ];
        if let Some(schema) = schema {
            args.extend(["--schema", schema]);
        }
        args.extend(extra);
        // Producers always reach the registry (the engine may not, see the outage test).
        ok(herald(&args, &[("HERALD_SCHEMA_REGISTRY_URL", registry_url())]));
    }

    /// `herald replay --from-topics` of the deployment: the bytes of its `sends.jsonl`.
    fn replay(&self) -> String {
        let out = self._dir.path().join("replay");
        ok(herald(
            &[
                "replay",
                "--campaigns",
                self.campaign.to_str().unwrap(),
                "--from-topics",
                "--topic-prefix",
                &self.prefix,
                "--topology",
                self.topology.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &self.envs(),
        ));
        std::fs::read_to_string(out.join("sends.jsonl")).unwrap()
    }

    /// Waits until the engine has committed `n` profile states: the profiles are read before
    /// events are produced (the engine reads the two topics in no particular order).
    fn wait_for_profiles(&self, n: usize, log: &Path) {
        let changelog = format!("{}app-profiles-changelog", self.prefix);
        let started = Instant::now();
        while common::end_offsets(&changelog) < n as i64 {
            assert!(started.elapsed() < Duration::from_secs(120), "{}", common::tail(log, 20));
            thread::sleep(Duration::from_millis(100));
        }
        let committed =
            common::read_committed(&changelog, n, Duration::ZERO, Duration::from_secs(120));
        assert!(committed.len() >= n, "{}", common::tail(log, 20));
    }

    fn spawn_engine(&self, extra: &[&str]) -> Engine {
        let log_path = self._dir.path().join("engine.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["engine", "--topic-prefix", &self.prefix, "--instance-id", "a"])
            .args(["--app-id", &format!("{}app", self.prefix)])
            .args(["--topology", self.topology.to_str().unwrap()])
            .arg("--state-dir")
            .arg(self._dir.path().join("state"))
            .args(extra)
            .env("HERALD_BROKERS", common::kafka().brokers)
            .env("RUST_LOG", "info,librdkafka=warn")
            .envs(self.envs())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Engine { child: Some(child), log: log_path }
    }
}

/// A running engine, killed if the test fails before stopping it.
struct Engine {
    child: Option<Child>,
    log: PathBuf,
}

impl Engine {
    /// Stops the engine with SIGTERM and checks it exits cleanly.
    fn stop(mut self) {
        if let Some(child) = self.child.take() {
            common::stop_gracefully(child);
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn deployment(name: &str, ingest: &str, envs: Vec<(&'static str, String)>) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}-", common::unique(name));
    create_topics(&prefix);
    let topology = topology_file(dir.path(), ingest);
    let campaign = apply_campaign(dir.path(), &prefix);
    Deployment { prefix, topology, campaign, envs, _dir: dir }
}

fn registry_env() -> Vec<(&'static str, String)> {
    vec![("HERALD_SCHEMA_REGISTRY_URL", registry_url().to_string())]
}

/// Send commands on `topic`, sorted: (user, message id, token, payload), once `expected`
/// arrived.
fn sends(topic: &str, expected: usize) -> Vec<(String, String, String, String)> {
    let mut sends: Vec<_> =
        common::read_committed(topic, expected, Duration::from_secs(2), Duration::from_secs(120))
            .iter()
            .map(|r| {
                let c: SendCommand =
                    SchemaRegistry::builtin().decode(r.value.as_deref().unwrap()).unwrap();
                (c.user_id, c.message_id, c.token, c.payload)
            })
            .collect();
    sends.sort();
    sends
}

#[test]
fn herald_json_segment_json_confluent_avro_and_mapped_json_give_identical_replays_and_live_sends() {
    let data = Data { base_ms: common::now_ms() - 120_000 };
    let (profiles, events) = data.herald();

    let json = deployment(
        "fmt-json",
        "[ingest]\nevents = { format = \"json\" }\nprofiles = { format = \"json\" }\n",
        vec![],
    );
    let segment = deployment(
        "fmt-segment",
        "[ingest]\nevents = { format = \"segment\", app = \"shop\" }\n",
        vec![],
    );
    let avro = deployment(
        "fmt-confluent",
        "[ingest]\nevents = { format = \"confluent\" }\nprofiles = { format = \"confluent\" }\n",
        registry_env(),
    );
    let mapped = deployment(
        "fmt-mapping",
        "[ingest.events]\nformat = \"mapping\"\napp = \"shop\"\n\
         mapping = { user = \"/actor/id\", event = \"/action\", time = \"/at\", id = \"/uuid\", properties = \"/data\" }\n\
         [ingest.profiles]\nformat = \"mapping\"\napp = \"shop\"\n\
         mapping = { user = \"/actor/id\", time = \"/at\", properties = \"/attributes\", devices = \"/push_devices\" }\n",
        vec![],
    );
    let (mapped_profiles, mapped_events) = data.mapped();
    let all = [&json, &segment, &avro, &mapped];

    // Live: the same send commands (ids, tokens, payloads).
    let engines: Vec<Engine> = all.iter().map(|d| d.spawn_engine(&[])).collect();
    json.produce("profiles", "json", None, &profiles);
    avro.produce("profiles", "confluent", Some("ProfileUpdate"), &profiles);
    mapped.produce_mapped("profiles", &mapped_profiles, "/actor/id", "/at");
    json.wait_for_profiles(USERS, &engines[0].log);
    avro.wait_for_profiles(USERS, &engines[2].log);
    mapped.wait_for_profiles(USERS, &engines[3].log);
    json.produce("events", "json", None, &events);
    // One Segment stream: each user's identify, then their track, on the events topic.
    segment.produce("events", "segment", None, &data.segment());
    avro.produce("events", "confluent", Some("AppEvent"), &events);
    mapped.produce_mapped("events", &mapped_events, "/actor/id", "/at");
    let live: Vec<_> = all.iter().map(|d| sends(&d.topic("push"), USERS)).collect();
    let logs: Vec<String> = engines.iter().map(|e| common::tail(&e.log, 15)).collect();
    for engine in engines {
        engine.stop();
    }
    assert_eq!(live[0].len(), USERS, "{}", logs[0]);
    assert_eq!(live[1], live[0], "Segment live\n{}", logs[1]);
    assert_eq!(live[2], live[0], "Confluent live\n{}", logs[2]);
    assert_eq!(live[3], live[0], "mapped JSON live\n{}", logs[3]);

    // The records on the topic are Confluent-framed: magic byte 0 and a schema id.
    let framed = common::read_committed(
        &avro.topic("events"),
        USERS,
        Duration::ZERO,
        Duration::from_secs(30),
    );
    for record in &framed {
        let (id, _) = confluent::split(record.value.as_deref().unwrap()).unwrap();
        assert!(id > 0);
    }

    // Replays: byte-identical sends.jsonl, one send per user, with traits and properties.
    let replays: Vec<String> = all.iter().map(|d| d.replay()).collect();
    let lines: Vec<Value> = replays[0].lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let users: BTreeSet<String> =
        lines.iter().map(|l| l["user_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(users, (0..USERS).map(|i| format!("u{i}")).collect::<BTreeSet<_>>());
    let u3 = lines.iter().find(|l| l["user_id"] == "u3").unwrap();
    assert_eq!(
        (u3["title"].as_str(), u3["body"].as_str()),
        (Some("Ana3 of Paris"), Some("tea-3 at 3.5"))
    );
    assert_eq!((u3["platform"].as_str(), u3["token"].as_str()), (Some("ANDROID"), Some("tok-u3")));
    assert_eq!(replays[1], replays[0], "Segment JSON replays as Herald JSON");
    assert_eq!(replays[2], replays[0], "Confluent Avro replays as Herald JSON");
    assert_eq!(replays[3], replays[0], "mapped JSON replays as Herald JSON");
}

/// The dead letters of `topic` (after `expected` arrived): (source topic, offset, reason).
fn dead_letters(topic: &str, expected: usize) -> Vec<(String, i64, String)> {
    let mut letters: Vec<_> =
        common::read_committed(topic, expected, Duration::from_secs(2), Duration::from_secs(120))
            .iter()
            .map(|r| {
                let l: DeadLetter =
                    SchemaRegistry::builtin().decode(r.value.as_deref().unwrap()).unwrap();
                (l.source_topic, l.source_offset, l.reason)
            })
            .collect();
    letters.sort();
    letters
}

#[test]
fn hostile_records_are_dead_lettered_with_a_reason_and_the_engine_goes_on() {
    let d = deployment(
        "fmt-hostile",
        "[ingest]\nevents = { format = \"confluent\" }\nprofiles = { format = \"segment\", app = \"shop\" }\n",
        registry_env(),
    );
    let now = common::now_ms();
    let data = Data { base_ms: now - 60_000 };
    let (profiles, events) = data.herald();
    let engine = d.spawn_engine(&[]);
    let log = engine.log.clone();
    // Hostile profiles, then a valid one for u0 (its send shows the engine went on).
    let key = || "u0".to_string();
    let huge = json!({"type": "identify", "userId": "u0", "timestamp": rfc3339(now),
                      "traits": {"blob": "x".repeat(10 << 20)}});
    let segment_min = json!({"type": "identify", "userId": "u0", "timestamp": i64::MIN});
    produce_large(
        &d.topic("profiles"),
        vec![(key(), huge.to_string().into_bytes()), (key(), segment_min.to_string().into_bytes())],
    );
    d.produce("profiles", "avro", Some("ProfileUpdate"), &profiles[..1]);
    d.wait_for_profiles(1, &log);
    // Hostile events, then a valid one for u0.
    let event = |timestamp_ms: i64| {
        let mut event = events[0].clone();
        event["timestamp_ms"] = json!(timestamp_ms);
        event
    };
    d.produce("events", "confluent", Some("AppEvent"), &[event(i64::MIN)]);
    let good =
        common::read_committed(&d.topic("events"), 1, Duration::ZERO, Duration::from_secs(30));
    let valid = good[0].value.clone().unwrap();
    let (id, datum) = confluent::split(&valid).unwrap();
    let mut wrong_magic = valid.clone();
    wrong_magic[0] = 1;
    let hostile_events = vec![
        (key(), wrong_magic),
        (key(), confluent::frame(999_999, datum)),
        (key(), confluent::frame(id, &datum[..datum.len() / 2])),
    ];
    produce_large(&d.topic("events"), hostile_events);
    d.produce("events", "confluent", Some("AppEvent"), &[event(data.event_ms(0))]);

    let letters = dead_letters(&d.topic("dead-letter"), 6);
    let sent = sends(&d.topic("push"), 1);
    engine.stop();

    let (events_topic, profiles_topic) = (d.topic("events"), d.topic("profiles"));
    let expected: [(&str, i64, &str); 6] = [
        (&events_topic, 0, "timestamp_ms: -9223372036854775808 is outside"),
        (&events_topic, 1, "Confluent record: magic byte: expected 00, found 01"),
        (&events_topic, 2, "Confluent record: schema id: 999999 is not in the schema registry"),
        (&events_topic, 3, "corrupt io.herald.AppEvent (schema id"),
        (&profiles_topic, 0, "larger than the ingest limit of 1048576 bytes"),
        (&profiles_topic, 1, "Segment record: timestamp: -9223372036854775808 is outside"),
    ];
    let shown = format!("{letters:#?}\n{}", common::tail(&log, 20));
    assert_eq!(letters.len(), expected.len(), "{shown}");
    for ((topic, offset, reason), (want_topic, want_offset, want_reason)) in
        letters.iter().zip(expected)
    {
        assert_eq!((topic.as_str(), *offset), (want_topic, want_offset), "{shown}");
        assert!(reason.contains(want_reason), "{reason:?} lacks {want_reason:?}\n{shown}");
    }
    let users: Vec<&str> = sent.iter().map(|(user, ..)| user.as_str()).collect();
    assert_eq!(users, ["u0"], "the valid event after them was sent\n{shown}");
}

/// Produces (key, value) records of up to 16 MiB to `topic`.
fn produce_large(topic: &str, records: Vec<(String, Vec<u8>)>) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = common::kafka()
        .client_config()
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("message.max.bytes", (16 << 20).to_string())
        .create()
        .unwrap();
    for (key, value) in records {
        herald_engine::kafka::send_waiting(
            &producer,
            BaseRecord::to(topic).key(&key).payload(&value),
        )
        .expect("produce");
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// A TCP relay to the schema registry that refuses connections (the registry is "down") until
/// [`Relay::open`].
struct Relay {
    port: u16,
}

impl Relay {
    /// A relay on a free port where nothing listens yet.
    fn closed() -> Self {
        Relay { port: common::free_port() }
    }

    fn url(&self) -> String {
        let path = registry_url().splitn(4, '/').nth(3).unwrap_or_default().to_string();
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Starts relaying every connection to the registry.
    fn open(&self) {
        let target =
            registry_url().trim_start_matches("http://").split('/').next().unwrap().to_string();
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    thread::spawn(move || {
                        let mut buffer = [0u8; 16 << 10];
                        while let Ok(n @ 1..) = from.read(&mut buffer) {
                            if to.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
    }
}

/// The value of counter `name` on the engine's metrics page (0 while it does not answer).
fn metric(addr: &str, name: &str) -> f64 {
    let Ok(mut stream) = TcpStream::connect(addr) else { return 0.0 };
    let _ = write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut page = String::new();
    let _ = stream.read_to_string(&mut page);
    page.lines()
        .filter(|line| !line.starts_with('#') && line.contains(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_registry_outage_is_retried_and_each_record_is_processed_once_when_it_is_back() {
    let relay = Relay::closed();
    let d = deployment(
        "fmt-outage",
        "[ingest]\nevents = { format = \"confluent\" }\n",
        vec![("HERALD_SCHEMA_REGISTRY_URL", relay.url())],
    );
    let data = Data { base_ms: common::now_ms() - 60_000 };
    let (profiles, events) = data.herald();
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let engine = d.spawn_engine(&["--metrics-addr", &metrics]);
    let log = engine.log.clone();
    d.produce("profiles", "avro", Some("ProfileUpdate"), &profiles);
    d.wait_for_profiles(USERS, &log);
    // Registered with the real registry; the engine reaches it only through the relay.
    d.produce("events", "confluent", Some("AppEvent"), &events);
    let started = Instant::now();
    while metric(&metrics, "input_unavailable_total") < 2.0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no retries\n{}",
            common::tail(&log, 20)
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(common::end_offsets(&d.topic("push")), 0, "nothing sent while the registry is down");
    assert_eq!(common::end_offsets(&d.topic("dead-letter")), 0, "nothing dead-lettered");

    relay.open();
    let sent = sends(&d.topic("push"), USERS);
    let letters = common::end_offsets(&d.topic("dead-letter"));
    let retries = metric(&metrics, "input_unavailable_total");
    engine.stop();
    let users: BTreeSet<&str> = sent.iter().map(|(user, ..)| user.as_str()).collect();
    assert_eq!(users.len(), USERS, "{}", common::tail(&log, 20));
    assert_eq!(sent.len(), USERS, "one send per event, each processed once");
    assert_eq!(letters, 0, "an outage is not a bad record");
    assert!(retries >= 2.0);
}
