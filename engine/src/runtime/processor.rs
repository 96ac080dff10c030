//! The operator API: a [`Processor`] handles records and timers through a [`ProcessorContext`].

use super::{
    global::GlobalTables, output::Output, store::TaskState, timers, Clock, ProcessError,
    ProcessorCounter, RuntimeError, RuntimeMetrics, Store, TaskId,
};

/// One input record as the processor sees it.
#[derive(Debug, Clone, Copy)]
pub struct SourceRecord<'a> {
    /// Topic it was read from.
    pub topic: &'a str,
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset (replay: line number or source offset).
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value; `None` for tombstones.
    pub value: Option<&'a [u8]>,
    /// Record timestamp, epoch milliseconds.
    pub timestamp_ms: i64,
}

/// A due timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// When it was due, epoch milliseconds.
    pub at_ms: i64,
    /// The key it was scheduled with.
    pub key: Vec<u8>,
}

/// What a processor's [`Processor::on_tick`] left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing pending.
    Idle,
    /// More steps of the current work remain.
    More,
}

/// An operator. One instance exists per task; it keeps its state in the task's stores, never in
/// its own fields (those are lost on a crash or when the task moves). It may keep copies of what
/// its stores hold (e.g. decoded values) in its fields: an aborted transaction or a moved task
/// starts a new instance, and a rejected call is followed by [`Processor::on_rolled_back`].
pub trait Processor: Send {
    /// Handles one input record.
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_>,
        record: &SourceRecord<'_>,
    ) -> Result<(), ProcessError>;

    /// Handles a due timer. The timer is already removed when this runs.
    fn on_timer(
        &mut self,
        _ctx: &mut ProcessorContext<'_>,
        _timer: &Timer,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Called whenever the task's clock advances (live: every few milliseconds, idle or not;
    /// replay: whenever the latest input time of the whole replay moves, so every task fires
    /// timers and ticks on one clock, like live tasks on the wall clock), after due timers. For
    /// work a processor does in bounded steps, such as scanning its store for a scheduled run;
    /// return [`Tick::More`] to be called again at once, while the transaction's work budget
    /// lasts (then in the next transaction).
    fn on_tick(&mut self, _ctx: &mut ProcessorContext<'_>) -> Result<Tick, ProcessError> {
        Ok(Tick::Idle)
    }

    /// Called in every task after a global table changed (`value` is `None` for a deletion), so
    /// the processor can refresh what it derives from the table (e.g. compiled campaigns).
    fn on_global_change(&mut self, _table: &str, _key: &[u8], _value: Option<&[u8]>) {}

    /// Called after a call of this processor was rejected and its store writes undone: forget
    /// any copy of store values the call may have changed.
    fn on_rolled_back(&mut self) {}
}

/// What a processor can do while handling a record or a timer: use its task's stores, write to
/// its sinks, schedule and cancel timers, read global tables. Every effect is part of the current
/// transaction.
pub struct ProcessorContext<'a> {
    pub(crate) task: TaskId,
    pub(crate) partitions: i32,
    pub(crate) state: &'a TaskState,
    pub(crate) out: &'a mut dyn Output,
    pub(crate) sinks: &'a [String],
    pub(crate) globals: &'a GlobalTables,
    pub(crate) timer_store: &'a str,
    pub(crate) timestamp_ms: i64,
    pub(crate) now_ms: i64,
    pub(crate) effective_ms: i64,
    pub(crate) timers_delta: i64,
    pub(crate) clock: Clock,
    pub(crate) metrics: &'a RuntimeMetrics,
}

impl<'a> ProcessorContext<'a> {
    /// The task this processor instance serves.
    pub fn task(&self) -> TaskId {
        self.task
    }

    /// Whether records keyed `key` on this sub-topology's sources come to this task (the
    /// producers' murmur2 partitioning), e.g. to let exactly one task act for a global table's row.
    pub fn owns_key(&self, key: &[u8]) -> bool {
        super::partitioner::partition_for(key, self.partitions) == self.task.partition
    }

    /// How many partitions (so tasks) the processor's sub-topology has.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// Timestamp of the record or timer being handled; outputs carry it.
    pub fn timestamp_ms(&self) -> i64 {
        self.timestamp_ms
    }

    /// Current time of the task's clock (wall time, or stream time on the event-time clock).
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// When the effects of this call take place, e.g. when a released notification leaves: on
    /// the wall clock the current time (a timer firing late, after downtime or behind a backlog,
    /// acts now, not at its past due time); on the event-time clock the record's or timer's own
    /// time (the clock passes through every timer in order, so a replay acts as a live engine
    /// that was running would have).
    pub fn effective_ms(&self) -> i64 {
        self.effective_ms
    }

    /// The clock the task runs on: the wall clock live, event time in replays.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Adds one to the processor counter `counter` under label value `label`.
    pub fn count(&self, counter: &ProcessorCounter, label: &str) {
        self.metrics.count(counter, label, 1);
    }

    /// The store `name`, declared in this sub-topology.
    pub fn store(&mut self, name: &str) -> Result<Store<'_>, RuntimeError> {
        self.state.store(name, &mut *self.out, self.timestamp_ms)
    }

    /// Writes a record to sink `topic` (declared in this sub-topology); Kafka partitions it by key.
    pub fn send(&mut self, topic: &str, key: &[u8], value: &[u8]) -> Result<(), RuntimeError> {
        if !self.sinks.iter().any(|s| s == topic) {
            return Err(RuntimeError::Topology(format!(
                "{topic} is not a sink of task {}",
                self.task
            )));
        }
        self.out.emit(topic, key, value, self.timestamp_ms)
    }

    /// Encodes `record` (Avro single-object) and writes it to sink `topic` under `key`.
    pub fn send_record<R: crate::model::Record>(
        &mut self,
        topic: &str,
        key: &[u8],
        record: &R,
    ) -> Result<(), RuntimeError> {
        let bytes = crate::model::SchemaRegistry::builtin().encode(record).map_err(|e| {
            RuntimeError::Topology(format!("cannot encode a {} for {topic}: {e}", R::FULL_NAME))
        })?;
        self.send(topic, key, &bytes)
    }

    /// Schedules a timer for `key` at `at_ms`; scheduling the same (time, key) twice is one timer.
    pub fn schedule(&mut self, at_ms: i64, key: &[u8]) -> Result<(), RuntimeError> {
        let store_name = self.timer_store;
        let added = timers::schedule(
            &mut self.state.store(store_name, &mut *self.out, self.timestamp_ms)?,
            at_ms,
            key,
        )?;
        self.timers_delta += i64::from(added);
        Ok(())
    }

    /// Cancels the timer for `key` at `at_ms`, if pending.
    pub fn cancel(&mut self, at_ms: i64, key: &[u8]) -> Result<(), RuntimeError> {
        let store_name = self.timer_store;
        let removed = timers::cancel(
            &mut self.state.store(store_name, &mut *self.out, self.timestamp_ms)?,
            at_ms,
            key,
        )?;
        self.timers_delta -= i64::from(removed);
        Ok(())
    }

    /// The global table `name`, as of the latest update this instance has read.
    pub fn global(&self, name: &str) -> Option<&super::GlobalTable> {
        self.globals.get(name)
    }
}
