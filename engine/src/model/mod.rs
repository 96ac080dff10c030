//! Records on Herald's topics, their Avro schemas, and their wire encodings.

mod checks;
mod error;
mod ingest;
mod records;
mod registry;
mod shard_records;
mod single_object;
pub mod topics;

pub use checks::{check_timestamp, Checked, InvalidField, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS};
pub use error::CodecError;
pub use ingest::{
    confluent, IngestConfig, IngestConfigError, IngestDecoder, IngestError, IngestFormat,
    IngestKind, IngestRecord, JsonMapping, RegistryClient, RegistryConfig, RegistryError, TimeUnit,
    TopicIngest, UserAlias, DEFAULT_MAX_INGEST_BYTES, PAGE_EVENT, REGISTRY_PASSWORD_ENV,
    REGISTRY_URL_ENV, REGISTRY_USER_ENV, SCREEN_EVENT,
};
pub use records::{
    is_triggered_run, scheduled_run_id, scheduled_run_time, triggered_run_id, AliasRecord,
    AppEvent, CampaignCommand, CampaignEnvelope, CampaignLifecycleEvent, CampaignStats, Candidate,
    DeadLetter, Device, Engagement, EngagementKind, HistoryCount, IngestForward, LifecycleKind,
    Platform, ProfileUpdate, Properties, PropertyValue, Receipt, ReceiptStatus, Record, RunTally,
    SeenEntry, SendCommand, SendConfirmed, Skip, SourcePartition, UserMerge, VariantStats,
    TRIGGERED_RUN,
};
pub use registry::{SchemaError, SchemaRegistry};
pub use shard_records::{ShardPlan, ShardPlanKind, ShardReport, ShardReportKind};
pub use single_object::Fingerprint;
