//! The engine's topology: the user stage and the campaign stage joined by the campaign-flow
//! topic, with campaign definitions as a global table.

use std::sync::Arc;

use crate::{
    model::{topics::TopicNames, IngestFormat},
    runtime::{RuntimeError, StreamTopology},
    stage_campaign::add_campaign_stage,
    stage_user::{add_user_stage, Settings},
};

/// Name of the campaigns global table.
pub const CAMPAIGNS_TABLE: &str = "campaigns";

/// The full engine topology for application `app_id`.
pub fn engine_topology(
    app_id: &str,
    topics: TopicNames,
    settings: Arc<Settings>,
    ingest: IngestFormat,
) -> Result<StreamTopology, RuntimeError> {
    let topics = Arc::new(topics);
    let builder = StreamTopology::builder(app_id)
        .dead_letter_topic(&topics.dead_letter)
        .global_table(CAMPAIGNS_TABLE, &topics.campaigns);
    let builder = add_user_stage(builder, &topics, settings, ingest);
    add_campaign_stage(builder, &topics).build()
}
