//! Compact per-user event history: daily counts per history key, kept for a look-back window.
//! A key is an event name (every occurrence), an event name with a hash of a behaviour
//! predicate's property conditions (occurrences meeting them, counted from the moment a
//! campaign references the predicate), or an event's property set on a day
//! (`<event> 0x1e <day> 0x1e <mark><properties as JSON>`, mark `*` when the set holds every
//! property of the event, `=` when only the kept ones), so that a predicate a new campaign
//! brings sees the occurrences from before it existed. Property sets are bounded per user,
//! event and day by [`PropertyHistory`], what they took of it kept in an entry of their own
//! (`<event> 0x1e <day> 0x1e #`, not a history key). Beside them, one entry per user holds the user's
//! activity by local hour of day (see [`record_activity`]), from which `timezone: best` picks
//! each user's hour.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Timelike};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{
    campaign::Behaviour,
    model::{AppEvent, Properties},
    runtime::{ProcessorCounter, RuntimeError, Store},
    settings::{KeptProperties, PropertyHistory},
};

/// Event property sets offered to the history, by what became of them.
pub(super) static PROPERTY_SETS: ProcessorCounter = ProcessorCounter {
    name: "history_properties_total",
    help: "Event property sets offered to the history: kept, or over_budget (not kept: the \
           event is counted by name only)",
    label: "outcome",
};

/// Separates an event name, a day and a property set in a property-set history key.
const SET: char = '\u{1e}';

/// Milliseconds per day.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// History key of a behaviour predicate.
pub fn behaviour_key(behaviour: &Behaviour) -> String {
    if behaviour.conditions.is_empty() {
        behaviour.event.clone()
    } else {
        let conditions = format!("{:?}", behaviour.conditions);
        let hash = crate::runtime::partitioner::murmur2(conditions.as_bytes()) as u32;
        format!("{}#{hash:08x}", behaviour.event)
    }
}

