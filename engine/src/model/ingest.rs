//! Decoding of ingest topics (`herald.events`, `herald.profiles`), which may also carry JSON.

use std::str::FromStr;

use serde::Deserialize;

use super::{registry, single_object, AppEvent, CodecError, ProfileUpdate, Record, SchemaRegistry};

/// Which encodings an ingest topic accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IngestFormat {
    /// Avro single-object records only.
    #[default]
    Avro,
    /// Avro single-object records, and JSON objects with the schema's field names.
    AvroOrJson,
}

impl FromStr for IngestFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "avro" => Ok(Self::Avro),
            "avro-or-json" => Ok(Self::AvroOrJson),
            other => Err(format!("unknown ingest format {other:?}: expected avro or avro-or-json")),
        }
    }
}

/// Decodes ingest records: Avro single-object always, JSON when the format allows it.
#[derive(Clone, Copy)]
pub struct IngestDecoder {
    registry: &'static SchemaRegistry,
    format: IngestFormat,
}

impl IngestDecoder {
    /// A decoder over the built-in registry accepting `format`.
    pub fn new(format: IngestFormat) -> Self {
        Self { registry: SchemaRegistry::builtin(), format }
    }

    /// Decodes one message value.
    pub fn decode<T: Record>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        if single_object::has_magic(bytes) || self.format == IngestFormat::Avro {
            return self.registry.decode(bytes);
        }
        let record = serde_json::from_slice(bytes).map_err(|e| CodecError::Json {
            schema: T::FULL_NAME.to_string(),
            reason: e.to_string(),
        })?;
        registry::checked(record)
    }
}

/// What an ingest record is once decoded: Herald's own records, whatever the format it came in.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestRecord {
    /// Something a user did.
    Event(AppEvent),
    /// A change to a user's profile or devices.
    Profile(ProfileUpdate),
    /// An anonymous user became known: their history and devices merge into the known user.
    Alias(UserAlias),
}

impl IngestRecord {
    /// The user the record is about (for an alias, the anonymous id, whose task holds what is
    /// merged).
    pub fn user_id(&self) -> &str {
        match self {
            Self::Event(event) => &event.user_id,
            Self::Profile(update) => &update.user_id,
            Self::Alias(alias) => &alias.anonymous_id,
        }
    }
}

/// An anonymous id that identified as a known user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAlias {
    /// App of both ids.
    pub app_id: String,
    /// The id the user had before identifying.
    pub anonymous_id: String,
    /// The known user id they identified as.
    pub user_id: String,
    /// When they identified, epoch milliseconds.
    pub timestamp_ms: i64,
}

/// Which record an ingest topic carries when the format does not say (Avro single-object and
/// Segment-shape records name their type; Herald JSON does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestKind {
    /// App events (`herald.events`).
    Events,
    /// Profile updates (`herald.profiles`).
    Profiles,
}

/// Why an ingest record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The record is bad (dead-lettered with this reason, naming the field when there is one).
    #[error(transparent)]
    Invalid(#[from] CodecError),
    /// Something the decoder needs is unreachable for now (e.g. the schema registry): the record
    /// is retried later, never dead-lettered.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl IngestDecoder {
    /// Decodes one message value of an ingest topic carrying `kind` records.
    pub fn decode_ingest(
        &self,
        kind: IngestKind,
        bytes: &[u8],
    ) -> Result<Vec<IngestRecord>, IngestError> {
        let record = match kind {
            IngestKind::Events => IngestRecord::Event(self.decode(bytes)?),
            IngestKind::Profiles => IngestRecord::Profile(self.decode(bytes)?),
        };
        Ok(vec![record])
    }
}
