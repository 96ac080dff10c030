//! Bearer tokens with two roles, kept as SHA-256 hashes and compared in constant time; a rate
//! limit per token; the middleware that applies both to a route.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::Response,
};
use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use super::{audit, error::ApiError, ApiState};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read campaigns, stats, events, dead letters, settings, previews.
    Read,
    /// Everything: also create, update, pause, resume, stop, test sends, settings changes.
    Admin,
}

/// Who made a request: the name and role of the token presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Token name (logged and audited; the token itself never is).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// A tokens file or variable that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// A line is not `role name token`.
    #[error("{origin} line {line}: expected `read|admin NAME TOKEN`")]
    Malformed {
        /// File or variable.
        origin: String,
        /// 1-based line.
        line: usize,
    },
    /// A token shorter than 16 characters is too easy to guess.
    #[error("{origin} line {line}: token of {name} is shorter than 16 characters")]
    TooShort {
        /// File or variable.
        origin: String,
        /// 1-based line.
        line: usize,
        /// Token name.
        name: String,
    },
    /// Two tokens with one name could not be told apart in the audit.
    #[error("{origin} line {line}: token name {name} is used twice")]
    DuplicateName {
        /// File or variable.
        origin: String,
        /// 1-based line.
        line: usize,
        /// Token name.
        name: String,
    },
    /// No token at all: nobody could use the API.
    #[error("{0}: no tokens")]
    Empty(String),
}

struct Token {
    caller: Caller,
    hash: [u8; 32],
}

/// The API's tokens, hashed.
pub struct Tokens(Vec<Token>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|t| &t.caller)).finish()
    }
}

fn sha256(text: &str) -> [u8; 32] {
    let mut hash = [0; 32];
    hash.copy_from_slice(digest(&SHA256, text.as_bytes()).as_ref());
    hash
}

impl Tokens {
    /// Parses lines `role name token` (`role` is `read` or `admin`; blank lines and `#`
    /// comments are skipped; in an environment variable `;` also ends a line); `source` names
    /// the text in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, TokenError> {
        let mut tokens: Vec<Token> = Vec::new();
        for (index, line) in text.split(['\n', ';']).enumerate() {
            let line_no = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = || TokenError::Malformed { origin: source.into(), line: line_no };
            let words: Vec<&str> = line.split_whitespace().collect();
            let [role, name, token] = words[..] else { return Err(malformed()) };
            let role = match role {
                "read" => Role::Read,
                "admin" => Role::Admin,
                _ => return Err(malformed()),
            };
            if token.chars().count() < 16 {
                return Err(TokenError::TooShort {
                    origin: source.into(),
                    line: line_no,
                    name: name.into(),
                });
            }
            if tokens.iter().any(|t| t.caller.name == name) {
                return Err(TokenError::DuplicateName {
                    origin: source.into(),
                    line: line_no,
                    name: name.into(),
                });
            }
            tokens.push(Token { caller: Caller { name: name.into(), role }, hash: sha256(token) });
        }
        if tokens.is_empty() {
            return Err(TokenError::Empty(source.into()));
        }
        Ok(Self(tokens))
    }

    /// The caller whose token is `presented`, if any. Every token's hash is compared, each in
    /// constant time, so the time taken says nothing about which token came close.
    pub fn identify(&self, presented: &str) -> Option<&Caller> {
        let hash = sha256(presented);
        let mut found = None;
        for token in &self.0 {
            if bool::from(token.hash.ct_eq(&hash)) {
                found = Some(&token.caller);
            }
        }
        found
    }
}

/// Requests allowed per token: a bucket of `burst` refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests a token may make at once.
    pub burst: u32,
    /// Requests per second it earns back.
    pub per_second: f64,
}

/// Buckets kept before the full ones are forgotten (one per token, one per client address
/// without a valid token).
const MAX_BUCKETS: usize = 10_000;

/// Token buckets by token name.
pub(super) struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub(super) fn new(limit: RateLimit) -> Self {
        Self { limit, buckets: Mutex::default() }
    }

    /// Takes one request from `name`'s bucket, or says how long until one is there.
    fn take(&self, name: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let burst = f64::from(self.limit.burst);
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() >= MAX_BUCKETS {
            // Many client addresses: forget the buckets that have filled up again.
            let per_second = self.limit.per_second;
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_second < burst
            });
        }
        let (tokens, at) = buckets.entry(name.to_string()).or_insert((burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.limit.per_second).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.limit.per_second.max(1e-9)))
        }
    }
}

