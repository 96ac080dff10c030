//! Parsing and validating campaign definitions. The JSON Schema (`json_schema.rs`) checks the
//! structure, serde reads it (`document.rs`), and this module checks what a schema cannot say:
//! durations, dates and times, time zones, Liquid templates, limits and fields that depend on
//! each other's values. Every problem is collected with its field path (`when.unless.within`,
//! `who.all[2].between`) so a file is fixed in one pass.

use std::{collections::BTreeSet, fmt};

use chrono::{DateTime, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::Value;

use super::{
    document::{
        normalize, Audience, CampaignFile, CatchUpDoc, ConditionDoc, DidDoc, DidNotDoc, DndDoc,
        EventWithin, FilterDoc, MessageDoc, OneOrMany, OpDoc, OptionsDoc, Part, PlatformDoc,
        PushDoc, Repeat, ScalarDoc, ScheduleDoc, Status, VariantsDoc, WhatDoc, WhenDoc,
    },
    json_schema::{self, join, SchemaFile},
    model::DEFAULT_SHARE_WAIT_MS,
    recurrence::DEFAULT_GRACE_MS,
    AbTest, Assignment, Behaviour, Cadence, Campaign, CampaignStatus, CatchUp, Conversion, Dnd,
    DndAction, Filter, Inaction, Limits, Message, Op, Options, PropertyCondition, PushOptions,
    Recurrence, Scalar, Schedule, TestPopulation, Throttle, Trigger, UserLocal, When, WinnerBy,
};
use crate::model::Platform;

/// Most A/B variants a campaign may have.
pub const MAX_VARIANTS: usize = 3;
/// Most variants a campaign choosing them by a profile property (one per language) may have.
pub const MAX_CHOSEN_VARIANTS: usize = 100;
/// Longest duration accepted anywhere (windows, offsets, TTLs, intervals): ten years, so that
/// adding one to a timestamp stays far inside the accepted range of times.
pub const MAX_DURATION_MS: i64 = 3_660 * DAY_MS;
/// Longest look-back in days (`in_last_days`, `within_last_days`): ten years (the schema's
/// `$defs/days`).
pub const MAX_DAYS: u64 = 3_660;
/// Days of event history the engine keeps unless configured otherwise (`in_last_days` default).
pub const DEFAULT_HISTORY_DAYS: u32 = 90;
/// Longest event history the engine can be configured to keep, days.
pub const MAX_HISTORY_DAYS: u32 = 400;
/// Largest count accepted (limits, test audiences, throttles): a trillion (the schema's
/// `$defs/count`).
pub const MAX_COUNT: u64 = 1_000_000_000_000;
const DAY_MS: i64 = 86_400_000;

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
    /// The problems, in the order of the schema's fields.
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
    let mut document: Value = serde_norway::from_str(text)
        .map_err(|e| fail(vec![FieldError { path: "(document)".into(), reason: e.to_string() }]))?;
    normalize(&mut document);
    let structure = json_schema::schema_errors(SchemaFile::Campaign, &document);
    let mut parser = Parser::default();
    let campaign = parser.campaign(read(document));
    match (campaign, parser.errors_beside(structure)) {
        (Some(campaign), errors) if errors.is_empty() => Ok(campaign),
        (_, errors) => Err(fail(errors)),
    }
}

/// Parses the filter of a saved segment (the `who` language without segment references), found
/// at `path`, beside `structure`: the segment schema's errors of the whole file.
pub(super) fn parse_segment_filter(
    value: Value,
    path: &str,
    structure: Vec<FieldError>,
) -> Result<Filter, Vec<FieldError>> {
    let mut parser = Parser { schema: SchemaFile::Segment, ..Parser::default() };
    let filter = parser.read(read(value), path).and_then(|f| parser.filter(f, path));
    match (filter, parser.errors_beside(structure)) {
        (Some(filter), errors) if errors.is_empty() => Ok(filter),
        (_, errors) => Err(errors),
    }
}

