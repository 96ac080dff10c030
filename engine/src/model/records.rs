//! Rust types of the records on Herald's topics; field names match `schemas/*.avsc` exactly, so
//! the same serde derive serves Avro and JSON.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::checks::Checked;

/// A record type with a schema under `schemas/`; decoding checks its values (see [`Checked`]).
pub trait Record: Serialize + DeserializeOwned + Checked {
    /// Full Avro name of the record's schema, e.g. `io.herald.AppEvent`.
    const FULL_NAME: &'static str;
}

/// A property value: what profiles and event properties hold. Written untagged (JSON's and
/// Avro's own types); read by the value's type, without trying each variant in turn (see
/// [`PropertyValueVisitor`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PropertyValue {
    /// Explicitly empty.
    Null,
    /// true / false.
    Bool(bool),
    /// Whole number.
    Long(i64),
    /// Floating-point number.
    Double(f64),
    /// Text, including dates in RFC 3339.
    String(String),
}

/// Reads a [`PropertyValue`] from whatever type the input holds: null, a boolean, a whole
/// number (one beyond `i64` becomes a `Double`), a floating-point number or text.
struct PropertyValueVisitor;

impl<'de> serde::de::Visitor<'de> for PropertyValueVisitor {
    type Value = PropertyValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("null, a boolean, a number or a string")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<PropertyValue, E> {
        Ok(PropertyValue::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<PropertyValue, E> {
        Ok(PropertyValue::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, inner: D) -> Result<PropertyValue, D::Error> {
        inner.deserialize_any(self)
    }

    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<PropertyValue, E> {
        Ok(PropertyValue::Bool(value))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<PropertyValue, E> {
        Ok(PropertyValue::Long(value))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<PropertyValue, E> {
        Ok(i64::try_from(value).map_or(PropertyValue::Double(value as f64), PropertyValue::Long))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<PropertyValue, E> {
        Ok(PropertyValue::Double(value))
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<PropertyValue, E> {
        Ok(PropertyValue::String(value.to_string()))
    }

    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<PropertyValue, E> {
        Ok(PropertyValue::String(value))
    }

    fn visit_bytes<E: serde::de::Error>(self, value: &[u8]) -> Result<PropertyValue, E> {
        let text = std::str::from_utf8(value)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Bytes(value), &self))?;
        Ok(PropertyValue::String(text.to_string()))
    }
}

impl<'de> Deserialize<'de> for PropertyValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PropertyValueVisitor)
    }
}

/// Named property values, ordered by name so encodings are deterministic.
pub type Properties = BTreeMap<String, PropertyValue>;

/// Mobile platform of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Platform {
    /// Apple, delivered through APNs.
    Ios,
    /// Android, delivered through FCM.
    Android,
}

/// One of a user's devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Stable id of the app installation.
    pub device_id: String,
    /// Which provider delivers to it.
    pub platform: Platform,
    /// APNs device token or FCM registration token.
    pub token: String,
    /// Installed app version.
    #[serde(default)]
    pub app_version: Option<String>,
    /// Operating system version.
    #[serde(default)]
    pub os_version: Option<String>,
    /// Manufacturer.
    #[serde(default)]
    pub make: Option<String>,
    /// Device model.
    #[serde(default)]
    pub model: Option<String>,
    /// Herald SDK version on the device.
    #[serde(default)]
    pub sdk_version: Option<String>,
}

/// An app event from an SDK (`herald.events`, keyed by user id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppEvent {
    /// Unique id assigned by the SDK pipeline.
    pub event_id: String,
    /// App the event belongs to.
    pub app_id: String,
    /// User who did it.
    pub user_id: String,
    /// Event name, e.g. `Added To Cart`.
    pub name: String,
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Event properties.
    #[serde(default)]
    pub properties: Properties,
    /// SDK version that sent the event (schema version 2).
    #[serde(default)]
    pub sdk_version: Option<String>,
}

impl Record for AppEvent {
    const FULL_NAME: &'static str = "io.herald.AppEvent";
}

/// A change to one user's profile (`herald.profiles`, keyed by user id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileUpdate {
    /// App the profile belongs to.
    pub app_id: String,
    /// Whose profile.
    pub user_id: String,
    /// When the change happened, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Properties to set.
    #[serde(default)]
    pub set: Properties,
    /// Property names to remove.
    #[serde(default)]
    pub unset: Vec<String>,
    /// Devices registered (or re-registered with a new token).
    #[serde(default)]
    pub devices_added: Vec<Device>,
    /// Tokens no longer valid.
    #[serde(default)]
    pub tokens_removed: Vec<String>,
}

