//! A task: one processor instance with its stores and timers, serving one partition of a
//! sub-topology. The live runtime and the replay driver both run records through this code.

use super::{
    global::GlobalTables, metrics::RuntimeMetrics, output::Output, store::TaskState, timers,
    topology::SubTopology, Clock, ProcessError, Processor, ProcessorContext, RuntimeError,
    SourceRecord, TaskId, Tick, Timer,
};
use crate::model::{DeadLetter, SchemaRegistry};

/// Timers read from the store per round while firing.
const TIMER_BATCH: usize = 1_000;

/// The work a transaction may still do. Each input record processed, timer fired and tick that
/// has more to do counts one, and so does each record it writes (outputs and changelog
/// entries): a timer releasing thousands of users weighs what it produces. A call that starts
/// within the budget runs to its end; a processor keeps its calls small by working in steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    left: u64,
}

impl Budget {
    /// A budget of `cap` units (at least one, so every transaction makes progress).
    pub(crate) fn new(cap: u64) -> Self {
        Self { left: cap.max(1) }
    }

    /// No limit (a replay has no transactions).
    pub(crate) fn unlimited() -> Self {
        Self { left: u64::MAX }
    }

    /// Whether the transaction has done its share and should commit.
    pub(crate) fn spent(&self) -> bool {
        self.left == 0
    }

    fn charge(&mut self, units: u64) {
        self.left = self.left.saturating_sub(units);
    }
}

/// The output of one processor call: counts the records written through it, and holds the
/// call's emits (checked at once) until the call succeeds, so that a rejected call emits
/// nothing. Changelog records pass through: a rollback overwrites them (see
/// [`TaskState::roll_back_call`]).
struct Counted<'o> {
    out: &'o mut dyn Output,
    writes: u64,
    emits: Vec<Emit>,
}

/// An emit held until its call succeeds.
struct Emit {
    topic: String,
    key: Vec<u8>,
    value: Vec<u8>,
    timestamp_ms: i64,
}

impl Counted<'_> {
    /// Sends the held emits, in order.
    fn release(self) -> Result<(), RuntimeError> {
        for emit in self.emits {
            self.out.emit(&emit.topic, &emit.key, &emit.value, emit.timestamp_ms)?;
        }
        Ok(())
    }
}

