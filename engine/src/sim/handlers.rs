//! The simulator's endpoints: APNs `POST /3/device/<token>`, FCM
//! `POST /v1/projects/<project>/messages:send`, OAuth `POST /token`, `GET /sim/stats` and
//! `GET /sim/devices/<token>` (what a device received); `GET /sim/token-endpoint/down` and
//! `…/up` take the OAuth token endpoint down (503) and back up, for outage tests;
//! `GET /sim/apns/expire-tokens` refuses the APNs provider tokens accepted so far as
//! `ExpiredProviderToken` from then on (a token storm);
//! `GET /sim/faults/set/<name>=<value>` and `GET /sim/faults/reset` (back to those it started
//! with) change the injected faults while it runs (a chaos schedule).

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{body::Incoming, HeaderMap, Method, Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{credentials::FCM_CLIENT_EMAIL, faults::Fault, Sim};
use crate::payload::MAX_PAYLOAD_BYTES;

/// APNs refuses provider tokens older than an hour.
const PROVIDER_TOKEN_MAX_AGE_SECS: i64 = 3_600;
/// Request bodies read at most (larger ones are answered "too large").
const MAX_BODY: usize = 64 * 1024;

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: Value, headers: &[(&str, String)]) -> Reply {
    let mut response =
        Response::builder().status(status).header("content-type", "application/json");
    for (name, value) in headers {
        response = response.header(*name, value.as_str());
    }
    response.body(Full::new(Bytes::from(body.to_string()))).expect("valid response")
}

/// One client connection: whether it presented a client certificate, its request count, and
/// the signals that end it.
pub(super) struct Connection {
    /// The client authenticated with a certificate the simulator's authority issued.
    client_certificate: bool,
    requests: std::sync::atomic::AtomicU64,
    /// Send GOAWAY (finish the streams in flight, accept no new ones).
    pub(super) goaway: tokio::sync::Notify,
    /// Close the socket at once.
    pub(super) drop: tokio::sync::Notify,
}

impl Connection {
    pub(super) fn new(client_certificate: bool) -> Self {
        Self {
            client_certificate,
            requests: Default::default(),
            goaway: Default::default(),
            drop: Default::default(),
        }
    }
}

/// Injects the connection faults: GOAWAY every configured number of requests on a connection,
/// and dropped connections (the request never gets an answer and is not delivered).
async fn connection_faults(sim: &Sim, connection: &Connection) {
    let faults = sim.faults();
    let served = connection.requests.fetch_add(1, Ordering::Relaxed) + 1;
    if faults.goaway_after > 0 && served % faults.goaway_after == 0 {
        sim.stats.goaways.fetch_add(1, Ordering::Relaxed);
        connection.goaway.notify_one();
    }
    if faults.drop_connection > 0.0 && fastrand::f64() < faults.drop_connection {
        sim.reject("connection_dropped");
        connection.drop.notify_one();
        std::future::pending::<()>().await;
    }
}

/// Loses the answer to an accepted request for the configured share: the notification was
/// delivered, then the connection drops before the answer leaves (the other requests on it
/// lose theirs too).
async fn answer(sim: &Sim, connection: &Connection, reply: Reply) -> Reply {
    let lose = sim.faults().lose_answer;
    if reply.status() == StatusCode::OK && lose > 0.0 && fastrand::f64() < lose {
        sim.reject("answer_lost");
        connection.drop.notify_one();
        std::future::pending::<()>().await;
    }
    reply
}

/// Routes one request.
pub(super) async fn handle(
    sim: &Sim,
    connection: &Connection,
    request: Request<Incoming>,
) -> Reply {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        // Larger than any valid request: the endpoint answers "too large".
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Bytes::from(vec![0; MAX_BODY + 1])
        }
        Err(_) => {
            sim.reject("incomplete_request");
            return reply(StatusCode::BAD_REQUEST, json!({"reason": "IncompleteRequest"}), &[]);
        }
    };
    let path = parts.uri.path().to_string();
    match (&parts.method, path.as_str()) {
        (&Method::GET, "/sim/stats") => reply(StatusCode::OK, sim.stats_json(), &[]),
        (&Method::GET, p) if p.starts_with("/sim/devices/") => {
            reply(StatusCode::OK, sim.device_json(p.trim_start_matches("/sim/devices/")), &[])
        }
        (&Method::GET, "/sim/token-endpoint/down" | "/sim/token-endpoint/up") => {
            let down = path.ends_with("/down");
            sim.token_endpoint_down.store(down, Ordering::SeqCst);
            reply(StatusCode::OK, json!({"token_endpoint_down": down}), &[])
        }
        (&Method::GET, "/sim/apns/expire-tokens") => {
            reply(StatusCode::OK, json!({"expired": sim.expire_provider_tokens()}), &[])
        }
        (&Method::GET, "/sim/faults/reset") => {
            *sim.faults.write().expect("faults lock") = sim.options.faults.clone();
            reply(StatusCode::OK, json!({"faults": "reset"}), &[])
        }
        (&Method::GET, p) if p.starts_with("/sim/faults/set/") => {
            let spec = p.trim_start_matches("/sim/faults/set/");
            match sim.faults.write().expect("faults lock").set(spec) {
                Ok(()) => reply(StatusCode::OK, json!({"fault": spec}), &[]),
                Err(error) => reply(StatusCode::BAD_REQUEST, json!({"error": error}), &[]),
            }
        }
        (&Method::POST, "/token") if sim.token_endpoint_down.load(Ordering::SeqCst) => {
            sim.reject("token_endpoint_down");
            let body = json!({"error": "temporarily_unavailable"});
            reply(StatusCode::SERVICE_UNAVAILABLE, body, &[])
        }
        (&Method::POST, "/token") => token(sim, &body),
        (&Method::POST, p) if p.starts_with("/3/device/") => {
            connection_faults(sim, connection).await;
            let device = p.trim_start_matches("/3/device/");
            let reply = apns(sim, connection, device, &parts.headers, &body).await;
            answer(sim, connection, reply).await
        }
        (&Method::POST, p) if p.starts_with("/v1/projects/") && p.ends_with("/messages:send") => {
            connection_faults(sim, connection).await;
            let project = p.trim_start_matches("/v1/projects/").trim_end_matches("/messages:send");
            let reply = fcm(sim, project, &parts.headers, &body).await;
            answer(sim, connection, reply).await
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"reason": "BadPath"}), &[]),
    }
}

