//! Durable timers, kept in a changelogged store keyed by (due time, key) so that iteration
//! order is firing order.

use super::{RuntimeError, Store, Timer};

/// Store key of a timer: the due time as big-endian bytes with the sign bit flipped (so byte
/// order is numeric order), then the user key.
fn encode(at_ms: i64, key: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(8 + key.len());
    encoded.extend_from_slice(&((at_ms as u64) ^ (1 << 63)).to_be_bytes());
    encoded.extend_from_slice(key);
    encoded
}

fn decode(encoded: &[u8]) -> Option<Timer> {
    let time: [u8; 8] = encoded.get(..8)?.try_into().ok()?;
    Some(Timer { at_ms: (u64::from_be_bytes(time) ^ (1 << 63)) as i64, key: encoded[8..].to_vec() })
}

/// Adds a timer; returns whether it was new.
pub(crate) fn schedule(
    store: &mut Store<'_>,
    at_ms: i64,
    key: &[u8],
) -> Result<bool, RuntimeError> {
    let encoded = encode(at_ms, key);
    let new = store.get(&encoded)?.is_none();
    if new {
        store.put(&encoded, &[])?;
    }
    Ok(new)
}

/// Removes a timer; returns whether it was pending.
pub(crate) fn cancel(store: &mut Store<'_>, at_ms: i64, key: &[u8]) -> Result<bool, RuntimeError> {
    let encoded = encode(at_ms, key);
    let pending = store.get(&encoded)?.is_some();
    if pending {
        store.delete(&encoded)?;
    }
    Ok(pending)
}

/// Up to `limit` timers due at or before `now_ms`, in firing order, left in the store: each is
/// removed with [`cancel`] just before it fires, so a timer cancelled by an earlier one of the
/// same batch does not fire.
pub(crate) fn due(
    store: &Store<'_>,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<Timer>, RuntimeError> {
    let end = encode(now_ms.saturating_add(1), &[]);
    Ok(store.range(&[], &end, limit)?.iter().filter_map(|(encoded, _)| decode(encoded)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_orders_by_time_including_negative_times() {
        let times = [-5_000i64, -1, 0, 1, 1_764_000_000_000];
        let encoded: Vec<_> = times.iter().map(|t| encode(*t, b"k")).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        for t in times {
            assert_eq!(decode(&encode(t, b"key")), Some(Timer { at_ms: t, key: b"key".to_vec() }));
        }
    }
}
