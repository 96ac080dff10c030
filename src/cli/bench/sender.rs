//! `herald bench sender`: the sender's delivery path (an app's HTTP/2 connection pool, ES256
//! provider tokens, APNs requests as the sender builds them) against the simulator over TLS +
//! HTTP/2, then `h2load` driving the same endpoint with the same payload, connections and
//! streams per connection, in one run. Kafka is not involved: this measures what the sender
//! adds over a bare HTTP/2 load generator. Prints a table and one JSON line with `ratio`
//! (sender requests/s over h2load's).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::Args;
use herald_engine::{
    model::{Platform, SendCommand},
    sender::{apns::ProviderToken, app::AppSender, config::SenderConfig, outcome::Attempt},
};

/// The APNs payload of every request (the same bytes for both clients).
const PAYLOAD: &str = r#"{"aps":{"alert":{"title":"Benchmark","body":"The same payload for the sender and for h2load"}}}"#;
const KEY_ID: &str = "KEY1234567";
const TEAM_ID: &str = "TEAM123456";
const TOPIC: &str = "com.example.bench";

#[derive(Debug, Args)]
pub struct SenderArgs {
    /// Requests per client.
    #[arg(long, default_value_t = 100_000)]
    requests: usize,
    /// HTTP/2 connections (the sender's `connections`, h2load's `-c`).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Concurrent streams per connection (h2load's `-m`; the sender keeps
    /// connections × streams requests in flight).
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// The h2load executable (Debian package nghttp2-client, installed by `make bootstrap`).
    #[arg(long, default_value = "h2load")]
    h2load: String,
    /// Working directory (simulator credentials, logs).
    #[arg(long, default_value = ".local/bench-sender")]
    dir: PathBuf,
}

/// One client's figures.
struct Figures {
    rps: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    mean_ms: f64,
    cpu_ms_per_1000: f64,
    sim_cpu_ms_per_1000: f64,
    succeeded: usize,
}

pub fn run(args: SenderArgs) -> anyhow::Result<std::process::ExitCode> {
    if Command::new(&args.h2load).arg("--version").output().is_err() {
        bail!("{} not found: install nghttp2-client (make bootstrap)", args.h2load);
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let origin = format!("https://127.0.0.1:{port}");
    let sim = Sim::start(&args.dir, port)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let ca = args.dir.join("sim/sim-ca.pem");
    let ready = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        runtime.block_on(herald_engine::sim::fetch_json(&origin, &ca, "/sim/stats")).is_ok()
    });
    if !ready {
        bail!("the simulator did not start; see {}", args.dir.join("sim.log").display());
    }
    let in_flight = args.connections * args.streams;
    let yaml = format!(
        "apps:\n  bench:\n    apns:\n      topic: {TOPIC}\n      key_file: {key}\n      key_id: {KEY_ID}\n      team_id: {TEAM_ID}\n      endpoint: {origin}\n      connections: {}\n    ca_file: {}\n    max_in_flight: {in_flight}\n",
        args.connections,
        ca.display(),
        key = args.dir.join("sim/apns-key.p8").display(),
    );
    let config = SenderConfig::parse(&yaml, "bench")?;
    let app = AppSender::build("bench", &config.apps["bench"], config.request_timeout)?;

    println!(
        "sender bench: {} requests per client, {} connections x {} streams, simulator at {origin}",
        args.requests, args.connections, args.streams
    );
    let sender = measure_sender(&runtime, app, &args, &sim)?;
    let h2load = measure_h2load(&args, &origin, &sim)?;
    drop(sim);

    let ratio = sender.rps / h2load.rps;
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    println!();
    println!("| client | requests/s | p50 ms | p99 ms | mean ms | CPU ms / 1000 | simulator CPU ms / 1000 |");
    println!("|---|---|---|---|---|---|---|");
    for (name, f) in [("herald sender", &sender), ("h2load", &h2load)] {
        println!(
            "| {name} | {:.0} | {} | {} | {:.2} | {:.1} | {:.1} |",
            f.rps,
            fmt(f.p50_ms),
            fmt(f.p99_ms),
            f.mean_ms,
            f.cpu_ms_per_1000,
            f.sim_cpu_ms_per_1000
        );
    }
    println!("ratio (sender / h2load): {ratio:.2} (target >= 0.5)");
    let json = serde_json::json!({
        "bench": "sender",
        "requests": args.requests,
        "connections": args.connections,
        "streams": args.streams,
        "sender_rps": sender.rps,
        "h2load_rps": h2load.rps,
        "ratio": ratio,
        "sender_p50_ms": sender.p50_ms,
        "sender_p99_ms": sender.p99_ms,
        "sender_mean_ms": sender.mean_ms,
        "h2load_mean_ms": h2load.mean_ms,
        "sender_cpu_ms_per_1000": sender.cpu_ms_per_1000,
        "h2load_cpu_ms_per_1000": h2load.cpu_ms_per_1000,
        "sim_cpu_ms_per_1000_sender": sender.sim_cpu_ms_per_1000,
        "sim_cpu_ms_per_1000_h2load": h2load.sim_cpu_ms_per_1000,
        "sender_succeeded": sender.succeeded,
        "h2load_succeeded": h2load.succeeded,
    });
    println!("{json}");
    Ok(std::process::ExitCode::SUCCESS)
}

