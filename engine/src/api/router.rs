//! The API's routes in one table (method, path, who may call it, handler), from which the router
//! is built with each role's middleware and the body limit; the OpenAPI document generated from
//! the handlers lists the same routes (a test compares them).

use axum::{
    extract::{DefaultBodyLimit, Path, Request},
    handler::Handler,
    http::{
        header::{CONTENT_LENGTH, CONTENT_TYPE},
        Method,
    },
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{on, MethodFilter, MethodRouter},
    Json, Router,
};
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};

use super::{
    auth, dashboard, estimate, handlers, live, metrics, preview, segments, ApiError, ApiState,
};
use crate::campaign::json_schema::SchemaFile;

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
    info(title = "Herald admin API", description = "Campaigns, segments, stats, events, dead \
        letters, app settings, test sends and previews, and the dashboard. Bearer tokens: read \
        or admin."),
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
        preview::preview_campaign,
        preview::test_send_campaign,
        handlers::dead_letters,
        handlers::get_settings,
        handlers::put_settings,
        segments::list_segments,
        segments::get_segment,
        segments::put_segment,
        segments::delete_segment,
        estimate::estimate_campaign,
        estimate::estimate_segment,
        dashboard::session,
        dashboard::sends,
        live::live,
        dashboard::index,
        dashboard::script,
        dashboard::style,
        openapi_document,
        schema,
    ),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This document: every route of the API.
#[utoipa::path(get, path = "/openapi.json", tag = "documents",
    responses((status = 200, description = "the OpenAPI document", body = Object)))]
async fn openapi_document() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// The JSON Schemas of campaign and saved segment files (`schemas/campaign.schema.json`,
/// `schemas/segment.schema.json`), for editors (the YAML language server) to complete and check
/// files: `campaign.json` and `segment.json`, also under their file names, which the segment
/// schema's `$ref`s to the campaign schema name (an editor resolves them against the URL it
/// loaded the segment schema from).
#[utoipa::path(get, path = "/schemas/{file}", tag = "documents",
    params(("file" = String, Path, description = "campaign.json or segment.json (or \
        campaign.schema.json, segment.schema.json)")),
    responses((status = 200, description = "JSON Schema (draft 2020-12)", body = Object,
        content_type = "application/schema+json"), (status = 404, body = super::ErrorBody)))]
async fn schema(Path(file): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let named = |schema: &SchemaFile| {
        file == schema.file_name() || file.strip_suffix(".json") == Some(schema.name())
    };
    let schema = SchemaFile::ALL
        .iter()
        .find(|schema| named(schema))
        .ok_or_else(|| ApiError::NotFound(format!("no schema {file}")))?;
    Ok(([(CONTENT_TYPE, "application/schema+json")], schema.text()))
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone: documents and the dashboard's assets, which carry no data.
    Public,
    /// A read or admin token.
    Read,
    /// An admin token; every request is audited.
    Admin,
}

/// One route of the API: its handler is routed for its method when the router is built.
struct Route {
    access: Access,
    method: Method,
    path: &'static str,
    handler: Box<dyn FnOnce(MethodFilter) -> MethodRouter<ApiState>>,
}

fn route<H: Handler<T, ApiState>, T: 'static>(
    access: Access,
    method: Method,
    path: &'static str,
    handler: H,
) -> Route {
    Route { access, method, path, handler: Box::new(move |filter| on(filter, handler)) }
}

