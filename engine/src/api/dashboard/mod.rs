//! The live dashboard served at `/`: one page of plain HTML, JS and CSS compiled into the binary
//! (no build step), which asks for a token, keeps it in the browser's session storage and calls
//! the JSON API with it (`docs/dashboard.md`). The assets themselves carry no data and need no
//! token; `/api/v1/session` tells the page who its token belongs to,
//! `/api/v1/campaigns/{id}/lifecycle` lists a campaign's lifecycle events (the A/B winner) and
//! `/api/v1/campaigns/{id}/sends` its sends per variant over time (the chart).

mod history;

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
use crate::model::{CampaignLifecycleEvent, CampaignStats};
use history::History;

/// Lifecycle events kept per campaign.
const EVENTS_KEPT: usize = 200;
/// Stats snapshots kept per campaign (the engine writes one about every second while counts
/// change: some minutes of a busy campaign).
const SNAPSHOTS_KEPT: usize = 1_000;

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
    Extension(events): Extension<Arc<History<CampaignLifecycleEvent>>>,
    Path(id): Path<String>,
) -> Json<Vec<CampaignLifecycleEvent>> {
    let mut events = events.of(&id);
    events.reverse();
    Json(events)
}

/// Sends of one variant at one time.
#[derive(Debug, serde::Serialize)]
pub struct SendsAt {
    /// Time of the stats snapshot, epoch milliseconds.
    pub at_ms: i64,
    /// Variant id.
    pub variant_id: String,
    /// Send commands produced for it so far.
    pub sent: i64,
}

/// The campaign's sends per variant in each kept stats snapshot, oldest first.
async fn sends(
    Extension(stats): Extension<Arc<History<CampaignStats>>>,
    Path(id): Path<String>,
) -> Json<Vec<SendsAt>> {
    Json(
        stats
            .of(&id)
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

/// The dashboard's page and assets, and its routes behind a read token: the session, campaign
/// lifecycle events and sends over time (both topics followed in the background from now on).
pub fn routes(state: &ApiState) -> Router<ApiState> {
    let config = state.config();
    let topics = &config.topics;
    let events: Arc<History<CampaignLifecycleEvent>> =
        History::follow(config.kafka.clone(), topics.campaign_events.clone(), EVENTS_KEPT);
    let stats: Arc<History<CampaignStats>> =
        History::follow(config.kafka.clone(), topics.stats.clone(), SNAPSHOTS_KEPT);
    let session = Router::new()
        .route("/api/v1/session", get(session))
        .route("/api/v1/campaigns/{id}/lifecycle", get(lifecycle))
        .route("/api/v1/campaigns/{id}/sends", get(sends))
        .layer(Extension(events))
        .layer(Extension(stats))
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
