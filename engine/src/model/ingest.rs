//! Decoding of ingest topics (`herald.events`, `herald.profiles`), which may also carry JSON.

use std::str::FromStr;

use serde::Deserialize;

use super::{registry, single_object, CodecError, Record, SchemaRegistry};

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
