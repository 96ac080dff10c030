//! Names of Herald's topics (see `topologies/default.toml`).

/// App events from SDKs.
pub const EVENTS: &str = "herald.events";
/// Profile updates.
pub const PROFILES: &str = "herald.profiles";
/// Campaign definitions and commands (compacted).
pub const CAMPAIGNS: &str = "herald.campaigns";
/// Engine decisions about campaigns.
pub const CAMPAIGN_EVENTS: &str = "herald.campaign-events";
/// Candidates, skips and engagements, user stage → campaign stage.
pub const CAMPAIGN_FLOW: &str = "herald.campaign-flow";
/// Send commands.
pub const PUSH: &str = "herald.push";
/// Sender outcomes.
pub const RECEIPTS: &str = "herald.receipts";
/// Undecodable or rejected input.
pub const DEAD_LETTER: &str = "herald.dead-letter";
