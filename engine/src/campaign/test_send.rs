//! Test sends: a campaign rendered for named test users and sent through the real senders, so a
//! campaign manager sees it on their own devices before it goes live.
//!
//! - A test user is a profile with the property `herald_test: true` ([`TEST_USER_PROPERTY`]);
//!   anyone else is refused.
//! - Every device gets a send command on the push topic with a fresh test message id
//!   ([`payload::test_message_id`]): never de-duplicated against another test send, and left out
//!   of campaign stats by the user stage (receipts and notification events of test ids are not
//!   engagements). Test sends bypass the campaign stage and the send gate, so they spend no
//!   campaign limit and no frequency cap, and `sent` does not count them. Nor do they wait in
//!   the app's global throttle (its outbox would hold them behind a running campaign's backlog;
//!   docs/api.md says why and what bounds them instead).
//! - The senders' receipts for those message ids are awaited until a deadline; a device
//!   without one by then is reported pending.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
    Message as _, Offset, TopicPartitionList,
};
use serde::Serialize;
use thiserror::Error;
use utoipa::ToSchema;

use super::Campaign;
use crate::{
    kafka::KafkaConfig,
    model::{
        topics::TopicNames, Platform, PropertyValue, Receipt, ReceiptStatus, SchemaRegistry,
        SendCommand,
    },
    payload,
    render::preview::render_for_devices,
    runtime::partition_for,
    stage_user::Profile,
};

/// The profile property marking a test user (`true`).
pub const TEST_USER_PROPERTY: &str = "herald_test";

/// The run id of every test send command.
pub const TEST_RUN: &str = "test";

/// How long Kafka metadata and produce calls may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a test send was refused or failed.
#[derive(Debug, Error)]
pub enum TestSendError {
    /// The engine has no profile for the user.
    #[error("user {0} has no profile in the engine")]
    UnknownUser(String),
    /// The user's profile is not marked as a test user.
    #[error("user {0} is not a test user (its profile needs {TEST_USER_PROPERTY}: true)")]
    NotTestUser(String),
    /// The campaign has no such variant.
    #[error("campaign {campaign} has no variant {variant}")]
    UnknownVariant {
        /// Campaign.
        campaign: String,
        /// Variant asked for.
        variant: String,
    },
    /// A template of the variant does not render for the user.
    #[error("variant {variant} does not render for user {user}: {error}")]
    Render {
        /// Variant.
        variant: String,
        /// User.
        user: String,
        /// Why, naming the field.
        error: String,
    },
    /// Writing the commands or reading the receipts failed.
    #[error("{0}")]
    Kafka(String),
}

/// Whether `profile` is marked as a test user.
pub fn is_test_user(profile: &Profile) -> bool {
    matches!(profile.properties.get(TEST_USER_PROPERTY), Some(PropertyValue::Bool(true)))
}

/// Where one device's test send stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// The provider accepted it.
    Accepted,
    /// The provider refused it, or the sender's retries ran out.
    Failed,
    /// The provider says the token is dead (the engine removes it from the profile).
    TokenInvalid,
    /// Past its expiry before it could be sent.
    Expired,
    /// No receipt by the deadline.
    Pending,
    /// Not sent: the payload is over the providers' limit.
    NotSent,
}

/// The outcome of one device's test send.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceResult {
    /// Test user.
    pub user_id: String,
    /// Variant sent.
    pub variant_id: String,
    /// Device.
    pub device_id: String,
    /// `IOS` or `ANDROID`.
    #[schema(value_type = String)]
    pub platform: Platform,
    /// The test message id (absent when not sent).
    pub message_id: Option<String>,
    /// Where it stands.
    pub status: DeviceStatus,
    /// Why it was not accepted, in Herald's vocabulary (`docs/senders.md`).
    pub reason: Option<String>,
}

/// What an audit record says of a test send: each message id sent, with its user, variant,
/// device and outcome (`user-0 A device-0 accepted`).
pub fn audit_details(results: &[DeviceResult]) -> BTreeMap<String, String> {
    results
        .iter()
        .filter_map(|r| {
            let outcome = serde_json::to_value(r.status).ok()?;
            let what =
                format!("{} {} {} {}", r.user_id, r.variant_id, r.device_id, outcome.as_str()?);
            Some((r.message_id.clone()?, what))
        })
        .collect()
}

