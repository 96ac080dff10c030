//! The campaign stage (partitioned by campaign id). This milestone holds its decision logic:
//! A/B assignment and winner selection, split delivery. The operator that applies them to the
//! candidate flow (limits, rendering, outbox throttling, stats) builds on these.

pub mod ab;
