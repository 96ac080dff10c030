//! The audit trail: every admin request (allowed or refused) recorded on the audit topic with
//! who made it, what, when and the result.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    extract::{MatchedPath, RawPathParams, Request},
    middleware::Next,
    response::{IntoResponse, Response},
    RequestExt,
};
use rdkafka::producer::FutureRecord;
use serde::{Deserialize, Serialize};

use super::{auth::Caller, error::ApiError, ApiState};
use crate::model::{check_timestamp, Checked, InvalidField, Record, SchemaRegistry};

/// One admin action (`herald.audit`, keyed by actor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When it was answered, epoch milliseconds.
    pub timestamp_ms: i64,
    /// Name of the token that made it.
    pub actor: String,
    /// Role of that token (`read` or `admin`).
    pub role: String,
    /// Method and route, e.g. `POST /api/v1/campaigns/{id}/pause`.
    pub action: String,
    /// Campaign concerned, if any.
    #[serde(default)]
    pub target: Option<String>,
    /// HTTP status answered.
    pub status: i32,
    /// Why it failed, if it did.
    #[serde(default)]
    pub error: Option<String>,
    /// What the action did, when the route says more than its status: a test send's message
    /// ids, each with its user, variant, device and outcome (schema version 2).
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

impl Checked for AuditRecord {
    fn check(&self) -> Result<(), InvalidField> {
        check_timestamp("timestamp_ms", self.timestamp_ms)
    }
}

impl Record for AuditRecord {
    const FULL_NAME: &'static str = "io.herald.AuditRecord";
}

/// The message of an error answer, kept in the response's extensions for the audit.
#[derive(Debug, Clone)]
pub(super) struct ErrorNote(pub String);

/// What a handler reports for the audit record's `details`, in the response's extensions.
#[derive(Debug, Clone)]
pub(super) struct AuditDetails(pub BTreeMap<String, String>);

/// Runs an admin request of `caller` if `allowed` (else answers 403) and records it with its
/// result.
pub(super) async fn audited(
    state: &ApiState,
    caller: &Caller,
    allowed: bool,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let action = format!("{} {route}", request.method());
    let target =
        request.extract_parts::<RawPathParams>().await.ok().and_then(|params| {
            params.iter().find(|(name, _)| *name == "id").map(|(_, v)| v.into())
        });
    let response =
        if allowed { next.run(request).await } else { ApiError::Forbidden.into_response() };
    let record = AuditRecord {
        timestamp_ms: chrono::Utc::now().timestamp_millis(),
        actor: caller.name.clone(),
        role: format!("{:?}", caller.role).to_lowercase(),
        action,
        target,
        status: i32::from(response.status().as_u16()),
        error: response.extensions().get::<ErrorNote>().map(|note| note.0.clone()),
        details: response
            .extensions()
            .get::<AuditDetails>()
            .map(|d| d.0.clone())
            .unwrap_or_default(),
    };
    write(state, &record).await;
    response
}

/// Writes `record` to the audit topic, waiting for the broker's ack; a failure is logged (the
/// action itself already happened).
pub(super) async fn write(state: &ApiState, record: &AuditRecord) {
    let topic = &state.config().audit_topic;
    let bytes = match SchemaRegistry::builtin().encode(record) {
        Ok(bytes) => bytes,
        Err(error) => return tracing::error!(%error, "encoding an audit record"),
    };
    let sent = state
        .inner
        .producer
        .send(FutureRecord::to(topic).key(&record.actor).payload(&bytes), Duration::from_secs(30))
        .await;
    if let Err((error, _)) = sent {
        tracing::error!(%topic, %error, action = %record.action, "writing an audit record");
    }
}
