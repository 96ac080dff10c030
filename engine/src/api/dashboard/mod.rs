//! The live dashboard served at `/`: one page of plain HTML, JS and CSS compiled into the binary
//! (no build step), which asks for a token, keeps it in the browser's session storage and calls
//! the JSON API with it (`docs/dashboard.md`). The assets themselves carry no data and need no
//! token; `/api/v1/session` tells the page who its token belongs to and
//! `/api/v1/campaigns/{id}/lifecycle` lists a campaign's lifecycle events (the A/B winner).

mod events;

use std::sync::Arc;

use axum::{
    extract::Path,
    http::header::{CACHE_CONTROL, CONTENT_TYPE},
    middleware,
    response::IntoResponse,
    routing::get,
    Extension, Json, Router,
};

use super::{auth, ApiState, Caller, Role};
use crate::model::CampaignLifecycleEvent;
use events::CampaignEvents;

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
async fn session(Extension(caller): Extension<Caller>) -> Json<Session> {
    Json(Session { name: caller.name, role: caller.role })
}

/// The campaign's latest lifecycle events, newest first.
async fn lifecycle(
    Extension(events): Extension<Arc<CampaignEvents>>,
    Path(id): Path<String>,
) -> Json<Vec<CampaignLifecycleEvent>> {
    Json(events.of(&id))
}

/// The dashboard's page and assets, and its routes behind a read token: the session and the
/// campaign lifecycle events (followed from the campaign events topic from now on).
pub fn routes(state: &ApiState) -> Router<ApiState> {
    let config = state.config();
    let events =
        CampaignEvents::follow(config.kafka.clone(), config.topics.campaign_events.clone());
    let session = Router::new()
        .route("/api/v1/session", get(session))
        .route("/api/v1/campaigns/{id}/lifecycle", get(lifecycle))
        .layer(Extension(events))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_read));
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route("/dashboard.css", get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }))
        .merge(session)
}
