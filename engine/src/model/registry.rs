//! In-process schema registry: every schema version under `schemas/`, looked up by writer
//! fingerprint, with each record type's current version as the reader schema.

use std::{collections::HashMap, sync::OnceLock};

use apache_avro::{
    headers::HeaderBuilder, rabin::Rabin, types::Value, GenericSingleObjectReader, Schema,
};
use thiserror::Error;

use super::{single_object, CodecError, Fingerprint, Record};

include!(concat!(env!("OUT_DIR"), "/schema_sources.rs"));

/// Largest allocation the Avro decoder may make for one value, so corrupt length prefixes
/// cannot exhaust memory.
const MAX_AVRO_ALLOCATION: usize = 16 * 1024 * 1024;

/// A schema file under `schemas/` that is not a valid, unambiguous Avro record schema.
#[derive(Debug, Error)]
pub enum SchemaError {
    /// The file does not parse as an Avro schema.
    #[error("schemas/{path}: {reason}")]
    Invalid {
        /// Path relative to `schemas/`.
        path: String,
        /// Parser message.
        reason: String,
    },
    /// The schema is not a named record.
    #[error("schemas/{path}: top-level schema must be a named record")]
    NotARecord {
        /// Path relative to `schemas/`.
        path: String,
    },
    /// Two current (top-level) files define the same record name.
    #[error("schemas/{first} and schemas/{second} both define the current {name}")]
    DuplicateCurrent {
        /// Full record name.
        name: String,
        /// One file.
        first: String,
        /// The other file.
        second: String,
    },
    /// A historical version has no current version to resolve to.
    #[error("schemas/{path}: {name} has no current version at the top of schemas/")]
    NoCurrentVersion {
        /// Path of the historical file.
        path: String,
        /// Its full record name.
        name: String,
    },
}

struct Version {
    name: String,
    schema: Schema,
    /// Reads records written with this version, its named types resolved once (not on every
    /// record, which was a sixth of a broadcast's decode cost).
    reader: GenericSingleObjectReader,
}

/// The single-object header of a version: [`single_object::MAGIC`], then its fingerprint.
struct Header(Fingerprint);

impl HeaderBuilder for Header {
    fn build_header(&self) -> Vec<u8> {
        [&single_object::MAGIC[..], &self.0 .0[..]].concat()
    }
}

struct Current {
    fingerprint: Fingerprint,
    schema: Schema,
    /// Whether typed records are serialised straight against the schema (see
    /// [`SchemaRegistry::encode`]): every enum in it is one of [`DIRECT_ENUMS`].
    direct: bool,
}

/// Enums whose Rust variants are declared in their schema's symbol order (checked by a test):
/// the direct encoder writes a variant's index, not its name, so a record whose schema holds
/// any other enum takes the generic path.
const DIRECT_ENUMS: [&str; 7] = [
    "Platform",
    "CampaignCommand",
    "LifecycleKind",
    "EngagementKind",
    "ReceiptStatus",
    "ShardReportKind",
    "ShardPlanKind",
];

/// The enums in `schema`, by name.
fn enums_in<'s>(schema: &'s Schema, out: &mut Vec<(&'s str, &'s Schema)>) {
    match schema {
        Schema::Enum(e) => out.push((&e.name.name, schema)),
        Schema::Record(record) => record.fields.iter().for_each(|f| enums_in(&f.schema, out)),
        Schema::Union(union) => union.variants().iter().for_each(|s| enums_in(s, out)),
        Schema::Array(array) => enums_in(&array.items, out),
        Schema::Map(map) => enums_in(&map.types, out),
        _ => {}
    }
}

/// Whether records of `schema` may be serialised directly (see [`Current::direct`]).
fn direct(schema: &Schema) -> bool {
    let mut enums = Vec::new();
    enums_in(schema, &mut enums);
    enums.iter().all(|(name, _)| DIRECT_ENUMS.contains(name))
}

/// Resolves writer fingerprints to schemas and encodes/decodes single-object records.
pub struct SchemaRegistry {
    versions: HashMap<Fingerprint, Version>,
    current: HashMap<String, Current>,
}

