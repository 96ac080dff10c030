//! The app settings file: per app, global frequency caps, minimum gap, default timezone and
//! global throttle (read by the user, campaign and app stages); for every app, the limits of
//! ingest records (validation at the door, de-duplication window) and of the campaign stage's
//! waiting queues.

use std::collections::HashMap;

use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::{
    campaign::{
        parse_duration, FieldError, Throttle, ValidationErrors, DEFAULT_HISTORY_DAYS, MAX_COUNT,
        MAX_HISTORY_DAYS,
    },
    model::topics::TopicNames,
};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Caps and defaults of one app.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSettings {
    /// At most this many pushes per user per local day (campaigns may opt out).
    pub max_per_day: Option<u32>,
    /// At most this many per user per local ISO week.
    pub max_per_week: Option<u32>,
    /// At least this long between two pushes to the same user, milliseconds.
    pub min_gap_ms: Option<i64>,
    /// Timezone of users who have none.
    pub timezone: Tz,
    /// At most this many notifications per interval across all the app's campaigns.
    pub throttle: Option<Throttle>,
}

impl AppSettings {
    /// Whether any per-user frequency cap applies (daily, weekly or minimum gap).
    pub fn has_caps(&self) -> bool {
        self.max_per_day.is_some() || self.max_per_week.is_some() || self.min_gap_ms.is_some()
    }

    /// Where the app's send commands leave: through the user stage's send gate when the app
    /// has frequency caps (they are checked and spent there) or the commands ask for
    /// confirmation (the gate gives it even when the caps were removed since), else straight to
    /// the senders.
    pub fn send_topic<'t>(&self, topics: &'t TopicNames, confirm: bool) -> &'t str {
        if self.has_caps() || confirm {
            &topics.send_gate
        } else {
            &topics.push
        }
    }
}

/// Limits on ingest records and the de-duplication window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestLimits {
    /// Events with the same event id for the same user within this time count once, ms.
    pub dedup_window_ms: i64,
    /// Oldest accepted record time, before now (live only; replays are exempt), ms.
    pub max_age_ms: i64,
    /// Latest accepted record time, after now (live only), ms.
    pub max_ahead_ms: i64,
    /// Most properties of one event or profile update.
    pub max_properties: usize,
    /// Longest string (ids, names, property names and values, tokens), bytes.
    pub max_string_bytes: usize,
    /// Most devices of one user.
    pub max_devices: usize,
}

impl Default for IngestLimits {
    /// 24 h de-duplication; 30 days back to 1 hour ahead; 100 properties; 2,048-byte strings;
    /// 20 devices per user.
    fn default() -> Self {
        Self {
            dedup_window_ms: DAY_MS,
            max_age_ms: 30 * DAY_MS,
            max_ahead_ms: HOUR_MS,
            max_properties: 100,
            max_string_bytes: 2_048,
            max_devices: 20,
        }
    }
}

impl Default for AppSettings {
    fn default() -> Self {
        Self {
            max_per_day: None,
            max_per_week: None,
            min_gap_ms: None,
            timezone: chrono_tz::UTC,
            throttle: None,
        }
    }
}

/// Settings of every app; apps not listed get [`AppSettings::default`] (no caps, UTC). Limits
/// of ingest records, for every app.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    apps: HashMap<String, AppSettings>,
    fallback: AppSettings,
    ingest: IngestLimits,
    history: HistoryRetention,
    properties: PropertyHistory,
    waiting: MaxWaiting,
    occurrences: OccurrenceRetention,
}

/// How long the user stage remembers a trigger occurrence it passed to a campaign
/// (`limits.occurrence_retention`, every app; see `stage_user::dedup`): a repeat within it sends
/// nothing and is counted `duplicate`. At least [`OccurrenceRetention::LEAST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OccurrenceRetention(i64);

impl OccurrenceRetention {
    /// The shortest retention, and the default: 8 days, as long as the send gate keeps its
    /// decision on a notification (`stage_user::gates`), so the two agree on a repeat.
    pub const LEAST: i64 = 8 * DAY_MS;
    /// The longest retention accepted: 400 days.
    pub const MOST: i64 = 400 * DAY_MS;
}

impl Default for OccurrenceRetention {
    fn default() -> Self {
        Self(Self::LEAST)
    }
}

/// Most candidates of one campaign that wait for a place in flight in its limits
/// (`limits.max_waiting`, every app; see `stage_campaign::places`): one finding the queue full
/// is refused `waiting_full`. By default [`MaxWaiting::DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxWaiting(u64);

