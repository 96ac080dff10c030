//! FCM HTTP v1 client: `POST /v1/projects/<project>/messages:send` with OAuth2 access tokens
//! obtained from a service account (an RS256 JWT grant posted to the account's `token_uri`),
//! cached and renewed before they expire.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{
    h2::H2Pool,
    outcome::{retry_after, Attempt},
    reason::{Reason, Refusal},
};
use crate::model::SendCommand;

/// OAuth scope of FCM sends.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Tokens are renewed this long before they expire, or at half their lifetime if that is
/// shorter (a token granted for less than this is not fetched again for every message).
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// Longest token lifetime believed: a larger `expires_in` (up to 2^64−1 from a hostile or broken
/// endpoint) is clamped to it. Google's tokens live an hour.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3_600);

/// How long after it was granted a token of `lifetime` is renewed.
fn renewal(lifetime: Duration) -> Duration {
    lifetime - RENEW_BEFORE.min(lifetime / 2)
}

/// The fields of a service-account JSON file the sender needs.
#[derive(Deserialize)]
pub struct ServiceAccount {
    /// Firebase project id.
    pub project_id: String,
    /// Service account e-mail (JWT issuer).
    pub client_email: String,
    /// RSA private key, PKCS#8 PEM.
    pub private_key: String,
    /// OAuth token endpoint.
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct GrantClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Seconds, any JSON number (read by [`TokenResponse::lifetime`]).
    expires_in: serde_json::Number,
}

impl TokenResponse {
    /// How long the token is believed valid: `expires_in`, from 0 (negative) to
    /// [`MAX_TOKEN_LIFETIME`] (2^64−1, or a larger or fractional number, is clamped).
    fn lifetime(&self) -> Duration {
        let seconds = self.expires_in.as_u64().or_else(|| {
            let seconds = self.expires_in.as_f64()?;
            Some(seconds.clamp(0.0, MAX_TOKEN_LIFETIME.as_secs_f64()) as u64)
        });
        Duration::from_secs(seconds.unwrap_or(0)).min(MAX_TOKEN_LIFETIME)
    }
}

/// Access tokens of one service account.
pub struct AccessTokens {
    account: ServiceAccount,
    key: EncodingKey,
    endpoint: H2Pool,
    /// The cached token and when to renew it.
    current: Mutex<Option<(String, Instant)>>,
}

impl AccessTokens {
    /// Token source for `account`, fetching through `endpoint` (the pool of its `token_uri`).
    pub fn new(account: ServiceAccount, endpoint: H2Pool) -> Result<Self, String> {
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| format!("private_key is not an RSA key in PEM: {e}"))?;
        Ok(Self { account, key, endpoint, current: Mutex::new(None) })
    }

    /// A valid access token; fetches one when none is cached or it expires soon. Returns the
    /// token and whether it was just fetched.
    pub async fn bearer(&self) -> Result<(String, bool), String> {
        let mut current = self.current.lock().await;
        if let Some((token, renew_at)) = current.as_ref() {
            if Instant::now() < *renew_at {
                return Ok((token.clone(), false));
            }
        }
        let (token, lifetime) = self.fetch().await?;
        *current = Some((token.clone(), Instant::now() + renewal(lifetime)));
        Ok((token, true))
    }

    /// FCM refused `token`: the next use fetches a new one, unless `token` was already replaced
    /// (a late 401 for an older token leaves the fresh one alone; a fetch in flight holds the
    /// lock, so there is one fetch at a time and the old token stays until the new one comes).
    pub async fn refused(&self, token: &str) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(cached, _)| cached == token) {
            *current = None;
        }
    }

    async fn fetch(&self) -> Result<(String, Duration), String> {
        let now = chrono::Utc::now().timestamp();
        let claims = GrantClaims {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: &self.account.token_uri,
            iat: now,
            exp: now + 3600,
        };
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| format!("signing the OAuth grant: {e}"))?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.account.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| format!("building the token request: {e}"))?;
        let response = self.endpoint.send(request).await.map_err(|e| e.to_string())?;
        if response.status != StatusCode::OK {
            return Err(format!(
                "token endpoint {} answered {}: {}",
                self.account.token_uri,
                response.status,
                String::from_utf8_lossy(&response.body)
            ));
        }
        let token: TokenResponse = serde_json::from_slice(&response.body)
            .map_err(|e| format!("unexpected token response: {e}"))?;
        let lifetime = token.lifetime();
        Ok((token.access_token, lifetime))
    }
}

/// One app's FCM client.
pub struct FcmClient {
    pool: H2Pool,
    project: String,
    /// Its access tokens.
    pub tokens: Arc<AccessTokens>,
}