impl SchemaRegistry {
    /// The registry of the schemas compiled into this build (every file under `schemas/`).
    pub fn builtin() -> &'static SchemaRegistry {
        static REGISTRY: OnceLock<SchemaRegistry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
            SchemaRegistry::from_sources(SCHEMA_SOURCES)
                .expect("schemas/ compiled into this build are valid (checked by tests)")
        })
    }

    /// Builds a registry from (path relative to `schemas/`, schema JSON) pairs. Files at the
    /// top level are the current versions; files in sub-folders are older versions.
    pub fn from_sources(sources: &[(&str, &str)]) -> Result<Self, SchemaError> {
        let mut versions = HashMap::new();
        let mut current: HashMap<String, (String, Current)> = HashMap::new();
        let mut historical = Vec::new();
        for (path, text) in sources {
            let schema = Schema::parse_str(text).map_err(|e| SchemaError::Invalid {
                path: path.to_string(),
                reason: e.to_string(),
            })?;
            let name = match &schema {
                Schema::Record(record) => record.name.fullname(None),
                _ => return Err(SchemaError::NotARecord { path: path.to_string() }),
            };
            let fingerprint = fingerprint_of(&schema);
            if path.contains('/') {
                historical.push((path.to_string(), name.clone()));
            } else {
                let entry =
                    Current { fingerprint, schema: schema.clone(), direct: direct(&schema) };
                if let Some((first, _)) = current.insert(name.clone(), (path.to_string(), entry)) {
                    return Err(SchemaError::DuplicateCurrent {
                        name,
                        first,
                        second: path.to_string(),
                    });
                }
            }
            let reader = GenericSingleObjectReader::new_with_header_builder(
                schema.clone(),
                Header(fingerprint),
            )
            .map_err(|e| SchemaError::Invalid { path: path.to_string(), reason: e.to_string() })?;
            versions.insert(fingerprint, Version { name, schema, reader });
        }
        for (path, name) in historical {
            if !current.contains_key(&name) {
                return Err(SchemaError::NoCurrentVersion { path, name });
            }
        }
        let current = current.into_iter().map(|(name, (_, c))| (name, c)).collect();
        Ok(Self { versions, current })
    }

    /// Full names of the current record schemas, sorted.
    pub fn record_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.current.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The full name of a record type given by its full name (`io.herald.AppEvent`) or its
    /// short name (`AppEvent`).
    pub fn full_name(&self, name: &str) -> Result<&str, CodecError> {
        self.current
            .keys()
            .find(|full| *full == name || full.rsplit('.').next() == Some(name))
            .map(String::as_str)
            .ok_or_else(|| {
                CodecError::UnknownSchema(format!(
                    "{name} (known: {})",
                    self.record_names().join(", ")
                ))
            })
    }

    /// Encodes a JSON object with the schema's field names as the current version of record
    /// type `name` (full or short name).
    pub fn encode_json(&self, name: &str, json: serde_json::Value) -> Result<Vec<u8>, CodecError> {
        let full_name = self.full_name(name)?;
        self.encode_value(full_name, Value::from(json))
    }

    /// The current schema of a record type.
    pub fn current_schema(&self, full_name: &str) -> Result<&Schema, CodecError> {
        self.current_entry(full_name).map(|c| &c.schema)
    }

    /// Encodes a typed record with its current schema.
    ///
    /// The record is serialised straight into Avro binary against its schema (no generic value,
    /// resolution or validation pass: those were most of the engine's encode cost); a record
    /// that serialiser refuses, or whose schema holds an enum not in [`DIRECT_ENUMS`], takes the
    /// generic path, which names what is wrong. Debug builds
    /// check every record against the generic path (same value read back).
    pub fn encode<T: Record>(&self, record: &T) -> Result<Vec<u8>, CodecError> {
        let current = self.current_entry(T::FULL_NAME)?;
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&single_object::MAGIC);
        bytes.extend_from_slice(&current.fingerprint.0);
        if !current.direct
            || apache_avro::write_avro_datum_ref(&current.schema, record, &mut bytes).is_err()
        {
            return self.encode_generic(record);
        }
        debug_assert_eq!(
            self.decode_value(&bytes).map(|(_, value)| value).ok(),
            self.encode_generic(record).and_then(|slow| self.decode_value(&slow)).ok().map(|v| v.1),
            "direct and generic Avro encodings of a {} differ",
            T::FULL_NAME
        );
        Ok(bytes)
    }

    /// Encodes a typed record through a generic Avro value resolved against its schema.
    fn encode_generic<T: Record>(&self, record: &T) -> Result<Vec<u8>, CodecError> {
        let value = apache_avro::to_value(record).map_err(|e| CodecError::Encode {
            schema: T::FULL_NAME.to_string(),
            reason: e.to_string(),
        })?;
        self.encode_value(T::FULL_NAME, value)
    }

    /// Encodes a generic Avro value with the current schema named `full_name`. Plain values are
    /// resolved against the schema first (maps become records, bare values become union branches).
    pub fn encode_value(&self, full_name: &str, value: Value) -> Result<Vec<u8>, CodecError> {
        let datum = self.encode_datum(full_name, value)?;
        Ok(single_object::frame(self.current_entry(full_name)?.fingerprint, &datum))
    }

    /// Encodes a generic Avro value with the current schema named `full_name` as a bare Avro
    /// datum, without the single-object header (for other framings, e.g. Confluent's).
    pub fn encode_datum(&self, full_name: &str, value: Value) -> Result<Vec<u8>, CodecError> {
        let current = self.current_entry(full_name)?;
        let encode_error = |e: apache_avro::Error| CodecError::Encode {
            schema: full_name.to_string(),
            reason: e.to_string(),
        };
        let resolved = value.resolve(&current.schema).map_err(encode_error)?;
        apache_avro::to_avro_datum(&current.schema, resolved).map_err(encode_error)
    }

    /// Decodes a single-object record into its current-version typed form.
    pub fn decode<T: Record>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (name, value) = self.decode_value(bytes)?;
        if name != T::FULL_NAME {
            return Err(CodecError::WrongRecordType {
                expected: T::FULL_NAME.to_string(),
                found: name.to_string(),
            });
        }
        let record: T = apache_avro::from_value(&value)
            .map_err(|e| CodecError::Corrupt { schema: name.to_string(), reason: e.to_string() })?;
        checked(record)
    }

    /// Decodes a single-object record of any known type, resolved to the current version of its
    /// record type. Returns the record's full name and value.
    pub fn decode_value<'a>(&'a self, bytes: &[u8]) -> Result<(&'a str, Value), CodecError> {
        let (fingerprint, mut datum) = single_object::split(bytes)?;
        let writer =
            self.versions.get(&fingerprint).ok_or(CodecError::UnknownFingerprint(fingerprint))?;
        let reader = self.current_entry(&writer.name)?;
        let corrupt = |reason: String| CodecError::Corrupt { schema: writer.name.clone(), reason };
        let value = if reader.fingerprint == fingerprint {
            // Written with the current version (the usual case): nothing to resolve.
            let mut record = bytes;
            let value = writer.reader.read_value(&mut record).map_err(|e| corrupt(e.to_string()));
            datum = record;
            value?
        } else {
            apache_avro::from_avro_datum(&writer.schema, &mut datum, Some(&reader.schema))
                .map_err(|e| corrupt(e.to_string()))?
        };
        if !datum.is_empty() {
            return Err(corrupt(format!("{} trailing bytes after the datum", datum.len())));
        }
        Ok((writer.name.as_str(), value))
    }

    /// The full name of a single-object record's type, from its fingerprint alone (nothing
    /// is decoded).
    pub fn record_name<'a>(&'a self, bytes: &[u8]) -> Result<&'a str, CodecError> {
        let (fingerprint, _) = single_object::split(bytes)?;
        let writer =
            self.versions.get(&fingerprint).ok_or(CodecError::UnknownFingerprint(fingerprint))?;
        Ok(&writer.name)
    }

    fn current_entry(&self, full_name: &str) -> Result<&Current, CodecError> {
        self.current.get(full_name).ok_or_else(|| CodecError::UnknownSchema(full_name.to_string()))
    }
}

