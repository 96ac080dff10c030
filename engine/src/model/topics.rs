//! Names of Herald's topics (see `topologies/default.toml`), optionally prefixed so several
//! deployments (or test runs) can share a cluster.

/// App events from SDKs.
pub const EVENTS: &str = "herald.events";
/// Profile updates.
pub const PROFILES: &str = "herald.profiles";
/// Campaign definitions and commands (compacted).
pub const CAMPAIGNS: &str = "herald.campaigns";
/// Saved segments, keyed by segment id (compacted).
pub const SEGMENTS: &str = "herald.segments";
/// Engine decisions about campaigns.
pub const CAMPAIGN_EVENTS: &str = "herald.campaign-events";
/// Candidates, skips and engagements, user stage → campaign stage.
pub const CAMPAIGN_FLOW: &str = "herald.campaign-flow";
/// Send commands of apps with a global throttle, campaign stage → app stage.
pub const APP_THROTTLE: &str = "herald.app-throttle";
/// Send commands of apps with frequency caps on their way out, campaign/app stage → user stage.
pub const SEND_GATE: &str = "herald.send-gate";
/// Ingest records on their way to the user-stage task of their user (see `docs/ingest.md`,
/// "Partitioning"), user stage → user stage.
pub const INGEST_REPARTITION: &str = "herald.ingest-repartition";
/// Send commands.
pub const PUSH: &str = "herald.push";
/// Campaign stats snapshots (compacted).
pub const STATS: &str = "herald.stats";
/// Sender outcomes.
pub const RECEIPTS: &str = "herald.receipts";
/// Undecodable or rejected input.
pub const DEAD_LETTER: &str = "herald.dead-letter";
/// Queries to the running engine's tasks, keyed by request id (see `crate::query`).
pub const QUERIES: &str = "herald.queries";
/// The tasks' answers to queries, keyed by request id.
pub const QUERY_REPLIES: &str = "herald.query-replies";

/// The topic names a deployment uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    /// App events.
    pub events: String,
    /// Profile updates.
    pub profiles: String,
    /// Campaign definitions.
    pub campaigns: String,
    /// Saved segments.
    pub segments: String,
    /// User stage → campaign stage.
    pub campaign_flow: String,
    /// Campaign stage → app stage (apps with a global throttle).
    pub app_throttle: String,
    /// Campaign/app stage → user stage: caps are checked where a notification leaves.
    pub send_gate: String,
    /// User stage → user stage: ingest records that arrived on another task than their user's.
    pub ingest_repartition: String,
    /// Send commands.
    pub push: String,
    /// Campaign stats snapshots.
    pub stats: String,
    /// Campaign lifecycle events.
    pub campaign_events: String,
    /// Sender outcomes.
    pub receipts: String,
    /// Rejected input.
    pub dead_letter: String,
    /// Queries to the engine's tasks.
    pub queries: String,
    /// The tasks' answers to queries.
    pub query_replies: String,
}

impl TopicNames {
    /// The standard names, each preceded by `prefix` (empty for the standard names).
    pub fn with_prefix(prefix: &str) -> Self {
        let name = |topic: &str| format!("{prefix}{topic}");
        Self {
            events: name(EVENTS),
            profiles: name(PROFILES),
            campaigns: name(CAMPAIGNS),
            segments: name(SEGMENTS),
            campaign_flow: name(CAMPAIGN_FLOW),
            app_throttle: name(APP_THROTTLE),
            send_gate: name(SEND_GATE),
            ingest_repartition: name(INGEST_REPARTITION),
            push: name(PUSH),
            stats: name(STATS),
            campaign_events: name(CAMPAIGN_EVENTS),
            receipts: name(RECEIPTS),
            dead_letter: name(DEAD_LETTER),
            queries: name(QUERIES),
            query_replies: name(QUERY_REPLIES),
        }
    }
}

impl TopicNames {
    /// Every name, in declaration order.
    pub fn all(&self) -> [&str; 15] {
        [
            &self.events,
            &self.profiles,
            &self.campaigns,
            &self.segments,
            &self.campaign_flow,
            &self.app_throttle,
            &self.send_gate,
            &self.ingest_repartition,
            &self.push,
            &self.stats,
            &self.campaign_events,
            &self.receipts,
            &self.dead_letter,
            &self.queries,
            &self.query_replies,
        ]
    }
}

impl Default for TopicNames {
    fn default() -> Self {
        Self::with_prefix("")
    }
}