/// The token of an `Authorization` value `Bearer TOKEN`: the scheme in any case (HTTP schemes
/// are case-insensitive, RFC 9110 §11.1), the token without surrounding whitespace.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Lets a request through if it carries a valid token of at least `role` and its token's rate
/// limit allows it; the [`Caller`] goes into the request's extensions. An admin route's request
/// is audited, refused or not.
async fn authorize(
    state: &ApiState,
    role: Role,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    let Some(caller) = presented.and_then(|token| state.inner.config.tokens.identify(token)) else {
        // Guesses and floods without a valid token share one bucket per client address (or
        // one for all, when the address is unknown), apart from every token's.
        let address = request
            .extensions()
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map_or_else(String::new, |ConnectInfo(addr)| addr.ip().to_string());
        state.inner.limiter.take(&format!("\0invalid {address}")).map_err(ApiError::RateLimited)?;
        return Err(ApiError::Unauthorized);
    };
    let caller = caller.clone();
    state.inner.limiter.take(&caller.name).map_err(ApiError::RateLimited)?;
    request.extensions_mut().insert(caller.clone());
    Ok(match role {
        Role::Read => next.run(request).await,
        Role::Admin => audit::audited(state, &caller, caller.role >= role, request, next).await,
    })
}

/// Middleware of the read routes.
pub(super) async fn require_read(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(&state, Role::Read, request, next).await
}

/// Middleware of the admin routes.
pub(super) async fn require_admin(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(&state, Role::Admin, request, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_identify_their_caller_only() {
        let tokens = Tokens::parse(
            "# comment\nread viewer r-0123456789abcdef\nadmin ops a-0123456789abcdef\n",
            "tokens",
        )
        .unwrap();
        assert_eq!(tokens.identify("r-0123456789abcdef").unwrap().role, Role::Read);
        assert_eq!(tokens.identify("a-0123456789abcdef").unwrap().name, "ops");
        assert!(tokens.identify("a-0123456789abcdeF").is_none());
        assert!(tokens.identify("").is_none());
        assert!(!format!("{tokens:?}").contains("0123456789"));
    }

    #[test]
    fn bad_token_lines_are_refused_with_their_line() {
        assert_eq!(
            Tokens::parse("read x 0123456789abcdef;root y 0123456789abcdef", "env").err(),
            Some(TokenError::Malformed { origin: "env".into(), line: 2 })
        );
        assert!(matches!(
            Tokens::parse("admin x short", "f"),
            Err(TokenError::TooShort { line: 1, .. })
        ));
        assert_eq!(Tokens::parse("\n# none\n", "f").err(), Some(TokenError::Empty("f".into())));
    }

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("BEARER\tabc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn past_the_cap_full_buckets_are_forgotten_and_drained_ones_kept() {
        let limiter = RateLimiter::new(RateLimit { burst: 2, per_second: 10.0 });
        let (now, second_ago) = (Instant::now(), Instant::now() - Duration::from_secs(1));
        {
            let mut buckets = limiter.buckets.lock().unwrap();
            for i in 0..MAX_BUCKETS {
                buckets.insert(format!("full {i}"), (0.0, second_ago));
            }
            buckets.insert("drained".into(), (0.0, now + Duration::from_secs(3600)));
        }
        assert!(limiter.take("new").is_ok());
        let buckets = limiter.buckets.lock().unwrap();
        assert_eq!(buckets.len(), 2, "{:?}", buckets.keys().take(3).collect::<Vec<_>>());
        assert!(buckets.contains_key("drained") && buckets.contains_key("new"));
    }

    #[test]
    fn rate_limit_refuses_past_the_burst() {
        let limiter = RateLimiter::new(RateLimit { burst: 2, per_second: 0.001 });
        assert!(limiter.take("a").is_ok());
        assert!(limiter.take("a").is_ok());
        assert!(limiter.take("a").is_err());
        assert!(limiter.take("b").is_ok());
    }
}