/// Reads a value as `T`, part by part.
fn read<T: serde::de::DeserializeOwned>(value: Value) -> Part<T> {
    Part::deserialize(value).unwrap_or_else(|e| Part::Unread(e.to_string()))
}

/// Every item's result, all of them read (not stopping at the first that fails).
fn every<T>(items: impl Iterator<Item = Option<T>>) -> Option<Vec<T>> {
    items.collect::<Vec<_>>().into_iter().collect()
}

#[derive(Default)]
struct Parser {
    /// Semantic problems.
    errors: Vec<FieldError>,
    /// Parts serde could not read (the schema tells why, unless they drifted apart).
    unread: Vec<FieldError>,
    /// The schema of what is parsed: a saved segment may not reference other segments.
    schema: SchemaFile,
}

impl Parser {
    /// Every problem, in the schema's order: the schema's (`structure`), then the semantic ones
    /// on fields it did not refuse, and parts serde could not read where it found nothing.
    fn errors_beside(self, mut structure: Vec<FieldError>) -> Vec<FieldError> {
        let inside = |inner: &str, outer: &str| {
            outer.is_empty()
                || inner == outer
                || inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with(['.', '[']))
        };
        let semantic: Vec<FieldError> = (self.errors.into_iter())
            .filter(|error| !structure.iter().any(|told| told.path == error.path))
            .collect();
        let unread: Vec<FieldError> = (self.unread.into_iter())
            .filter(|error| {
                !structure
                    .iter()
                    .any(|t| inside(&t.path, &error.path) || inside(&error.path, &t.path))
            })
            .collect();
        structure.extend(semantic.into_iter().chain(unread));
        json_schema::sort_by_schema(self.schema, &mut structure);
        structure
    }

    fn error<T>(&mut self, path: impl Into<String>, reason: impl Into<String>) -> Option<T> {
        self.errors.push(FieldError { path: path.into(), reason: reason.into() });
        None
    }

    fn read<T>(&mut self, part: Part<T>, path: &str) -> Option<T> {
        match part {
            Part::Read(value) => Some(value),
            Part::Unread(reason) => {
                self.unread.push(FieldError { path: path.into(), reason });
                None
            }
        }
    }

    /// A field the schema requires.
    fn given<T>(&mut self, value: Option<T>, path: &str) -> Option<T> {
        value.or_else(|| self.error(path, "is required"))
    }

    fn duration(&mut self, text: &str, path: &str) -> Option<i64> {
        parse_duration(text).map_or_else(|reason| self.error(path, reason), Some)
    }

    /// A duration above zero.
    fn positive_duration(&mut self, text: &str, path: &str) -> Option<i64> {
        match self.duration(text, path)? {
            ms if ms <= 0 => self.error(path, "must be positive"),
            ms => Some(ms),
        }
    }

    fn timestamp(&mut self, text: &str, path: &str) -> Option<DateTime<Utc>> {
        match DateTime::parse_from_rfc3339(text) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => self.error(
                path,
                format!("bad date-time {text:?} ({e}); use RFC 3339, e.g. 2026-11-26T10:00:00Z"),
            ),
        }
    }

    /// A local time of day, `HH:MM` or `HH:MM:SS`.
    fn time_of_day(&mut self, text: &str, path: &str) -> Option<NaiveTime> {
        NaiveTime::parse_from_str(text, "%H:%M")
            .or_else(|_| NaiveTime::parse_from_str(text, "%H:%M:%S"))
            .ok()
            .or_else(|| {
                self.error(path, format!("bad time of day {text:?}; use HH:MM, e.g. 21:00"))
            })
    }

    /// An IANA timezone name.
    fn timezone(&mut self, name: &str, path: &str) -> Option<Tz> {
        match name {
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

    fn campaign(&mut self, file: Part<CampaignFile>) -> Option<Campaign> {
        let file = self.read(file, "")?;
        let id = self.read(file.id, "id");
        let app = self.read(file.app, "app");
        let name = self.read(file.name, "name");
        let status = match file.status {
            None => Some(CampaignStatus::Active),
            Some(status) => self.read(status, "status").map(|status| match status {
                Status::Draft => CampaignStatus::Draft,
                Status::Active => CampaignStatus::Active,
                Status::Paused => CampaignStatus::Paused,
                Status::Stopped => CampaignStatus::Stopped,
            }),
        };
        let who = match file.who {
            None => Some(Filter::All(Vec::new())),
            Some(who) => self.read(who, "who").and_then(|who| self.filter(who, "who")),
        };
        let options = match file.options {
            None => Some(OptionsDoc::default()),
            Some(options) => self.read(options, "options"),
        };
        // A calendar schedule's timezone defaults to the campaign's (checked with the options).
        let timezone = options
            .as_ref()
            .and_then(|options| options.timezone.as_deref())
            .and_then(|name| name.parse::<Tz>().ok());
        let when = self.read(file.when, "when").and_then(|when| self.when(when, timezone));
        let what = self.read(file.what, "what").and_then(|what| self.what(what));
        let limits = match file.limits {
            None => Some(Limits::default()),
            Some(limits) => self.read(limits, "limits"),
        };
        let options = options.and_then(|options| self.options(options));
        let (what, assignment) = what?;
        // Unknown when `when` could not be read: its errors are told, not these.
        let triggered =
            when.as_ref().is_some_and(|when| !matches!(when.trigger, Trigger::Scheduled(_)));
        if let Assignment::AbTest(AbTest { test_audience: TestPopulation::Percent(_), .. }) =
            &assignment
        {
            if triggered {
                self.error::<()>(
                    "what.ab.test_audience",
                    "a percentage needs a scheduled campaign (a triggered one has no known reach)",
                );
            }
        }
        if let Some(limits) = &limits {
            if triggered && (limits.per_run.is_some() || limits.safety.is_some()) {
                self.error::<()>("limits", "per_run and safety apply to scheduled campaigns");
            }
        }
        let mut profile_variables: BTreeSet<String> =
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

    fn filter(&mut self, filter: FilterDoc, path: &str) -> Option<Filter> {
        match filter {
            FilterDoc::All { all } => self.filters(all, &join(path, "all")).map(Filter::All),
            FilterDoc::Any { any } => self.filters(any, &join(path, "any")).map(Filter::Any),
            FilterDoc::Not { not } => {
                let path = join(path, "not");
                let inner = self.read(*not, &path)?;
                self.filter(inner, &path).map(|inner| Filter::Not(Box::new(inner)))
            }
            FilterDoc::Near { near } => Some(Filter::Near(near)),
            FilterDoc::Segment { segment } => {
                self.segment_reference(segment, &join(path, "segment"))
            }
            FilterDoc::Did(did) => self.did(did, path).map(Filter::Behaviour),
            FilterDoc::DidNot(did_not) => self.did_not(did_not, path).map(Filter::Behaviour),
            FilterDoc::Device(device) => {
                self.condition(device.device, device.op, path).map(Filter::Device)
            }
            FilterDoc::Property(condition) => self.property(condition, path).map(Filter::Property),
        }
    }

    fn filters(&mut self, items: Vec<Part<FilterDoc>>, path: &str) -> Option<Vec<Filter>> {
        every(items.into_iter().enumerate().map(|(i, item)| {
            let path = format!("{path}[{i}]");
            self.read(item, &path).and_then(|filter| self.filter(filter, &path))
        }))
    }

    /// `segment: <id>` or `segment: [<id>, ...]` (users in every one of them).
    fn segment_reference(&mut self, ids: OneOrMany<String>, path: &str) -> Option<Filter> {
        if self.schema == SchemaFile::Segment {
            return self.error(path, "a saved segment cannot reference another segment");
        }
        match ids {
            OneOrMany::One(id) => Some(Filter::Segment(id)),
            OneOrMany::Many(ids) if ids.is_empty() => {
                self.error(path, "needs at least one segment id")
            }
            OneOrMany::Many(mut ids) if ids.len() == 1 => ids.pop().map(Filter::Segment),
            OneOrMany::Many(ids) => {
                Some(Filter::All(ids.into_iter().map(Filter::Segment).collect()))
            }
        }
    }

    fn property(&mut self, condition: ConditionDoc, path: &str) -> Option<PropertyCondition> {
        self.condition(condition.property, condition.op, path)
    }

    /// `{property|device: <name>, <operator>: <value>}`.
    fn condition(&mut self, property: String, op: OpDoc, path: &str) -> Option<PropertyCondition> {
        let scalar = |scalar: ScalarDoc| match scalar {
            ScalarDoc::Bool(b) => Scalar::Bool(b),
            ScalarDoc::Number(n) => Scalar::Number(n),
            ScalarDoc::Text(s) => Scalar::Text(s),
        };
        let op = match op {
            OpDoc::Equals(value) => Op::Equals(scalar(value)),
            OpDoc::NotEquals(value) => Op::NotEquals(scalar(value)),
            OpDoc::In(values) => Op::In(values.into_iter().map(scalar).collect()),
            OpDoc::NotIn(values) => Op::NotIn(values.into_iter().map(scalar).collect()),
            OpDoc::Between(low, high) if low > high => {
                return self.error(
                    join(path, "between"),
                    format!("low bound {low} is above high bound {high}"),
                )
            }
            OpDoc::Between(low, high) => Op::Between(low, high),
            OpDoc::Gt(n) => Op::Gt(n),
            OpDoc::Gte(n) => Op::Gte(n),
            OpDoc::Lt(n) => Op::Lt(n),
            OpDoc::Lte(n) => Op::Lte(n),
            OpDoc::Exists(_) => Op::Exists,
            OpDoc::NotExists(_) => Op::NotExists,
            OpDoc::Contains(text) => Op::Contains(text),
            OpDoc::StartsWith(text) => Op::StartsWith(text),
            OpDoc::Before(text) => Op::Before(self.timestamp(&text, &join(path, "before"))?),
            OpDoc::After(text) => Op::After(self.timestamp(&text, &join(path, "after"))?),
            OpDoc::WithinLastDays(days) => Op::WithinLastDays(days),
        };
        Some(PropertyCondition { property, op })
    }

    /// A `where` list of property conditions (none when absent).
    fn conditions(
        &mut self,
        conditions: Option<Vec<Part<ConditionDoc>>>,
        path: &str,
    ) -> Option<Vec<PropertyCondition>> {
        let path = join(path, "where");
        every(conditions.unwrap_or_default().into_iter().enumerate().map(|(i, item)| {
            let path = format!("{path}[{i}]");
            self.read(item, &path).and_then(|condition| self.property(condition, &path))
        }))
    }

    fn did(&mut self, did: DidDoc, path: &str) -> Option<Behaviour> {
        let at_least = did.at_least.unwrap_or(1);
        if did.at_most.is_some_and(|most| most < at_least) {
            return self.error(join(path, "at_most"), format!("is below at_least ({at_least})"));
        }
        let conditions = self.conditions(did.r#where, path);
        let mut moment = |before: Option<String>, after: Option<String>, which: &str| {
            let field = |side: &str| join(path, &format!("{which}_{side}"));
            match (before, after) {
                (Some(before), _) => {
                    self.timestamp(&before, &field("before")).map(|t| Some(Op::Before(t)))
                }
                (None, Some(after)) => {
                    self.timestamp(&after, &field("after")).map(|t| Some(Op::After(t)))
                }
                (None, None) => Some(None),
            }
        };
        let first = moment(did.first_before, did.first_after, "first");
        let last = moment(did.last_before, did.last_after, "last");
        Some(Behaviour {
            event: did.did,
            at_least,
            at_most: did.at_most,
            in_last_days: did.in_last_days.unwrap_or(DEFAULT_HISTORY_DAYS),
            conditions: conditions?,
            first: first?,
            last: last?,
        })
    }

    fn did_not(&mut self, did_not: DidNotDoc, path: &str) -> Option<Behaviour> {
        Some(Behaviour {
            event: did_not.did_not,
            at_least: 0,
            at_most: Some(0),
            in_last_days: did_not.in_last_days.unwrap_or(DEFAULT_HISTORY_DAYS),
            conditions: self.conditions(did_not.r#where, path)?,
            first: None,
            last: None,
        })
    }

    /// `when`; `timezone` is the campaign's (`options.timezone`), a calendar schedule's default.
    fn when(&mut self, when: WhenDoc, timezone: Option<Tz>) -> Option<When> {
        let trigger = match (when.event, when.reminder, when.schedule) {
            (Some(event), None, None) => self.event_trigger(event, when.r#where, when.unless),
            (None, Some(reminder), None) => self
                .duration(&reminder.offset, "when.reminder.offset")
                .map(|offset_ms| Trigger::DateReminder {
                    event: reminder.event,
                    property: reminder.date_property,
                    offset_ms,
                }),
            (None, None, Some(schedule)) => self.schedule(schedule, timezone),
            _ => self.error("when", "needs exactly one trigger: event, reminder or schedule"),
        };
        let start = when.start.map(|start| self.timestamp(&start, "when.start"));
        let end = when.end.map(|end| self.timestamp(&end, "when.end"));
        if let (Some(Some(start)), Some(Some(end))) = (start, end) {
            if end <= start {
                self.error::<()>("when.end", format!("{end} is not after when.start ({start})"));
            }
        }
        Some(When { trigger: trigger?, start: start.flatten(), end: end.flatten() })
    }

    /// `event`, its `where` conditions, and `unless` another event follows within a time.
    fn event_trigger(
        &mut self,
        event: String,
        conditions: Option<Vec<Part<ConditionDoc>>>,
        unless: Option<EventWithin>,
    ) -> Option<Trigger> {
        let conditions = self.conditions(conditions, "when");
        let unless = match unless {
            None => Some(None),
            Some(unless) => self.event_within(unless, "when.unless").map(Some),
        };
        Some(Trigger::Event {
            event,
            conditions: conditions?,
            unless: unless?.map(|(event, within_ms)| Inaction { event, within_ms }),
        })
    }

    /// `{event, within}` (a positive duration).
    fn event_within(&mut self, doc: EventWithin, path: &str) -> Option<(String, i64)> {
        let within = self.positive_duration(&doc.within, &join(path, "within"))?;
        Some((doc.event, within))
    }

    /// `schedule`: fixed times (`at`, optionally `every` after the last), or a calendar
    /// recurrence (`repeat`); either with a catch-up policy for runs missed while down.
    fn schedule(&mut self, schedule: ScheduleDoc, timezone: Option<Tz>) -> Option<Trigger> {
        let catch_up = match (&schedule.catch_up, &schedule.grace) {
            (Some(CatchUpDoc::Skip), _) => Some(CatchUp::Skip),
            (_, None) => Some(CatchUp::Once { grace_ms: DEFAULT_GRACE_MS }),
            (_, Some(grace)) => self
                .positive_duration(grace, "when.schedule.grace")
                .map(|grace_ms| CatchUp::Once { grace_ms }),
        };
        let (at_ms, every_ms, calendar, user_local) = match schedule.repeat {
            Some(repeat) => {
                let (calendar, user_local) = self.recurrence(repeat, schedule, timezone)?;
                (Vec::new(), None, Some(calendar), user_local)
            }
            None => {
                let (at_ms, every_ms) = self.fixed_times(schedule)?;
                (at_ms, every_ms, None, None)
            }
        };
        let catch_up = catch_up?;
        Some(Trigger::Scheduled(Schedule { at_ms, every_ms, calendar, catch_up, user_local }))
    }

    /// `at: <time or list of times>, every: <duration>`.
    fn fixed_times(&mut self, schedule: ScheduleDoc) -> Option<(Vec<i64>, Option<i64>)> {
        const PATH: &str = "when.schedule.at";
        let times = match self.given(schedule.at, PATH)? {
            OneOrMany::One(at) => every(std::iter::once(self.timestamp(&at, PATH))),
            OneOrMany::Many(times) => every(
                times.iter().enumerate().map(|(i, at)| self.timestamp(at, &format!("{PATH}[{i}]"))),
            ),
        };
        let mut at_ms: Vec<i64> = times?.iter().map(DateTime::timestamp_millis).collect();
        at_ms.sort_unstable();
        if at_ms.windows(2).any(|w| w[0] == w[1]) {
            return self.error(PATH, "lists the same run time twice");
        }
        let every_ms = match schedule.every {
            None => None,
            Some(every) => match self.duration(&every, "when.schedule.every")? {
                ms if ms < 60_000 => {
                    return self.error("when.schedule.every", "must be at least one minute")
                }
                ms => Some(ms),
            },
        };
        Some((at_ms, every_ms))
    }

    /// `repeat: daily|weekly|monthly|hourly` with `days`, `day` or `hours`, at `time` in
    /// `timezone` (default: the campaign's, else UTC; `user`: each user's, with an optional
    /// cut-off `until`; `best`: each user's most active hour).
    fn recurrence(
        &mut self,
        repeat: Repeat,
        schedule: ScheduleDoc,
        timezone: Option<Tz>,
    ) -> Option<(Recurrence, Option<UserLocal>)> {
        const PATH: &str = "when.schedule";
        const PATH_UNTIL: &str = "when.schedule.until";
        let cadence = match repeat {
            Repeat::Daily => Some(Cadence::Daily),
            Repeat::Weekly => self
                .given(schedule.days, "when.schedule.days")
                .and_then(|days| self.weekdays(&days))
                .map(Cadence::Weekly),
            Repeat::Monthly => self.given(schedule.day, "when.schedule.day").map(Cadence::Monthly),
            Repeat::Hourly => {
                self.given(schedule.hours, "when.schedule.hours").map(Cadence::Hourly)
            }
        };
        let time = match schedule.time {
            // Every few hours counts from midnight unless told otherwise.
            None if repeat == Repeat::Hourly => Some(NaiveTime::MIN),
            time => self
                .given(time, "when.schedule.time")
                .and_then(|time| self.time_of_day(&time, "when.schedule.time")),
        };
        let zone = schedule.timezone.as_deref();
        let until = match schedule.until.map(|until| self.time_of_day(&until, PATH_UNTIL)) {
            None => Some(None),
            Some(Some(until)) if time.is_some_and(|time| until <= time) => self.error(
                PATH_UNTIL,
                format!("{until} is not after the time of day ({})", time.unwrap_or_default()),
            ),
            Some(until) => until.map(Some),
        };
        let zone_tz = match zone {
            None => Some(timezone.unwrap_or(Tz::UTC)),
            Some("user" | "best") => Some(UserLocal::RUN_ZONE),
            Some(name) => self.timezone(name, &join(PATH, "timezone")),
        };
        let (time, until) = (time?, until?);
        let (run_time, local) = match zone {
            Some("user") => (time, Some(UserLocal::RunTime { until })),
            // Runs start at midnight in UTC+14: every user's hour of the run's date is to come.
            Some("best") => (NaiveTime::MIN, Some(UserLocal::BestHour { fallback: time })),
            _ => (time, None),
        };
        let recurrence = Recurrence { cadence: cadence?, time: run_time, timezone: zone_tz? };
        Some((recurrence, local))
    }

    /// Distinct weekdays (`mon`, `tuesday`...).
    fn weekdays(&mut self, names: &[String]) -> Option<Vec<Weekday>> {
        let days =
            every(names.iter().enumerate().map(|(i, name)| match name.parse::<Weekday>() {
                Ok(day) => Some(day),
                Err(_) => self.error(
                    format!("when.schedule.days[{i}]"),
                    format!("unknown weekday {name:?}; use mon..sun"),
                ),
            }))?;
        if days.iter().enumerate().any(|(i, day)| days[..i].contains(day)) {
            return self.error("when.schedule.days", "lists the same weekday twice");
        }
        Some(days)
    }

    fn what(&mut self, what: WhatDoc) -> Option<(Vec<Message>, Assignment)> {
        let variants = match what {
            WhatDoc::Single(message) => {
                let message = self.message(*message, "what", "A".into())?;
                return Some((vec![message], Assignment::Single));
            }
            WhatDoc::Variants(variants) => variants,
        };
        let count = variants.variants.len();
        let (most, rule) = if variants.choose_by.is_some() {
            (MAX_CHOSEN_VARIANTS, format!("choose_by takes at most {MAX_CHOSEN_VARIANTS}"))
        } else {
            let rule = format!(
                "an A/B test has at most {MAX_VARIANTS} (choose_by takes one per language, up to \
                 {MAX_CHOSEN_VARIANTS})"
            );
            (MAX_VARIANTS, rule)
        };
        if count > most {
            self.error::<()>("what.variants", format!("has {count} variants; {rule}"));
        }
        let VariantsDoc { variants, ab, split, choose_by } = variants;
        let messages = every(variants.into_iter().enumerate().map(|(i, variant)| {
            let path = format!("what.variants[{i}]");
            let message = self.read(variant, &path)?;
            self.message(message, &path, default_variant_id(i))
        }));
        let assignment = match (choose_by, ab, split) {
            (Some(property), _, _) => Some(Assignment::ByProperty(property)),
            (None, Some(ab), _) => {
                let audience = match ab.test_audience {
                    Audience::Users(users) => Some(TestPopulation::Users(users)),
                    Audience::Percent(text) => self.percentage(&text, "what.ab.test_audience"),
                };
                let after = self.positive_duration(&ab.evaluate_after, "what.ab.evaluate_after");
                let share_wait = match ab.share_wait {
                    Some(text) => self.positive_duration(&text, "what.ab.share_wait"),
                    None => Some(DEFAULT_SHARE_WAIT_MS),
                };
                Some(Assignment::AbTest(AbTest {
                    test_audience: audience?,
                    evaluate_after_ms: after?,
                    winner_by: ab.winner_by.unwrap_or(WinnerBy::Clicks),
                    share_wait_ms: share_wait?,
                }))
            }
            (None, None, Some(shares)) if shares.len() != count => self
                .error("what.split", format!("has {} shares for {count} variants", shares.len())),
            (None, None, Some(shares)) if shares.iter().sum::<u32>() != 100 => {
                self.error("what.split", "shares must add up to 100")
            }
            (None, None, Some(shares)) => Some(Assignment::Split(shares)),
            (None, None, None) if count == 1 => Some(Assignment::Single),
            (None, None, None) => Some(Assignment::Alternate),
        };
        let messages = messages?;
        let mut ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return self.error("what.variants", "variant ids must be unique");
        }
        Some((messages, assignment?))
    }

    /// A test audience given as a percentage (`"15%"`) of a run's reach.
    fn percentage(&mut self, text: &str, path: &str) -> Option<TestPopulation> {
        let percent = text.trim().strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok());
        match percent {
            Some(p) if p > 0.0 && p <= 100.0 => Some(TestPopulation::Percent(p)),
            _ => self.error(
                path,
                format!("expected a number of users or a percentage like \"15%\", found {text:?}"),
            ),
        }
    }

    fn message(&mut self, message: MessageDoc, path: &str, default_id: String) -> Option<Message> {
        let mut template = |key: &str, source: Option<String>| -> Option<Option<String>> {
            match source.as_deref().map(crate::render::check_template) {
                Some(Err(error)) => {
                    self.error(join(path, key), format!("template syntax error: {error}"))
                }
                _ => Some(source),
            }
        };
        let title = template("title", Some(message.title));
        let body = template("body", Some(message.body));
        let subtitle = template("subtitle", message.subtitle);
        let deep_link = template("deep_link", message.deep_link);
        let image_url = template("image_url", message.image_url);
        let push = self.push_options(message.push.unwrap_or_default(), &join(path, "push"));
        Some(Message {
            id: message.id.unwrap_or(default_id),
            title: title??,
            body: body??,
            subtitle: subtitle?,
            deep_link: deep_link?,
            image_url: image_url?,
            push: push?,
        })
    }

    fn push_options(&mut self, push: PushDoc, path: &str) -> Option<PushOptions> {
        if push.options.collapse_id.as_ref().is_some_and(|id| id.len() > 64) {
            self.error::<()>(join(path, "collapse_id"), "is longer than 64 bytes (the APNs limit)");
        }
        let ttl_ms = match &push.ttl {
            None => None,
            Some(ttl) => Some(self.positive_duration(ttl, &join(path, "ttl"))?),
        };
        let data = push
            .data
            .into_iter()
            .map(|(key, value)| match value {
                Value::String(text) => (key, text),
                other => (key, other.to_string()),
            })
            .collect();
        Some(PushOptions { ttl_ms, data, ..push.options })
    }

    /// Do-not-disturb hours: a non-empty local window.
    fn dnd(&mut self, dnd: DndDoc) -> Option<Dnd> {
        let start = self.time_of_day(&dnd.start, "options.dnd.start");
        let end = self.time_of_day(&dnd.end, "options.dnd.end");
        if start.is_some() && start == end {
            return self.error("options.dnd.end", "equals start: the window would be empty");
        }
        let action = dnd.action.unwrap_or(DndAction::Delay);
        Some(Dnd { start: start?, end: end?, action })
    }

    fn options(&mut self, options: OptionsDoc) -> Option<Options> {
        let dnd = match options.dnd {
            None => Some(None),
            Some(dnd) => self.dnd(dnd).map(Some),
        };
        let conversion = match options.conversion {
            None => Some(None),
            Some(conversion) => self
                .event_within(conversion, "options.conversion")
                .map(|(event, within_ms)| Some(Conversion { event, within_ms })),
        };
        let timezone = match options.timezone {
            None => Some(None),
            Some(name) => self.timezone(&name, "options.timezone").map(Some),
        };
        let throttle = match options.throttle {
            None => Some(None),
            Some(throttle) => self
                .positive_duration(&throttle.per, "options.throttle.per")
                .map(|per_ms| Some(Throttle { max: throttle.max, per_ms })),
        };
        let platforms = match options.platforms {
            None => vec![Platform::Ios, Platform::Android],
            Some(platforms) => platforms
                .into_iter()
                .map(|platform| match platform {
                    PlatformDoc::Ios => Platform::Ios,
                    PlatformDoc::Android => Platform::Android,
                })
                .collect(),
        };
        Some(Options {
            shards: options.shards.unwrap_or(1),
            throttle: throttle?,
            ignore_global_caps: options.ignore_global_caps,
            dnd: dnd?,
            sample_percent: options.sample_percent.unwrap_or(100.0),
            platforms,
            conversion: conversion?,
            timezone: timezone?,
        })
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