impl MaxWaiting {
    /// The default bound: 10,000 candidates (a few kilobytes each in the campaign stage's
    /// store and changelog).
    pub const DEFAULT: u64 = 10_000;
    /// The highest bound accepted.
    pub const MOST: u64 = 10_000_000;
}

impl Default for MaxWaiting {
    fn default() -> Self {
        Self(Self::DEFAULT)
    }
}

/// Days of per-user event history kept (`history.retention_days`, every app): by default
/// [`DEFAULT_HISTORY_DAYS`], at most [`MAX_HISTORY_DAYS`]. Campaigns looking back further are
/// refused by `herald campaign validate|apply --app-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRetention(u32);

impl HistoryRetention {
    /// The retention in days.
    pub fn days(self) -> u32 {
        self.0
    }
}

impl Default for HistoryRetention {
    fn default() -> Self {
        Self(DEFAULT_HISTORY_DAYS)
    }
}

/// Which event properties the history keeps, and how many (`history.properties`), so that a
/// campaign's `where` conditions on past behaviour see events from before the campaign existed.
/// Bounded per user, event and day: a property set past either budget is not kept (the event
/// is still counted by name) and is counted in `history_properties_total{outcome="over_budget"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyHistory {
    /// The properties kept of each event.
    pub keep: KeptProperties,
    /// Distinct property sets kept per user, event and day.
    pub max_sets: u32,
    /// Bytes of property sets (as JSON) kept per user, event and day.
    pub max_bytes: u32,
}

/// The event properties kept in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeptProperties {
    /// Every property of the event (`keep: all`).
    All,
    /// Only these (`keep: [name, ...]`; an empty list keeps none).
    Only(std::collections::BTreeSet<String>),
}

impl Default for PropertyHistory {
    fn default() -> Self {
        Self { keep: KeptProperties::All, max_sets: 8, max_bytes: 1024 }
    }
}

