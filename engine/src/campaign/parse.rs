//! Parsing and validating campaign definitions. Every problem is collected with its field path
//! (`when.unless.within`, `who.all[2].between`) so a file is fixed in one pass.

use std::fmt;

use chrono::{DateTime, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use super::{
    recurrence::DEFAULT_GRACE_MS, AbTest, Action, Assignment, Behaviour, Cadence, Campaign,
    CampaignStatus, CarouselItem, CatchUp, Conversion, Dnd, DndAction, Filter, Inaction,
    InterruptionLevel, Limits, Message, Op, Options, Place, Priority, PropertyCondition,
    PushOptions, Recurrence, Scalar, Schedule, TestPopulation, Throttle, Trigger, UserLocal, When,
    WinnerBy, MAX_SHARDS,
};
use crate::model::Platform;

/// Most A/B variants a campaign may have.
pub const MAX_VARIANTS: usize = 3;
/// Most variants a campaign choosing them by a profile property (one per language) may have.
pub const MAX_CHOSEN_VARIANTS: usize = 100;
/// Longest duration accepted anywhere (windows, offsets, TTLs, intervals): ten years, so that
/// adding one to a timestamp stays far inside the accepted range of times.
pub const MAX_DURATION_MS: i64 = 3_660 * DAY_MS;
/// Longest look-back in days (`in_last_days`, `within_last_days`): ten years.
pub const MAX_DAYS: u64 = 3_660;
/// Days of event history the engine keeps unless configured otherwise (`in_last_days` default).
pub const DEFAULT_HISTORY_DAYS: u32 = 90;
/// Longest event history the engine can be configured to keep, days.
pub const MAX_HISTORY_DAYS: u32 = 400;
/// Largest count accepted (limits, test audiences, throttles): a trillion.
pub const MAX_COUNT: u64 = 1_000_000_000_000;
const DAY_MS: i64 = 86_400_000;
const DEVICE_FIELDS: &[&str] =
    &["platform", "app_version", "os_version", "make", "model", "sdk_version"];
const OPERATORS: &[&str] = &[
    "equals",
    "not_equals",
    "in",
    "not_in",
    "between",
    "gt",
    "gte",
    "lt",
    "lte",
    "exists",
    "not_exists",
    "contains",
    "starts_with",
    "before",
    "after",
    "within_last_days",
];

/// One problem in a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Field path, e.g. `when.unless.within` or `who.all[1].between`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Every problem found in one definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors {
    /// Where the definition came from (file name).
    pub source: String,
    /// The problems, in document order.
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.len();
        write!(f, "{}: {count} error{}", self.source, if count == 1 { "" } else { "s" })?;
        for error in &self.errors {
            write!(f, "\n  {}: {}", error.path, error.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Parses a YAML (or JSON, a subset of YAML) campaign definition; `source` names it in errors.
pub fn parse_campaign(text: &str, source: &str) -> Result<Campaign, ValidationErrors> {
    let fail = |errors| ValidationErrors { source: source.to_string(), errors };
    let document: Value = serde_norway::from_str(text)
        .map_err(|e| fail(vec![FieldError { path: "(document)".into(), reason: e.to_string() }]))?;
    let mut parser = Parser::default();
    let campaign = parser.campaign(&document);
    match campaign {
        Some(campaign) if parser.errors.is_empty() => Ok(campaign),
        _ => Err(fail(parser.errors)),
    }
}

/// Parses the filter of a saved segment (the `who` language without segment references).
pub(super) fn parse_segment_filter(value: &Value, path: &str) -> Result<Filter, Vec<FieldError>> {
    let mut parser = Parser { in_segment: true, ..Parser::default() };
    match parser.filter(value, path) {
        Some(filter) if parser.errors.is_empty() => Ok(filter),
        _ => Err(parser.errors),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[derive(Default)]
struct Parser {
    errors: Vec<FieldError>,
    /// Parsing a saved segment, which may not reference other segments.
    in_segment: bool,
}

impl Parser {
    fn error<T>(&mut self, path: impl Into<String>, reason: impl Into<String>) -> Option<T> {
        self.errors.push(FieldError { path: path.into(), reason: reason.into() });
        None
    }

    fn object<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(map) = value.as_object() else {
            return self.error(path, format!("expected a mapping, found {}", kind(value)));
        };
        for key in map.keys().filter(|k| !allowed.contains(&k.as_str())) {
            self.error::<()>(
                join(path, key),
                format!("unknown field; expected one of {}", allowed.join(", ")),
            );
        }
        Some(map)
    }

    fn required<'v>(
        &mut self,
        map: &'v Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<&'v Value> {
        match map.get(key) {
            Some(Value::Null) | None => self.error(join(path, key), "is required"),
            Some(value) => Some(value),
        }
    }

    fn text(&mut self, value: &Value, path: &str) -> Option<String> {
        match value {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::String(_) => self.error(path, "must not be empty"),
            other => self.error(path, format!("expected text, found {}", kind(other))),
        }
    }

    fn required_text(&mut self, map: &Map<String, Value>, key: &str, path: &str) -> Option<String> {
        let value = self.required(map, key, path)?;
        self.text(value, &join(path, key))
    }

    fn optional_text(&mut self, map: &Map<String, Value>, key: &str, path: &str) -> Option<String> {
        map.get(key).filter(|v| !v.is_null()).and_then(|v| self.text(v, &join(path, key)))
    }

    fn count(&mut self, value: &Value, path: &str) -> Option<u64> {
        match value.as_u64() {
            Some(n) if n > MAX_COUNT => self.error(path, format!("{n} is above {MAX_COUNT}")),
            Some(n) if n > 0 => Some(n),
            _ => self.error(path, format!("expected a positive whole number, found {value}")),
        }
    }

    /// A number of days back, at most [`MAX_DAYS`].
    fn days(&mut self, value: &Value, path: &str) -> Option<u32> {
        match self.count(value, path)? {
            days if days > MAX_DAYS => {
                self.error(path, format!("{days} days is more than {MAX_DAYS} (ten years)"))
            }
            days => u32::try_from(days).ok(),
        }
    }

    /// A whole number of occurrences, zero included.
    fn occurrences(&mut self, value: &Value, path: &str) -> Option<u32> {
        match value.as_u64().map(u32::try_from) {
            Some(Ok(n)) => Some(n),
            _ => self.error(
                path,
                format!("expected a whole number from 0 to {}, found {value}", u32::MAX),
            ),
        }
    }

    fn optional_count(&mut self, map: &Map<String, Value>, key: &str, path: &str) -> Option<u64> {
        map.get(key).filter(|v| !v.is_null()).and_then(|v| self.count(v, &join(path, key)))
    }

    fn number(&mut self, value: &Value, path: &str) -> Option<f64> {
        match value.as_f64() {
            Some(n) => Some(n),
            None => self.error(path, format!("expected a number, found {}", kind(value))),
        }
    }

    fn duration(&mut self, value: &Value, path: &str) -> Option<i64> {
        let text = self.text(value, path)?;
        match parse_duration(&text) {
            Ok(ms) => Some(ms),
            Err(reason) => self.error(path, reason),
        }
    }

    /// A duration above zero.
    fn positive_duration(&mut self, value: &Value, path: &str) -> Option<i64> {
        match self.duration(value, path)? {
            ms if ms <= 0 => self.error(path, "must be positive"),
            ms => Some(ms),
        }
    }

    fn timestamp(&mut self, value: &Value, path: &str) -> Option<DateTime<Utc>> {
        let text = self.text(value, path)?;
        match DateTime::parse_from_rfc3339(&text) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => self.error(
                path,
                format!("bad date-time {text:?} ({e}); use RFC 3339, e.g. 2026-11-26T10:00:00Z"),
            ),
        }
    }

    fn campaign(&mut self, document: &Value) -> Option<Campaign> {
        let fields = ["id", "app", "name", "status", "who", "when", "what", "limits", "options"];
        let map = self.object(document, "", &fields)?;
        let id = self.required_text(map, "id", "");
        if let Some(id) = &id {
            if !id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                self.error::<()>("id", "may contain only ASCII letters, digits, '.', '_' and '-'");
            }
        }
        let app = self.required_text(map, "app", "");
        let name = self.required_text(map, "name", "");
        let status = match map.get("status").map(|v| (v.as_str(), v)) {
            None => Some(CampaignStatus::Active),
            Some((Some("draft"), _)) => Some(CampaignStatus::Draft),
            Some((Some("active"), _)) => Some(CampaignStatus::Active),
            Some((Some("paused"), _)) => Some(CampaignStatus::Paused),
            Some((Some("stopped"), _)) => Some(CampaignStatus::Stopped),
            Some((_, other)) => self.error(
                "status",
                format!("unknown status {other}; expected draft, active, paused or stopped"),
            ),
        };
        let who = match map.get("who") {
            None | Some(Value::Null) => Some(Filter::All(Vec::new())),
            Some(value) => self.filter(value, "who"),
        };
        // A calendar schedule's timezone defaults to the campaign's (checked with the options).
        let timezone = map
            .get("options")
            .and_then(|options| options.get("timezone"))
            .and_then(Value::as_str)
            .and_then(|name| name.parse::<Tz>().ok());
        let when = self.required(map, "when", "").and_then(|v| self.when(v, timezone));
        let what = self.required(map, "what", "").and_then(|v| self.what(v));
        let limits = match map.get("limits") {
            None | Some(Value::Null) => Some(Limits::default()),
            Some(value) => self.limits(value),
        };
        let options = self.options(map.get("options").unwrap_or(&Value::Null));
        let (what, assignment) = what?;
        let scheduled = matches!(&when, Some(When { trigger: Trigger::Scheduled(_), .. }));
        if let Assignment::AbTest(AbTest { test_audience: TestPopulation::Percent(_), .. }) =
            &assignment
        {
            if !scheduled {
                self.error::<()>(
                    "what.ab.test_audience",
                    "a percentage needs a scheduled campaign (a triggered one has no known reach)",
                );
            }
        }
        if let Some(limits) = &limits {
            if !scheduled && (limits.per_run.is_some() || limits.safety.is_some()) {
                self.error::<()>("limits", "per_run and safety apply to scheduled campaigns");
            }
        }
        let mut profile_variables: std::collections::BTreeSet<String> =
            what.iter().flat_map(Message::profile_variables).collect();
        if let Assignment::ByProperty(property) = &assignment {
            profile_variables.insert(property.clone());
        }
        Some(Campaign {
            id: id?,
            app: app?,
            name: name?,
            status: status?,
            who: who?,
            when: when?,
            what,
            assignment,
            limits: limits?,
            options: options?,
            profile_variables,
        })
    }

    fn filter(&mut self, value: &Value, path: &str) -> Option<Filter> {
        let Some(map) = value.as_object() else {
            return self.error(path, format!("expected a filter mapping, found {}", kind(value)));
        };
        if let Some(list) = map.get("all").or_else(|| map.get("any")) {
            let all = map.contains_key("all");
            let key = if all { "all" } else { "any" };
            self.object(value, path, &[key])?;
            let Some(items) = list.as_array() else {
                return self.error(join(path, key), "expected a list of filters");
            };
            let filters: Vec<Option<Filter>> = items
                .iter()
                .enumerate()
                .map(|(i, item)| self.filter(item, &format!("{}[{i}]", join(path, key))))
                .collect();
            let filters: Option<Vec<Filter>> = filters.into_iter().collect();
            return filters.map(|f| if all { Filter::All(f) } else { Filter::Any(f) });
        }
        if let Some(inner) = map.get("not") {
            self.object(value, path, &["not"])?;
            return self.filter(inner, &join(path, "not")).map(|f| Filter::Not(Box::new(f)));
        }
        if let Some(places) = map.get("near") {
            self.object(value, path, &["near"])?;
            return self.places(places, &join(path, "near")).map(Filter::Near);
        }
        if let Some(segment) = map.get("segment") {
            self.object(value, path, &["segment"])?;
            return self.segment_reference(segment, &join(path, "segment"));
        }
        if map.contains_key("did") || map.contains_key("did_not") {
            return self.behaviour(map, path).map(Filter::Behaviour);
        }
        if let Some(field) = map.get("device") {
            let condition = self.condition(map, path, "device")?;
            let name = field.as_str().unwrap_or_default();
            if !DEVICE_FIELDS.contains(&name) {
                return self.error(
                    join(path, "device"),
                    format!(
                        "unknown device field {field}; expected one of {}",
                        DEVICE_FIELDS.join(", ")
                    ),
                );
            }
            return Some(Filter::Device(condition));
        }
        if map.contains_key("property") {
            return self.condition(map, path, "property").map(Filter::Property);
        }
        self.error(
            path,
            "expected one of all, any, not, property, device, near, did, did_not, segment",
        )
    }

    /// `segment: <id>` or `segment: [<id>, ...]` (users in every one of them).
    fn segment_reference(&mut self, value: &Value, path: &str) -> Option<Filter> {
        if self.in_segment {
            return self.error(path, "a saved segment cannot reference another segment");
        }
        let ids = match value {
            Value::Array(_) => self.list(value, path, |parser, item, path| parser.text(item, path)),
            single => self.text(single, path).map(|id| vec![id]),
        }?;
        match ids.as_slice() {
            [] => self.error(path, "needs at least one segment id"),
            [id] => Some(Filter::Segment(id.clone())),
            _ => Some(Filter::All(ids.into_iter().map(Filter::Segment).collect())),
        }
    }

    /// `{<subject_key>: name, <operator>: value}`.
    fn condition(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        subject_key: &str,
    ) -> Option<PropertyCondition> {
        let property = self.required_text(map, subject_key, path);
        let operators: Vec<(&String, &Value)> =
            map.iter().filter(|(k, _)| k.as_str() != subject_key).collect();
        let mut op = None;
        match operators.as_slice() {
            [] => {
                self.error::<()>(
                    path,
                    format!("needs an operator: one of {}", OPERATORS.join(", ")),
                );
            }
            [(name, value)] => op = self.operator(name, value, &join(path, name)),
            _ => {
                for (name, _) in &operators[1..] {
                    self.error::<()>(join(path, name), "a condition takes exactly one operator");
                }
            }
        }
        Some(PropertyCondition { property: property?, op: op? })
    }

    fn scalar(&mut self, value: &Value, path: &str) -> Option<Scalar> {
        match value {
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::Number(n) => n.as_f64().map(Scalar::Number),
            Value::String(s) => Some(Scalar::Text(s.clone())),
            other => self.error(
                path,
                format!("expected text, a number or true/false, found {}", kind(other)),
            ),
        }
    }

    fn scalars(&mut self, value: &Value, path: &str) -> Option<Vec<Scalar>> {
        let Some(items) = value.as_array().filter(|items| !items.is_empty()) else {
            return self.error(path, "expected a non-empty list");
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| self.scalar(v, &format!("{path}[{i}]")))
            .collect::<Vec<_>>()
            .into_iter()
            .collect()
    }

    fn operator(&mut self, name: &str, value: &Value, path: &str) -> Option<Op> {
        let flag = |parser: &mut Self, op: Op| match value {
            Value::Bool(true) => Some(op),
            _ => parser.error(path, "expected true"),
        };
        match name {
            "equals" => self.scalar(value, path).map(Op::Equals),
            "not_equals" => self.scalar(value, path).map(Op::NotEquals),
            "in" => self.scalars(value, path).map(Op::In),
            "not_in" => self.scalars(value, path).map(Op::NotIn),
            "between" => match value.as_array().map(Vec::as_slice) {
                Some([low, high]) => {
                    let (low, high) = (
                        self.number(low, &format!("{path}[0]"))?,
                        self.number(high, &format!("{path}[1]"))?,
                    );
                    if low > high {
                        return self
                            .error(path, format!("low bound {low} is above high bound {high}"));
                    }
                    Some(Op::Between(low, high))
                }
                _ => self.error(path, "expected [low, high]"),
            },
            "gt" => self.number(value, path).map(Op::Gt),
            "gte" => self.number(value, path).map(Op::Gte),
            "lt" => self.number(value, path).map(Op::Lt),
            "lte" => self.number(value, path).map(Op::Lte),
            "exists" => flag(self, Op::Exists),
            "not_exists" => flag(self, Op::NotExists),
            "contains" => self.text(value, path).map(Op::Contains),
            "starts_with" => self.text(value, path).map(Op::StartsWith),
            "before" => self.timestamp(value, path).map(Op::Before),
            "after" => self.timestamp(value, path).map(Op::After),
            "within_last_days" => self.days(value, path).map(Op::WithinLastDays),
            other => self.error(
                path,
                format!(
                    "unknown property operator {other:?}; expected one of {}",
                    OPERATORS.join(", ")
                ),
            ),
        }
    }

    fn conditions(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
    ) -> Option<Vec<PropertyCondition>> {
        let Some(list) = map.get("where").filter(|v| !v.is_null()) else {
            return Some(Vec::new());
        };
        let path = join(path, "where");
        let Some(items) = list.as_array() else {
            return self.error(path, "expected a list of property conditions");
        };
        let parsed: Vec<Option<PropertyCondition>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let item_path = format!("{path}[{i}]");
                let map = self.object(item, &item_path, &[&["property"], OPERATORS].concat())?;
                self.condition(map, &item_path, "property")
            })
            .collect();
        parsed.into_iter().collect()
    }

    fn places(&mut self, value: &Value, path: &str) -> Option<Vec<Place>> {
        let Some(items) = value.as_array().filter(|items| !items.is_empty()) else {
            return self.error(path, "expected a non-empty list of {lat, lon, radius_km}");
        };
        let parsed: Vec<Option<Place>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let item_path = format!("{path}[{i}]");
                let map = self.object(item, &item_path, &["name", "lat", "lon", "radius_km"])?;
                let lat = self
                    .required(map, "lat", &item_path)
                    .and_then(|v| self.number(v, &join(&item_path, "lat")));
                let lon = self
                    .required(map, "lon", &item_path)
                    .and_then(|v| self.number(v, &join(&item_path, "lon")));
                let radius = self
                    .required(map, "radius_km", &item_path)
                    .and_then(|v| self.number(v, &join(&item_path, "radius_km")));
                if lat.is_some_and(|l| !(-90.0..=90.0).contains(&l)) {
                    return self.error(join(&item_path, "lat"), "must be between -90 and 90");
                }
                if lon.is_some_and(|l| !(-180.0..=180.0).contains(&l)) {
                    return self.error(join(&item_path, "lon"), "must be between -180 and 180");
                }
                if radius.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                    return self.error(join(&item_path, "radius_km"), "must be positive");
                }
                Some(Place { lat: lat?, lon: lon?, radius_km: radius? })
            })
            .collect();
        parsed.into_iter().collect()
    }

    fn behaviour(&mut self, map: &Map<String, Value>, path: &str) -> Option<Behaviour> {
        let did = map.contains_key("did");
        let key = if did { "did" } else { "did_not" };
        let allowed: &[&str] = if did {
            &[
                "did",
                "at_least",
                "at_most",
                "in_last_days",
                "where",
                "first_before",
                "first_after",
                "last_before",
                "last_after",
            ]
        } else {
            &["did_not", "in_last_days", "where"]
        };
        self.object(&Value::Object(map.clone()), path, allowed)?;
        let event = self.required_text(map, key, path);
        let days = match map.get("in_last_days") {
            None => Some(DEFAULT_HISTORY_DAYS),
            Some(v) => match self.days(v, &join(path, "in_last_days")) {
                Some(days) if days > MAX_HISTORY_DAYS => self.error(
                    join(path, "in_last_days"),
                    format!(
                        "{days} days is more than the longest history kept ({MAX_HISTORY_DAYS})"
                    ),
                ),
                other => other,
            },
        };
        let at_least = match map.get("at_least").filter(|_| did) {
            None => Some(if did { 1 } else { 0 }),
            Some(v) => match self.occurrences(v, &join(path, "at_least")) {
                Some(0) => self.error(join(path, "at_least"), "must be positive"),
                other => other,
            },
        };
        let at_most = if did {
            map.get("at_most").and_then(|v| self.occurrences(v, &join(path, "at_most")))
        } else {
            Some(0)
        };
        if let (Some(least), Some(most)) = (at_least, at_most) {
            if most < least {
                return self.error(join(path, "at_most"), format!("is below at_least ({least})"));
            }
        }
        let conditions = self.conditions(map, path);
        let moment = |parser: &mut Self, which: &str| -> Option<Option<Op>> {
            let before = map
                .get(&format!("{which}_before"))
                .map(|v| parser.timestamp(v, &join(path, &format!("{which}_before"))));
            let after = map
                .get(&format!("{which}_after"))
                .map(|v| parser.timestamp(v, &join(path, &format!("{which}_after"))));
            match (before, after) {
                (Some(_), Some(_)) => {
                    parser.error(path, format!("use {which}_before or {which}_after, not both"))
                }
                (Some(before), None) => Some(Some(Op::Before(before?))),
                (None, Some(after)) => Some(Some(Op::After(after?))),
                (None, None) => Some(None),
            }
        };
        let first = moment(self, "first");
        let last = moment(self, "last");
        Some(Behaviour {
            event: event?,
            at_least: at_least?,
            at_most,
            in_last_days: days?,
            conditions: conditions?,
            first: first?,
            last: last?,
        })
    }

    /// `when`; `timezone` is the campaign's (`options.timezone`), a calendar schedule's default.
    fn when(&mut self, value: &Value, timezone: Option<Tz>) -> Option<When> {
        let map = self.object(
            value,
            "when",
            &["event", "where", "unless", "reminder", "schedule", "start", "end"],
        )?;
        let triggers: Vec<&str> = ["event", "reminder", "schedule"]
            .into_iter()
            .filter(|key| map.contains_key(*key))
            .collect();
        let trigger = match triggers.as_slice() {
            [] => self.error("when", "needs a trigger: event, reminder or schedule"),
            ["event"] => self.event_trigger(map),
            [other] => {
                if map.contains_key("where") || map.contains_key("unless") {
                    self.error::<()>(
                        "when",
                        format!("where and unless apply to event triggers, not to {other}"),
                    );
                }
                match *other {
                    "reminder" => self.reminder(&map["reminder"]),
                    _ => self.schedule(&map["schedule"], timezone),
                }
            }
            several => self.error(
                "when",
                format!("has {}; a campaign has one trigger", several.join(" and ")),
            ),
        };
        let start =
            map.get("start").filter(|v| !v.is_null()).map(|v| self.timestamp(v, "when.start"));
        let end = map.get("end").filter(|v| !v.is_null()).map(|v| self.timestamp(v, "when.end"));
        if let (Some(Some(start)), Some(Some(end))) = (start, end) {
            if end <= start {
                self.error::<()>("when.end", format!("{end} is not after when.start ({start})"));
            }
        }
        Some(When { trigger: trigger?, start: start.flatten(), end: end.flatten() })
    }

    fn event_trigger(&mut self, map: &Map<String, Value>) -> Option<Trigger> {
        let event = self.required_text(map, "event", "when");
        let conditions = self.conditions(map, "when");
        let unless = match map.get("unless") {
            None | Some(Value::Null) => Some(None),
            Some(value) => self.inaction(value).map(Some),
        };
        Some(Trigger::Event { event: event?, conditions: conditions?, unless: unless? })
    }

    fn inaction(&mut self, value: &Value) -> Option<Inaction> {
        let map = self.object(value, "when.unless", &["event", "within"])?;
        let event = self.required_text(map, "event", "when.unless");
        let within = self
            .required(map, "within", "when.unless")
            .and_then(|v| self.positive_duration(v, "when.unless.within"));
        Some(Inaction { event: event?, within_ms: within? })
    }

    fn reminder(&mut self, value: &Value) -> Option<Trigger> {
        let map = self.object(value, "when.reminder", &["event", "date_property", "offset"])?;
        let event = self.required_text(map, "event", "when.reminder");
        let property = self.required_text(map, "date_property", "when.reminder");
        let offset = self
            .required(map, "offset", "when.reminder")
            .and_then(|v| self.duration(v, "when.reminder.offset"));
        Some(Trigger::DateReminder { event: event?, property: property?, offset_ms: offset? })
    }

    /// `schedule`: fixed times (`at`, optionally `every` after the last), or a calendar
    /// recurrence (`repeat`); either with a catch-up policy for runs missed while down.
    fn schedule(&mut self, value: &Value, timezone: Option<Tz>) -> Option<Trigger> {
        const PATH: &str = "when.schedule";
        const CALENDAR: &[&str] = &["repeat", "days", "day", "hours", "time", "timezone", "until"];
        let map = self.object(
            value,
            PATH,
            &[
                "at", "every", "catch_up", "grace", "repeat", "days", "day", "hours", "time",
                "timezone", "until",
            ],
        )?;
        let given = |key: &str| map.get(key).is_some_and(|v| !v.is_null());
        let catch_up = self.catch_up(map);
        let (at_ms, every_ms, calendar, user_local) = if given("repeat") {
            if given("at") || given("every") {
                return self.error(PATH, "has at/every and repeat; use one form");
            }
            let (calendar, user_local) = self.recurrence(map, timezone)?;
            (Vec::new(), None, Some(calendar), user_local)
        } else {
            for key in CALENDAR.iter().filter(|key| given(key)) {
                self.error::<()>(join(PATH, key), "applies to a calendar schedule (repeat)");
            }
            let (at_ms, every_ms) = self.fixed_times(map)?;
            (at_ms, every_ms, None, None)
        };
        let catch_up = catch_up?;
        Some(Trigger::Scheduled(Schedule { at_ms, every_ms, calendar, catch_up, user_local }))
    }

    /// `at: <time or list of times>, every: <duration>`.
    fn fixed_times(&mut self, map: &Map<String, Value>) -> Option<(Vec<i64>, Option<i64>)> {
        let at = self.required(map, "at", "when.schedule")?;
        let times = match at {
            Value::Array(_) => {
                self.list(at, "when.schedule.at", |parser, item, path| parser.timestamp(item, path))
            }
            single => self.timestamp(single, "when.schedule.at").map(|t| vec![t]),
        };
        let mut at_ms: Vec<i64> = times?.iter().map(DateTime::timestamp_millis).collect();
        if at_ms.is_empty() {
            return self.error("when.schedule.at", "needs at least one run time");
        }
        at_ms.sort_unstable();
        if at_ms.windows(2).any(|w| w[0] == w[1]) {
            return self.error("when.schedule.at", "lists the same run time twice");
        }
        let every = match map.get("every").filter(|v| !v.is_null()) {
            None => Some(None),
            Some(v) => match self.duration(v, "when.schedule.every") {
                Some(ms) if ms < 60_000 => {
                    self.error("when.schedule.every", "must be at least one minute")
                }
                other => other.map(Some),
            },
        };
        Some((at_ms, every?))
    }

    /// `repeat: daily|weekly|monthly|hourly` with `days`, `day` or `hours`, at `time` in
    /// `timezone` (default: the campaign's, else UTC; `user`: each user's, with an optional
    /// cut-off `until`).
    fn recurrence(
        &mut self,
        map: &Map<String, Value>,
        timezone: Option<Tz>,
    ) -> Option<(Recurrence, Option<UserLocal>)> {
        const PATH: &str = "when.schedule";
        let repeat = self.required_text(map, "repeat", PATH)?;
        let needs = |parser: &mut Self, key: &str| parser.required(map, key, PATH);
        let cadence = match repeat.as_str() {
            "daily" => Some(Cadence::Daily),
            "weekly" => needs(self, "days").and_then(|v| self.weekdays(v)).map(Cadence::Weekly),
            "monthly" => needs(self, "day")
                .and_then(|v| self.bounded(v, "when.schedule.day", 31))
                .map(Cadence::Monthly),
            "hourly" => needs(self, "hours")
                .and_then(|v| self.bounded(v, "when.schedule.hours", 23))
                .map(Cadence::Hourly),
            other => self.error(
                "when.schedule.repeat",
                format!("unknown repeat {other:?}; expected daily, weekly, monthly or hourly"),
            ),
        };
        let unused = match repeat.as_str() {
            "daily" => &["days", "day", "hours"][..],
            "weekly" => &["day", "hours"][..],
            "monthly" => &["days", "hours"][..],
            _ => &["days", "day"][..],
        };
        for key in unused.iter().filter(|key| map.get(**key).is_some_and(|v| !v.is_null())) {
            self.error::<()>(join(PATH, key), format!("does not apply to repeat: {repeat}"));
        }
        let time = match map.get("time").filter(|v| !v.is_null()) {
            // Every few hours counts from midnight unless told otherwise.
            None if repeat == "hourly" => Some(NaiveTime::MIN),
            None => self.error("when.schedule.time", "is required (a local time, e.g. 09:00)"),
            Some(v) => self.time_of_day(v, "when.schedule.time"),
        };
        let zone = map.get("timezone").filter(|v| !v.is_null());
        let user_local = zone.is_some_and(|v| v.as_str() == Some("user"));
        let best = zone.is_some_and(|v| v.as_str() == Some("best"));
        if best && repeat == "hourly" {
            self.error::<()>("when.schedule.timezone", "best applies to daily, weekly and monthly");
        }
        let until = match map.get("until").filter(|v| !v.is_null()) {
            None => Some(None),
            Some(_) if !user_local => {
                self.error("when.schedule.until", "applies to timezone: user")
            }
            Some(v) => match (self.time_of_day(v, "when.schedule.until"), time) {
                (Some(until), Some(time)) if until <= time => self.error(
                    "when.schedule.until",
                    format!("{until} is not after the time of day ({time})"),
                ),
                (until, _) => until.map(Some),
            },
        };
        let timezone = match zone {
            None => Some(timezone.unwrap_or(Tz::UTC)),
            Some(_) if user_local || best => Some(UserLocal::RUN_ZONE),
            Some(v) => self.timezone(v, "when.schedule.timezone"),
        };
        let (time, until) = (time?, until?);
        let (run_time, local) = match (user_local, best) {
            (true, _) => (time, Some(UserLocal::RunTime { until })),
            // Runs start at midnight in UTC+14: every user's hour of the run's date is to come.
            (_, true) => (NaiveTime::MIN, Some(UserLocal::BestHour { fallback: time })),
            _ => (time, None),
        };
        let recurrence = Recurrence { cadence: cadence?, time: run_time, timezone: timezone? };
        Some((recurrence, local))
    }

    /// `catch_up: once|skip` and `grace: <duration>` (with `once` only; default a day).
    fn catch_up(&mut self, map: &Map<String, Value>) -> Option<CatchUp> {
        let grace = match map.get("grace").filter(|v| !v.is_null()) {
            None => Some(DEFAULT_GRACE_MS),
            Some(v) => self.positive_duration(v, "when.schedule.grace"),
        };
        match map.get("catch_up").filter(|v| !v.is_null()).map(|v| (v.as_str(), v)) {
            None | Some((Some("once"), _)) => Some(CatchUp::Once { grace_ms: grace? }),
            Some((Some("skip"), _)) if map.get("grace").is_some_and(|v| !v.is_null()) => {
                self.error("when.schedule.grace", "applies to catch_up: once")
            }
            Some((Some("skip"), _)) => Some(CatchUp::Skip),
            Some((_, other)) => self.error(
                "when.schedule.catch_up",
                format!("unknown catch_up {other}; expected once or skip"),
            ),
        }
    }

    /// A non-empty list of distinct weekdays (`mon`, `tuesday`...).
    fn weekdays(&mut self, value: &Value) -> Option<Vec<Weekday>> {
        let days = self.list(value, "when.schedule.days", |parser, item, path| {
            let name = parser.text(item, path)?;
            match name.parse::<Weekday>() {
                Ok(day) => Some(day),
                Err(_) => parser.error(path, format!("unknown weekday {name:?}; use mon..sun")),
            }
        })?;
        if days.is_empty() {
            return self.error("when.schedule.days", "needs at least one weekday");
        }
        if days.iter().enumerate().any(|(i, day)| days[..i].contains(day)) {
            return self.error("when.schedule.days", "lists the same weekday twice");
        }
        Some(days)
    }

    /// A whole number from 1 to `max`.
    fn bounded(&mut self, value: &Value, path: &str, max: u32) -> Option<u32> {
        match value.as_u64().map(u32::try_from) {
            Some(Ok(n)) if (1..=max).contains(&n) => Some(n),
            _ => {
                self.error(path, format!("expected a whole number from 1 to {max}, found {value}"))
            }
        }
    }

    /// A local time of day, `HH:MM` or `HH:MM:SS`.
    fn time_of_day(&mut self, value: &Value, path: &str) -> Option<NaiveTime> {
        let text = self.text(value, path)?;
        NaiveTime::parse_from_str(&text, "%H:%M")
            .or_else(|_| NaiveTime::parse_from_str(&text, "%H:%M:%S"))
            .ok()
            .or_else(|| {
                self.error(path, format!("bad time of day {text:?}; use HH:MM, e.g. 21:00"))
            })
    }

    /// An IANA timezone name.
    fn timezone(&mut self, value: &Value, path: &str) -> Option<Tz> {
        let name = self.text(value, path)?;
        match name.as_str() {
            "user" | "best" => self.error(
                path,
                format!("timezone: {name} applies to a calendar schedule (when.schedule.repeat)"),
            ),
            _ => name.parse().ok().or_else(|| {
                self.error(
                    path,
                    format!("unknown timezone {name:?}; use an IANA name such as Europe/Paris"),
                )
            }),
        }
    }

    /// A test audience: a whole number of users, or a percentage (`"15%"`) of a run's reach.
    fn test_population(&mut self, value: &Value, path: &str) -> Option<TestPopulation> {
        if let Some(text) = value.as_str() {
            let percent = text.trim().strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok());
            return match percent {
                Some(p) if p > 0.0 && p <= 100.0 => Some(TestPopulation::Percent(p)),
                _ => self.error(
                    path,
                    format!(
                        "expected a number of users or a percentage like \"15%\", found {text:?}"
                    ),
                ),
            };
        }
        self.count(value, path).map(TestPopulation::Users)
    }

    fn what(&mut self, value: &Value) -> Option<(Vec<Message>, Assignment)> {
        let message_fields = ["id", "title", "body", "subtitle", "deep_link", "image_url", "push"];
        let map = value.as_object();
        if let Some(variants) = map.and_then(|m| m.get("variants")) {
            let what = self.object(value, "what", &["variants", "ab", "split", "choose_by"])?;
            let Some(items) = variants.as_array().filter(|v| !v.is_empty()) else {
                return self.error("what.variants", "expected a non-empty list of messages");
            };
            let (most, rule) = if what.contains_key("choose_by") {
                (MAX_CHOSEN_VARIANTS, format!("choose_by takes at most {MAX_CHOSEN_VARIANTS}"))
            } else {
                let rule = format!(
                    "an A/B test has at most {MAX_VARIANTS} (choose_by takes one per language, \
                     up to {MAX_CHOSEN_VARIANTS})"
                );
                (MAX_VARIANTS, rule)
            };
            if items.len() > most {
                self.error::<()>("what.variants", format!("has {} variants; {rule}", items.len()));
            }
            let parsed: Vec<Option<Message>> = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let path = format!("what.variants[{i}]");
                    let default_id = default_variant_id(i);
                    self.object(item, &path, &message_fields)
                        .and_then(|m| self.message(m, &path, default_id))
                })
                .collect();
            let assignment = self.assignment(what, items.len());
            let messages: Vec<Message> = parsed.into_iter().collect::<Option<_>>()?;
            let mut ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
            ids.sort_unstable();
            if ids.windows(2).any(|w| w[0] == w[1]) {
                return self.error("what.variants", "variant ids must be unique");
            }
            return Some((messages, assignment?));
        }
        let map = self.object(value, "what", &message_fields)?;
        self.message(map, "what", "A".into()).map(|m| (vec![m], Assignment::Single))
    }

    /// How users are spread over `variants`: `ab` (test, then the winner), `split` (fixed
    /// percentages) or, by default, strict alternation.
    fn assignment(&mut self, what: &Map<String, Value>, variants: usize) -> Option<Assignment> {
        if let Some(property) = what.get("choose_by") {
            if what.contains_key("ab") || what.contains_key("split") {
                return self.error("what.choose_by", "chooses variants itself: drop ab and split");
            }
            return self.text(property, "what.choose_by").map(Assignment::ByProperty);
        }
        match (what.get("ab"), what.get("split")) {
            (Some(_), Some(_)) => self.error("what", "use ab or split, not both"),
            (None, None) if variants == 1 => Some(Assignment::Single),
            (None, None) => Some(Assignment::Alternate),
            (Some(ab), None) => {
                let map =
                    self.object(ab, "what.ab", &["test_audience", "evaluate_after", "winner_by"])?;
                let audience = self
                    .required(map, "test_audience", "what.ab")
                    .and_then(|v| self.test_population(v, "what.ab.test_audience"));
                let after = self
                    .required(map, "evaluate_after", "what.ab")
                    .and_then(|v| self.positive_duration(v, "what.ab.evaluate_after"));
                let winner_by = match map.get("winner_by").and_then(Value::as_str) {
                    None | Some("clicks") => Some(WinnerBy::Clicks),
                    Some("ctr") => Some(WinnerBy::ClickThroughRate),
                    Some(other) => self.error(
                        "what.ab.winner_by",
                        format!("unknown rule {other:?}; expected clicks or ctr"),
                    ),
                };
                Some(Assignment::AbTest(AbTest {
                    test_audience: audience?,
                    evaluate_after_ms: after?,
                    winner_by: winner_by?,
                }))
            }
            (None, Some(split)) => {
                let shares = self.list(split, "what.split", |parser, item, path| {
                    match item.as_u64().and_then(|n| u32::try_from(n).ok()) {
                        Some(n @ 1..=100) => Some(n),
                        _ => parser.error(
                            path,
                            format!("expected a percentage from 1 to 100, found {item}"),
                        ),
                    }
                })?;
                if shares.len() != variants {
                    return self.error(
                        "what.split",
                        format!("has {} shares for {variants} variants", shares.len()),
                    );
                }
                if shares.iter().sum::<u32>() != 100 {
                    return self.error("what.split", "shares must add up to 100");
                }
                Some(Assignment::Split(shares))
            }
        }
    }

    fn message(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        default_id: String,
    ) -> Option<Message> {
        let id = self.optional_text(map, "id", path).unwrap_or(default_id);
        let template = |parser: &mut Self, key: &str, required: bool| -> Option<Option<String>> {
            let text = if required {
                parser.required_text(map, key, path).map(Some)
            } else {
                Some(parser.optional_text(map, key, path))
            };
            if let Some(Some(source)) = &text {
                if let Err(error) = crate::render::check_template(source) {
                    return parser
                        .error(join(path, key), format!("template syntax error: {error}"));
                }
            }
            text
        };
        let title = template(self, "title", true);
        let body = template(self, "body", true);
        let subtitle = template(self, "subtitle", false);
        let deep_link = template(self, "deep_link", false);
        let image_url = template(self, "image_url", false);
        let push = match map.get("push") {
            None | Some(Value::Null) => Some(PushOptions::default()),
            Some(value) => self.push_options(value, &join(path, "push")),
        };
        Some(Message {
            id,
            title: title??,
            body: body??,
            subtitle: subtitle?,
            deep_link: deep_link?,
            image_url: image_url?,
            push: push?,
        })
    }

    fn flag(&mut self, map: &Map<String, Value>, key: &str, path: &str) -> Option<bool> {
        match map.get(key) {
            None => Some(false),
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.error(join(path, key), format!("expected true or false, found {other}"))
            }
        }
    }

    fn push_options(&mut self, value: &Value, path: &str) -> Option<PushOptions> {
        let fields = [
            "sound",
            "badge",
            "category",
            "thread_id",
            "mutable_content",
            "silent",
            "interruption_level",
            "collapse_id",
            "ttl",
            "priority",
            "channel_id",
            "click_action",
            "video_url",
            "carousel",
            "actions",
            "external_url",
            "data",
        ];
        let map = self.object(value, path, &fields)?;
        let badge = match map.get("badge") {
            None => Some(None),
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Some(Some(n)),
                None => {
                    self.error(join(path, "badge"), format!("expected a whole number, found {v}"))
                }
            },
        };
        let interruption_level = match map.get("interruption_level").map(|v| (v.as_str(), v)) {
            None => Some(None),
            Some((Some("passive"), _)) => Some(Some(InterruptionLevel::Passive)),
            Some((Some("active"), _)) => Some(Some(InterruptionLevel::Active)),
            Some((Some("time-sensitive"), _)) => Some(Some(InterruptionLevel::TimeSensitive)),
            Some((Some("critical"), _)) => Some(Some(InterruptionLevel::Critical)),
            Some((_, other)) => self.error(
                join(path, "interruption_level"),
                format!(
                    "unknown level {other}; expected passive, active, time-sensitive or critical"
                ),
            ),
        };
        let collapse_id = self.optional_text(map, "collapse_id", path);
        if collapse_id.as_ref().is_some_and(|id| id.len() > 64) {
            self.error::<()>(join(path, "collapse_id"), "is longer than 64 bytes (the APNs limit)");
        }
        let ttl = map.get("ttl").map(|v| self.positive_duration(v, &join(path, "ttl")));
        let priority = match map.get("priority").map(|v| (v.as_str(), v)) {
            None => Some(Priority::Default),
            Some((Some("max"), _)) => Some(Priority::Max),
            Some((Some("high"), _)) => Some(Priority::High),
            Some((Some("default"), _)) => Some(Priority::Default),
            Some((_, other)) => self.error(
                join(path, "priority"),
                format!("unknown priority {other}; expected max, high or default"),
            ),
        };
        let carousel = match map.get("carousel") {
            None => Some(Vec::new()),
            Some(value) => self.list(value, &join(path, "carousel"), |parser, item, item_path| {
                let card = parser.object(
                    item,
                    item_path,
                    &["image_url", "caption", "sub_caption", "link"],
                )?;
                let image_url = parser.required_text(card, "image_url", item_path);
                Some(CarouselItem {
                    image_url: image_url?,
                    caption: parser.optional_text(card, "caption", item_path),
                    sub_caption: parser.optional_text(card, "sub_caption", item_path),
                    link: parser.optional_text(card, "link", item_path),
                })
            }),
        };
        let actions = match map.get("actions") {
            None => Some(Vec::new()),
            Some(value) => self.list(value, &join(path, "actions"), |parser, item, item_path| {
                let action = parser.object(item, item_path, &["id", "title", "link"])?;
                let id = parser.required_text(action, "id", item_path);
                let title = parser.required_text(action, "title", item_path);
                Some(Action {
                    id: id?,
                    title: title?,
                    link: parser.optional_text(action, "link", item_path),
                })
            }),
        };
        if actions.as_ref().is_some_and(|a| a.len() > 4) {
            self.error::<()>(
                join(path, "actions"),
                "has more than 4 actions (the iOS category limit)",
            );
        }
        let data = match map.get("data") {
            None => Some(Default::default()),
            Some(Value::Object(entries)) => entries
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Some((k.clone(), s.clone())),
                    other => Some((k.clone(), other.to_string())),
                })
                .collect(),
            Some(other) => {
                self.error(join(path, "data"), format!("expected a mapping, found {}", kind(other)))
            }
        };
        let mutable_content = self.flag(map, "mutable_content", path);
        let silent = self.flag(map, "silent", path);
        Some(PushOptions {
            sound: self.optional_text(map, "sound", path),
            badge: badge?,
            category: self.optional_text(map, "category", path),
            thread_id: self.optional_text(map, "thread_id", path),
            mutable_content: mutable_content?,
            silent: silent?,
            interruption_level: interruption_level?,
            collapse_id,
            ttl_ms: ttl.flatten(),
            priority: priority?,
            channel_id: self.optional_text(map, "channel_id", path),
            click_action: self.optional_text(map, "click_action", path),
            video_url: self.optional_text(map, "video_url", path),
            carousel: carousel?,
            actions: actions?,
            external_url: self.optional_text(map, "external_url", path),
            data: data?,
        })
    }

    /// Parses every item of a list with `item`, reporting `path[i]` paths.
    fn list<T>(
        &mut self,
        value: &Value,
        path: &str,
        mut item: impl FnMut(&mut Self, &Value, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Some(items) = value.as_array() else {
            return self.error(path, format!("expected a list, found {}", kind(value)));
        };
        let parsed: Vec<Option<T>> =
            items.iter().enumerate().map(|(i, v)| item(self, v, &format!("{path}[{i}]"))).collect();
        parsed.into_iter().collect()
    }

    fn limits(&mut self, value: &Value) -> Option<Limits> {
        let map = self.object(value, "limits", &["total", "daily", "per_run", "safety"])?;
        Some(Limits {
            total: self.optional_count(map, "total", "limits"),
            daily: self.optional_count(map, "daily", "limits"),
            per_run: self.optional_count(map, "per_run", "limits"),
            safety: self.optional_count(map, "safety", "limits"),
        })
    }

    fn options(&mut self, value: &Value) -> Option<Options> {
        let empty = Map::new();
        let map = match value {
            Value::Null => &empty,
            other => self.object(
                other,
                "options",
                &[
                    "ignore_global_caps",
                    "throttle",
                    "dnd",
                    "sample_percent",
                    "platforms",
                    "conversion",
                    "timezone",
                    "shards",
                ],
            )?,
        };
        let ignore_global_caps = match map.get("ignore_global_caps") {
            None => Some(false),
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => self.error(
                "options.ignore_global_caps",
                format!("expected true or false, found {other}"),
            ),
        };
        let dnd = match map.get("dnd") {
            None | Some(Value::Null) => Some(None),
            Some(value) => self.dnd(value).map(Some),
        };
        let sample_percent = match map.get("sample_percent") {
            None => Some(100.0),
            Some(v) => match v.as_f64() {
                Some(p) if p > 0.0 && p <= 100.0 => Some(p),
                _ => self.error(
                    "options.sample_percent",
                    format!("expected a percentage above 0 and at most 100, found {v}"),
                ),
            },
        };
        let platforms = match map.get("platforms") {
            None => Some(vec![Platform::Ios, Platform::Android]),
            Some(value) => self.platforms(value),
        };
        let conversion = match map.get("conversion") {
            None | Some(Value::Null) => Some(None),
            Some(value) => {
                self.object(value, "options.conversion", &["event", "within"]).and_then(|c| {
                    let event = self.required_text(c, "event", "options.conversion");
                    let within = self
                        .required(c, "within", "options.conversion")
                        .and_then(|v| self.positive_duration(v, "options.conversion.within"));
                    Some(Some(Conversion { event: event?, within_ms: within? }))
                })
            }
        };
        let timezone = match map.get("timezone") {
            None => Some(None),
            Some(value) => self.timezone(value, "options.timezone").map(Some),
        };
        let throttle = match map.get("throttle") {
            None | Some(Value::Null) => Some(None),
            Some(value) => self.object(value, "options.throttle", &["max", "per"]).and_then(|t| {
                let max = self
                    .required(t, "max", "options.throttle")
                    .and_then(|v| self.count(v, "options.throttle.max"));
                let per = self
                    .required(t, "per", "options.throttle")
                    .and_then(|v| self.positive_duration(v, "options.throttle.per"));
                Some(Some(Throttle { max: max?, per_ms: per? }))
            }),
        };
        let shards = match map.get("shards") {
            None => Some(1),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=u64::from(MAX_SHARDS)).contains(&n) => Some(n as u32),
                _ => self.error(
                    "options.shards",
                    format!("expected a whole number from 1 to {MAX_SHARDS}, found {v}"),
                ),
            },
        };
        Some(Options {
            shards: shards?,
            throttle: throttle?,
            ignore_global_caps: ignore_global_caps?,
            dnd: dnd?,
            sample_percent: sample_percent?,
            platforms: platforms?,
            conversion: conversion?,
            timezone: timezone?,
        })
    }

    fn dnd(&mut self, value: &Value) -> Option<Dnd> {
        let map = self.object(value, "options.dnd", &["start", "end", "action"])?;
        let time = |parser: &mut Self, key: &str| {
            let path = join("options.dnd", key);
            parser.required(map, key, "options.dnd").and_then(|v| parser.time_of_day(v, &path))
        };
        let start = time(self, "start");
        let end = time(self, "end");
        let action = match map.get("action").and_then(Value::as_str) {
            None => Some(DndAction::Delay),
            Some("delay") => Some(DndAction::Delay),
            Some("discard") => Some(DndAction::Discard),
            Some(other) => self.error(
                "options.dnd.action",
                format!("unknown action {other:?}; expected delay or discard"),
            ),
        };
        if start.is_some() && start == end {
            return self.error("options.dnd.end", "equals start: the window would be empty");
        }
        Some(Dnd { start: start?, end: end?, action: action? })
    }

    fn platforms(&mut self, value: &Value) -> Option<Vec<Platform>> {
        let Some(items) = value.as_array().filter(|v| !v.is_empty()) else {
            return self.error("options.platforms", "expected a non-empty list of ios, android");
        };
        let parsed: Vec<Option<Platform>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_str() {
                Some("ios") => Some(Platform::Ios),
                Some("android") => Some(Platform::Android),
                _ => self.error(
                    format!("options.platforms[{i}]"),
                    format!("unknown platform {item}; expected ios or android"),
                ),
            })
            .collect();
        parsed.into_iter().collect()
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The id of a variant given none: `A`, `B`... `Z`, then `V27`, `V28`...
fn default_variant_id(index: usize) -> String {
    match u8::try_from(index).ok().filter(|i| *i < 26) {
        Some(i) => char::from(b'A' + i).to_string(),
        None => format!("V{}", index + 1),
    }
}

