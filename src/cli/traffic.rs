//! `herald traffic`: synthetic app events for the simulator's population (the demo): app opens,
//! product views, carts and purchases, with a progress line.
//!
//! Event times run `--backdate` behind the clock, so a campaign's inaction window ("did not buy
//! within 10 minutes") has already elapsed for the carts it sees and the demo does not wait
//! ten minutes; purchases come 1 to 5 minutes after their cart, inside the window.

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use herald_engine::{
    campaign::parse_duration,
    kafka::{send_waiting, KafkaConfig},
    model::{topics::TopicNames, AppEvent, Properties, PropertyValue, SchemaRegistry},
    sim::population::member,
};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[derive(Debug, Args)]
pub struct TrafficArgs {
    /// Users of the population (as given to `herald sim --population`).
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// App of the events.
    #[arg(long, default_value = "shop")]
    app: String,
    /// Prefix of the topic names.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    /// Events per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// How long to run, seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// How far event times run behind the clock.
    #[arg(long, default_value = "11m")]
    backdate: String,
}

const ITEMS: &[&str] = &["Green tea", "Espresso cups", "Teapot", "Matcha whisk", "Honey"];

pub fn run(kafka: &KafkaConfig, args: TrafficArgs) -> anyhow::Result<ExitCode> {
    let backdate = parse_duration(&args.backdate).map_err(anyhow::Error::msg)?;
    let topic = TopicNames::with_prefix(&args.topic_prefix).events;
    let producer: ThreadedProducer<DefaultProducerContext> =
        kafka.client_config().set("linger.ms", "10").create().context("creating a producer")?;
    let registry = SchemaRegistry::builtin();
    let started = Instant::now();
    // Event ids are unique across invocations: the engine derives message ids from them.
    let session = fastrand::u64(..);
    let total = args.rate * args.seconds;
    let (mut carts, mut purchases) = (0u64, 0u64);
    for n in 0..total {
        let due = started + Duration::from_secs_f64(n as f64 / args.rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (user, _) = member(fastrand::usize(..args.users.max(1)));
        let at = chrono::Utc::now().timestamp_millis() - backdate;
        let item = ITEMS[fastrand::usize(..ITEMS.len())];
        let mut events = Vec::new();
        match fastrand::u8(..100) {
            0..40 => events.push(("App Opened", at, Properties::new())),
            40..65 => events.push(("Viewed Product", at, [prop("item", item)].into())),
            _ => {
                carts += 1;
                let value = PropertyValue::Double(fastrand::u32(5..200) as f64);
                let cart: Properties = [prop("item", item), ("value".to_string(), value)].into();
                events.push(("Added To Cart", at, cart));
                if fastrand::u8(..100) < 30 {
                    purchases += 1;
                    let later = at + fastrand::i64(60_000..300_000);
                    events.push(("Charged", later, [prop("item", item)].into()));
                }
            }
        }
        for (name, timestamp_ms, properties) in events {
            let event = AppEvent {
                event_id: format!("traffic-{session:016x}-{n}-{name}"),
                app_id: args.app.clone(),
                user_id: user.clone(),
                name: name.to_string(),
                timestamp_ms,
                properties,
                sdk_version: Some("herald-traffic".into()),
            };
            let bytes = registry.encode(&event)?;
            send_waiting(&producer, BaseRecord::to(&topic).key(&user).payload(&bytes))?;
        }
        if n % args.rate == 0 || n + 1 == total {
            print!(
                "\r  traffic: {:>7}/{total} events, {carts} carts, {purchases} purchases, {:>3}s",
                n + 1,
                started.elapsed().as_secs()
            );
            std::io::stdout().flush()?;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    println!();
    Ok(ExitCode::SUCCESS)
}

fn prop(name: &str, value: &str) -> (String, PropertyValue) {
    (name.to_string(), PropertyValue::String(value.to_string()))
}
