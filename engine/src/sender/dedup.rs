//! The sender's memory of message ids, on RocksDB with a time-to-live of the dedup window, so
//! it survives restarts. A command already receipted is skipped; one the provider accepted but
//! whose receipt was not confirmed gets its receipt again without a second send; one whose
//! intent was written but whose outcome is unknown is never sent again (see
//! [`super::intents`]). When a partition moves, its new owner fills this memory from the
//! intents and receipts the old owner wrote to Kafka ([`super::takeover`]).

use std::{path::Path, time::Duration};

use rocksdb::{Options, DB};

use crate::model::Receipt;

/// Value of an id whose receipt reached Kafka.
const RECEIPTED: &[u8] = b"receipted";
/// Value of an id whose provider call may have started (its intent is in Kafka).
const SENDING: &[u8] = b"sending";

/// What the sender knows about a message id.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Never sent (or forgotten after the window).
    New,
    /// Its intent was written: the provider may have received it, the outcome is unknown.
    Sending,
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
            Some(RECEIPTED) => Seen::Receipted,
            Some(SENDING) => Seen::Sending,
            Some(json) => serde_json::from_slice(json)
                .map(|receipt| Seen::Outcome(Box::new(receipt)))
                .unwrap_or(Seen::New),
        })
    }

    /// Records that the provider call of `message_id` may start (after its intent reached Kafka).
    pub fn sending(&self, message_id: &str) -> Result<(), String> {
        self.put(message_id, SENDING)
    }

    /// Forgets `message_id`: it was not delivered and may be sent (a parked command).
    pub fn forget(&self, message_id: &str) -> Result<(), String> {
        self.db.delete(message_id).map_err(|e| format!("writing the dedup store: {e}"))
    }

    /// Records the final outcome before its receipt is produced.
    pub fn outcome(&self, receipt: &Receipt) -> Result<(), String> {
        let json = serde_json::to_vec(receipt).map_err(|e| e.to_string())?;
        self.put(&receipt.message_id, &json)
    }

    /// Records that the receipt reached Kafka.
    pub fn receipted(&self, message_id: &str) -> Result<(), String> {
        self.put(message_id, RECEIPTED)
    }

    fn put(&self, message_id: &str, value: &[u8]) -> Result<(), String> {
        self.db.put(message_id, value).map_err(|e| format!("writing the dedup store: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_is_remembered_until_an_outcome_or_a_park_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = DedupStore::open(dir.path(), Duration::from_secs(3_600)).unwrap();
        assert_eq!(store.seen("m").unwrap(), Seen::New);
        store.sending("m").unwrap();
        assert_eq!(store.seen("m").unwrap(), Seen::Sending);
        store.forget("m").unwrap();
        assert_eq!(store.seen("m").unwrap(), Seen::New, "parked: may be sent");
        store.sending("m").unwrap();
        store.receipted("m").unwrap();
        assert_eq!(store.seen("m").unwrap(), Seen::Receipted);
    }
}
