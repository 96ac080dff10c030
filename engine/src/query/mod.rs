//! A query channel between clients (CLI, API) and the running engine's tasks, over Kafka: the
//! tasks answer from their own state stores, not from a copy of the data, however many engine
//! instances share the work.
//!
//! # How it works
//!
//! - A client writes a [`QueryRequest`] to `herald.queries` (a global table: every instance
//!   reads it whole, and tells its tasks of each change), keyed by its unique `request_id`. It
//!   names a `kind`, carries a JSON `body` of that kind's shape, and a wall-clock `deadline_ms`.
//! - Every task of the sub-topology that serves queries (today the user stage) picks it up in
//!   its [`Processor::on_tick`](crate::runtime::Processor::on_tick), works in bounded steps,
//!   at most 50 ms at a time between its normal records, one task of an instance per loop
//!   pass, round-robin ([`QueryTurns`]; a [`QueryDesk`] keeps the queue, the work state and
//!   the time slice), and writes
//!   [`QueryReply`]s to `herald.query-replies`, keyed by the request id, in its transactions:
//!   `PROGRESS` about once a second while it works (`scanned` so far), then one `DONE` (with
//!   the answer as JSON `body`) or `REFUSED` (with an `error`), naming its `partition`, signed
//!   with the key shared by engine and clients when there is one ([`sign`]), over the reply and a
//!   digest of the request answered; clients drop replies whose signature does not verify for the
//!   exact request they sent.
//! - A request with a `key` (e.g. a user id) is answered by the one task owning that key;
//!   without a key, by every task: the client waits until each partition answered
//!   ([`QueryClient::ask`]), or its deadline passed (then [`Answers::missing`] says which
//!   partitions did not answer), and finally deletes the request (a tombstone), which also
//!   cancels any work still under way.
//! - Tasks ignore a request once its deadline passed: a restarted engine, reading the table
//!   from the beginning, never answers last week's queries.
//! - The work of a query is not state: if a task crashes or moves meanwhile, its new owner starts
//!   the query over from the request, still in the table. A partition may therefore answer
//!   twice; the client keeps the last answer of each partition.
//!
//! # Adding a kind
//!
//! 1. Define its question and answer (serde types, carried as JSON in `body`), and a `KIND`
//!    name, e.g. in `query/<kind>.rs` for what clients and tasks share.
//! 2. In the serving processor (`stage_user/query.rs`), give the kind a work state and a step
//!    function returning [`Step`]: `More(n)` after looking at `n` more items, `Done(n, body)`,
//!    or `Refused(reason)`; a step must do bounded work (e.g. 500 users), reading stores only.
//! 3. Client side: build a [`QueryRequest`] with [`QueryRequest::new`] (key it for one user's
//!    task), [`QueryClient::ask`] it, and decode each [`Answers::done`] body.

mod client;
mod desk;
pub mod estimate;
pub mod profile;
pub mod sign;
mod turns;

use serde::{Deserialize, Serialize};

pub use client::{round_trips, Answers, Progress, QueryClient, QueryError};
pub use desk::{QueryDesk, Step, MAX_PENDING, MAX_REQUEST_BYTES};
pub use turns::QueryTurns;

use crate::model::{check_timestamp, Checked, InvalidField, Record};

/// The kinds of request the engine's tasks answer; a request of another kind is dead-lettered.
pub const KINDS: &[&str] = &[estimate::KIND, profile::KIND];

/// Name of the global table of open requests, in the topologies that serve queries.
pub const QUERIES_TABLE: &str = "queries";

/// A question to the engine's tasks (`herald.queries`, keyed by `request_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRequest {
    /// Unique id; the replies are keyed by it.
    pub request_id: String,
    /// What is asked (e.g. [`estimate::KIND`]); a task refuses a kind it does not know.
    pub kind: String,
    /// When set, only the task owning this key answers; else every task does.
    #[serde(default)]
    pub key: Option<String>,
    /// The question, JSON of the kind's shape.
    pub body: String,
    /// Wall-clock time after which tasks ignore the request, epoch milliseconds.
    pub deadline_ms: i64,
    /// When it was made, epoch milliseconds.
    pub issued_at_ms: i64,
}

impl QueryRequest {
    /// A request of `kind` with a fresh random id, asking `body`, made now and answered within
    /// `timeout`.
    pub fn new(
        kind: &str,
        key: Option<String>,
        body: String,
        timeout: std::time::Duration,
    ) -> Self {
        let now = chrono::Utc::now().timestamp_millis();
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        Self {
            request_id: random_id(),
            kind: kind.to_string(),
            key,
            body,
            deadline_ms: now.saturating_add(timeout_ms),
            issued_at_ms: now,
        }
    }
}

/// `q-` and 32 random hex digits.
fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system's random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("q-{hex}")
}

impl Checked for QueryRequest {
    fn check(&self) -> Result<(), InvalidField> {
        check_timestamp("issued_at_ms", self.issued_at_ms)?;
        check_timestamp("deadline_ms", self.deadline_ms)
    }
}

impl Record for QueryRequest {
    const FULL_NAME: &'static str = "io.herald.QueryRequest";
}

/// Where a task is with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QueryStatus {
    /// Still working; `scanned` so far.
    Progress,
    /// Answered: `body` holds the answer.
    Done,
    /// Not answered: `error` says why.
    Refused,
}

/// One task's answer or progress (`herald.query-replies`, keyed by request id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryReply {
    /// The request answered.
    pub request_id: String,
    /// Partition of the answering task.
    pub partition: i32,
    /// Partitions of its sub-topology.
    pub partitions: i32,
    /// Progress, answer or refusal.
    pub status: QueryStatus,
    /// Items (e.g. users) looked at so far.
    pub scanned: i64,
    /// `Done`: the answer, JSON of the kind's shape.
    #[serde(default)]
    pub body: Option<String>,
    /// `Refused`: why.
    #[serde(default)]
    pub error: Option<String>,
    /// When the task wrote it, epoch milliseconds.
    pub timestamp_ms: i64,
    /// HMAC-SHA256 of the other fields and of the digest of the request answered, with the shared
    /// query key, hex ([`sign`]); none when the engine has no key.
    #[serde(default)]
    pub signature: Option<String>,
}

impl Checked for QueryReply {
    fn check(&self) -> Result<(), InvalidField> {
        check_timestamp("timestamp_ms", self.timestamp_ms)
    }
}

impl Record for QueryReply {
    const FULL_NAME: &'static str = "io.herald.QueryReply";
}
