//! A task: one processor instance with its stores and timers, serving one partition of a
//! sub-topology. The live runtime and the replay driver both run records through this code.

use super::{
    global::GlobalTables, metrics::RuntimeMetrics, output::Output, store::TaskState, timers,
    topology::SubTopology, Clock, ProcessError, Processor, ProcessorContext, RuntimeError,
    SourceRecord, TaskId, Tick, Timer,
};
use crate::model::{DeadLetter, SchemaRegistry};

/// Timers taken from the store per round while firing.
const TIMER_BATCH: usize = 1_000;

/// What every task of an instance shares while processing.
pub(crate) struct TaskEnv<'a> {
    pub(crate) clock: Clock,
    /// The wall clock read once per batch (used on [`Clock::Wall`]).
    pub(crate) wall_now_ms: i64,
    pub(crate) globals: &'a GlobalTables,
    pub(crate) dead_letter_topic: &'a str,
    pub(crate) metrics: &'a RuntimeMetrics,
}

/// One processor instance and its state.
pub(crate) struct Task {
    pub(crate) id: TaskId,
    partitions: i32,
    processor: Box<dyn Processor>,
    pub(crate) state: TaskState,
    sinks: Vec<String>,
    timer_store: String,
    stream_time: i64,
    timers_pending: i64,
}

impl Task {
    /// Creates the task's processor over already restored `state`; its sub-topology has
    /// `partitions` partitions.
    pub(crate) fn new(
        id: TaskId,
        partitions: i32,
        sub: &SubTopology,
        state: TaskState,
    ) -> Result<Self, RuntimeError> {
        let timer_store = sub.timer_store();
        let timers_pending = state.count(&timer_store)? as i64;
        Ok(Self {
            id,
            partitions,
            processor: (sub.factory)(id),
            state,
            sinks: sub.sinks.clone(),
            timer_store,
            stream_time: i64::MIN,
            timers_pending,
        })
    }

    /// Timers scheduled and not yet fired or cancelled.
    pub(crate) fn timers_pending(&self) -> i64 {
        self.timers_pending
    }

    /// Processes one record. On the event-time clock, timers due at or before its timestamp fire
    /// first. A rejected record goes to the dead-letter topic; runtime failures are returned.
    pub(crate) fn process(
        &mut self,
        record: &SourceRecord<'_>,
        env: &TaskEnv<'_>,
        out: &mut dyn Output,
    ) -> Result<(), RuntimeError> {
        let now = match env.clock {
            Clock::EventTime => {
                self.stream_time = self.stream_time.max(record.timestamp_ms);
                self.fire_due(self.stream_time, env, out)?;
                self.stream_time
            }
            Clock::Wall => env.wall_now_ms,
        };
        let result =
            self.invoke(env, out, record.timestamp_ms, now, |p, ctx| p.process(ctx, record))?;
        let Err(reason) = result else { return Ok(()) };
        let letter = DeadLetter {
            source_topic: record.topic.to_string(),
            source_partition: record.partition,
            source_offset: record.offset,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            reason,
            stage: format!("task {}", self.id),
            timestamp_ms: record.timestamp_ms,
        };
        dead_letter(&letter, env, out)
    }

    /// Runs `call` on the processor with a context at `timestamp_ms` and `now_ms`, counting the
    /// timers it scheduled or cancelled. A rejection comes back as `Ok(Err(reason))`; runtime
    /// failures as errors.
    fn invoke<T>(
        &mut self,
        env: &TaskEnv<'_>,
        out: &mut dyn Output,
        timestamp_ms: i64,
        now_ms: i64,
        call: impl FnOnce(&mut dyn Processor, &mut ProcessorContext<'_>) -> Result<T, ProcessError>,
    ) -> Result<Result<T, String>, RuntimeError> {
        let mut ctx = ProcessorContext {
            task: self.id,
            partitions: self.partitions,
            state: &self.state,
            out,
            sinks: &self.sinks,
            globals: env.globals,
            timer_store: &self.timer_store,
            timestamp_ms,
            now_ms,
            timers_delta: 0,
        };
        let result = call(self.processor.as_mut(), &mut ctx);
        self.timers_pending += ctx.timers_delta;
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(ProcessError::Runtime(error)) => Err(error),
            Err(ProcessError::Reject(reason)) => Ok(Err(reason)),
        }
    }