impl Settings {
    /// Parses an app settings file; every problem is reported with its field path
    /// (`apps.shop.caps.per_day`):
    ///
    /// ```yaml
    /// apps:
    ///   shop:
    ///     caps: { per_day: 2, per_week: 5 }
    ///     min_gap: 1h
    ///     timezone: America/Los_Angeles
    ///     throttle: { max: 100000, per: 15m }   # across all the app's campaigns
    /// ingest:                 # every app; these are the defaults (docs/ingest.md)
    ///   dedup_window: 24h
    ///   max_age: 30d          # record times accepted live: 30 days back to 1 hour ahead
    ///   max_ahead: 1h
    ///   max_properties: 100
    ///   max_string_length: 2048
    ///   max_devices: 20
    /// history:
    ///   retention_days: 90    # event history kept per user (at most 400)
    ///   properties:           # event properties kept for `where` conditions (defaults)
    ///     keep: all           # or a list of property names
    ///     max_sets: 8         # distinct property sets per user, event and day
    ///     max_bytes: 1024     # bytes of property sets per user, event and day
    /// limits:
    ///   max_waiting: 10000    # candidates of one campaign waiting for a place in flight
    ///   occurrence_retention: 8d  # how long a trigger occurrence judged is remembered
    /// ```
    pub fn parse(text: &str, source: &str) -> Result<Self, ValidationErrors> {
        let mut errors = Vec::new();
        let mut apps = HashMap::new();
        let mut ingest = Some(IngestLimits::default());
        let mut history = Some(HistoryRetention::default());
        let mut properties = Some(PropertyHistory::default());
        let mut waiting = Some(MaxWaiting::default());
        let mut occurrences = Some(OccurrenceRetention::default());
        match serde_norway::from_str::<Value>(text) {
            Err(e) => errors.push(FieldError { path: "(document)".into(), reason: e.to_string() }),
            Ok(Value::Null) => {}
            Ok(document) => {
                let mut fields = Fields { errors: &mut errors };
                if let Some(file) =
                    fields.object(&document, "", &["apps", "ingest", "history", "limits"])
                {
                    if let Some(value) = file.get("history").filter(|v| !v.is_null()) {
                        history = fields.history(value, "history");
                        if let Some(value) = value.get("properties").filter(|v| !v.is_null()) {
                            properties = fields.property_history(value, "history.properties");
                        }
                    }
                    if let Some(value) = file.get("ingest").filter(|v| !v.is_null()) {
                        ingest = fields.ingest(value, "ingest");
                    }
                    if let Some(value) = file.get("limits").filter(|v| !v.is_null()) {
                        waiting = fields.limits(value, "limits");
                        occurrences = fields.occurrence_retention(value, "limits");
                    }
                    let none = Map::new();
                    let listed = match file.get("apps") {
                        None | Some(Value::Null) => Some(&none),
                        Some(value) => fields.object(value, "apps", &[]),
                    };
                    for (name, app) in listed.into_iter().flatten() {
                        if let Some(settings) = fields.app(app, &format!("apps.{name}")) {
                            apps.insert(name.clone(), settings);
                        }
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(ValidationErrors { source: source.to_string(), errors });
        }
        let ingest = ingest.unwrap_or_default();
        let history = history.unwrap_or_default();
        let properties = properties.unwrap_or_default();
        let waiting = waiting.unwrap_or_default();
        let occurrences = occurrences.unwrap_or_default();
        let fallback = AppSettings::default();
        Ok(Self { apps, fallback, ingest, history, properties, waiting, occurrences })
    }

    /// Settings of `app`.
    pub fn app(&self, app: &str) -> &AppSettings {
        self.apps.get(app).unwrap_or(&self.fallback)
    }

    /// Limits of ingest records.
    pub fn ingest(&self) -> &IngestLimits {
        &self.ingest
    }

    /// How long event history is kept.
    pub fn history(&self) -> HistoryRetention {
        self.history
    }

    /// Which event properties the history keeps.
    pub fn property_history(&self) -> &PropertyHistory {
        &self.properties
    }

    /// Most candidates of one campaign waiting for a place in flight.
    pub fn max_waiting(&self) -> u64 {
        self.waiting.0
    }

    /// How long a trigger occurrence sent is remembered, ms.
    pub fn occurrence_retention_ms(&self) -> i64 {
        self.occurrences.0
    }
}

/// Reads the fields of a settings document, collecting errors with their paths.
struct Fields<'e> {
    errors: &'e mut Vec<FieldError>,
}

impl Fields<'_> {
    fn error<T>(&mut self, path: &str, reason: impl Into<String>) -> Option<T> {
        self.errors.push(FieldError { path: path.to_string(), reason: reason.into() });
        None
    }

    /// A mapping whose keys are among `allowed` (any key when `allowed` is empty).
    fn object<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(map) = value.as_object() else {
            let path = if path.is_empty() { "(document)" } else { path };
            return self.error(path, "expected a mapping");
        };
        for key in map.keys().filter(|k| !allowed.is_empty() && !allowed.contains(&k.as_str())) {
            let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            let reason = format!("unknown field; expected one of {}", allowed.join(", "));
            self.error::<()>(&path, reason);
        }
        Some(map)
    }

    fn app(&mut self, value: &Value, path: &str) -> Option<AppSettings> {
        let map = self.object(value, path, &["caps", "min_gap", "timezone", "throttle"])?;
        let empty = Map::new();
        let caps = match map.get("caps") {
            None | Some(Value::Null) => Some(&empty),
            Some(caps) => self.object(caps, &format!("{path}.caps"), &["per_day", "per_week"]),
        };
        let cap = |fields: &mut Self, key: &str| -> Option<Option<u32>> {
            match caps?.get(key) {
                None | Some(Value::Null) => Some(None),
                Some(v) => match v.as_u64().map(u32::try_from) {
                    Some(Ok(n)) => Some(Some(n)),
                    _ => fields.error(
                        &format!("{path}.caps.{key}"),
                        format!("expected a whole number from 0 to {}, found {v}", u32::MAX),
                    ),
                },
            }
        };
        let max_per_day = cap(self, "per_day");
        let max_per_week = cap(self, "per_week");
        let min_gap_ms = match map.get("min_gap") {
            None | Some(Value::Null) => Some(None),
            Some(v) => self.duration(v, &format!("{path}.min_gap")).map(Some),
        };
        let timezone = match map.get("timezone") {
            None | Some(Value::Null) => Some(chrono_tz::UTC),
            Some(v) => match v.as_str().map(str::parse::<Tz>) {
                Some(Ok(tz)) => Some(tz),
                _ => self.error(
                    &format!("{path}.timezone"),
                    format!("unknown timezone {v}; use an IANA name such as Europe/Paris"),
                ),
            },
        };
        let throttle = match map.get("throttle") {
            None | Some(Value::Null) => Some(None),
            Some(v) => self.throttle(v, &format!("{path}.throttle")).map(Some),
        };
        Some(AppSettings {
            max_per_day: max_per_day?,
            max_per_week: max_per_week?,
            min_gap_ms: min_gap_ms?,
            timezone: timezone?,
            throttle: throttle?,
        })
    }