impl Record for ProfileUpdate {
    const FULL_NAME: &'static str = "io.herald.ProfileUpdate";
}

/// What a campaign envelope asks the engine to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CampaignCommand {
    /// Install or replace the definition.
    Define,
    /// Hold sends (outbox kept).
    Pause,
    /// Continue after a pause.
    Resume,
    /// End the campaign (outbox dropped).
    Stop,
}

/// A campaign definition or operator command (`herald.campaigns`, compacted, keyed by campaign).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignEnvelope {
    /// Campaign the envelope is about.
    pub campaign_id: String,
    /// App of the campaign.
    pub app_id: String,
    /// What to do.
    pub command: CampaignCommand,
    /// Definition as JSON text, for `Define`.
    #[serde(default)]
    pub definition: Option<String>,
    /// Monotonic revision of the definition.
    #[serde(default)]
    pub revision: i64,
    /// When it was issued, epoch milliseconds.
    pub issued_at_ms: i64,
    /// Who issued it.
    #[serde(default)]
    pub issued_by: Option<String>,
}

impl Record for CampaignEnvelope {
    const FULL_NAME: &'static str = "io.herald.CampaignEnvelope";
}

/// Kind of campaign lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LifecycleKind {
    /// A scheduled run began.
    RunStarted,
    /// A scheduled run ended.
    RunFinished,
    /// The campaign ended (end date or total limit).
    Completed,
    /// A reach limit was reached.
    LimitReached,
    /// An A/B test picked its winner.
    WinnerDeclared,
    /// A run qualified more users than the safety limit and sent nothing.
    SafetyCheckTripped,
    /// Paused by an operator.
    Paused,
    /// Resumed by an operator.
    Resumed,
    /// Stopped by an operator.
    Stopped,
}

/// What the engine decided about a campaign (`herald.campaign-events`, keyed by campaign).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignLifecycleEvent {
    /// Campaign concerned.
    pub campaign_id: String,
    /// App of the campaign.
    pub app_id: String,
    /// What happened.
    pub kind: LifecycleKind,
    /// Run concerned, for scheduled campaigns.
    #[serde(default)]
    pub run_id: Option<String>,
    /// When, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Kind-specific facts.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

impl Record for CampaignLifecycleEvent {
    const FULL_NAME: &'static str = "io.herald.CampaignLifecycleEvent";
}

/// A user who qualified for a campaign in the user stage (`herald.campaign-flow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Campaign qualified for.
    pub campaign_id: String,
    /// App of the campaign.
    pub app_id: String,
    /// Run (or trigger occurrence) the candidate belongs to.
    pub run_id: String,
    /// Who qualified.
    pub user_id: String,
    /// When, epoch milliseconds.
    pub qualified_at_ms: i64,
    /// Name of the triggering event, if any.
    #[serde(default)]
    pub trigger_event: Option<String>,
    /// Properties of the triggering event.
    #[serde(default)]
    pub event_properties: Properties,
    /// Profile properties the campaign's templates use.
    #[serde(default)]
    pub profile: Properties,
    /// Reachable devices.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// User's timezone (IANA name).
    #[serde(default)]
    pub timezone: Option<String>,
    /// User's language (BCP 47).
    #[serde(default)]
    pub language: Option<String>,
    /// The user-stage partition that qualified the user (a triggered A/B test gives each
    /// partition its share of the test population); `None` from older producers.
    #[serde(default)]
    pub source: Option<SourcePartition>,
}

/// A user-stage partition, as a candidate names the one it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePartition {
    /// The partition.
    pub partition: i32,
    /// How many partitions the user stage has.
    pub partitions: i32,
}

impl Record for Candidate {
    const FULL_NAME: &'static str = "io.herald.Candidate";
}

/// Kind of engagement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EngagementKind {
    /// Notification viewed.
    Impression,
    /// Notification clicked.
    Click,
    /// Conversion event within the conversion window.
    Conversion,
    /// Provider accepted the notification.
    Delivered,
    /// Provider refused the notification.
    Failed,
    /// The device token is dead.
    TokenInvalid,
}

