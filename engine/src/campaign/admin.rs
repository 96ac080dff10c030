//! What `herald campaign` and the admin API do to campaigns, in one place: validate a definition
//! into a `Define` envelope, derive an operator command from a campaign's current envelope, tell
//! a campaign's status, publish an envelope, tell which campaigns keep a segment in use.

use std::time::Duration;

use rdkafka::{
    error::KafkaError,
    producer::{FutureProducer, FutureRecord},
};
use thiserror::Error;

use crate::{
    campaign::{parse_campaign, Campaign, CampaignStatus, FieldError, ValidationErrors},
    model::{CampaignCommand, CampaignEnvelope, CodecError, SchemaRegistry},
};

/// Why an operator command cannot be issued.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    /// A stopped campaign takes no command until its definition is applied again.
    #[error("campaign {0} is stopped; apply its definition again to restart it")]
    Stopped(String),
    /// `Define` is not an operator command.
    #[error("define is not an operator command; publish a definition instead")]
    NotOperator,
}

/// Why an envelope could not be published.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The envelope did not encode.
    #[error("encoding the envelope of {campaign}: {source}")]
    Encode {
        /// Campaign concerned.
        campaign: String,
        /// Codec failure.
        source: CodecError,
    },
    /// The broker did not take it.
    #[error("publishing {campaign} to {topic}: {source}")]
    Kafka {
        /// Campaign concerned.
        campaign: String,
        /// Topic written.
        topic: String,
        /// Producer failure.
        source: KafkaError,
    },
}

/// Validates the definition `text` (YAML or JSON; `source` names it in errors) into a `Define`
/// envelope issued by `issued_by` at `now_ms` (its revision).
pub fn define(
    text: &str,
    source: &str,
    issued_by: Option<String>,
    now_ms: i64,
) -> Result<(Campaign, CampaignEnvelope), ValidationErrors> {
    let campaign = parse_campaign(text, source)?;
    let document: serde_json::Value =
        serde_norway::from_str(text).map_err(|e| ValidationErrors {
            source: source.to_string(),
            errors: vec![FieldError { path: "(document)".into(), reason: e.to_string() }],
        })?;
    let envelope = CampaignEnvelope {
        campaign_id: campaign.id.clone(),
        app_id: campaign.app.clone(),
        command: CampaignCommand::Define,
        definition: Some(document.to_string()),
        revision: now_ms,
        issued_at_ms: now_ms,
        issued_by,
    };
    Ok((campaign, envelope))
}

/// The envelope that issues operator `command` on a campaign whose latest envelope is
/// `current`: its definition under the command, so the compacted topic keeps a complete one.
pub fn command(
    current: CampaignEnvelope,
    command: CampaignCommand,
    issued_by: Option<String>,
    now_ms: i64,
) -> Result<CampaignEnvelope, CommandError> {
    if command == CampaignCommand::Define {
        return Err(CommandError::NotOperator);
    }
    if current.command == CampaignCommand::Stop {
        return Err(CommandError::Stopped(current.campaign_id));
    }
    Ok(CampaignEnvelope { command, revision: now_ms, issued_at_ms: now_ms, issued_by, ..current })
}

/// The campaign an envelope defines, with the status its command gives it.
pub fn compile(envelope: &CampaignEnvelope) -> Result<Campaign, String> {
    let definition = envelope
        .definition
        .as_deref()
        .ok_or_else(|| format!("{:?} envelope without a definition", envelope.command))?;
    let mut campaign =
        parse_campaign(definition, &envelope.campaign_id).map_err(|e| e.to_string())?;
    campaign.status = match envelope.command {
        CampaignCommand::Define | CampaignCommand::Resume => campaign.status,
        CampaignCommand::Pause => CampaignStatus::Paused,
        CampaignCommand::Stop => CampaignStatus::Stopped,
    };
    Ok(campaign)
}

