//! Checkpoints: the changelog offsets a task's local stores reflect, written on clean close.
//! A task dir without a checkpoint was not closed cleanly and is rebuilt from the changelog.

use std::{collections::BTreeMap, path::Path};

use super::RuntimeError;

const FILE: &str = "checkpoint.json";

/// Changelog topic → next offset to restore from (the task's changelog partition is implied).
pub(crate) type Checkpoint = BTreeMap<String, i64>;

/// Reads and removes the checkpoint of the task in `dir`, so that a crash from now on leaves
/// no checkpoint behind. `None` when there is none (or it is unreadable).
pub(crate) fn take(dir: &Path) -> Option<Checkpoint> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    match serde_json::from_str(&text) {
        Ok(checkpoint) => Some(checkpoint),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring unreadable checkpoint; rebuilding the store");
            None
        }
    }
}

/// Writes the checkpoint of the task in `dir` (atomically, through a temporary file).
pub(crate) fn write(dir: &Path, checkpoint: &Checkpoint) -> Result<(), RuntimeError> {
    let path = dir.join(FILE);
    let temporary = dir.join(format!("{FILE}.tmp"));
    let text = serde_json::to_string(checkpoint).expect("a map of strings to integers serialises");
    std::fs::write(&temporary, text)
        .map_err(RuntimeError::io(format!("writing {}", temporary.display())))?;
    std::fs::rename(&temporary, &path)
        .map_err(RuntimeError::io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_returns_the_written_checkpoint_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(take(dir.path()), None);
        let checkpoint: Checkpoint = [("app-counts-changelog".to_string(), 42)].into();
        write(dir.path(), &checkpoint).unwrap();
        assert_eq!(take(dir.path()), Some(checkpoint));
        assert_eq!(
            take(dir.path()),
            None,
            "a second take finds nothing: a crash now means rebuild"
        );
    }
}
