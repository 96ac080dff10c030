//! `herald engine` instances as child processes of a benchmark: a deployment on topics of its
//! own (deleted when it is dropped), instances with their own state directories, logs and
//! metrics endpoints, and the CPU time they, the broker and the benchmark itself use.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use herald_engine::{
    campaign::parse_campaign,
    kafka::{delete_topics_with_prefix, KafkaConfig},
    model::{
        topics::TopicNames, CampaignCommand, CampaignEnvelope, Device, Platform, ProfileUpdate,
        PropertyValue, SchemaRegistry,
    },
};
use rdkafka::producer::Producer;

use super::{
    sender::cpu_ms,
    support::{create_topics, now_ms, producer, send},
};

/// App id of the generated users and campaigns.
pub(super) const APP: &str = "shop";

/// A deployment on topics of its own, `bench-scale-<ms>-<name>-…`, all with the same number of
/// partitions, `herald.push` stamped with the broker's append time. Its topics (and its
/// engines' changelogs, whose application id shares the prefix) are deleted on drop.
pub(super) struct Deployment {
    kafka: KafkaConfig,
    pub prefix: String,
    pub app_id: String,
    pub topics: TopicNames,
    dir: tempfile::TempDir,
    /// Arguments given to every engine started, before each start's own.
    engine_args: Vec<String>,
}

impl Deployment {
    /// Creates the topics of deployment `name`.
    pub fn create(kafka: &KafkaConfig, name: &str, partitions: i32) -> anyhow::Result<Self> {
        let prefix = format!("bench-scale-{}-{name}-", now_ms());
        let topics = TopicNames::with_prefix(&prefix);
        let names = topics.all().map(str::to_string);
        create_topics(kafka, &names, partitions, |topic| topic == topics.push)?;
        Ok(Self {
            kafka: kafka.clone(),
            app_id: format!("{prefix}engine"),
            prefix,
            topics,
            dir: tempfile::tempdir()?,
            engine_args: Vec::new(),
        })
    }

    /// This deployment with `args` given to every engine it starts.
    pub fn with_engine_args(mut self, args: &[String]) -> Self {
        self.engine_args = args.to_vec();
        self
    }

    /// Defines campaign `id` of the app (`definition` as the JSON of its YAML).
    pub fn define(&self, id: &str, definition: &serde_json::Value) -> anyhow::Result<()> {
        parse_campaign(&definition.to_string(), id).map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
        let envelope = SchemaRegistry::builtin().encode(&CampaignEnvelope {
            campaign_id: id.into(),
            app_id: APP.into(),
            command: CampaignCommand::Define,
            definition: Some(definition.to_string()),
            revision: 1,
            issued_at_ms: now_ms(),
            issued_by: None,
        })?;
        let producer = producer(&self.kafka)?;
        send(&producer, &self.topics.campaigns, id.as_bytes(), &envelope, None)?;
        producer.flush(Duration::from_secs(30))?;
        Ok(())
    }

