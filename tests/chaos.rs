//! The chaos suite (issue 12, item 4): the closed loop — a broker of its own, one engine, two
//! senders, the simulator with a device population — under a scripted schedule of faults:
//! SIGKILL of the engine and of a sender (several times each), SIGTERM of a sender mid-batch, a
//! broker restart, provider faults (503, 429 with Retry-After, dropped connections, GOAWAY, the
//! OAuth token endpoint down) and, when Toxiproxy is installed (`deploy/local/toxiproxy.sh`),
//! network faults between Herald and the broker (latency, connections cut).
//!
//! The campaigns have an outcome known from what the test produced: `pings` sends on every
//! `Ping`, `cart` on an `Added To Cart` not followed by a `Charged` within 30 s (half are), and
//! `broadcast` is a scheduled run to the whole population with a total limit. The end checks,
//! from the topics and the simulator's own records: every qualifying trigger produced exactly
//! one send command (by message id), the broadcast exactly its limit; every command exactly one
//! final receipt; no device received a message id twice, and each accepted one arrived; the
//! campaign stats equal the counts on the topics; no process died by itself. It prints a table
//! of the faults injected and of the checks, and one JSON line.
//!
//! `chaos_short` runs in `make test`; `make chaos` runs the full schedule (`chaos_full`,
//! ignored otherwise). Both use a broker on port 19092 with its data under `.local/kafka-chaos`,
//! started (and restarted) through `deploy/local/kafka.sh`, never the shared one.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{OsStr, OsString},
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::KillOnDrop;
use herald_engine::{
    kafka::send_waiting,
    model::{
        scheduled_run_id, triggered_run_id, AppEvent, CampaignStats, PropertyValue, Receipt,
        ReceiptStatus, SchemaRegistry, SendCommand,
    },
    payload::message_id,
    runtime::{
        LiveRuntime, ProcessError, Processor, ProcessorContext, RuntimeConfig, RuntimeError,
        ShutdownFlag, SourceRecord, StreamTopology,
    },
    sim::population::member,
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::DeliveryResult,
    producer::{BaseRecord, Producer, ProducerContext, PurgeConfig, ThreadedProducer},
    ClientContext, Message, Offset, TopicPartitionList,
};

/// The chaos broker's port (the shared one is on 9092).
const BROKER_PORT: u16 = 19092;
/// Toxiproxy's listener in front of it: what the broker advertises when Toxiproxy is there.
const PROXY_PORT: u16 = 19094;
/// Toxiproxy's API.
const TOXIPROXY_API: &str = "127.0.0.1:18474";
/// Bound by the run that holds the chaos broker.
const BROKER_LOCK: &str = "127.0.0.1:18475";
/// The cart campaign's inaction window.
const WINDOW_S: i64 = 30;
/// Partitions of the user-keyed topics (`herald topics apply`).
const USER_PARTITIONS: i32 = 8;
/// One round of traffic: a ping, and every other round a cart.
const ROUND: Duration = Duration::from_millis(100);

/// One fault of the schedule.
#[derive(Debug, Clone)]
enum Step {
    /// Sets simulator faults (`name=value`).
    Provider(&'static [&'static str]),
    /// Back to the simulator's start faults.
    ProviderReset,
    KillEngine,
    KillSender(usize),
    /// SIGTERM while receipts flow; it must exit cleanly, and is restarted.
    TermSender(usize),
    /// The OAuth token endpoint down this long; sender 0 is SIGKILLed in the middle (its
    /// replacement has no FCM access token).
    TokenOutage(Duration),
    /// `kafka.sh down` and `up` of the chaos broker.
    BrokerRestart,
    /// 300 ms (± 100) more latency both ways between Herald and the broker, this long.
    NetworkLatency(Duration),
    /// Every connection to the broker cut and refused, this long.
    NetworkCut(Duration),
}

impl Step {
    /// The row of the faults table this step counts in.
    fn label(&self) -> String {
        match self {
            Step::Provider(specs) => format!("provider: {}", specs.join(", ")),
            Step::ProviderReset => "provider faults reset".into(),
            Step::KillEngine => "engine SIGKILL + restart".into(),
            Step::KillSender(i) => format!("sender {} SIGKILL + restart", sender_name(*i)),
            Step::TermSender(i) => {
                format!("sender {} SIGTERM mid-batch + restart", sender_name(*i))
            }
            Step::TokenOutage(d) => {
                format!("OAuth token endpoint down {} s (sender a SIGKILLed in it)", d.as_secs())
            }
            Step::BrokerRestart => "broker restart (kafka.sh down, up)".into(),
            Step::NetworkLatency(d) => {
                format!("network: +300±100 ms latency to the broker, {} s", d.as_secs())
            }
            Step::NetworkCut(d) => format!("network: broker connections cut, {} s", d.as_secs()),
        }
    }

    fn needs_network(&self) -> bool {
        matches!(self, Step::NetworkLatency(_) | Step::NetworkCut(_))
    }
}

fn sender_name(i: usize) -> &'static str {
    ["a", "b"][i]
}

/// How big and how long.
struct Plan {
    name: &'static str,
    users: usize,
    broadcast_limit: usize,
    /// The broadcast runs this long after the schedule starts.
    broadcast_after: Duration,
    /// Receipts between two steps (each fault hits a live flow).
    progress: usize,
    steps: Vec<Step>,
}

const SLOW_503: &[&str] = &["unavailable=0.05"];
const RATE_LIMITED: &[&str] = &["too_many_requests=0.02", "retry_after=2"];
const CONNECTIONS: &[&str] = &["drop_connection=0.005", "goaway_after=100"];

impl Plan {
    fn short() -> Self {
        use Step::*;
        Self {
            name: "short",
            users: 1_000,
            broadcast_limit: 300,
            broadcast_after: Duration::from_secs(15),
            progress: 60,
            steps: vec![
                Provider(SLOW_503),
                KillEngine,
                KillSender(0),
                Provider(RATE_LIMITED),
                TermSender(1),
                ProviderReset,
                Provider(CONNECTIONS),
                KillEngine,
                TokenOutage(Duration::from_secs(10)),
                BrokerRestart,
                NetworkLatency(Duration::from_secs(5)),
                NetworkCut(Duration::from_secs(5)),
                ProviderReset,
            ],
        }
    }

    fn full() -> Self {
        use Step::*;
        Self {
            name: "full",
            users: 3_000,
            broadcast_limit: 1_500,
            broadcast_after: Duration::from_secs(45),
            progress: 250,
            steps: vec![
                Provider(SLOW_503),
                KillEngine,
                KillSender(0),
                Provider(RATE_LIMITED),
                TermSender(1),
                KillEngine,
                ProviderReset,
                Provider(CONNECTIONS),
                KillSender(1),
                TokenOutage(Duration::from_secs(30)),
                KillEngine,
                BrokerRestart,
                Provider(SLOW_503),
                KillSender(0),
                NetworkLatency(Duration::from_secs(15)),
                TermSender(0),
                NetworkCut(Duration::from_secs(10)),
                KillEngine,
                Provider(RATE_LIMITED),
                KillSender(1),
                NetworkCut(Duration::from_secs(5)),
                ProviderReset,
            ],
        }
    }
}