    fn throttle(&mut self, value: &Value, path: &str) -> Option<Throttle> {
        let map = self.object(value, path, &["max", "per"])?;
        let max = match map.get("max") {
            Some(v) => match v.as_u64() {
                Some(n @ 1..=MAX_COUNT) => Some(n),
                _ => self.error(
                    &format!("{path}.max"),
                    format!("expected a whole number from 1 to {MAX_COUNT}, found {v}"),
                ),
            },
            None => self.error(&format!("{path}.max"), "is required"),
        };
        let per = match map.get("per") {
            Some(v) => self.duration(v, &format!("{path}.per")),
            None => self.error(&format!("{path}.per"), "is required"),
        };
        Some(Throttle { max: max?, per_ms: per? })
    }

    /// `history: { retention_days: N }`, N from 1 to [`MAX_HISTORY_DAYS`].
    fn history(&mut self, value: &Value, path: &str) -> Option<HistoryRetention> {
        let map = self.object(value, path, &["retention_days", "properties"])?;
        match map.get("retention_days").filter(|v| !v.is_null()) {
            None => Some(HistoryRetention::default()),
            Some(days) => match days.as_u64().and_then(|d| u32::try_from(d).ok()) {
                Some(d) if (1..=MAX_HISTORY_DAYS).contains(&d) => Some(HistoryRetention(d)),
                _ => self.error(
                    &format!("{path}.retention_days"),
                    format!("expected a whole number of days from 1 to {MAX_HISTORY_DAYS}, found {days}"),
                ),
            },
        }
    }

