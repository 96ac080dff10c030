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

/// The provider token of one app, re-signed when older than the refresh period or refused.
/// Signing happens under the token's lock (one signature in flight, the old token kept until
/// the new one is signed), and a refusal discards only the token it was about: concurrent 403s
/// for one token cause one new signature, not one each.
pub struct ProviderToken {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    refresh: Duration,
    current: Mutex<Option<Current>>,
}

/// The token in use.
struct Current {
    token: String,
    signed: Instant,
    /// The provider refused it: sign a new one at the next use.
    refused: bool,
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
        if let Some(Current { token, signed, refused: false }) = current.as_ref() {
            if signed.elapsed() < self.refresh {
                return Ok((token.clone(), false));
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = Claims { iss: &self.team_id, iat: chrono::Utc::now().timestamp() };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("signing the APNs provider token: {e}"))?;
        *current = Some(Current { token: token.clone(), signed: Instant::now(), refused: false });
        Ok((token, true))
    }

    /// The provider refused `token`: the next use signs a new one, unless `token` was already
    /// replaced (a late 403 for an older token leaves the fresh one alone). True if it was the
    /// current token.
    pub fn refused(&self, token: &str) -> bool {
        let mut current = self.current.lock().expect("token lock");
        match current.as_mut() {
            Some(current) if current.token == token => {
                current.refused = true;
                true
            }
            _ => false,
        }
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
        let mut bearer = None;
        if let Some(token) = &self.token {
            let (signed, _) = token.bearer()?;
            request = request.header("authorization", format!("bearer {signed}"));
            bearer = Some(signed);
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
            Err(error) => return Ok(Attempt::transport_failed(&error)),
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
        let attempt = classify(response.status, reason, retry_after(&response.headers));
        if let (Attempt::Credentials(_), Some(token), Some(bearer)) =
            (&attempt, &self.token, &bearer)
        {
            token.refused(bearer);
        }
        Ok(attempt)
    }
}

fn classify(status: StatusCode, reason: String, after: Option<Duration>) -> Attempt {
    Attempt::refused(Refusal::new(Reason::from_apns(status.as_u16(), &reason), reason), after)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
        assert!(token.refused(&second));
        assert!(token.bearer().unwrap().1, "a refused token is signed again at once");
    }

    /// Issue 12: concurrent 403s for one token each discarded the freshly signed one (a storm
    /// of signatures, and `TooManyProviderTokenUpdates`). A refusal now names its token.
    #[test]
    fn concurrent_refusals_of_one_token_sign_one_new_token() {
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let token = ProviderToken::new(
            key.as_bytes(),
            "KEY1234567",
            "TEAM123456",
            Duration::from_secs(3_000),
        )
        .unwrap();
        let (refused, _) = token.bearer().unwrap();
        let signed: Vec<(String, bool)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        token.refused(&refused);
                        token.bearer().unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let fresh: BTreeSet<&str> = signed.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(fresh.len(), 1, "one new token for eight refusals of the old one");
        assert!(!fresh.contains(refused.as_str()));
        assert_eq!(signed.iter().filter(|(_, new)| *new).count(), 1, "signed once");
        assert!(!token.refused(&refused), "a late refusal of the old token changes nothing");
        assert_eq!(token.bearer().unwrap(), (fresh.first().unwrap().to_string(), false));
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