/// The repository (the root package's directory).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `deploy/local/kafka.sh <action>` for the chaos broker, advertising `advertised`.
fn broker(action: &str, advertised: u16) {
    let out = Command::new(repo().join("deploy/local/kafka.sh"))
        .arg(action)
        .env("KAFKA_PORT", BROKER_PORT.to_string())
        .env("KAFKA_DIR", repo().join(".local/kafka-chaos"))
        .env("KAFKA_ADVERTISED_PORT", advertised.to_string())
        .output()
        .expect("deploy/local/kafka.sh");
    assert!(
        out.status.success(),
        "kafka.sh {action}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the chaos broker unless it runs already with the same advertised port.
fn broker_up(advertised: u16) {
    let config = repo().join(".local/kafka-chaos/server.properties");
    let same = std::fs::read_to_string(config)
        .unwrap_or_default()
        .contains(&format!("advertised.listeners=PLAINTEXT://127.0.0.1:{advertised}\n"));
    if !same {
        broker("down", advertised);
    }
    let home = repo().join(".local/kafka-chaos");
    let stopped = !Command::new(repo().join("deploy/local/kafka.sh"))
        .arg("status")
        .env("KAFKA_DIR", &home)
        .output()
        .expect("deploy/local/kafka.sh")
        .status
        .success();
    if stopped {
        // A stopped chaos broker holds only earlier runs' topics (each run's are unique), and
        // loading them grew its start past kafka.sh's 60 s: it starts from empty storage.
        let _ = std::fs::remove_dir_all(home.join("data"));
    }
    broker("up", advertised);
}

/// Toxiproxy in front of the chaos broker, if installed.
struct Toxiproxy {
    _server: KillOnDrop,
}

impl Toxiproxy {
    fn start(dir: &Path) -> Option<Self> {
        let binary = repo().join(".local/bin/toxiproxy-server");
        if !binary.exists() {
            return None;
        }
        let (host, port) = TOXIPROXY_API.split_once(':').unwrap();
        let log = std::fs::File::create(dir.join("toxiproxy.log")).unwrap();
        let server = Command::new(binary)
            .args(["-host", host, "-port", port])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let proxy = Self { _server: KillOnDrop::new(server) };
        let up = poll_until(Duration::from_secs(20), || toxiproxy("GET", "/version", "").is_ok());
        assert!(up, "toxiproxy did not start\n{}", common::tail(&dir.join("toxiproxy.log"), 20));
        let body = format!(
            r#"{{"name":"kafka","listen":"127.0.0.1:{PROXY_PORT}","upstream":"127.0.0.1:{BROKER_PORT}","enabled":true}}"#
        );
        // A server left by a killed run may still have it.
        let _ = toxiproxy("DELETE", "/proxies/kafka", "");
        toxiproxy("POST", "/proxies", &body).expect("creating the kafka proxy");
        Some(proxy)
    }

    fn latency(&self, on: bool) {
        for stream in ["upstream", "downstream"] {
            let name = format!("latency_{stream}");
            let result = if on {
                let body = format!(
                    r#"{{"name":"{name}","type":"latency","stream":"{stream}","attributes":{{"latency":300,"jitter":100}}}}"#
                );
                toxiproxy("POST", "/proxies/kafka/toxics", &body)
            } else {
                toxiproxy("DELETE", &format!("/proxies/kafka/toxics/{name}"), "")
            };
            result.expect("toxiproxy latency");
        }
    }

    fn enabled(&self, enabled: bool) {
        toxiproxy("POST", "/proxies/kafka", &format!(r#"{{"enabled":{enabled}}}"#))
            .expect("toxiproxy enable/disable");
    }
}

/// One HTTP/1.1 request to Toxiproxy's API; the response body on a 2xx.
fn toxiproxy(method: &str, path: &str, body: &str) -> Result<String, String> {
    let mut stream = std::net::TcpStream::connect(TOXIPROXY_API).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {TOXIPROXY_API}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response.split_whitespace().nth(1).unwrap_or_default().to_string();
    if status.starts_with('2') {
        Ok(response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
    } else {
        Err(format!("{method} {path}: {response}"))
    }
}

/// Copies the `*.log` files of `dir` to a new directory that outlives the run; its path.
fn keep_logs(dir: &Path) -> PathBuf {
    let kept = std::env::temp_dir().join(common::unique("chaos-logs"));
    std::fs::create_dir_all(&kept).unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|ext| ext == "log") {
            let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
        }
    }
    kept
}

/// Polls `done` every 100 ms until it holds or `limit` passed; whether it holds.
fn poll_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One process of the loop: `herald <args>` on the chaos broker, appending to its log.
struct Process {
    name: String,
    herald: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    child: KillOnDrop,
    /// Fatal errors in its log already dealt with.
    fatal_seen: usize,
}

impl Process {
    fn start(name: &str, herald: &Path, args: Vec<OsString>, log: PathBuf) -> Self {
        let child = KillOnDrop::new(spawn(herald, &args, &log));
        let herald = herald.to_path_buf();
        Self { name: name.into(), herald, args, log, child, fatal_seen: 0 }
    }

    fn kill(&mut self) {
        common::kill_hard(self.child.take());
    }

    fn restart(&mut self) {
        self.child = KillOnDrop::new(spawn(&self.herald, &self.args, &self.log));
    }

    /// SIGTERM: must exit cleanly within a minute.
    fn terminate(&mut self) -> Result<(), String> {
        let mut child = self.child.take();
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        let exited =
            poll_until(Duration::from_secs(60), || matches!(child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        if exited && status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} exited with {status} after SIGTERM (exited in 60 s: {exited})",
                self.name
            ))
        }
    }

    /// Restarts it if it exited without being told to; the exit, if so.
    fn supervise(&mut self) -> Option<String> {
        if self.child.running() {
            return None;
        }
        let status = self.child.take().wait().map(|s| s.to_string()).unwrap_or_default();
        let tail = common::tail(&self.log, 5);
        self.fatal_seen = self.fatal_errors().len();
        self.restart();
        // A sender logs the signal it stopped on: one this suite did not send came from elsewhere
        // (a stale pid file's process once: deploy/demo/down.sh before df2eb4a).
        let signalled = if tail.contains("stopping on a signal") {
            ", on a signal sent by another process"
        } else {
            ""
        };
        Some(format!("{} exited by itself ({status}{signalled}); last lines:\n{tail}", self.name))
    }

    /// Restarts it (SIGKILL) if its log has a fatal error not dealt with before: alive but stuck
    /// (e.g. a consumer fenced for good). The error, if so.
    fn unstick(&mut self) -> Option<String> {
        let fatal = self.fatal_errors();
        if fatal.len() <= self.fatal_seen {
            return None;
        }
        self.fatal_seen = fatal.len();
        self.kill();
        self.restart();
        Some(format!("{} alive but stuck after: {}", self.name, fatal[fatal.len() - 1]))
    }

    /// Writes the threads' stacks of the running process to `<dir>/<name>.stacks.txt`, when
    /// gdb is installed: where a process that stopped making progress is blocked.
    fn dump_stacks(&self, dir: &Path) {
        let Ok(out) = Command::new("gdb")
            .args(["-p", &self.child.id().to_string(), "-batch", "-ex", "thread apply all bt"])
            .output()
        else {
            return;
        };
        let _ = std::fs::write(dir.join(format!("{}.stacks.txt", self.name)), out.stdout);
    }

    /// The fatal errors in its log.
    fn fatal_errors(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|l| l.contains("(Fatal)")).map(str::to_string).collect()
    }
}

/// Starts `herald <args>` on the chaos broker, appending its log (no colours) to `log`.
fn spawn(herald: &Path, args: &[OsString], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(herald)
        .args(args)
        .env("HERALD_BROKERS", common::kafka().brokers)
        .env("RUST_LOG", "info,librdkafka=warn")
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `herald` arguments.
fn args(parts: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_os_string()).collect()
}

/// What went wrong with the processes themselves.
#[derive(Default)]
struct Incidents {
    died: Vec<String>,
    stuck: Vec<String>,
    stops: Vec<String>,
}

/// Restarts what died; with `logs`, also what is stuck on a fatal error.
fn tend(processes: &mut [Process], incidents: &mut Incidents, logs: bool) {
    incidents.died.extend(processes.iter_mut().filter_map(Process::supervise));
    if logs {
        incidents.stuck.extend(processes.iter_mut().filter_map(Process::unstick));
    }
}