/// An engagement attributed to a campaign (`herald.campaign-flow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Engagement {
    /// Campaign credited.
    pub campaign_id: String,
    /// Variant credited.
    #[serde(default)]
    pub variant_id: Option<String>,
    /// Who engaged.
    pub user_id: String,
    /// Message engaged with.
    #[serde(default)]
    pub message_id: Option<String>,
    /// What happened.
    pub kind: EngagementKind,
    /// When, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Conversion value.
    #[serde(default)]
    pub value: Option<f64>,
    /// Why a delivery failed or the token is invalid (the provider's reason).
    #[serde(default)]
    pub reason: Option<String>,
}

impl Record for Engagement {
    const FULL_NAME: &'static str = "io.herald.Engagement";
}

/// A fully rendered notification for one device (`herald.push`, keyed by user id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendCommand {
    /// Deterministic id; senders de-duplicate on it.
    pub message_id: String,
    /// Campaign sending.
    pub campaign_id: String,
    /// Variant sent.
    pub variant_id: String,
    /// Run of the campaign.
    pub run_id: String,
    /// App sending.
    pub app_id: String,
    /// Recipient.
    pub user_id: String,
    /// Recipient device.
    pub device_id: String,
    /// Provider to use.
    pub platform: Platform,
    /// Device token.
    pub token: String,
    /// Platform payload as JSON text.
    pub payload: String,
    /// Provider headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// When rendered, epoch milliseconds.
    pub created_at_ms: i64,
    /// Do not send after this instant.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// The campaign stage holds the notification's place in its limits until the send gate
    /// reports it passed ([`SendConfirmed`]) or refused it ([`Skip`]) (schema version 2).
    #[serde(default)]
    pub confirm: bool,
    /// The campaign-flow key of the campaign state that counted it and holds its place (the
    /// campaign's home or one of its shards): the send gate's answer, or a skip, goes back
    /// there whatever the shards in effect by then (schema version 3; `None`: routed by them).
    #[serde(default)]
    pub place_key: Option<String>,
}

impl Record for SendCommand {
    const FULL_NAME: &'static str = "io.herald.SendCommand";
}

/// Outcome of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReceiptStatus {
    /// Provider accepted it.
    Accepted,
    /// Provider refused it, or retries ran out.
    Failed,
    /// The token is dead; remove it.
    TokenInvalid,
    /// Past its expiry; not sent.
    Expired,
}

/// A sender outcome (`herald.receipts`, keyed by user id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// Message concerned.
    pub message_id: String,
    /// Campaign of the message.
    pub campaign_id: String,
    /// Variant of the message.
    pub variant_id: String,
    /// App of the message.
    pub app_id: String,
    /// Recipient.
    pub user_id: String,
    /// Recipient device.
    pub device_id: String,
    /// Token used.
    pub token: String,
    /// Outcome.
    pub status: ReceiptStatus,
    /// Why it was not accepted, in Herald's vocabulary for every provider (`docs/senders.md`),
    /// e.g. `unregistered`.
    #[serde(default)]
    pub reason: Option<String>,
    /// apns-id or FCM message name.
    #[serde(default)]
    pub provider_id: Option<String>,
    /// Provider round trip in milliseconds.
    #[serde(default)]
    pub latency_ms: Option<i64>,
    /// When, epoch milliseconds.
    pub timestamp_ms: i64,
    /// What the provider (or the sender) said, verbatim, e.g. `Unregistered` (schema version 2).
    #[serde(default)]
    pub provider_reason: Option<String>,
}

impl Record for Receipt {
    const FULL_NAME: &'static str = "io.herald.Receipt";
}

/// Counters of one variant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VariantStats {
    /// Variant counted.
    pub variant_id: String,
    /// Users given this variant (qualified, past the checks before a variant is chosen).
    #[serde(default)]
    pub qualified: i64,
    /// Send commands produced.
    #[serde(default)]
    pub sent: i64,
    /// Accepted by the provider.
    #[serde(default)]
    pub delivered: i64,
    /// Refused by the provider.
    #[serde(default)]
    pub failed: i64,
    /// Viewed.
    #[serde(default)]
    pub impressions: i64,
    /// Clicked.
    #[serde(default)]
    pub clicks: i64,
    /// Converted.
    #[serde(default)]
    pub conversions: i64,
}

