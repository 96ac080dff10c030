//! Authenticated query replies: the engine's tasks sign each reply with an HMAC-SHA256 key shared
//! by engine, API and CLI, and clients drop a reply whose signature does not verify (counted in
//! [`rejected_replies`]), so whoever can write `herald.query-replies` cannot answer in the
//! engine's name. The signature also covers a digest of the request answered (every field: kind,
//! key, question, times), and the asker checks it against the digest of the request it sent: a
//! reply to another question written under the same request id (whoever can write
//! `herald.queries` can replace a pending request) is rejected, never taken for the answer. A
//! reply of an engine from before that binding (signed over its own fields only) verifies as
//! such and is rejected as `unbound`. The key comes from the file named by [`KEY_FILE_ENV`] or else from
//! [`KEY_ENV`]; it is never logged. Without either, replies are neither signed nor checked.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts};
use ring::{digest, hmac};
use thiserror::Error;

use super::{QueryReply, QueryRequest};

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

    /// Sets `reply`'s signature: the HMAC of every other field and of `request`'s digest.
    pub fn sign(&self, reply: &mut QueryReply, request: &QueryRequest) {
        let tag = hmac::sign(&self.0, &signed_bytes(reply, Some(&request_digest(request))));
        reply.signature = Some(tag.as_ref().iter().map(|b| format!("{b:02x}")).collect());
    }

    /// Whether `reply` carries a signature made with this key of its fields and of `request`
    /// (the exact request asked), else why it is rejected.
    pub fn verify(&self, reply: &QueryReply, request: &QueryRequest) -> Result<(), Rejection> {
        let tag = reply.signature.as_deref().and_then(from_hex).ok_or(Rejection::Signature)?;
        let bound = signed_bytes(reply, Some(&request_digest(request)));
        if hmac::verify(&self.0, &bound, &tag).is_ok() {
            return Ok(());
        }
        match hmac::verify(&self.0, &signed_bytes(reply, None), &tag) {
            Ok(()) => Err(Rejection::Unbound),
            Err(_) => Err(Rejection::Signature),
        }
    }
}

/// Why a client drops a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Rejection {
    /// Not signed with the key for the request asked: forged, another key, or the answer to
    /// another request written under the same id.
    #[error("its signature does not verify for the request asked (forged, another key, or the answer to another question)")]
    Signature,
    /// Signed with the key by an engine from before replies named their request's digest: it
    /// may answer another question.
    #[error("it is signed by an older engine, without the digest of the request it answers")]
    Unbound,
}

impl Rejection {
    /// The `reason` label of [`rejected_replies`].
    pub fn reason(self) -> &'static str {
        match self {
            Self::Signature => "signature",
            Self::Unbound => "unbound",
        }
    }
}

/// Replies dropped by clients of this process, by [`Rejection::reason`]
/// (`herald_query_replies_rejected_total{reason}`, in the default Prometheus registry).
pub fn rejected_replies() -> &'static IntCounterVec {
    static REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
        let opts = Opts::new(
            "herald_query_replies_rejected_total",
            "Query replies dropped: signature not verifying for the request asked (forged, wrong \
             key, another question under the same id), or unbound (an older engine's)",
        );
        let counter = IntCounterVec::new(opts, &["reason"]).expect("a valid metric");
        // Every reason exported from the start, at 0.
        for reason in [Rejection::Signature, Rejection::Unbound] {
            counter.with_label_values(&[reason.reason()]);
        }
        // Registered once; a registry refusing it only loses the export, not the count.
        let _ = prometheus::default_registry().register(Box::new(counter.clone()));
        counter
    });
    &REJECTED
}

/// SHA-256 of every field of `request` (a JSON array), hex.
fn request_digest(request: &QueryRequest) -> String {
    let fields = (
        &request.request_id,
        &request.kind,
        &request.key,
        &request.body,
        request.deadline_ms,
        request.issued_at_ms,
    );
    let bytes = serde_json::to_vec(&fields).expect("strings and numbers serialize");
    digest::digest(&digest::SHA256, &bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Every field but the signature, unambiguously (a JSON array), followed by the digest of the
/// request answered (`None`: the fields alone, as engines signed before the binding).
fn signed_bytes(reply: &QueryReply, request: Option<&str>) -> Vec<u8> {
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
    let mut bytes = serde_json::to_vec(&fields).expect("strings and numbers serialize");
    if let Some(digest) = request {
        bytes.extend_from_slice(b"\nrequest ");
        bytes.extend_from_slice(digest.as_bytes());
    }
    bytes
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

    fn request(body: &str) -> QueryRequest {
        QueryRequest {
            request_id: "q-1".into(),
            kind: "profile".into(),
            key: Some("u1".into()),
            body: body.into(),
            deadline_ms: 1_795_867_260_000,
            issued_at_ms: 1_795_867_200_000,
        }
    }

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
        let asked = request(r#"{"user":"u1"}"#);
        let mut signed = reply();
        key.sign(&mut signed, &asked);
        assert_eq!(key.verify(&signed, &asked), Ok(()));
        assert_eq!(key.verify(&reply(), &asked), Err(Rejection::Signature), "unsigned");
        let mut changed = signed.clone();
        changed.body = Some("{\"profile\":{}}".into());
        assert_eq!(key.verify(&changed, &asked), Err(Rejection::Signature), "body changed");
        let mut other = signed.clone();
        other.request_id = "q-2".into();
        assert_eq!(key.verify(&other, &asked), Err(Rejection::Signature), "another request");
        let mut foreign = reply();
        ReplyKey::new(b"0123456789abcdef-forger").unwrap().sign(&mut foreign, &asked);
        assert_eq!(key.verify(&foreign, &asked), Err(Rejection::Signature), "another key");
        let mut garbage = reply();
        garbage.signature = Some("zz".into());
        assert_eq!(key.verify(&garbage, &asked), Err(Rejection::Signature));
        assert!(matches!(ReplyKey::new(b"short"), Err(KeyError::Short { len: 5, .. })));
    }

    /// Review s21 finding 9: the engine's genuine answer to another question written under the
    /// pending request's id is not the answer to the question asked.
    #[test]
    fn the_answer_to_another_question_under_the_same_id_is_rejected() {
        let key = ReplyKey::new(b"0123456789abcdef-engine").unwrap();
        let asked = request(r#"{"user":"u1"}"#);
        let substituted = request(r#"{"user":"u2"}"#);
        let mut answer = reply();
        key.sign(&mut answer, &substituted);
        assert_eq!(key.verify(&answer, &substituted), Ok(()));
        assert_eq!(key.verify(&answer, &asked), Err(Rejection::Signature));
        let later = QueryRequest { deadline_ms: asked.deadline_ms + 1, ..asked.clone() };
        assert_eq!(key.verify(&answer, &later), Err(Rejection::Signature), "another deadline");
    }

    /// An older engine's reply (signed over its fields alone) is told apart, and rejected.
    #[test]
    fn a_reply_signed_without_the_request_digest_is_rejected_as_unbound() {
        let key = ReplyKey::new(b"0123456789abcdef-engine").unwrap();
        let mut old = reply();
        let tag = hmac::sign(&key.0, &signed_bytes(&old, None));
        old.signature = Some(tag.as_ref().iter().map(|b| format!("{b:02x}")).collect());
        let asked = request(r#"{"user":"u1"}"#);
        assert_eq!(key.verify(&old, &asked), Err(Rejection::Unbound));
        assert_eq!(Rejection::Unbound.reason(), "unbound");
    }
}
