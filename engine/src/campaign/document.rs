//! The shape of a campaign file as serde reads it once the JSON Schema (`json_schema.rs`) has
//! checked its structure: which fields there are, their types and allowed values. `parse.rs`
//! turns it into the model, checking what the schema cannot say.
//!
//! A file the schema refused is still read, [`Part`] by part (each top-level field, list item
//! and condition), so that one broken part does not hide the semantic errors of the others.

use serde::{
    de::{DeserializeOwned, IgnoredAny},
    Deserialize, Deserializer,
};
use serde_json::{Map, Value};

use super::{DndAction, Limits, Place, PushOptions, WinnerBy};

/// A part of the document that serde read as `T`, or could not (serde's reason; absent when a
/// required field is missing).
#[derive(Debug)]
pub(super) enum Part<T> {
    /// Read.
    Read(T),
    /// Not read, for this reason.
    Unread(String),
}

impl<T> Default for Part<T> {
    fn default() -> Self {
        Self::Unread("is required".into())
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Part<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(T::deserialize(value).map_or_else(|e| Self::Unread(e.to_string()), Self::Read))
    }
}

/// One value or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany<T> {
    /// A list.
    Many(Vec<T>),
    /// One.
    One(T),
}

/// A campaign file.
#[derive(Debug, Deserialize)]
pub(super) struct CampaignFile {
    #[serde(default)]
    pub id: Part<String>,
    #[serde(default)]
    pub app: Part<String>,
    #[serde(default)]
    pub name: Part<String>,
    pub status: Option<Part<Status>>,
    pub who: Option<Part<FilterDoc>>,
    #[serde(default)]
    pub when: Part<WhenDoc>,
    #[serde(default)]
    pub what: Part<WhatDoc>,
    pub limits: Option<Part<Limits>>,
    pub options: Option<Part<OptionsDoc>>,
}

/// `status`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Status {
    Draft,
    Active,
    Paused,
    Stopped,
}

/// A `who` filter: the alternatives of the schema's `$defs/filter`, told apart by their key.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FilterDoc {
    All { all: Vec<Part<FilterDoc>> },
    Any { any: Vec<Part<FilterDoc>> },
    Not { not: Box<Part<FilterDoc>> },
    Near { near: Vec<Place> },
    Segment { segment: OneOrMany<String> },
    Did(DidDoc),
    DidNot(DidNotDoc),
    Device(DeviceDoc),
    Property(ConditionDoc),
}

/// `{property: <name>, <operator>: <value>}`.
#[derive(Debug, Deserialize)]
pub(super) struct ConditionDoc {
    pub property: String,
    #[serde(flatten)]
    pub op: OpDoc,
}

/// `{device: <field>, <operator>: <value>}`.
#[derive(Debug, Deserialize)]
pub(super) struct DeviceDoc {
    pub device: String,
    #[serde(flatten)]
    pub op: OpDoc,
}

/// The operator of a condition and its operand (`exists` and `not_exists` take `true`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum OpDoc {
    Equals(ScalarDoc),
    NotEquals(ScalarDoc),
    In(Vec<ScalarDoc>),
    NotIn(Vec<ScalarDoc>),
    Between(f64, f64),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
    Exists(IgnoredAny),
    NotExists(IgnoredAny),
    Contains(String),
    StartsWith(String),
    Before(String),
    After(String),
    WithinLastDays(u32),
}

/// A literal of a condition.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ScalarDoc {
    Bool(bool),
    Number(f64),
    Text(String),
}

/// `{did: <event>, ...}`.
#[derive(Debug, Deserialize)]
pub(super) struct DidDoc {
    pub did: String,
    pub at_least: Option<u32>,
    pub at_most: Option<u32>,
    pub in_last_days: Option<u32>,
    pub r#where: Option<Vec<Part<ConditionDoc>>>,
    pub first_before: Option<String>,
    pub first_after: Option<String>,
    pub last_before: Option<String>,
    pub last_after: Option<String>,
}

/// `{did_not: <event>, ...}`.
#[derive(Debug, Deserialize)]
pub(super) struct DidNotDoc {
    pub did_not: String,
    pub in_last_days: Option<u32>,
    pub r#where: Option<Vec<Part<ConditionDoc>>>,
}

/// `when`.
#[derive(Debug, Deserialize)]
pub(super) struct WhenDoc {
    pub event: Option<String>,
    pub r#where: Option<Vec<Part<ConditionDoc>>>,
    pub unless: Option<EventWithin>,
    pub reminder: Option<ReminderDoc>,
    pub schedule: Option<ScheduleDoc>,
    pub start: Option<String>,
    pub end: Option<String>,
}

