//! `herald bench scale`: the engine at scale, as `herald engine` processes on the local broker.
//! - restore: a fresh instance restores `--profiles` profiles from the changelog (seconds, MB/s);
//! - broadcast: a scheduled run to `--users` users on 1 and on 2 instances (commands/s, time to
//!   the last command, peak RSS per instance) beside one producer producing the same commands;
//! - failover: time from the SIGKILL of one of 2 instances to the first command for one of its
//!   partitions, without and with a standby replica;
//! - user stage: app events/s through the user stage with 20 campaigns beside a raw
//!   passthrough, and event → command latency at half the rate every stage sustained (see
//!   `user_stage.rs`).
//!
//! Each phase prints a table; the run ends with one JSON line, `null` for what did not run.

use std::{
    collections::{BTreeSet, HashSet},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Args, ValueEnum};
use herald_engine::{
    kafka::KafkaConfig,
    model::{AppEvent, SchemaRegistry, SendCommand},
    runtime::partition_for,
};
use rdkafka::{consumer::Consumer, producer::Producer, Message};
use serde_json::{json, Value};

use super::{
    engines::{delete_topics, user, wait_for, CpuSplit, CpuWindow, Deployment, Instance, APP},
    support::{create_topics, measure_rate, now_ms, output_consumer, producer, send},
    user_stage,
};

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Phases to run (default: all), in this order.
    #[arg(long = "phase", value_delimiter = ',')]
    phases: Vec<Phase>,
    /// Users of the broadcast.
    #[arg(long, default_value_t = 2_000_000)]
    users: usize,
    /// Engine instances of each broadcast run, in turn; the first run's commands are also
    /// produced raw (e.g. `--broadcast-instances 1` when the disk holds one run only).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    broadcast_instances: Vec<usize>,
    /// Profiles restored in the restore phase.
    #[arg(long, default_value_t = 1_000_000)]
    profiles: usize,
    /// Profiles held by the two instances of the failover phase.
    #[arg(long, default_value_t = 200_000)]
    failover_profiles: usize,
    /// App events through the user stage (the raw passthrough of 3,000,000 runs about 20 s).
    #[arg(long, default_value_t = 3_000_000)]
    events: usize,
    /// Engine instances of the user stage's runs (each its own processing thread: 2 use both
    /// cores of a 2-core machine).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=26))]
    user_stage_instances: u8,
    /// Seconds of paced events for the user stage's latency at half its rate.
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// App events per second of the user stage's latency run, instead of half the rate the
    /// engine sustained (to see the latency at a lighter load).
    #[arg(long, value_parser = events_per_second)]
    latency_rate: Option<f64>,
    /// An argument for every `herald engine` the phases start (repeatable, e.g.
    /// `--engine-arg=--kafka-property=session.timeout.ms=3000`), before each phase's own.
    #[arg(long = "engine-arg", value_name = "ARG", allow_hyphen_values = true)]
    engine_args: Vec<String>,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
}

/// A `--latency-rate`: a positive, finite number of events per second.
fn events_per_second(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a positive number of events per second")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Restore,
    Broadcast,
    Failover,
    UserStage,
}

/// Polling limit for the waits of a phase: generous, proportional to its size.
fn limit(records: usize) -> Duration {
    Duration::from_secs(300 + records as u64 / 1_000)
}

