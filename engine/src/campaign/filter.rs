//! Evaluating *who* filters and property conditions against a user's profile and history.

use chrono::{DateTime, Utc};

use super::{Behaviour, Filter, Op, Place, PropertyCondition};
use crate::model::{Device, PropertyValue};

/// A literal in a condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// true / false.
    Bool(bool),
    /// Any number.
    Number(f64),
    /// Text.
    Text(String),
}

/// What filters read about one user.
pub trait ProfileView {
    /// A profile property.
    fn property(&self, name: &str) -> Option<&PropertyValue>;
    /// The user's devices.
    fn devices(&self) -> &[Device];
    /// Occurrences of the behaviour's event meeting its conditions since `since_ms`.
    fn occurrences(&self, behaviour: &Behaviour, since_ms: i64) -> u32;
    /// Start (epoch ms) of the first and of the last day with such an occurrence since
    /// `since_ms`.
    fn first_and_last(&self, behaviour: &Behaviour, since_ms: i64) -> Option<(i64, i64)>;
    /// The filter of the saved segment `id`, if it exists.
    fn segment(&self, id: &str) -> Option<&Filter>;
}

const DAY_MS: i64 = 86_400_000;
const EARTH_RADIUS_KM: f64 = 6_371.008_8;

impl Filter {
    /// Whether the user matches, at `now_ms`.
    pub fn matches(&self, user: &dyn ProfileView, now_ms: i64) -> bool {
        match self {
            Filter::All(filters) => filters.iter().all(|f| f.matches(user, now_ms)),
            Filter::Any(filters) => filters.iter().any(|f| f.matches(user, now_ms)),
            Filter::Not(filter) => !filter.matches(user, now_ms),
            Filter::Property(condition) => {
                condition.op.matches(user.property(&condition.property), now_ms)
            }
            Filter::Device(condition) => user.devices().iter().any(|device| {
                condition.op.matches(device_field(device, &condition.property).as_ref(), now_ms)
            }),
            Filter::Near(places) => {
                location(user).is_some_and(|here| places.iter().any(|p| p.contains(here)))
            }
            Filter::Behaviour(behaviour) => {
                let since = now_ms - i64::from(behaviour.in_last_days) * DAY_MS;
                let count = user.occurrences(behaviour, since);
                let counted = count >= behaviour.at_least
                    && behaviour.at_most.is_none_or(|most| count <= most);
                let timed = behaviour.first.is_none() && behaviour.last.is_none()
                    || user.first_and_last(behaviour, since).is_some_and(|(first, last)| {
                        let holds = |op: &Option<Op>, at: i64| {
                            op.as_ref()
                                .is_none_or(|op| op.matches(Some(&PropertyValue::Long(at)), now_ms))
                        };
                        holds(&behaviour.first, first) && holds(&behaviour.last, last)
                    });
                counted && timed
            }
            Filter::Segment(id) => user.segment(id).is_some_and(|f| f.matches(user, now_ms)),
        }
    }