    /// `history.properties: { keep: all | [names], max_sets: N, max_bytes: N }`.
    fn property_history(&mut self, value: &Value, path: &str) -> Option<PropertyHistory> {
        let map = self.object(value, path, &["keep", "max_sets", "max_bytes"])?;
        let defaults = PropertyHistory::default();
        let keep = match map.get("keep") {
            None | Some(Value::Null) => Some(defaults.keep),
            Some(Value::String(all)) if all == "all" => Some(KeptProperties::All),
            Some(Value::Array(names)) if names.iter().all(Value::is_string) => {
                Some(KeptProperties::Only(
                    names.iter().filter_map(Value::as_str).map(str::to_string).collect(),
                ))
            }
            Some(other) => self.error(
                &format!("{path}.keep"),
                format!("expected all or a list of property names, found {other}"),
            ),
        };
        let mut bounded = |key: &str, default: u32, most: u32| match map.get(key) {
            None | Some(Value::Null) => Some(default),
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if (1..=most).contains(&n) => Some(n),
                _ => self.error(
                    &format!("{path}.{key}"),
                    format!("expected a whole number from 1 to {most}, found {v}"),
                ),
            },
        };
        let max_sets = bounded("max_sets", defaults.max_sets, 1_000);
        let max_bytes = bounded("max_bytes", defaults.max_bytes, 1 << 20);
        Some(PropertyHistory { keep: keep?, max_sets: max_sets?, max_bytes: max_bytes? })
    }

    fn ingest(&mut self, value: &Value, path: &str) -> Option<IngestLimits> {
        let keys = [
            "dedup_window",
            "max_age",
            "max_ahead",
            "max_properties",
            "max_string_length",
            "max_devices",
        ];
        let map = self.object(value, path, &keys)?;
        let defaults = IngestLimits::default();
        let duration = |fields: &mut Self, key: &str, default: i64| match map.get(key) {
            None | Some(Value::Null) => Some(default),
            Some(v) => fields.duration(v, &format!("{path}.{key}")),
        };
        let dedup_window_ms = duration(self, "dedup_window", defaults.dedup_window_ms);
        let max_age_ms = duration(self, "max_age", defaults.max_age_ms);
        let max_ahead_ms = duration(self, "max_ahead", defaults.max_ahead_ms);
        let count = |fields: &mut Self, key: &str, default: usize| match map.get(key) {
            None | Some(Value::Null) => Some(default),
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n @ 1..=1_000_000) => Some(n),
                _ => fields.error(
                    &format!("{path}.{key}"),
                    format!("expected a whole number from 1 to 1000000, found {v}"),
                ),
            },
        };
        let max_properties = count(self, "max_properties", defaults.max_properties);
        let max_string_bytes = count(self, "max_string_length", defaults.max_string_bytes);
        let max_devices = count(self, "max_devices", defaults.max_devices);
        Some(IngestLimits {
            dedup_window_ms: dedup_window_ms?,
            max_age_ms: max_age_ms?,
            max_ahead_ms: max_ahead_ms?,
            max_properties: max_properties?,
            max_string_bytes: max_string_bytes?,
            max_devices: max_devices?,
        })
    }

    /// `limits: { max_waiting: N }`, N from 1 to [`MaxWaiting::MOST`].
    fn limits(&mut self, value: &Value, path: &str) -> Option<MaxWaiting> {
        let map = self.object(value, path, &["max_waiting", "occurrence_retention"])?;
        match map.get("max_waiting").filter(|v| !v.is_null()) {
            None => Some(MaxWaiting::default()),
            Some(v) => match v.as_u64() {
                Some(n @ 1..=MaxWaiting::MOST) => Some(MaxWaiting(n)),
                _ => self.error(
                    &format!("{path}.max_waiting"),
                    format!("expected a whole number from 1 to {}, found {v}", MaxWaiting::MOST),
                ),
            },
        }
    }

    /// `limits: { occurrence_retention: 8d }`, from [`OccurrenceRetention::LEAST`] to
    /// [`OccurrenceRetention::MOST`] (other keys are read by [`Self::limits`]).
    fn occurrence_retention(&mut self, value: &Value, path: &str) -> Option<OccurrenceRetention> {
        let path = format!("{path}.occurrence_retention");
        match value.get("occurrence_retention").filter(|v| !v.is_null()) {
            None => Some(OccurrenceRetention::default()),
            Some(v) => match self.duration(v, &path)? {
                ms @ OccurrenceRetention::LEAST..=OccurrenceRetention::MOST => {
                    Some(OccurrenceRetention(ms))
                }
                _ => self.error(
                    &path,
                    "must be from 8d (the send gate keeps its decisions 8 days) to 400d",
                ),
            },
        }
    }

    /// A positive duration such as `15m`.
    fn duration(&mut self, value: &Value, path: &str) -> Option<i64> {
        let Some(text) = value.as_str() else {
            return self.error(path, format!("expected a duration such as 15m, found {value}"));
        };
        match parse_duration(text) {
            Ok(ms) if ms > 0 => Some(ms),
            Ok(_) => self.error(path, "must be positive"),
            Err(reason) => self.error(path, reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_limits_default_override_and_errors_name_the_field() {
        assert_eq!(Settings::parse("", "s").unwrap().ingest(), &IngestLimits::default());
        let text = "ingest: { dedup_window: 2h, max_age: 7d, max_devices: 5 }\n";
        let limits = Settings::parse(text, "s").unwrap().ingest().clone();
        assert_eq!(limits.dedup_window_ms, 2 * 3_600_000);
        assert_eq!(limits.max_age_ms, 7 * 86_400_000);
        assert_eq!(limits.max_devices, 5);
        assert_eq!(limits.max_properties, IngestLimits::default().max_properties);
        let bad = "ingest: { dedup_window: soon, max_properties: 0, colour: red }\n";
        let errors = Settings::parse(bad, "s").unwrap_err().errors;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["ingest.colour", "ingest.dedup_window", "ingest.max_properties"]);
    }

    #[test]
    fn max_waiting_default_override_and_errors_name_the_field() {
        assert_eq!(Settings::parse("", "s").unwrap().max_waiting(), MaxWaiting::DEFAULT);
        let set = Settings::parse("limits: { max_waiting: 3 }\n", "s").unwrap();
        assert_eq!(set.max_waiting(), 3);
        let bad = "limits: { max_waiting: 0, queue: 1 }\n";
        let errors = Settings::parse(bad, "s").unwrap_err().errors;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["limits.queue", "limits.max_waiting"]);
    }

    #[test]
    fn occurrence_retention_defaults_to_the_gates_8_days_and_is_refused_below() {
        let retention =
            |text: &str| Settings::parse(text, "s").map(|s| s.occurrence_retention_ms());
        assert_eq!(retention("").unwrap(), 8 * DAY_MS);
        assert_eq!(retention("limits: { occurrence_retention: 30d }\n").unwrap(), 30 * DAY_MS);
        for bad in ["7d", "401d", "soon"] {
            let text = format!("limits: {{ occurrence_retention: {bad} }}\n");
            let paths: Vec<String> =
                retention(&text).unwrap_err().errors.into_iter().map(|e| e.path).collect();
            assert_eq!(paths, ["limits.occurrence_retention"], "{bad}");
        }
    }
}