pub fn run(kafka: &KafkaConfig, args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let wanted = |phase| args.phases.is_empty() || args.phases.contains(&phase);
    let mut summary = json!({
        "bench": "scale",
        "partitions": args.partitions,
        "restore_seconds": null,
        "broadcast_ratio": null,
        "user_stage_ratio": null,
    });
    let mut cpu = Vec::new();
    if wanted(Phase::Restore) {
        let restore = restore(kafka, &args)?;
        restore.print();
        cpu.push(("restore".to_string(), restore.cpu));
        summary["restore_profiles"] = json!(args.profiles);
        summary["restore_seconds"] = json!(round(restore.seconds, 2));
        summary["restore_records"] = json!(restore.records);
        summary["restore_mb_per_s"] = json!(round(restore.mb / restore.seconds.max(1e-3), 1));
    }
    if wanted(Phase::Broadcast) {
        let broadcast = broadcast(kafka, &args)?;
        broadcast.print(args.users);
        for run in &broadcast.runs {
            cpu.push((format!("broadcast, {} instance(s)", run.instances), run.cpu));
        }
        summary["broadcast"] = broadcast.json(args.users);
        summary["broadcast_ratio"] = broadcast
            .runs
            .last()
            .map_or(Value::Null, |run| json!(round(run.rate / broadcast.raw_rate.max(1e-3), 3)));
    }
    if wanted(Phase::Failover) {
        let runs = [failover(kafka, &args, 0)?, failover(kafka, &args, 1)?];
        println!(
            "{:<34} {:>12} {:>10} {:>10}",
            "failover (SIGKILL of 1 of 2)", "first cmd s", "moved", "restored"
        );
        for run in &runs {
            println!(
                "{:<34} {:>12.2} {:>10} {:>10}",
                format!("{} standby replica(s)", run.standbys),
                run.seconds,
                run.moved.len(),
                run.restored
            );
            cpu.push((format!("failover, {} standby", run.standbys), run.cpu));
        }
        summary["failover"] = runs
            .iter()
            .map(|run| {
                json!({
                    "standby_replicas": run.standbys,
                    "seconds_to_first_command": round(run.seconds, 2),
                    "moved_partitions": run.moved,
                    "restored_records": run.restored,
                })
            })
            .collect();
    }
    if wanted(Phase::UserStage) {
        let (profiles, events) = (args.profiles, args.events);
        let latency =
            user_stage::LatencyRun { seconds: args.latency_seconds, rate: args.latency_rate };
        let stage = user_stage::run(
            kafka,
            (profiles, events),
            latency,
            (usize::from(args.user_stage_instances), args.partitions),
            &args.engine_args,
        )?;
        stage.print(profiles);
        cpu.push(("user stage (raw part)".to_string(), stage.raw_cpu));
        cpu.push(("user stage (engine part)".to_string(), stage.cpu));
        summary["user_stage"] = stage.json();
        summary["user_stage_ratio"] = json!(round(stage.ratio(), 3));
    }
    println!("{}", CpuSplit::header());
    for (phase, split) in &cpu {
        println!("{}", split.row(phase));
    }
    summary["cpu"] =
        cpu.iter().map(|(phase, split)| json!({"phase": phase, "cpu": split.json()})).collect();
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// What the restore phase measured.
struct Restore {
    records: u64,
    seconds: f64,
    mb: f64,
    cpu: CpuSplit,
}

impl Restore {
    fn print(&self) {
        println!(
            "{:<34} {:>10} {:>10} {:>10} {:>10}",
            "restore", "records", "seconds", "MB", "MB/s"
        );
        println!(
            "{:<34} {:>10} {:>10.2} {:>10.1} {:>10.1}",
            "fresh instance, from the changelog",
            self.records,
            self.seconds,
            self.mb,
            self.mb / self.seconds.max(1e-3)
        );
    }
}

/// Loads the profiles into one instance, stops it cleanly, and starts it again (same id) on an
/// empty state directory: it restores every task from the changelogs.
fn restore(kafka: &KafkaConfig, args: &ScaleArgs) -> anyhow::Result<Restore> {
    eprintln!("restore: {} profiles", args.profiles);
    let deployment =
        Deployment::create(kafka, "restore", args.partitions)?.with_engine_args(&args.engine_args);
    deployment.produce_profiles(args.profiles)?;
    let mut first = deployment.start("a", "state-1", &[])?;
    wait_loaded(&deployment, &mut [&mut first], args.profiles)?;
    first.stop()?;
    let changelogs = changelog_bytes(kafka, &deployment.app_id)?;
    let mut fresh = deployment.start("a", "state-2", &[])?;
    let window = CpuWindow::open(kafka, &[]);
    let restored = |i: &Instance| i.last_log_line("tasks restored");
    wait_for("the restore", limit(args.profiles), &mut fresh, |i| restored(i).is_some())?;
    let cpu = window.close(&[&fresh]);
    let line = restored(&fresh).unwrap_or_default();
    let field = |name: &str| -> anyhow::Result<f64> {
        let value = line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}=")));
        value.and_then(|v| v.parse().ok()).with_context(|| format!("{name} in {line:?}"))
    };
    let (records, elapsed_ms) = (field("restored")? as u64, field("elapsed_ms")?);
    fresh.stop()?;
    Ok(Restore { records, seconds: elapsed_ms / 1000.0, mb: changelogs / 1e6, cpu })
}

