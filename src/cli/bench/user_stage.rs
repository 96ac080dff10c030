//! The user-stage phase of `herald bench scale`: app events through the real user stage of
//! `--user-stage-instances` `herald engine` instances (one by default) holding `--profiles`
//! profiles and 20 active campaigns of mixed kinds (instant, inaction, reminder, property and
//! past-behaviour filters, DND, limits), beside a raw consume → produce passthrough of the same
//! events; then event → send command latency at half the rate the whole engine sustained (every
//! stage done), for users pinged once each.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use herald_engine::{
    kafka::KafkaConfig,
    model::{AppEvent, PropertyValue, SchemaRegistry},
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::Producer,
    Message, Offset, TopicPartitionList,
};
use serde_json::{json, Value};

use super::{
    engines::{user, CpuSplit, CpuWindow, Deployment, Instances, APP},
    runtime::{percentile, raw_passthrough},
    support::{create_topics, measure_rate, now_ms, producer, send},
};

/// What the phase measured.
pub(super) struct UserStage {
    pub events: usize,
    /// Engine instances that went through them.
    pub instances: usize,
    pub raw_rate: f64,
    pub engine: Throughput,
    pub latency_rate: f64,
    /// Pings sent during the latency run, and those answered (a command within 60 s).
    pub latency_pings: usize,
    pub latency_samples: usize,
    pub p50_ms: i64,
    pub p99_ms: i64,
    /// During the latency run: the age of the records each stage read (see [`WindowQuantiles`]).
    pub ages: Vec<WindowQuantiles>,
    /// During the latency run: how long each transaction's commit took.
    pub commits: WindowQuantiles,
    /// During the latency run: commits per second, and the share of the time spent in them.
    pub commit_load: CommitLoad,
    /// CPU while the engine went through the events.
    pub cpu: CpuSplit,
    /// CPU while the raw passthrough went through them.
    pub raw_cpu: CpuSplit,
    /// Log offsets (records and transaction markers) the engine added to each of its topics,
    /// output and changelogs, per event, while it went through the events; most first.
    pub offsets_per_event: Vec<(String, f64)>,
}

/// Bucket bounds of the median and 99th percentile of one of the engine's histograms in seconds
/// over a window: of `herald_runtime_record_age_seconds` on one topic, how old records were when
/// the stage reading it got them.
pub(super) struct WindowQuantiles {
    pub stage: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// How much of a window an engine's single processing thread spent committing transactions:
/// while it commits, it processes nothing.
pub(super) struct CommitLoad {
    pub per_second: f64,
    pub share: f64,
}

impl CommitLoad {
    /// The engine's commit count and time so far (`commit_seconds` `_count`, `_sum`).
    fn read(engines: &Instances) -> (f64, f64) {
        (engines.metric("commit_seconds_count", ""), engines.metric("commit_seconds_sum", ""))
    }

    /// The load between `before` (from [`Self::read`]) and now, over `seconds`.
    fn since(engines: &Instances, before: (f64, f64), seconds: f64) -> Self {
        let (count, sum) = Self::read(engines);
        let seconds = seconds.max(1e-3);
        // Each instance has its own processing thread: the share is their average.
        let threads = engines.len().max(1) as f64;
        Self {
            per_second: (count - before.0) / seconds,
            share: (sum - before.1) / seconds / threads,
        }
    }
}

impl WindowQuantiles {
    /// Cumulative bucket counts (upper bound in seconds, count) of `topic`'s record ages.
    fn buckets(engines: &Instances, topic: &str) -> Vec<(f64, f64)> {
        Self::histogram(engines, "record_age_seconds", Some(&format!("topic=\"{topic}\"")))
    }

