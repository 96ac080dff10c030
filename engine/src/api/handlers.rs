//! The API's handlers: each reads the followed topics or calls the same library functions as
//! `herald campaign`.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    audit::AuditDetails,
    auth::Caller,
    error::ApiError,
    status::{status, Status},
    ApiState,
};
use crate::{
    campaign::{admin, Campaign},
    model::{CampaignCommand, CampaignEnvelope, CampaignStats, DeadLetter, Record, SchemaRegistry},
    settings::Settings,
};

/// A campaign as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignSummary {
    /// Campaign id.
    pub id: String,
    /// App.
    pub app: String,
    /// Display name.
    pub name: String,
    /// Where it stands.
    pub status: Status,
    /// Revision of its latest envelope (epoch milliseconds of the change).
    pub revision: i64,
    /// When it was last changed, epoch milliseconds.
    pub updated_at_ms: i64,
    /// Who last changed it.
    pub updated_by: Option<String>,
}

/// A campaign with its definition.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignDetail {
    /// What is listed.
    #[serde(flatten)]
    pub summary: CampaignSummary,
    /// The definition as published (the documented campaign format, as JSON).
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
}

fn summary(state: &ApiState, envelope: &CampaignEnvelope) -> CampaignSummary {
    let events = state.events().history(&envelope.campaign_id);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let compiled = admin::compile(envelope).ok();
    let name = compiled.as_ref().map_or_else(|| envelope.campaign_id.clone(), |c| c.name.clone());
    CampaignSummary {
        id: envelope.campaign_id.clone(),
        app: envelope.app_id.clone(),
        name,
        status: status(envelope, compiled.as_ref(), &events, now_ms),
        revision: envelope.revision,
        updated_at_ms: envelope.issued_at_ms,
        updated_by: envelope.issued_by.clone(),
    }
}

fn detail(state: &ApiState, envelope: &CampaignEnvelope) -> CampaignDetail {
    let definition = envelope
        .definition
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    CampaignDetail { summary: summary(state, envelope), definition }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no campaign {id}"))
}

/// Every campaign with its status, by id.
#[utoipa::path(get, path = "/api/v1/campaigns", tag = "campaigns",
    responses((status = 200, body = [CampaignSummary]), (status = 401, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_campaigns(State(state): State<ApiState>) -> Json<Vec<CampaignSummary>> {
    Json(state.campaigns().all().iter().map(|e| summary(&state, e)).collect())
}

/// One campaign with its definition.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = CampaignDetail), (status = 404, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_campaign(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<CampaignDetail>, ApiError> {
    let envelope = state.campaigns().get(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(detail(&state, &envelope)))
}

/// Counters of one variant.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct VariantCounts {
    /// Variant id.
    pub variant_id: String,
    /// Users given this variant (qualified, past the checks before a variant is chosen).
    pub qualified: i64,
    /// Send commands produced.
    pub sent: i64,
    /// Accepted by the provider.
    pub delivered: i64,
    /// Refused by the provider.
    pub failed: i64,
    /// Viewed.
    pub impressions: i64,
    /// Clicked.
    pub clicks: i64,
    /// Converted.
    pub conversions: i64,
}

/// A campaign's latest stats snapshot (all zero before the engine's first).
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    /// Campaign id.
    pub campaign_id: String,
    /// When the snapshot was taken, epoch milliseconds; none before the first.
    pub as_of_ms: Option<i64>,
    /// Users who qualified: sent to or skipped.
    pub qualified: i64,
    /// Counters per variant.
    pub variants: Vec<VariantCounts>,
    /// Users not sent to, by reason.
    pub skipped: BTreeMap<String, i64>,
    /// Sends refused or lost, by reason.
    pub failed: BTreeMap<String, i64>,
}

