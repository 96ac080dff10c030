//! What a provider said about one send, classified for the sender's next step.

use std::time::Duration;

use super::{
    h2::TransportError,
    reason::{Reason, Refusal},
};

/// Longest `Retry-After` honoured: a larger value (up to 2^64−1 seconds from a hostile or broken
/// endpoint) is clamped to it, and the retry deadline then ends the command's retries.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The provider accepted the notification.
    Accepted {
        /// Provider's id for it (APNs `apns-id`, FCM message name).
        provider_id: Option<String>,
    },
    /// The token is dead (unregistered, bad, or for another app): final, and the user stage
    /// removes the token.
    TokenInvalid(Refusal),
    /// A permanent error for this notification: final.
    Failed(Refusal),
    /// A transient error: try again later (after `after` if the provider said so).
    Retry {
        /// Why, e.g. `rate_limited` and `TooManyRequests`.
        refusal: Refusal,
        /// `Retry-After`, if given (at most [`MAX_RETRY_AFTER`]).
        after: Option<Duration>,
    },
    /// The app's credential was refused: refresh it once, then stop the app.
    Credentials(Refusal),
}

impl Attempt {
    /// The next step after a refusal: a dead token, a refused credential, a transient error
    /// (rate limit, provider failure, no answer; retried after `after`) or a permanent one.
    pub fn refused(refusal: Refusal, after: Option<Duration>) -> Self {
        match refusal.reason {
            reason if reason.token_is_dead() => Attempt::TokenInvalid(refusal),
            Reason::CredentialsRefused => Attempt::Credentials(refusal),
            Reason::RateLimited | Reason::ProviderError | Reason::Unreachable => {
                Attempt::Retry { refusal, after }
            }
            _ => Attempt::Failed(refusal),
        }
    }
}

impl Attempt {
    /// The next step after a request that got no HTTP answer: retried when it provably did not
    /// reach the provider (`unreachable`), failed when the provider may have processed it
    /// (`unknown_outcome`: sending it again could deliver it twice).
    pub fn transport_failed(error: &TransportError) -> Self {
        if error.outcome_unknown() {
            Attempt::Failed(Refusal::new(Reason::UnknownOutcome, error.to_string()))
        } else {
            Attempt::Retry {
                refusal: Refusal::new(Reason::Unreachable, error.to_string()),
                after: None,
            }
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by APNs or FCM), clamped to
/// [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let text = headers.get(hyper::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = text.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_request_that_did_not_reach_the_provider_is_retried() {
        let origin = "https://apns".to_string();
        let reason = "x".to_string();
        let retried = |error: TransportError| match Attempt::transport_failed(&error) {
            Attempt::Retry { refusal, after: None } => refusal.reason == Reason::Unreachable,
            Attempt::Failed(refusal) => {
                assert_eq!(refusal.reason, Reason::UnknownOutcome);
                false
            }
            other => panic!("{other:?}"),
        };
        assert!(retried(TransportError::Connect {
            origin: origin.clone(),
            reason: reason.clone()
        }));
        assert!(retried(TransportError::NotSent {
            origin: origin.clone(),
            reason: reason.clone()
        }));
        assert!(!retried(TransportError::OutcomeUnknown { origin, reason }));
    }

    #[test]
    fn a_retry_after_of_2_pow_64_minus_1_is_clamped() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(hyper::header::RETRY_AFTER, u64::MAX.to_string().parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(hyper::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(hyper::header::RETRY_AFTER, "99999999999999999999999".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER), "beyond u64: clamped too");
        headers.insert(hyper::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None, "not seconds: the backoff applies");
    }
}
