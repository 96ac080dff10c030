//! What a provider said about one send, classified for the sender's next step.

use std::time::Duration;

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
    TokenInvalid {
        /// Provider's reason, e.g. `Unregistered`.
        reason: String,
    },
    /// A permanent error for this notification: final.
    Failed {
        /// Provider's reason, e.g. `PayloadTooLarge`.
        reason: String,
    },
    /// A transient error: try again later (after `after` if the provider said so).
    Retry {
        /// Status or transport error.
        reason: String,
        /// `Retry-After`, if given.
        after: Option<Duration>,
    },
    /// The app's credential was refused: refresh it once, then stop the app.
    Credentials {
        /// Provider's reason, e.g. `ExpiredProviderToken`.
        reason: String,
    },
}

/// `Retry-After` in seconds (the HTTP-date form is not used by APNs or FCM).
pub fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