impl StatsView {
    fn new(campaign_id: String, stats: Option<CampaignStats>) -> Self {
        let Some(stats) = stats else {
            return Self {
                campaign_id,
                as_of_ms: None,
                qualified: 0,
                variants: Vec::new(),
                skipped: BTreeMap::new(),
                failed: BTreeMap::new(),
            };
        };
        let qualified = stats.variants.iter().map(|v| v.sent).sum::<i64>()
            + stats.skipped.values().sum::<i64>();
        let variants = stats
            .variants
            .into_iter()
            .map(|v| VariantCounts {
                variant_id: v.variant_id,
                qualified: v.qualified,
                sent: v.sent,
                delivered: v.delivered,
                failed: v.failed,
                impressions: v.impressions,
                clicks: v.clicks,
                conversions: v.conversions,
            })
            .collect();
        Self {
            campaign_id,
            as_of_ms: Some(stats.as_of_ms),
            qualified,
            variants,
            skipped: stats.skipped,
            failed: stats.failed,
        }
    }
}

/// A campaign's stats per variant, from `herald.stats`.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/stats", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = StatsView), (status = 404, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn campaign_stats(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<StatsView>, ApiError> {
    let stats = state.stats().get(&id);
    if stats.is_none() && state.campaigns().get(&id).is_none() {
        return Err(not_found(&id));
    }
    Ok(Json(StatsView::new(id, stats)))
}

/// The request body as text, or why not (413 over the body limit).
pub(super) fn body_text(
    state: &ApiState,
    body: Result<Bytes, BytesRejection>,
) -> Result<String, ApiError> {
    let bytes = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(state.config().body_limit),
        _ => ApiError::field("(body)", rejection.body_text()),
    })?;
    String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::field("(body)", "not UTF-8 text"))
}

/// Publishes `envelope` and waits until the API has read it back, so the next request sees it.
async fn publish(state: &ApiState, envelope: &CampaignEnvelope) -> Result<(), ApiError> {
    let topic = &state.config().topics.campaigns;
    let (partition, offset) = admin::publish(&state.inner.producer, topic, envelope)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    state.campaigns().wait_for(partition, offset, Duration::from_secs(30)).await
}

/// Validates a definition sent by `caller` into the campaign and its `Define` envelope.
fn define(text: &str, caller: &Caller) -> Result<(Campaign, CampaignEnvelope), ApiError> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    admin::define(text, "request body", Some(caller.name.clone()), now_ms).map_err(ApiError::from)
}