/// The sender's attempts, `connections × streams` in flight, each to its own device token.
fn measure_sender(
    runtime: &tokio::runtime::Runtime,
    app: AppSender,
    args: &SenderArgs,
    sim: &Sim,
) -> anyhow::Result<Figures> {
    let app = Arc::new(app);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(args.requests)));
    let (cpu, sim_cpu) = (cpu_ms(None)?, cpu_ms(Some(sim.pid()))?);
    let started = Instant::now();
    let succeeded = runtime.block_on(async {
        let permits = Arc::new(tokio::sync::Semaphore::new(args.connections * args.streams));
        let mut tasks = Vec::with_capacity(args.requests);
        for i in 0..args.requests {
            let permit = Arc::clone(&permits).acquire_owned().await.expect("open semaphore");
            let (app, latencies) = (Arc::clone(&app), Arc::clone(&latencies));
            tasks.push(tokio::spawn(async move {
                let command = command(i);
                let sent = Instant::now();
                let attempt = app.attempt(&command).await;
                latencies.lock().expect("latencies").push(sent.elapsed());
                drop(permit);
                matches!(attempt, Attempt::Accepted { .. })
            }));
        }
        let mut succeeded = 0;
        for task in tasks {
            succeeded += usize::from(task.await.unwrap_or(false));
        }
        succeeded
    });
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu, sim_cpu) = (cpu_ms(None)? - cpu, cpu_ms(Some(sim.pid()))? - sim_cpu);
    let mut latencies = std::mem::take(&mut *latencies.lock().expect("latencies"));
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    let mean = latencies.iter().map(Duration::as_secs_f64).sum::<f64>() / latencies.len() as f64;
    Ok(Figures {
        rps: args.requests as f64 / elapsed,
        p50_ms: Some(at(0.5)),
        p99_ms: Some(at(0.99)),
        mean_ms: mean * 1e3,
        cpu_ms_per_1000: cpu / args.requests as f64 * 1_000.0,
        sim_cpu_ms_per_1000: sim_cpu / args.requests as f64 * 1_000.0,
        succeeded,
    })
}