/// How often the logs are searched for fatal errors.
const LOG_CHECK: Duration = Duration::from_secs(3);

/// Polls `done` until it holds or `limit` passed, tending the processes meanwhile; whether it
/// holds.
fn tended_until(
    processes: &mut [Process],
    incidents: &mut Incidents,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let mut checked = Instant::now();
    poll_until(limit, || {
        let logs = checked.elapsed() >= LOG_CHECK;
        if logs {
            checked = Instant::now();
        }
        tend(processes, incidents, logs);
        done()
    })
}

/// Reads a topic (read_committed) from the start in a thread, all along the run, through
/// broker restarts and network cuts.
struct Watcher<T> {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<T>>>,
    handle: Option<JoinHandle<()>>,
}

impl<T: Send + Clone + 'static> Watcher<T> {
    fn start(topic: String, partitions: i32, decode: fn(&[u8]) -> T) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (flag, into) = (Arc::clone(&stop), Arc::clone(&seen));
        let handle = std::thread::spawn(move || {
            let consumer: BaseConsumer = common::kafka()
                .client_config()
                .set("group.id", common::unique("chaos-watcher"))
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .create()
                .unwrap();
            let mut assignment = TopicPartitionList::new();
            for partition in 0..partitions {
                assignment.add_partition_offset(&topic, partition, Offset::Beginning).unwrap();
            }
            consumer.assign(&assignment).unwrap();
            while !flag.load(Ordering::SeqCst) {
                // Errors while the broker is away are transient: the consumer reconnects.
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    if let Some(value) = m.payload() {
                        into.lock().unwrap().push(decode(value));
                    }
                }
            }
        });
        Self { stop, seen, handle: Some(handle) }
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn snapshot(&self) -> Vec<T> {
        self.seen.lock().unwrap().clone()
    }
}

impl<T> Drop for Watcher<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// A qualifying trigger (or a converted cart, which qualifies for nothing).
#[derive(Debug, Clone)]
struct Trigger {
    campaign: &'static str,
    user: usize,
    event_id: String,
    converted: bool,
}

impl Trigger {
    fn message_id(&self) -> String {
        let (user, device) = member(self.user);
        message_id(self.campaign, &triggered_run_id(&self.event_id), &user, &device.device_id)
    }
}

/// Scripted app events from a thread: every round a `Ping` of a user; every other round an
/// `Added To Cart` of a user who has had none (so windows never overlap), half of them followed
/// by a `Charged`.
struct Traffic {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Vec<Trigger>, usize)>,
}

impl Traffic {
    fn start(topic: String, users: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || run_traffic(&topic, users, &flag));
        Self { stop, handle }
    }

    /// Stops it; every trigger produced (acknowledged by the broker), and how many events were
    /// sent again.
    fn stop(self) -> (Vec<Trigger>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("traffic thread")
    }
}

/// Events whose delivery failed, (key, value) in the order reported.
type Undelivered = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Keeps the events whose delivery failed, to be sent again.
struct KeepFailed(Undelivered);

impl ClientContext for KeepFailed {}

impl ProducerContext for KeepFailed {
    type DeliveryOpaque = Box<(String, Vec<u8>)>;

    fn delivery(&self, result: &DeliveryResult<'_>, record: Self::DeliveryOpaque) {
        if result.is_err() {
            self.0.lock().unwrap().push(*record);
        }
    }
}

/// The test's own app-event producer, like an SDK pipeline's: what fails to be delivered is sent
/// again with its event id (Herald de-duplicates at its door), and a producer left unusable by
/// a broker restart (idempotence's fatal errors) is replaced.
struct EventProducer {
    topic: String,
    failed: Undelivered,
    producer: ThreadedProducer<KeepFailed>,
    /// Events sent again.
    resent: usize,
}

impl EventProducer {
    fn new(topic: String) -> Self {
        let failed = Undelivered::default();
        let producer = Self::connect(&failed);
        Self { topic, failed, producer, resent: 0 }
    }

    fn connect(failed: &Undelivered) -> ThreadedProducer<KeepFailed> {
        common::kafka()
            .client_config()
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            // Undelivered after this long: failed, and sent again by a new producer (an
            // idempotent producer can stay wedged after a broker restart).
            .set("message.timeout.ms", "30000")
            .create_with_context(KeepFailed(Arc::clone(failed)))
            .unwrap()
    }

    fn send(&mut self, key: String, value: Vec<u8>) {
        loop {
            let opaque = Box::new((key.clone(), value.clone()));
            let record = BaseRecord::with_opaque_to(&self.topic, opaque).key(&key).payload(&value);
            match send_waiting(&self.producer, record) {
                Ok(()) => return,
                Err(error) => {
                    eprintln!("chaos traffic: producing failed ({error}); a new producer");
                    self.replace();
                }
            }
        }
    }

    /// Drops the producer for a new one; what it still held is reported failed (purged).
    fn replace(&mut self) {
        self.producer.purge(PurgeConfig::default().queue().inflight());
        let _ = self.producer.flush(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(500));
        self.producer = Self::connect(&self.failed);
    }

    /// Sends again what failed so far, with a new producer (this one may be unusable).
    fn resend_failed(&mut self) {
        if self.failed.lock().unwrap().is_empty() && self.producer.client().fatal_error().is_none()
        {
            return;
        }
        self.replace();
        let failed = std::mem::take(&mut *self.failed.lock().unwrap());
        self.resent += failed.len();
        for (key, value) in failed {
            self.send(key, value);
        }
    }

    /// Waits until every event is delivered; how many were sent again.
    fn finish(mut self) -> usize {
        loop {
            let _ = self.producer.flush(Duration::from_secs(60));
            if self.failed.lock().unwrap().is_empty() {
                return self.resent;
            }
            self.resend_failed();
        }
    }
}

fn run_traffic(topic: &str, users: usize, stop: &AtomicBool) -> (Vec<Trigger>, usize) {
    let mut producer = EventProducer::new(topic.to_string());
    let registry = SchemaRegistry::builtin();
    let send = |producer: &mut EventProducer, user: usize, name: &str, id: &str, at_ms: i64| {
        let user = member(user).0;
        let event = AppEvent {
            event_id: id.into(),
            app_id: "shop".into(),
            user_id: user.clone(),
            name: name.into(),
            timestamp_ms: at_ms,
            properties: Default::default(),
            sdk_version: None,
        };
        producer.send(user, registry.encode(&event).unwrap());
    };
    let mut triggers = Vec::new();
    let (started, mut round, mut carts) = (Instant::now(), 0usize, 0usize);
    while !stop.load(Ordering::SeqCst) {
        producer.resend_failed();
        let now = common::now_ms();
        let user = round.wrapping_mul(7_919) % users;
        let event_id = format!("ping-{round}");
        send(&mut producer, user, "Ping", &event_id, now);
        triggers.push(Trigger { campaign: "pings", user, event_id, converted: false });
        if round % 2 == 0 && carts < users {
            let (user, event_id, converted) = (carts, format!("cart-{carts}"), carts % 2 == 1);
            send(&mut producer, user, "Added To Cart", &event_id, now - 1_000);
            if converted {
                send(&mut producer, user, "Charged", &format!("charged-{carts}"), now);
            }
            triggers.push(Trigger { campaign: "cart", user, event_id, converted });
            carts += 1;
        }
        round += 1;
        if let Some(wait) = (started + ROUND * round as u32).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
    }
    (triggers, producer.finish())
}

/// The simulator: its origin and credentials directory.
struct Sim {
    origin: String,
    dir: PathBuf,
}

