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
//!
//! Both are kept per user id, so they move with an alias (see `alias`): when an anonymous id
//! merges into a known user, its entries that still count ([`Memory::entries_of`]) travel in
//! the `UserMerge` record and the known user's task keeps them under the known user
//! ([`Memory::keep`]); the anonymous id's task forgets them ([`Memory::forget`]) in the same
//! transaction. A producer's retry of the anonymous id's event, which the link sends to the
//! known user, is then a repeat there too. A merge carries at most [`MAX_CARRIED`] entries
//! ([`MAX_CARRIED_BYTES`] of ids) of each memory; an id holding more (no real device does)
//! leaves the rest behind, warned about and counted by [`LEFT_BEHIND`].

use crate::{
    runtime::{ProcessorContext, ProcessorCounter, RuntimeError, Tick},
    settings::Settings,
};

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

/// Both memories.
pub(super) const MEMORIES: [Memory; 2] = [EVENTS, OCCURRENCES];

/// Each memory with its window under `settings`.
pub(super) fn windows(settings: &Settings) -> [(Memory, i64); 2] {
    [(EVENTS, settings.ingest().dedup_window_ms), (OCCURRENCES, settings.occurrence_retention_ms())]
}

/// Entries looked at per sweep step.
const SWEEP_STEP: usize = 1_000;

/// Most entries of one memory a merge carries to the known user.
pub(super) const MAX_CARRIED: usize = 10_000;

/// Most bytes of ids of one memory a merge carries: with both memories full the merge stays
/// well under the producer's record limit (1 MB by default), so its size never refuses an alias.
pub(super) const MAX_CARRIED_BYTES: usize = 300_000;

/// Most entries of one user looked at, per memory, when they move or are forgotten (those
/// that no longer count are among them; the sweep deletes any beyond).
const MAX_LOOKED_AT: usize = 2 * MAX_CARRIED;

/// Merges that left some of the anonymous id's entries behind (over [`MAX_CARRIED`] or
/// [`MAX_CARRIED_BYTES`]), by memory (its store).
pub(super) static LEFT_BEHIND: ProcessorCounter = ProcessorCounter {
    name: "ingest_merge_seen_left_total",
    help: "Aliases whose anonymous id remembered more ids (by memory) than its merge carries to the known user; the rest stay behind",
    label: "memory",
};

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

/// The key range of `user`'s entries: `[from, to)`.
fn range_of(user: &str) -> (Vec<u8>, Vec<u8>) {
    let from = key(user, "");
    let mut to = from.clone();
    if let Some(last) = to.last_mut() {
        *last = 1;
    }
    (from, to)
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

    /// The memory whose store is `store`, if this version has it.
    pub(super) fn named(store: &str) -> Option<Self> {
        MEMORIES.into_iter().find(|memory| memory.store == store)
    }

    /// `user`'s entries that still count at `ctx`'s now under `window_ms`, as (id, first
    /// seen): at most [`MAX_CARRIED`] of them and [`MAX_CARRIED_BYTES`] of ids, among the
    /// first entries of `user`; a user holding more leaves the rest, warned about and counted.
    pub(super) fn entries_of(
        self,
        ctx: &mut ProcessorContext<'_>,
        user: &str,
        window_ms: i64,
    ) -> Result<Vec<(String, i64)>, RuntimeError> {
        let (from, to) = range_of(user);
        let now = ctx.now_ms();
        let entries = ctx.store(self.store)?.range(&from, &to, MAX_LOOKED_AT)?;
        let mut left = entries.len() == MAX_LOOKED_AT;
        let (mut carried, mut bytes) = (Vec::new(), 0);
        for (key, value) in entries {
            let Some(seen) = seen_at(&value).filter(|&seen| self.within(seen, now, window_ms))
            else {
                continue;
            };
            let Ok(id) = String::from_utf8(key[from.len()..].to_vec()) else { continue };
            if carried.len() == MAX_CARRIED || bytes + id.len() > MAX_CARRIED_BYTES {
                left = true;
                break;
            }
            bytes += id.len();
            carried.push((id, seen));
        }
        if left {
            tracing::warn!(
                memory = self.store,
                carried = carried.len(),
                "an anonymous id remembers more ids than its merge carries; the rest stay behind"
            );
            ctx.count(&LEFT_BEHIND, self.store);
        }
        Ok(carried)
    }

    /// Remembers `user`'s `id` as first seen at `first_seen` (an entry carried from an id
    /// merged into `user`). An entry `user` has stays as it is, unless it was seen earlier:
    /// the later time counts longer, so a repeat either id would have dropped is dropped.
    pub(super) fn keep(
        self,
        ctx: &mut ProcessorContext<'_>,
        user: &str,
        id: &str,
        first_seen: i64,
    ) -> Result<(), RuntimeError> {
        let key = key(user, id);
        let mut store = ctx.store(self.store)?;
        let own = store.get(&key)?.and_then(|value| seen_at(&value));
        if own.is_none_or(|seen| seen < first_seen) {
            store.put_as(&key, &first_seen)?;
        }
        Ok(())
    }

    /// Deletes `user`'s entries (an id merged into another user, never looked up again): those
    /// [`Memory::entries_of`] looked at; any beyond are left to the sweep.
    pub(super) fn forget(
        self,
        ctx: &mut ProcessorContext<'_>,
        user: &str,
    ) -> Result<(), RuntimeError> {
        let (from, to) = range_of(user);
        let mut store = ctx.store(self.store)?;
        for (key, _) in store.range(&from, &to, MAX_LOOKED_AT)? {
            store.delete(&key)?;
        }
        Ok(())
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

    #[test]
    fn a_users_range_holds_its_entries_only() {
        let (from, to) = range_of("u1");
        let inside = |user: &str, id: &str| (from.clone()..to.clone()).contains(&key(user, id));
        assert!(inside("u1", "e-1") && inside("u1", "") && inside("u1", "\u{10FFFF}"));
        assert!(!inside("u", "1") && !inside("u10", "e-1") && !inside("u2", "e-1"));
        assert_eq!(Memory::named("occurrences").map(|m| m.store), Some(OCCURRENCES.store));
        assert!(Memory::named("later").is_none(), "a memory of a later version is passed over");
    }
}