/// `record` if its values are in range (see [`super::Checked`]), else the field and reason.
pub(super) fn checked<T: Record>(record: T) -> Result<T, CodecError> {
    match record.check() {
        Ok(()) => Ok(record),
        Err(invalid) => Err(CodecError::Invalid {
            schema: T::FULL_NAME.to_string(),
            field: invalid.field.to_string(),
            reason: invalid.reason,
        }),
    }
}

fn fingerprint_of(schema: &Schema) -> Fingerprint {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[..8]);
    Fingerprint(fingerprint)
}

#[cfg(test)]
mod tests {
    use serde::{de::DeserializeOwned, Serialize};

    use super::{enums_in, SchemaRegistry, DIRECT_ENUMS};
    use crate::model::{
        CampaignCommand, EngagementKind, LifecycleKind, Platform, ReceiptStatus, ShardPlanKind,
        ShardReportKind,
    };

    /// Checks that each symbol of enum `name` in every current schema reads as the Rust variant
    /// that serialises with that symbol's index: the direct encoder writes indexes.
    fn same_order<E: Serialize + DeserializeOwned>(name: &str) -> usize {
        let registry = SchemaRegistry::builtin();
        let mut checked = 0;
        for record in registry.record_names() {
            let mut enums = Vec::new();
            enums_in(registry.current_schema(record).expect("current"), &mut enums);
            for (_, schema) in enums.iter().filter(|(n, _)| *n == name) {
                let apache_avro::Schema::Enum(e) = schema else { unreachable!() };
                for symbol in &e.symbols {
                    let variant: E = serde_json::from_value(serde_json::json!(symbol))
                        .unwrap_or_else(|e| panic!("{name}::{symbol} in {record}: {e}"));
                    let mut bytes = Vec::new();
                    apache_avro::write_avro_datum_ref(schema, &variant, &mut bytes).expect("write");
                    let read = apache_avro::from_avro_datum(schema, &mut bytes.as_slice(), None);
                    let Ok(apache_avro::types::Value::Enum(_, written)) = read else {
                        panic!("{name}::{symbol} in {record}: read back {read:?}")
                    };
                    assert_eq!(&written, symbol, "{name} in {record}");
                    checked += 1;
                }
            }
        }
        checked
    }

