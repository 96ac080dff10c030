//! APNs provider API client: `POST /3/device/<token>` over HTTP/2, authenticated with ES256
//! provider tokens (JWT with `kid`, `iss`, `iat`) shared by all connections of an app and
//! refreshed within Apple's 20 to 60 minute window, or with a client certificate.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::{
    h2::H2Pool,
    outcome::{retry_after, Attempt},
    reason::{Reason, Refusal},
};
use crate::model::SendCommand;

/// The provider token of one app, re-signed when older than the refresh period.
pub struct ProviderToken {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    refresh: Duration,
    current: Mutex<Option<(String, Instant)>>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: i64,
}

impl ProviderToken {
    /// A token source signing with the PKCS#8 PEM `key` (the `.p8` file), renewed every
    /// `refresh` (Apple accepts 20 to 60 minutes).
    pub fn new(
        key_pem: &[u8],
        key_id: &str,
        team_id: &str,
        refresh: Duration,
    ) -> Result<Self, String> {
        let key = EncodingKey::from_ec_pem(key_pem)
            .map_err(|e| format!("not an ES256 (P-256) private key in PKCS#8 PEM: {e}"))?;
        Ok(Self {
            key,
            key_id: key_id.to_string(),
            team_id: team_id.to_string(),
            refresh,
            current: Mutex::new(None),
        })
    }

    /// The current token, signing a new one when none is younger than the refresh period.
    /// Returns the token and whether it was just signed.
    pub fn bearer(&self) -> Result<(String, bool), String> {
        let mut current = self.current.lock().expect("token lock");
        if let Some((token, signed)) = current.as_ref() {
            if signed.elapsed() < self.refresh {
                return Ok((token.clone(), false));
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = Claims { iss: &self.team_id, iat: chrono::Utc::now().timestamp() };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("signing the APNs provider token: {e}"))?;
        *current = Some((token.clone(), Instant::now()));
        Ok((token, true))
    }

    /// Forgets the current token (the provider refused it).
    pub fn invalidate(&self) {
        *self.current.lock().expect("token lock") = None;
    }
}

/// One app's APNs client.
pub struct ApnsClient {
    pool: H2Pool,
    topic: String,
    /// The provider token (none: the connections authenticate with a client certificate).
    pub token: Option<ProviderToken>,
}

impl ApnsClient {
    /// A client sending for bundle id `topic` through `pool`, with provider tokens from
    /// `token` or, without one, the client certificate of the pool's TLS configuration.
    pub fn new(pool: H2Pool, topic: &str, token: Option<ProviderToken>) -> Self {
        Self { pool, topic: topic.to_string(), token }
    }

    /// Sends one command.
    pub async fn send(&self, command: &SendCommand) -> Result<Attempt, String> {
        let uri = format!("{}/3/device/{}", self.pool.origin(), command.token);
        let mut request = Request::builder().method(Method::POST).uri(uri);
        if let Some(token) = &self.token {
            let (bearer, _) = token.bearer()?;
            request = request.header("authorization", format!("bearer {bearer}"));
        }
        request =
            request.header("apns-topic", &self.topic).header("content-type", "application/json");
        for (name, value) in &command.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from(command.payload.clone())))
            .map_err(|e| format!("building the APNs request: {e}"))?;
        let response = match self.pool.send(request).await {
            Ok(response) => response,
            Err(error) => {
                let refusal = Refusal::new(Reason::Unreachable, error.to_string());
                return Ok(Attempt::Retry { refusal, after: None });
            }
        };
        if response.status == StatusCode::OK {
            let provider_id =
                response.headers.get("apns-id").and_then(|v| v.to_str().ok()).map(str::to_string);
            return Ok(Attempt::Accepted { provider_id });
        }
        let reason = serde_json::from_slice::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|body| body["reason"].as_str().map(str::to_string))
            .unwrap_or_else(|| response.status.to_string());
        Ok(classify(response.status, reason, retry_after(&response.headers)))
    }
}

fn classify(status: StatusCode, reason: String, after: Option<Duration>) -> Attempt {
    Attempt::refused(Refusal::new(Reason::from_apns(status.as_u16(), &reason), reason), after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_token_older_than_the_refresh_period_is_signed_again() {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let token = ProviderToken::new(
            key.as_bytes(),
            "KEY1234567",
            "TEAM123456",
            Duration::from_millis(200),
        )
        .unwrap();
        let (first, signed) = token.bearer().unwrap();
        assert!(signed);
        assert_eq!(token.bearer().unwrap(), (first.clone(), false), "shared while fresh");
        std::thread::sleep(Duration::from_millis(250));
        let (second, signed) = token.bearer().unwrap();
        assert!(signed, "re-signed after the refresh period");
        assert_ne!(first, second);
        token.invalidate();
        assert!(token.bearer().unwrap().1, "a refused token is signed again at once");
    }

    #[test]
    fn apns_reasons_are_classified() {
        let classify = |status: u16, reason: &str| {
            classify(StatusCode::from_u16(status).unwrap(), reason.into(), None)
        };
        assert!(matches!(classify(410, "Unregistered"), Attempt::TokenInvalid(_)));
        assert!(matches!(classify(400, "BadDeviceToken"), Attempt::TokenInvalid(_)));
        assert!(matches!(classify(400, "DeviceTokenNotForTopic"), Attempt::TokenInvalid(_)));
        assert_eq!(
            classify(413, "PayloadTooLarge"),
            Attempt::Failed(Refusal::new(Reason::PayloadTooLarge, "PayloadTooLarge"))
        );
        assert!(matches!(classify(403, "ExpiredProviderToken"), Attempt::Credentials(_)));
        assert!(matches!(classify(429, "TooManyRequests"), Attempt::Retry { .. }));
        assert!(matches!(classify(503, "ServiceUnavailable"), Attempt::Retry { .. }));
    }
}