fn store_key(user: &str, key: &str, day: i64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(user.len() + key.len() + 10);
    bytes.extend_from_slice(user.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(key.as_bytes());
    bytes.push(0);
    // Sign bit flipped so byte order is numeric order.
    bytes.extend_from_slice(&((day as u64) ^ (1 << 63)).to_be_bytes());
    bytes
}

/// Counts one occurrence under `key` on the day of `at_ms` (counts expire in [`expire`]).
pub fn record(
    store: &mut Store<'_>,
    user: &str,
    key: &str,
    at_ms: i64,
) -> Result<(), RuntimeError> {
    let entry = store_key(user, key, at_ms.div_euclid(DAY_MS));
    let earlier = store.get_as::<u32>(&entry)?;
    store.put_as(&entry, &earlier.unwrap_or(0).saturating_add(1))
}

/// Most entries of a user [`expire`] looks at in one pass (the rest expire on a later day).
const EXPIRY_SCAN: usize = 100_000;

/// Forgets `user`'s counts and property sets of days before `oldest_day`: once per user and
/// day, at their first event of a day later than any before (see [`record_activity`]), so the
/// events of a day do not scan for what expired. The user's activity entry bounds the days
/// their history holds ([`Activity::oldest`]): while none is before `oldest_day`, nothing is
/// scanned (a user's first events, and every day until their oldest entry expires).
pub fn expire(store: &mut Store<'_>, user: &str, oldest_day: i64) -> Result<(), RuntimeError> {
    let activity = Activity::read(store, user)?;
    if activity.is_some_and(|activity| activity.oldest >= oldest_day) {
        return Ok(());
    }
    let mut prefix = user.as_bytes().to_vec();
    prefix.push(0);
    let stored = store.prefix(&prefix, EXPIRY_SCAN)?;
    // Past the scan's limit, days not looked at stay unknown: the next day scans again. So it
    // does when nothing is kept (an entry written without the bound, e.g. of an event whose
    // stamp has no calendar day, is not missed for long).
    let complete = stored.len() < EXPIRY_SCAN;
    let mut oldest_kept: Option<i64> = None;
    for (entry, _) in stored {
        // <key> 0x00 <8-byte day>; the activity entry is too short to hold a day.
        let Some(day) = entry.len().checked_sub(8).filter(|at| *at > prefix.len() + 1) else {
            continue;
        };
        let Ok(day) = <[u8; 8]>::try_from(&entry[day..]).map(u64::from_be_bytes) else {
            continue;
        };
        let day = (day ^ (1 << 63)) as i64;
        if day < oldest_day {
            store.delete(&entry)?;
        } else {
            oldest_kept = Some(oldest_kept.map_or(day, |oldest| oldest.min(day)));
        }
    }
    if let Some(mut activity) = activity {
        activity.oldest = oldest_kept.filter(|_| complete).unwrap_or(oldest_day);
        activity.write(store, user)?;
    }
    Ok(())
}

/// Every history key of `user` with its (day, count) entries (not the property sets' budget
/// entries).
pub fn load(
    store: &Store<'_>,
    user: &str,
) -> Result<HashMap<String, Vec<(i64, u32)>>, RuntimeError> {
    let mut history: HashMap<String, Vec<(i64, u32)>> = HashMap::new();
    for entry in entries(store, user)?.into_iter().filter(|entry| !is_budget(&entry.key)) {
        history.entry(entry.key).or_default().push((entry.day, entry.count));
    }
    Ok(history)
}

/// One day's count of one of a user's history keys, as stored.
pub struct Entry {
    /// The entry's key in the store.
    pub store_key: Vec<u8>,
    /// The history key.
    pub key: String,
    /// Day number since the Unix epoch.
    pub day: i64,
    /// Occurrences that day (of a property sets' budget entry: the sets it counts).
    pub count: u32,
}

/// Whether `key` is that of a budget entry of an event's property sets on a day
/// (`<event> 0x1e <day> 0x1e #`), not a history key.
fn is_budget(key: &str) -> bool {
    key.strip_suffix(BUDGET).is_some_and(|key| key.ends_with(SET))
}

/// Every entry of `user`'s history, the property sets' budget entries among them (so that
/// forgetting a user forgets them too; [`add`] passes over them, a merged set charging the
/// known user's budget itself).
pub fn entries(store: &Store<'_>, user: &str) -> Result<Vec<Entry>, RuntimeError> {
    let mut prefix = user.as_bytes().to_vec();
    prefix.push(0);
    let mut found = Vec::new();
    for (entry, value) in store.prefix(&prefix, 100_000)? {
        // <key> 0x00 <8-byte day>: the day is fixed-width and may itself contain zero bytes.
        let rest = &entry[prefix.len()..];
        let Some(split) = rest.len().checked_sub(9) else { continue };
        let (Ok(key), Ok(day)) =
            (std::str::from_utf8(&rest[..split]), <[u8; 8]>::try_from(&rest[split + 1..]))
        else {
            continue;
        };
        let count = if is_budget(key) {
            serde_json::from_slice::<StoredSpent>(&value)
                .map_or(0, |spent| SetsSpent::from(spent).sets)
        } else {
            serde_json::from_slice(&value).unwrap_or(0)
        };
        let day = (u64::from_be_bytes(day) ^ (1 << 63)) as i64;
        let key = key.to_string();
        found.push(Entry { store_key: entry, key, day, count });
    }
    Ok(found)
}

/// Adds `count` occurrences under `key` on `day` to `user`'s history (e.g. merged from an
/// anonymous id). A property set new to `user` that day counts in their budget of the day's
/// sets, as if recorded there (not refused past it: a merge does not know the limits); a
/// budget entry is passed over (the sets merged charge it).
pub fn add(
    store: &mut Store<'_>,
    user: &str,
    key: &str,
    day: i64,
    count: u32,
) -> Result<(), RuntimeError> {
    if is_budget(key) {
        return Ok(());
    }
    let entry = store_key(user, key, day);
    let earlier = store.get_as::<u32>(&entry)?;
    if let (None, Some((day_prefix, set))) = (earlier, property_set(key)) {
        let budget = store_key(user, &format!("{day_prefix}{BUDGET}"), day);
        let spent = SetsSpent::read(store, &budget)?;
        let bytes = u32::try_from(set.len()).unwrap_or(u32::MAX);
        let spent = SetsSpent {
            sets: spent.sets.saturating_add(1),
            bytes: spent.bytes.saturating_add(bytes),
        };
        store.put_as(&budget, &spent)?;
    }
    let total = earlier.unwrap_or(0).saturating_add(count);
    store.put_as(&entry, &total)?;
    let mut activity = Activity::read(store, user)?.unwrap_or(Activity::none_since(day));
    activity.oldest = activity.oldest.min(day);
    activity.write(store, user)
}

/// A property-set key's `<event> 0x1e <day> 0x1e` and its set as JSON (after the mark), if
/// `key` is one.
fn property_set(key: &str) -> Option<(&str, &str)> {
    let (event, rest) = key.split_once(SET)?;
    let (day, marked) = rest.split_once(SET)?;
    let set = marked.strip_prefix(['*', '='])?;
    Some((&key[..event.len() + day.len() + 2 * SET.len_utf8()], set))
}

/// A property-set key's day: fixed width, sign bit flipped, so text order is numeric order.
fn day_text(day: i64) -> String {
    format!("{:016x}", (day as u64) ^ (1 << 63))
}

/// Whether [`record_properties`] kept an event's property set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    /// Counted under its set.
    Kept,
    /// Nothing to keep (no kept property, and not every property is kept).
    Nothing,
    /// A new set past the day's budget: not kept.
    OverBudget,
}