    /// A dead letter for a rejection by a timer or tick (no input record; the timer store is
    /// named as the source).
    fn internal_letter(
        &self,
        what: &str,
        key: Option<Vec<u8>>,
        reason: String,
        at: i64,
    ) -> DeadLetter {
        DeadLetter {
            source_topic: self.timer_store.clone(),
            source_partition: self.id.partition,
            source_offset: -1,
            key,
            value: None,
            reason,
            stage: format!("{what} of task {}", self.id),
            timestamp_ms: at,
        }
    }

    /// Fires, in (time, key) order, every timer due at or before `now_ms`, including timers
    /// that firing schedules. Returns how many fired.
    pub(crate) fn fire_due(
        &mut self,
        now_ms: i64,
        env: &TaskEnv<'_>,
        out: &mut dyn Output,
    ) -> Result<usize, RuntimeError> {
        let mut fired = 0;
        loop {
            let due = {
                let mut store = self.state.store(&self.timer_store, &mut *out, now_ms)?;
                timers::take_due(&mut store, now_ms, TIMER_BATCH)?
            };
            if due.is_empty() {
                self.tick(now_ms, env, out)?;
                return Ok(fired);
            }
            for timer in due {
                self.timers_pending -= 1;
                fired += 1;
                env.metrics.timers_fired.inc();
                self.fire(&timer, now_ms, env, out)?;
            }
        }
    }

    /// Lets the processor do pending stepwise work: one step on the wall clock, every step on
    /// the event-time clock (a replay has no later tick to wait for).
    fn tick(
        &mut self,
        now_ms: i64,
        env: &TaskEnv<'_>,
        out: &mut dyn Output,
    ) -> Result<(), RuntimeError> {
        loop {
            match self.invoke(env, out, now_ms, now_ms, |p, ctx| p.on_tick(ctx))? {
                Ok(Tick::More) if env.clock == Clock::EventTime => continue,
                Ok(_) => return Ok(()),
                Err(reason) => {
                    let letter = self.internal_letter("tick", None, reason, now_ms);
                    return dead_letter(&letter, env, out);
                }
            }
        }
    }

    fn fire(
        &mut self,
        timer: &Timer,
        now_ms: i64,
        env: &TaskEnv<'_>,
        out: &mut dyn Output,
    ) -> Result<(), RuntimeError> {
        match self.invoke(env, out, timer.at_ms, now_ms, |p, ctx| p.on_timer(ctx, timer))? {
            Ok(()) => Ok(()),
            Err(reason) => {
                let letter =
                    self.internal_letter("timer", Some(timer.key.clone()), reason, timer.at_ms);
                dead_letter(&letter, env, out)
            }
        }
    }

    /// Tells the processor a global table changed.
    pub(crate) fn global_changed(&mut self, table: &str, key: &[u8], value: Option<&[u8]>) {
        self.processor.on_global_change(table, key, value);
    }
}

fn dead_letter(
    letter: &DeadLetter,
    env: &TaskEnv<'_>,
    out: &mut dyn Output,
) -> Result<(), RuntimeError> {
    tracing::warn!(
        topic = %letter.source_topic,
        partition = letter.source_partition,
        offset = letter.source_offset,
        reason = %letter.reason,
        "record sent to the dead-letter topic"
    );
    env.metrics.dead_letters.with_label_values(&[&letter.source_topic]).inc();
    let emit = |letter: &DeadLetter, out: &mut dyn Output| {
        let bytes = SchemaRegistry::builtin()
            .encode(letter)
            .map_err(|e| RuntimeError::Topology(format!("cannot encode a dead letter: {e}")))?;
        let key = letter.key.as_deref().unwrap_or_default();
        out.emit(env.dead_letter_topic, key, &bytes, letter.timestamp_ms)
    };
    match emit(letter, out) {
        // A letter carrying a record near the size limit would exceed it: send it without the
        // value (the source topic, partition and offset still find the record).
        Err(RuntimeError::RecordTooLarge { .. }) if letter.value.is_some() => {
            let size = letter.value.as_ref().map_or(0, Vec::len);
            let reason = format!("{} (value of {size} bytes left out: too large)", letter.reason);
            emit(&DeadLetter { value: None, reason, ..letter.clone() }, out)
        }
        other => other,
    }
}
