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
