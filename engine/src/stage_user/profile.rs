//! A user's profile as the user stage keeps it, and the view filters evaluate.

use std::collections::HashMap;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{
    campaign::{Behaviour, Filter, ProfileView, SegmentBook},
    model::{Device, Platform, ProfileUpdate, Properties, PropertyValue},
    runtime::{RuntimeError, Store},
};

/// Properties and devices of one user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Custom, demographic, location, reachability, timezone and language properties.
    #[serde(default)]
    pub properties: Properties,
    /// Devices, one per installation.
    #[serde(default)]
    pub devices: Vec<Device>,
}

impl Profile {
    /// Applies a profile update: set, unset, devices added (replacing the same device id or
    /// token), tokens removed.
    pub fn apply(&mut self, update: &ProfileUpdate) {
        for (name, value) in &update.set {
            self.properties.insert(name.clone(), value.clone());
        }
        for name in &update.unset {
            self.properties.remove(name);
        }
        for device in &update.devices_added {
            self.devices.retain(|d| d.device_id != device.device_id && d.token != device.token);
            self.devices.push(device.clone());
        }
        for token in &update.tokens_removed {
            self.remove_token(token);
        }
    }

    /// Adds `age` (whole years at `now_ms`) from `date_of_birth` when the profile has a date of
    /// birth and no age, so filters on age work with either.
    pub fn derive_age(&mut self, now_ms: i64) {
        if self.properties.contains_key("age") {
            return;
        }
        let born = self.properties.get("date_of_birth").and_then(crate::campaign::time_ms);
        let (Some(born), Some(now)) = (
            born.and_then(chrono::DateTime::from_timestamp_millis),
            chrono::DateTime::from_timestamp_millis(now_ms),
        ) else {
            return;
        };
        use chrono::Datelike;
        let mut years = now.year() - born.year();
        if (now.month(), now.day()) < (born.month(), born.day()) {
            years -= 1;
        }
        if years >= 0 {
            self.properties.insert("age".into(), PropertyValue::Long(i64::from(years)));
        }
    }

    /// Forgets the device with `token` (e.g. after a `token invalid` receipt).
    pub fn remove_token(&mut self, token: &str) {
        self.devices.retain(|d| d.token != token);
    }

    /// The timezone a stored profile (its bytes in `store`) names, if a valid one, read without
    /// decoding the rest of the profile.
    pub fn stored_timezone(store: &Store<'_>, stored: &[u8]) -> Result<Option<Tz>, RuntimeError> {
        #[derive(Deserialize)]
        struct Stored {
            #[serde(default)]
            properties: TimezoneOnly,
        }
        #[derive(Deserialize, Default)]
        struct TimezoneOnly {
            timezone: Option<serde_json::Value>,
        }
        let name = store.decode_as::<Stored>(stored)?.properties.timezone;
        Ok(name.as_ref().and_then(serde_json::Value::as_str).and_then(|name| name.parse().ok()))
    }

    /// The user's timezone, if the profile names a valid one.
    pub fn timezone(&self) -> Option<Tz> {
        match self.properties.get("timezone") {
            Some(PropertyValue::String(name)) => name.parse().ok(),
            _ => None,
        }
    }

    /// Devices a push can reach on `platforms`: with a token, and the user not opted out.
    pub fn reachable_devices(&self, platforms: &[Platform]) -> Vec<Device> {
        let opted_out =
            matches!(self.properties.get("push_opt_out"), Some(PropertyValue::Bool(true)));
        if opted_out {
            return Vec::new();
        }
        self.devices
            .iter()
            .filter(|d| !d.token.is_empty() && platforms.contains(&d.platform))
            .cloned()
            .collect()
    }
}

/// A profile with its event history, as filters see it.
pub struct UserView<'a> {
    /// The profile.
    pub profile: &'a Profile,
    /// Daily counts per history key: (day number, count).
    pub history: &'a HashMap<String, Vec<(i64, u32)>>,
    /// The saved segments campaigns may reference.
    pub segments: &'a SegmentBook,
}

impl UserView<'_> {
    /// (day number, count) entries of the behaviour since `since_ms`: its own history key's
    /// counts (kept from when a campaign first referenced it) or, for a predicate with
    /// property conditions, the event's kept property sets meeting them (kept since the
    /// event's first occurrence), whichever counts more that day (both only miss occurrences).
    fn days(&self, behaviour: &Behaviour, since_ms: i64) -> Vec<(i64, u32)> {
        let first_day = since_ms.div_euclid(super::history::DAY_MS);
        let own = self
            .history
            .get(&super::history::behaviour_key(behaviour))
            .into_iter()
            .flatten()
            .copied()
            .filter(|(day, _)| *day >= first_day);
        let mut days = if behaviour.conditions.is_empty() {
            Default::default()
        } else {
            super::history::property_set_days(self.history, behaviour, first_day)
        };
        for (day, count) in own {
            let most = days.entry(day).or_insert(0);
            *most = (*most).max(count);
        }
        days.into_iter().filter(|(_, count)| *count > 0).collect()
    }
}

impl ProfileView for UserView<'_> {
    fn property(&self, name: &str) -> Option<&PropertyValue> {
        self.profile.properties.get(name)
    }

    fn devices(&self) -> &[Device] {
        &self.profile.devices
    }

    fn occurrences(&self, behaviour: &Behaviour, since_ms: i64) -> u32 {
        self.days(behaviour, since_ms).into_iter().map(|(_, n)| n).sum()
    }

    fn first_and_last(&self, behaviour: &Behaviour, since_ms: i64) -> Option<(i64, i64)> {
        let days: Vec<i64> =
            self.days(behaviour, since_ms).into_iter().map(|(day, _)| day).collect();
        let (first, last) = (days.iter().min()?, days.iter().max()?);
        Some((first * super::history::DAY_MS, last * super::history::DAY_MS))
    }

    fn segment(&self, id: &str) -> Option<&Filter> {
        self.segments.get(id).map(|segment| &segment.who)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_is_derived_from_the_date_of_birth() {
        let mut profile = Profile::default();
        profile
            .properties
            .insert("date_of_birth".into(), PropertyValue::String("1990-11-27".into()));
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .timestamp_millis();
        profile.derive_age(now);
        assert_eq!(
            profile.properties["age"],
            PropertyValue::Long(35),
            "birthday tomorrow: still 35"
        );
        let mut explicit = Profile::default();
        explicit.properties.insert("age".into(), PropertyValue::Long(20));
        explicit
            .properties
            .insert("date_of_birth".into(), PropertyValue::String("1990-01-01".into()));
        explicit.derive_age(now);
        assert_eq!(explicit.properties["age"], PropertyValue::Long(20), "an explicit age wins");
    }
}
