//! Previews and test sends of a campaign: `GET /campaigns/{id}/preview?user=` renders it for a
//! user as the senders would send it; `POST /campaigns/{id}/test` sends it to test users through
//! the real senders and answers each device's outcome. The user's profile comes from the
//! running engine's stores over the query channel (`crate::query::profile`).

use std::{collections::HashSet, time::Duration};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, Query, State},
    response::{IntoResponse, Response},
    Extension, Json,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    audit::AuditDetails,
    auth::{Caller, Role},
    error::ApiError,
    handlers::body_text,
    ApiState,
};
use crate::{
    campaign::{
        admin,
        test_send::{self, DeviceResult, DeviceStatus, TestSendError},
        Campaign,
    },
    query::profile::{self, LookupError},
    render::preview::{preview, Preview},
    stage_user::Profile,
};

/// How long the API waits for the engine's answer to a profile lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Receipts are awaited this long unless the request says otherwise.
const DEFAULT_RECEIPT_TIMEOUT_MS: u64 = 15_000;

/// The longest receipt wait a request may ask for.
const MAX_RECEIPT_TIMEOUT_MS: u64 = 60_000;

/// Test users per request.
const MAX_TEST_USERS: usize = 20;

/// Whom to preview for.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PreviewParams {
    /// User id.
    pub user: String,
}

/// A test send.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSendRequest {
    /// Test users (profiles with `herald_test: true`), 1 to 20.
    pub users: Vec<String>,
    /// Variant to send; every variant when absent.
    #[serde(default)]
    pub variant: Option<String>,
    /// How long to wait for the senders' receipts, milliseconds (default 15,000, at most
    /// 60,000); devices without one by then are `pending`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// What a test send came to.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestSendResponse {
    /// Campaign sent.
    pub campaign_id: String,
    /// One entry per device and variant.
    pub results: Vec<DeviceResult>,
    /// Devices without a receipt by the deadline.
    pub pending: usize,
}

fn campaign(state: &ApiState, id: &str) -> Result<Campaign, ApiError> {
    let envelope =
        state.campaigns().get(id).ok_or_else(|| ApiError::NotFound(format!("no campaign {id}")))?;
    admin::compile(&envelope)
        .map_err(|e| ApiError::Conflict(format!("campaign {id} does not validate: {e}")))
}

/// `user`'s profile from the engine (none when it has none).
async fn lookup(state: &ApiState, user: &str) -> Result<Option<Profile>, ApiError> {
    let (kafka, topics, user) =
        (state.config().kafka.clone(), state.config().topics.clone(), user.to_string());
    tokio::task::spawn_blocking(move || profile::lookup(&kafka, &topics, &user, LOOKUP_TIMEOUT))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|error| match error {
            LookupError::Query(error) => error.into(),
            LookupError::NoAnswer { .. } => ApiError::Unavailable(error.to_string()),
            LookupError::Failed { .. } => ApiError::Internal(error.to_string()),
        })
}

/// Campaign `id` rendered for one user, per variant: the texts, and the exact APNs and FCM
/// request bodies of the user's devices with their size against the 4,096-byte limit.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/preview", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id"), PreviewParams),
    responses((status = 200, body = Preview), (status = 404, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody, description = "no engine answered")),
    security(("bearer" = [])))]
pub async fn preview_campaign(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<PreviewParams>,
) -> Result<Json<Preview>, ApiError> {
    let campaign = campaign(&state, &id)?;
    let Some(mut profile) = lookup(&state, &params.user).await? else {
        return Err(ApiError::NotFound(format!(
            "user {} has no profile in the engine",
            params.user
        )));
    };
    if caller.role < Role::Admin {
        // Device tokens are for admins only; the same length keeps the byte sizes exact.
        for device in &mut profile.devices {
            device.token = "*".repeat(device.token.len());
        }
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    Ok(Json(preview(&campaign, &params.user, &profile.properties, &profile.devices, now_ms)))
}

/// Sends campaign `id` to test users through the real senders, marked as a test (a fresh test
/// message id per device: not in stats, caps or limits), and answers each device's receipt.
/// Users that are not test users are refused (422, naming them).
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/test", tag = "campaigns",
    params(("id" = String, Path, description = "campaign id")),
    request_body = TestSendRequest,
    responses((status = 200, body = TestSendResponse), (status = 404, body = super::ErrorBody),
        (status = 422, body = super::ErrorBody), (status = 403, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody, description = "no engine answered")),
    security(("bearer" = [])))]
pub async fn test_send_campaign(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: TestSendRequest = serde_json::from_str(&body_text(&state, body)?)
        .map_err(|e| ApiError::field("(body)", e.to_string()))?;
    if request.users.is_empty() || request.users.len() > MAX_TEST_USERS {
        return Err(ApiError::field("users", format!("1 to {MAX_TEST_USERS} test users")));
    }
    let timeout_ms = request.timeout_ms.unwrap_or(DEFAULT_RECEIPT_TIMEOUT_MS);
    if !(1..=MAX_RECEIPT_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(ApiError::field("timeout_ms", format!("1 to {MAX_RECEIPT_TIMEOUT_MS}")));
    }
    let campaign = campaign(&state, &id)?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (mut commands, mut refused, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for (i, user) in request.users.iter().enumerate() {
        // A user named twice gets one test send.
        if !seen.insert(user.as_str()) {
            continue;
        }
        let profile = lookup(&state, user).await?;
        let variant = request.variant.as_deref();
        match test_send::commands(&campaign, variant, user, profile.as_ref(), now_ms) {
            Ok((sent, not_sent)) => {
                commands.extend(sent);
                refused.extend(not_sent);
            }
            Err(error @ TestSendError::UnknownVariant { .. }) => {
                return Err(ApiError::field("variant", error.to_string()))
            }
            Err(error) => problems.push(super::FieldProblem {
                field: format!("users[{i}]"),
                reason: error.to_string(),
            }),
        }
    }
    if !problems.is_empty() {
        let message = problems.iter().map(|p| p.reason.as_str()).collect::<Vec<_>>().join("; ");
        return Err(ApiError::Invalid { message, problems });
    }
    let (kafka, topics) = (state.config().kafka.clone(), state.config().topics.clone());
    let timeout = Duration::from_millis(timeout_ms);
    // Should sending fail midway, the audit record still names every message that may have left.
    let attempted: std::collections::BTreeMap<String, String> = commands
        .iter()
        .map(|c| {
            let what = format!("{} {} {} unknown", c.user_id, c.variant_id, c.device_id);
            (c.message_id.clone(), what)
        })
        .collect();
    let sent = tokio::task::spawn_blocking(move || {
        test_send::send_and_wait(&kafka, &topics, &commands, timeout)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|sent| sent.map_err(|e| e.to_string()));
    let mut results = match sent {
        Ok(results) => results,
        Err(error) => {
            let mut response = ApiError::Internal(error).into_response();
            response.extensions_mut().insert(AuditDetails(attempted));
            return Ok(response);
        }
    };
    results.extend(refused);
    let pending = results.iter().filter(|r| r.status == DeviceStatus::Pending).count();
    // Every message sent, on the audit record of the request.
    let details = test_send::audit_details(&results);
    let mut response = Json(TestSendResponse { campaign_id: id, results, pending }).into_response();
    response.extensions_mut().insert(AuditDetails(details));
    Ok(response)
}