impl SetOutcome {
    /// The outcome's label in [`PROPERTY_SETS`], if counted.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Self::Kept => Some("kept"),
            Self::Nothing => None,
            Self::OverBudget => Some("over_budget"),
        }
    }
}

/// Counts `event` under its set of kept properties on its day, within the day's budget of
/// sets and bytes per user and event (sets expire in [`expire`]).
pub fn record_properties(
    store: &mut Store<'_>,
    event: &AppEvent,
    limits: &PropertyHistory,
) -> Result<SetOutcome, RuntimeError> {
    let (mark, kept): (char, Properties) = match &limits.keep {
        KeptProperties::All => ('*', event.properties.clone()),
        KeptProperties::Only(names) => {
            let kept: Properties = event
                .properties
                .iter()
                .filter(|(name, _)| names.contains(*name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            if kept.is_empty() {
                return Ok(SetOutcome::Nothing);
            }
            ('=', kept)
        }
    };
    let set = serde_json::to_string(&kept)
        .map_err(|e| RuntimeError::StateValue { store: "history".into(), reason: e.to_string() })?;
    let user = &event.user_id;
    let day = event.timestamp_ms.div_euclid(DAY_MS);
    let day_prefix = format!("{}{SET}{}{SET}", event.name, day_text(day));
    let entry = store_key(user, &format!("{day_prefix}{mark}{set}"), day);
    if let Some(count) = store.get_as::<u32>(&entry)? {
        store.put_as(&entry, &count.saturating_add(1))?;
        return Ok(SetOutcome::Kept);
    }
    let budget = store_key(user, &format!("{day_prefix}{BUDGET}"), day);
    let spent = SetsSpent::read(store, &budget)?;
    let bytes = spent.bytes.saturating_add(u32::try_from(set.len()).unwrap_or(u32::MAX));
    if spent.sets >= limits.max_sets || bytes > limits.max_bytes {
        return Ok(SetOutcome::OverBudget);
    }
    store.put_as(&entry, &1u32)?;
    store.put_as(&budget, &SetsSpent { sets: spent.sets + 1, bytes })?;
    Ok(SetOutcome::Kept)
}

/// Marks a user's budget entry of an event's property sets on a day
/// (`<event> 0x1e <day> 0x1e #`), beside the sets (`*` or `=` in the same place).
const BUDGET: char = '#';

/// What a user's property sets of one event on one day have taken of their budget: kept in
/// its own entry, so that a new set is judged by one read instead of a scan of the day's sets
/// (which first applied the store's pending writes: 14% of the user stage's time at 1,000,000
/// profiles). History written before the entry existed has none: a user's sets of that day
/// counted from zero again, so that day may keep up to twice its budget.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SetsSpent {
    /// Distinct sets kept.
    sets: u32,
    /// Bytes of the sets as JSON.
    bytes: u32,
}

/// A budget entry as stored: the entry, or a plain count of sets (its bytes not known), as
/// an instance without the merge of budgets wrote one it was sent in a merge (its `add`
/// counted the sets under the known user's budget key).
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredSpent {
    Spent(SetsSpent),
    Sets(u32),
}

impl From<StoredSpent> for SetsSpent {
    fn from(stored: StoredSpent) -> Self {
        match stored {
            StoredSpent::Spent(spent) => spent,
            StoredSpent::Sets(sets) => Self { sets, bytes: 0 },
        }
    }
}

impl SetsSpent {
    /// The budget entry at `budget`, none spent if there is none.
    fn read(store: &Store<'_>, budget: &[u8]) -> Result<Self, RuntimeError> {
        Ok(store.get_as::<StoredSpent>(budget)?.map(Self::from).unwrap_or_default())
    }
}

/// Occurrences of `behaviour` per day from `first_day` on, as its property sets in `history`
/// show them: sets meeting every condition (a set holding only the kept properties is used
/// only when it names every property the conditions name).
pub fn property_set_days(
    history: &HashMap<String, Vec<(i64, u32)>>,
    behaviour: &Behaviour,
    first_day: i64,
) -> BTreeMap<i64, u32> {
    let mut days = BTreeMap::new();
    let event_prefix = format!("{}{SET}", behaviour.event);
    for (key, counts) in history {
        let Some((_, marked)) = key.strip_prefix(&event_prefix).and_then(|k| k.split_once(SET))
        else {
            continue;
        };
        let (complete, set) = match marked.split_at_checked(1) {
            Some(("*", set)) => (true, set),
            Some(("=", set)) => (false, set),
            _ => continue,
        };
        let Ok(properties) = serde_json::from_str::<Properties>(set) else { continue };
        let named = |c: &crate::campaign::PropertyCondition| properties.contains_key(&c.property);
        if !complete && !behaviour.conditions.iter().all(named) {
            continue;
        }
        for &(day, count) in counts.iter().filter(|(day, _)| *day >= first_day) {
            let at = day * DAY_MS;
            if behaviour.conditions.iter().all(|c| c.matches_in(&properties, at)) {
                *days.entry(day).or_insert(0u32) += count;
            }
        }
    }
    days
}

/// Key of a user's hour-of-day activity: `<user> 0x00 0x1c`, too short to read as a day's
/// count, so [`entries`] passes over it.
fn activity_key(user: &str) -> Vec<u8> {
    let mut key = user.as_bytes().to_vec();
    key.extend_from_slice(&[0, 0x1c]);
    key
}

/// A user's events by local hour of day, decayed: an event weighs half as much every quarter
/// of the look-back window (an event as old as the window weighs 1/16); and the oldest day of
/// their history.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Activity {
    /// The day the weights are as of.
    day: i64,
    /// Weight of the events in each local hour, 0 to 23.
    hours: [f32; 24],
    /// No entry of the user's history is of an earlier day (`i64::MIN`: not known, as in an
    /// entry written before this bound was kept). A user's first event, or first merged entry,
    /// starts it. Entries of users whose history began before activity entries existed are
    /// not bounded by it: they expire once the bound itself does (reads look back by day, so
    /// an entry kept longer is never counted).
    oldest: i64,
}

