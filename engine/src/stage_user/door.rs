//! Validation at the door: an ingest record with no user, a timestamp outside the accepted
//! window around now, or over a size limit is rejected (dead-lettered) with a reason naming the
//! field, and counted by reason. Limits are set in the app settings file (`ingest:`, see
//! `docs/ingest.md`, "Validation").

use crate::{
    model::{Device, Properties, PropertyValue},
    runtime::{Clock, ProcessError, ProcessorContext, ProcessorCounter},
    settings::IngestLimits,
};

use super::route::Inbound;

/// Ingest records rejected at the door, by reason (the vocabulary of [`Reason`]).
pub(super) static REJECTED: ProcessorCounter = ProcessorCounter {
    name: "ingest_rejected_total",
    help: "Ingest records rejected at the door, by reason",
    label: "reason",
};

/// Why a record is refused: the bounded label vocabulary of [`REJECTED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    /// The record does not decode (counted here; the decoder names the problem).
    Undecodable,
    /// No user id.
    NoUser,
    /// Older than `max_age`.
    TimestampTooOld,
    /// Further ahead than `max_ahead`.
    TimestampAhead,
    /// More properties than `max_properties`.
    TooManyProperties,
    /// A string longer than `max_string_length`.
    StringTooLong,
    /// More devices than `max_devices`.
    TooManyDevices,
    /// An event name with a control character (the history's keys use them as separators).
    ControlCharacter,
}

impl Reason {
    /// The label value.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::NoUser => "no_user",
            Self::TimestampTooOld => "timestamp_too_old",
            Self::TimestampAhead => "timestamp_ahead",
            Self::TooManyProperties => "too_many_properties",
            Self::StringTooLong => "string_too_long",
            Self::TooManyDevices => "too_many_devices",
            Self::ControlCharacter => "control_character",
        }
    }
}

/// A refused record: the reason, the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) reason: Reason,
    pub(super) field: String,
    pub(super) detail: String,
}

impl Refusal {
    /// Counts the refusal and turns it into a rejection naming the field.
    pub(super) fn reject(self, ctx: &ProcessorContext<'_>) -> ProcessError {
        ctx.count(&REJECTED, self.reason.as_str());
        ProcessError::reject(format!("{}: {} ({})", self.field, self.detail, self.reason.as_str()))
    }
}

/// Checks `record` against `limits`. The time window applies on the wall clock only (`now_ms`
/// is the wall time then): a replay on event time reads old records on purpose.
pub(super) fn check(
    record: &Inbound,
    limits: &IngestLimits,
    clock: Clock,
    now_ms: i64,
) -> Result<(), Refusal> {
    let door = Door { limits };
    let user = record.user();
    if user.trim().is_empty() {
        return Err(refusal(Reason::NoUser, record.user_field(), "missing or empty".into()));
    }
    door.string(record.user_field(), user)?;
    if clock == Clock::Wall {
        door.timestamp(record.timestamp_ms(), now_ms)?;
    }
    match record {
        Inbound::Event(event) => {
            door.string("event_id", &event.event_id)?;
            door.string("app_id", &event.app_id)?;
            door.event_name("name", &event.name)?;
            door.properties("properties", &event.properties)
        }
        Inbound::Profile(update) => {
            door.string("app_id", &update.app_id)?;
            door.properties("set", &update.set)?;
            door.count("unset", update.unset.len(), limits.max_properties)?;
            for (i, name) in update.unset.iter().enumerate() {
                door.string(&format!("unset[{i}]"), name)?;
            }
            door.devices(&update.devices_added)?;
            for (i, token) in update.tokens_removed.iter().enumerate() {
                door.string(&format!("tokens_removed[{i}]"), token)?;
            }
            Ok(())
        }
        Inbound::Alias(alias) => {
            door.string("app_id", &alias.app_id)?;
            if alias.user_id.trim().is_empty() {
                return Err(refusal(Reason::NoUser, "user_id", "missing or empty".into()));
            }
            door.string("user_id", &alias.user_id)
        }
        // Internal: built by an alias that passed this door.
        Inbound::Merge(_) => Ok(()),
    }
}

fn refusal(reason: Reason, field: &str, detail: String) -> Refusal {
    Refusal { reason, field: field.to_string(), detail }
}

struct Door<'l> {
    limits: &'l IngestLimits,
}