#[derive(Deserialize)]
struct ProviderClaims {
    iss: String,
    iat: i64,
}

async fn apns(
    sim: &Sim,
    connection: &Connection,
    device: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let error = |status: u16, reason: &str| {
        sim.reject(reason);
        let status = StatusCode::from_u16(status).expect("valid status");
        reply(status, json!({"reason": reason}), &[])
    };
    match header("authorization").and_then(|v| v.strip_prefix("bearer ")) {
        Some(bearer) => {
            if let Err(reason) = check_provider_token(sim, bearer) {
                return error(403, reason);
            }
        }
        // Certificate-based authentication: the TLS handshake verified the client.
        None if connection.client_certificate => {}
        None => return error(403, "MissingProviderToken"),
    }
    if header("apns-topic").is_none() {
        return error(400, "MissingTopic");
    }
    let push_types =
        ["alert", "background", "voip", "complication", "fileprovider", "mdm", "liveactivity"];
    if !header("apns-push-type").is_some_and(|t| push_types.contains(&t)) {
        return error(400, "InvalidPushType");
    }
    if header("apns-priority").is_some_and(|p| !["1", "5", "10"].contains(&p)) {
        return error(400, "BadPriority");
    }
    if header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return error(400, "BadCollapseId");
    }
    if header("apns-expiration").is_some_and(|e| e.parse::<i64>().is_err()) {
        return error(400, "BadExpirationDate");
    }
    let apns_id = header("apns-id").map(str::to_string);
    if apns_id.as_deref().is_some_and(|id| !is_uuid(id)) {
        return error(400, "BadMessageId");
    }
    if body.is_empty() {
        return error(400, "PayloadEmpty");
    }
    if body.len() > MAX_PAYLOAD_BYTES {
        return error(413, "PayloadTooLarge");
    }
    if device.is_empty() {
        return error(400, "MissingDeviceToken");
    }
    let faults = sim.faults();
    tokio::time::sleep(faults.latency()).await;
    match faults.draw(device) {
        Some(Fault::Unregistered) => {
            sim.reject("Unregistered");
            let at = chrono::Utc::now().timestamp_millis();
            return reply(
                StatusCode::GONE,
                json!({"reason": "Unregistered", "timestamp": at}),
                &[],
            );
        }
        Some(Fault::BadDeviceToken) => return error(400, "BadDeviceToken"),
        Some(Fault::TooManyRequests) => {
            sim.reject("TooManyRequests");
            let after = faults.retry_after_secs.to_string();
            return reply(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"reason": "TooManyRequests"}),
                &[("retry-after", after)],
            );
        }
        Some(Fault::Unavailable) => return error(503, "ServiceUnavailable"),
        Some(Fault::Internal) => return error(500, "InternalServerError"),
        None => {}
    }
    let id = apns_id.unwrap_or_else(|| format!("sim-{}", fastrand::u64(..)));
    let payload: Value = serde_json::from_slice(body).unwrap_or_default();
    sim.delivered(device, &payload["herald"], &id);
    Response::builder()
        .status(StatusCode::OK)
        .header("apns-id", id)
        .body(Full::new(Bytes::new()))
        .expect("valid response")
}