impl Activity {
    /// Bytes of an entry: the day, the 24 weights, the oldest day.
    const BYTES: usize = 8 + 24 * 4 + 8;
    /// Bytes of an entry written before the oldest day was kept.
    const BYTES_WITHOUT_OLDEST: usize = 8 + 24 * 4;

    /// No activity yet, as of `day`, with no history before it.
    fn none_since(day: i64) -> Self {
        Self { day, hours: [0.0; 24], oldest: day }
    }

    fn read(store: &Store<'_>, user: &str) -> Result<Option<Self>, RuntimeError> {
        let Some(bytes) = store.get(&activity_key(user))? else { return Ok(None) };
        let known = [Self::BYTES, Self::BYTES_WITHOUT_OLDEST].contains(&bytes.len());
        let Some((day, rest)) = bytes.split_first_chunk::<8>().filter(|_| known) else {
            return Ok(None);
        };
        let (hours, oldest) = rest.split_at(24 * 4);
        let oldest = <[u8; 8]>::try_from(oldest).map_or(i64::MIN, i64::from_be_bytes);
        let mut activity = Self { day: i64::from_be_bytes(*day), hours: [0.0; 24], oldest };
        for (hour, weight) in activity.hours.iter_mut().zip(hours.chunks_exact(4)) {
            *hour = f32::from_le_bytes(weight.try_into().unwrap_or_default());
        }
        Ok(Some(activity))
    }

