//! Saved segments over the API: list, get, create or update (validated by [`parse_segment`],
//! as `herald segment validate|apply`), delete (refused while a campaign uses the segment, as
//! `herald segment delete`). The segments topic is created when missing, as the engine does.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::StatusCode,
    Json,
};
use rdkafka::producer::FutureRecord;
use serde::Serialize;
use utoipa::ToSchema;

use super::{error::ApiError, handlers::body_text, table::SegmentText, ApiState};
use crate::{
    campaign::{admin, parse_segment},
    kafka::{apply_topology, KafkaConfig},
    topology::{CleanupPolicy, TopicSpec, Topology},
};

/// A saved segment as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentSummary {
    /// Segment id (what campaigns reference with `who: { segment: <id> }`).
    pub id: String,
    /// Display name; none if the published text does not validate.
    pub name: Option<String>,
    /// Why the published text does not validate (it then matches nobody).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// Campaigns, not stopped, whose `who` references it.
    pub used_by: Vec<String>,
}

/// A saved segment with its definition.
#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentDetail {
    /// What is listed.
    #[serde(flatten)]
    pub summary: SegmentSummary,
    /// The definition as published (the segment file format, as JSON).
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
}

fn summary(state: &ApiState, id: &str, text: &SegmentText) -> SegmentSummary {
    let (name, invalid) = match parse_segment(&text.0, id) {
        Ok(segment) => (Some(segment.name), None),
        Err(errors) => (None, Some(errors.to_string())),
    };
    let used_by = admin::segment_users(id, &state.campaigns().all()).campaigns;
    SegmentSummary { id: id.to_string(), name, invalid, used_by }
}

fn detail(state: &ApiState, id: &str, text: &SegmentText) -> SegmentDetail {
    let definition = serde_norway::from_str(&text.0).unwrap_or_default();
    SegmentDetail { summary: summary(state, id, text), definition }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no segment {id}"))
}

/// Every saved segment, by id, with the campaigns using it.
#[utoipa::path(get, path = "/api/v1/segments", tag = "segments",
    responses((status = 200, body = [SegmentSummary]), (status = 401, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_segments(State(state): State<ApiState>) -> Json<Vec<SegmentSummary>> {
    let segments = state.segments().keyed();
    Json(segments.iter().map(|(id, text)| summary(&state, id, text)).collect())
}

/// One saved segment with its definition.
#[utoipa::path(get, path = "/api/v1/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "segment id")),
    responses((status = 200, body = SegmentDetail), (status = 404, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_segment(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<SegmentDetail>, ApiError> {
    let text = state.segments().get(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(detail(&state, &id, &text)))
}

/// Creates or replaces a saved segment (YAML or JSON, the format of `herald segment apply`);
/// its `id` must be the one in the path. Every campaign using it sees the new version from
/// then on. Invalid definitions get 422 with every field at fault.
#[utoipa::path(put, path = "/api/v1/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "segment id")),
    request_body(content = String, description = "segment definition, YAML or JSON",
        content_type = "application/json"),
    responses((status = 201, body = SegmentDetail, description = "created"),
        (status = 200, body = SegmentDetail, description = "replaced"),
        (status = 413, body = super::ErrorBody), (status = 422, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_segment(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SegmentDetail>), ApiError> {
    let text = body_text(&state, body)?;
    let segment = parse_segment(&text, "request body")?;
    if segment.id != id {
        return Err(ApiError::field(
            "id",
            format!("is {}, but the path names segment {id}", segment.id),
        ));
    }
    let _turn = state.write_turn().await;
    let existed = state.segments().get(&id).is_some();
    publish(&state, &id, Some(&text)).await?;
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(detail(&state, &id, &SegmentText(text)))))
}

/// Deletes a saved segment; refused (409, the campaigns named) while a campaign that is not
/// stopped references it.
#[utoipa::path(delete, path = "/api/v1/segments/{id}", tag = "segments",
    params(("id" = String, Path, description = "segment id")),
    responses((status = 204, description = "deleted"), (status = 404, body = super::ErrorBody),
        (status = 409, body = super::ErrorBody), (status = 403, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_segment(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _turn = state.write_turn().await;
    state.segments().get(&id).ok_or_else(|| not_found(&id))?;
    let users = admin::segment_users(&id, &state.campaigns().all()).campaigns;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "segment {id} is in use by campaign(s) {}: stop them or change their who first",
            users.join(", ")
        )));
    }
    publish(&state, &id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Publishes a segment's `text` (`None`: a tombstone) and waits until the API has read it back.
async fn publish(state: &ApiState, id: &str, text: Option<&str>) -> Result<(), ApiError> {
    let topic = &state.config().topics.segments;
    let mut record = FutureRecord::<str, str>::to(topic).key(id);
    if let Some(text) = text {
        record = record.payload(text);
    }
    let delivery =
        state.producer().send(record, Duration::from_secs(30)).await.map_err(|(e, _)| {
            ApiError::Internal(format!("publishing segment {id} to {topic}: {e}"))
        })?;
    state.segments().wait_for(delivery.partition, delivery.offset, Duration::from_secs(30)).await
}

/// Creates the compacted, one-partition segments `topic` if it is missing (a deployment may
/// never have written a segment), with the broker's default replication factor. Call it from a
/// blocking thread of a tokio runtime.
pub(super) fn ensure_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), ApiError> {
    let topology = Topology {
        replication_factor: -1,
        topics: vec![TopicSpec {
            name: topic.to_string(),
            partitions: 1,
            cleanup_policy: CleanupPolicy::Compact,
            retention_ms: None,
            description: "saved segments".into(),
            configs: Default::default(),
        }],
    };
    tokio::runtime::Handle::current()
        .block_on(apply_topology(kafka, &topology))
        .map(drop)
        .map_err(|e| ApiError::Internal(format!("creating {topic}: {e}")))
}
