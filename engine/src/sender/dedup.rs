//! The sender's memory of message ids, on RocksDB with a time-to-live of the dedup window, so
//! it survives restarts. A command already receipted is skipped; one the provider accepted but
//! whose receipt was not confirmed gets its receipt again without a second send.

use std::{path::Path, time::Duration};

use rocksdb::{Options, DB};

use crate::model::Receipt;

/// What the sender knows about a message id.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Never sent (or forgotten after the window).
    New,
    /// A final outcome is known; its receipt may not have reached Kafka.
    Outcome(Box<Receipt>),
    /// Its receipt reached Kafka: nothing left to do.
    Receipted,
}

/// Message ids and their progress.
pub struct DedupStore {
    db: DB,
}

impl DedupStore {
    /// Opens (or creates) the store under `dir`, forgetting entries older than `window`.
    pub fn open(dir: &Path, window: Duration) -> Result<Self, String> {
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open_with_ttl(&options, dir, window)
            .map_err(|e| format!("opening the dedup store {}: {e}", dir.display()))?;
        Ok(Self { db })
    }

    /// What is known about `message_id`.
    pub fn seen(&self, message_id: &str) -> Result<Seen, String> {
        let value = self.db.get(message_id).map_err(|e| format!("reading the dedup store: {e}"))?;
        Ok(match value.as_deref() {
            None => Seen::New,
            Some(b"receipted") => Seen::Receipted,
            Some(json) => serde_json::from_slice(json)
                .map(|receipt| Seen::Outcome(Box::new(receipt)))
                .unwrap_or(Seen::New),
        })
    }

    /// Records the final outcome before its receipt is produced.
    pub fn outcome(&self, receipt: &Receipt) -> Result<(), String> {
        let json = serde_json::to_vec(receipt).map_err(|e| e.to_string())?;
        self.db.put(&receipt.message_id, json).map_err(|e| format!("writing the dedup store: {e}"))
    }

    /// Records that the receipt reached Kafka.
    pub fn receipted(&self, message_id: &str) -> Result<(), String> {
        self.db.put(message_id, b"receipted").map_err(|e| format!("writing the dedup store: {e}"))
    }
}
