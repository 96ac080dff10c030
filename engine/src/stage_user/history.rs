//! Compact per-user event history: daily counts per history key, kept for a look-back window.
//! A key is an event name (every occurrence) or an event name with a hash of a behaviour
//! predicate's property conditions (occurrences meeting them, counted from the moment a
//! campaign references the predicate).

use std::collections::HashMap;

use crate::{
    campaign::Behaviour,
    runtime::{RuntimeError, Store},
};

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

/// Counts one occurrence under `key` on the day of `at_ms`; the first of a day also forgets the
/// key's counts older than `look_back_days` before it (only a new day makes counts expire, so
/// the other occurrences skip that scan).
pub fn record(
    store: &mut Store<'_>,
    user: &str,
    key: &str,
    at_ms: i64,
    look_back_days: i64,
) -> Result<(), RuntimeError> {
    let day = at_ms.div_euclid(DAY_MS);
    let entry = store_key(user, key, day);
    let earlier = store.get_as::<u32>(&entry)?;
    store.put_as(&entry, &earlier.unwrap_or(0).saturating_add(1))?;
    if earlier.is_some() {
        return Ok(());
    }
    let oldest = store_key(user, key, day - look_back_days);
    for (expired, _) in store.range(&store_key(user, key, i64::MIN), &oldest, 1_000)? {
        store.delete(&expired)?;
    }
    Ok(())
}

/// Every history key of `user` with its (day, count) entries.
pub fn load(
    store: &Store<'_>,
    user: &str,
) -> Result<HashMap<String, Vec<(i64, u32)>>, RuntimeError> {
    let mut history: HashMap<String, Vec<(i64, u32)>> = HashMap::new();
    for entry in entries(store, user)? {
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
    /// Occurrences that day.
    pub count: u32,
}

/// Every entry of `user`'s history.
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
        let count: u32 = serde_json::from_slice(&value).unwrap_or(0);
        let day = (u64::from_be_bytes(day) ^ (1 << 63)) as i64;
        let key = key.to_string();
        found.push(Entry { store_key: entry, key, day, count });
    }
    Ok(found)
}

/// Adds `count` occurrences under `key` on `day` to `user`'s history (e.g. merged from an
/// anonymous id).
pub fn add(
    store: &mut Store<'_>,
    user: &str,
    key: &str,
    day: i64,
    count: u32,
) -> Result<(), RuntimeError> {
    let entry = store_key(user, key, day);
    let total = store.get_as::<u32>(&entry)?.unwrap_or(0).saturating_add(count);
    store.put_as(&entry, &total)
}
