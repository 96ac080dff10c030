//! The simulated device population: users with one device each, spread over timezones and
//! languages, whose profiles the simulator publishes, and who view and click the notifications
//! they receive at configured rates per variant, producing `Notification Viewed` and
//! `Notification Clicked` events like an SDK would.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::{
    kafka::{send_waiting, KafkaConfig},
    model::{AppEvent, Device, Platform, ProfileUpdate, PropertyValue, Record, SchemaRegistry},
};

const TIMEZONES: &[&str] = &[
    "America/Los_Angeles",
    "America/New_York",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Paris",
    "Africa/Lagos",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
];
const LANGUAGES: &[&str] = &["en", "fr", "de", "es", "pt", "ja"];

/// Who the population is and how it reacts.
#[derive(Debug, Clone)]
pub struct PopulationOptions {
    /// Users (one device each; even ones on iOS, odd ones on Android).
    pub users: usize,
    /// App they use.
    pub app_id: String,
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Where their profiles go.
    pub profiles_topic: String,
    /// Where their events go.
    pub events_topic: String,
    /// Share of delivered notifications viewed.
    pub view_rate: f64,
    /// Share of viewed notifications clicked, by variant id.
    pub click_rates: BTreeMap<String, f64>,
    /// Click rate of variants not listed.
    pub default_click_rate: f64,
}

/// The `i`-th user: id and device.
pub fn member(i: usize) -> (String, Device) {
    let platform = if i % 2 == 0 { Platform::Ios } else { Platform::Android };
    let device = Device {
        device_id: format!("device-{i}"),
        platform,
        token: format!("{:016x}{i:08x}", (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        app_version: Some("5.2.0".into()),
        os_version: Some(if platform == Platform::Ios { "18.1" } else { "15" }.into()),
        make: Some(if platform == Platform::Ios { "Apple" } else { "Google" }.into()),
        model: None,
        sdk_version: Some("herald-sim".into()),
    };
    (format!("user-{i}"), device)
}

/// The population and its producer.
pub struct Population {
    options: PopulationOptions,
    producer: ThreadedProducer<DefaultProducerContext>,
    /// User of each token.
    users: std::collections::HashMap<String, String>,
}

impl Population {
    /// Creates the population (its producer connects lazily).
    pub fn new(options: PopulationOptions) -> Result<Self, String> {
        let producer: ThreadedProducer<DefaultProducerContext> = options
            .kafka
            .client_config()
            .set("linger.ms", "20")
            .create()
            .map_err(|e| format!("creating the population's producer: {e}"))?;
        let users = (0..options.users).map(member).map(|(user, d)| (d.token, user)).collect();
        Ok(Self { options, producer, users })
    }

    /// Publishes every user's profile and waits until the broker has them.
    pub fn publish_profiles(&self) -> Result<(), String> {
        let now = chrono::Utc::now().timestamp_millis();
        for i in 0..self.options.users {
            let (user, device) = member(i);
            let text = |v: &str| PropertyValue::String(v.to_string());
            let update = ProfileUpdate {
                app_id: self.options.app_id.clone(),
                user_id: user.clone(),
                timestamp_ms: now,
                set: [
                    ("first_name".to_string(), text(&format!("User{i}"))),
                    ("timezone".to_string(), text(TIMEZONES[i % TIMEZONES.len()])),
                    ("language".to_string(), text(LANGUAGES[i % LANGUAGES.len()])),
                ]
                .into(),
                unset: Vec::new(),
                devices_added: vec![device],
                tokens_removed: Vec::new(),
            };
            self.send(&self.options.profiles_topic, &user, &update)?;
        }
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(|e| format!("publishing the population's profiles: {e}"))
    }

    /// A notification reached `token`: its user may view it and then click it, a moment later.
    pub fn delivered(self: &Arc<Self>, token: &str, campaign: &str, variant: &str, message: &str) {
        let Some(user) = self.users.get(token).cloned() else { return };
        if fastrand::f64() >= self.options.view_rate {
            return;
        }
        let click_rate = self
            .options
            .click_rates
            .get(variant)
            .copied()
            .unwrap_or(self.options.default_click_rate);
        let clicked = fastrand::f64() < click_rate;
        let properties: crate::model::Properties = [
            ("campaign_id".to_string(), PropertyValue::String(campaign.to_string())),
            ("variant_id".to_string(), PropertyValue::String(variant.to_string())),
            ("message_id".to_string(), PropertyValue::String(message.to_string())),
        ]
        .into();
        let population = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(fastrand::u64(200..2_000))).await;
            let mut names = vec!["Notification Viewed"];
            if clicked {
                names.push("Notification Clicked");
            }
            for name in names {
                let event = AppEvent {
                    event_id: format!("sim-{:016x}", fastrand::u64(..)),
                    app_id: population.options.app_id.clone(),
                    user_id: user.clone(),
                    name: name.to_string(),
                    timestamp_ms: chrono::Utc::now().timestamp_millis(),
                    properties: properties.clone(),
                    sdk_version: Some("herald-sim".into()),
                };
                if let Err(error) = population.send(&population.options.events_topic, &user, &event)
                {
                    tracing::warn!(%error, "producing a simulated engagement");
                }
            }
        });
    }

    fn send<R: Record>(&self, topic: &str, key: &str, record: &R) -> Result<(), String> {
        let bytes = SchemaRegistry::builtin().encode(record).map_err(|e| e.to_string())?;
        send_waiting(&self.producer, BaseRecord::to(topic).key(key).payload(&bytes))
            .map_err(|e| format!("producing to {topic}: {e}"))
    }
}
