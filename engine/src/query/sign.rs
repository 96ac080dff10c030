//! Authenticated query replies: the engine's tasks sign each reply with an HMAC-SHA256 key shared
//! by engine, API and CLI, and clients drop a reply whose signature does not verify (counted in
//! [`rejected_replies`]), so whoever can write `herald.query-replies` cannot answer in the
//! engine's name. The key comes from the file named by [`KEY_FILE_ENV`] or else from
//! [`KEY_ENV`]; it is never logged. Without either, replies are neither signed nor checked.

use std::sync::LazyLock;

use prometheus::IntCounter;
use ring::hmac;
use thiserror::Error;

use super::QueryReply;

/// Environment variable naming a file that holds the key (whitespace around it ignored).
pub const KEY_FILE_ENV: &str = "HERALD_QUERY_KEY_FILE";
/// Environment variable holding the key itself (when [`KEY_FILE_ENV`] is unset).
pub const KEY_ENV: &str = "HERALD_QUERY_KEY";
/// The shortest key accepted, bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// Why the key could not be had.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The key file does not read.
    #[error("reading the query key file {path} (${KEY_FILE_ENV}): {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The key is too short to be a secret.
    #[error("the query key (${from}) has {len} bytes; it needs at least {MIN_KEY_BYTES}")]
    Short {
        /// Where it came from.
        from: &'static str,
        /// Its length.
        len: usize,
    },
}

/// The shared key replies are signed and checked with.
pub struct ReplyKey(hmac::Key);

impl std::fmt::Debug for ReplyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyKey(..)")
    }
}

impl ReplyKey {
    /// A key of `secret` (at least [`MIN_KEY_BYTES`]), read from `from`.
    fn of(secret: &[u8], from: &'static str) -> Result<Self, KeyError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::Short { from, len: secret.len() });
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// A key of `secret`, at least [`MIN_KEY_BYTES`] long.
    pub fn new(secret: &[u8]) -> Result<Self, KeyError> {
        Self::of(secret, "given")
    }

    /// The key of this process's environment: the file of [`KEY_FILE_ENV`], else the value of
    /// [`KEY_ENV`]; none when neither is set (replies are then not authenticated).
    pub fn from_env() -> Result<Option<Self>, KeyError> {
        if let Some(path) = std::env::var_os(KEY_FILE_ENV) {
            let text = std::fs::read_to_string(&path).map_err(|source| KeyError::Read {
                path: path.to_string_lossy().into_owned(),
                source,
            })?;
            return Self::of(text.trim().as_bytes(), KEY_FILE_ENV).map(Some);
        }
        match std::env::var(KEY_ENV) {
            Ok(secret) => Self::of(secret.as_bytes(), KEY_ENV).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Sets `reply`'s signature: the HMAC of every other field.
    pub fn sign(&self, reply: &mut QueryReply) {
        let tag = hmac::sign(&self.0, &signed_bytes(reply));
        reply.signature = Some(tag.as_ref().iter().map(|b| format!("{b:02x}")).collect());
    }

    /// Whether `reply` carries a signature of its fields made with this key.
    pub fn verifies(&self, reply: &QueryReply) -> bool {
        let Some(tag) = reply.signature.as_deref().and_then(from_hex) else { return false };
        hmac::verify(&self.0, &signed_bytes(reply), &tag).is_ok()
    }
}

/// Replies dropped by clients of this process because their signature did not verify
/// (`herald_query_replies_rejected_total`, in the default Prometheus registry).
pub fn rejected_replies() -> &'static IntCounter {
    static REJECTED: LazyLock<IntCounter> = LazyLock::new(|| {
        let counter = IntCounter::new(
            "herald_query_replies_rejected_total",
            "Query replies dropped because their signature did not verify (forged or wrong key)",
        )
        .expect("a valid metric");
        // Registered once; a registry refusing it only loses the export, not the count.
        let _ = prometheus::default_registry().register(Box::new(counter.clone()));
        counter
    });
    &REJECTED
}

/// Every field but the signature, unambiguously (a JSON array).
fn signed_bytes(reply: &QueryReply) -> Vec<u8> {
    let fields = (
        &reply.request_id,
        reply.partition,
        reply.partitions,
        reply.status,
        reply.scanned,
        &reply.body,
        &reply.error,
        reply.timestamp_ms,
    );
    serde_json::to_vec(&fields).expect("strings and numbers serialize")
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::QueryStatus;

    fn reply() -> QueryReply {
        QueryReply {
            request_id: "q-1".into(),
            partition: 1,
            partitions: 2,
            status: QueryStatus::Done,
            scanned: 3,
            body: Some("{\"profile\":null}".into()),
            error: None,
            timestamp_ms: 1_795_867_200_000,
            signature: None,
        }
    }

    #[test]
    fn a_signed_reply_verifies_and_a_changed_unsigned_or_foreign_one_does_not() {
        let key = ReplyKey::new(b"0123456789abcdef-engine").unwrap();
        let mut signed = reply();
        key.sign(&mut signed);
        assert!(key.verifies(&signed));
        assert!(!key.verifies(&reply()), "unsigned");
        let mut changed = signed.clone();
        changed.body = Some("{\"profile\":{}}".into());
        assert!(!key.verifies(&changed), "body changed");
        let mut other = signed.clone();
        other.request_id = "q-2".into();
        assert!(!key.verifies(&other), "moved to another request");
        let mut foreign = reply();
        ReplyKey::new(b"0123456789abcdef-forger").unwrap().sign(&mut foreign);
        assert!(!key.verifies(&foreign), "another key");
        let mut garbage = reply();
        garbage.signature = Some("zz".into());
        assert!(!key.verifies(&garbage));
        assert!(matches!(ReplyKey::new(b"short"), Err(KeyError::Short { len: 5, .. })));
    }
}
