//! Several `herald engine` instances under continuous traffic (issue 13, item 2): three
//! instances with their own ids and state directories, then a fourth joins, one stops with
//! SIGTERM, one is killed with SIGKILL and restarted, and one is frozen (SIGSTOP) past the
//! session timeout, then thawed: a zombie. Inaction windows (durable timers) and a campaign's
//! total limit move with their partitions. The end check: exactly one send command per
//! qualifying occurrence, by message id, and the limited campaign exactly at its limit.
//!
//! It also prints how long processing paused while the fourth instance joined (the longest gap
//! between consecutive `herald.push` appends, overall and per partition, and the time from the
//! join to the first output of each partition that moved), and the pauses of the other steps:
//! measured, never asserted.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use herald_engine::{
    kafka::{apply_topology, send_waiting},
    model::{
        triggered_run_id, AppEvent, CampaignLifecycleEvent, CampaignStats, LifecycleKind, Platform,
        ProfileUpdate, SchemaRegistry, SendCommand,
    },
    payload::message_id,
    runtime::partition_for,
    topology::{CleanupPolicy, TopicSpec, Topology},
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::DeliveryResult,
    producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer},
    ClientContext, Message, Offset, TopicPartitionList,
};

/// Held by each test for its whole run: the tests start up to four engines each, and two
/// cores shared with the broker run one scenario at a time (pauses measured alone).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs one scenario at a time (a failed one does not stop the others).
fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Partitions of the user-keyed topics (events, profiles, receipts, send gate, push).
const USER_PARTITIONS: i32 = 8;
/// The cart campaign's inaction window.
const WINDOW_MS: i64 = 20_000;
/// Cart events are stamped this long before they are produced, and the `Charged` of a
/// converting user right after at the time of production: in the same partition, after the
/// cart, 1.5 s into the window.
const CART_AGE_MS: i64 = 1_500;
/// One round of traffic: a cart, two pings, and (once they are on) every other round an app
/// open.
const ROUND: Duration = Duration::from_millis(100);
/// Rounds at most (the traffic stops earlier, when the scenario is done): profiles exist for
/// the users of this many rounds.
const MAX_ROUNDS: usize = 3_000;
/// Once app opens are on, one every this many rounds.
const COUPON_EVERY: usize = 2;
/// App opens produced at once when the traffic stops, so the coupons surely reach their limit.
const COUPON_BURST: usize = 20;
const COUPON_LIMIT: usize = 80;
/// Ping users per user partition, so that every partition has output all the time.
const PINGERS_PER_PARTITION: usize = 2;

/// Users of the cart campaign (one per round), of the coupons (one per app open).
fn cart_user(round: usize) -> String {
    format!("c{round}")
}

fn coupon_user(n: usize) -> String {
    format!("o{n}")
}

/// Ping users: `PINGERS_PER_PARTITION` in each user partition.
fn pingers() -> Vec<String> {
    let mut per_partition: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut i = 0;
    while per_partition.len() < USER_PARTITIONS as usize
        || per_partition.values().any(|users| users.len() < PINGERS_PER_PARTITION)
    {
        let user = format!("p{i}");
        let users = per_partition.entry(user_partition(&user)).or_default();
        if users.len() < PINGERS_PER_PARTITION {
            users.push(user);
        }
        i += 1;
    }
    // Interleaved, so consecutive pings go to different partitions.
    (0..PINGERS_PER_PARTITION)
        .flat_map(|k| per_partition.values().map(move |users| users[k].clone()).collect::<Vec<_>>())
        .collect()
}

fn user_partition(user: &str) -> i32 {
    partition_for(user.as_bytes(), USER_PARTITIONS)
}

const CART: &str = "id: cart\napp: shop\nname: Cart\nwhen:\n  event: Added To Cart\n  unless: { event: Charged, within: 20s }\nwhat: { title: t, body: b }\n";
const PINGS: &str =
    "id: pings\napp: shop\nname: Pings\nwhen: { event: Ping }\nwhat: { title: t, body: b }\n";

fn coupons() -> String {
    format!("id: coupons\napp: shop\nname: Coupons\nwhen: {{ event: App Opened }}\nwhat: {{ title: t, body: b }}\nlimits: {{ total: {COUPON_LIMIT} }}\n")
}

/// A deployment on topics of its own: 8 user partitions, `herald.push` stamped with the
/// broker's append time (so gaps in the output are processing pauses).
struct Deployment {
    prefix: String,
    app_id: String,
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Self {
        let deployment = Self {
            prefix: format!("{}-", common::unique("scale")),
            app_id: common::unique("scale-app"),
            dir: tempfile::tempdir().unwrap(),
        };
        let spec = |name: &str, partitions: i32| TopicSpec {
            name: deployment.topic(name),
            partitions,
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: None,
            description: String::new(),
            configs: Default::default(),
        };
        let mut push = spec("push", USER_PARTITIONS);
        push.configs.insert("message.timestamp.type".into(), "LogAppendTime".into());
        let topology = Topology {
            replication_factor: 1,
            topics: vec![
                spec("events", USER_PARTITIONS),
                spec("profiles", USER_PARTITIONS),
                spec("receipts", USER_PARTITIONS),
                spec("send-gate", USER_PARTITIONS),
                spec("campaigns", 1),
                spec("campaign-flow", 4),
                spec("app-throttle", 1),
                push,
                spec("stats", 1),
                spec("campaign-events", 1),
                spec("dead-letter", 1),
            ],
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(apply_topology(&common::kafka(), &topology)).unwrap();
        for (file, yaml) in [
            ("cart.yaml", CART.to_string()),
            ("coupons.yaml", coupons()),
            ("pings.yaml", PINGS.to_string()),
        ] {
            deployment.apply(file, &yaml);
        }
        deployment
    }

    fn topic(&self, name: &str) -> String {
        format!("{}herald.{name}", self.prefix)
    }

    fn changelog(&self, store: &str) -> String {
        format!("{}-{store}-changelog", self.app_id)
    }

    fn apply(&self, name: &str, yaml: &str) {
        let file = self.dir.path().join(name);
        std::fs::write(&file, yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["campaign", "apply", "--topic", &self.topic("campaigns")])
            .arg(&file)
            .env("HERALD_BROKERS", common::kafka().brokers)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }

    /// Starts instance `id` with its own state directory and log.
    fn start(&self, id: &'static str) -> Instance {
        self.start_with(id, &[])
    }

    /// Starts instance `id` with its own state directory and log, and `extra` arguments.
    fn start_with(&self, id: &'static str, extra: &[&str]) -> Instance {
        let state = self.dir.path().join(format!("state-{id}"));
        let log = self.dir.path().join(format!("engine-{id}.log"));
        let child =
            common::spawn_engine_instance(&self.prefix, &self.app_id, id, &state, &log, extra);
        Instance {
            id,
            app_id: self.app_id.clone(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            state,
            log,
            process: common::KillOnDrop::new(child),
        }
    }
}

impl Drop for Deployment {
    /// A failing run keeps its directory (the engines' logs and state) and says where.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            eprintln!("engine logs and state kept in {}", dir.keep().display());
        }
    }
}

