//! The task side of the query channel: which requests of the queries table a task still has to
//! answer, the one it works on, and its replies.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    sign::ReplyKey, turns::QueryTurns, QueryReply, QueryRequest, QueryStatus, KINDS, QUERIES_TABLE,
};
use crate::{
    model::{topics::TopicNames, DeadLetter, SchemaRegistry},
    runtime::{Clock, ProcessError, ProcessorContext, Tick},
};

/// Requests a task keeps queued (not yet answered) at most; one past it is refused (a
/// `REFUSED` reply saying so) and dead-lettered.
pub const MAX_PENDING: usize = 64;
/// The largest request (its encoded bytes) a task takes; a larger one is dead-lettered.
pub const MAX_REQUEST_BYTES: usize = 512 * 1024;

/// How often a task reports its progress on a query, milliseconds.
const PROGRESS_EVERY_MS: i64 = 1_000;
/// How long a live task works on queries before it goes back to its records: a step reads
/// stores only, so the transaction's work budget (which counts writes) would not stop a scan.
/// One task of an instance gets a slice per loop pass ([`QueryTurns`]).
const SLICE: Duration = Duration::from_millis(50);

/// What one step of work on a query came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// More to do; this many more items were looked at.
    More(u64),
    /// Finished, after looking at this many more items: the answer (JSON).
    Done(u64, String),
    /// The query cannot be answered: why.
    Refused(String),
}

/// A request being worked on, with the processor's work state `W` (`None` before the first
/// step).
#[derive(Debug)]
pub struct Open<W> {
    /// The request.
    pub request: QueryRequest,
    /// The processor's work state.
    pub work: Option<W>,
    scanned: u64,
    reported_ms: i64,
}

/// The queries a task answers, in arrival order, one at a time. Held in the processor's fields,
/// not its stores: a task that crashes or moves loses the work, and its new owner starts over
/// from the request, which is still in the table (the client keeps each partition's last
/// answer).
#[derive(Debug)]
pub struct QueryDesk<W> {
    stale: bool,
    queue: VecDeque<QueryRequest>,
    current: Option<Open<W>>,
    /// Requests this processor took (answered, working on or skipped), until they leave the
    /// table.
    taken: HashSet<String>,
    /// When the current slice of work began (live tasks).
    slice: Option<Instant>,
    /// The instance's turns at query work, shared by its tasks.
    turns: Arc<QueryTurns>,
    /// The key replies are signed with, if the engine has one.
    key: Option<ReplyKey>,
}

impl<W> QueryDesk<W> {
    /// A desk taking its slices of live work in `turns`, shared by all the instance's tasks,
    /// signing its replies with the environment's query key ([`ReplyKey::from_env`]).
    ///
    /// # Panics
    ///
    /// When the key is set but unreadable or too short: `herald engine` checks it before it
    /// builds any task.
    pub fn new(turns: Arc<QueryTurns>) -> Self {
        let key = ReplyKey::from_env().unwrap_or_else(|error| panic!("{error}"));
        Self {
            stale: true,
            queue: VecDeque::new(),
            current: None,
            taken: HashSet::new(),
            slice: None,
            turns,
            key,
        }
    }

    /// Marks the queue stale (call from `on_global_change` for [`QUERIES_TABLE`]).
    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    /// The open request to work on next, if any (give it back with [`Self::settle`]). Requests
    /// past their deadline, deleted from the table, or keyed to another task are dropped. A live
    /// task gets one only in its instance's turn (else `None`: it asks again next pass).
    ///
    /// A request that does not decode, is of a kind no task answers ([`KINDS`]) or is over
    /// [`MAX_REQUEST_BYTES`] is dead-lettered on `topics.dead_letter` with the reason (by the
    /// task owning its request id, so once); one of an unknown kind is also refused at once (a
    /// `REFUSED` reply saying so from every task that would answer it), and one past
    /// [`MAX_PENDING`] queued is refused.
    pub fn take(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        topics: &TopicNames,
    ) -> Result<Option<Open<W>>, ProcessError> {
        if self.stale {
            self.refresh(ctx, topics)?;
        }
        let open = self.next_open(ctx);
        let task = ctx.task();
        let Some(open) = open else {
            self.slice = None;
            self.turns.leaves(task);
            return Ok(None);
        };
        if ctx.clock() == Clock::EventTime {
            return Ok(Some(open));
        }
        if self.slice.is_some_and(|started| started.elapsed() >= SLICE) {
            self.slice = None;
        }
        if self.slice.is_none() {
            if !self.turns.ask(task, ctx.now_ms()) {
                self.current = Some(open);
                return Ok(None);
            }
            self.slice = Some(Instant::now());
        }
        Ok(Some(open))
    }