/// A snapshot of a campaign's counters (`herald.stats`, compacted, keyed by campaign).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignStats {
    /// Campaign counted.
    pub campaign_id: String,
    /// App of the campaign.
    pub app_id: String,
    /// Snapshot time, epoch milliseconds.
    pub as_of_ms: i64,
    /// Per-variant counters.
    #[serde(default)]
    pub variants: Vec<VariantStats>,
    /// Users not sent to, by reason.
    #[serde(default)]
    pub skipped: BTreeMap<String, i64>,
    /// Sends the provider refused or that never reached it, counted by reason.
    #[serde(default)]
    pub failed: BTreeMap<String, i64>,
}

impl Record for CampaignStats {
    const FULL_NAME: &'static str = "io.herald.CampaignStats";
}

/// A qualified user who was not sent to, and why (`herald.campaign-flow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skip {
    /// Campaign concerned.
    pub campaign_id: String,
    /// App of the campaign.
    pub app_id: String,
    /// User not sent to.
    pub user_id: String,
    /// The gate that stopped it, e.g. `capped_daily`.
    pub reason: String,
    /// When, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Set when the send gate refused a send command as it left for a sender: the variant whose
    /// sent count the command takes back (schema version 2).
    #[serde(default)]
    pub variant_id: Option<String>,
    /// The first refused command of a notification: it also gives back the user's place in the
    /// campaign's limits and counts the skip (schema version 2).
    #[serde(default)]
    pub returns_place: bool,
    /// Set by the send gate: the run (or trigger occurrence) of the refused notification, so
    /// its place is returned exactly where it was counted (schema version 3).
    #[serde(default)]
    pub run_id: Option<String>,
}

/// The send gate let a notification that asked for confirmation leave for the senders: its
/// place in the campaign's limits is final (`herald.campaign-flow`, keyed by campaign id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendConfirmed {
    /// Campaign concerned.
    pub campaign_id: String,
    /// App of the campaign.
    pub app_id: String,
    /// User sent to.
    pub user_id: String,
    /// The run or trigger occurrence of the notification.
    pub run_id: String,
    /// When it passed the gate, epoch milliseconds.
    pub timestamp_ms: i64,
}

impl Record for SendConfirmed {
    const FULL_NAME: &'static str = "io.herald.SendConfirmed";
}

impl Record for Skip {
    const FULL_NAME: &'static str = "io.herald.Skip";
}

/// Prefix of the [`Candidate::run_id`] of users qualified by a live trigger (scheduled runs
/// have their own ids, see [`scheduled_run_id`]).
pub const TRIGGERED_RUN: &str = "trigger";

/// The run id of one trigger occurrence: `trigger:<occurrence>`, where `occurrence` names what
/// caused it (the triggering event). Message ids derive from it, so two occurrences never share
/// one and the same occurrence reprocessed after a crash keeps its ids.
pub fn triggered_run_id(occurrence: &str) -> String {
    format!("{TRIGGERED_RUN}:{occurrence}")
}

/// Whether `run_id` belongs to a live trigger (not a scheduled run).
pub fn is_triggered_run(run_id: &str) -> bool {
    run_id.strip_prefix(TRIGGERED_RUN).is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
}

/// The id of a scheduled run at `run_at_ms`.
pub fn scheduled_run_id(run_at_ms: i64) -> String {
    format!("run-{run_at_ms}")
}

/// The time of the scheduled run `run_id` (see [`scheduled_run_id`]).
pub fn scheduled_run_time(run_id: &str) -> Option<i64> {
    run_id.strip_prefix("run-")?.parse().ok()
}

/// A user-stage task's count of a scheduled run's audience (`herald.campaign-flow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTally {
    /// Campaign concerned.
    pub campaign_id: String,
    /// App of the campaign.
    pub app_id: String,
    /// The run, e.g. `run-1764237600000`.
    pub run_id: String,
    /// User-stage partition that scanned.
    pub partition: i32,
    /// User-stage partitions in all.
    pub partitions: i32,
    /// Users of the partition matching the campaign's audience.
    pub qualified: i64,
    /// When the scan ended, epoch milliseconds.
    pub timestamp_ms: i64,
    /// The shards the scan sent the partition's candidates and tallies to (0 or 1: the home).
    /// A tally with more keyed by the campaign id only tells the home where they went: a run
    /// its tasks scanned with different shard counts is sent from the home (`stage_campaign`).
    #[serde(default)]
    pub shards: i32,
}

impl Record for RunTally {
    const FULL_NAME: &'static str = "io.herald.RunTally";
}