/// Parses `90s`, `10m`, `24h`, `7d`, `1w`, `1h30m`, `250ms`, optionally negative (`-24h`), of at
/// most [`MAX_DURATION_MS`] either way.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let too_long = || format!("duration {text:?} is longer than 3660d (ten years)");
    let bad = || {
        format!(
            "bad duration {text:?}; use a number and a unit (ms, s, m, h, d, w), e.g. 10m or 1h30m"
        )
    };
    let (sign, mut rest) = match text.trim().strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.trim()),
    };
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let number: i64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            _ => return Err(bad()),
        };
        total = number
            .checked_mul(unit)
            .and_then(|n| total.checked_add(n))
            .filter(|total| *total <= MAX_DURATION_MS)
            .ok_or_else(too_long)?;
        rest = &rest[unit_len..];
    }
    Ok(sign * total)
}

#[cfg(test)]
mod tests {
    use super::{parse_campaign, parse_duration, Cadence, CatchUp, Trigger};

    fn schedule_of(schedule: &str, options: &str) -> Result<super::Schedule, Vec<String>> {
        let text = format!(
            "id: c\napp: a\nname: n\nwhen:\n  schedule: {schedule}\n\
             what: {{ variants: [{{ title: t, body: b }}] }}\n{options}"
        );
        match parse_campaign(&text, "test") {
            Ok(campaign) => match campaign.when.trigger {
                Trigger::Scheduled(schedule) => Ok(schedule),
                other => panic!("{other:?}"),
            },
            Err(errors) => {
                Err(errors.errors.iter().map(|e| format!("{}: {}", e.path, e.reason)).collect())
            }
        }
    }