/// An event within a time (`when.unless`, `options.conversion`).
#[derive(Debug, Deserialize)]
pub(super) struct EventWithin {
    pub event: String,
    pub within: String,
}

/// `when.reminder`.
#[derive(Debug, Deserialize)]
pub(super) struct ReminderDoc {
    pub event: String,
    pub date_property: String,
    pub offset: String,
}

/// `when.schedule`: fixed times or a calendar recurrence.
#[derive(Debug, Deserialize)]
pub(super) struct ScheduleDoc {
    pub at: Option<OneOrMany<String>>,
    pub every: Option<String>,
    pub catch_up: Option<CatchUpDoc>,
    pub grace: Option<String>,
    pub repeat: Option<Repeat>,
    pub days: Option<Vec<String>>,
    pub day: Option<u32>,
    pub hours: Option<u32>,
    pub time: Option<String>,
    pub timezone: Option<String>,
    pub until: Option<String>,
}

/// `when.schedule.catch_up`.
#[derive(Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum CatchUpDoc {
    Once,
    Skip,
}

/// `when.schedule.repeat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Repeat {
    Daily,
    Weekly,
    Monthly,
    Hourly,
}

/// `what`: one message, or variants.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum WhatDoc {
    Variants(VariantsDoc),
    Single(Box<MessageDoc>),
}

/// `what` with `variants`.
#[derive(Debug, Deserialize)]
pub(super) struct VariantsDoc {
    pub variants: Vec<Part<MessageDoc>>,
    pub ab: Option<AbDoc>,
    pub split: Option<Vec<u32>>,
    pub choose_by: Option<String>,
}

/// `what.ab`.
#[derive(Debug, Deserialize)]
pub(super) struct AbDoc {
    pub test_audience: Audience,
    pub evaluate_after: String,
    pub winner_by: Option<WinnerBy>,
    pub share_wait: Option<String>,
}

/// `what.ab.test_audience`: users, or a percentage (`"15%"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Audience {
    Users(u64),
    Percent(String),
}

/// A message (variant).
#[derive(Debug, Deserialize)]
pub(super) struct MessageDoc {
    pub id: Option<String>,
    pub title: String,
    pub body: String,
    pub subtitle: Option<String>,
    pub deep_link: Option<String>,
    pub image_url: Option<String>,
    pub push: Option<PushDoc>,
}

/// A message's `push` options: those read as written, and `ttl` and `data`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct PushDoc {
    #[serde(flatten)]
    pub options: PushOptions,
    pub ttl: Option<String>,
    pub data: Map<String, Value>,
}

/// `options`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct OptionsDoc {
    pub ignore_global_caps: bool,
    pub throttle: Option<ThrottleDoc>,
    pub dnd: Option<DndDoc>,
    pub sample_percent: Option<f64>,
    pub platforms: Option<Vec<PlatformDoc>>,
    pub conversion: Option<EventWithin>,
    pub timezone: Option<String>,
    pub shards: Option<u32>,
}

/// `options.throttle`.
#[derive(Debug, Deserialize)]
pub(super) struct ThrottleDoc {
    pub max: u64,
    pub per: String,
}

/// `options.dnd`.
#[derive(Debug, Deserialize)]
pub(super) struct DndDoc {
    pub start: String,
    pub end: String,
    pub action: Option<DndAction>,
}

/// `options.platforms[i]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum PlatformDoc {
    Ios,
    Android,
}

/// Reads a file as the schema and serde take it: a field set to nothing (`subtitle:` or `~`) is
/// absent, and a whole number written with a fraction (`2.0`) is that whole number (JSON Schema
/// counts it as an `integer`; serde would not read it as one). `push.data` is kept as written.
pub(super) fn normalize(value: &mut Value) {
    match value {
        Value::Number(number) if number.is_f64() => {
            let whole = number.as_f64().filter(|n| n.fract() == 0.0 && n.abs() < 9.0e15);
            if let Some(whole) = whole {
                // Exact: below 2^53.
                *value = Value::from(whole as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        Value::Object(map) => {
            map.retain(|_, inner| !inner.is_null());
            let fields = map.iter_mut().filter(|(key, _)| key.as_str() != "data");
            fields.for_each(|(_, inner)| normalize(inner));
        }
        _ => {}
    }
}
