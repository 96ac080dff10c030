//! The live dashboard served at `/`: one page of plain HTML, JS and CSS compiled into the binary
//! (no build step), which asks for a token, keeps it in the browser's session storage and calls
//! the JSON API with it (`docs/dashboard.md`). The assets themselves carry no data and need no
//! token; `/api/v1/session` tells the page who its token belongs to and
//! `/api/v1/campaigns/{id}/sends` gives a campaign's sends per variant over time (the chart).
//! The routes themselves are in the API's route table (`api/router.rs`).

use axum::{
    extract::{Path, State},
    http::header::{CACHE_CONTROL, CONTENT_TYPE},
    response::IntoResponse,
    Extension, Json,
};

use super::{ApiState, Caller, Role};

const INDEX_HTML: &str = include_str!("index.html");
const DASHBOARD_JS: &str = include_str!("dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard.css");

/// One embedded file answered with its content type.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")], body)
}

/// Who the presented token belongs to, so the page shows admin buttons to admins only.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Session {
    /// Token name.
    pub name: String,
    /// Its role.
    #[schema(value_type = String, example = "read")]
    pub role: Role,
}

/// The caller's token name and role.
#[utoipa::path(get, path = "/api/v1/session", tag = "dashboard",
    responses((status = 200, body = Session), (status = 401, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub(in crate::api) async fn session(Extension(caller): Extension<Caller>) -> Json<Session> {
    Json(Session { name: caller.name, role: caller.role })
}

/// Sends of one variant at one time.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SendsAt {
    /// Time of the stats snapshot, epoch milliseconds.
    pub at_ms: i64,
    /// Variant id.
    pub variant_id: String,
    /// Send commands produced for it so far.
    pub sent: i64,
}

/// The campaign's sends per variant in each stats snapshot the API keeps (up to 1,000), oldest
/// first: the dashboard's chart.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/sends", tag = "dashboard",
    params(("id" = String, Path, description = "campaign id")),
    responses((status = 200, body = [SendsAt]), (status = 401, body = super::ErrorBody)),
    security(("bearer" = [])))]
pub(in crate::api) async fn sends(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Json<Vec<SendsAt>> {
    Json(
        state
            .stats()
            .history(&id)
            .into_iter()
            .flat_map(|snapshot| {
                let at_ms = snapshot.as_of_ms;
                snapshot.variants.into_iter().map(move |v| SendsAt {
                    at_ms,
                    variant_id: v.variant_id,
                    sent: v.sent,
                })
            })
            .collect(),
    )
}

/// The dashboard's page.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "the page", body = String, content_type = "text/html")))]
pub(in crate::api) async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The dashboard's script.
#[utoipa::path(get, path = "/dashboard.js", tag = "dashboard",
    responses((status = 200, description = "the script", body = String,
        content_type = "text/javascript")))]
pub(in crate::api) async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

/// The dashboard's style sheet.
#[utoipa::path(get, path = "/dashboard.css", tag = "dashboard",
    responses((status = 200, description = "the style sheet", body = String,
        content_type = "text/css")))]
pub(in crate::api) async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", DASHBOARD_CSS)
}