/// One engine instance: its id, state directory, log and process.
struct Instance {
    id: &'static str,
    app_id: String,
    /// Arguments it runs with besides its id, state and topics.
    extra: Vec<String>,
    state: PathBuf,
    log: PathBuf,
    process: common::KillOnDrop,
}

impl Instance {
    /// The same instance (id, state, log) started again.
    fn restart(&mut self, prefix: &str) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let child = common::spawn_engine_instance(
            prefix,
            &self.app_id,
            self.id,
            &self.state,
            &self.log,
            &extra,
        );
        self.process = common::KillOnDrop::new(child);
    }

    /// Log times (epoch ms) of the lines containing `needle`, in order.
    fn log_times(&self, needle: &str) -> Vec<i64> {
        log_times(&self.log, needle)
    }

    /// How many times the instance has (re)opened its tasks: once per rebalance it took part in.
    fn assignments(&self) -> usize {
        self.log_times("tasks restored").len()
    }

    /// User-stage partitions (sub-topology 0) this instance has opened tasks for so far.
    fn user_tasks(&self) -> BTreeSet<i32> {
        let Ok(dirs) = std::fs::read_dir(self.state.join(&self.app_id)) else {
            return BTreeSet::new();
        };
        dirs.filter_map(|d| d.ok()?.file_name().to_str()?.strip_prefix("0_")?.parse().ok())
            .collect()
    }
}

fn log_times(log: &Path, needle: &str) -> Vec<i64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|stamp| chrono::DateTime::parse_from_rfc3339(stamp).ok())
        .map(|at| at.timestamp_millis())
        .collect()
}