    /// Cumulative bucket counts (upper bound in seconds, count) of histogram `name`, of its
    /// series with `label` (`name=\"value\"`) if given.
    fn histogram(engines: &Instances, name: &str, label: Option<&str>) -> Vec<(f64, f64)> {
        let series = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = engines
            .series(&series)
            .into_iter()
            .filter(|labels| label.is_none_or(|label| labels.contains(label)))
            .filter_map(|labels| {
                let bound = labels.split("le=\"").nth(1)?.split('"').next()?;
                let bound = if bound == "+Inf" { f64::INFINITY } else { bound.parse().ok()? };
                Some((bound, engines.metric(&series, &labels)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }

    /// The quantiles of what was counted between `before` and `after` (cumulative buckets).
    fn between(stage: &'static str, before: &[(f64, f64)], after: &[(f64, f64)]) -> Self {
        let counted = |bound: f64| {
            let at = |buckets: &[(f64, f64)]| {
                buckets.iter().find(|(b, _)| *b == bound).map_or(0.0, |(_, count)| *count)
            };
            at(after) - at(before)
        };
        let total = after.last().map_or(0.0, |(bound, _)| counted(*bound));
        let quantile = |q: f64| {
            after
                .iter()
                .find(|(bound, _)| total > 0.0 && counted(*bound) >= q * total)
                .map_or(f64::NAN, |(bound, _)| (bound * 1000.0).round())
        };
        Self { stage, p50_ms: quantile(0.5), p99_ms: quantile(0.99) }
    }
}

impl UserStage {
    /// "1 instance", "2 instances".
    fn instances_label(&self) -> String {
        match self.instances {
            1 => "1 instance".to_string(),
            n => format!("{n} instances"),
        }
    }

    /// The user stage's rate over the raw passthrough's.
    pub fn ratio(&self) -> f64 {
        self.engine.read_rate / self.raw_rate.max(1e-3)
    }

    pub fn print(&self, profiles: usize) {
        println!(
            "{:<34} {:>10} {:>12} {:>8}",
            format!("user stage, {profiles} profiles, 20 campaigns"),
            "events",
            "events/s",
            "ratio"
        );
        println!(
            "{:<34} {:>10} {:>12.0} {:>8}",
            "raw consume -> produce", self.events, self.raw_rate, "1.000"
        );
        println!(
            "{:<34} {:>10} {:>12.0} {:>8.3}",
            format!("engine, {}: user stage", self.instances_label()),
            self.events,
            self.engine.read_rate,
            self.ratio()
        );
        println!(
            "{:<34} {:>10} {:>12.0} {:>8.3}",
            format!("engine, {}: every stage", self.instances_label()),
            self.events,
            self.engine.done_rate,
            self.engine.done_rate / self.raw_rate.max(1e-3)
        );
        println!(
            "{:<34} {:>10} {:>12.0} {:>8}",
            "latency (event -> command)",
            format!("{}/{}", self.latency_samples, self.latency_pings),
            self.latency_rate,
            format!("p50 {} ms, p99 {} ms", self.p50_ms, self.p99_ms)
        );
        for age in self.ages.iter().chain([&self.commits]) {
            println!(
                "{:<34} {:>10} {:>12} {:>8}",
                format!("  {}", age.stage),
                "",
                "",
                format!("p50 <= {:.0} ms, p99 <= {:.0} ms", age.p50_ms, age.p99_ms)
            );
        }
        println!(
            "{:<34} {:>10} {:>12} {:>8}",
            "  commits",
            "",
            "",
            format!(
                "{:.1}/s, {:.0}% of the time",
                self.commit_load.per_second,
                self.commit_load.share * 100.0
            )
        );
        let (broker_us, raw_broker_us) = self.broker_us_per_event();
        println!(
            "{:<34} {:>10} {:>12} {:>8}",
            "  broker CPU per event",
            "",
            "",
            format!(
                "engine {broker_us:.1} us ({:.1} log offsets), raw {raw_broker_us:.1} us",
                self.offsets_per_event()
            )
        );
        for (topic, per_event) in &self.offsets_per_event {
            println!("{:<34} {:>10} {:>12} {:>8.2}", format!("    {topic}"), "", "", per_event);
        }
        println!(
            "{:<34} {:>10} {:>12.0} {:>8.3}",
            "broker alone on every core (bound)",
            "",
            self.broker_bound(),
            self.broker_bound() / self.raw_rate.max(1e-3)
        );
    }

    /// Events per second the broker alone could take, at the broker CPU per event it spent on
    /// the engine's records, with every core of the machine to itself: a bound on the user
    /// stage's rate on this machine whatever the engine's own CPU.
    pub fn broker_bound(&self) -> f64 {
        let cores = thread::available_parallelism().map_or(1, usize::from) as f64;
        cores * self.events as f64 / self.cpu.broker_s.max(1e-3)
    }

    /// The broker's CPU per event in microseconds: for the engine's records, for the raw
    /// passthrough's.
    fn broker_us_per_event(&self) -> (f64, f64) {
        let per_event = |split: &CpuSplit| split.broker_s * 1e6 / self.events.max(1) as f64;
        (per_event(&self.cpu), per_event(&self.raw_cpu))
    }

    /// Log offsets the engine wrote per event, over every topic.
    fn offsets_per_event(&self) -> f64 {
        self.offsets_per_event.iter().map(|(_, per_event)| per_event).sum()
    }

    pub fn json(&self) -> Value {
        let (broker_us, raw_broker_us) = self.broker_us_per_event();
        let round2 = |v: f64| (v * 100.0).round() / 100.0;
        json!({
            "events": self.events,
            "instances": self.instances,
            "raw_events_per_s": self.raw_rate.round(),
            "engine_events_per_s": self.engine.read_rate.round(),
            "engine_done_events_per_s": self.engine.done_rate.round(),
            "latency_events_per_s": self.latency_rate.round(),
            "latency_pings": self.latency_pings,
            "latency_samples": self.latency_samples,
            "latency_p50_ms": self.p50_ms,
            "latency_p99_ms": self.p99_ms,
            "record_age_ms": self.ages.iter().map(|age| json!({
                "stage": age.stage, "p50_le": age.p50_ms, "p99_le": age.p99_ms,
            })).collect::<Vec<_>>(),
            "commit_ms": {"p50_le": self.commits.p50_ms, "p99_le": self.commits.p99_ms},
            "commits_per_s": (self.commit_load.per_second * 10.0).round() / 10.0,
            "commit_time_share": (self.commit_load.share * 1000.0).round() / 1000.0,
            "offsets_per_event": round2(self.offsets_per_event()),
            "offsets_per_event_by_topic": self.offsets_per_event.iter()
                .map(|(topic, per_event)| (topic.clone(), json!(round2(*per_event))))
                .collect::<serde_json::Map<_, _>>(),
            "broker_us_per_event": broker_us.round(),
            "raw_broker_us_per_event": raw_broker_us.round(),
            "broker_bound_events_per_s": self.broker_bound().round(),
            "broker_bound_ratio": (self.broker_bound() / self.raw_rate.max(1e-3) * 1000.0).round() / 1000.0,
        })
    }
}

/// Event names of the generated traffic, in turn.
const EVENTS: [&str; 6] =
    ["Ping", "Added To Cart", "Charged", "App Opened", "Viewed Product", "Flight Booked"];

/// Campaign `k` of 20: five kinds in turn, each kind four times with its own id.
fn campaign(k: usize) -> (String, Value) {
    let id = format!("c{k:02}");
    let what = json!({"title": "Hi {{ profile.first_name | default: 'there' }}", "body": "b"});
    let mut definition = json!({"id": id, "app": APP, "name": id, "what": what});
    let fields = match k % 5 {
        0 => json!({"when": {"event": "Ping"}, "options": {"ignore_global_caps": true}}),
        1 => json!({
            "when": {"event": "Added To Cart", "unless": {"event": "Charged", "within": "10m"}},
        }),
        2 => json!({
            "when": {"reminder": {"event": "Flight Booked", "date_property": "departure", "offset": "-24h"}},
        }),
        3 => json!({
            "who": {"property": "first_name", "starts_with": format!("User {}", k % 10)},
            "when": {"event": "App Opened"},
            "options": {"dnd": {"start": "03:00", "end": "03:01", "action": "delay"}},
        }),
        _ => json!({
            "who": {"all": [
                {"did": "Viewed Product", "at_least": 2, "in_last_days": 30},
                {"did_not": "Charged", "in_last_days": 7},
            ]},
            "when": {"event": "App Opened"},
            "limits": {"total": 1_000_000, "daily": 100_000},
        }),
    };
    for (key, value) in fields.as_object().into_iter().flatten() {
        definition[key] = value.clone();
    }
    (id, definition)
}

/// Event `i` of the traffic, of one of the first `users` users.
fn event(i: usize, users: usize, run: i64) -> (String, AppEvent) {
    let user = user(i.wrapping_mul(7_919) % users.max(1));
    let name = EVENTS[i % EVENTS.len()];
    let departure = chrono::DateTime::from_timestamp_millis(now_ms() + 3 * 86_400_000)
        .map(|at| at.to_rfc3339())
        .unwrap_or_default();
    let properties = [
        ("item".to_string(), PropertyValue::String("tea".into())),
        ("price".to_string(), PropertyValue::Long(60)),
        ("departure".to_string(), PropertyValue::String(departure)),
    ];
    let event = AppEvent {
        event_id: format!("e-{run}-{i}"),
        app_id: APP.into(),
        user_id: user.clone(),
        name: name.into(),
        timestamp_ms: now_ms(),
        properties: properties.into(),
        sdk_version: None,
    };
    (user, event)
}

/// How the latency is measured.
pub(super) struct LatencyRun {
    /// For how long events are paced.
    pub seconds: u64,
    /// Events per second; `None`: half the rate the engine sustained.
    pub rate: Option<f64>,
}

/// Runs the phase: `events` app events over the first half of `profiles` users (the second
/// half is pinged once each for the latency), then the latency run, on `instances` engines;
/// `engine_args` go to each.
pub(super) fn run(
    kafka: &KafkaConfig,
    (profiles, events): (usize, usize),
    latency_run: LatencyRun,
    (instances, partitions): (usize, i32),
    engine_args: &[String],
) -> anyhow::Result<UserStage> {
    eprintln!("user stage: {profiles} profiles, {events} events, {instances} instance(s)");
    let deployment = Deployment::create(kafka, "users", partitions)?.with_engine_args(engine_args);
    deployment.produce_profiles(profiles)?;
    for (id, definition) in (0..20).map(campaign) {
        deployment.define(&id, &definition)?;
    }
    let mut engines = Instances::start(&deployment, instances)?;
    super::scale::wait_loaded(&deployment, &mut engines.each_mut(), profiles)?;
    // Stopped cleanly while the events are produced and read raw; restarted on its checkpoint.
    engines.stop()?;
    let started = Instant::now();
    let registry = SchemaRegistry::builtin();
    let producer = producer(kafka)?;
    let run = now_ms();
    for i in 0..events {
        let (key, event) = event(i, profiles / 2, run);
        send(
            &producer,
            &deployment.topics.events,
            key.as_bytes(),
            &registry.encode(&event)?,
            None,
        )?;
    }
    producer.flush(Duration::from_secs(300))?;
    eprintln!("  {events} events produced in {:.1} s", started.elapsed().as_secs_f64());

    eprintln!("  raw consume -> produce");
    let raw_output = format!("{}raw-out", deployment.prefix);
    create_topics(kafka, std::slice::from_ref(&raw_output), partitions, |_| true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let raw_window = CpuWindow::open(kafka, &[]);
    let worker = {
        let (kafka, stop, input, output) = (
            kafka.clone(),
            Arc::clone(&stop),
            deployment.topics.events.clone(),
            raw_output.clone(),
        );
        thread::spawn(move || raw_passthrough(&kafka, &input, &output, &stop))
    };
    let raw_rate = measure_rate(kafka, &raw_output, events);
    stop.store(true, Ordering::SeqCst);
    worker.join().map_err(|_| anyhow::anyhow!("the raw passthrough panicked"))??;
    let raw_rate = raw_rate?;
    let raw_cpu = raw_window.close(&[]);

    eprintln!("  engine");
    let written_before = offsets_written(kafka, &deployment.prefix, &deployment.topics.events)?;
    let mut engines = Instances::start(&deployment, instances)?;
    let window = CpuWindow::open(kafka, &engines.each());
    let throughput = watch(&mut engines, &deployment, events)?;
    let cpu = window.close(&engines.each());
    let written = offsets_written(kafka, &deployment.prefix, &deployment.topics.events)?;
    let mut offsets_per_event: Vec<(String, f64)> = written
        .into_iter()
        .map(|(topic, now)| {
            let before = written_before.get(&topic).copied().unwrap_or(0);
            (topic, (now - before) as f64 / events.max(1) as f64)
        })
        .filter(|(_, per_event)| *per_event > 0.0)
        .collect();
    offsets_per_event.sort_by(|a, b| b.1.total_cmp(&a.1));

    // Half the user stage's rate would outrun the stages after it: latency behind a backlog.
    let latency_rate = latency_run.rate.unwrap_or(throughput.done_rate / 2.0);
    let latency_seconds = latency_run.seconds;
    eprintln!("  latency at {latency_rate:.0} events/s for {latency_seconds} s");
    let stages = [
        ("record age read by user stage (herald.events)", &deployment.topics.events),
        (
            "record age read by campaign stage (herald.campaign-flow)",
            &deployment.topics.campaign_flow,
        ),
    ];
    let before: Vec<_> =
        stages.iter().map(|(_, topic)| WindowQuantiles::buckets(&engines, topic)).collect();
    let commits_before = WindowQuantiles::histogram(&engines, "commit_seconds", None);
    let (load_before, latency_started) = (CommitLoad::read(&engines), Instant::now());
    let (pings, mut latencies) =
        latency(kafka, &deployment, profiles, latency_rate, latency_seconds, &mut engines)?;
    latencies.sort_unstable();
    let ages = stages
        .iter()
        .zip(&before)
        .map(|((stage, topic), before)| {
            WindowQuantiles::between(stage, before, &WindowQuantiles::buckets(&engines, topic))
        })
        .collect();
    let commits = WindowQuantiles::between(
        "commit of a transaction",
        &commits_before,
        &WindowQuantiles::histogram(&engines, "commit_seconds", None),
    );
    let commit_load =
        CommitLoad::since(&engines, load_before, latency_started.elapsed().as_secs_f64());
    engines.stop()?;
    Ok(UserStage {
        events,
        instances,
        raw_rate,
        engine: throughput,
        latency_rate,
        latency_pings: pings,
        latency_samples: latencies.len(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        ages,
        commits,
        commit_load,
        cpu,
        raw_cpu,
        offsets_per_event,
    })
}

/// How fast one engine went through the events.
pub(super) struct Throughput {
    /// Events per second read by the user stage: from its first event to its last.
    pub read_rate: f64,
    /// Events per second from the first event read until every stage was done with them.
    pub done_rate: f64,
}

/// Watches `engines` until they have read `expected` events and every stage is done: the stages'
/// own topics (campaign flow, app throttle) read as far as it wrote them and nothing read for
/// 2 s, or nothing read for 15 s (records of aborted transactions count as written).
fn watch(
    engines: &mut Instances,
    deployment: &Deployment,
    expected: usize,
) -> anyhow::Result<Throughput> {
    let topics = &deployment.topics;
    let label = |topic: &str| format!("topic=\"{topic}\"");
    let internal = [label(&topics.campaign_flow), label(&topics.app_throttle)];
    let deadline = Instant::now() + Duration::from_secs(900 + expected as u64 / 1_000);
    let (mut first, mut all_read, mut last) = (None, None, (0.0, Instant::now()));
    loop {
        anyhow::ensure!(Instant::now() < deadline, "the engine did not process every event");
        engines.check_alive()?;
        let read = engines.metric("records_in_total", &label(&topics.events));
        if read > 0.0 && first.is_none() {
            first = Some((Instant::now(), read));
        }
        if read >= expected as f64 && all_read.is_none() {
            all_read = Some(Instant::now());
        }
        let total = engines.metric("records_in_total", "");
        if total != last.0 {
            last = (total, Instant::now());
        }
        let caught_up = internal.iter().all(|topic| {
            engines.metric("records_in_total", topic) >= engines.metric("records_out_total", topic)
        });
        let quiet = last.1.elapsed();
        if let (Some(read_at), true) = (all_read, quiet > Duration::from_secs(2)) {
            if caught_up || quiet > Duration::from_secs(15) {
                let (started, at_start) = first.unwrap_or((read_at, 0.0));
                let events = expected as f64 - at_start;
                let span = |end: Instant| end.duration_since(started).as_secs_f64().max(1e-3);
                return Ok(Throughput {
                    read_rate: events / span(read_at),
                    done_rate: events / span(last.1),
                });
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The traffic's mix of events at `rate` for `seconds`, its `Ping`s to users of the second half
/// of the profiles, one each: the time from each `Ping` (its timestamp) to its first command
/// (broker append time), in ms; with the number of pings sent.
fn latency(
    kafka: &KafkaConfig,
    deployment: &Deployment,
    profiles: usize,
    rate: f64,
    seconds: u64,
    engines: &mut Instances,
) -> anyhow::Result<(usize, Vec<i64>)> {
    let total = ((rate * seconds as f64) as usize).min(profiles / 2).max(EVENTS.len());
    let consumer = at_end(kafka, &deployment.topics.push)?;
    let registry = SchemaRegistry::builtin();
    let producer = producer(kafka)?;
    let mut sent: HashMap<String, i64> = HashMap::with_capacity(total);
    // Several Ping campaigns answer (`c00` everyone, others by filter): a user's first command
    // is what counts.
    let mut firsts: HashMap<String, i64> = HashMap::with_capacity(total);
    let read = |sent: &HashMap<String, i64>, firsts: &mut HashMap<String, i64>, wait| {
        while let Some(message) = consumer.poll(wait) {
            let Ok(message) = message else { continue };
            let user = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            if let Some(at) = sent.get(&user) {
                let appended = message.timestamp().to_millis().unwrap_or_default();
                firsts.entry(user).or_insert(appended - at);
            }
        }
    };
    let (started, run) = (Instant::now(), now_ms());
    for j in 0..total {
        let due = started + Duration::from_secs_f64(j as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let (mut key, mut event) = event(j, profiles / 2, run);
        if event.name == "Ping" {
            key = user(profiles / 2 + j);
            event.user_id.clone_from(&key);
            sent.insert(key.clone(), event.timestamp_ms);
        }
        let value = registry.encode(&event)?;
        send(&producer, &deployment.topics.events, key.as_bytes(), &value, None)?;
        if j % 500 == 0 {
            read(&sent, &mut firsts, Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while firsts.len() < sent.len() && Instant::now() < deadline {
        engines.check_alive()?;
        read(&sent, &mut firsts, Duration::from_millis(100));
    }
    Ok((sent.len(), firsts.into_values().collect()))
}

/// Log offsets of every topic whose name starts with `prefix` (by the rest of its name), but
/// `except`: the records (and transaction markers) written to them so far.
fn offsets_written(
    kafka: &KafkaConfig,
    prefix: &str,
    except: &str,
) -> anyhow::Result<HashMap<String, i64>> {
    let consumer: BaseConsumer = kafka.client_config().create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut written = HashMap::new();
    for topic in metadata.topics() {
        let Some(name) = topic.name().strip_prefix(prefix).filter(|_| topic.name() != except)
        else {
            continue;
        };
        for partition in topic.partitions() {
            let (_, high) =
                consumer.fetch_watermarks(topic.name(), partition.id(), Duration::from_secs(10))?;
            *written.entry(name.to_string()).or_default() += high;
        }
    }
    Ok(written)
}

/// A consumer of `topic` (committed records) positioned at its current end.
fn at_end(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("{topic}-latency"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) =
            consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10))?;
        assignment.add_partition_offset(topic, partition.id(), Offset::Offset(high))?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}
