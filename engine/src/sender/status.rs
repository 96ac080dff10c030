//! A sender instance's status file (`status.json` in its state directory, rewritten every
//! half second): requests in flight, commands waiting in paused partitions, and commands parked
//! on a refused credential per app and provider. `herald send --status` reads every
//! instance's file under a state directory and prints them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name, in the instance's state directory.
pub const STATUS_FILE: &str = "status.json";

/// Commands of one provider of one app parked on its credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// App id.
    pub app: String,
    /// `apns` or `fcm`.
    pub provider: String,
    /// Commands waiting.
    pub commands: i64,
    /// Why the provider is parked (none: resumed, commands about to leave).
    pub reason: Option<String>,
}

/// One instance's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Instance id.
    pub instance: String,
    /// When it was written, ms since the epoch.
    pub updated_ms: i64,
    /// Requests in flight (parked commands included).
    pub in_flight: i64,
    /// Commands read while their app was at its bound, waiting in paused partitions.
    pub backlog: i64,
    /// Parked commands.
    pub parked: Vec<Parked>,
}

/// Reading or writing a status file failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct StatusError {
    /// The file or directory.
    pub path: PathBuf,
    /// What failed.
    pub reason: String,
}

impl Status {
    /// Writes the status to `path` (through a temporary file, so readers never see half).
    pub fn write(&self, path: &Path) -> Result<(), StatusError> {
        let fail = |e: std::io::Error| StatusError { path: path.into(), reason: e.to_string() };
        let json = serde_json::to_vec_pretty(self).expect("a status serialises");
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, json).map_err(fail)?;
        std::fs::rename(&temporary, path).map_err(fail)
    }

    /// The statuses of every instance under `state_dir` (one directory per instance).
    pub fn read_all(state_dir: &Path) -> Result<Vec<Status>, StatusError> {
        let fail = |path: &Path, reason: String| StatusError { path: path.into(), reason };
        let entries = std::fs::read_dir(state_dir).map_err(|e| fail(state_dir, e.to_string()))?;
        let mut statuses = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join(STATUS_FILE);
            match std::fs::read(&path) {
                Ok(bytes) => statuses
                    .push(serde_json::from_slice(&bytes).map_err(|e| fail(&path, e.to_string()))?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(&path, e.to_string())),
            }
        }
        statuses.sort_by(|a: &Status, b| a.instance.cmp(&b.instance));
        Ok(statuses)
    }

    /// The status as table lines: the instance, then one line per parked provider.
    pub fn render(&self, now_ms: i64) -> String {
        let age = (now_ms - self.updated_ms).max(0) as f64 / 1000.0;
        let mut out = format!(
            "instance {}  (updated {age:.1} s ago)  in flight {}  backlog {}  parked {}\n",
            self.instance,
            self.in_flight,
            self.backlog,
            self.parked.iter().map(|p| p.commands).sum::<i64>()
        );
        for parked in &self.parked {
            out.push_str(&format!(
                "  parked  app {}  {}  {} commands  {}\n",
                parked.app,
                parked.provider,
                parked.commands,
                parked.reason.as_deref().unwrap_or("resuming")
            ));
        }
        out
    }
}