/// Waits until the instances have read `profiles` profiles and have tasks, and the count has
/// stopped moving (no rebalance re-reading them).
pub(super) fn wait_loaded(
    deployment: &Deployment,
    instances: &mut [&mut Instance],
    profiles: usize,
) -> anyhow::Result<()> {
    let label = format!("topic=\"{}\"", deployment.topics.profiles);
    let read = |instances: &[&mut Instance]| -> f64 {
        instances.iter().map(|i| i.metric("records_in_total", &label)).sum()
    };
    let mut last = (0.0, Instant::now());
    let started = Instant::now();
    loop {
        for instance in instances.iter_mut() {
            instance.check_alive()?;
        }
        let now = read(instances);
        if now != last.0 {
            last = (now, Instant::now());
        }
        let assigned = instances.iter().all(|i| i.log_count("tasks restored") > 0);
        if assigned && now >= profiles as f64 && last.1.elapsed() > Duration::from_secs(2) {
            eprintln!("  profiles loaded after {:.1} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < limit(profiles), "read {now} of {profiles} profiles");
        thread::sleep(Duration::from_millis(250));
    }
}

/// Bytes (keys and values) in the changelogs of application `app_id`.
fn changelog_bytes(kafka: &KafkaConfig, app_id: &str) -> anyhow::Result<f64> {
    use rdkafka::{consumer::BaseConsumer, Offset, TopicPartitionList};
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("{app_id}-bytes"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for topic in metadata.topics() {
        if !(topic.name().starts_with(app_id) && topic.name().ends_with("-changelog")) {
            continue;
        }
        for partition in topic.partitions() {
            let (low, high) =
                consumer.fetch_watermarks(topic.name(), partition.id(), Duration::from_secs(10))?;
            if high > low {
                assignment.add_partition_offset(topic.name(), partition.id(), Offset::Beginning)?;
                ends.insert((topic.name().to_string(), partition.id()), high);
            }
        }
    }
    consumer.assign(&assignment)?;
    let (mut bytes, deadline) = (0usize, Instant::now() + Duration::from_secs(600));
    while !ends.is_empty() && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message?;
        bytes += message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len);
        let key = (message.topic().to_string(), message.partition());
        if ends.get(&key).is_some_and(|end| message.offset() + 2 >= *end) {
            ends.remove(&key);
        }
    }
    Ok(bytes as f64)
}

/// One broadcast run.
struct BroadcastRun {
    instances: usize,
    commands: usize,
    rate: f64,
    to_last: f64,
    peak_rss_mb: Vec<f64>,
    cpu: CpuSplit,
}

/// What the broadcast phase measured.
struct Broadcast {
    raw_rate: f64,
    runs: Vec<BroadcastRun>,
}

impl Broadcast {
    fn print(&self, users: usize) {
        println!(
            "{:<34} {:>10} {:>12} {:>10} {:>8} {:>16}",
            format!("broadcast to {users} users"),
            "commands",
            "commands/s",
            "to last s",
            "ratio",
            "peak RSS MB"
        );
        println!(
            "{:<34} {:>10} {:>12.0} {:>10} {:>8} {:>16}",
            "raw produce, one producer", users, self.raw_rate, "-", "1.000", "-"
        );
        for run in &self.runs {
            let rss: Vec<String> = run.peak_rss_mb.iter().map(|mb| format!("{mb:.0}")).collect();
            println!(
                "{:<34} {:>10} {:>12.0} {:>10.1} {:>8.3} {:>16}",
                format!("engine, {} instance(s)", run.instances),
                run.commands,
                run.rate,
                run.to_last,
                run.rate / self.raw_rate.max(1e-3),
                rss.join("/")
            );
        }
    }

    fn json(&self, users: usize) -> Value {
        json!({
            "users": users,
            "raw_commands_per_s": self.raw_rate.round(),
            "runs": self.runs.iter().map(|run| json!({
                "instances": run.instances,
                "commands": run.commands,
                "commands_per_s": run.rate.round(),
                "seconds_to_last": round(run.to_last, 1),
                "ratio": round(run.rate / self.raw_rate.max(1e-3), 3),
                "peak_rss_mb": run.peak_rss_mb.iter().map(|mb| mb.round()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The broadcast on each of `--broadcast-instances` (the first run's commands then produced raw
/// by one producer); each run's figures are printed as soon as it ends.
fn broadcast(kafka: &KafkaConfig, args: &ScaleArgs) -> anyhow::Result<Broadcast> {
    let (first, rest) =
        args.broadcast_instances.split_first().context("--broadcast-instances is empty")?;
    let mut commands = Commands::default();
    let mut runs = vec![broadcast_run(kafka, args, *first, Some(&mut commands))?];
    eprintln!("broadcast: the same {} commands by one producer", commands.len());
    let raw_topic = format!("bench-scale-{}-raw-push", now_ms());
    create_topics(kafka, std::slice::from_ref(&raw_topic), args.partitions, |_| true)?;
    let raw_rate = (|| {
        let producer = producer(kafka)?;
        for (key, value) in commands.iter() {
            send(&producer, &raw_topic, key, value, None)?;
        }
        producer.flush(Duration::from_secs(300))?;
        measure_rate(kafka, &raw_topic, commands.len())
    })();
    drop(commands);
    delete_topics(kafka, &raw_topic);
    let raw_rate = raw_rate?;
    eprintln!("  raw: {raw_rate:.0} commands/s");
    for instances in rest {
        runs.push(broadcast_run(kafka, args, *instances, None)?);
    }
    Ok(Broadcast { raw_rate, runs })
}

/// Commands read back (keys and values), in one buffer.
#[derive(Default)]
struct Commands {
    bytes: Vec<u8>,
    /// Per command: start, key length, value length.
    spans: Vec<(usize, usize, usize)>,
}

impl Commands {
    fn push(&mut self, key: &[u8], value: &[u8]) {
        self.spans.push((self.bytes.len(), key.len(), value.len()));
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|&(at, key, value)| {
            (&self.bytes[at..at + key], &self.bytes[at + key..at + key + value])
        })
    }
}

/// A scheduled run of a campaign on every partition's shard to `--users` users, on
/// `instances` engines; keeps the commands in `keep` if given.
fn broadcast_run(
    kafka: &KafkaConfig,
    args: &ScaleArgs,
    instances: usize,
    mut keep: Option<&mut Commands>,
) -> anyhow::Result<BroadcastRun> {
    eprintln!("broadcast: {} users, {instances} instance(s)", args.users);
    let deployment = Deployment::create(kafka, &format!("broadcast{instances}"), args.partitions)?
        .with_engine_args(&args.engine_args);
    deployment.produce_profiles(args.users)?;
    let mut engines: Vec<Instance> = (0..instances)
        .map(|i| deployment.start(&format!("i{i}"), &format!("state-{i}"), &[]))
        .collect::<anyhow::Result<_>>()?;
    wait_loaded(&deployment, &mut engines.iter_mut().collect::<Vec<_>>(), args.users)?;
    let window = CpuWindow::open(kafka, &engines.iter().collect::<Vec<_>>());
    let run_at = now_ms() + 3_000;
    let at = chrono::DateTime::from_timestamp_millis(run_at).context("run time")?;
    deployment.define(
        "broadcast",
        &json!({
            "id": "broadcast",
            "app": APP,
            "name": "Broadcast",
            "when": {"schedule": {"at": at.to_rfc3339()}},
            "what": {"title": "Hi {{ profile.first_name | default: 'there' }}", "body": "Your offer is waiting"},
            "limits": {"safety": 100_000_000},
            "options": {"ignore_global_caps": true, "shards": args.partitions},
        }),
    )?;
    let consumer = output_consumer(kafka, &deployment.topics.push)?;
    let deadline = Instant::now() + limit(args.users);
    let (mut first, mut last, mut seen, mut checked) = (i64::MAX, i64::MIN, 0usize, Instant::now());
    while seen < args.users {
        anyhow::ensure!(Instant::now() < deadline, "{seen} of {} commands", args.users);
        if checked.elapsed() > Duration::from_secs(2) {
            for engine in &mut engines {
                engine.check_alive()?;
            }
            checked = Instant::now();
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message?;
        let appended = message.timestamp().to_millis().unwrap_or_default();
        (first, last, seen) = (first.min(appended), last.max(appended), seen + 1);
        if let Some(keep) = keep.as_deref_mut() {
            keep.push(message.key().unwrap_or_default(), message.payload().unwrap_or_default());
        }
    }
    let cpu = window.close(&engines.iter().collect::<Vec<_>>());
    let peak_rss_mb: Vec<f64> = engines.iter().map(Instance::peak_rss_mb).collect();
    for engine in &mut engines {
        engine.stop()?;
    }
    let run = BroadcastRun {
        instances,
        commands: seen,
        rate: seen as f64 / ((last - first) as f64 / 1000.0).max(1e-3),
        to_last: (last - run_at) as f64 / 1000.0,
        peak_rss_mb,
        cpu,
    };
    eprintln!(
        "  {instances} instance(s): {} commands, {:.0} commands/s, last {:.1} s after the run time, \
         peak RSS {:?} MB",
        run.commands, run.rate, run.to_last, run.peak_rss_mb
    );
    Ok(run)
}

/// What one failover run measured.
struct Failover {
    standbys: usize,
    seconds: f64,
    moved: Vec<i32>,
    restored: u64,
    cpu: CpuSplit,
}

/// Two instances hold `--failover-profiles` profiles under a steady stream of pings (a campaign
/// sends one command per ping); the second one is killed (SIGKILL): the time from the kill to
/// the first command for one of the partitions it owned (its input lag series name them) to a
/// ping produced after the kill, told by its user (each user is pinged once in
/// `--failover-profiles` pings). Commands to earlier pings do not count: the victim's last
/// transaction may land after the kill, and a command's time does not tell them apart (with
/// the time of a ping it read just before, 2 of 4 runs measured 0.02–0.05 s).
fn failover(kafka: &KafkaConfig, args: &ScaleArgs, standbys: usize) -> anyhow::Result<Failover> {
    eprintln!("failover: {} profiles, {standbys} standby replica(s)", args.failover_profiles);
    let deployment = Deployment::create(kafka, &format!("failover{standbys}"), args.partitions)?
        .with_engine_args(&args.engine_args);
    deployment.define(
        "pings",
        &json!({
            "id": "pings", "app": APP, "name": "Pings",
            "when": {"event": "Ping"},
            "what": {"title": "t", "body": "b"},
            "options": {"ignore_global_caps": true},
        }),
    )?;
    let replicas = standbys.to_string();
    let extra = ["--standby-replicas", replicas.as_str()];
    let mut a = deployment.start("a", "state-a", &extra)?;
    let mut b = deployment.start("b", "state-b", &extra)?;
    // Pings flow from the start (those to users without a profile yet send nothing): the lag
    // statistics that tell which partitions b owns need records.
    let window = CpuWindow::open(kafka, &[&a, &b]);
    let traffic = Pings::start(kafka, &deployment, args.failover_profiles)?;
    let events = format!("topic=\"{}\"", deployment.topics.events);
    let owned = |instance: &Instance| -> BTreeSet<i32> {
        let series = instance.series("consumer_lag");
        series
            .iter()
            .filter(|labels| labels.contains(&events))
            .filter_map(|labels| {
                labels.split("partition=\"").nth(1)?.split('"').next()?.parse().ok()
            })
            .collect()
    };
    let settle = limit(args.failover_profiles);
    // The profiles are produced once both own their partitions: the one killed holds its own
    // (the survivor has no copy of them from a time it owned them alone, unless a standby).
    wait_for("b has partitions", settle, &mut b, |b| !owned(b).is_empty())?;
    deployment.produce_profiles(args.failover_profiles)?;
    wait_loaded(&deployment, &mut [&mut a, &mut b], args.failover_profiles)?;
    if standbys > 0 {
        let caught_up = |a: &Instance| {
            a.last_log_line(" standbys ").is_some_and(|line| line.contains("caught_up=true"))
        };
        wait_for("a's standbys catch up", settle, &mut a, caught_up)?;
    }
    // What b's series name and a's do not: a series outlives its partition's move by up to
    // one statistics interval (5 s).
    let moved: BTreeSet<i32> = owned(&b).difference(&owned(&a)).copied().collect();
    anyhow::ensure!(!moved.is_empty(), "no partition is b's alone");
    let consumer = output_consumer(kafka, &deployment.topics.push)?;
    let registry = SchemaRegistry::builtin();
    let assignments = a.log_count("tasks restored");
    let killed_at = now_ms();
    b.kill()?;
    // Commands to pings produced after b is gone: b cannot have read those.
    let after_kill = traffic.next_users(args.failover_profiles / 2);
    let mut first = None;
    let deadline = Instant::now() + settle;
    while first.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "no command for a moved partition");
        a.check_alive()?;
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message?;
        let appended = message.timestamp().to_millis().unwrap_or_default();
        let partition = partition_for(message.key().unwrap_or_default(), args.partitions);
        let command: SendCommand = registry.decode(message.payload().unwrap_or_default())?;
        if after_kill.contains(&command.user_id) && moved.contains(&partition) {
            first = Some(appended);
        }
    }
    traffic.stop()?;
    let cpu = window.close(&[&a]);
    wait_for("a's takeover restore", settle, &mut a, |a| {
        a.log_count("tasks restored") > assignments
    })?;
    let line = a.last_log_line("tasks restored").unwrap_or_default();
    let restored = line.split_whitespace().find_map(|w| w.strip_prefix("restored="));
    let restored = restored.and_then(|v| v.parse().ok()).unwrap_or_default();
    a.stop()?;
    Ok(Failover {
        standbys,
        seconds: (first.unwrap_or(killed_at) - killed_at) as f64 / 1000.0,
        moved: moved.into_iter().collect(),
        restored,
        cpu,
    })
}

/// A steady stream of `Ping` events (200/s) to the deployment's users, in a thread: ping `n`
/// goes to [`Pings::user_of`]`(n)`.
struct Pings {
    stop: Arc<AtomicBool>,
    /// Pings produced so far.
    sent: Arc<AtomicUsize>,
    users: usize,
    thread: thread::JoinHandle<anyhow::Result<()>>,
}

impl Pings {
    fn start(kafka: &KafkaConfig, deployment: &Deployment, users: usize) -> anyhow::Result<Self> {
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (flag, count, topic, producer) = (
            Arc::clone(&stop),
            Arc::clone(&sent),
            deployment.topics.events.clone(),
            producer(kafka)?,
        );
        let thread = thread::spawn(move || -> anyhow::Result<()> {
            let registry = SchemaRegistry::builtin();
            let started = Instant::now();
            let mut n = 0usize;
            while !flag.load(Ordering::SeqCst) {
                let due = started + Duration::from_millis(n as u64 * 5);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let user = Self::user_of(n, users);
                let event = AppEvent {
                    event_id: format!("ping-{n}"),
                    app_id: APP.into(),
                    user_id: user.clone(),
                    name: "Ping".into(),
                    timestamp_ms: now_ms(),
                    properties: Default::default(),
                    sdk_version: None,
                };
                send(&producer, &topic, user.as_bytes(), &registry.encode(&event)?, None)?;
                n += 1;
                count.store(n, Ordering::SeqCst);
            }
            producer.flush(Duration::from_secs(30))?;
            Ok(())
        });
        Ok(Self { stop, sent, users, thread })
    }

    /// The user of ping `n` among `users` (7,919 is prime: each user once per `users` pings).
    fn user_of(n: usize, users: usize) -> String {
        user(n.wrapping_mul(7_919) % users)
    }

    /// The users of the next `count` pings, none pinged in the last `users - count`.
    fn next_users(&self, count: usize) -> HashSet<String> {
        let from = self.sent.load(Ordering::SeqCst);
        (from..from + count.min(self.users)).map(|n| Self::user_of(n, self.users)).collect()
    }

    fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().map_err(|_| anyhow::anyhow!("the ping thread panicked"))?
    }
}
