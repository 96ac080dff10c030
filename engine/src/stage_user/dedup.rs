//! De-duplication by event id: an event whose id the user's task saw within the window (an
//! SDK's retried batch, maybe on another partition: it runs after the repartition) is dropped
//! and counted. One entry per (user, event id) in the changelogged `dedup` store, removed by a
//! durable timer when the window ends (timers fire in bounded steps). Events without an id are
//! not de-duplicated.

use crate::runtime::{ProcessorContext, ProcessorCounter, RuntimeError};

/// Name of the store.
pub(super) const DEDUP: &str = "dedup";

/// Events dropped as duplicates.
pub(super) static DUPLICATES: ProcessorCounter = ProcessorCounter {
    name: "ingest_duplicates_total",
    help: "Events dropped because their event id was seen for the user within the window",
    label: "kind",
};

/// Prefix of entry (and timer) keys: a user id is never empty, so no key of the user stage's
/// other timers starts with a zero byte.
const PREFIX: &[u8] = b"\0dedup\0";

fn key(user: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(PREFIX.len() + user.len() + id.len() + 1);
    key.extend_from_slice(PREFIX);
    key.extend_from_slice(user.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Whether `user`'s event `id` was seen within `window_ms`; if not, it is remembered for that
/// long from now. A duplicate is counted.
pub(super) fn seen(
    ctx: &mut ProcessorContext<'_>,
    user: &str,
    id: &str,
    window_ms: i64,
) -> Result<bool, RuntimeError> {
    let key = key(user, id);
    if ctx.store(DEDUP)?.get(&key)?.is_some() {
        ctx.count(&DUPLICATES, "event");
        return Ok(true);
    }
    let now = ctx.now_ms();
    ctx.store(DEDUP)?.put_as(&key, &now)?;
    ctx.schedule(now.saturating_add(window_ms), &key)?;
    Ok(false)
}

/// Whether a timer key is a de-duplication entry's.
pub(super) fn is_expiry(timer_key: &[u8]) -> bool {
    timer_key.starts_with(PREFIX)
}

/// Forgets the entry whose window ended (its timer fired).
pub(super) fn expire(ctx: &mut ProcessorContext<'_>, timer_key: &[u8]) -> Result<(), RuntimeError> {
    ctx.store(DEDUP)?.delete(timer_key)
}
