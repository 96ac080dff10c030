//! Estimated reach over the API: the running engine's user-stage tasks count, from their own
//! stores, who a campaign definition or a saved segment reaches now (`query::estimate`, as
//! `herald campaign|segment estimate`).

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, Query, State},
    Extension, Json,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{auth::Caller, error::ApiError, handlers::body_text, ApiState};
use crate::{
    campaign::{admin, Campaign},
    query::estimate::{self, Estimate, Question},
};

/// How long to wait for the engine.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EstimateQuery {
    /// Seconds to wait for every partition's answer (default 30, 1 to 120); partitions that
    /// have not answered by then are listed in `partitions_missing`.
    pub timeout_s: Option<u64>,
}

/// The engine's estimate.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateView {
    /// Partitions asked (one user-stage task each).
    pub partitions: i32,
    /// Whether every partition answered (else the counts miss the users of the others).
    pub complete: bool,
    /// Counts added up over the partitions that answered (`matched`, `reachable`, `ios`,
    /// `android`, and for a campaign `candidates`, `waiting`, `skipped` by reason), what a
    /// scheduled campaign's limits leave (`limited`), `partitions_missing`, `refused`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub estimate: Estimate,
}

/// Asks the engine `question` (in a blocking thread: the query client polls Kafka).
async fn ask(
    state: &ApiState,
    question: Question,
    campaign: Option<(Campaign, u64)>,
    query: &EstimateQuery,
) -> Result<Json<EstimateView>, ApiError> {
    let timeout = Duration::from_secs(query.timeout_s.unwrap_or(30).clamp(1, 120));
    let kafka = state.config().kafka.clone();
    let topics = state.config().topics.clone();
    let (partitions, estimate) = tokio::task::spawn_blocking(move || {
        let campaign = campaign.as_ref().map(|(c, sent)| (c, *sent));
        estimate::ask(&kafka, &topics, &question, campaign, timeout, |_| {})
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(ApiError::from)?;
    if estimate.partitions_answered == 0 && estimate.refused.is_empty() {
        return Err(ApiError::Unavailable(format!(
            "no engine answered within {}s (partitions {:?} missing): is an engine running?",
            timeout.as_secs(),
            estimate.partitions_missing
        )));
    }
    let complete = estimate.partitions_missing.is_empty() && estimate.refused.is_empty();
    Ok(Json(EstimateView { partitions, complete, estimate }))
}

/// How many users a campaign definition (YAML or JSON, applied or not) reaches now, counted by
/// the running engine as an immediate run would check them; for a scheduled campaign, what its
/// limits leave of a run (users sent to so far from its latest stats). Changes nothing.
#[utoipa::path(post, path = "/api/v1/campaigns/estimate", tag = "campaigns",
    params(EstimateQuery),
    request_body(content = String, description = "campaign definition, YAML or JSON",
        content_type = "application/json"),
    responses((status = 200, body = EstimateView), (status = 422, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody,
            description = "no engine's query topics, or no partition answered in time")),
    security(("bearer" = [])))]
pub async fn estimate_campaign(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<EstimateQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EstimateView>, ApiError> {
    let text = body_text(&state, body)?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (campaign, envelope) = admin::define(&text, "request body", Some(caller.name), now_ms)?;
    let sent_so_far = state.stats().get(&campaign.id).map_or(0, |s| estimate::sent_so_far(&s));
    let question = Question::Campaign {
        id: campaign.id.clone(),
        definition: envelope.definition.unwrap_or_default(),
        at_ms: now_ms,
    };
    ask(&state, question, Some((campaign, sent_so_far)), &query).await
}

/// How many users a saved segment holds now, and how many of them push reaches, counted by the
/// running engine.
#[utoipa::path(get, path = "/api/v1/segments/{id}/estimate", tag = "segments",
    params(("id" = String, Path, description = "segment id"), EstimateQuery),
    responses((status = 200, body = EstimateView), (status = 404, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody,
            description = "no engine's query topics, or no partition answered in time")),
    security(("bearer" = [])))]
pub async fn estimate_segment(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<EstimateQuery>,
) -> Result<Json<EstimateView>, ApiError> {
    if state.segments().get(&id).is_none() {
        return Err(ApiError::NotFound(format!("no segment {id}")));
    }
    let question = Question::Segment { id, at_ms: chrono::Utc::now().timestamp_millis() };
    ask(&state, question, None, &query).await
}
