//! A durable, time-ordered outbox behind a rate limit ("at most N per interval"). Items beyond
//! the current window wait in a state store in arrival order and leave on a timer when the next
//! window opens. The campaign stage keeps one per throttled campaign, the app stage one per
//! throttled app.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    campaign::Throttle,
    runtime::{ProcessError, ProcessorContext},
};

/// The rate window and the queue positions of one outbox; its owner persists it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OutboxState {
    /// Start of the current window.
    window_start: i64,
    /// Items sent in it.
    window_sent: u64,
    /// Sequence number of the oldest queued item.
    head: u64,
    /// Sequence number the next queued item gets.
    tail: u64,
    /// When the release timer fires, if scheduled.
    release_at: Option<i64>,
}

impl OutboxState {
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// Items queued.
    pub fn len(&self) -> u64 {
        self.tail - self.head
    }
}

/// What a release does with the queued items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Send up to the window's limit.
    Send,
    /// Keep everything queued (a paused campaign).
    Hold,
    /// Drop everything (a stopped campaign).
    Drop,
}

/// What a release did with one queued item (see [`Outbox::release_each`]).
pub enum Leave<T> {
    /// It left: it counts in the window.
    Sent,
    /// It was dropped: it does not count.
    Dropped,
    /// It stays queued, behind the items queued now (a paused owner).
    Held(T),
}

/// One outbox: where its items live and how fast they may leave.
pub struct Outbox<'a> {
    /// Store holding the queued items.
    pub store: &'a str,
    /// Owner id (campaign or app), the prefix of its item keys.
    pub owner: &'a str,
    /// Key of its release timer.
    pub timer: &'a [u8],
    /// The rate limit.
    pub throttle: Throttle,
}

impl Outbox<'_> {
    /// Offers `item` at `at`: returns it if it may leave now (the window has room and nothing
    /// waits before it), else queues it and makes sure the release timer is set. A new window
    /// opens when the offer happens ([`ProcessorContext::effective_ms`]), never at a past `at`.
    pub fn offer<T: Serialize>(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut OutboxState,
        item: T,
        at: i64,
    ) -> Result<Option<T>, ProcessError> {
        let at = at.max(ctx.effective_ms());
        if state.head == state.tail {
            if at >= state.window_start + self.throttle.per_ms {
                state.window_start = at;
                state.window_sent = 0;
            }
            if state.window_sent < self.throttle.max {
                state.window_sent += 1;
                return Ok(Some(item));
            }
        }
        self.queue(ctx, state, &item)?;
        Ok(None)
    }

    /// Queues `item` behind the others whatever the window's room (a paused owner's), and
    /// makes sure the release timer is set.
    pub fn queue<T: Serialize>(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut OutboxState,
        item: &T,
    ) -> Result<(), ProcessError> {
        self.push(ctx, state, item)?;
        if state.release_at.is_none() {
            let due = state.window_start.max(ctx.effective_ms() - self.throttle.per_ms)
                + self.throttle.per_ms;
            state.release_at = Some(due);
            ctx.schedule(due, self.timer)?;
        }
        Ok(())
    }

    /// Queues `item` behind the others and leaves the timing of its release to the owner (a
    /// throttle over shards releases on window tokens, see `stage_campaign::tokens`).
    pub fn push<T: Serialize>(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut OutboxState,
        item: &T,
    ) -> Result<(), ProcessError> {
        ctx.store(self.store)?.put_as(&self.key(state.tail), item)?;
        state.tail += 1;
        Ok(())
    }

    /// The release timer due at `at` fired: opens a window and hands queued items, oldest
    /// first, to `each` (with `true` when they are dropped rather than sent); reschedules while
    /// any wait. The window opens when the release happens ([`ProcessorContext::effective_ms`]),
    /// never at a past due time: an outbox catching up after downtime leaves at its rate.
    pub fn release<T: Serialize + DeserializeOwned>(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut OutboxState,
        at: i64,
        drain: Drain,
        mut each: impl FnMut(&mut ProcessorContext<'_>, T, bool) -> Result<(), ProcessError>,
    ) -> Result<(), ProcessError> {
        if drain == Drain::Hold {
            let at = at.max(ctx.effective_ms());
            state.release_at = None;
            return self.reschedule(ctx, state, at);
        }
        let dropping = drain == Drain::Drop;
        self.release_each(ctx, state, at, |ctx, item| {
            each(ctx, item, dropping)?;
            Ok(if dropping { Leave::Dropped } else { Leave::Sent })
        })
    }

    /// Like [`Self::release`] with a decision per item: `each` sends it (counted in the
    /// window), drops it, or holds it (queued again behind the others). Each item is looked
    /// at once per release, so a release ends even when every item is held.
    pub fn release_each<T: Serialize + DeserializeOwned>(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut OutboxState,
        at: i64,
        each: impl FnMut(&mut ProcessorContext<'_>, T) -> Result<Leave<T>, ProcessError>,
    ) -> Result<(), ProcessError> {
        let at = at.max(ctx.effective_ms());
        state.release_at = None;
        state.window_start = at;
        state.window_sent = self.take(ctx, state, self.throttle.max, each)?;
        self.reschedule(ctx, state, at)
    }

    /// Hands queued items, oldest first, to `each` until `max` were sent or each item queued
    /// now was looked at once; returns how many were sent. Sets no timer.
    pub fn take<T: Serialize + DeserializeOwned>(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut OutboxState,
        max: u64,
        mut each: impl FnMut(&mut ProcessorContext<'_>, T) -> Result<Leave<T>, ProcessError>,
    ) -> Result<u64, ProcessError> {
        let (end, mut sent) = (state.tail, 0);
        while state.head < end && sent < max {
            let key = self.key(state.head);
            let item = ctx.store(self.store)?.get_as::<T>(&key)?;
            ctx.store(self.store)?.delete(&key)?;
            state.head += 1;
            let Some(item) = item else { continue };
            match each(ctx, item)? {
                Leave::Sent => sent += 1,
                Leave::Dropped => {}
                Leave::Held(item) => self.push(ctx, state, &item)?,
            }
        }
        Ok(sent)
    }

    /// Sets the release timer for the next window while items wait.
    fn reschedule(
        &self,
        ctx: &mut ProcessorContext<'_>,
        state: &mut OutboxState,
        at: i64,
    ) -> Result<(), ProcessError> {
        if state.head < state.tail {
            let due = at + self.throttle.per_ms;
            state.release_at = Some(due);
            ctx.schedule(due, self.timer)?;
        }
        Ok(())
    }

    /// Item key: owner, then the big-endian sequence number (arrival order).
    fn key(&self, sequence: u64) -> Vec<u8> {
        [self.owner.as_bytes(), &[0], &sequence.to_be_bytes()].concat()
    }
}
