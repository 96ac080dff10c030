//! De-duplication by event id: an event whose id the user's task saw within the window (an
//! SDK's retried batch, maybe on another partition: it runs after the repartition) is dropped
//! and counted. One entry per (user, event id) in the changelogged `dedup` store, holding when
//! it was first seen; an entry older than the window no longer counts. Expired entries are
//! deleted by a sweep over the store in bounded steps on ticks, a pass every half window, so
//! remembering an id costs one write (no timer per event) and an entry lingers at most one and
//! a half windows. Events without an id are not de-duplicated.

use crate::runtime::{ProcessorContext, ProcessorCounter, RuntimeError, Tick};

/// Name of the store.
pub(super) const DEDUP: &str = "dedup";

/// Entries looked at per sweep step.
const SWEEP_STEP: usize = 1_000;

/// Events dropped as duplicates.
pub(super) static DUPLICATES: ProcessorCounter = ProcessorCounter {
    name: "ingest_duplicates_total",
    help: "Events dropped because their event id was seen for the user within the window",
    label: "kind",
};

/// Prefix of entry keys (kept from when entries were also timer keys).
const PREFIX: &[u8] = b"\0dedup\0";

fn key(user: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(PREFIX.len() + user.len() + id.len() + 1);
    key.extend_from_slice(PREFIX);
    key.extend_from_slice(user.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// When an entry was first seen (epoch milliseconds, as JSON); `None` if unreadable.
fn seen_at(value: &[u8]) -> Option<i64> {
    serde_json::from_slice(value).ok()
}

/// Whether an entry first seen at `seen` still counts at `now` (the window's end is inclusive).
fn within(seen: i64, now: i64, window_ms: i64) -> bool {
    now.saturating_sub(seen) <= window_ms
}

/// Whether `user`'s event `id` was seen within `window_ms`; if not, it is remembered from now.
/// A duplicate is counted.
pub(super) fn seen(
    ctx: &mut ProcessorContext<'_>,
    user: &str,
    id: &str,
    window_ms: i64,
) -> Result<bool, RuntimeError> {
    let key = key(user, id);
    let now = ctx.now_ms();
    let mut store = ctx.store(DEDUP)?;
    let earlier = store.get(&key)?.and_then(|value| seen_at(&value));
    if earlier.is_some_and(|seen| within(seen, now, window_ms)) {
        ctx.count(&DUPLICATES, "event");
        return Ok(true);
    }
    store.put_as(&key, &now)?;
    Ok(false)
}

/// Where the sweep of a task's expired entries stands (in memory: after a restart a new pass
/// starts at the first tick, which is safe because a pass only deletes what no longer counts).
#[derive(Debug, Default)]
pub(super) struct Sweep {
    /// The next key to look at in the current pass, if one is under way.
    from: Option<Vec<u8>>,
    /// When (task clock) the next pass starts.
    next_pass: i64,
}

impl Sweep {
    /// Deletes a bounded step of the entries whose window ended before `ctx`'s now; a pass
    /// starts every half window.
    pub(super) fn step(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        window_ms: i64,
    ) -> Result<Tick, RuntimeError> {
        let now = ctx.now_ms();
        let from = match self.from.take() {
            Some(from) => from,
            None if now >= self.next_pass => PREFIX.to_vec(),
            None => return Ok(Tick::Idle),
        };
        let mut store = ctx.store(DEDUP)?;
        let entries = store.range(&from, &[], SWEEP_STEP)?;
        for (key, value) in &entries {
            if !seen_at(value).is_some_and(|seen| within(seen, now, window_ms)) {
                store.delete(key)?;
            }
        }
        match entries.last() {
            Some((last, _)) if entries.len() == SWEEP_STEP => {
                self.from = Some([last.as_slice(), &[0]].concat());
                Ok(Tick::More)
            }
            _ => {
                self.next_pass = now.saturating_add((window_ms / 2).max(1));
                Ok(Tick::Idle)
            }
        }
    }
}