impl Sim {
    fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(herald_engine::sim::fetch_json(
            &self.origin,
            &self.dir.join("sim-ca.pem"),
            path,
        ))
    }

    fn control(&self, path: &str) {
        self.get(path).unwrap_or_else(|e| panic!("simulator {path}: {e}"));
    }

    /// What each population device received: message ids by user index.
    fn received(&self, users: usize) -> Vec<Vec<String>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ca = self.dir.join("sim-ca.pem");
        (0..users)
            .map(|i| {
                let path = format!("/sim/devices/{}", member(i).1.token);
                let device = runtime
                    .block_on(herald_engine::sim::fetch_json(&self.origin, &ca, &path))
                    .unwrap();
                let ids = device["messages"].as_array().cloned().unwrap_or_default();
                ids.iter().map(|m| m.as_str().unwrap_or_default().to_string()).collect()
            })
            .collect()
    }
}

/// The check table: name, whether it passed, and the detail.
#[derive(Default)]
struct Checks(Vec<(String, bool, String)>);

impl Checks {
    fn add(&mut self, name: &str, passed: bool, detail: String) {
        self.0.push((name.to_string(), passed, detail));
    }
}

/// A list of at most `n` items, with the count of the rest.
fn sample<T: std::fmt::Display>(items: &[T], n: usize) -> String {
    let mut text: Vec<String> = items.iter().take(n).map(|i| i.to_string()).collect();
    if items.len() > n {
        text.push(format!("… {} more", items.len() - n));
    }
    text.join("; ")
}

/// Checks that fail because of a defect found by this suite and not fixed yet, with the
/// defect. They are evaluated and printed like the others (FAIL, and the defect); only they do
/// not fail the test. Remove an entry once its check passes.
const KNOWN_FAILING: &[(&str, &str)] = &[];

/// The defect behind `check`, if it is known to fail.
fn known_failing(check: &str) -> Option<&'static str> {
    KNOWN_FAILING.iter().find(|(name, _)| *name == check).map(|(_, defect)| *defect)
}

/// Holds the chaos broker for one run (a port bound for the run's length, let go even when the
/// process is killed): runs, in threads or processes, take turns, as each restarts it.
fn lock_broker() -> std::net::TcpListener {
    let mut waited = Duration::ZERO;
    loop {
        if let Ok(lock) = std::net::TcpListener::bind(BROKER_LOCK) {
            return lock;
        }
        assert!(waited < Duration::from_secs(1_800), "another chaos run holds {BROKER_LOCK}");
        std::thread::sleep(Duration::from_millis(500));
        waited += Duration::from_millis(500);
    }
}

#[test]
fn chaos_short() {
    run(Plan::short());
}

#[test]
#[ignore = "long: make chaos"]
fn chaos_full() {
    run(Plan::full());
}