/// An iOS command to device `bench-<i>` with the benchmark payload.
fn command(i: usize) -> SendCommand {
    SendCommand {
        message_id: format!("bench-{i}"),
        campaign_id: "bench".into(),
        variant_id: "A".into(),
        run_id: "bench".into(),
        app_id: "bench".into(),
        user_id: format!("u{i}"),
        device_id: "d".into(),
        platform: Platform::Ios,
        token: format!("bench-{i}"),
        payload: PAYLOAD.into(),
        headers: [("apns-push-type", "alert"), ("apns-priority", "10")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        created_at_ms: 0,
        expires_at_ms: None,
        confirm: false,
        place_key: None,
    }
}

/// h2load on the same endpoint, payload, headers, connections and streams.
fn measure_h2load(args: &SenderArgs, origin: &str, sim: &Sim) -> anyhow::Result<Figures> {
    let key = std::fs::read(args.dir.join("sim/apns-key.p8"))?;
    let token = ProviderToken::new(&key, KEY_ID, TEAM_ID, Duration::from_secs(3_000))
        .map_err(anyhow::Error::msg)?;
    let (bearer, _) = token.bearer().map_err(anyhow::Error::msg)?;
    let payload = args.dir.join("payload.json");
    std::fs::write(&payload, PAYLOAD)?;
    let sim_cpu = cpu_ms(Some(sim.pid()))?;
    let output = Command::new(&args.h2load)
        .args(["-n", &args.requests.to_string(), "-c", &args.connections.to_string()])
        .args(["-m", &args.streams.to_string(), "-t", "1", "-d"])
        .arg(&payload)
        .args(["-H", &format!("authorization: bearer {bearer}")])
        .args(["-H", &format!("apns-topic: {TOPIC}"), "-H", "apns-push-type: alert"])
        .args(["-H", "apns-priority: 10", "-H", "content-type: application/json"])
        .arg(format!("{origin}/3/device/bench-h2load"))
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", args.h2load))?;
    let sim_cpu = cpu_ms(Some(sim.pid()))? - sim_cpu;
    let cpu = children_cpu_ms()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("h2load failed ({}):\n{text}", output.status);
    }
    // "finished in 1.23s, 81234.56 req/s, 12.3MB/s"
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|f| f.trim_end_matches(" req/s").parse::<f64>().ok())
        .with_context(|| format!("no requests/s in h2load's output:\n{text}"))?;
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, …"
    let succeeded = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find_map(|f| f.strip_suffix(" succeeded")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // "time for request:   1.23ms  45.6ms  7.89ms  …" (min, max, mean, sd)
    let mean_ms = text
        .lines()
        .find_map(|l| l.strip_prefix("time for request:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .map_or(0.0, milliseconds);
    Ok(Figures {
        rps,
        p50_ms: None,
        p99_ms: None,
        mean_ms,
        cpu_ms_per_1000: cpu / args.requests as f64 * 1_000.0,
        sim_cpu_ms_per_1000: sim_cpu / args.requests as f64 * 1_000.0,
        succeeded,
    })
}

/// h2load's durations (`812us`, `1.23ms`, `2.5s`) in milliseconds.
fn milliseconds(text: &str) -> f64 {
    let number = |suffix: &str| text.strip_suffix(suffix).and_then(|n| n.parse::<f64>().ok());
    number("us")
        .map(|v| v / 1e3)
        .or_else(|| number("ms"))
        .or_else(|| number("s").map(|v| v * 1e3))
        .unwrap_or(0.0)
}

/// CPU time (user + system) of this process or of `pid`, in ms, from `/proc`.
pub(super) fn cpu_ms(pid: Option<u32>) -> anyhow::Result<f64> {
    let fields = stat(pid)?;
    Ok(ticks_ms(&fields, 13) + ticks_ms(&fields, 14))
}

/// CPU time of this process's waited-for children (h2load), in ms.
fn children_cpu_ms() -> anyhow::Result<f64> {
    let fields = stat(None)?;
    Ok(ticks_ms(&fields, 15) + ticks_ms(&fields, 16))
}

/// The fields of `/proc/<pid>/stat` after the command name.
fn stat(pid: Option<u32>) -> anyhow::Result<Vec<String>> {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let after_name = text.rsplit_once(") ").map_or(text.as_str(), |(_, rest)| rest);
    // Fields are numbered from 1 with pid and comm first: field n is index n - 3 here.
    Ok(std::iter::repeat_n(String::new(), 2)
        .chain(after_name.split_whitespace().map(str::to_string))
        .collect())
}

/// Field `index` (0-based, pid first) of a stat line, in clock ticks (100 per second), as ms.
fn ticks_ms(fields: &[String], index: usize) -> f64 {
    fields.get(index).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) * 10.0
}

/// The simulator, a child process, killed when dropped.
struct Sim(Child);

impl Sim {
    fn start(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let log = std::fs::File::create(dir.join("sim.log"))?;
        let child = Command::new(std::env::current_exe()?)
            .args(["sim", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--dir")
            .arg(dir.join("sim"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the simulator")?;
        Ok(Self(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
