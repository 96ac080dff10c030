//! The streaming runtime: exactly-once consume → process → produce over Kafka, with RocksDB
//! state stores backed by changelog topics, durable timers, global tables and a replay driver.
//!
//! It knows nothing about push notifications: operators are written against [`Processor`] and
//! [`ProcessorContext`], declared in a [`StreamTopology`], and run either live
//! ([`LiveRuntime`]) or over a bounded input on event time ([`replay`]). Both drive the same
//! [`task`] code, so a replay runs exactly the operator code that runs in production.
//!
//! Every processor call (a record, a timer firing, a tick) is atomic with respect to a
//! rejection: when it returns [`ProcessError::Reject`], its dead letter is its only effect. The
//! store writes it made (timers scheduled or cancelled included) are undone and the stores'
//! changelogs get the keys' earlier values back in the same transaction, and the records it
//! emitted are dropped (a call's emits are held until it returns). [`ProcessError::Runtime`]
//! aborts the transaction, as before.

mod checkpoint;
mod clock;
mod config;
mod error;
pub mod example;
mod global;
mod live;
mod metrics;
mod output;
pub(crate) mod partitioner;
mod processor;
pub mod replay;
mod restore;
mod standby;
mod store;
mod task;
mod timers;
mod topology;
mod watermarks;

pub use clock::Clock;
pub use config::{instance_id, GroupProtocol, RuntimeConfig, DEFAULT_MAX_RECORD_BYTES};
pub use error::{ProcessError, RuntimeError};
pub use global::GlobalTable;
pub use live::{LiveRuntime, ShutdownFlag};
pub use metrics::{serve_http, ProcessorCounter, Readiness, RuntimeMetrics};
pub use partitioner::partition_for;
pub use processor::{Processor, ProcessorContext, SourceRecord, Tick, Timer};
#[cfg(test)]
pub(crate) use store::with_scratch_store;
pub use store::{Entry, Store};
pub use topology::{StreamTopology, SubTopologyBuilder, TaskId, TopologyBuilder};

/// A hash map of the hot per-record paths, keyed by what input decides (store keys): hashed
/// with ahash, randomly seeded like the standard map (so crafted keys cannot make it
/// quadratic) and several times faster than its SipHash on short keys.
pub(crate) type KeyedMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