    #[test]
    fn calendar_schedules() {
        let weekly =
            schedule_of("{ repeat: weekly, days: [mon, friday], time: \"09:00\" }", "").unwrap();
        let calendar = weekly.calendar.unwrap();
        assert_eq!(
            calendar.cadence,
            Cadence::Weekly(vec![chrono::Weekday::Mon, chrono::Weekday::Fri])
        );
        assert_eq!(calendar.timezone, chrono_tz::UTC);
        assert_eq!(weekly.catch_up, CatchUp::Once { grace_ms: 86_400_000 });
        let monthly = schedule_of(
            "{ repeat: monthly, day: 7, time: \"08:30:15\", catch_up: skip }",
            "options: { timezone: Europe/Paris }",
        )
        .unwrap();
        let calendar = monthly.calendar.unwrap();
        assert_eq!(
            (calendar.cadence, calendar.timezone),
            (Cadence::Monthly(7), chrono_tz::Europe::Paris)
        );
        assert_eq!(monthly.catch_up, CatchUp::Skip);
        let hourly = schedule_of(
            "{ repeat: hourly, hours: 6, timezone: America/New_York, grace: 2h }",
            "options: { timezone: Europe/Paris }",
        )
        .unwrap();
        assert_eq!(hourly.calendar.unwrap().timezone, chrono_tz::America::New_York);
        let local = schedule_of(
            "{ repeat: daily, time: \"09:00\", timezone: user, until: \"11:00\" }",
            "options: { timezone: Europe/Paris }",
        )
        .unwrap();
        let until = chrono::NaiveTime::from_hms_opt(11, 0, 0);
        assert_eq!(local.user_local, Some(crate::campaign::UserLocal::RunTime { until }));
        assert_eq!(local.calendar.unwrap().timezone, chrono_tz::Etc::GMTMinus14);
        let best =
            schedule_of("{ repeat: weekly, days: [mon], time: \"19:30\", timezone: best }", "")
                .unwrap();
        let fallback = chrono::NaiveTime::from_hms_opt(19, 30, 0).unwrap();
        assert_eq!(best.user_local, Some(crate::campaign::UserLocal::BestHour { fallback }));
        let calendar = best.calendar.unwrap();
        assert_eq!(
            (calendar.time, calendar.timezone),
            (chrono::NaiveTime::MIN, crate::campaign::UserLocal::RUN_ZONE)
        );
        assert_eq!(hourly.catch_up, CatchUp::Once { grace_ms: 7_200_000 });
    }

