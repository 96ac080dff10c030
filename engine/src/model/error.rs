//! Errors of encoding and decoding records.

use thiserror::Error;

use super::Fingerprint;

/// Why a record could not be encoded or decoded. Every variant names the problem; decoding
/// untrusted bytes returns one of these and never panics.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The bytes do not start with the Avro single-object marker `C3 01`.
    #[error("not an Avro single-object record: expected marker c301, found {prefix:?}")]
    NotSingleObject {
        /// Hex of the first (up to two) bytes found.
        prefix: String,
    },
    /// The marker is there but the 8-byte fingerprint is cut short.
    #[error("truncated single-object header: {len} bytes, need at least 10")]
    Truncated {
        /// Length of the whole message.
        len: usize,
    },
    /// No schema under `schemas/` has this fingerprint.
    #[error("unknown writer schema fingerprint {0}")]
    UnknownFingerprint(Fingerprint),
    /// The record was written with a schema of another record type than the one asked for.
    #[error("expected a {expected} record, found a {found} record")]
    WrongRecordType {
        /// Full name asked for.
        expected: String,
        /// Full name of the writer schema.
        found: String,
    },
    /// No current schema has this full name.
    #[error("no schema named {0}")]
    UnknownSchema(String),
    /// The datum does not decode with its writer schema (corrupt or truncated bytes).
    #[error("corrupt {schema} datum: {reason}")]
    Corrupt {
        /// Full name of the writer schema.
        schema: String,
        /// What the Avro decoder reported.
        reason: String,
    },
    /// A value does not fit the schema it is written with.
    #[error("cannot encode {schema}: {reason}")]
    Encode {
        /// Full name of the schema.
        schema: String,
        /// What does not fit.
        reason: String,
    },
    /// The record decodes but a value is out of range (e.g. a timestamp of `i64::MIN`).
    #[error("invalid {schema}: {field}: {reason}")]
    Invalid {
        /// Full name of the record.
        schema: String,
        /// The field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An ingest record in a foreign format (Confluent, Segment, mapped JSON) does not fit it.
    #[error("{format} record: {field}: {reason}")]
    Format {
        /// The format, e.g. `Segment`.
        format: String,
        /// The field (a JSON pointer or key), or the part of the framing, e.g. `schema id`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An ingest record is larger than its topic accepts.
    #[error("record of {len} bytes is larger than the ingest limit of {limit} bytes (max_bytes)")]
    TooLarge {
        /// Size of the record value.
        len: usize,
        /// The topic's limit.
        limit: usize,
    },
    /// JSON input does not parse as the expected record.
    #[error("invalid JSON {schema}: {reason}")]
    Json {
        /// Full name of the expected record.
        schema: String,
        /// Parser message with line and column.
        reason: String,
    },
}