/// The commands of a test send of `campaign` to `user` (a test user with `profile`), one per
/// reachable device and variant (`variant`, else every variant), each with a fresh test
/// message id; devices whose payload is over the limit come back as `NotSent` results.
pub fn commands(
    campaign: &Campaign,
    variant: Option<&str>,
    user: &str,
    profile: Option<&Profile>,
    now_ms: i64,
) -> Result<(Vec<SendCommand>, Vec<DeviceResult>), TestSendError> {
    let profile = profile.ok_or_else(|| TestSendError::UnknownUser(user.into()))?;
    if !is_test_user(profile) {
        return Err(TestSendError::NotTestUser(user.into()));
    }
    let variants: Vec<usize> = match variant {
        Some(id) => vec![campaign.what.iter().position(|m| m.id == id).ok_or_else(|| {
            TestSendError::UnknownVariant { campaign: campaign.id.clone(), variant: id.into() }
        })?],
        None => (0..campaign.what.len()).collect(),
    };
    let devices = profile.reachable_devices(&campaign.options.platforms);
    let (mut commands, mut refused) = (Vec::new(), Vec::new());
    for index in variants {
        let message = &campaign.what[index];
        let fresh = |_: &_| payload::test_message_id();
        let (_, requests) =
            render_for_devices(campaign, index, &profile.properties, &devices, fresh, now_ms)
                .map_err(|error| TestSendError::Render {
                    variant: message.id.clone(),
                    user: user.into(),
                    error,
                })?;
        for request in requests {
            let device = request.device;
            match request.built {
                Ok((payload, headers)) => commands.push(SendCommand {
                    message_id: request.message_id,
                    campaign_id: campaign.id.clone(),
                    variant_id: message.id.clone(),
                    run_id: TEST_RUN.into(),
                    app_id: campaign.app.clone(),
                    user_id: user.into(),
                    device_id: device.device_id,
                    platform: device.platform,
                    token: device.token,
                    payload,
                    headers,
                    created_at_ms: now_ms,
                    expires_at_ms: message.push.ttl_ms.map(|ttl| now_ms + ttl),
                    confirm: false,
                    place_key: None,
                }),
                Err(error) => refused.push(DeviceResult {
                    user_id: user.into(),
                    variant_id: message.id.clone(),
                    device_id: device.device_id,
                    platform: device.platform,
                    message_id: None,
                    status: DeviceStatus::NotSent,
                    reason: Some(error.to_string()),
                }),
            }
        }
    }
    Ok((commands, refused))
}

fn kafka_error(context: &str) -> impl FnOnce(rdkafka::error::KafkaError) -> TestSendError + '_ {
    move |e| TestSendError::Kafka(format!("{context}: {e}"))
}

/// Writes `commands` to the push topic (to the partition the engine would choose for each
/// user) and waits until the senders' receipt of every one has arrived or `timeout` passed;
/// returns each command's result, in order.
pub fn send_and_wait(
    kafka: &KafkaConfig,
    topics: &TopicNames,
    commands: &[SendCommand],
    timeout: Duration,
) -> Result<Vec<DeviceResult>, TestSendError> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "herald-test-send")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(kafka_error("creating the receipts consumer"))?;
    // Receipts are read from the end as of before the commands leave.
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions(&consumer, &topics.receipts)? {
        let (_, high) = consumer
            .fetch_watermarks(&topics.receipts, partition, KAFKA_TIMEOUT)
            .map_err(kafka_error("reading the end of the receipts topic"))?;
        assignment
            .add_partition_offset(&topics.receipts, partition, Offset::Offset(high))
            .map_err(kafka_error("assigning the receipts topic"))?;
    }
    consumer.assign(&assignment).map_err(kafka_error("assigning the receipts topic"))?;
    produce(kafka, &topics.push, commands, partitions(&consumer, &topics.push)?)?;
    let mut receipts: HashMap<&str, Receipt> = HashMap::new();
    let wanted: BTreeMap<&str, &SendCommand> =
        commands.iter().map(|c| (c.message_id.as_str(), c)).collect();
    while receipts.len() < wanted.len() && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.map_err(kafka_error("reading receipts"))?;
        let Some(receipt) =
            message.payload().and_then(|v| SchemaRegistry::builtin().decode::<Receipt>(v).ok())
        else {
            continue;
        };
        if let Some((id, _)) = wanted.get_key_value(receipt.message_id.as_str()) {
            receipts.entry(id).or_insert(receipt);
        }
    }
    Ok(commands
        .iter()
        .map(|command| {
            let receipt = receipts.get(command.message_id.as_str());
            DeviceResult {
                user_id: command.user_id.clone(),
                variant_id: command.variant_id.clone(),
                device_id: command.device_id.clone(),
                platform: command.platform,
                message_id: Some(command.message_id.clone()),
                status: receipt.map_or(DeviceStatus::Pending, |r| match r.status {
                    ReceiptStatus::Accepted => DeviceStatus::Accepted,
                    ReceiptStatus::Failed => DeviceStatus::Failed,
                    ReceiptStatus::TokenInvalid => DeviceStatus::TokenInvalid,
                    ReceiptStatus::Expired => DeviceStatus::Expired,
                }),
                reason: receipt.and_then(|r| r.reason.clone()),
            }
        })
        .collect())
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<i32, TestSendError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .map_err(kafka_error("reading topic metadata"))?;
    let count = metadata.topics().first().map_or(0, |t| t.partitions().len());
    match i32::try_from(count) {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(TestSendError::Kafka(format!("topic {topic} does not exist"))),
    }
}