/// Why `next` may not replace a campaign whose latest envelope is `current`: a change of
/// `options.shards` while the campaign is not stopped (its users' places, waiting candidates
/// and run buffers live in the shards it has now; a new count would route the same users to
/// other shards). `None` when the change is allowed.
pub fn shards_change(current: &CampaignEnvelope, next: &Campaign) -> Option<FieldError> {
    if current.command == CampaignCommand::Stop {
        return None;
    }
    let live = compile(current).ok()?;
    let (now, asked) = (live.options.shards.max(1), next.options.shards.max(1));
    (now != asked).then(|| FieldError {
        path: "options.shards".into(),
        reason: format!(
            "campaign {} is live with {now} shard(s): a change to {asked} would move users away \
             from the shards that hold their places, waiting candidates and run buffers; stop \
             it first (the new count applies when it is applied again) or use a new campaign id",
            next.id
        ),
    })
}

/// Which campaigns keep a saved segment in use, from their latest envelopes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SegmentUsers {
    /// Campaigns not stopped whose `who` references the segment, by id.
    pub campaigns: Vec<String>,
    /// Campaigns whose definition does not compile, with the reason (not counted as users).
    pub unreadable: Vec<(String, String)>,
}

/// The campaigns among `envelopes` that keep segment `id` in use: deleting it is refused while
/// there are any.
pub fn segment_users<'a>(
    id: &str,
    envelopes: impl IntoIterator<Item = &'a CampaignEnvelope>,
) -> SegmentUsers {
    let mut users = SegmentUsers::default();
    for envelope in envelopes {
        match compile(envelope) {
            Ok(campaign)
                if campaign.status != CampaignStatus::Stopped
                    && campaign.who.segments().contains(&id) =>
            {
                users.campaigns.push(envelope.campaign_id.clone());
            }
            Ok(_) => {}
            Err(reason) => users.unreadable.push((envelope.campaign_id.clone(), reason)),
        }
    }
    users
}

/// Publishes `envelope` to `topic`, keyed by its campaign, and waits for the broker's ack;
/// returns the partition and offset written.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    envelope: &CampaignEnvelope,
) -> Result<(i32, i64), PublishError> {
    let id = &envelope.campaign_id;
    let bytes = SchemaRegistry::builtin()
        .encode(envelope)
        .map_err(|source| PublishError::Encode { campaign: id.clone(), source })?;
    let delivery = producer
        .send(FutureRecord::to(topic).key(id).payload(&bytes), Duration::from_secs(30))
        .await
        .map_err(|(source, _)| PublishError::Kafka {
            campaign: id.clone(),
            topic: topic.to_string(),
            source,
        })?;
    Ok((delivery.partition, delivery.offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defined(shards: u32) -> (Campaign, CampaignEnvelope) {
        let text = format!(
            "id: c\napp: shop\nname: n\nwhen: {{ event: Ping }}\nwhat: {{ title: t, body: b }}\noptions: {{ shards: {shards} }}\n"
        );
        define(&text, "c.yaml", None, 1).unwrap()
    }

    #[test]
    fn a_live_campaign_keeps_its_shards_and_a_stopped_one_may_change_them() {
        let (_, live) = defined(4);
        let (same, _) = defined(4);
        let (more, _) = defined(8);
        assert_eq!(shards_change(&live, &same), None);
        let refused = shards_change(&live, &more).unwrap();
        assert_eq!(refused.path, "options.shards");
        assert!(
            refused.reason.contains("live with 4 shard(s): a change to 8"),
            "{}",
            refused.reason
        );
        let paused = command(live.clone(), CampaignCommand::Pause, None, 2).unwrap();
        assert!(shards_change(&paused, &more).is_some(), "a paused campaign is not stopped");
        let stopped = command(live, CampaignCommand::Stop, None, 2).unwrap();
        assert_eq!(shards_change(&stopped, &more), None);
    }
}