/// Input that could not be decoded or was rejected (`herald.dead-letter`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Topic the input came from.
    pub source_topic: String,
    /// Partition it came from.
    pub source_partition: i32,
    /// Its offset.
    pub source_offset: i64,
    /// Original key bytes.
    #[serde(default, with = "apache_avro::serde_avro_bytes_opt")]
    pub key: Option<Vec<u8>>,
    /// Original value bytes.
    #[serde(default, with = "apache_avro::serde_avro_bytes_opt")]
    pub value: Option<Vec<u8>>,
    /// Why it was rejected.
    pub reason: String,
    /// Which processor rejected it.
    pub stage: String,
    /// When, epoch milliseconds.
    pub timestamp_ms: i64,
}

impl Record for DeadLetter {
    const FULL_NAME: &'static str = "io.herald.DeadLetter";
}

/// An ingest record forwarded to the user-stage task of its user (`herald.ingest-repartition`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestForward {
    /// Where the record was first read (`topic/partition/offset`): names the occurrence of an
    /// event without an event id.
    pub origin: String,
    /// Times the record was forwarded, this time included.
    pub hops: i32,
    /// The decoded record, Avro single-object encoded: an [`AppEvent`], [`ProfileUpdate`],
    /// [`AliasRecord`] or [`UserMerge`].
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub record: Vec<u8>,
}

impl Record for IngestForward {
    const FULL_NAME: &'static str = "io.herald.IngestForward";
}

/// An anonymous id that identified as a known user, as forwarded between user-stage tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    /// App of both ids.
    pub app_id: String,
    /// The id the user had before identifying.
    pub anonymous_id: String,
    /// The known user id they identified as.
    pub user_id: String,
    /// When they identified, epoch milliseconds.
    pub timestamp_ms: i64,
}

impl Record for AliasRecord {
    const FULL_NAME: &'static str = "io.herald.UserAlias";
}

/// One day's count of one history key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryCount {
    /// History key: an event name, or an event name with a behaviour's condition hash.
    pub key: String,
    /// Day number since the Unix epoch (UTC).
    pub day: i64,
    /// Occurrences that day.
    pub count: i32,
}

/// What an anonymous user had when they identified, moving to the known user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserMerge {
    /// App of both ids.
    pub app_id: String,
    /// The anonymous id merged (it now forwards to `user_id`).
    pub anonymous_id: String,
    /// The known user it merges into.
    pub user_id: String,
    /// When the user identified, epoch milliseconds.
    pub timestamp_ms: i64,
    /// The anonymous profile's properties (the known user's own win on conflict).
    #[serde(default)]
    pub properties: Properties,
    /// The anonymous user's devices.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// The anonymous user's daily event counts.
    #[serde(default)]
    pub history: Vec<HistoryCount>,
    /// What the anonymous id's task remembered having seen and still counts (event ids,
    /// trigger occurrences judged), kept by the known user's task (empty in version 1).
    #[serde(default)]
    pub seen: Vec<SeenEntry>,
}

/// One id a user's task remembers having seen, moving with a [`UserMerge`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenEntry {
    /// The memory's store: `dedup` (event ids) or `occurrences` (trigger occurrences judged).
    pub memory: String,
    /// The id remembered.
    pub id: String,
    /// When it was first seen, epoch milliseconds (its window runs from then).
    pub first_seen_ms: i64,
}

impl Record for UserMerge {
    const FULL_NAME: &'static str = "io.herald.UserMerge";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_property_value_is_read_by_its_type() {
        let json = r#"[null, true, 5, -5, 1.5, "x", 18446744073709551615]"#;
        let values: Vec<PropertyValue> = serde_json::from_str(json).unwrap();
        assert_eq!(
            values,
            [
                PropertyValue::Null,
                PropertyValue::Bool(true),
                PropertyValue::Long(5),
                PropertyValue::Long(-5),
                PropertyValue::Double(1.5),
                PropertyValue::String("x".into()),
                PropertyValue::Double(u64::MAX as f64),
            ]
        );
        assert_eq!(serde_json::to_string(&values[..6]).unwrap(), r#"[null,true,5,-5,1.5,"x"]"#);
        let refused = serde_json::from_str::<PropertyValue>("[1]").unwrap_err().to_string();
        assert!(refused.contains("null, a boolean, a number or a string"), "{refused}");
    }
}