    /// Produces a profile (a first name, one device) for each of users `u0`… `u<count - 1>`.
    pub fn produce_profiles(&self, count: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        let registry = SchemaRegistry::builtin();
        let producer = producer(&self.kafka)?;
        let at = now_ms();
        for i in 0..count {
            let user = user(i);
            let update = ProfileUpdate {
                app_id: APP.into(),
                user_id: user.clone(),
                timestamp_ms: at,
                set: [("first_name".to_string(), PropertyValue::String(format!("User {i}")))]
                    .into(),
                unset: vec![],
                devices_added: vec![Device {
                    device_id: format!("d-{user}"),
                    platform: if i % 2 == 0 { Platform::Ios } else { Platform::Android },
                    token: format!("{i:064x}"),
                    app_version: None,
                    os_version: None,
                    make: None,
                    model: None,
                    sdk_version: None,
                }],
                tokens_removed: vec![],
            };
            send(
                &producer,
                &self.topics.profiles,
                user.as_bytes(),
                &registry.encode(&update)?,
                None,
            )?;
        }
        producer.flush(Duration::from_secs(300))?;
        eprintln!("  {count} profiles produced in {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Starts instance `id` with state directory `state` (a new name: an empty store) and
    /// `extra` arguments.
    pub fn start(&self, id: &str, state: &str, extra: &[&str]) -> anyhow::Result<Instance> {
        let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = self.dir.path().join(format!("engine-{id}-{state}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(std::env::current_exe()?)
            .args(["engine", "--topic-prefix", &self.prefix, "--app-id", &self.app_id])
            .args(["--instance-id", id, "--metrics-addr", &metrics.to_string()])
            .arg("--state-dir")
            .arg(self.dir.path().join(state))
            .args(&self.engine_args)
            .args(extra)
            .env("HERALD_BROKERS", &self.kafka.brokers)
            .env("RUST_LOG", "info,librdkafka=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("starting herald engine")?;
        Ok(Instance { pid: child.id(), child: Some(child), log, metrics })
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        delete_topics(&self.kafka, &self.prefix);
    }
}

/// Deletes the topics whose names start with `prefix`, saying so if it cannot.
pub(super) fn delete_topics(kafka: &KafkaConfig, prefix: &str) {
    let deleted = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| Ok(rt.block_on(delete_topics_with_prefix(kafka, &[prefix.into()]))?));
    if let Err(error) = deleted {
        eprintln!("could not delete the topics starting with {prefix}: {error:#}");
    }
}

/// User `i` of the generated audience.
pub(super) fn user(i: usize) -> String {
    format!("u{i}")
}

/// One engine process, killed (SIGKILL) when dropped.
pub(super) struct Instance {
    pub pid: u32,
    child: Option<Child>,
    log: PathBuf,
    metrics: SocketAddr,
}

impl Instance {
    /// Sum of the values of metric `name` (without the `herald_runtime_` prefix) over the
    /// series whose labels contain `label`; 0 while the endpoint is not up.
    pub fn metric(&self, name: &str, label: &str) -> f64 {
        let text = scrape(self.metrics).unwrap_or_default();
        let name = format!("herald_runtime_{name}");
        text.lines()
            .filter(|line| line.starts_with(&name) && line.contains(label))
            .filter(|line| line[name.len()..].starts_with(['{', ' ']))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The labels of metric `name`'s series, one string each.
    pub fn series(&self, name: &str) -> Vec<String> {
        let text = scrape(self.metrics).unwrap_or_default();
        let name = format!("herald_runtime_{name}{{");
        text.lines()
            .filter_map(|line| line.strip_prefix(&name)?.split_once('}').map(|(l, _)| l.into()))
            .collect()
    }

    /// The last log line containing `needle`, if any.
    pub fn last_log_line(&self, needle: &str) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().rfind(|line| line.contains(needle)).map(str::to_string)
    }

    /// Lines of the log containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().matches(needle).count()
    }

    /// Peak resident memory so far (VmHWM), in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid));
        let kb = status.ok().and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        });
        kb.unwrap_or(f64::NAN) / 1024.0
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let child = self.child.as_mut().context("instance stopped")?;
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "engine {} exited ({status}):\n{}",
                self.pid,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// SIGKILL: no commit, no checkpoint.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, and waits for a clean exit (last commit, checkpoints).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
            let status = child.wait()?;
            anyhow::ensure!(status.success(), "engine {} exited with {status}", self.pid);
        }
        Ok(())
    }
}

/// The engine instances of one run, read as one: each metric summed over them.
pub(super) struct Instances(Vec<Instance>);

impl Instances {
    /// Starts `count` instances of `deployment` (ids `a`, `b`, …, each with its own state
    /// directory), or the same ones again on their checkpoints.
    pub fn start(deployment: &Deployment, count: usize) -> anyhow::Result<Self> {
        (0..count)
            .map(|i| {
                let id = char::from(b'a' + u8::try_from(i % 26).unwrap_or(0)).to_string();
                deployment.start(&id, &format!("state-{id}"), &[])
            })
            .collect::<anyhow::Result<_>>()
            .map(Self)
    }

    /// How many instances run.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Each instance.
    pub fn each(&self) -> Vec<&Instance> {
        self.0.iter().collect()
    }

    /// Each instance, to wait on or to stop.
    pub fn each_mut(&mut self) -> Vec<&mut Instance> {
        self.0.iter_mut().collect()
    }

    /// [`Instance::metric`] summed over the instances.
    pub fn metric(&self, name: &str, label: &str) -> f64 {
        self.0.iter().map(|instance| instance.metric(name, label)).sum()
    }