    /// Whether matching reads the user's event history: a behaviour predicate here or in a
    /// saved segment this filter references (`segment` resolves a segment's filter).
    pub fn reads_history<'s>(&self, segment: &dyn Fn(&str) -> Option<&'s Filter>) -> bool {
        match self {
            Filter::All(filters) | Filter::Any(filters) => {
                filters.iter().any(|f| f.reads_history(segment))
            }
            Filter::Not(filter) => filter.reads_history(segment),
            Filter::Behaviour(_) => true,
            Filter::Segment(id) => segment(id).is_some_and(|f| f.reads_history(segment)),
            Filter::Property(_) | Filter::Device(_) | Filter::Near(_) => false,
        }
    }

    /// Field paths (this filter being at `path`) of the `in_last_days` of behaviour predicates
    /// looking back more than `days`.
    pub fn look_backs_beyond(&self, days: u32, path: &str) -> Vec<String> {
        let nested = |key: &str, filters: &[Filter]| -> Vec<String> {
            let each = filters.iter().enumerate();
            each.flat_map(|(i, f)| f.look_backs_beyond(days, &format!("{path}.{key}[{i}]")))
                .collect()
        };
        match self {
            Filter::All(filters) => nested("all", filters),
            Filter::Any(filters) => nested("any", filters),
            Filter::Not(filter) => filter.look_backs_beyond(days, &format!("{path}.not")),
            Filter::Behaviour(b) if b.in_last_days > days => vec![format!("{path}.in_last_days")],
            _ => Vec::new(),
        }
    }

    /// Ids of the saved segments this filter references, each once, in order of appearance.
    pub fn segments(&self) -> Vec<&str> {
        let mut ids = Vec::new();
        self.collect_segments(&mut ids);
        ids
    }

    fn collect_segments<'f>(&'f self, ids: &mut Vec<&'f str>) {
        match self {
            Filter::All(filters) | Filter::Any(filters) => {
                filters.iter().for_each(|f| f.collect_segments(ids));
            }
            Filter::Not(filter) => filter.collect_segments(ids),
            Filter::Segment(id) if !ids.contains(&id.as_str()) => ids.push(id),
            Filter::Segment(_)
            | Filter::Property(_)
            | Filter::Device(_)
            | Filter::Near(_)
            | Filter::Behaviour(_) => {}
        }
    }
}

impl PropertyCondition {
    /// Whether a set of properties (e.g. an event's) meets this condition.
    pub fn matches_in(&self, properties: &crate::model::Properties, now_ms: i64) -> bool {
        self.op.matches(properties.get(&self.property), now_ms)
    }
}

impl Place {
    fn contains(&self, (lat, lon): (f64, f64)) -> bool {
        great_circle_km((self.lat, self.lon), (lat, lon)) <= self.radius_km
    }
}

