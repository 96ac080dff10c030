//! The lifecycle events of every campaign (`herald.campaign-events`: runs, limits, the A/B
//! winner with its p-value, operator commands), followed from the topic's beginning by a
//! background consumer that keeps the latest [`KEPT`] per campaign for the dashboard.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message, Offset, TopicPartitionList,
};

use crate::{
    kafka::KafkaConfig,
    model::{CampaignLifecycleEvent, SchemaRegistry},
};

/// Events kept per campaign (the oldest go first).
pub const KEPT: usize = 200;

/// The latest events of each campaign, kept up to date while it lives.
#[derive(Default)]
pub struct CampaignEvents {
    by_campaign: RwLock<HashMap<String, VecDeque<CampaignLifecycleEvent>>>,
}

impl CampaignEvents {
    /// Starts following `topic`; the consumer stops once the returned value is dropped.
    pub fn follow(kafka: KafkaConfig, topic: String) -> Arc<Self> {
        let events = Arc::new(Self::default());
        let weak = Arc::downgrade(&events);
        let spawned = std::thread::Builder::new()
            .name("api-campaign-events".into())
            .spawn(move || follow(&kafka, &topic, &weak));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting the campaign events consumer");
        }
        events
    }

    /// The campaign's kept events, newest first.
    pub fn of(&self, campaign: &str) -> Vec<CampaignLifecycleEvent> {
        let by_campaign = self.by_campaign.read().expect("campaign events lock");
        by_campaign
            .get(campaign)
            .map(|kept| kept.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    fn keep(&self, event: CampaignLifecycleEvent) {
        let mut by_campaign = self.by_campaign.write().expect("campaign events lock");
        let kept = by_campaign.entry(event.campaign_id.clone()).or_default();
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(event);
    }
}

/// A consumer assigned every partition of `topic` from its beginning.
fn subscribe(kafka: &KafkaConfig, topic: &str) -> Result<BaseConsumer, String> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "herald-api-dashboard")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| format!("creating the consumer: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("reading metadata: {e}"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .map_err(|e| format!("assigning: {e}"))?;
    }
    if assignment.count() == 0 {
        return Err("topic not found".into());
    }
    consumer.assign(&assignment).map_err(|e| format!("assigning: {e}"))?;
    Ok(consumer)
}

/// The consumer's loop, until the events are dropped; an unusable topic is retried every 5 s.
fn follow(kafka: &KafkaConfig, topic: &str, events: &Weak<CampaignEvents>) {
    let registry = SchemaRegistry::builtin();
    let consumer = loop {
        match subscribe(kafka, topic) {
            Ok(consumer) => break consumer,
            Err(e) => tracing::warn!(topic, error = %e, "following campaign events; retrying"),
        }
        std::thread::sleep(Duration::from_secs(5));
        if events.strong_count() == 0 {
            return;
        }
    };
    while let Some(events) = events.upgrade() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => match message.payload().map(|bytes| registry.decode(bytes)) {
                Some(Ok(event)) => events.keep(event),
                Some(Err(e)) => {
                    tracing::warn!(topic, offset = message.offset(), error = %e, "undecodable campaign event skipped")
                }
                None => {}
            },
            Some(Err(e)) => tracing::warn!(topic, error = %e, "reading campaign events"),
            None => {}
        }
    }
}