impl Door<'_> {
    fn timestamp(&self, at_ms: i64, now_ms: i64) -> Result<(), Refusal> {
        let field = "timestamp_ms";
        if at_ms < now_ms.saturating_sub(self.limits.max_age_ms) {
            let detail = format!(
                "{at_ms} is more than {} ms before now ({now_ms}) (max_age)",
                self.limits.max_age_ms
            );
            return Err(refusal(Reason::TimestampTooOld, field, detail));
        }
        if at_ms > now_ms.saturating_add(self.limits.max_ahead_ms) {
            let detail = format!(
                "{at_ms} is more than {} ms after now ({now_ms}) (max_ahead)",
                self.limits.max_ahead_ms
            );
            return Err(refusal(Reason::TimestampAhead, field, detail));
        }
        Ok(())
    }

    fn string(&self, field: &str, value: &str) -> Result<(), Refusal> {
        if value.len() <= self.limits.max_string_bytes {
            return Ok(());
        }
        let detail = format!(
            "{} bytes, over the limit of {} (max_string_length)",
            value.len(),
            self.limits.max_string_bytes
        );
        Err(refusal(Reason::StringTooLong, field, detail))
    }

    /// An event name: a string without control characters, which the history's keys use as
    /// separators (an event named like another key would read and write that key).
    fn event_name(&self, field: &str, name: &str) -> Result<(), Refusal> {
        self.string(field, name)?;
        match name.char_indices().find(|(_, c)| c.is_control()) {
            None => Ok(()),
            Some((at, c)) => {
                let detail = format!("a control character (U+{:04X}) at byte {at}", c as u32);
                Err(refusal(Reason::ControlCharacter, field, detail))
            }
        }
    }

    fn count(&self, field: &str, count: usize, limit: usize) -> Result<(), Refusal> {
        if count <= limit {
            return Ok(());
        }
        let detail = format!("{count} entries, over the limit of {limit} (max_properties)");
        Err(refusal(Reason::TooManyProperties, field, detail))
    }

    fn properties(&self, field: &str, properties: &Properties) -> Result<(), Refusal> {
        self.count(field, properties.len(), self.limits.max_properties)?;
        for (name, value) in properties {
            self.string(&format!("{field}: a property name"), name)?;
            if let PropertyValue::String(text) = value {
                self.string(&format!("{field}.{}", shown(name)), text)?;
            }
        }
        Ok(())
    }

    fn devices(&self, devices: &[Device]) -> Result<(), Refusal> {
        let field = "devices_added";
        if devices.len() > self.limits.max_devices {
            return Err(too_many_devices(field, devices.len(), self.limits.max_devices));
        }
        for (i, device) in devices.iter().enumerate() {
            self.string(&format!("{field}[{i}].device_id"), &device.device_id)?;
            self.string(&format!("{field}[{i}].token"), &device.token)?;
            let optional = [
                ("app_version", &device.app_version),
                ("os_version", &device.os_version),
                ("make", &device.make),
                ("model", &device.model),
                ("sdk_version", &device.sdk_version),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    self.string(&format!("{field}[{i}].{name}"), value)?;
                }
            }
        }
        Ok(())
    }
}

/// Refuses a profile that a `devices_added` update would leave with more than `max_devices`.
pub(super) fn check_devices(count: usize, limits: &IngestLimits) -> Result<(), Refusal> {
    if count <= limits.max_devices {
        return Ok(());
    }
    Err(too_many_devices("devices_added", count, limits.max_devices))
}

/// A refusal for a user who would have `count` devices, over `limit`.
fn too_many_devices(field: &str, count: usize, limit: usize) -> Refusal {
    let detail =
        format!("the user would have {count} devices, over the limit of {limit} (max_devices)");
    refusal(Reason::TooManyDevices, field, detail)
}

/// A property name as shown in a reason: cut to 64 characters.
fn shown(name: &str) -> String {
    name.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AppEvent;

    const HOUR_MS: i64 = 3_600_000;
    const DAY_MS: i64 = 24 * HOUR_MS;

    const NOW: i64 = 1_764_000_000_000;

    fn event(user: &str, at: i64) -> Inbound {
        Inbound::Event(AppEvent {
            event_id: "e1".into(),
            app_id: "shop".into(),
            user_id: user.into(),
            name: "Ping".into(),
            timestamp_ms: at,
            properties: Properties::new(),
            sdk_version: None,
        })
    }

    fn refused(record: &Inbound, clock: Clock) -> Refusal {
        check(record, &IngestLimits::default(), clock, NOW).unwrap_err()
    }

    #[test]
    fn refusals_name_the_field_and_reason() {
        let none = refused(&event(" ", NOW), Clock::Wall);
        assert_eq!((none.reason, none.field.as_str()), (Reason::NoUser, "user_id"));
        let old = refused(&event("u", NOW - 31 * DAY_MS), Clock::Wall);
        assert_eq!((old.reason, old.field.as_str()), (Reason::TimestampTooOld, "timestamp_ms"));
        let ahead = refused(&event("u", NOW + 2 * HOUR_MS), Clock::Wall);
        assert_eq!(ahead.reason, Reason::TimestampAhead);
        let mut big = event("u", NOW);
        if let Inbound::Event(e) = &mut big {
            e.properties = (0..101).map(|i| (format!("p{i}"), PropertyValue::Long(i))).collect();
        }
        let many = refused(&big, Clock::Wall);
        assert_eq!((many.reason, many.field.as_str()), (Reason::TooManyProperties, "properties"));
        if let Inbound::Event(e) = &mut big {
            e.properties = [("url".to_string(), PropertyValue::String("x".repeat(3_000)))].into();
        }
        let long = refused(&big, Clock::Wall);
        assert_eq!((long.reason, long.field.as_str()), (Reason::StringTooLong, "properties.url"));
        // Named like the history's property-set budget key of `Bought` (review s28 finding 1).
        if let Inbound::Event(e) = &mut big {
            e.properties = Properties::new();
            e.name = "Bought\u{1e}80000000000051c6\u{1e}#".into();
        }
        let forged = refused(&big, Clock::Wall);
        assert_eq!((forged.reason, forged.field.as_str()), (Reason::ControlCharacter, "name"));
        assert_eq!(forged.detail, "a control character (U+001E) at byte 6");
    }

    #[test]
    fn replays_on_event_time_are_exempt_from_the_time_window() {
        let limits = IngestLimits::default();
        let old = event("u", NOW - 400 * DAY_MS);
        assert_eq!(check(&old, &limits, Clock::EventTime, NOW), Ok(()));
        assert_eq!(
            check(&event("u", i64::MAX), &limits, Clock::Wall, NOW).unwrap_err().reason,
            Reason::TimestampAhead,
            "no overflow on hostile times"
        );
        assert_eq!(
            check(&event("u", i64::MIN), &limits, Clock::Wall, NOW).unwrap_err().reason,
            Reason::TimestampTooOld
        );
    }
}