    fn next_open(&mut self, ctx: &ProcessorContext<'_>) -> Option<Open<W>> {
        let now = ctx.now_ms();
        if let Some(open) = self.current.take() {
            if open.request.deadline_ms > now {
                return Some(open);
            }
        }
        while let Some(request) = self.queue.pop_front() {
            if request.deadline_ms > now {
                return Some(Open { request, work: None, scanned: 0, reported_ms: now });
            }
        }
        None
    }

    /// Records what a step on `open` came to: a progress reply about once a second, the answer
    /// or the refusal when it is over (written to `replies`). Returns whether to go on now: a
    /// live task yields to its records after a slice of [`SLICE`] (it goes on at its next tick);
    /// a replay works to the end.
    pub fn settle(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        replies: &str,
        mut open: Open<W>,
        step: Step,
    ) -> Result<Tick, ProcessError> {
        let now = ctx.now_ms();
        let (status, body, error) = match step {
            Step::More(scanned) => {
                open.scanned += scanned;
                if now - open.reported_ms >= PROGRESS_EVERY_MS {
                    open.reported_ms = now;
                    self.reply(ctx, replies, &open, QueryStatus::Progress, None, None)?;
                }
                self.current = Some(open);
                return Ok(self.go_on(ctx.clock()));
            }
            Step::Done(scanned, body) => {
                open.scanned += scanned;
                (QueryStatus::Done, Some(body), None)
            }
            Step::Refused(reason) => (QueryStatus::Refused, None, Some(reason)),
        };
        self.reply(ctx, replies, &open, status, body, error)?;
        if self.queue.is_empty() {
            self.slice = None;
            self.turns.leaves(ctx.task());
            return Ok(Tick::Idle);
        }
        Ok(self.go_on(ctx.clock()))
    }

    /// [`Tick::More`] while the current slice lasts (always on the event-time clock).
    fn go_on(&mut self, clock: Clock) -> Tick {
        if clock == Clock::EventTime {
            return Tick::More;
        }
        if self.slice.is_some_and(|started| started.elapsed() < SLICE) {
            return Tick::More;
        }
        self.slice = None;
        Tick::Idle
    }

    /// Queues the table's requests this processor has not taken yet and may answer; forgets
    /// those that left the table (answered and deleted by their client, or cancelled);
    /// dead-letters the hostile ones and refuses those past [`MAX_PENDING`].
    fn refresh(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        topics: &TopicNames,
    ) -> Result<(), ProcessError> {
        self.stale = false;
        let Some(table) = ctx.global(QUERIES_TABLE) else { return Ok(()) };
        let now = ctx.now_ms();
        let mut present = HashSet::new();
        // Dead letters (written by the owner of the request id only), refusals (each with its
        // reply), and requests past the pending limit.
        let (mut rejected, mut refused, mut busy) = (Vec::new(), Vec::new(), Vec::new());
        for (key, value) in table.iter() {
            let id = String::from_utf8_lossy(key).into_owned();
            present.insert(id.clone());
            if !self.taken.insert(id.clone()) {
                continue;
            }
            let reject = |reason| Rejected { key: key.to_vec(), value: value.to_vec(), reason };
            let request = match admit(value) {
                Ok(request) => request,
                Err(reason) => {
                    rejected.push(reject(reason));
                    continue;
                }
            };
            let mine = request.key.as_ref().is_none_or(|key| ctx.owns_key(key.as_bytes()));
            let answerable = mine && request.deadline_ms > now;
            if !KINDS.contains(&request.kind.as_str()) {
                // Refused at once by every task that would answer it: its client waits no more.
                let reason =
                    format!("unknown query kind {:?} (known: {})", request.kind, KINDS.join(", "));
                rejected.push(reject(reason.clone()));
                if answerable {
                    refused.push((request, reason));
                }
            } else if answerable && self.queue.len() >= MAX_PENDING {
                busy.push(request);
            } else if answerable {
                self.queue.push_back(request);
            }
        }
        // Written by the task owning the request id only: once, however many tasks read it.
        rejected.retain(|r| ctx.owns_key(&r.key));
        for rejection in rejected {
            rejection.dead_letter(ctx, topics)?;
        }
        for (request, reason) in refused {
            self.refuse(ctx, &topics.query_replies, request, reason)?;
        }
        for request in busy {
            let reason = format!("{MAX_PENDING} queries already pending on this task; try later");
            let bytes = SchemaRegistry::builtin().encode(&request).ok();
            let letter = Rejected {
                key: request.request_id.clone().into_bytes(),
                value: bytes.unwrap_or_default(),
                reason: format!("query refused: over {MAX_PENDING} pending on this task"),
            };
            self.refuse(ctx, &topics.query_replies, request, reason)?;
            letter.dead_letter(ctx, topics)?;
        }
        self.taken.retain(|id| present.contains(id));
        self.queue.retain(|r| present.contains(&r.request_id));
        self.queue.make_contiguous().sort_by_key(|r| r.issued_at_ms);
        if self.current.as_ref().is_some_and(|o| !present.contains(&o.request.request_id)) {
            self.current = None;
        }
        Ok(())
    }

