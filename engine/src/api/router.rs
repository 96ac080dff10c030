//! The API's routes: read routes and admin routes behind their roles, the body limit, and the
//! OpenAPI document generated from the handlers.

use axum::{
    extract::DefaultBodyLimit,
    middleware,
    routing::{get, post, put},
    Json, Router,
};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use super::{auth, handlers, segments, ApiState};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Herald admin API", description = "Campaigns, stats, events, dead letters, \
        app settings, test sends and previews. Bearer tokens: read or admin."),
    paths(
        handlers::list_campaigns,
        handlers::get_campaign,
        handlers::campaign_stats,
        handlers::create_campaign,
        handlers::update_campaign,
        handlers::pause_campaign,
        handlers::resume_campaign,
        handlers::stop_campaign,
        handlers::campaign_events,
        handlers::dead_letters,
        handlers::get_settings,
        handlers::put_settings,
        segments::list_segments,
        segments::get_segment,
        segments::put_segment,
        segments::delete_segment,
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Every route of the API over `state`.
pub fn router(state: ApiState) -> Router {
    let read = Router::new()
        .route("/campaigns", get(handlers::list_campaigns))
        .route("/campaigns/{id}", get(handlers::get_campaign))
        .route("/campaigns/{id}/stats", get(handlers::campaign_stats))
        .route("/campaigns/{id}/events", get(handlers::campaign_events))
        .route("/dead-letters", get(handlers::dead_letters))
        .route("/settings", get(handlers::get_settings))
        .route("/segments", get(segments::list_segments))
        .route("/segments/{id}", get(segments::get_segment))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_read));
    let admin = Router::new()
        .route("/campaigns", post(handlers::create_campaign))
        .route("/campaigns/{id}", put(handlers::update_campaign))
        .route("/campaigns/{id}/pause", post(handlers::pause_campaign))
        .route("/campaigns/{id}/resume", post(handlers::resume_campaign))
        .route("/campaigns/{id}/stop", post(handlers::stop_campaign))
        .route("/settings", put(handlers::put_settings))
        .route("/segments/{id}", put(segments::put_segment).delete(segments::delete_segment))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_admin));
    Router::new()
        .nest("/api/v1", read.merge(admin))
        .merge(super::dashboard::routes(&state))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .layer(DefaultBodyLimit::max(state.config().body_limit))
        .with_state(state)
}
