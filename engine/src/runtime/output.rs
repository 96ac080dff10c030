//! Where a task's effects go: a transactional producer when live, files or a shadow topic in
//! a replay.

use super::RuntimeError;

/// Receives a task's outputs and changelog writes.
pub(crate) trait Output {
    /// A record for sink `topic`, partitioned by key.
    fn emit(
        &mut self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        timestamp_ms: i64,
    ) -> Result<(), RuntimeError>;

    /// Whether a record of `key` and `value` for `topic` could be emitted (e.g. not too large),
    /// checked when a processor emits it: its emits are held until its call succeeds.
    fn check(&self, _topic: &str, _key: &[u8], _value: &[u8]) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// A store write for `topic` (a changelog) at the task's `partition`; `None` deletes.
    fn changelog(
        &mut self,
        topic: &str,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        timestamp_ms: i64,
    ) -> Result<(), RuntimeError>;
}