    /// Refuses `request` before any work on it: a `REFUSED` reply saying `reason`.
    fn refuse(
        &self,
        ctx: &mut ProcessorContext<'_>,
        replies: &str,
        request: QueryRequest,
        reason: String,
    ) -> Result<(), ProcessError> {
        let open = Open { request, work: None, scanned: 0, reported_ms: ctx.now_ms() };
        self.reply(ctx, replies, &open, QueryStatus::Refused, None, Some(reason))
    }

    /// Writes a reply on `open` to `replies`, signed with the desk's key if it has one.
    fn reply(
        &self,
        ctx: &mut ProcessorContext<'_>,
        replies: &str,
        open: &Open<W>,
        status: QueryStatus,
        body: Option<String>,
        error: Option<String>,
    ) -> Result<(), ProcessError> {
        let mut reply = QueryReply {
            request_id: open.request.request_id.clone(),
            partition: ctx.task().partition,
            partitions: ctx.partitions(),
            status,
            scanned: i64::try_from(open.scanned).unwrap_or(i64::MAX),
            body,
            error,
            timestamp_ms: ctx.now_ms(),
            signature: None,
        };
        if let Some(key) = &self.key {
            key.sign(&mut reply, &open.request);
        }
        Ok(ctx.send_record(replies, open.request.request_id.as_bytes(), &reply)?)
    }
}

/// The request in `value`, if it is one a task may read: it decodes and is not over
/// [`MAX_REQUEST_BYTES`]; else why not.
fn admit(value: &[u8]) -> Result<QueryRequest, String> {
    if value.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "query request of {} bytes, over the limit of {MAX_REQUEST_BYTES}",
            value.len()
        ));
    }
    SchemaRegistry::builtin()
        .decode(value)
        .map_err(|e| format!("query request does not decode: {e}"))
}

/// A request no task takes, for the dead-letter topic.
struct Rejected {
    key: Vec<u8>,
    value: Vec<u8>,
    reason: String,
}

impl Rejected {
    /// Writes it to `topics.dead_letter`, and logs it. A global table's entry has no partition
    /// or offset of its own: both are -1. A value over [`MAX_REQUEST_BYTES`] is left out.
    fn dead_letter(
        self,
        ctx: &mut ProcessorContext<'_>,
        topics: &TopicNames,
    ) -> Result<(), ProcessError> {
        tracing::warn!(request = %String::from_utf8_lossy(&self.key), reason = %self.reason,
            "query request dead-lettered");
        let value = (self.value.len() <= MAX_REQUEST_BYTES).then_some(self.value);
        let letter = DeadLetter {
            source_topic: topics.queries.clone(),
            source_partition: -1,
            source_offset: -1,
            key: Some(self.key.clone()),
            value,
            reason: self.reason,
            stage: format!("task {} (queries)", ctx.task()),
            timestamp_ms: ctx.now_ms(),
        };
        Ok(ctx.send_record(&topics.dead_letter, &self.key, &letter)?)
    }
}
