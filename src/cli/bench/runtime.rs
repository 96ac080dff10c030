//! `herald bench runtime`: throughput of the streaming runtime against a raw passthrough on the
//! same broker, and the event → output latency of the stateful topology at half its maximum.
//! Prints a table and one JSON line.

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use herald_engine::{
    kafka::KafkaConfig,
    runtime::{
        example::counting_topology, ProcessError, Processor, ProcessorContext, SourceRecord,
        StreamTopology,
    },
};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::Producer,
    Message,
};
use serde_json::json;

use super::support::{
    create_topics, measure_rate, now_ms, output_consumer, producer, send, with_runtime,
};

#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// Input records per throughput run.
    #[arg(long, default_value_t = 300_000)]
    records: usize,
    /// Partitions of the input and output topics.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Distinct keys in the input.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Seconds of paced input for the latency run.
    #[arg(long, default_value_t = 15)]
    latency_seconds: u64,
}

pub fn run(kafka: &KafkaConfig, args: RuntimeArgs) -> anyhow::Result<ExitCode> {
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let topic = |name: &str| format!("bench-{run_id}-{name}");
    let topics = ["in", "t-out-raw", "t-out-eos", "t-out-count", "lat-in", "lat-out", "dlq"];
    create_topics(kafka, &topics.map(topic), args.partitions, |name| name.contains("-out-"))?;
    let state = tempfile::tempdir()?;

    eprintln!("producing {} input records to {}", args.records, topic("in"));
    let producer = producer(kafka)?;
    let payload = [b'x'; 32];
    for i in 0..args.records {
        send(&producer, &topic("in"), format!("k{}", i % args.keys).as_bytes(), &payload, None)?;
    }
    producer.flush(Duration::from_secs(60))?;

    eprintln!("(a) raw passthrough");
    let raw = {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (kafka, stop, input, output) =
                (kafka.clone(), Arc::clone(&stop), topic("in"), topic("t-out-raw"));
            thread::spawn(move || raw_passthrough(&kafka, &input, &output, &stop))
        };
        let rate = measure_rate(kafka, &topic("t-out-raw"), args.records)?;
        stop.store(true, Ordering::SeqCst);
        worker.join().expect("raw passthrough thread")?;
        rate
    };

    eprintln!("(b) exactly-once passthrough");
    let passthrough = StreamTopology::builder(topic("eos"))
        .dead_letter_topic(topic("dlq"))
        .sub_topology(
            "pass",
            {
                let output = topic("t-out-eos");
                move |_| Passthrough { output: output.clone() }
            },
            |s| s.source(topic("in")).sink(topic("t-out-eos")),
        )
        .build()?;
    let eos = with_runtime(kafka, passthrough, state.path().join("b"), || {
        measure_rate(kafka, &topic("t-out-eos"), args.records)
    })?;

    eprintln!("(c) stateful counting, exactly-once");
    let counting = counting_topology(&topic("count"), &topic("in"), &topic("t-out-count"))?
        .with_dead_letter_topic(topic("dlq"));
    let stateful = with_runtime(kafka, counting, state.path().join("c"), || {
        measure_rate(kafka, &topic("t-out-count"), args.records)
    })?;

    let latency_rate = stateful / 2.0;
    eprintln!("(c) latency at {latency_rate:.0} records/s for {} s", args.latency_seconds);
    let counting = counting_topology(&topic("lat"), &topic("lat-in"), &topic("lat-out"))?
        .with_dead_letter_topic(topic("dlq"));
    let latencies = with_runtime(kafka, counting, state.path().join("l"), || {
        measure_latency(kafka, &topic("lat-in"), &topic("lat-out"), latency_rate, &args)
    })?;
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));

    let ratio = stateful / raw;
    println!("{:<38} {:>12}", "run", "records/s");
    println!("{:<38} {:>12.0}", "(a) raw passthrough, no transactions", raw);
    println!("{:<38} {:>12.0}", "(b) passthrough, exactly-once", eos);
    println!("{:<38} {:>12.0}", "(c) stateful count, exactly-once", stateful);
    println!("{:<38} {:>12.2}   (target >= 0.5)", "ratio (c)/(a)", ratio);
    println!(
        "{:<38} {:>12}",
        format!("(c) latency at {latency_rate:.0}/s"),
        format!("p50 {p50} ms, p99 {p99} ms")
    );
    println!(
        "{}",
        json!({
            "bench": "runtime",
            "records": args.records,
            "partitions": args.partitions,
            "raw_passthrough_rps": raw.round(),
            "eos_passthrough_rps": eos.round(),
            "stateful_eos_rps": stateful.round(),
            "ratio": (ratio * 100.0).round() / 100.0,
            "latency_rate_rps": latency_rate.round(),
            "latency_samples": latencies.len(),
            "latency_p50_ms": p50,
            "latency_p99_ms": p99,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Forwards every record unchanged.
struct Passthrough {
    output: String,
}

impl Processor for Passthrough {
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError> {
        ctx.send(&self.output, record.key.unwrap_or_default(), record.value.unwrap_or_default())?;
        Ok(())
    }
}

/// Consume → produce each record unchanged, no state, no transactions.
pub(super) fn raw_passthrough(
    kafka: &KafkaConfig,
    input: &str,
    output: &str,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("{output}-group"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[input])?;
    let producer = producer(kafka)?;
    while !stop.load(Ordering::SeqCst) {
        if let Some(message) = consumer.poll(Duration::from_millis(50)) {
            let message = message?;
            send(
                &producer,
                output,
                message.key().unwrap_or_default(),
                message.payload().unwrap_or_default(),
                None,
            )?;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// Produces at `rate` for the configured time and returns input timestamp → committed output
/// latencies in milliseconds.
fn measure_latency(
    kafka: &KafkaConfig,
    input: &str,
    output: &str,
    rate: f64,
    args: &RuntimeArgs,
) -> anyhow::Result<Vec<i64>> {
    let total = (rate * args.latency_seconds as f64) as usize;
    let reader = {
        let (kafka, output) = (kafka.clone(), output.to_string());
        thread::spawn(move || -> anyhow::Result<Vec<i64>> {
            let consumer = output_consumer(&kafka, &output)?;
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut latencies = Vec::with_capacity(total);
            while latencies.len() < total && Instant::now() < deadline {
                if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                    let message = message?;
                    let sent = message.timestamp().to_millis().unwrap_or_default();
                    latencies.push(now_ms() - sent);
                }
            }
            Ok(latencies)
        })
    };
    // Let the runtime join its group before the clock starts.
    thread::sleep(Duration::from_secs(3));
    let producer = producer(kafka)?;
    let started = Instant::now();
    let payload = [b'x'; 32];
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        send(&producer, input, format!("k{}", i % args.keys).as_bytes(), &payload, Some(now_ms()))?;
    }
    producer.flush(Duration::from_secs(30))?;
    let mut latencies = reader.join().expect("latency reader")?;
    latencies.sort_unstable();
    Ok(latencies)
}

pub(super) fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