/// Every route, in the order of `docs/api.md`.
fn routes() -> Vec<Route> {
    use Access::{Admin, Public, Read};
    vec![
        route(Read, Method::GET, "/api/v1/campaigns", handlers::list_campaigns),
        route(Admin, Method::POST, "/api/v1/campaigns", handlers::create_campaign),
        route(Admin, Method::POST, "/api/v1/campaigns/estimate", estimate::estimate_campaign),
        route(Read, Method::GET, "/api/v1/campaigns/{id}", handlers::get_campaign),
        route(Admin, Method::PUT, "/api/v1/campaigns/{id}", handlers::update_campaign),
        route(Admin, Method::POST, "/api/v1/campaigns/{id}/pause", handlers::pause_campaign),
        route(Admin, Method::POST, "/api/v1/campaigns/{id}/resume", handlers::resume_campaign),
        route(Admin, Method::POST, "/api/v1/campaigns/{id}/stop", handlers::stop_campaign),
        route(Read, Method::GET, "/api/v1/campaigns/{id}/stats", handlers::campaign_stats),
        route(Read, Method::GET, "/api/v1/campaigns/{id}/events", handlers::campaign_events),
        route(Read, Method::GET, "/api/v1/campaigns/{id}/preview", preview::preview_campaign),
        route(Admin, Method::POST, "/api/v1/campaigns/{id}/test", preview::test_send_campaign),
        route(Read, Method::GET, "/api/v1/campaigns/{id}/sends", dashboard::sends),
        route(Read, Method::GET, "/api/v1/segments", segments::list_segments),
        route(Read, Method::GET, "/api/v1/segments/{id}", segments::get_segment),
        route(Admin, Method::PUT, "/api/v1/segments/{id}", segments::put_segment),
        route(Admin, Method::DELETE, "/api/v1/segments/{id}", segments::delete_segment),
        route(Admin, Method::GET, "/api/v1/segments/{id}/estimate", estimate::estimate_segment),
        route(Read, Method::GET, "/api/v1/dead-letters", handlers::dead_letters),
        route(Read, Method::GET, "/api/v1/settings", handlers::get_settings),
        route(Admin, Method::PUT, "/api/v1/settings", handlers::put_settings),
        route(Read, Method::GET, "/api/v1/session", dashboard::session),
        route(Read, Method::GET, "/api/v1/live", live::live),
        route(Public, Method::GET, "/", dashboard::index),
        route(Public, Method::GET, "/dashboard.js", dashboard::script),
        route(Public, Method::GET, "/dashboard.css", dashboard::style),
        route(Public, Method::GET, "/openapi.json", openapi_document),
        route(Public, Method::GET, "/schemas/{file}", schema),
    ]
}

/// Every route of the API over `state`.
pub fn router(state: ApiState) -> Router {
    let (mut public, mut read, mut admin) = (Router::new(), Router::new(), Router::new());
    for Route { access, method, path, handler } in routes() {
        let filter = MethodFilter::try_from(method).expect("a method axum routes");
        let handler = handler(filter);
        match access {
            Access::Public => public = public.route(path, handler),
            Access::Read => read = read.route(path, handler),
            Access::Admin => admin = admin.route(path, handler),
        }
    }
    let read = read.route_layer(middleware::from_fn_with_state(state.clone(), auth::require_read));
    let admin =
        admin.route_layer(middleware::from_fn_with_state(state.clone(), auth::require_admin));
    public
        .merge(read)
        .merge(admin)
        .layer(DefaultBodyLimit::max(state.config().body_limit))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::record))
        .with_state(state)
}

/// Answers every error as JSON (`{"error": ...}`), also those the handlers do not make: an
/// unknown route (404), a wrong method (405, its `Allow` kept), a path or query parameter that
/// does not parse (400). Their text, if any, becomes the error.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let error = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let body = super::ErrorBody { error, field: None, errors: Vec::new() };
    let mut answer = (status, Json(body)).into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer.extensions_mut().extend(parts.extensions);
    answer
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_openapi_document_lists_every_route_and_no_other() {
        let routed: BTreeSet<(String, String)> = routes()
            .iter()
            .map(|r| (r.path.to_string(), r.method.as_str().to_lowercase()))
            .collect();
        let document = serde_json::to_value(openapi()).unwrap();
        let methods = ["get", "put", "post", "delete", "patch", "head", "options", "trace"];
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                let item = item.as_object().unwrap();
                item.keys()
                    .filter(|key| methods.contains(&key.as_str()))
                    .map(|method| (path.clone(), method.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let missing: Vec<_> = routed.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(missing.is_empty(), "routed, not in /openapi.json: {missing:?}");
        assert!(extra.is_empty(), "in /openapi.json, not routed: {extra:?}");
    }

    #[test]
    fn every_admin_route_writes_or_scans_every_user_and_every_write_needs_an_admin_token() {
        // Estimates change nothing, but scan every user of the engine: admin only too.
        let estimates = [
            (Method::POST, "/api/v1/campaigns/estimate"),
            (Method::GET, "/api/v1/segments/{id}/estimate"),
        ];
        for route in routes() {
            let estimate = estimates.contains(&(route.method.clone(), route.path));
            let writes = route.method != Method::GET && !estimate;
            let admin = writes || estimate;
            assert_eq!(route.access == Access::Admin, admin, "{} {}", route.method, route.path);
        }
    }
}
