//! The engine's topology: the user stage and the campaign stage joined by the campaign-flow
//! topic, then the app stage (global per-app throttle) for apps that have one; campaign
//! definitions are a global table.

use std::sync::Arc;

use crate::{
    campaign::{CAMPAIGNS_TABLE, SEGMENTS_TABLE},
    model::{topics::TopicNames, IngestDecoder},
    runtime::{RuntimeError, StreamTopology},
    settings::Settings,
    stage_app::add_app_stage,
    stage_campaign::add_campaign_stage,
    stage_user::add_user_stage,
};

/// How often a campaign's stats snapshot is published while it changes, live.
pub const LIVE_STATS_INTERVAL_MS: i64 = 1_000;

/// The full engine topology for application `app_id`, reading the ingest topics with `ingest`;
/// stats snapshots at most every `stats_interval_ms` per campaign (0 in replays: every change).
pub fn engine_topology(
    app_id: &str,
    topics: TopicNames,
    settings: Arc<Settings>,
    ingest: IngestDecoder,
    stats_interval_ms: i64,
) -> Result<StreamTopology, RuntimeError> {
    let topics = Arc::new(topics);
    let builder = StreamTopology::builder(app_id)
        .dead_letter_topic(&topics.dead_letter)
        .global_table(CAMPAIGNS_TABLE, &topics.campaigns)
        .optional_global_table(SEGMENTS_TABLE, &topics.segments);
    let builder = add_user_stage(builder, &topics, Arc::clone(&settings), ingest);
    let builder = add_campaign_stage(builder, &topics, Arc::clone(&settings), stats_interval_ms);
    // Written and read by the stages only (ingest-repartition is a repartition of the user
    // stage): the engine deletes what it consumed from them.
    add_app_stage(builder, &topics, settings)
        .internal_topic(&topics.campaign_flow)
        .internal_topic(&topics.send_gate)
        .internal_topic(&topics.app_throttle)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_purges_the_topics_only_its_stages_write_and_read() {
        let topics = TopicNames::with_prefix("p.");
        let topology =
            engine_topology("app", topics, Arc::default(), IngestDecoder::default(), 0).unwrap();
        let mut purged = topology.purged_sources();
        purged.sort_unstable();
        assert_eq!(
            purged,
            [
                "p.herald.app-throttle",
                "p.herald.campaign-flow",
                "p.herald.ingest-repartition",
                "p.herald.send-gate"
            ],
            "not the inputs, receipts or herald.push: other applications read them"
        );
    }
}
