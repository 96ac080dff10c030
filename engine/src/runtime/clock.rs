//! Which clock drives timers.

/// The time timers are compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// The machine's clock: a timer due at T fires once the clock has passed T (live runs).
    #[default]
    Wall,
    /// Stream time: the largest input timestamp a task has seen. Timers due before a record's
    /// timestamp fire, in (time, key) order, before that record is processed; timers due at
    /// exactly its time fire after the records of that time (when a later time arrives, or at
    /// the end of a replay), so a window's end is inclusive, as on the wall clock. Replays use
    /// it, so the same input fires the same timers in the same order every run.
    EventTime,
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn wall_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