    #[test]
    fn direct_enums_declare_their_variants_in_schema_order() {
        let checks = [
            ("Platform", same_order::<Platform>("Platform")),
            ("CampaignCommand", same_order::<CampaignCommand>("CampaignCommand")),
            ("LifecycleKind", same_order::<LifecycleKind>("LifecycleKind")),
            ("EngagementKind", same_order::<EngagementKind>("EngagementKind")),
            ("ReceiptStatus", same_order::<ReceiptStatus>("ReceiptStatus")),
            ("ShardReportKind", same_order::<ShardReportKind>("ShardReportKind")),
            ("ShardPlanKind", same_order::<ShardPlanKind>("ShardPlanKind")),
        ];
        for ((name, checked), listed) in checks.iter().zip(DIRECT_ENUMS) {
            assert_eq!(*name, listed);
            assert!(*checked > 0, "no enum {name} in the schemas");
        }
    }

    #[test]
    fn direct_and_generic_encodings_read_the_same() {
        let registry = SchemaRegistry::builtin();
        let command = crate::model::CampaignEnvelope {
            campaign_id: "c".into(),
            app_id: "a".into(),
            command: CampaignCommand::Resume,
            definition: None,
            revision: 3,
            issued_at_ms: 1,
            issued_by: Some("me".into()),
        };
        let direct = registry.encode(&command).expect("direct");
        let generic = registry.encode_generic(&command).expect("generic");
        assert_eq!(direct, generic);
    }
}
