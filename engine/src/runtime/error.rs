//! Runtime errors, and what a processor may return.

use thiserror::Error;

/// Something the runtime could not do. Kafka and RocksDB failures carry what was being done.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// A Kafka client call failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// A RocksDB call failed.
    #[error("state store: {context}: {source}")]
    Store {
        /// What was being done.
        context: String,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The consumer has not joined its group yet, so offsets cannot join a transaction.
    #[error("the consumer has no group metadata yet")]
    NoGroupMetadata,
    /// A typed store value could not be (de)serialised.
    #[error("state store {store}: bad value: {reason}")]
    StateValue {
        /// Store name.
        store: String,
        /// Serialiser message.
        reason: String,
    },
    /// The topology or configuration is inconsistent.
    #[error("invalid topology: {0}")]
    Topology(String),
    /// A setting of the instance is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A record is larger than the producer may send (`message.max.bytes`).
    #[error("a record for {topic} is {bytes} bytes (key and value), over the limit of {limit} bytes (message.max.bytes)")]
    RecordTooLarge {
        /// The topic it was for (an output or a changelog).
        topic: String,
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Another process took over this instance's work: a newer member with the same instance
    /// id joined the group, or the producer was fenced. The instance stops.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The instance made no progress on input it has, and recovering (joining its group again
    /// with a new consumer and producer) did not help. The instance stops.
    #[error("stalled: {0}")]
    Stalled(String),
    /// Something a processor needs is unreachable for now (e.g. a schema registry): the
    /// transaction is aborted and the same input retried after a backoff.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Replay input is malformed.
    #[error("replay input {location}: {reason}")]
    ReplayInput {
        /// File and line, or topic/partition/offset.
        location: String,
        /// What is wrong.
        reason: String,
    },
}

impl RuntimeError {
    pub(crate) fn kafka(
        context: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| Self::Kafka { context, source }
    }

    pub(crate) fn store(context: impl Into<String>) -> impl FnOnce(rocksdb::Error) -> Self {
        let context = context.into();
        move |source| Self::Store { context, source }
    }

    /// As [`RuntimeError::store`] for `doing` (e.g. "reading") on store `store`, the context
    /// formatted only when there is an error: these wrap every store read and write.
    pub(crate) fn on_store<'a>(
        doing: &'static str,
        store: &'a str,
    ) -> impl FnOnce(rocksdb::Error) -> Self + 'a {
        move |source| Self::Store { context: format!("{doing} {store}"), source }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// Why a processor did not process a record or timer.
#[derive(Debug, Error)]
pub enum ProcessError {
    /// The input is bad: it goes to the dead-letter topic with this reason and processing
    /// continues with the next record.
    #[error("rejected: {0}")]
    Reject(String),
    /// The runtime failed underneath the processor: the transaction is aborted and retried.
    #[error(transparent)]
    Runtime(RuntimeError),
}

impl From<RuntimeError> for ProcessError {
    /// A record too large to produce rejects the input that caused it (it would fail every
    /// retry); other runtime failures abort the transaction.
    fn from(error: RuntimeError) -> Self {
        match error {
            RuntimeError::RecordTooLarge { .. } => Self::Reject(error.to_string()),
            other => Self::Runtime(other),
        }
    }
}

impl ProcessError {
    /// A rejection with `reason`.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Reject(reason.into())
    }
}

impl From<crate::model::IngestError> for ProcessError {
    /// A bad record is rejected; an unreachable dependency retries the input later.
    fn from(error: crate::model::IngestError) -> Self {
        match error {
            crate::model::IngestError::Invalid(error) => error.into(),
            crate::model::IngestError::Unavailable(reason) => {
                Self::Runtime(RuntimeError::Unavailable(reason))
            }
        }
    }
}

impl From<crate::model::CodecError> for ProcessError {
    fn from(error: crate::model::CodecError) -> Self {
        Self::Reject(error.to_string())
    }
}