fn run(plan: Plan) {
    let _broker = lock_broker();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Toxiproxy::start(dir.path());
    let advertised = if proxy.is_some() { PROXY_PORT } else { BROKER_PORT };
    broker_up(advertised);
    // Every client of this binary and its children: the chaos broker (through the proxy).
    std::env::set_var("HERALD_BROKERS", format!("127.0.0.1:{advertised}"));
    let brokers = common::kafka().brokers;
    let prefix = format!("{}-", common::unique("chaos"));
    let app_id = common::unique("chaos-app");
    let topic = |name: &str| format!("{prefix}herald.{name}");
    // A copy of the binary: every restart runs the build the run started with, whatever else
    // is built meanwhile into the same target directory.
    let herald = dir.path().join("herald");
    std::fs::copy(env!("CARGO_BIN_EXE_herald"), &herald).unwrap();
    let herald = herald.as_path();
    let path = |name: &str| dir.path().join(name);
    let out = Command::new(herald)
        .args(["topics", "apply", "--prefix", &prefix])
        .env("HERALD_BROKERS", &brokers)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "topics apply: {}", String::from_utf8_lossy(&out.stderr));

    // Campaigns: triggered (one of them with an inaction window) and a scheduled broadcast.
    let schedule_start = common::now_ms() + 60_000;
    // Whole seconds: the run's id is its time.
    let broadcast_at = (schedule_start + plan.broadcast_after.as_millis() as i64) / 1_000 * 1_000;
    let broadcast_rfc = chrono::DateTime::from_timestamp_millis(broadcast_at).unwrap().to_rfc3339();
    let campaigns = [
        ("pings", "id: pings\napp: shop\nname: Pings\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n".to_string()),
        ("cart", format!("id: cart\napp: shop\nname: Cart\nwhen:\n  event: Added To Cart\n  unless: {{ event: Charged, within: {WINDOW_S}s }}\nwhat: {{ title: t, body: b }}\n")),
        ("broadcast", format!("id: broadcast\napp: shop\nname: Broadcast\nwhen: {{ schedule: {{ at: \"{broadcast_rfc}\" }} }}\nwhat: {{ title: t, body: b }}\nlimits: {{ total: {} }}\n", plan.broadcast_limit)),
    ];
    for (name, yaml) in &campaigns {
        let file = path(&format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        // The topics were just created: their leaders may not be known yet for a few seconds
        // (NotLeaderForPartition).
        let mut stderr = String::new();
        let applied = poll_until(Duration::from_secs(30), || {
            let out = Command::new(herald)
                .args(["campaign", "apply", "--topic", &topic("campaigns")])
                .arg(&file)
                .env("HERALD_BROKERS", &brokers)
                .output()
                .unwrap();
            stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        });
        assert!(applied, "campaign apply: {stderr}");
    }

    // The simulator with the population (it publishes their profiles), FCM tokens renewed
    // every 30 s (they live 330 s; senders renew 300 s before expiry).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let sim = Sim { origin: format!("https://127.0.0.1:{port}"), dir: path("sim") };
    let listen = format!("127.0.0.1:{port}");
    let users = plan.users.to_string();
    let sim_process = Process::start(
        "simulator",
        herald,
        args(&[
            &"sim",
            &"--listen",
            &listen,
            &"--dir",
            &sim.dir,
            &"--population",
            &users,
            &"--topic-prefix",
            &prefix,
            &"--fcm-token-ttl",
            &"330",
            &"--fault",
            &"latency_ms=1..5",
        ]),
        path("sim.log"),
    );
    assert!(
        poll_until(Duration::from_secs(120), || sim.get("/sim/stats").is_ok()),
        "simulator not up\n{}",
        common::tail(&path("sim.log"), 20)
    );

    let engine = Process::start(
        "engine",
        herald,
        args(&[
            &"engine",
            &"--topic-prefix",
            &prefix,
            &"--app-id",
            &app_id,
            &"--instance-id",
            &"chaos",
            &"--state-dir",
            &path("engine-state"),
        ]),
        path("engine.log"),
    );
    let config = path("senders.yaml");
    std::fs::write(
        &config,
        format!(
            "apps:\n  shop:\n    apns:\n      topic: com.example.shop\n      key_file: {sim}/apns-key.p8\n      key_id: KEY1234567\n      team_id: TEAM123456\n      endpoint: {origin}\n    fcm:\n      service_account_file: {sim}/fcm-service-account.json\n      endpoint: {origin}\n    ca_file: {sim}/sim-ca.pem\n    max_in_flight: 50\nretry_deadline: 60s\n",
            sim = sim.dir.display(),
            origin = sim.origin
        ),
    )
    .unwrap();
    let group = format!("{prefix}senders");
    let sender = |i: usize| {
        Process::start(
            &format!("sender {}", sender_name(i)),
            herald,
            args(&[
                &"send",
                &"--topic-prefix",
                &prefix,
                &"--group",
                &group,
                &"--instance-id",
                &sender_name(i),
                &"--config",
                &config,
                &"--state-dir",
                &path("sender-state"),
            ]),
            path(&format!("sender-{}.log", sender_name(i))),
        )
    };
    let mut processes = vec![engine, sender(0), sender(1), sim_process];
    let logs = |processes: &[Process]| {
        processes
            .iter()
            .map(|p| {
                format!("--- {} ({}) ---\n{}", p.name, p.log.display(), common::tail(&p.log, 15))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // The engine has every profile before any event.
    let changelog = format!("{app_id}-profiles-changelog");
    let loaded = poll_until(Duration::from_secs(180), || {
        let records =
            common::read_committed(&changelog, plan.users, Duration::ZERO, Duration::from_secs(5));
        records.iter().map(|r| &r.key).collect::<BTreeSet<_>>().len() == plan.users
    });
    assert!(loaded, "the engine did not load the population\n{}", logs(&processes));

    let commands = Watcher::start(topic("push"), USER_PARTITIONS, |v| {
        SchemaRegistry::builtin().decode::<SendCommand>(v).expect("a send command")
    });
    let receipts = Watcher::start(topic("receipts"), USER_PARTITIONS, |v| {
        SchemaRegistry::builtin().decode::<Receipt>(v).expect("a receipt")
    });
    let traffic = Traffic::start(topic("events"), plan.users);
    let mut injected: BTreeMap<String, usize> = BTreeMap::new();
    let mut incidents = Incidents::default();

    // Waits for `count` more receipts, restarting whatever died or got stuck.
    let advance =
        |processes: &mut [Process], incidents: &mut Incidents, count: usize, what: &str| {
            let target = receipts.len() + count;
            let ok = tended_until(processes, incidents, Duration::from_secs(240), || {
                receipts.len() >= target
            });
            if !ok {
                // Which side stopped: the engine (no new commands) or the senders (commands
                // without receipts). The processes' logs are kept, with their threads' stacks.
                let kept = keep_logs(dir.path());
                for process in processes.iter_mut() {
                    if process.child.running() {
                        process.dump_stacks(&kept);
                    }
                }
                panic!(
                    "no progress ({what}): {} of {target} receipts, {} commands on herald.push; \
                     logs kept in {}\n{}",
                    receipts.len(),
                    commands.len(),
                    kept.display(),
                    logs(processes)
                );
            }
        };
    advance(&mut processes, &mut incidents, plan.progress, "before the schedule");
    let steps: Vec<Step> =
        plan.steps.iter().filter(|s| proxy.is_some() || !s.needs_network()).cloned().collect();
    for step in &steps {
        eprintln!("chaos [{:>5.1} s]: {}", started.elapsed().as_secs_f64(), step.label());
        match step {
            Step::Provider(specs) => {
                for spec in *specs {
                    sim.control(&format!("/sim/faults/set/{spec}"));
                }
            }
            Step::ProviderReset => sim.control("/sim/faults/reset"),
            Step::KillEngine => {
                processes[0].kill();
                processes[0].restart();
            }
            Step::KillSender(i) => {
                processes[1 + i].kill();
                processes[1 + i].restart();
            }
            Step::TermSender(i) => {
                if let Err(error) = processes[1 + i].terminate() {
                    incidents.stops.push(error);
                }
                processes[1 + i].restart();
            }
            Step::TokenOutage(length) => {
                sim.control("/sim/token-endpoint/down");
                let back = Instant::now() + *length;
                std::thread::sleep(*length / 2);
                processes[1].kill();
                processes[1].restart();
                std::thread::sleep(back.saturating_duration_since(Instant::now()));
                sim.control("/sim/token-endpoint/up");
            }
            Step::BrokerRestart => {
                broker("down", advertised);
                broker("up", advertised);
            }
            Step::NetworkLatency(length) => {
                let proxy = proxy.as_ref().expect("toxiproxy");
                proxy.latency(true);
                std::thread::sleep(*length);
                proxy.latency(false);
            }
            Step::NetworkCut(length) => {
                let proxy = proxy.as_ref().expect("toxiproxy");
                proxy.enabled(false);
                std::thread::sleep(*length);
                proxy.enabled(true);
            }
        }
        *injected.entry(step.label()).or_default() += 1;
        advance(&mut processes, &mut incidents, plan.progress, &step.label());
    }
    let broadcast_done = poll_until(Duration::from_secs(120), || common::now_ms() > broadcast_at);
    assert!(broadcast_done);
    let (triggers, resent) = traffic.stop();
    let schedule_secs = started.elapsed().as_secs_f64();

    // What should have been sent.
    let expected: BTreeMap<String, &Trigger> =
        triggers.iter().filter(|t| !t.converted).map(|t| (t.message_id(), t)).collect();
    let broadcast_run = scheduled_run_id(broadcast_at);
    let broadcast_id = |user: &str| {
        let i: usize = user.strip_prefix("user-")?.parse().ok()?;
        (i < plan.users)
            .then(|| message_id("broadcast", &broadcast_run, user, &member(i).1.device_id))
    };
    // Drains: every expected command and the broadcast, a receipt for each, then quiet.
    let drained = tended_until(&mut processes, &mut incidents, Duration::from_secs(300), || {
        let sent = commands.snapshot();
        let ids: BTreeSet<&str> = sent.iter().map(|c| c.message_id.as_str()).collect();
        let broadcast = sent.iter().filter(|c| c.campaign_id == "broadcast").count();
        let receipted: BTreeSet<String> =
            receipts.snapshot().into_iter().map(|r| r.message_id).collect();
        expected.keys().all(|id| ids.contains(id.as_str()))
            && broadcast >= plan.broadcast_limit
            && ids.iter().all(|id| receipted.contains(*id))
    });
    let mut quiet = (commands.len() + receipts.len(), Instant::now());
    poll_until(Duration::from_secs(60), || {
        let now = commands.len() + receipts.len();
        if now != quiet.0 {
            quiet = (now, Instant::now());
        }
        quiet.1.elapsed() >= Duration::from_secs(5)
    });

    // The stats catch up (a snapshot a second).
    let sent = commands.snapshot();
    let all_receipts = receipts.snapshot();
    let registry = SchemaRegistry::builtin();
    let events: Vec<AppEvent> = common::read_committed(
        &topic("events"),
        triggers.len(),
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .iter()
    .map(|r| registry.decode(r.value.as_deref().unwrap()).unwrap())
    .collect();
    // Per campaign: sent, delivered (accepted), failed (other receipts), impressions, clicks.
    let mut on_topics: BTreeMap<String, [i64; 5]> = BTreeMap::new();
    let campaign_of: BTreeMap<&str, &str> =
        sent.iter().map(|c| (c.message_id.as_str(), c.campaign_id.as_str())).collect();
    for command in &sent {
        on_topics.entry(command.campaign_id.clone()).or_default()[0] += 1;
    }
    for receipt in &all_receipts {
        let campaign = campaign_of.get(receipt.message_id.as_str()).copied().unwrap_or("?");
        let column = if receipt.status == ReceiptStatus::Accepted { 1 } else { 2 };
        on_topics.entry(campaign.to_string()).or_default()[column] += 1;
    }
    // One engagement per event id: the population's producer may write an event twice when the
    // broker is away (Herald de-duplicates by user and event id at its door).
    let mut engagements = BTreeSet::new();
    for event in &events {
        if !engagements.insert((event.user_id.as_str(), event.event_id.as_str())) {
            continue;
        }
        let column = match event.name.as_str() {
            "Notification Viewed" => 3,
            "Notification Clicked" => 4,
            _ => continue,
        };
        if let Some(PropertyValue::String(campaign)) = event.properties.get("campaign_id") {
            on_topics.entry(campaign.clone()).or_default()[column] += 1;
        }
    }
    let stats_of = |s: &CampaignStats| {
        let mut row = [0i64; 5];
        for v in &s.variants {
            for (i, n) in
                [v.sent, v.delivered, v.failed, v.impressions, v.clicks].into_iter().enumerate()
            {
                row[i] += n;
            }
        }
        row
    };
    let mut in_stats = BTreeMap::new();
    poll_until(Duration::from_secs(60), || {
        in_stats = common::read_committed(
            &topic("stats"),
            1,
            Duration::from_millis(300),
            Duration::from_secs(10),
        )
        .iter()
        .map(|r| registry.decode::<CampaignStats>(r.value.as_deref().unwrap()).unwrap())
        .map(|s| (s.campaign_id.clone(), stats_of(&s)))
        .collect::<BTreeMap<_, _>>();
        in_stats == on_topics
    });
    let received = sim.received(plan.users);
    let sim_stats = sim.get("/sim/stats").unwrap_or_default();
    for process in &mut processes {
        if let Err(error) = process.terminate() {
            if process.name != "simulator" {
                incidents.stops.push(error);
            }
        }
    }

    // The checks.
    let mut checks = Checks::default();
    let mut by_id: BTreeMap<&str, Vec<&SendCommand>> = BTreeMap::new();
    for command in &sent {
        by_id.entry(command.message_id.as_str()).or_default().push(command);
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|(id, _)| !by_id.contains_key(id.as_str()))
        .map(|(id, t)| format!("{id} ({} user-{} {})", t.campaign, t.user, t.event_id))
        .collect();
    let doubled: Vec<String> = by_id
        .iter()
        .filter(|(_, copies)| copies.len() > 1)
        .map(|(id, copies)| {
            format!("{id} ({} {}) ×{}", copies[0].campaign_id, copies[0].user_id, copies.len())
        })
        .collect();
    let unexpected: Vec<String> = by_id
        .iter()
        .filter(|(id, copies)| {
            let broadcast = copies[0].campaign_id == "broadcast"
                && broadcast_id(&copies[0].user_id).as_deref() == Some(**id);
            !(expected.contains_key(**id) || broadcast)
        })
        .map(|(id, copies)| {
            format!(
                "{id} ({} {} run {})",
                copies[0].campaign_id, copies[0].user_id, copies[0].run_id
            )
        })
        .collect();
    let triggered = expected.len();
    checks.add(
        "every qualifying trigger produced exactly one send command",
        missing.is_empty() && doubled.is_empty() && unexpected.is_empty(),
        format!(
            "{triggered} expected ({} pings, {} carts; {} converted carts none): missing [{}] doubled [{}] unexpected [{}]",
            expected.values().filter(|t| t.campaign == "pings").count(),
            expected.values().filter(|t| t.campaign == "cart").count(),
            triggers.iter().filter(|t| t.converted).count(),
            sample(&missing, 5),
            sample(&doubled, 5),
            sample(&unexpected, 5)
        ),
    );
    let broadcast_users: BTreeSet<&str> =
        sent.iter().filter(|c| c.campaign_id == "broadcast").map(|c| c.user_id.as_str()).collect();
    let broadcast_commands = sent.iter().filter(|c| c.campaign_id == "broadcast").count();
    checks.add(
        "the broadcast sent exactly its limit, to distinct users",
        broadcast_commands == plan.broadcast_limit && broadcast_users.len() == plan.broadcast_limit,
        format!(
            "{broadcast_commands} commands to {} users, limit {}",
            broadcast_users.len(),
            plan.broadcast_limit
        ),
    );
    let mut receipts_of: BTreeMap<&str, Vec<&Receipt>> = BTreeMap::new();
    for receipt in &all_receipts {
        receipts_of.entry(receipt.message_id.as_str()).or_default().push(receipt);
    }
    let unreceipted: Vec<&str> =
        by_id.keys().filter(|id| !receipts_of.contains_key(**id)).copied().collect();
    let receipted_twice: Vec<String> = receipts_of
        .iter()
        .filter(|(_, r)| r.len() > 1)
        .map(|(id, r)| {
            let statuses: Vec<String> = r
                .iter()
                .map(|r| format!("{:?}/{}", r.status, r.reason.as_deref().unwrap_or("-")))
                .collect();
            format!("{id}: {}", statuses.join(", "))
        })
        .collect();
    let stray: Vec<&str> =
        receipts_of.keys().filter(|id| !by_id.contains_key(**id)).copied().collect();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for receipt in &all_receipts {
        let key = format!(
            "{:?}{}",
            receipt.status,
            receipt.reason.as_deref().map(|r| format!("/{r}")).unwrap_or_default()
        );
        *statuses.entry(key).or_default() += 1;
    }
    checks.add(
        "every command has exactly one final receipt",
        unreceipted.is_empty() && receipted_twice.is_empty() && stray.is_empty(),
        format!(
            "{} commands, {} receipts {statuses:?}: without [{}] twice [{}] for no command [{}]",
            by_id.len(),
            all_receipts.len(),
            sample(&unreceipted, 5),
            sample(&receipted_twice, 5),
            sample(&stray, 5)
        ),
    );
    let mut twice: Vec<String> = Vec::new();
    let mut delivered: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, ids) in received.iter().enumerate() {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for id in ids {
            *counts.entry(id.as_str()).or_default() += 1;
            delivered.insert(id.as_str(), i);
        }
        twice.extend(counts.iter().filter(|(_, n)| **n > 1).map(|(id, n)| {
            let campaign = campaign_of.get(id).copied().unwrap_or("?");
            let receipt = receipts_of
                .get(id)
                .map(|r| {
                    format!(
                        "{:?}",
                        r.iter().map(|r| (r.status, r.reason.clone())).collect::<Vec<_>>()
                    )
                })
                .unwrap_or_default();
            format!("user-{i} {id} ({campaign}) ×{n}, receipts {receipt}")
        }));
    }
    checks.add(
        "no device received the same message id twice",
        twice.is_empty() && sim_stats["duplicates"] == 0,
        format!(
            "{} deliveries of {} message ids; simulator duplicates {}: [{}]",
            received.iter().map(Vec::len).sum::<usize>(),
            delivered.len(),
            sim_stats["duplicates"],
            sample(&twice, 5)
        ),
    );
    let accepted_not_delivered: Vec<String> = all_receipts
        .iter()
        .filter(|r| {
            r.status == ReceiptStatus::Accepted && !delivered.contains_key(r.message_id.as_str())
        })
        .map(|r| format!("{} ({})", r.message_id, r.user_id))
        .collect();
    let delivered_unknown: Vec<&str> =
        delivered.keys().filter(|id| !by_id.contains_key(**id)).copied().collect();
    let delivered_not_accepted = delivered
        .keys()
        .filter(|id| {
            receipts_of
                .get(**id)
                .is_some_and(|r| r.iter().all(|r| r.status != ReceiptStatus::Accepted))
        })
        .count();
    checks.add(
        "every accepted receipt was delivered; nothing delivered without a command",
        accepted_not_delivered.is_empty() && delivered_unknown.is_empty(),
        format!(
            "accepted, never delivered [{}]; delivered for no command [{}]; delivered but receipted not accepted (the at-most-once window): {delivered_not_accepted}",
            sample(&accepted_not_delivered, 5),
            sample(&delivered_unknown, 5)
        ),
    );
    checks.add(
        "campaign stats equal the counts on the topics",
        in_stats == on_topics,
        format!("[sent, delivered, failed, impressions, clicks] stats {in_stats:?} topics {on_topics:?}"),
    );
    checks.add(
        "no process died or got stuck; every SIGTERM exited cleanly",
        incidents.died.is_empty() && incidents.stuck.is_empty() && incidents.stops.is_empty(),
        format!(
            "died [{}] stuck [{}] unclean stops [{}]",
            sample(&incidents.died, 3),
            sample(&incidents.stuck, 3),
            sample(&incidents.stops, 3)
        ),
    );
    checks.add("everything drained", drained, format!("{:.0} s of schedule", schedule_secs));

    // The tables and the JSON line.
    let rejected = &sim_stats["rejected"];
    let count = |key: &str| rejected[key].as_u64().unwrap_or(0);
    let answered = [
        ("simulator: 503 answers", count("ServiceUnavailable") + count("UNAVAILABLE")),
        (
            "simulator: 429 + Retry-After answers",
            count("TooManyRequests") + count("QUOTA_EXCEEDED"),
        ),
        ("simulator: connections dropped", count("connection_dropped")),
        ("simulator: GOAWAY sent", sim_stats["goaways"].as_u64().unwrap_or(0)),
        ("simulator: token requests refused (endpoint down)", count("token_endpoint_down")),
        ("test's event producer: events sent again after a failed delivery", resent as u64),
    ];
    println!(
        "\nchaos suite ({}): {} users, broker 127.0.0.1:{BROKER_PORT}{}",
        plan.name,
        plan.users,
        if proxy.is_some() {
            format!(" through toxiproxy 127.0.0.1:{PROXY_PORT}")
        } else {
            ", toxiproxy not installed: no network faults".into()
        }
    );
    println!("{:<66} {:>6}", "fault injected", "count");
    for (label, n) in &injected {
        println!("{label:<66} {n:>6}");
    }
    for (label, n) in &answered {
        println!("{label:<66} {n:>6}");
    }
    println!("\n{:<72} result", "check");
    for (name, passed, detail) in &checks.0 {
        let known = known_failing(name);
        let result = match (passed, known) {
            (true, None) => "PASS",
            (true, Some(_)) => "PASS (known failing: remove it from KNOWN_FAILING)",
            (false, None) => "FAIL",
            (false, Some(_)) => "FAIL (known defect)",
        };
        println!("{name:<72} {result}");
        println!("    {detail}");
        if let (false, Some(defect)) = (passed, known) {
            println!("    known defect: {defect}");
        }
    }
    let json = serde_json::json!({
        "suite": "chaos",
        "plan": plan.name,
        "users": plan.users,
        "toxiproxy": proxy.is_some(),
        "seconds": started.elapsed().as_secs(),
        "commands": sent.len(),
        "receipts": all_receipts.len(),
        "receipt_statuses": statuses,
        "faults": injected.iter().map(|(k, v)| (k.clone(), *v)).chain(answered.iter().map(|(k, v)| (k.to_string(), *v as usize))).collect::<BTreeMap<_, _>>(),
        "checks": checks.0.iter().map(|(name, passed, _)| (name.clone(), *passed)).collect::<BTreeMap<_, _>>(),
        "passed": checks.0.iter().all(|c| c.1),
        "known_failing": checks.0.iter().filter(|c| !c.1 && known_failing(&c.0).is_some()).map(|c| c.0.clone()).collect::<Vec<_>>(),
    });
    println!("{json}");

    let failed: Vec<&str> = checks
        .0
        .iter()
        .filter(|c| !c.1 && known_failing(&c.0).is_none())
        .map(|c| c.0.as_str())
        .collect();
    if !failed.is_empty() {
        let kept = dir.keep();
        panic!("chaos checks failed: {failed:?}; logs and state kept in {}", kept.display());
    }
    common::delete_topics_starting_with(&[&prefix, &app_id]);
}

/// Restarts of the chaos broker in [`runtime_exactly_once_across_broker_restarts`].
const RUNTIME_RESTARTS: usize = 3;
/// How long the chaos broker is frozen (SIGSTOP) in
/// [`runtime_recovers_after_the_broker_is_frozen`]: beyond the session and transaction timeouts
/// and librdkafka's request timeouts (10 s each).
const FREEZE: Duration = Duration::from_secs(30);
/// The runtime's stall time in that test (the default 60 s would make it long).
const TEST_STALL_AFTER: Duration = Duration::from_secs(15);
/// Keys of the relay's input.
const RELAY_KEYS: usize = 40;

/// The processor of the runtime-alone tests: an input record goes through the repartition
/// topic to the task of its key, which counts the key and writes
/// `<input partition>:<input offset>|<key>|<count>`, so every output names the input it came
/// from.
struct Relay {
    flow: String,
    output: String,
}

impl Processor for Relay {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError> {
        let key = record.key.unwrap_or_default();
        if record.topic != self.flow {
            let origin = format!("{}:{}", record.partition, record.offset);
            ctx.send(&self.flow, key, origin.as_bytes())?;
            return Ok(());
        }
        let mut counts = ctx.store("counts")?;
        let count = counts.get_as::<u64>(key)?.unwrap_or(0) + 1;
        counts.put_as(key, &count)?;
        let origin = String::from_utf8_lossy(record.value.unwrap_or_default());
        let key_text = String::from_utf8_lossy(key);
        ctx.send(&self.output, key, format!("{origin}|{key_text}|{count}").as_bytes())?;
        Ok(())
    }
}

/// The runtime alone (no push code) on the chaos broker, running [`Relay`] (with a global
/// table, whose reader sees the broker go away too) while a producer writes its input all
/// along.
struct RelayRun {
    _dir: tempfile::TempDir,
    _proxy: Option<Toxiproxy>,
    advertised: u16,
    name: String,
    config: RuntimeConfig,
    shutdown: ShutdownFlag,
    runtime: Option<JoinHandle<Result<(), RuntimeError>>>,
    outputs: Watcher<String>,
    traffic: (Arc<AtomicBool>, JoinHandle<()>),
    /// The chaos broker's lock, let go last (after Toxiproxy stopped).
    _broker: std::net::TcpListener,
}

impl RelayRun {
    /// Starts the broker, the runtime (with `stall_after`, if given) and the traffic, and
    /// waits until output flows.
    fn start(stall_after: Option<Duration>) -> Self {
        let broker_lock = lock_broker();
        let dir = tempfile::tempdir().unwrap();
        let proxy = Toxiproxy::start(dir.path());
        let advertised = if proxy.is_some() { PROXY_PORT } else { BROKER_PORT };
        broker_up(advertised);
        std::env::set_var("HERALD_BROKERS", format!("127.0.0.1:{advertised}"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,librdkafka=warn")
            .with_test_writer()
            .try_init();
        let name = common::unique("chaos-runtime");
        let topics = [("in", 4), ("flow", 4), ("out", 4), ("dlq", 1)]
            .map(|(suffix, partitions)| (format!("{name}-{suffix}"), partitions));
        common::create_topics(&topics.each_ref().map(|(topic, n)| (topic.as_str(), *n)));
        let mut config = RuntimeConfig::new(common::kafka(), "a", dir.path().join("state"));
        config.stall_after = stall_after.unwrap_or(config.stall_after);
        let outputs =
            Watcher::start(format!("{name}-out"), 4, |v| String::from_utf8_lossy(v).into_owned());
        let traffic = {
            let (input, stop) = (format!("{name}-in"), Arc::new(AtomicBool::new(false)));
            let flag = Arc::clone(&stop);
            let handle = std::thread::spawn(move || {
                let mut producer = EventProducer::new(input);
                let mut i = 0usize;
                while !flag.load(Ordering::SeqCst) {
                    producer.send(format!("k{}", i % RELAY_KEYS), format!("v{i}").into_bytes());
                    i += 1;
                    std::thread::sleep(Duration::from_millis(5));
                    if i % 500 == 0 {
                        producer.resend_failed();
                    }
                }
                producer.finish();
            });
            (stop, handle)
        };
        let mut run = Self {
            _broker: broker_lock,
            _dir: dir,
            _proxy: proxy,
            advertised,
            name,
            config,
            shutdown: ShutdownFlag::default(),
            runtime: None,
            outputs,
            traffic,
        };
        run.start_runtime();
        let flowing = run.until(Duration::from_secs(120), |outputs| outputs > 200);
        run.alive("before the faults");
        assert!(flowing, "no output before the faults");
        run
    }

    /// Runs the runtime in a thread of its own (the same instance id and state every time).
    fn start_runtime(&mut self) {
        let name = &self.name;
        let (input, flow, output) =
            (format!("{name}-in"), format!("{name}-flow"), format!("{name}-out"));
        let topology = StreamTopology::builder(name)
            .dead_letter_topic(format!("{name}-dlq"))
            .optional_global_table("settings", format!("{name}-settings"))
            .sub_topology(
                "relay",
                move |_| Relay { flow: flow.clone(), output: output.clone() },
                |s| {
                    s.source(&input)
                        .repartition(format!("{name}-flow"))
                        .store("counts")
                        .sink(format!("{name}-out"))
                },
            )
            .build()
            .unwrap();
        let (config, flag) = (self.config.clone(), self.shutdown.clone());
        self.runtime =
            Some(std::thread::spawn(move || LiveRuntime::new(topology, config).run(&flag)));
    }

    /// Whether the runtime's thread ended.
    fn ended(&self) -> bool {
        self.runtime.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// Polls until `done(outputs so far)` holds or the runtime ended, for `limit` at most;
    /// whether `done` held.
    fn until(&self, limit: Duration, done: impl Fn(usize) -> bool) -> bool {
        poll_until(limit, || done(self.outputs.len()) || self.ended()) && !self.ended()
    }

    /// Fails the test with the runtime's error if its thread ended.
    fn alive(&mut self, when: &str) {
        if let Some(error) = self.stopped() {
            panic!("the runtime stopped ({when}): {error}");
        }
    }

    /// The runtime's error if its thread ended.
    fn stopped(&mut self) -> Option<String> {
        if !self.ended() {
            return None;
        }
        Some(match self.runtime.take().unwrap().join() {
            Ok(Ok(())) => "without an error".to_string(),
            Ok(Err(error)) => error.to_string(),
            Err(_) => "panicked".to_string(),
        })
    }

    /// The chaos broker's process id.
    fn broker_pid(&self) -> String {
        let pidfile = repo().join(".local/kafka-chaos/kafka.pid");
        std::fs::read_to_string(pidfile).expect("the chaos broker's pid file").trim().to_string()
    }

    /// Stops traffic, waits for the runtime to process every input record on the topic, and
    /// checks the output: exactly one record per input record (by input partition and offset),
    /// every key's counts 1..n, no gaps, no duplicates; stops the runtime and deletes the
    /// topics. `faults` names what happened, for the summary line.
    fn finish(mut self, faults: &str) {
        self.traffic.0.store(true, Ordering::SeqCst);
        let traffic = std::mem::replace(&mut self.traffic.1, std::thread::spawn(|| ()));
        traffic.join().expect("traffic thread");
        // Every input record, as it is on the topic (events sent again after a failed delivery
        // are records of their own).
        let input = format!("{}-in", self.name);
        let inputs =
            common::read_committed(&input, 1, Duration::from_secs(3), Duration::from_secs(60));
        let expected: BTreeSet<String> =
            inputs.iter().map(|r| format!("{}:{}", r.partition, r.offset)).collect();
        let done = self.until(Duration::from_secs(180), |outputs| outputs >= expected.len());
        self.alive("draining");
        let produced = self.outputs.snapshot();
        let mut origins: BTreeMap<&str, usize> = BTreeMap::new();
        let mut counts: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for value in &produced {
            let mut fields = value.split('|');
            let (origin, key, count) =
                (fields.next().unwrap(), fields.next().unwrap(), fields.next());
            *origins.entry(origin).or_default() += 1;
            counts.entry(key).or_default().push(count.unwrap().parse().unwrap());
        }
        let duplicated: Vec<_> = origins.iter().filter(|(_, n)| **n > 1).take(5).collect();
        let missing: Vec<_> =
            expected.iter().filter(|o| !origins.contains_key(o.as_str())).take(5).collect();
        let unknown: Vec<_> = origins.keys().filter(|o| !expected.contains(**o)).take(5).collect();
        println!(
            "runtime across {faults}: {} inputs, {} outputs, {} distinct",
            expected.len(),
            produced.len(),
            origins.len()
        );
        assert!(done, "the runtime stalled: {} of {} outputs", produced.len(), expected.len());
        assert!(duplicated.is_empty(), "inputs processed twice, e.g. {duplicated:?}");
        assert!(missing.is_empty(), "inputs never processed, e.g. {missing:?}");
        assert!(unknown.is_empty(), "outputs of no input, e.g. {unknown:?}");
        for (key, seen) in &mut counts {
            seen.sort_unstable();
            let n = seen.len() as u64;
            assert!(seen.iter().copied().eq(1..=n), "key {key}: counts {seen:?}, not 1..={n}");
        }
        self.shutdown.request();
        let runtime = self.runtime.take().unwrap();
        runtime.join().expect("runtime thread").expect("the runtime's run");
        common::delete_topics_starting_with(&[&self.name]);
    }
}

/// The chaos broker frozen by SIGSTOP until dropped (SIGCONT), even when the test fails.
struct Frozen(String);

impl Frozen {
    fn new(pid: String) -> Self {
        signal("-STOP", &pid);
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

/// `kill <signal> <pid>`.
fn signal(signal: &str, pid: &str) {
    let status = Command::new("kill").args([signal, pid]).status().expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// The runtime through several broker restarts in quick succession: it must keep going, and
/// its output must be exactly one record per input record. A stalled runtime fails the test by
/// its deadline, a failed one by its error.
#[test]
fn runtime_exactly_once_across_broker_restarts() {
    let mut run = RelayRun::start(None);
    for restart in 0..RUNTIME_RESTARTS {
        broker("down", run.advertised);
        broker("up", run.advertised);
        run.alive(&format!("restart {}", restart + 1));
        let before = run.outputs.len();
        // Quick succession: the next restart as soon as anything new came out.
        let moved = run.until(Duration::from_secs(120), |outputs| outputs > before);
        run.alive(&format!("after restart {}", restart + 1));
        assert!(moved, "no output for 120 s after broker restart {}", restart + 1);
    }
    run.finish(&format!("{RUNTIME_RESTARTS} broker restarts"));
}

/// The runtime through a frozen broker (SIGSTOP: its connections stay open, requests go
/// unanswered) for longer than the session, transaction and request timeouts, once while
/// processing and once just after a restart (while its coordinators load), each time thawed
/// (SIGCONT) after [`FREEZE`]. The runtime's stall watch runs with [`TEST_STALL_AFTER`]. It must
/// either recover by itself or stop with a clear error (then it is started again with the same
/// id and state, as a supervisor would), never sit silently; either way the output is exactly
/// one record per input record.
#[test]
#[ignore = "long: make chaos"]
fn runtime_recovers_after_the_broker_is_frozen() {
    let mut run = RelayRun::start(Some(TEST_STALL_AFTER));
    for round in ["while processing", "just after a restart"] {
        if round == "just after a restart" {
            broker("down", run.advertised);
            broker("up", run.advertised);
        }
        {
            let _frozen = Frozen::new(run.broker_pid());
            std::thread::sleep(FREEZE); // The fault itself: the broker stays frozen this long.
        }
        let before = run.outputs.len();
        let limit = Duration::from_secs(120);
        let moved = run.until(limit, |outputs| outputs > before);
        if let Some(error) = run.stopped() {
            println!("the runtime stopped after the freeze {round}: {error}");
            assert!(error.starts_with("stalled:") || error.starts_with("fenced:"), "{error}");
            run.start_runtime();
        } else {
            assert!(moved, "no output and no error for {limit:?} after the freeze {round}");
        }
    }
    run.finish(&format!("two broker freezes of {} s", FREEZE.as_secs()));
}