/// Writes `commands` to `topic`, keyed and partitioned by user, and waits for the broker's acks.
fn produce(
    kafka: &KafkaConfig,
    topic: &str,
    commands: &[SendCommand],
    partitions: i32,
) -> Result<(), TestSendError> {
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .client_config()
        .set("enable.idempotence", "true")
        .create()
        .map_err(kafka_error("creating the producer"))?;
    for command in commands {
        let bytes = SchemaRegistry::builtin()
            .encode(command)
            .map_err(|e| TestSendError::Kafka(format!("encoding a send command: {e}")))?;
        let key = command.user_id.as_bytes();
        let record = BaseRecord::to(topic)
            .key(key)
            .payload(&bytes)
            .partition(partition_for(key, partitions));
        crate::kafka::send_waiting(&producer, record)
            .map_err(kafka_error("writing a send command"))?;
    }
    producer.flush(KAFKA_TIMEOUT).map_err(kafka_error("writing the send commands"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Device, Properties};

    fn campaign() -> Campaign {
        let yaml = "id: c1\napp: shop\nname: Sale\nwhen:\n  event: Added To Cart\nwhat:\n  \
                    variants:\n    - id: A\n      title: \"Hi {{ profile.first_name }}\"\n      \
                    body: one\n    - id: B\n      title: Hey\n      body: two\n";
        super::super::parse_campaign(yaml, "c1.yaml").unwrap()
    }

    fn profile(test: bool) -> Profile {
        let mut properties =
            Properties::from([("first_name".into(), PropertyValue::String("Ana".into()))]);
        if test {
            properties.insert(TEST_USER_PROPERTY.into(), PropertyValue::Bool(true));
        }
        let device = |id: &str, platform| Device {
            device_id: id.into(),
            platform,
            token: format!("tok-{id}"),
            app_version: None,
            os_version: None,
            make: None,
            model: None,
            sdk_version: None,
        };
        Profile {
            properties,
            devices: vec![device("i1", Platform::Ios), device("a1", Platform::Android)],
        }
    }

    #[test]
    fn a_test_user_gets_one_fresh_test_id_per_device_and_variant() {
        let (commands, refused) =
            commands(&campaign(), None, "u1", Some(&profile(true)), 0).unwrap();
        assert!(refused.is_empty());
        let sent: Vec<(&str, &str)> =
            commands.iter().map(|c| (c.variant_id.as_str(), c.device_id.as_str())).collect();
        assert_eq!(sent, [("A", "i1"), ("A", "a1"), ("B", "i1"), ("B", "a1")]);
        assert!(commands.iter().all(|c| payload::is_test_message_id(&c.message_id)));
        assert!(commands.iter().all(|c| c.run_id == TEST_RUN && !c.confirm));
        let ios: serde_json::Value = serde_json::from_str(&commands[0].payload).unwrap();
        assert_eq!(ios["herald"]["message_id"], commands[0].message_id.as_str());
        assert_eq!(commands[0].headers["apns-id"], commands[0].message_id);
        let (again, _) =
            super::commands(&campaign(), Some("B"), "u1", Some(&profile(true)), 0).unwrap();
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|c| !commands.iter().any(|d| d.message_id == c.message_id)));
    }

    #[test]
    fn others_are_refused_with_the_reason() {
        let error = commands(&campaign(), None, "u2", Some(&profile(false)), 0).unwrap_err();
        assert_eq!(
            error.to_string(),
            "user u2 is not a test user (its profile needs herald_test: true)"
        );
        let error = commands(&campaign(), None, "u3", None, 0).unwrap_err();
        assert_eq!(error.to_string(), "user u3 has no profile in the engine");
        let error = commands(&campaign(), Some("Z"), "u1", Some(&profile(true)), 0).unwrap_err();
        assert_eq!(error.to_string(), "campaign c1 has no variant Z");
    }
}