    #[test]
    fn bad_calendar_schedules_name_the_field() {
        let cases = [
            ("{ repeat: weekly, time: \"09:00\" }", "when.schedule.days: is required"),
            (
                "{ repeat: weekly, days: [mon, mon], time: \"09:00\" }",
                "when.schedule.days: lists the same weekday twice",
            ),
            (
                "{ repeat: monthly, day: 32, time: \"09:00\" }",
                "when.schedule.day: expected a whole number from 1 to 31",
            ),
            ("{ repeat: daily }", "when.schedule.time: is required"),
            ("{ repeat: daily, time: \"25:00\" }", "when.schedule.time: bad time of day"),
            (
                "{ repeat: daily, day: 3, time: \"09:00\" }",
                "when.schedule.day: does not apply to repeat: daily",
            ),
            ("{ repeat: yearly, time: \"09:00\" }", "when.schedule.repeat: unknown repeat"),
            (
                "{ repeat: daily, time: \"09:00\", timezone: Mars/Olympus }",
                "when.schedule.timezone: unknown timezone",
            ),
            (
                "{ repeat: daily, time: \"09:00\", until: \"11:00\" }",
                "when.schedule.until: applies to timezone: user",
            ),
            (
                "{ repeat: daily, time: \"09:00\", timezone: user, until: \"08:00\" }",
                "when.schedule.until: 08:00:00 is not after",
            ),
            (
                "{ repeat: hourly, hours: 6, timezone: best }",
                "when.schedule.timezone: best applies to daily, weekly and monthly",
            ),
            (
                "{ repeat: daily, time: \"09:00\", at: \"2026-12-01T00:00:00Z\" }",
                "when.schedule: has at/every and repeat",
            ),
            (
                "{ at: \"2026-12-01T00:00:00Z\", time: \"09:00\" }",
                "when.schedule.time: applies to a calendar schedule",
            ),
            (
                "{ repeat: daily, time: \"09:00\", catch_up: skip, grace: 1h }",
                "when.schedule.grace: applies to catch_up: once",
            ),
            (
                "{ repeat: daily, time: \"09:00\", catch_up: twice }",
                "when.schedule.catch_up: unknown catch_up",
            ),
        ];
        for (schedule, expected) in cases {
            let errors = schedule_of(schedule, "").unwrap_err();
            assert!(errors.iter().any(|e| e.starts_with(expected)), "{schedule}: {errors:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(600_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("-24h"), Ok(-86_400_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        for bad in ["", "10", "m", "10 minutes", "1.5h", "-"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_duration("3660d"), Ok(super::MAX_DURATION_MS));
        for long in ["9999999999999d", "3661d", "-3661d", "99999999999999999999999ms", "3660d1ms"] {
            let error = parse_duration(long).unwrap_err();
            assert!(error.contains("longer than 3660d"), "{long}: {error}");
        }
    }
}