impl Output for Counted<'_> {
    fn emit(
        &mut self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        timestamp_ms: i64,
    ) -> Result<(), RuntimeError> {
        self.out.check(topic, key, value)?;
        self.writes += 1;
        self.emits.push(Emit {
            topic: topic.to_string(),
            key: key.to_vec(),
            value: value.to_vec(),
            timestamp_ms,
        });
        Ok(())
    }

    fn check(&self, topic: &str, key: &[u8], value: &[u8]) -> Result<(), RuntimeError> {
        self.out.check(topic, key, value)
    }

    fn changelog(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        timestamp_ms: i64,
    ) -> Result<(), RuntimeError> {
        self.writes += 1;
        self.out.changelog(topic, partition, key, value, timestamp_ms)
    }
}

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
    /// Each source topic with the time of the last record read from it, never later than the
    /// wall clock when it was read (`i64::MIN` before any).
    input_times: Vec<(String, i64)>,
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
            input_times: sub.sources.iter().map(|topic| (topic.clone(), i64::MIN)).collect(),
            timers_pending,
        })
    }

    /// Timers scheduled and not yet fired or cancelled.
    pub(crate) fn timers_pending(&self) -> i64 {
        self.timers_pending
    }

    /// The time up to which this task's wall-clock timers may come due: `now_ms` when every
    /// input partition has been read to its end (`read_to_end(topic, partition)`), else at most
    /// the time of the last record read from each input that is behind (`i64::MIN` if it has
    /// delivered none yet). A timer due at the end of a window must not overtake records
    /// written before it was due and still waiting to be read (a task behind a backlog would
    /// otherwise close windows that an unread event cancels).
    pub(crate) fn timer_horizon(
        &self,
        now_ms: i64,
        read_to_end: impl Fn(&str, i32) -> bool,
    ) -> i64 {
        self.input_times
            .iter()
            .filter(|(topic, _)| !read_to_end(topic, self.id.partition))
            .map(|(_, time)| *time)
            .fold(now_ms, i64::min)
    }

    /// When the earliest pending timer is due (`None` without one).
    pub(crate) fn next_due(&mut self, out: &mut dyn Output) -> Result<Option<i64>, RuntimeError> {
        let store = self.state.store(&self.timer_store, out, self.stream_time)?;
        Ok(timers::due(&store, i64::MAX, 1)?.first().map(|timer| timer.at_ms))
    }

    /// Processes one record within `budget`. On the event-time clock, timers due strictly
    /// before the stream time fire first (timers due at a record's time fire after the records
    /// of that time: the end of a window is inclusive); when they use up the budget, the record
    /// is not processed and `false` comes back, for the caller to commit and call again. A
    /// rejected record goes to the dead-letter topic; runtime failures are returned.
    pub(crate) fn process(
        &mut self,
        record: &SourceRecord<'_>,
        env: &TaskEnv<'_>,
        out: &mut dyn Output,
        budget: &mut Budget,
    ) -> Result<bool, RuntimeError> {
        if let Some((_, time)) =
            self.input_times.iter_mut().find(|(topic, _)| topic == record.topic)
        {
            // A record stamped in the future must not let the timers run ahead of the backlog.
            *time = record.timestamp_ms.min(env.wall_now_ms);
        }
        let now = match env.clock {
            Clock::EventTime => {
                self.stream_time = self.stream_time.max(record.timestamp_ms);
                let due_until = self.stream_time.saturating_sub(1);
                if !self.fire_due(due_until, due_until, env, out, budget)? {
                    return Ok(false);
                }
                self.stream_time
            }
            Clock::Wall => env.wall_now_ms,
        };
        budget.charge(1);
        let result = self
            .invoke(env, out, budget, record.timestamp_ms, now, |p, ctx| p.process(ctx, record))?;
        let Err(reason) = result else { return Ok(true) };
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
        dead_letter(&letter, env, out)?;
        Ok(true)
    }

    /// Runs `call` on the processor with a context at `timestamp_ms` and `now_ms`, counting the
    /// timers it scheduled or cancelled and charging what it wrote to `budget`. A rejection
    /// comes back as `Ok(Err(reason))`, with no effect of the call left: its store writes
    /// (timers included) are rolled back and its emits dropped. Runtime failures come back as
    /// errors (the transaction aborts).
    fn invoke<T>(
        &mut self,
        env: &TaskEnv<'_>,
        out: &mut dyn Output,
        budget: &mut Budget,
        timestamp_ms: i64,
        now_ms: i64,
        call: impl FnOnce(&mut dyn Processor, &mut ProcessorContext<'_>) -> Result<T, ProcessError>,
    ) -> Result<Result<T, String>, RuntimeError> {
        self.state.begin_call();
        let mut counted = Counted { out, writes: 0, emits: Vec::new() };
        let mut ctx = ProcessorContext {
            task: self.id,
            partitions: self.partitions,
            state: &self.state,
            out: &mut counted,
            sinks: &self.sinks,
            globals: env.globals,
            timer_store: &self.timer_store,
            timestamp_ms,
            now_ms,
            effective_ms: match env.clock {
                Clock::Wall => now_ms,
                Clock::EventTime => timestamp_ms,
            },
            timers_delta: 0,
            clock: env.clock,
            metrics: env.metrics,
        };
        let result = call(self.processor.as_mut(), &mut ctx);
        let timers_delta = ctx.timers_delta;
        let result = match result {
            Ok(value) => {
                self.state.end_call();
                self.timers_pending += timers_delta;
                Ok(value)
            }
            Err(ProcessError::Runtime(error)) => {
                self.state.end_call();
                self.timers_pending += timers_delta;
                budget.charge(counted.writes);
                return Err(error);
            }
            Err(ProcessError::Reject(reason)) => {
                self.state.roll_back_call(&mut counted, timestamp_ms)?;
                self.processor.on_rolled_back();
                counted.emits.clear();
                Err(reason)
            }
        };
        budget.charge(counted.writes);
        counted.release()?;
        Ok(result)
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

    /// Fires, in (time, key) order, the timers due at or before `due_until_ms` (including
    /// timers that firing schedules), then lets the processor tick, while `budget` lasts; both
    /// run at `now_ms`. Returns whether everything due was done; if not, the rest is due again
    /// on the next call.
    pub(crate) fn fire_due(
        &mut self,
        due_until_ms: i64,
        now_ms: i64,
        env: &TaskEnv<'_>,
        out: &mut dyn Output,
        budget: &mut Budget,
    ) -> Result<bool, RuntimeError> {
        loop {
            let due = {
                let store = self.state.store(&self.timer_store, &mut *out, now_ms)?;
                timers::due(&store, due_until_ms, TIMER_BATCH)?
            };
            if due.is_empty() {
                return self.tick(now_ms, env, out, budget);
            }
            for timer in due {
                if budget.spent() {
                    return Ok(false);
                }
                let pending = {
                    let mut store = self.state.store(&self.timer_store, &mut *out, now_ms)?;
                    timers::cancel(&mut store, timer.at_ms, &timer.key)?
                };
                if pending {
                    self.timers_pending -= 1;
                    env.metrics.timers_fired.inc();
                    self.fire(&timer, now_ms, env, out, budget)?;
                }
            }
        }
    }

    /// Lets the processor do pending stepwise work, step after step while `budget` lasts.
    /// Returns whether the processor is done for now.
    fn tick(
        &mut self,
        now_ms: i64,
        env: &TaskEnv<'_>,
        out: &mut dyn Output,
        budget: &mut Budget,
    ) -> Result<bool, RuntimeError> {
        loop {
            if budget.spent() {
                return Ok(false);
            }
            match self.invoke(env, out, budget, now_ms, now_ms, |p, ctx| p.on_tick(ctx))? {
                Ok(Tick::More) => budget.charge(1),
                Ok(Tick::Idle) => return Ok(true),
                Err(reason) => {
                    let letter = self.internal_letter("tick", None, reason, now_ms);
                    dead_letter(&letter, env, out)?;
                    return Ok(true);
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
        budget: &mut Budget,
    ) -> Result<(), RuntimeError> {
        budget.charge(1);
        match self.invoke(env, out, budget, timer.at_ms, now_ms, |p, ctx| p.on_timer(ctx, timer))? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{
        store::{Restored, StoreMemory},
        StreamTopology,
    };

    const STORE: &str = "s";
    const OUT: &str = "out";
    const DLQ: &str = "dlq";

    /// Writes to its store, emits and schedules for every record; a record valued `bad`, the
    /// timer keyed `poison` and the first tick do all that too and then reject.
    struct PartlyRejecting {
        ticks: u32,
    }

    impl Processor for PartlyRejecting {
        fn process(
            &mut self,
            ctx: &mut ProcessorContext<'_>,
            record: &SourceRecord<'_>,
        ) -> Result<(), ProcessError> {
            let key = record.key.unwrap_or_default();
            let value = record.value.unwrap_or_default();
            if value != b"bad" {
                ctx.store(STORE)?.put(key, value)?;
                ctx.send(OUT, key, value)?;
                ctx.schedule(record.timestamp_ms + 2_000, key)?;
                if key == b"a" {
                    ctx.schedule(3_000, b"c")?;
                    ctx.schedule(2_200, b"poison")?;
                }
                return Ok(());
            }
            // Overwrites and deletes what earlier records wrote, writes new keys (enough for
            // the store to apply them to RocksDB during the call), scans, emits, schedules and
            // cancels timers, then rejects.
            let mut store = ctx.store(STORE)?;
            store.put(b"a", b"overwritten")?;
            store.delete(b"z0")?;
            for i in 0..3_000 {
                store.put(format!("x{i:05}").as_bytes(), b"bad")?;
            }
            store.put(b"a", b"overwritten twice")?;
            assert_eq!(store.prefix(b"x", usize::MAX)?.len(), 3_000);
            ctx.send(OUT, key, b"bad")?;
            ctx.schedule(1_500, b"bad")?;
            ctx.cancel(3_000, b"c")?;
            Err(ProcessError::reject("bad value"))
        }

        fn on_timer(
            &mut self,
            ctx: &mut ProcessorContext<'_>,
            timer: &Timer,
        ) -> Result<(), ProcessError> {
            ctx.send(OUT, &timer.key, format!("fired:{}", timer.at_ms).as_bytes())?;
            if timer.key == b"poison" {
                ctx.store(STORE)?.put(b"poisoned", b"1")?;
                ctx.schedule(4_000, b"from-poison")?;
                return Err(ProcessError::reject("poison timer"));
            }
            Ok(())
        }

        fn on_tick(&mut self, ctx: &mut ProcessorContext<'_>) -> Result<Tick, ProcessError> {
            self.ticks += 1;
            if self.ticks == 1 {
                ctx.store(STORE)?.put(b"ticked", b"1")?;
                ctx.send(OUT, b"tick", b"tick")?;
                ctx.schedule(4_500, b"from-tick")?;
                return Err(ProcessError::reject("first tick"));
            }
            Ok(Tick::Idle)
        }
    }

    /// Keeps every emit and, in order, every changelog record.
    #[derive(Default)]
    struct Recorded {
        emits: Vec<(String, Vec<u8>, Vec<u8>)>,
        changelog: Vec<(String, Vec<u8>, Option<Vec<u8>>)>,
    }

    impl Output for Recorded {
        fn emit(
            &mut self,
            topic: &str,
            key: &[u8],
            value: &[u8],
            _: i64,
        ) -> Result<(), RuntimeError> {
            self.emits.push((topic.to_string(), key.to_vec(), value.to_vec()));
            Ok(())
        }

        fn changelog(
            &mut self,
            topic: &str,
            _: i32,
            key: &[u8],
            value: Option<&[u8]>,
            _: i64,
        ) -> Result<(), RuntimeError> {
            self.changelog.push((topic.to_string(), key.to_vec(), value.map(<[u8]>::to_vec)));
            Ok(())
        }
    }

    fn open(dir: &std::path::Path, topology: &StreamTopology) -> TaskState {
        let changelogs = topology.sub_topologies[0]
            .all_stores()
            .into_iter()
            .map(|store| {
                let topic = topology.changelog_topic(&store);
                (store, topic)
            })
            .collect();
        TaskState::open(dir, 0, changelogs, &StoreMemory::new(1 << 20, 1 << 20)).unwrap()
    }

    /// Every key and value of `store`.
    fn contents(state: &TaskState, store: &str) -> Vec<(String, String)> {
        let mut out = Recorded::default();
        let store = state.store(store, &mut out, 0).unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        store.range(&[], &[], usize::MAX).unwrap().iter().map(|(k, v)| (text(k), text(v))).collect()
    }

    fn timer_keys(state: &TaskState, store: &str) -> Vec<String> {
        let mut out = Recorded::default();
        let store = state.store(store, &mut out, 0).unwrap();
        timers::due(&store, i64::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(|t| String::from_utf8_lossy(&t.key).into_owned())
            .collect()
    }

    #[test]
    fn a_rejected_call_leaves_nothing_but_its_dead_letter() {
        let topology = StreamTopology::builder("app")
            .dead_letter_topic(DLQ)
            .sub_topology(
                "t",
                |_| PartlyRejecting { ticks: 0 },
                |s| s.source("in").store(STORE).sink(OUT),
            )
            .build()
            .unwrap();
        let sub = &topology.sub_topologies[0];
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId { sub_topology: 0, partition: 0 };
        let mut task = Task::new(id, 1, sub, open(&dir.path().join("a"), &topology)).unwrap();
        let globals = GlobalTables::default();
        let metrics = RuntimeMetrics::new();
        let env = TaskEnv {
            clock: Clock::Wall,
            wall_now_ms: 1_000,
            globals: &globals,
            dead_letter_topic: DLQ,
            metrics: &metrics,
        };
        let mut out = Recorded::default();
        let records: [(&[u8], &[u8], i64); 4] = [
            (b"a", b"first", 100),
            (b"z0", b"zero", 150),
            (b"a", b"bad", 200),
            (b"z", b"last", 300),
        ];
        for (offset, (key, value, timestamp_ms)) in records.into_iter().enumerate() {
            let record = SourceRecord {
                topic: "in",
                partition: 0,
                offset: offset as i64,
                key: Some(key),
                value: Some(value),
                timestamp_ms,
            };
            assert!(task.process(&record, &env, &mut out, &mut Budget::unlimited()).unwrap());
        }
        let timers = sub.timer_store();
        let expected_store = [("a", "first"), ("z", "last"), ("z0", "zero")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec();
        assert_eq!(contents(&task.state, STORE), expected_store);
        assert_eq!(timer_keys(&task.state, &timers), ["a", "z0", "poison", "z", "c"]);
        assert_eq!(task.timers_pending(), 5);

        // The timers fire (the poison one rejects), then the first tick rejects.
        assert!(task.fire_due(10_000, 10_000, &env, &mut out, &mut Budget::unlimited()).unwrap());
        assert_eq!(task.timers_pending(), 0, "nothing scheduled by the rejected calls");
        assert!(timer_keys(&task.state, &timers).is_empty());
        assert_eq!(contents(&task.state, STORE), expected_store, "no write of a rejected call");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let outputs: Vec<_> = out
            .emits
            .iter()
            .filter(|(topic, _, _)| topic == OUT)
            .map(|(_, k, v)| format!("{}={}", text(k), text(v)))
            .collect();
        assert_eq!(
            outputs,
            [
                "a=first",
                "z0=zero",
                "z=last",
                "a=fired:2100",
                "z0=fired:2150",
                "z=fired:2300",
                "c=fired:3000"
            ]
        );
        let letters: Vec<_> = out
            .emits
            .iter()
            .filter(|(topic, _, _)| topic == DLQ)
            .map(|(_, _, v)| SchemaRegistry::builtin().decode::<DeadLetter>(v).unwrap())
            .map(|l| (l.source_offset, l.reason))
            .collect();
        assert_eq!(
            letters,
            [
                (2, "bad value".to_string()),
                (-1, "poison timer".to_string()),
                (-1, "first tick".to_string())
            ]
        );

        // Restored from its changelog, the store is the same.
        let restored = open(&dir.path().join("b"), &topology);
        for store in sub.all_stores() {
            let topic = topology.changelog_topic(&store);
            let records: Vec<Restored> = out
                .changelog
                .iter()
                .filter(|(t, _, _)| *t == topic)
                .map(|(_, k, v)| (k.clone(), v.clone()))
                .collect();
            restored.restore(&store, &records).unwrap();
        }
        assert_eq!(contents(&restored, STORE), expected_store);
        assert!(timer_keys(&restored, &timers).is_empty());
    }

    /// Counts its records in its store, keeping a copy of the count in memory between calls
    /// (forgotten when a call is rolled back); a record valued `bad` counts, then rejects.
    #[derive(Default)]
    struct CachedCounter {
        cached: Option<u64>,
    }

    impl Processor for CachedCounter {
        fn process(
            &mut self,
            ctx: &mut ProcessorContext<'_>,
            record: &SourceRecord<'_>,
        ) -> Result<(), ProcessError> {
            let count = match self.cached.take() {
                Some(count) => count,
                None => ctx.store(STORE)?.get_as::<u64>(b"count")?.unwrap_or_default(),
            } + 1;
            ctx.store(STORE)?.put_as(b"count", &count)?;
            self.cached = Some(count);
            if record.value == Some(b"bad") {
                return Err(ProcessError::reject("bad value"));
            }
            ctx.send(OUT, b"count", count.to_string().as_bytes())?;
            Ok(())
        }

        fn on_rolled_back(&mut self) {
            self.cached = None;
        }
    }

    #[test]
    fn a_processor_forgets_its_copies_of_store_values_when_a_call_is_rolled_back() {
        let topology = StreamTopology::builder("app")
            .dead_letter_topic(DLQ)
            .sub_topology(
                "t",
                |_| CachedCounter::default(),
                |s| s.source("in").store(STORE).sink(OUT),
            )
            .build()
            .unwrap();
        let sub = &topology.sub_topologies[0];
        let dir = tempfile::tempdir().unwrap();
        let id = TaskId { sub_topology: 0, partition: 0 };
        let mut task = Task::new(id, 1, sub, open(dir.path(), &topology)).unwrap();
        let (globals, metrics) = (GlobalTables::default(), RuntimeMetrics::new());
        let env = TaskEnv {
            clock: Clock::Wall,
            wall_now_ms: 1_000,
            globals: &globals,
            dead_letter_topic: DLQ,
            metrics: &metrics,
        };
        let mut out = Recorded::default();
        for (offset, value) in ["ok", "ok", "bad", "ok"].into_iter().enumerate() {
            let record = SourceRecord {
                topic: "in",
                partition: 0,
                offset: offset as i64,
                key: Some(b"k"),
                value: Some(value.as_bytes()),
                timestamp_ms: 100,
            };
            assert!(task.process(&record, &env, &mut out, &mut Budget::unlimited()).unwrap());
        }
        let counts: Vec<_> = out
            .emits
            .iter()
            .filter(|(topic, _, _)| topic == OUT)
            .map(|(_, _, v)| String::from_utf8_lossy(v).into_owned())
            .collect();
        assert_eq!(counts, ["1", "2", "3"], "the rejected record counted nothing");
        assert_eq!(contents(&task.state, STORE), [("count".to_string(), "3".to_string())]);
    }
}