impl FcmClient {
    /// A client for `project` sending through `pool`.
    pub fn new(pool: H2Pool, project: &str, tokens: Arc<AccessTokens>) -> Self {
        Self { pool, project: project.to_string(), tokens }
    }

    /// Sends one command.
    pub async fn send(&self, command: &SendCommand) -> Result<Attempt, String> {
        let bearer = match self.tokens.bearer().await {
            Ok((bearer, _)) => bearer,
            Err(text) => {
                return Ok(Attempt::Credentials(Refusal::new(Reason::CredentialsRefused, text)))
            }
        };
        let uri = format!("{}/v1/projects/{}/messages:send", self.pool.origin(), self.project);
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("authorization", format!("Bearer {bearer}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(command.payload.clone())))
            .map_err(|e| format!("building the FCM request: {e}"))?;
        let response = match self.pool.send(request).await {
            Ok(response) => response,
            Err(error) => return Ok(Attempt::transport_failed(&error)),
        };
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        if response.status == StatusCode::OK {
            let provider_id = body["name"].as_str().map(str::to_string);
            return Ok(Attempt::Accepted { provider_id });
        }
        let attempt = classify(response.status, &body, retry_after(&response.headers));
        if matches!(attempt, Attempt::Credentials(_)) {
            self.tokens.refused(&bearer).await;
        }
        Ok(attempt)
    }
}

/// The next step after an FCM error response with `status` and JSON `body`.
fn classify(status: StatusCode, body: &serde_json::Value, after: Option<Duration>) -> Attempt {
    let grpc_status = body["error"]["status"].as_str().unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    let code = body["error"]["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|detail| detail["errorCode"].as_str())
        .unwrap_or_default();
    let reason = Reason::from_fcm(status.as_u16(), code, grpc_status, message);
    let name = [code, grpc_status].into_iter().find(|r| !r.is_empty());
    let text = match (name, message) {
        (Some(name), "") => name.to_string(),
        (Some(name), message) => format!("{name}: {message}"),
        (None, _) => status.to_string(),
    };
    Attempt::refused(Refusal::new(reason, text), after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_five_minutes_before_expiry_or_at_half_its_lifetime() {
        let hour = Duration::from_secs(3_600);
        assert_eq!(renewal(hour), hour - RENEW_BEFORE);
        assert_eq!(renewal(Duration::from_secs(60)), Duration::from_secs(30));
        assert_eq!(renewal(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn an_expires_in_of_2_pow_64_minus_1_or_beyond_is_clamped_to_a_day() {
        let lifetime = |expires_in: &str| {
            let body = format!(r#"{{"access_token":"t","expires_in":{expires_in}}}"#);
            serde_json::from_str::<TokenResponse>(&body).unwrap().lifetime()
        };
        let day = MAX_TOKEN_LIFETIME;
        for (expires_in, expected) in [
            ("3599", Duration::from_secs(3_599)),
            ("18446744073709551615", day),
            ("1e30", day),
            ("3599.9", Duration::from_secs(3_599)),
            ("-5", Duration::ZERO),
        ] {
            assert_eq!(lifetime(expires_in), expected, "{expires_in}");
            // When the token is renewed: no overflow.
            let _renew_at = Instant::now() + renewal(lifetime(expires_in));
        }
    }

    fn error(code: &str, status: &str, message: &str) -> serde_json::Value {
        serde_json::json!({"error": {"status": status, "message": message,
            "details": [{"errorCode": code}]}})
    }

    #[test]
    fn fcm_errors_are_classified_with_the_providers_text_kept() {
        let classify = |status: u16, body: serde_json::Value| {
            classify(StatusCode::from_u16(status).unwrap(), &body, None)
        };
        assert_eq!(
            classify(404, error("UNREGISTERED", "NOT_FOUND", "")),
            Attempt::TokenInvalid(Refusal::new(Reason::Unregistered, "UNREGISTERED"))
        );
        assert_eq!(
            classify(400, error("INVALID_ARGUMENT", "INVALID_ARGUMENT", "Message is too big")),
            Attempt::Failed(Refusal::new(
                Reason::PayloadTooLarge,
                "INVALID_ARGUMENT: Message is too big"
            ))
        );
        assert!(matches!(
            classify(401, error("THIRD_PARTY_AUTH_ERROR", "UNAUTHENTICATED", "")),
            Attempt::Credentials(_)
        ));
        assert!(matches!(
            classify(429, error("QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED", "")),
            Attempt::Retry { .. }
        ));
        assert_eq!(
            classify(502, serde_json::Value::Null),
            Attempt::Retry {
                refusal: Refusal::new(Reason::ProviderError, "502 Bad Gateway"),
                after: None
            }
        );
    }
}