/// The tails of the instances' logs, for assertion messages.
fn tails(instances: &[&Instance]) -> String {
    instances
        .iter()
        .map(|i| format!("--- engine {} ---\n{}", i.id, common::tail(&i.log, 15)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One app event the traffic produced that qualifies for a campaign (or would, for a cart
/// followed by a `Charged`).
#[derive(Debug, Clone)]
struct Occurrence {
    campaign: &'static str,
    user: String,
    event_id: String,
    /// The event's own time.
    at_ms: i64,
    /// A cart followed by a `Charged` within the window: no send.
    converted: bool,
}

impl Occurrence {
    /// The message id of its send command.
    fn message_id(&self) -> String {
        let run = triggered_run_id(&self.event_id);
        message_id(self.campaign, &run, &self.user, &format!("d-{}", self.user))
    }
}

/// Counts failed deliveries of the traffic producer.
struct DeliveryErrors(Arc<AtomicUsize>);

impl ClientContext for DeliveryErrors {}

impl ProducerContext for DeliveryErrors {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Continuous app events from a thread: every `ROUND`, a cart (half of them followed by a
/// `Charged`), two pings, and once turned on every other round an app open; when stopped, a
/// burst of app opens.
struct Traffic {
    stop: Arc<AtomicBool>,
    opens: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Occurrence>>,
}

impl Traffic {
    fn start(topic: String, pingers: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let opens = Arc::new(AtomicBool::new(false));
        let flags = (Arc::clone(&stop), Arc::clone(&opens));
        let handle = std::thread::spawn(move || run_traffic(&topic, &pingers, &flags.0, &flags.1));
        Self { stop, opens, handle }
    }

    /// App opens from now on.
    fn open_apps(&self) {
        self.opens.store(true, Ordering::SeqCst);
    }

    /// Stops the traffic; returns every occurrence produced (acknowledged by the broker).
    fn stop(self) -> Vec<Occurrence> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("traffic thread")
    }
}

fn run_traffic(
    topic: &str,
    pingers: &[String],
    stop: &AtomicBool,
    opening: &AtomicBool,
) -> Vec<Occurrence> {
    let errors = Arc::new(AtomicUsize::new(0));
    let producer: ThreadedProducer<DeliveryErrors> = common::kafka()
        .client_config()
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create_with_context(DeliveryErrors(Arc::clone(&errors)))
        .unwrap();
    let registry = SchemaRegistry::builtin();
    let send = |user: &str, name: &str, event_id: &str, at_ms: i64| {
        let event = AppEvent {
            event_id: event_id.into(),
            app_id: "shop".into(),
            user_id: user.into(),
            name: name.into(),
            timestamp_ms: at_ms,
            properties: Default::default(),
            sdk_version: None,
        };
        let value = registry.encode(&event).unwrap();
        send_waiting(&producer, BaseRecord::to(topic).key(user).payload(&value)).expect("produce");
    };
    let mut occurrences = Vec::new();
    let mut opens = 0;
    let mut open = |occurrences: &mut Vec<Occurrence>, now: i64| {
        let (user, id) = (coupon_user(opens), format!("open-{opens}"));
        send(&user, "App Opened", &id, now);
        occurrences.push(Occurrence {
            campaign: "coupons",
            user,
            event_id: id,
            at_ms: now,
            converted: false,
        });
        opens += 1;
    };
    let started = Instant::now();
    let mut round = 0;
    while !stop.load(Ordering::SeqCst) && round < MAX_ROUNDS {
        let now = common::now_ms();
        let (user, id) = (cart_user(round), format!("cart-{round}"));
        let converted = round % 2 == 0;
        send(&user, "Added To Cart", &id, now - CART_AGE_MS);
        if converted {
            send(&user, "Charged", &format!("charged-{round}"), now);
        }
        occurrences.push(Occurrence {
            campaign: "cart",
            user,
            event_id: id,
            at_ms: now - CART_AGE_MS,
            converted,
        });
        for k in 0..2 {
            let user = pingers[(round * 2 + k) % pingers.len()].clone();
            let id = format!("ping-{round}-{k}");
            send(&user, "Ping", &id, now);
            occurrences.push(Occurrence {
                campaign: "pings",
                user,
                event_id: id,
                at_ms: now,
                converted: false,
            });
        }
        if round % COUPON_EVERY == 0 && opening.load(Ordering::SeqCst) {
            open(&mut occurrences, now);
        }
        round += 1;
        // Paced: the next round is due ROUND after this one's planned start.
        if let Some(wait) = (started + ROUND * round as u32).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
    }
    for _ in 0..COUPON_BURST {
        open(&mut occurrences, common::now_ms());
    }
    producer.flush(Duration::from_secs(60)).expect("flush the traffic");
    assert_eq!(errors.load(Ordering::SeqCst), 0, "traffic records failed to be delivered");
    occurrences
}

/// A send command as read from `herald.push`, with the time the broker appended it.
#[derive(Debug, Clone)]
struct Sent {
    partition: i32,
    offset: i64,
    appended_ms: i64,
    command: SendCommand,
}

/// Reads `herald.push` (read_committed) from the start in a thread, all along the scenario.
struct Watcher {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
    handle: JoinHandle<()>,
}

impl Watcher {
    fn start(topic: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (flag, into) = (Arc::clone(&stop), Arc::clone(&sent));
        let handle = std::thread::spawn(move || {
            let consumer: BaseConsumer = common::kafka()
                .client_config()
                .set("group.id", common::unique("watcher"))
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .create()
                .unwrap();
            let mut assignment = TopicPartitionList::new();
            for partition in 0..USER_PARTITIONS {
                assignment.add_partition_offset(&topic, partition, Offset::Beginning).unwrap();
            }
            consumer.assign(&assignment).unwrap();
            let registry = SchemaRegistry::builtin();
            while !flag.load(Ordering::SeqCst) {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let command = registry.decode(m.payload().expect("a command")).unwrap();
                        let appended_ms = m.timestamp().to_millis().expect("append time");
                        let record = Sent {
                            partition: m.partition(),
                            offset: m.offset(),
                            appended_ms,
                            command,
                        };
                        into.lock().unwrap().push(record);
                    }
                    Some(Err(e)) => panic!("consume failed: {e}"),
                    None => {}
                }
            }
        });
        Self { stop, sent, handle }
    }

    fn snapshot(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    /// Whether every push partition has a command appended after `after_ms`.
    fn output_everywhere_after(&self, after_ms: i64) -> bool {
        let sent = self.sent.lock().unwrap();
        let partitions: BTreeSet<i32> =
            sent.iter().filter(|s| s.appended_ms > after_ms).map(|s| s.partition).collect();
        partitions.len() == USER_PARTITIONS as usize
    }

    fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("watcher thread");
        Arc::try_unwrap(self.sent).expect("watcher stopped").into_inner().unwrap()
    }
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

/// Stops an instance with SIGTERM; it must exit cleanly within a minute.
fn stop(instance: &mut Instance) {
    stop_with(instance, "-TERM");
}

/// Stops an instance with `signal` (`-TERM`, or `-USR1` to leave the group); it must exit
/// cleanly within a minute.
fn stop_with(instance: &mut Instance, signal: &str) {
    let mut child = instance.process.take();
    Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    let exited = poll_until(Duration::from_secs(60), || matches!(child.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(
        exited && status.success(),
        "engine {} exited with {status} after {signal}\n{}",
        instance.id,
        tails(&[instance])
    );
}

/// Polls `done` every 100 ms until it holds; fails after `limit` with `what` and the logs.
fn wait_until(what: &str, limit: Duration, instances: &[&Instance], done: impl FnMut() -> bool) {
    assert!(poll_until(limit, done), "timed out waiting until {what}\n{}", tails(instances));
}

/// Waits until the `changelog` holds every one of `users` (their profiles stored).
fn wait_stored(changelog: &str, users: &[String], instances: &[&Instance]) {
    wait_until("every profile is stored", Duration::from_secs(300), instances, || {
        let records =
            common::read_committed(changelog, users.len(), Duration::ZERO, Duration::from_secs(5));
        records.iter().map(|r| &r.key).collect::<BTreeSet<_>>().len() == users.len()
    });
}

/// Waits until every push partition has output appended after `after_ms` (`what` names the
/// step); returns the time it did.
fn wait_sending_after(
    what: &str,
    watcher: &Watcher,
    instances: &[&Instance],
    after_ms: i64,
) -> i64 {
    let what = format!("every partition sends after {what}");
    wait_until(&what, Duration::from_secs(120), instances, || {
        watcher.output_everywhere_after(after_ms)
    });
    common::now_ms()
}

/// Waits until nothing more is appended to `herald.push` for 3 s (a late duplicate would be).
fn wait_quiet(watcher: &Watcher, instances: &[&Instance]) {
    let mut count = watcher.snapshot().len();
    let mut quiet = Instant::now();
    wait_until("the output is quiet", Duration::from_secs(60), instances, || {
        let now = watcher.snapshot().len();
        if now != count {
            (count, quiet) = (now, Instant::now());
        }
        quiet.elapsed() >= Duration::from_secs(3)
    });
}

/// The longest gap between consecutive append times of `sent` within `[from, to]`, counting
/// from the last append before `from`, with its start: (gap ms, start ms).
fn longest_gap<'a>(sent: impl Iterator<Item = &'a Sent>, from: i64, to: i64) -> (i64, i64) {
    let all: Vec<i64> = sent.map(|s| s.appended_ms).collect();
    let before = all.iter().copied().filter(|t| *t < from).max();
    let mut times: Vec<i64> =
        all.into_iter().filter(|t| (from..=to).contains(t)).chain(before).collect();
    times.sort_unstable();
    let mut gap = (0, from);
    for pair in times.windows(2) {
        if pair[1] - pair[0] > gap.0 {
            gap = (pair[1] - pair[0], pair[0]);
        }
    }
    gap
}

/// Prints the pause of the step at `step_ms` (a join, a stop, a kill): the longest gap between
/// appends to `herald.push` overall and per partition in `[step_ms, until_ms]`.
fn print_pause(step: &str, sent: &[Sent], step_ms: i64, until_ms: i64) {
    let (overall, at) = longest_gap(sent.iter(), step_ms, until_ms);
    let per_partition: Vec<String> = (0..USER_PARTITIONS)
        .map(|p| {
            let (gap, _) = longest_gap(sent.iter().filter(|s| s.partition == p), step_ms, until_ms);
            format!("p{p}={gap}")
        })
        .collect();
    println!(
        "pause [{step}]: longest gap between herald.push appends {overall} ms (starting {:+} ms from the step); per partition (ms): {}",
        at - step_ms,
        per_partition.join(" ")
    );
}

/// Cart windows open across `[from_ms, to_ms]` (opened before, ending after) of users in
/// `partitions` that end in a send (not converted).
fn windows_across<'a>(
    occurrences: &'a [Occurrence],
    partitions: &BTreeSet<i32>,
    from_ms: i64,
    to_ms: i64,
) -> Vec<&'a Occurrence> {
    occurrences
        .iter()
        .filter(|o| o.campaign == "cart" && !o.converted)
        .filter(|o| o.at_ms + CART_AGE_MS < from_ms && o.at_ms + WINDOW_MS > to_ms)
        .filter(|o| partitions.contains(&user_partition(&o.user)))
        .collect()
}

#[test]
fn four_instances_join_stop_and_crash_under_traffic_and_send_exactly_once() {
    let _alone = alone();
    let deployment = Deployment::new();
    let topic = |name: &str| deployment.topic(name);
    let pingers = pingers();
    let registry = SchemaRegistry::builtin();

    // Profiles of every user the traffic may name, read by the engine before any event.
    let now = common::now_ms();
    let users: Vec<String> = (0..MAX_ROUNDS)
        .map(cart_user)
        .chain((0..MAX_ROUNDS / COUPON_EVERY + 1 + COUPON_BURST).map(coupon_user))
        .chain(pingers.iter().cloned())
        .collect();
    common::produce(
        &topic("profiles"),
        users.iter().map(|u| common::profile(u, Platform::Android, now)),
    );
    let mut a = deployment.start("a");
    let mut b = deployment.start("b");
    let mut c = deployment.start("c");
    wait_stored(&deployment.changelog("profiles"), &users, &[&a, &b, &c]);
    wait_until("all three instances have tasks", Duration::from_secs(120), &[&a, &b, &c], || {
        [&a, &b, &c].iter().all(|i| !i.user_tasks().is_empty())
    });

    let watcher = Watcher::start(topic("push"));
    let traffic = Traffic::start(topic("events"), pingers.clone());
    let traffic_started = common::now_ms();
    wait_until("every partition sends", Duration::from_secs(60), &[&a, &b, &c], || {
        watcher.output_everywhere_after(traffic_started)
    });
    // Steady state: the first windows have ended (so a window is open at every moment of the
    // scenario), then a few seconds: the baseline of the gaps.
    wait_until("the first cart windows end", Duration::from_secs(90), &[&a, &b, &c], || {
        watcher.snapshot().iter().any(|s| s.command.campaign_id == "cart")
    });
    let steady = common::now_ms();
    wait_until("steady traffic", Duration::from_secs(60), &[&a, &b, &c], || {
        watcher.output_everywhere_after(steady + 3_000)
    });

    // 1. A fourth instance joins: the eager rebalance moves partitions (and their windows) to it.
    let before_join = common::now_ms();
    let mut d = deployment.start("d");
    wait_until(
        "the fourth instance has tasks",
        Duration::from_secs(120),
        &[&a, &b, &c, &d],
        || !d.user_tasks().is_empty() && d.assignments() > 0,
    );
    let restored = d.log_times("tasks restored")[0];
    let join_settled = wait_sending_after("the join", &watcher, &[&a, &b, &c, &d], restored);
    let joined = d.log_times("joining the consumer group")[0];
    let moved = d.user_tasks();
    // The coupons start: they fill up while b stops and reach their limit around c's crash.
    traffic.open_apps();

    // 2. b stops with SIGTERM (clean: commit, checkpoint); its partitions go to the others once
    //    the group notices (static membership: after the session timeout).
    let rebalances =
        |instances: &[&Instance]| instances.iter().map(|i| i.assignments()).sum::<usize>();
    let before_stop = rebalances(&[&a, &c, &d]);
    let stopped = common::now_ms();
    stop(&mut b);
    wait_until("the others take b's partitions", Duration::from_secs(120), &[&a, &c, &d], || {
        rebalances(&[&a, &c, &d]) > before_stop
    });
    let stop_rebalanced = common::now_ms();
    let stop_settled = wait_sending_after("b's stop", &watcher, &[&a, &c, &d], stop_rebalanced);

    // 3. c is killed (open transaction aborted, no checkpoint) and restarted at once: its tasks
    //    are rebuilt from their changelogs, timers included.
    //    It is killed when the coupons are close to their limit, which they reach after it.
    let coupons_sent =
        || watcher.snapshot().iter().filter(|s| s.command.campaign_id == "coupons").count();
    wait_until("the coupons near their limit", Duration::from_secs(120), &[&a, &c, &d], || {
        coupons_sent() + 10 >= COUPON_LIMIT
    });
    let coupons_at_kill = coupons_sent();
    let before_kill = c.assignments();
    let killed = common::now_ms();
    common::kill_hard(c.process.take());
    c.restart(&deployment.prefix);
    wait_until("c is back with its tasks", Duration::from_secs(120), &[&a, &c, &d], || {
        c.assignments() > before_kill
    });
    let kill_restored = common::now_ms();
    let kill_settled = wait_sending_after("c's restart", &watcher, &[&a, &c, &d], kill_restored);

    // 4. d freezes (SIGSTOP) past the session timeout: the group gives its partitions to the
    //    others (its open transaction times out). Thawed (SIGCONT), it is a zombie that must not
    //    commit what it did for partitions it lost; it rejoins and gets partitions again.
    let signal = |name: &str, instance: &Instance| {
        let pid = instance.process.id().to_string();
        assert!(Command::new("kill").args([name, &pid]).status().unwrap().success());
    };
    let before_freeze = rebalances(&[&a, &c]);
    let frozen = common::now_ms();
    signal("-STOP", &d);
    wait_until(
        "the others take frozen d's partitions",
        Duration::from_secs(120),
        &[&a, &c],
        || rebalances(&[&a, &c]) > before_freeze,
    );
    let freeze_rebalanced = common::now_ms();
    wait_sending_after("d froze", &watcher, &[&a, &c], freeze_rebalanced);
    let before_thaw = d.assignments();
    let thawed = common::now_ms();
    signal("-CONT", &d);
    wait_until("d rejoins", Duration::from_secs(120), &[&a, &c, &d], || {
        d.assignments() > before_thaw
    });
    let rejoined = common::now_ms();
    let thaw_settled = wait_sending_after("d's return", &watcher, &[&a, &c, &d], rejoined);

    // The traffic stops (with a burst of app opens); every window ends within WINDOW_MS.
    let occurrences = traffic.stop();
    let expected: BTreeMap<String, &Occurrence> = occurrences
        .iter()
        .filter(|o| o.campaign != "coupons" && !o.converted)
        .map(|o| (o.message_id(), o))
        .collect();
    let coupon_ids: BTreeMap<String, &Occurrence> = occurrences
        .iter()
        .filter(|o| o.campaign == "coupons")
        .map(|o| (o.message_id(), o))
        .collect();
    assert!(coupon_ids.len() > COUPON_LIMIT, "more app opens than the limit");
    // Waits for them (what is missing after the deadline is listed below).
    poll_until(Duration::from_secs(180), || {
        let sent = watcher.snapshot();
        let ids: BTreeSet<&str> = sent.iter().map(|s| s.command.message_id.as_str()).collect();
        let coupons = sent.iter().filter(|s| s.command.campaign_id == "coupons").count();
        expected.keys().all(|id| ids.contains(id.as_str())) && coupons >= COUPON_LIMIT
    });
    // Stats catch up (snapshots every second): sends, and app opens skipped at the limit.
    let stats = || {
        let records = common::read_committed(
            &topic("stats"),
            1,
            Duration::from_millis(300),
            Duration::from_secs(10),
        );
        records
            .iter()
            .map(|r| registry.decode::<CampaignStats>(r.value.as_deref().unwrap()).unwrap())
            .map(|s| (s.campaign_id.clone(), s))
            .collect::<BTreeMap<_, _>>()
    };
    let sent_of = |stats: &CampaignStats| stats.variants.iter().map(|v| v.sent).sum::<i64>();
    let expected_sent: BTreeMap<&str, i64> = BTreeMap::from([
        ("cart", expected.values().filter(|o| o.campaign == "cart").count() as i64),
        ("coupons", COUPON_LIMIT as i64),
        ("pings", expected.values().filter(|o| o.campaign == "pings").count() as i64),
    ]);
    let skipped_at_limit = (coupon_ids.len() - COUPON_LIMIT) as i64;
    let skipped_of = |stats: &CampaignStats| stats.skipped.values().sum::<i64>();
    let mut latest = BTreeMap::new();
    let stats_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < stats_deadline {
        latest = stats();
        let sent: BTreeMap<&str, i64> =
            latest.iter().map(|(c, s)| (c.as_str(), sent_of(s))).collect();
        if sent == expected_sent && latest.get("coupons").map(skipped_of) == Some(skipped_at_limit)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_quiet(&watcher, &[&a, &c, &d]);
    for instance in [&mut d, &mut a, &mut c] {
        stop(instance);
    }
    let sent = watcher.stop();
    let lifecycle: Vec<LifecycleKind> = common::read_committed(
        &topic("campaign-events"),
        2,
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
    .iter()
    .map(|r| registry.decode::<CampaignLifecycleEvent>(r.value.as_deref().unwrap()).unwrap())
    .filter(|e| e.campaign_id == "coupons")
    .map(|e| e.kind)
    .collect();

    // The pauses (printed, never asserted).
    let windows =
        |partitions: &BTreeSet<i32>, from, to| windows_across(&occurrences, partitions, from, to);
    let all: BTreeSet<i32> = (0..USER_PARTITIONS).collect();
    let (baseline, _) = longest_gap(sent.iter(), steady, before_join);
    println!("steady state before the join: longest gap between herald.push appends {baseline} ms");
    print_pause("4th instance joins", &sent, before_join, join_settled);
    println!(
        "join: spawned at 0, joined the group at +{} ms, tasks restored at +{} ms; partitions moved to d: {moved:?}",
        joined - before_join,
        restored - before_join
    );
    for p in &moved {
        let first = sent
            .iter()
            .filter(|s| s.partition == *p && s.appended_ms > restored)
            .map(|s| s.appended_ms)
            .min();
        let last = sent
            .iter()
            .filter(|s| s.partition == *p && s.appended_ms <= joined)
            .map(|s| s.appended_ms)
            .max();
        if let (Some(first), Some(last)) = (first, last) {
            println!(
                "join: moved partition {p}: last output before the join {} ms before it, first after d restored it +{} ms after the join (output gap {} ms)",
                joined - last,
                first - joined,
                first - last
            );
        }
    }
    print_pause(
        "SIGTERM of b (static membership: until the session timeout)",
        &sent,
        stopped,
        stop_settled,
    );
    print_pause("SIGKILL and restart of c", &sent, killed, kill_settled);
    println!("coupons sent when c was killed: {coupons_at_kill} of {COUPON_LIMIT}");
    print_pause("SIGSTOP of d past the session timeout", &sent, frozen, thawed);
    print_pause("SIGCONT of d (it rejoins)", &sent, thawed, thaw_settled);

    // Exactly one command per qualifying occurrence: no duplicates, nothing missing, nothing else.
    let logs = tails(&[&a, &b, &c, &d]);
    assert_exactly_once(&sent, &expected, &coupon_ids, &logs);
    // The limited campaign: exactly its limit, to distinct users.
    let coupon_users: BTreeSet<&str> = sent
        .iter()
        .filter(|s| s.command.campaign_id == "coupons")
        .map(|s| s.command.user_id.as_str())
        .collect();
    assert_eq!(coupon_users.len(), COUPON_LIMIT, "coupons sent exactly to the limit");
    assert_eq!(lifecycle, [LifecycleKind::LimitReached, LifecycleKind::Completed]);
    let carts = expected.values().filter(|o| o.campaign == "cart").count();
    let pings = expected.len() - carts;
    println!(
        "sent exactly once: {pings} pings, {carts} carts (of {} cart windows; converted ones sent nothing), coupons {COUPON_LIMIT} of {} app opens",
        occurrences.iter().filter(|o| o.campaign == "cart").count(),
        coupon_ids.len()
    );

    // Windows open while their partitions moved: sent once (checked above), and there were some.
    let across_join = windows(&moved, before_join, join_settled);
    let across_stop = windows(&all, stopped, stop_settled);
    let across_kill = windows(&all, killed, kill_settled);
    let across_freeze = windows(&all, frozen, freeze_rebalanced);
    println!(
        "windows open across the moves, each sent once: {} on the partitions moved to d, {} across b's stop, {} across c's crash, {} across d's freeze",
        across_join.len(),
        across_stop.len(),
        across_kill.len(),
        across_freeze.len()
    );
    assert!(!across_join.is_empty() && !across_stop.is_empty() && !across_kill.is_empty());

    // The stats reconcile with the topic.
    let sent_counts: BTreeMap<&str, i64> =
        latest.iter().map(|(c, s)| (c.as_str(), sent_of(s))).collect();
    assert_eq!(sent_counts, expected_sent, "stats: {latest:?}");
    let coupon_stats = &latest["coupons"];
    println!("coupons skipped: {:?}", coupon_stats.skipped);
    assert_eq!(
        skipped_of(coupon_stats),
        skipped_at_limit,
        "app opens past the limit, each skipped once: {:?}",
        coupon_stats.skipped
    );

    // Passed: its topics and changelogs go (a failing run keeps them for inspection).
    common::delete_topics_starting_with(&[&deployment.prefix, &deployment.app_id]);
}

/// Exactly one command per occurrence of `expected`, at most one per occurrence of `allowed`,
/// and nothing else (`logs` for the messages).
fn assert_exactly_once(
    sent: &[Sent],
    expected: &BTreeMap<String, &Occurrence>,
    allowed: &BTreeMap<String, &Occurrence>,
    logs: &str,
) {
    let mut by_id: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
    for s in sent {
        by_id.entry(s.command.message_id.as_str()).or_default().push(s);
    }
    let duplicates: Vec<String> = by_id
        .iter()
        .filter(|(_, copies)| copies.len() > 1)
        .map(|(id, copies)| {
            let at: Vec<String> = copies
                .iter()
                .map(|s| format!("p{}@{} appended {}", s.partition, s.offset, s.appended_ms))
                .collect();
            format!(
                "{id} ({} {} run {}): {}",
                copies[0].command.campaign_id,
                copies[0].command.user_id,
                copies[0].command.run_id,
                at.join(", ")
            )
        })
        .collect();
    assert!(duplicates.is_empty(), "duplicate commands:\n{}\n{logs}", duplicates.join("\n"));
    let missing: Vec<String> = expected
        .iter()
        .filter(|(id, _)| !by_id.contains_key(id.as_str()))
        .map(|(id, o)| {
            format!(
                "{id}: {} {} {} at {} (partition {})",
                o.campaign,
                o.user,
                o.event_id,
                o.at_ms,
                user_partition(&o.user)
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} commands missing:\n{}\n{logs}",
        missing.len(),
        missing.join("\n")
    );
    let unexpected: Vec<String> = by_id
        .iter()
        .filter(|(id, _)| !expected.contains_key(**id) && !allowed.contains_key(**id))
        .map(|(id, copies)| {
            format!(
                "{id}: {} {} run {}",
                copies[0].command.campaign_id, copies[0].command.user_id, copies[0].command.run_id
            )
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "commands for no qualifying occurrence (e.g. converted carts):\n{}",
        unexpected.join("\n")
    );
}

/// Pauses of one group protocol's run (ms): the longest gap between `herald.push` appends
/// after each step.
struct ProtocolPauses {
    protocol: &'static str,
    join: Pause,
    scale_in: Pause,
    restart: Pause,
}

/// The longest gap between `herald.push` appends after a step (ms): overall (no output at all)
/// and on the worst partition (that partition's processing stopped).
struct Pause {
    overall: i64,
    partition: i64,
}

impl Pause {
    fn of(sent: &[Sent], from: i64, to: i64) -> Self {
        let partition = (0..USER_PARTITIONS)
            .map(|p| longest_gap(sent.iter().filter(|s| s.partition == p), from, to).0)
            .max()
            .unwrap_or(0);
        Self { overall: longest_gap(sent.iter(), from, to).0, partition }
    }
}

impl std::fmt::Display for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {}", self.overall, self.partition)
    }
}

/// Three instances on `protocol` under traffic; a fourth joins; one leaves the group with
/// SIGUSR1 (a scale-in); one stops with SIGTERM and is restarted at once (a rolling upgrade).
/// Every task's sources stay together (no instance warns of a split task), and every
/// occurrence is sent exactly once.
fn run_protocol(protocol: &'static str) -> ProtocolPauses {
    let deployment = Deployment::new();
    let topic = |name: &str| deployment.topic(name);
    let pingers = pingers();
    let now = common::now_ms();
    let users: Vec<String> = (0..MAX_ROUNDS)
        .map(cart_user)
        .chain((0..COUPON_BURST).map(coupon_user))
        .chain(pingers.iter().cloned())
        .collect();
    common::produce(
        &topic("profiles"),
        users.iter().map(|u| common::profile(u, Platform::Android, now)),
    );
    let args = ["--group-protocol", protocol];
    let mut a = deployment.start_with("a", &args);
    let mut b = deployment.start_with("b", &args);
    let mut c = deployment.start_with("c", &args);
    wait_stored(&deployment.changelog("profiles"), &users, &[&a, &b, &c]);
    wait_until("all three instances have tasks", Duration::from_secs(120), &[&a, &b, &c], || {
        [&a, &b, &c].iter().all(|i| !i.user_tasks().is_empty())
    });
    let watcher = Watcher::start(topic("push"));
    let traffic = Traffic::start(topic("events"), pingers.clone());
    let steady = common::now_ms();
    wait_until("steady traffic", Duration::from_secs(60), &[&a, &b, &c], || {
        watcher.output_everywhere_after(steady + 3_000)
    });

    // A fourth instance joins.
    let before_join = common::now_ms();
    let d = deployment.start_with("d", &args);
    wait_until("d has tasks", Duration::from_secs(120), &[&a, &b, &c, &d], || {
        !d.user_tasks().is_empty() && d.assignments() > 0
    });
    let restored = d.log_times("tasks restored")[0];
    let join_settled = wait_sending_after("the join", &watcher, &[&a, &b, &c, &d], restored);

    // b scales in: it gives its partitions back, then exits.
    let others = |instances: &[&Instance]| instances.iter().map(|i| i.assignments()).sum::<usize>();
    let before_leave = others(&[&a, &c, &d]);
    let left = common::now_ms();
    stop_with(&mut b, "-USR1");
    wait_until("the others take b's partitions", Duration::from_secs(120), &[&a, &c, &d], || {
        others(&[&a, &c, &d]) > before_leave
    });
    let taken = common::now_ms();
    let leave_settled = wait_sending_after("b left", &watcher, &[&a, &c, &d], taken);

    // c restarts (a rolling upgrade): SIGTERM, then started again at once.
    let before_restart = c.assignments();
    let restarting = common::now_ms();
    stop(&mut c);
    c.restart(&deployment.prefix);
    wait_until("c is back with its tasks", Duration::from_secs(180), &[&a, &c, &d], || {
        c.assignments() > before_restart
    });
    let back = common::now_ms();
    let restart_settled = wait_sending_after("c's restart", &watcher, &[&a, &c, &d], back);

    let occurrences = traffic.stop();
    // Only the final burst of app opens, below the coupons' limit: each is sent.
    let expected: BTreeMap<String, &Occurrence> =
        occurrences.iter().filter(|o| !o.converted).map(|o| (o.message_id(), o)).collect();
    poll_until(Duration::from_secs(120), || {
        let sent = watcher.snapshot();
        let ids: BTreeSet<&str> = sent.iter().map(|s| s.command.message_id.as_str()).collect();
        expected.keys().all(|id| ids.contains(id.as_str()))
    });
    wait_quiet(&watcher, &[&a, &c, &d]);
    let mut d = d;
    for instance in [&mut d, &mut a, &mut c] {
        stop(instance);
    }
    let sent = watcher.stop();
    let logs = tails(&[&a, &b, &c, &d]);
    assert_exactly_once(&sent, &expected, &BTreeMap::new(), &logs);
    let split: Vec<(&str, usize)> = [&a, &b, &c, &d]
        .iter()
        .map(|i| (i.id, i.log_times("not co-partitioned").len()))
        .filter(|(_, warnings)| *warnings > 0)
        .collect();
    assert!(split.is_empty(), "{protocol}: tasks split between instances: {split:?}\n{logs}");

    let step = |name: &str, from, to| {
        print_pause(&format!("{protocol}: {name}"), &sent, from, to);
        Pause::of(&sent, from, to)
    };
    let pauses = ProtocolPauses {
        protocol,
        join: step("4th instance joins", before_join, join_settled),
        scale_in: step("SIGUSR1 of b (leaves the group)", left, leave_settled),
        restart: step("SIGTERM and restart of c", restarting, restart_settled),
    };
    let (baseline, _) = longest_gap(sent.iter(), steady, before_join);
    println!("{protocol}: steady state before the join: longest gap {baseline} ms");
    let count =
        |needle: &str| [&a, &b, &c, &d].iter().map(|i| i.log_times(needle).len()).sum::<usize>();
    println!(
        "{protocol}: task (re)openings {}, failed commits {}, rewinds {}",
        count("tasks restored"),
        count("commit failed"),
        count("rewinding to the last commit")
    );
    common::delete_topics_starting_with(&[&deployment.prefix, &deployment.app_id]);
    pauses
}

#[test]
fn group_protocols_join_scale_in_and_restart_keeping_tasks_together() {
    let _alone = alone();
    let runs = [run_protocol("classic"), run_protocol("consumer")];
    println!("longest gap between herald.push appends after each step, overall / on the worst partition (ms):");
    println!("| protocol | join of a 4th | scale-in, SIGUSR1 | SIGTERM + restart |");
    println!("|---|---|---|---|");
    for r in &runs {
        println!("| {} | {} | {} | {} |", r.protocol, r.join, r.scale_in, r.restart);
    }
}

/// Pings for `users` now, produced to `topic`: one occurrence each.
fn produce_pings(topic: &str, users: &[String], tag: &str) -> Vec<Occurrence> {
    let registry = SchemaRegistry::builtin();
    let now = common::now_ms();
    let occurrences: Vec<Occurrence> = users
        .iter()
        .map(|user| Occurrence {
            campaign: "pings",
            user: user.clone(),
            event_id: format!("ping-{tag}-{user}"),
            at_ms: now,
            converted: false,
        })
        .collect();
    common::produce(
        topic,
        occurrences.iter().map(|o| {
            let event = AppEvent {
                event_id: o.event_id.clone(),
                app_id: "shop".into(),
                user_id: o.user.clone(),
                name: "Ping".into(),
                timestamp_ms: now,
                properties: Default::default(),
                sdk_version: None,
            };
            (o.user.clone(), registry.encode(&event).unwrap())
        }),
    );
    occurrences
}

/// A profile update of `user` giving its device the token `tok2-<user>`.
fn new_token(user: &str) -> (String, Vec<u8>) {
    let registry = SchemaRegistry::builtin();
    let (key, bytes) = common::profile(user, Platform::Android, common::now_ms());
    let mut update: ProfileUpdate = registry.decode(&bytes).unwrap();
    update.devices_added[0].token = format!("tok2-{user}");
    (key, registry.encode(&update).unwrap())
}

/// The `restored=` figure of the last "tasks restored" line of `instance`'s log.
fn last_restored(instance: &Instance) -> u64 {
    let log = std::fs::read_to_string(&instance.log).unwrap_or_default();
    let line = log.lines().rfind(|l| l.contains("tasks restored")).expect("a restore");
    let field = line.split_whitespace().find_map(|w| w.strip_prefix("restored=")).unwrap();
    field.parse().unwrap()
}

/// Profiles of the failover test: enough state that a full restore is unmistakable.
const FAILOVER_PROFILES: usize = 20_000;

/// The input lag an instance serving its metrics at `addr` reports per partition of `topic`
/// (its `consumer_lag` series: the partitions assigned to it); empty while it is unreachable.
fn input_lag(addr: &str, topic: &str) -> BTreeMap<i32, i64> {
    let body = ureq::get(format!("http://{addr}/metrics"))
        .call()
        .ok()
        .and_then(|mut response| response.body_mut().read_to_string().ok())
        .unwrap_or_default();
    let of_topic = format!("topic=\"{topic}\"");
    body.lines()
        .filter_map(|line| line.strip_prefix("herald_runtime_consumer_lag{"))
        .filter_map(|line| line.split_once("} "))
        .filter(|(labels, _)| labels.split(',').any(|label| label == of_topic))
        .filter_map(|(labels, value)| {
            let partition = labels.split(',').find_map(|l| l.strip_prefix("partition=\""))?;
            Some((partition.trim_end_matches('"').parse().ok()?, value.parse::<f64>().ok()? as i64))
        })
        .collect()
}

/// Two instances with `standbys` standby replicas hold `FAILOVER_PROFILES` profiles; one is
/// killed (SIGKILL) and the other takes its tasks over. Returns the changelog records that
/// takeover restored, after checking that every user (of the moved partitions too) is sent
/// exactly one command for a ping, which needs their profile, and that each instance's input
/// lag names the partitions it holds: split between the two, then all on the survivor, at 0
/// once the pings are sent (`herald bench scale` tells the partitions that move by it).
fn failover_restore(standbys: usize) -> u64 {
    let deployment = Deployment::new();
    let topic = |name: &str| deployment.topic(name);
    let users: Vec<String> = (0..FAILOVER_PROFILES).map(|i| format!("s{i}")).collect();
    let now = common::now_ms();
    common::produce(
        &topic("profiles"),
        users.iter().map(|u| common::profile(u, Platform::Android, now)),
    );
    let replicas = standbys.to_string();
    let (metrics_a, metrics_b) = (
        format!("127.0.0.1:{}", common::free_port()),
        format!("127.0.0.1:{}", common::free_port()),
    );
    let args = |metrics: &str| {
        ["--standby-replicas", replicas.as_str(), "--metrics-addr", metrics].map(str::to_string)
    };
    let a = deployment.start_with("a", &args(&metrics_a).each_ref().map(String::as_str));
    let mut b = deployment.start_with("b", &args(&metrics_b).each_ref().map(String::as_str));
    let profiles = deployment.changelog("profiles");
    wait_stored(&profiles, &users, &[&a, &b]);
    wait_until("both instances have tasks", Duration::from_secs(120), &[&a, &b], || {
        a.assignments() > 0 && b.assignments() > 0
    });
    // No event was produced yet (no offset committed): each reports a lag of 0 on the events
    // partitions it holds, and only on those.
    let events = topic("events");
    let all: BTreeSet<i32> = (0..USER_PARTITIONS).collect();
    let mut held = (BTreeMap::new(), BTreeMap::new());
    let split = poll_until(Duration::from_secs(60), || {
        held = (input_lag(&metrics_a, &events), input_lag(&metrics_b, &events));
        let (on_a, on_b): (BTreeSet<i32>, BTreeSet<i32>) =
            (held.0.keys().copied().collect(), held.1.keys().copied().collect());
        on_a.is_disjoint(&on_b) && !on_b.is_empty() && &on_a | &on_b == all
    });
    assert!(split, "input lag of the events partitions on a and b: {held:?}\n{}", tails(&[&a, &b]));
    assert!(held.0.values().chain(held.1.values()).all(|lag| *lag == 0), "{held:?}");
    if standbys > 0 {
        // a keeps b's tasks warm: its standbys report that they reached their changelogs' ends.
        wait_until("a's standbys catch up", Duration::from_secs(180), &[&a, &b], || {
            let log = std::fs::read_to_string(&a.log).unwrap_or_default();
            let last = log.lines().rfind(|l| l.contains(" standbys "));
            last.is_some_and(|l| l.contains("caught_up=true"))
        });
    }
    // New device tokens for the users pinged below, committed by their owners before b dies:
    // a standby follows its changelogs live (what it has not applied yet is the tail a
    // restores), and nothing of it may be lost.
    let pinged: Vec<String> = users.iter().step_by(FAILOVER_PROFILES / 200).cloned().collect();
    common::produce(&topic("profiles"), pinged.iter().map(|u| new_token(u)));
    wait_until("the new tokens are in the changelog", Duration::from_secs(60), &[&a, &b], || {
        let at_least = users.len() + pinged.len();
        let records =
            common::read_committed(&profiles, at_least, Duration::ZERO, Duration::from_secs(5));
        let updated: BTreeSet<&[u8]> = records
            .iter()
            .filter(|r| {
                let token = format!("tok2-{}", String::from_utf8_lossy(&r.key));
                let value = r.value.as_deref().unwrap_or_default();
                value.windows(token.len()).any(|w| w == token.as_bytes())
            })
            .map(|r| r.key.as_slice())
            .collect();
        pinged.iter().all(|u| updated.contains(u.as_bytes()))
    });
    let before = a.assignments();
    common::kill_hard(b.process.take());
    wait_until("a takes b's tasks over", Duration::from_secs(120), &[&a, &b], || {
        a.assignments() > before
    });
    let restored = last_restored(&a);
    if standbys > 0 {
        assert!(!a.log_times("standbys promoted").is_empty(), "{}", tails(&[&a]));
    }

    // The state moved intact: a ping to users of every partition is sent once, to their device
    // with its new token.
    let occurrences = produce_pings(&topic("events"), &pinged, &format!("failover-{standbys}"));
    let expected: BTreeMap<String, &Occurrence> =
        occurrences.iter().map(|o| (o.message_id(), o)).collect();
    let watcher = Watcher::start(topic("push"));
    wait_until("every ping is sent", Duration::from_secs(120), &[&a], || {
        let sent = watcher.snapshot();
        let ids: BTreeSet<&str> = sent.iter().map(|s| s.command.message_id.as_str()).collect();
        expected.keys().all(|id| ids.contains(id.as_str()))
    });
    // The survivor holds every events partition, the moved ones too, and has read them all.
    let mut lag = BTreeMap::new();
    let caught_up = poll_until(Duration::from_secs(60), || {
        lag = input_lag(&metrics_a, &events);
        lag.keys().copied().collect::<BTreeSet<i32>>() == all && lag.values().all(|l| *l == 0)
    });
    assert!(caught_up, "input lag on a after the takeover: {lag:?}\n{}", tails(&[&a]));
    let mut a = a;
    stop(&mut a);
    let sent = watcher.stop();
    assert_exactly_once(&sent, &expected, &BTreeMap::new(), &tails(&[&a, &b]));
    let stale: Vec<(&str, &str)> = sent
        .iter()
        .filter(|s| s.command.token != format!("tok2-{}", s.command.user_id))
        .map(|s| (s.command.user_id.as_str(), s.command.token.as_str()))
        .collect();
    assert!(stale.is_empty(), "commands to an old token (a lost state update): {stale:?}");
    let partitions: BTreeSet<i32> = pinged.iter().map(|u| user_partition(u)).collect();
    assert_eq!(partitions.len(), USER_PARTITIONS as usize, "pings on every partition");
    common::delete_topics_starting_with(&[&deployment.prefix, &deployment.app_id]);
    restored
}

#[test]
fn a_failover_to_an_instance_with_standbys_restores_only_the_tail() {
    let _alone = alone();
    let without = failover_restore(0);
    let with = failover_restore(1);
    println!(
        "failover restore after SIGKILL of one of 2 instances ({FAILOVER_PROFILES} profiles): \
         {without} changelog records restored without a standby, {with} with one"
    );
    assert!(
        without as usize >= FAILOVER_PROFILES / 4,
        "without a standby the takeover restores the moved partitions' profiles: {without}"
    );
    assert!(with * 10 < without, "with a standby only the tail: {with} of {without}");
}