/// Creates a campaign from its definition (YAML or JSON, the format of `herald campaign apply`);
/// invalid definitions get 422 with every field at fault.
#[utoipa::path(post, path = "/api/v1/campaigns", tag = "campaigns",
    request_body(content = String, description = "campaign definition, YAML or JSON",
        content_type = "application/json"),
    responses((status = 201, body = CampaignDetail), (status = 409, body = super::ErrorBody),
        (status = 413, body = super::ErrorBody), (status = 422, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_campaign(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (_, envelope) = define(&body_text(&state, body)?, &caller)?;
    let id = &envelope.campaign_id;
    let created = async {
        let _turn = state.write_turn().await;
        if state.campaigns().get(id).is_some() {
            return Err(ApiError::Conflict(format!(
                "campaign {id} exists; update it with PUT /api/v1/campaigns/{id}"
            )));
        }
        publish(&state, &envelope).await?;
        Ok((StatusCode::CREATED, Json(detail(&state, &envelope))))
    }
    .await;
    // The path names no campaign: the audit record says which one, created or not.
    let mut response = created.into_response();
    let details = BTreeMap::from([("campaign_id".to_string(), id.clone())]);
    response.extensions_mut().insert(AuditDetails(details));
    Ok(response)
}

/// Replaces a campaign's definition (a stopped campaign starts again); the definition's `id`
/// must be the one in the path.
#[utoipa::path(put, path = "/api/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id")),
    request_body(content = String, description = "campaign definition, YAML or JSON",
        content_type = "application/json"),
    responses((status = 200, body = CampaignDetail), (status = 404, body = super::ErrorBody),
        (status = 413, body = super::ErrorBody), (status = 422, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_campaign(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CampaignDetail>, ApiError> {
    let (next, envelope) = define(&body_text(&state, body)?, &caller)?;
    if envelope.campaign_id != id {
        return Err(ApiError::field(
            "id",
            format!("is {}, but the path names campaign {id}", envelope.campaign_id),
        ));
    }
    let _turn = state.write_turn().await;
    let current = state.campaigns().get(&id).ok_or_else(|| not_found(&id))?;
    // A live campaign keeps its shards, as `herald campaign apply` has it.
    if let Some(refused) = admin::shards_change(&current, &next) {
        return Err(ApiError::field(refused.path, refused.reason));
    }
    publish(&state, &envelope).await?;
    Ok(Json(detail(&state, &envelope)))
}

/// Issues an operator command on campaign `id`.
async fn operate(
    state: ApiState,
    caller: Caller,
    id: String,
    command: CampaignCommand,
) -> Result<Json<CampaignSummary>, ApiError> {
    let _turn = state.write_turn().await;
    let current = state.campaigns().get(&id).ok_or_else(|| not_found(&id))?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let envelope = admin::command(current, command, Some(caller.name), now_ms)
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    publish(&state, &envelope).await?;
    Ok(Json(summary(&state, &envelope)))
}

/// Holds a campaign: no new triggers; due timers, pending users and throttled sends wait.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/pause", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = CampaignSummary), (status = 404, body = super::ErrorBody),
        (status = 409, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn pause_campaign(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<CampaignSummary>, ApiError> {
    operate(state, caller, id, CampaignCommand::Pause).await
}

/// Continues a paused campaign: what waited is released.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/resume", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = CampaignSummary), (status = 404, body = super::ErrorBody),
        (status = 409, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume_campaign(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<CampaignSummary>, ApiError> {
    operate(state, caller, id, CampaignCommand::Resume).await
}

/// Ends a campaign for good: what waited is dropped (counted `stopped`).
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/stop", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = CampaignSummary), (status = 404, body = super::ErrorBody),
        (status = 409, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn stop_campaign(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<CampaignSummary>, ApiError> {
    operate(state, caller, id, CampaignCommand::Stop).await
}

/// One lifecycle event of a campaign.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// What happened, e.g. `WINNER_DECLARED`.
    pub kind: String,
    /// Run concerned, for scheduled campaigns.
    pub run_id: Option<String>,
    /// When, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Kind-specific facts (e.g. the winner and its p-value).
    pub details: BTreeMap<String, String>,
}

/// A campaign's latest lifecycle events (up to 1,000), oldest first, from
/// `herald.campaign-events`.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/events", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = [EventView]), (status = 404, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn campaign_events(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let events = state.events().history(&id);
    if events.is_empty() && state.campaigns().get(&id).is_none() {
        return Err(not_found(&id));
    }
    Ok(Json(
        events
            .into_iter()
            .map(|e| EventView {
                kind: serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                run_id: e.run_id,
                timestamp_ms: e.timestamp_ms,
                details: e.details,
            })
            .collect(),
    ))
}

/// How many dead letters to show.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DeadLetterQuery {
    /// The latest this many (default 50, at most 1,000).
    pub limit: Option<usize>,
}

/// A rejected input, without its bytes.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// Topic the input came from.
    pub source_topic: String,
    /// Its partition.
    pub source_partition: i32,
    /// Its offset.
    pub source_offset: i64,
    /// Its key as text (lossy), if any.
    pub key: Option<String>,
    /// Size of its value, bytes.
    pub value_bytes: usize,
    /// Why it was rejected.
    pub reason: String,
    /// Which processor rejected it.
    pub stage: String,
    /// When, epoch milliseconds.
    pub timestamp_ms: i64,
}

/// The latest dead letters with their reasons, newest first.
#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "operations",
    params(DeadLetterQuery),
    responses((status = 200, body = [DeadLetterView])),
    security(("bearer" = [])))]
pub async fn dead_letters(
    State(state): State<ApiState>,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Json<Vec<DeadLetterView>>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 1_000);
    let kafka = state.config().kafka.clone();
    let topic = state.config().topics.dead_letter.clone();
    let letters =
        tokio::task::spawn_blocking(move || latest_records::<DeadLetter>(&kafka, &topic, limit))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
    let mut views: Vec<DeadLetterView> = letters
        .into_iter()
        .map(|d| DeadLetterView {
            source_topic: d.source_topic,
            source_partition: d.source_partition,
            source_offset: d.source_offset,
            key: d.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
            value_bytes: d.value.map_or(0, |v| v.len()),
            reason: d.reason,
            stage: d.stage,
            timestamp_ms: d.timestamp_ms,
        })
        .collect();
    views.sort_by_key(|d| std::cmp::Reverse(d.timestamp_ms));
    views.truncate(limit);
    Ok(Json(views))
}

/// The app settings file the engine reads, as JSON.
#[utoipa::path(get, path = "/api/v1/settings", tag = "operations",
    responses((status = 200, body = Object), (status = 404, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_settings(
    State(state): State<ApiState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let path = settings_path(&state)?;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ApiError::Internal(format!("reading {}: {e}", path.display()))),
    };
    let document: serde_json::Value = serde_norway::from_str(&text)
        .map_err(|e| ApiError::Internal(format!("{}: {e}", path.display())))?;
    Ok(Json(if document.is_null() { serde_json::json!({}) } else { document }))
}

/// Replaces the app settings file (caps, minimum gap, timezone, throttle, ingest limits),
/// validated as the engine validates it; engines read it when they start.
#[utoipa::path(put, path = "/api/v1/settings", tag = "operations",
    request_body(content = Object, description = "the app settings document (docs/operations.md)"),
    responses((status = 200, body = Object), (status = 422, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_settings(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let path = settings_path(&state)?;
    let text = body_text(&state, body)?;
    Settings::parse(&text, "request body")?;
    let document: serde_json::Value =
        serde_norway::from_str(&text).map_err(|e| ApiError::field("(document)", e.to_string()))?;
    let yaml = serde_norway::to_string(&document).map_err(|e| ApiError::Internal(e.to_string()))?;
    // One write at a time: two at once would share the temporary file.
    let _turn = state.write_turn().await;
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, yaml)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| ApiError::Internal(format!("writing {}: {e}", path.display())))?;
    Ok(Json(document))
}

fn settings_path(state: &ApiState) -> Result<&std::path::Path, ApiError> {
    state.config().settings_path.as_deref().ok_or_else(|| {
        ApiError::NotFound("no settings file: start herald api with --settings".into())
    })
}

/// The latest `limit` records of every partition of `topic` that decode as `R`.
fn latest_records<R: Record>(
    kafka: &crate::kafka::KafkaConfig,
    topic: &str,
    limit: usize,
) -> Result<Vec<R>, ApiError> {
    use rdkafka::{
        consumer::{BaseConsumer, Consumer},
        Message, Offset, TopicPartitionList,
    };
    let failed =
        |e: rdkafka::error::KafkaError| ApiError::Internal(format!("reading {topic}: {e}"));
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", "herald-api")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(failed)?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(failed)?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) =
            consumer.fetch_watermarks(topic, partition.id(), timeout).map_err(failed)?;
        if high > low {
            let from = (high - limit as i64).max(low);
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Offset(from))
                .map_err(failed)?;
            ends.insert(partition.id(), high);
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment).map_err(failed)?;
    let deadline = std::time::Instant::now() + timeout;
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message.map_err(failed)?;
        if let Some(record) =
            message.payload().and_then(|v| SchemaRegistry::builtin().decode(v).ok())
        {
            records.push(record);
        }
        if ends.get(&message.partition()).is_some_and(|end| message.offset() + 1 >= *end) {
            ends.remove(&message.partition());
        }
    }
    Ok(records)
}