/// Haversine distance in kilometres.
pub(crate) fn great_circle_km((lat1, lon1): (f64, f64), (lat2, lon2): (f64, f64)) -> f64 {
    let (phi1, phi2) = (lat1.to_radians(), lat2.to_radians());
    let d_phi = (lat2 - lat1).to_radians();
    let d_lambda = (lon2 - lon1).to_radians();
    let a = (d_phi / 2.0).sin().powi(2) + phi1.cos() * phi2.cos() * (d_lambda / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().asin()
}

fn location(user: &dyn ProfileView) -> Option<(f64, f64)> {
    Some((as_number(user.property("lat")?)?, as_number(user.property("lon")?)?))
}

fn device_field(device: &Device, field: &str) -> Option<PropertyValue> {
    let text = |v: &Option<String>| v.clone().map(PropertyValue::String);
    match field {
        "platform" => Some(PropertyValue::String(
            match device.platform {
                crate::model::Platform::Ios => "ios",
                crate::model::Platform::Android => "android",
            }
            .into(),
        )),
        "app_version" => text(&device.app_version),
        "os_version" => text(&device.os_version),
        "make" => text(&device.make),
        "model" => text(&device.model),
        "sdk_version" => text(&device.sdk_version),
        _ => None,
    }
}

fn as_number(value: &PropertyValue) -> Option<f64> {
    match value {
        PropertyValue::Long(n) => Some(*n as f64),
        PropertyValue::Double(n) => Some(*n),
        PropertyValue::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_time(value: &PropertyValue) -> Option<DateTime<Utc>> {
    match value {
        PropertyValue::Long(ms) => DateTime::from_timestamp_millis(*ms),
        PropertyValue::String(s) => {
            DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).ok().or_else(|| {
                chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|t| t.and_utc())
            })
        }
        _ => None,
    }
}

/// Milliseconds since the epoch of a date property (RFC 3339, `YYYY-MM-DD`, or epoch ms).
pub fn time_ms(value: &PropertyValue) -> Option<i64> {
    as_time(value).map(|t| t.timestamp_millis())
}

fn equals(value: &PropertyValue, scalar: &Scalar) -> bool {
    match (value, scalar) {
        (PropertyValue::Bool(a), Scalar::Bool(b)) => a == b,
        (PropertyValue::String(a), Scalar::Text(b)) => a == b,
        (value, Scalar::Number(b)) => as_number(value).is_some_and(|a| a == *b),
        (PropertyValue::Long(a), Scalar::Text(b)) => b.parse::<i64>().is_ok_and(|b| *a == b),
        _ => false,
    }
}

impl Op {
    /// Whether `value` (absent: `None`) meets the comparison at `now_ms`.
    pub fn matches(&self, value: Option<&PropertyValue>, now_ms: i64) -> bool {
        let value = value.filter(|v| !matches!(v, PropertyValue::Null));
        let number = || value.and_then(as_number);
        let text = || match value {
            Some(PropertyValue::String(s)) => Some(s.as_str()),
            _ => None,
        };
        let time = || value.and_then(as_time);
        match self {
            Op::Equals(s) => value.is_some_and(|v| equals(v, s)),
            Op::NotEquals(s) => !value.is_some_and(|v| equals(v, s)),
            Op::In(list) => value.is_some_and(|v| list.iter().any(|s| equals(v, s))),
            Op::NotIn(list) => !value.is_some_and(|v| list.iter().any(|s| equals(v, s))),
            Op::Between(low, high) => number().is_some_and(|n| *low <= n && n <= *high),
            Op::Gt(x) => number().is_some_and(|n| n > *x),
            Op::Gte(x) => number().is_some_and(|n| n >= *x),
            Op::Lt(x) => number().is_some_and(|n| n < *x),
            Op::Lte(x) => number().is_some_and(|n| n <= *x),
            Op::Exists => value.is_some(),
            Op::NotExists => value.is_none(),
            Op::Contains(part) => text().is_some_and(|t| t.contains(part.as_str())),
            Op::StartsWith(prefix) => text().is_some_and(|t| t.starts_with(prefix.as_str())),
            Op::Before(at) => time().is_some_and(|t| t < *at),
            Op::After(at) => time().is_some_and(|t| t > *at),
            Op::WithinLastDays(days) => time().is_some_and(|t| {
                let ms = t.timestamp_millis();
                ms <= now_ms && ms >= now_ms - i64::from(*days) * DAY_MS
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_francisco_to_paris_is_about_8960_km() {
        let km = great_circle_km((37.7749, -122.4194), (48.8566, 2.3522));
        assert!((km - 8_960.0).abs() < 30.0, "{km}");
    }

    #[test]
    fn numbers_compare_across_long_double_and_text() {
        assert!(Op::Equals(Scalar::Number(30.0)).matches(Some(&PropertyValue::Long(30)), 0));
        assert!(Op::Between(25.0, 40.0).matches(Some(&PropertyValue::String("33".into())), 0));
        assert!(!Op::Between(25.0, 40.0).matches(Some(&PropertyValue::Double(40.5)), 0));
        assert!(Op::NotEquals(Scalar::Text("x".into())).matches(None, 0), "absent is not equal");
        assert!(!Op::Exists.matches(Some(&PropertyValue::Null), 0), "null counts as absent");
    }

    #[test]
    fn dates_compare_from_rfc3339_day_or_epoch_ms() {
        let cutoff =
            DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc);
        assert!(Op::Before(cutoff).matches(Some(&PropertyValue::String("2025-12-31".into())), 0));
        assert!(
            Op::After(cutoff).matches(Some(&PropertyValue::Long(cutoff.timestamp_millis() + 1)), 0)
        );
        let now = cutoff.timestamp_millis();
        let two_days_ago = PropertyValue::Long(now - 2 * DAY_MS);
        assert!(Op::WithinLastDays(3).matches(Some(&two_days_ago), now));
        assert!(!Op::WithinLastDays(1).matches(Some(&two_days_ago), now));
    }
}
