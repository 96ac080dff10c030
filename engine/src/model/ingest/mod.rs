//! Decoding of ingest topics (`herald.events`, `herald.profiles`): each topic in its configured
//! format (Avro single-object, Herald JSON, Confluent wire format with a schema registry,
//! Segment-spec JSON, or JSON read through a mapping), into [`IngestRecord`]s.

mod avro_event;
mod config;
pub mod confluent;
#[cfg(test)]
mod fake_registry;
mod json;
mod mapping;
mod registry_client;
mod segment;

use std::sync::Arc;

pub use config::{
    IngestConfig, IngestConfigError, IngestFormat, JsonMapping, RegistryConfig, TimeUnit,
    TopicIngest, DEFAULT_MAX_INGEST_BYTES, REGISTRY_PASSWORD_ENV, REGISTRY_URL_ENV,
    REGISTRY_USER_ENV,
};
pub use registry_client::{RegistryClient, RegistryError};
pub use segment::{PAGE_EVENT, SCREEN_EVENT};

use self::{json::AppSource, mapping::MappingDecoder, segment::SegmentDecoder};
use super::{registry, single_object, AppEvent, CodecError, ProfileUpdate, Record, SchemaRegistry};

/// Decodes the records of both ingest topics, each in its format. Cheap to clone: clones share
/// the schema registry client and its cache.
#[derive(Clone)]
pub struct IngestDecoder {
    registry: &'static SchemaRegistry,
    events: TopicDecoder,
    profiles: TopicDecoder,
}

#[derive(Clone)]
struct TopicDecoder {
    format: Format,
    max_bytes: usize,
}

#[derive(Clone)]
enum Format {
    Avro,
    Json,
    Confluent(Arc<RegistryClient>),
    Segment(Arc<SegmentDecoder>),
    Mapping(Arc<MappingDecoder>),
}

impl Default for IngestDecoder {
    /// Avro single-object records on both topics.
    fn default() -> Self {
        let topic = TopicDecoder { format: Format::Avro, max_bytes: DEFAULT_MAX_INGEST_BYTES };
        Self { registry: SchemaRegistry::builtin(), events: topic.clone(), profiles: topic }
    }
}

impl IngestDecoder {
    /// A decoder for `config`, once it is checked; `confluent` topics share one registry client.
    pub fn from_config(config: &IngestConfig) -> Result<Self, IngestConfigError> {
        config.validate()?;
        let mut client = None;
        let mut topic = |kind: IngestKind| -> Result<TopicDecoder, IngestConfigError> {
            let settings = config.topic(kind);
            let app =
                || AppSource { field: settings.app_field.clone(), constant: settings.app.clone() };
            let format = match settings.format {
                IngestFormat::Avro => Format::Avro,
                IngestFormat::Json => Format::Json,
                IngestFormat::Confluent => Format::Confluent(match &client {
                    Some(client) => Arc::clone(client),
                    None => {
                        Arc::clone(client.insert(Arc::new(RegistryClient::new(&config.registry)?)))
                    }
                }),
                IngestFormat::Segment => Format::Segment(Arc::new(SegmentDecoder { app: app() })),
                IngestFormat::Mapping => Format::Mapping(Arc::new(MappingDecoder {
                    mapping: settings.mapping.clone().ok_or_else(|| IngestConfigError {
                        field: "mapping".into(),
                        reason: "missing".into(),
                    })?,
                    app: app(),
                })),
            };
            Ok(TopicDecoder { format, max_bytes: settings.max_bytes() })
        };
        let events = topic(IngestKind::Events)?;
        let profiles = topic(IngestKind::Profiles)?;
        Ok(Self { registry: SchemaRegistry::builtin(), events, profiles })
    }

    /// Decodes one message value of the ingest topic carrying `kind` records. Herald's Avro
    /// single-object records are accepted whatever the topic's format.
    pub fn decode_ingest(
        &self,
        kind: IngestKind,
        bytes: &[u8],
    ) -> Result<Vec<IngestRecord>, IngestError> {
        let topic = match kind {
            IngestKind::Events => &self.events,
            IngestKind::Profiles => &self.profiles,
        };
        if bytes.len() > topic.max_bytes {
            return Err(CodecError::TooLarge { len: bytes.len(), limit: topic.max_bytes }.into());
        }
        if kind == IngestKind::Events {
            if let Some(event) = avro_event::read(bytes) {
                return Ok(vec![IngestRecord::Event(registry::checked(event)?)]);
            }
        }
        if !single_object::has_magic(bytes) {
            match &topic.format {
                Format::Segment(segment) => return Ok(segment.decode(bytes)?),
                Format::Mapping(mapping) => return Ok(vec![mapping.decode(kind, bytes)?]),
                Format::Avro | Format::Json | Format::Confluent(_) => {}
            }
        }
        Ok(vec![match kind {
            IngestKind::Events => IngestRecord::Event(self.decode_record(&topic.format, bytes)?),
            IngestKind::Profiles => {
                IngestRecord::Profile(self.decode_record(&topic.format, bytes)?)
            }
        }])
    }

    /// Decodes a record of Herald's own schemas: single-object Avro, or in `format`.
    fn decode_record<T: Record>(&self, format: &Format, bytes: &[u8]) -> Result<T, IngestError> {
        match format {
            Format::Json if !single_object::has_magic(bytes) => {
                let record = serde_json::from_slice(bytes).map_err(|e| CodecError::Json {
                    schema: T::FULL_NAME.to_string(),
                    reason: e.to_string(),
                })?;
                Ok(registry::checked(record)?)
            }
            Format::Confluent(client) if !single_object::has_magic(bytes) => {
                confluent::decode(client, self.registry, bytes)
            }
            _ => Ok(self.registry.decode(bytes)?),
        }
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