    fn write(&self, store: &mut Store<'_>, user: &str) -> Result<(), RuntimeError> {
        store.put(&activity_key(user), &self.bytes())
    }

    /// The entry's bytes.
    fn bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(Self::BYTES);
        bytes.extend_from_slice(&self.day.to_be_bytes());
        for weight in self.hours {
            bytes.extend_from_slice(&weight.to_le_bytes());
        }
        bytes.extend_from_slice(&self.oldest.to_be_bytes());
        bytes
    }

    /// The weight of an event `days` days older than the weights.
    fn decay(days: i64, look_back_days: i64) -> f32 {
        let quarter = (look_back_days as f32 / 4.0).max(1.0);
        0.5f32.powf(days as f32 / quarter)
    }
}

/// Counts an event of `user` at `at_ms` in its local hour in `tz` (the user's timezone at the
/// time, else the app's). Returns whether it is the user's first event of a day later than any
/// before (their first event too).
pub fn record_activity(
    store: &mut Store<'_>,
    user: &str,
    at_ms: i64,
    tz: Tz,
    look_back_days: i64,
) -> Result<bool, RuntimeError> {
    let Some(at) = DateTime::from_timestamp_millis(at_ms) else { return Ok(false) };
    let hour = at.with_timezone(&tz).hour() as usize;
    let day = at_ms.div_euclid(DAY_MS);
    let earlier = Activity::read(store, user)?;
    let new_day = earlier.is_none_or(|activity| day > activity.day);
    let mut activity = earlier.unwrap_or(Activity::none_since(day));
    // The event's counts are of its day (a late event's of an earlier one).
    activity.oldest = activity.oldest.min(day);
    if day > activity.day {
        let decay = Activity::decay(day - activity.day, look_back_days);
        activity.hours.iter_mut().for_each(|weight| *weight *= decay);
        activity.day = day;
    }
    activity.hours[hour] += Activity::decay(activity.day - day, look_back_days);
    activity.write(store, user)?;
    Ok(new_day)
}