/// Verifies an APNs provider token: ES256 signature, `kid`, team, age under an hour.
fn check_provider_token(sim: &Sim, bearer: &str) -> Result<(), &'static str> {
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims = match jsonwebtoken::decode::<ProviderClaims>(bearer, &sim.apns_key, &validation) {
        Ok(token) if token.header.kid.is_some() => token.claims,
        _ => return Err("InvalidProviderToken"),
    };
    if sim.options.apns_team_id.as_deref().is_some_and(|team| team != claims.iss) {
        return Err("InvalidProviderToken");
    }
    if chrono::Utc::now().timestamp() - claims.iat > PROVIDER_TOKEN_MAX_AGE_SECS
        || sim.expired_provider_tokens.lock().expect("tokens lock").contains(bearer)
    {
        return Err("ExpiredProviderToken");
    }
    sim.stats.provider_tokens.lock().expect("stats lock").insert(bearer.to_string());
    Ok(())
}

fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn fcm_error(
    sim: &Sim,
    status: u16,
    code: &str,
    message: &str,
    headers: &[(&str, String)],
) -> Reply {
    sim.reject(code);
    let grpc = match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let body = json!({"error": {
        "code": status,
        "message": message,
        "status": grpc,
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}],
    }});
    reply(StatusCode::from_u16(status).expect("valid status"), body, headers)
}

async fn fcm(sim: &Sim, project: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = bearer.is_some_and(|token| {
        sim.access_tokens
            .lock()
            .expect("token lock")
            .get(token)
            .is_some_and(|expires| *expires > Instant::now())
    });
    if !valid {
        return fcm_error(
            sim,
            401,
            "THIRD_PARTY_AUTH_ERROR",
            "Request had invalid authentication credentials.",
            &[],
        );
    }
    if body.len() > MAX_PAYLOAD_BYTES {
        return fcm_error(sim, 400, "INVALID_ARGUMENT", "Message is too big", &[]);
    }
    let message: Value = serde_json::from_slice(body).unwrap_or_default();
    let Some(token) = message["message"]["token"].as_str() else {
        return fcm_error(
            sim,
            400,
            "INVALID_ARGUMENT",
            "Recipient of the message is not set.",
            &[],
        );
    };
    let faults = sim.faults();
    tokio::time::sleep(faults.latency()).await;
    match faults.draw(token) {
        Some(Fault::Unregistered) => {
            return fcm_error(sim, 404, "UNREGISTERED", "Requested entity was not found.", &[])
        }
        Some(Fault::BadDeviceToken) => {
            return fcm_error(
                sim,
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                &[],
            )
        }
        Some(Fault::TooManyRequests) => {
            let after = faults.retry_after_secs.to_string();
            return fcm_error(
                sim,
                429,
                "QUOTA_EXCEEDED",
                "Quota exceeded.",
                &[("retry-after", after)],
            );
        }
        Some(Fault::Unavailable) => {
            return fcm_error(sim, 503, "UNAVAILABLE", "The service is currently unavailable.", &[])
        }
        Some(Fault::Internal) => return fcm_error(sim, 500, "INTERNAL", "Internal error.", &[]),
        None => {}
    }
    let data = &message["message"]["data"];
    let message_id = data["herald_message_id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("sim-{}", fastrand::u64(..)));
    let herald = json!({
        "campaign_id": data["herald_campaign_id"],
        "variant_id": data["herald_variant_id"],
    });
    sim.delivered(token, &herald, &message_id);
    let name = format!("projects/{project}/messages/0:{}", fastrand::u64(..));
    reply(StatusCode::OK, json!({ "name": name }), &[])
}

#[derive(Deserialize)]
struct GrantClaims {
    iss: String,
    scope: String,
}

/// OAuth 2.0 JWT-bearer grant: a service account's signed assertion for an access token.
fn token(sim: &Sim, body: &[u8]) -> Reply {
    let invalid = |description: &str| {
        sim.reject("invalid_grant");
        reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_grant", "error_description": description}),
            &[],
        )
    };
    let form = String::from_utf8_lossy(body);
    let field = |name: &str| {
        form.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}=")).map(str::to_string))
    };
    if field("grant_type").as_deref()
        != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer")
    {
        return invalid("unsupported grant_type");
    }
    let Some(assertion) = field("assertion") else { return invalid("missing assertion") };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_aud = false;
    let claims = match jsonwebtoken::decode::<GrantClaims>(&assertion, &sim.fcm_key, &validation) {
        Ok(token) => token.claims,
        Err(e) => return invalid(&format!("Invalid JWT Signature or claims: {e}")),
    };
    if claims.iss != FCM_CLIENT_EMAIL || !claims.scope.contains("firebase.messaging") {
        return invalid("Invalid issuer or scope");
    }
    sim.stats.token_grants.fetch_add(1, Ordering::Relaxed);
    let ttl: Duration = sim.options.fcm_token_ttl;
    let access_token = format!("ya29.sim-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    sim.access_tokens
        .lock()
        .expect("token lock")
        .insert(access_token.clone(), Instant::now() + ttl);
    reply(
        StatusCode::OK,
        json!({"access_token": access_token, "expires_in": ttl.as_secs(), "token_type": "Bearer"}),
        &[],
    )
}
