//! What the user's task remembers having seen, per user, for a window: one entry per (user, id)
//! in a changelogged store, holding when it was first seen; an entry older than the window no
//! longer counts. Expired entries are deleted by a sweep over the store in bounded steps on
//! ticks, a pass every half window, so remembering an id costs one write (no timer per entry)
//! and an entry lingers at most one and a half windows.
//!
//! Two memories use it:
//! - [`EVENTS`], de-duplication by event id: an event whose id the user's task saw within the
//!   ingest window (an SDK's retried batch, maybe on another partition: it runs after the
//!   repartition) is dropped and counted. Events without an id are not de-duplicated.
//! - [`OCCURRENCES`], trigger occurrences judged: one occurrence is one notification. A
//!   producer's retry after the event-id window comes again as the same occurrence (the same run
//!   id, hence the same message ids); the user's task remembers each occurrence it passed to a
//!   campaign as a candidate for the settings' `limits.occurrence_retention` (at least as long
//!   as the send gate keeps its decision on a notification, so the two agree), and a repeat
//!   within it is counted skipped `duplicate` instead. It is kept with the user, a place no edit
//!   of a campaign moves (its shards, its home), and it is judged before any campaign limit, so
//!   a repeat takes no place wherever the campaign runs.

use crate::runtime::{ProcessorContext, ProcessorCounter, RuntimeError, Tick};

/// A memory of ids seen per user (see the module doc).
#[derive(Debug, Clone, Copy)]
pub(super) struct Memory {
    /// Name of its store.
    pub store: &'static str,
    /// Whether an entry still counts when exactly the window has passed since it was seen.
    end_inclusive: bool,
}

/// Event ids seen within the ingest de-duplication window (its end counts).
pub(super) const EVENTS: Memory = Memory { store: "dedup", end_inclusive: true };

/// Trigger occurrences (`campaign \0 run id`) passed on within `limits.occurrence_retention`
/// (remembered for exactly that long: at its end a repeat is a new notification).
pub(super) const OCCURRENCES: Memory = Memory { store: "occurrences", end_inclusive: false };

/// Entries looked at per sweep step.
const SWEEP_STEP: usize = 1_000;

/// Repeats dropped: `event` (an event id seen within the ingest window), `occurrence` (a
/// trigger occurrence judged within `limits.occurrence_retention`).
pub(super) static DUPLICATES: ProcessorCounter = ProcessorCounter {
    name: "ingest_duplicates_total",
    help: "Events (kind event) or trigger occurrences (kind occurrence) dropped because the user's task saw them within their window",
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

impl Memory {
    /// Whether an entry first seen at `seen` still counts at `now`.
    fn within(self, seen: i64, now: i64, window_ms: i64) -> bool {
        let age = now.saturating_sub(seen);
        age < window_ms || (self.end_inclusive && age == window_ms)
    }

    /// Whether `user`'s `id` was seen within `window_ms`; if not, it is remembered from now.
    pub(super) fn seen(
        self,
        ctx: &mut ProcessorContext<'_>,
        user: &str,
        id: &str,
        window_ms: i64,
    ) -> Result<bool, RuntimeError> {
        let key = key(user, id);
        let now = ctx.now_ms();
        let mut store = ctx.store(self.store)?;
        let earlier = store.get(&key)?.and_then(|value| seen_at(&value));
        if earlier.is_some_and(|seen| self.within(seen, now, window_ms)) {
            return Ok(true);
        }
        store.put_as(&key, &now)?;
        Ok(false)
    }
}

/// Where the sweep of a task's expired entries of one memory stands (in memory: after a restart
/// a new pass starts at the first tick, which is safe because a pass only deletes what no
/// longer counts).
#[derive(Debug)]
pub(super) struct Sweep {
    /// The memory swept.
    memory: Memory,
    /// The next key to look at in the current pass, if one is under way.
    from: Option<Vec<u8>>,
    /// When (task clock) the next pass starts.
    next_pass: i64,
}

impl Sweep {
    /// A sweep of `memory`, its first pass at the first tick.
    pub(super) fn of(memory: Memory) -> Self {
        Self { memory, from: None, next_pass: 0 }
    }

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
        let mut store = ctx.store(self.memory.store)?;
        let entries = store.range(&from, &[], SWEEP_STEP)?;
        for (key, value) in &entries {
            if !seen_at(value).is_some_and(|seen| self.memory.within(seen, now, window_ms)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_counts_to_the_end_of_its_window_an_occurrence_until_it() {
        assert!(EVENTS.within(0, 10, 10) && !EVENTS.within(0, 11, 10));
        assert!(OCCURRENCES.within(0, 9, 10) && !OCCURRENCES.within(0, 10, 10));
        assert!(EVENTS.within(5, 0, 10), "seen later than now (a clock going back): counts");
    }
}