/// The local hour `user` was most active in (the earliest of equals), if they had any event
/// within `look_back_days` before `now_ms`.
pub fn best_hour(
    store: &Store<'_>,
    user: &str,
    now_ms: i64,
    look_back_days: i64,
) -> Result<Option<u32>, RuntimeError> {
    let Some(activity) = Activity::read(store, user)? else { return Ok(None) };
    if now_ms.div_euclid(DAY_MS) - activity.day > look_back_days {
        return Ok(None);
    }
    let mut best: Option<(u32, f32)> = None;
    for (hour, weight) in (0u32..).zip(activity.hours) {
        if weight > 0.0 && best.is_none_or(|(_, most)| weight > most) {
            best = Some((hour, weight));
        }
    }
    Ok(best.map(|(hour, _)| hour))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::PropertyValue, runtime::with_scratch_store};

    const UTC: Tz = chrono_tz::UTC;

    /// `user`'s (key, day) entries.
    fn days(store: &Store<'_>, user: &str) -> Vec<(String, i64)> {
        let entries = entries(store, user).unwrap().into_iter().filter(|e| !is_budget(&e.key));
        entries.map(|entry| (entry.key.split(SET).next().unwrap().to_string(), entry.day)).collect()
    }

    #[test]
    fn a_users_first_event_of_a_later_day_forgets_every_count_and_set_past_the_look_back() {
        with_scratch_store(|store| {
            let limits = PropertyHistory::default();
            let event = |user: &str, day: i64| AppEvent {
                event_id: format!("{user}-{day}"),
                app_id: "shop".into(),
                user_id: user.into(),
                name: "Bought".into(),
                timestamp_ms: day * DAY_MS,
                properties: [("item".to_string(), PropertyValue::String("tea".into()))].into(),
                sdk_version: None,
            };
            let mut count = |user: &str, day: i64| {
                let new_day = record_activity(store, user, day * DAY_MS, UTC, 30).unwrap();
                if new_day {
                    expire(store, user, day - 30).unwrap();
                }
                record(store, user, "Bought", day * DAY_MS).unwrap();
                record_properties(store, &event(user, day), &limits).unwrap();
                new_day
            };
            assert!(count("u1", 100), "a first event");
            assert!(!count("u1", 100), "the same day");
            assert!(count("u2", 100));
            assert!(count("u1", 110));
            assert!(!count("u1", 105), "a late event: no later day");
            assert!(count("u1", 135), "day 100 is past the 30 days looked back from 135");
            let kept = days(store, "u1");
            let both = |day: i64| [("Bought".to_string(), day), ("Bought".to_string(), day)];
            assert_eq!(kept.iter().filter(|(_, day)| *day == 100).count(), 0, "{kept:?}");
            for day in [105, 110, 135] {
                let on_day: Vec<_> = kept.iter().filter(|(_, d)| *d == day).cloned().collect();
                assert_eq!(on_day, both(day), "a count and a property set on day {day}");
            }
            assert_eq!(days(store, "u2"), both(100), "another user's history is untouched");
            assert_eq!(best_hour(store, "u1", 135 * DAY_MS, 30).unwrap(), Some(0));
        });
    }

    #[test]
    fn entries_older_than_the_look_back_expire_however_they_came_late_merged_or_before_the_bound() {
        with_scratch_store(|store| {
            let event = |store: &mut Store<'_>, user: &str, day: i64| {
                if record_activity(store, user, day * DAY_MS, UTC, 30).unwrap() {
                    expire(store, user, day - 30).unwrap();
                }
                record(store, user, "Opened", day * DAY_MS).unwrap();
            };
            let day_list = |store: &Store<'_>, user: &str| -> Vec<i64> {
                days(store, user).into_iter().map(|(_, day)| day).collect()
            };
            // A late event's count, of a day before the user's first.
            event(store, "late", 100);
            event(store, "late", 60);
            assert_eq!(day_list(store, "late"), [60, 100]);
            event(store, "late", 101);
            assert_eq!(day_list(store, "late"), [100, 101], "day 60 is past 30 days from 101");
            // An entry merged from an anonymous id, of an earlier day.
            event(store, "merged", 100);
            add(store, "merged", "Opened", 50, 3).unwrap();
            event(store, "merged", 101);
            assert_eq!(day_list(store, "merged"), [100, 101]);
            // A history and activity entry written before the activity kept its oldest day.
            store.put(&store_key("older", "Opened", 10), b"1").unwrap();
            let mut activity = Activity::none_since(99).bytes();
            activity.truncate(Activity::BYTES_WITHOUT_OLDEST);
            store.put(&activity_key("older"), &activity).unwrap();
            event(store, "older", 100);
            assert_eq!(day_list(store, "older"), [100]);
            // Days within the look-back of the oldest entry keep every day's count.
            for day in [102, 120, 131] {
                event(store, "merged", day);
            }
            assert_eq!(day_list(store, "merged"), [101, 102, 120, 131]);
        });
    }

    #[test]
    fn a_days_property_sets_keep_within_the_budget_and_their_budget_entry_expires_with_the_day() {
        with_scratch_store(|store| {
            let limits = PropertyHistory { max_sets: 2, max_bytes: 1024, ..Default::default() };
            let bought = |item: &str, day: i64| AppEvent {
                event_id: format!("{item}-{day}"),
                app_id: "shop".into(),
                user_id: "u1".into(),
                name: "Bought".into(),
                timestamp_ms: day * DAY_MS + 1,
                properties: [("item".to_string(), PropertyValue::String(item.into()))].into(),
                sdk_version: None,
            };
            let offer = |store: &mut Store<'_>, item: &str, day: i64| {
                record_properties(store, &bought(item, day), &limits).unwrap()
            };
            assert_eq!(offer(store, "tea", 100), SetOutcome::Kept);
            assert_eq!(offer(store, "cup", 100), SetOutcome::Kept);
            assert_eq!(offer(store, "tea", 100), SetOutcome::Kept, "a set kept earlier that day");
            assert_eq!(offer(store, "pot", 100), SetOutcome::OverBudget, "a third set that day");
            assert_eq!(offer(store, "pot", 101), SetOutcome::Kept, "the next day has its own");
            let sets = |store: &Store<'_>| {
                let mut sets: Vec<_> = load(store, "u1").unwrap().into_iter().collect();
                sets.sort();
                sets.into_iter()
                    .map(|(key, days)| (key.rsplit(SET).next().unwrap().to_string(), days))
                    .collect::<Vec<_>>()
            };
            let tea = r#"*{"item":"tea"}"#.to_string();
            let (cup, pot) = (r#"*{"item":"cup"}"#.to_string(), r#"*{"item":"pot"}"#.to_string());
            assert_eq!(
                sets(store),
                [(cup, vec![(100, 1)]), (tea, vec![(100, 2)]), (pot.clone(), vec![(101, 1)])],
                "the history holds the sets alone, not their budget entries"
            );
            expire(store, "u1", 101).unwrap();
            let stored: Vec<_> = store.prefix(b"u1\0", 100).unwrap();
            assert_eq!(stored.len(), 2, "day 101's set and its budget entry: {stored:?}");
            assert_eq!(sets(store), [(pot, vec![(101, 1)])]);
        });
    }

    #[test]
    fn a_merged_property_set_counts_in_the_known_users_budget_and_the_anonymous_budget_goes_with_its_history(
    ) {
        with_scratch_store(|store| {
            let limits = PropertyHistory { max_sets: 2, max_bytes: 1024, ..Default::default() };
            let bought = |user: &str, item: &str| AppEvent {
                event_id: format!("{user}-{item}"),
                app_id: "shop".into(),
                user_id: user.into(),
                name: "Bought".into(),
                timestamp_ms: 100 * DAY_MS + 1,
                properties: [("item".to_string(), PropertyValue::String(item.into()))].into(),
                sdk_version: None,
            };
            let offer = |store: &mut Store<'_>, user: &str, item: &str| {
                record_properties(store, &bought(user, item), &limits).unwrap()
            };
            assert_eq!(offer(store, "anon", "tea"), SetOutcome::Kept);
            assert_eq!(offer(store, "anon", "cup"), SetOutcome::Kept);
            assert_eq!(offer(store, "ana", "cup"), SetOutcome::Kept);
            // The merge: every entry of anon's, its budget entry among them, added to ana's.
            let merged = entries(store, "anon").unwrap();
            assert_eq!(merged.iter().filter(|e| is_budget(&e.key)).count(), 1, "anon's budget");
            for entry in &merged {
                add(store, "ana", &entry.key, entry.day, entry.count).unwrap();
            }
            for entry in merged {
                store.delete(&entry.store_key).unwrap();
            }
            assert_eq!(store.prefix(b"anon\0", 100).unwrap(), [], "nothing of anon's is left");
            let budget = store_key("ana", &format!("Bought{SET}{}{SET}#", day_text(100)), 100);
            let spent: SetsSpent = store.get_as(&budget).unwrap().unwrap();
            assert_eq!(spent.sets, 2, "ana's cup and anon's tea; the cup both had counts once");
            assert_eq!(offer(store, "ana", "pot"), SetOutcome::OverBudget, "a third set that day");
            assert_eq!(offer(store, "ana", "tea"), SetOutcome::Kept, "a set kept that day");
            let mut kept: Vec<_> = load(store, "ana").unwrap().into_iter().collect();
            kept.sort();
            let kept: Vec<_> = kept
                .into_iter()
                .map(|(key, days)| (key.rsplit(SET).next().unwrap().to_string(), days))
                .collect();
            let (cup, tea) = (r#"*{"item":"cup"}"#.to_string(), r#"*{"item":"tea"}"#.to_string());
            assert_eq!(kept, [(cup, vec![(100, 2)]), (tea, vec![(100, 2)])]);
            // A budget entry an instance without the merge of budgets wrote as a plain count.
            let budget = store_key("bea", &format!("Bought{SET}{}{SET}#", day_text(100)), 100);
            store.put_as(&budget, &2u32).unwrap();
            assert_eq!(offer(store, "bea", "pot"), SetOutcome::OverBudget, "two sets counted");
        });
    }
}