    /// The labels of metric `name`'s series over the instances, each once.
    pub fn series(&self, name: &str) -> Vec<String> {
        let mut series: Vec<String> =
            self.0.iter().flat_map(|instance| instance.series(name)).collect();
        series.sort();
        series.dedup();
        series
    }

    /// Fails with an exited instance's log tail.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.0.iter_mut().try_for_each(Instance::check_alive)
    }

    /// Stops every instance cleanly ([`Instance::stop`]).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.0.iter_mut().try_for_each(Instance::stop)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The body of `GET /metrics` at `addr`.
fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

/// Polls `done` on `instance` every 200 ms until it holds, failing after `limit` or when the
/// instance exits.
pub(super) fn wait_for(
    what: &str,
    limit: Duration,
    instance: &mut Instance,
    mut done: impl FnMut(&Instance) -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done(instance) {
        instance.check_alive()?;
        if started.elapsed() > limit {
            bail!("{what}: not within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// CPU seconds spent by the broker, the engines and this benchmark process over a window, and
/// the machine's load average at its end.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuSplit {
    pub wall_s: f64,
    pub broker_s: f64,
    pub engines_s: f64,
    pub bench_s: f64,
    pub load1: f64,
}

impl CpuSplit {
    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        let r = |v: f64| (v * 10.0).round() / 10.0;
        serde_json::json!({
            "wall_s": r(self.wall_s), "broker_cpu_s": r(self.broker_s),
            "engines_cpu_s": r(self.engines_s), "bench_cpu_s": r(self.bench_s),
            "load1": self.load1,
        })
    }

    /// As a table row.
    pub fn row(&self, phase: &str) -> String {
        format!(
            "{phase:<34} {:>7.1} {:>10.1} {:>10.1} {:>10.1} {:>7.2}",
            self.wall_s, self.broker_s, self.engines_s, self.bench_s, self.load1
        )
    }

    /// The header of [`Self::row`].
    pub fn header() -> String {
        format!(
            "{:<34} {:>7} {:>10} {:>10} {:>10} {:>7}",
            "cpu over the phase", "wall s", "broker s", "engines s", "bench s", "load1"
        )
    }
}

/// A window over which CPU time is counted: opened with the engines running then (others
/// count from their start), closed with those still running (a killed one's time is lost).
pub(super) struct CpuWindow {
    started: Instant,
    broker: Option<(u32, f64)>,
    engines: Vec<(u32, f64)>,
    bench: f64,
}

impl CpuWindow {
    pub fn open(kafka: &KafkaConfig, engines: &[&Instance]) -> Self {
        let broker = broker_pid(kafka).map(|pid| (pid, cpu_ms(Some(pid)).unwrap_or_default()));
        Self {
            started: Instant::now(),
            broker,
            engines: engines.iter().map(|e| (e.pid, cpu_ms(Some(e.pid)).unwrap_or(0.0))).collect(),
            bench: cpu_ms(None).unwrap_or_default(),
        }
    }

    pub fn close(&self, engines: &[&Instance]) -> CpuSplit {
        let at_open = |pid: u32| self.engines.iter().find(|(p, _)| *p == pid).map_or(0.0, |e| e.1);
        let engines_ms: f64 = engines
            .iter()
            .map(|e| cpu_ms(Some(e.pid)).map_or(0.0, |now| now - at_open(e.pid)))
            .sum();
        let broker_ms = self.broker.map_or(f64::NAN, |(pid, before)| {
            cpu_ms(Some(pid)).map_or(f64::NAN, |now| now - before)
        });
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        CpuSplit {
            wall_s: self.started.elapsed().as_secs_f64(),
            broker_s: broker_ms / 1000.0,
            engines_s: engines_ms / 1000.0,
            bench_s: (cpu_ms(None).unwrap_or_default() - self.bench) / 1000.0,
            load1: load.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN),
        }
    }
}

/// The process id of the local broker: a `kafka.Kafka` JVM whose properties file names the
/// port of the first bootstrap server.
fn broker_pid(kafka: &KafkaConfig) -> Option<u32> {
    let port = kafka.brokers.split(',').next()?.rsplit(':').next()?.to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !args.iter().any(|a| a == "kafka.Kafka") {
            return None;
        }
        let properties = std::fs::read_to_string(args.iter().rfind(|a| !a.is_empty())?).ok()?;
        properties
            .lines()
            .any(|l| l.starts_with("listeners=") && l.contains(&format!(":{port}")))
            .then_some(pid)
    })
}
