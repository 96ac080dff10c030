//! Herald's one vocabulary of delivery failure reasons, the same for APNs and FCM, so stats
//! count `unregistered` once and not as `Unregistered` and `UNREGISTERED`. The provider's own
//! words travel beside it (`Receipt.provider_reason`). Documented in `docs/senders.md`.

use std::fmt;

/// Why a notification was not delivered, whatever the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The app was uninstalled or the token expired (APNs `Unregistered`/`ExpiredToken`, FCM
    /// `UNREGISTERED`).
    Unregistered,
    /// The token is malformed or missing (APNs `BadDeviceToken`, FCM `INVALID_ARGUMENT` about
    /// the registration token).
    BadDeviceToken,
    /// The token belongs to another app or sender (APNs `DeviceTokenNotForTopic`, FCM
    /// `SENDER_ID_MISMATCH`).
    TokenNotForApp,
    /// The payload is over the provider's limit (APNs `PayloadTooLarge`, FCM "message is too
    /// big").
    PayloadTooLarge,
    /// The provider refused the request as malformed (bad headers, topic, priority, …).
    InvalidRequest,
    /// The provider asked to slow down (APNs `TooManyRequests`, FCM `QUOTA_EXCEEDED`).
    RateLimited,
    /// The provider failed or is unavailable (5xx), or answered something unknown.
    ProviderError,
    /// The provider could not be reached: connecting failed, or the request provably did not
    /// reach it (no connection ready, stream refused, above a GOAWAY's last stream id).
    Unreachable,
    /// The request was sent, then its connection dropped, was reset or timed out before the
    /// answer: the provider may have delivered it, so it is not sent again (at most once).
    UnknownOutcome,
    /// The app's credential was refused (provider token, certificate, OAuth token).
    CredentialsRefused,
    /// The command passed its expiry before it could be delivered.
    Expired,
    /// The sender has no configuration for the command's app or platform.
    NotConfigured,
    /// A sender stopped (crashed) between the command's intent and its receipt: it may have
    /// reached the provider, so it is not sent again (at most once).
    Interrupted,
    /// The sender failed internally while delivering it (a panic, with its message).
    SenderFault,
}

impl Reason {
    /// The snake_case name used in receipts and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unregistered => "unregistered",
            Reason::BadDeviceToken => "bad_device_token",
            Reason::TokenNotForApp => "token_not_for_app",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::InvalidRequest => "invalid_request",
            Reason::RateLimited => "rate_limited",
            Reason::ProviderError => "provider_error",
            Reason::Unreachable => "unreachable",
            Reason::UnknownOutcome => "unknown_outcome",
            Reason::CredentialsRefused => "credentials_refused",
            Reason::Expired => "expired",
            Reason::NotConfigured => "not_configured",
            Reason::Interrupted => "interrupted",
            Reason::SenderFault => "sender_fault",
        }
    }

    /// Whether the token can never receive the app's notifications (the user stage removes it).
    pub fn token_is_dead(self) -> bool {
        matches!(self, Reason::Unregistered | Reason::BadDeviceToken | Reason::TokenNotForApp)
    }

    /// The reason of an APNs error response with HTTP `status` and body `reason`.
    pub fn from_apns(status: u16, reason: &str) -> Self {
        match reason {
            "Unregistered" | "ExpiredToken" => Reason::Unregistered,
            "BadDeviceToken" | "MissingDeviceToken" => Reason::BadDeviceToken,
            "DeviceTokenNotForTopic" => Reason::TokenNotForApp,
            "PayloadTooLarge" => Reason::PayloadTooLarge,
            "TooManyRequests" | "TooManyProviderTokenUpdates" => Reason::RateLimited,
            "ExpiredProviderToken"
            | "InvalidProviderToken"
            | "MissingProviderToken"
            | "BadCertificate"
            | "BadCertificateEnvironment"
            | "UnrelatedKeyIdInToken"
            | "BadEnvironmentKeyIdInToken"
            | "Forbidden" => Reason::CredentialsRefused,
            _ => Self::from_status(status),
        }
    }

    /// The reason of an FCM v1 error response with HTTP `status`, FCM error `code` (from the
    /// error details), canonical `grpc_status` and `message`.
    pub fn from_fcm(status: u16, code: &str, grpc_status: &str, message: &str) -> Self {
        let message = message.to_ascii_lowercase();
        match (code, grpc_status) {
            ("UNREGISTERED", _) | ("", "NOT_FOUND") => Reason::Unregistered,
            ("SENDER_ID_MISMATCH", _) => Reason::TokenNotForApp,
            ("QUOTA_EXCEEDED", _) | ("", "RESOURCE_EXHAUSTED") => Reason::RateLimited,
            ("THIRD_PARTY_AUTH_ERROR", _) | ("", "UNAUTHENTICATED" | "PERMISSION_DENIED") => {
                Reason::CredentialsRefused
            }
            ("UNAVAILABLE" | "INTERNAL", _) => Reason::ProviderError,
            ("INVALID_ARGUMENT", _) | ("", "INVALID_ARGUMENT") => {
                if message.contains("too big") || message.contains("too large") {
                    Reason::PayloadTooLarge
                } else if message.contains("registration token") {
                    Reason::BadDeviceToken
                } else {
                    Reason::InvalidRequest
                }
            }
            _ => Self::from_status(status),
        }
    }

    fn from_status(status: u16) -> Self {
        match status {
            401 | 403 => Reason::CredentialsRefused,
            404 | 410 => Reason::Unregistered,
            413 => Reason::PayloadTooLarge,
            429 => Reason::RateLimited,
            400..=499 => Reason::InvalidRequest,
            _ => Reason::ProviderError,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: Herald's reason and the provider's own text (e.g. `unregistered` and
/// `Unregistered`, or `rate_limited` and `QUOTA_EXCEEDED: Quota exceeded.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Herald's reason.
    pub reason: Reason,
    /// What the provider (or the transport) said.
    pub provider_text: String,
}

impl Refusal {
    /// A refusal for `reason` with the provider's `text`.
    pub fn new(reason: Reason, text: impl Into<String>) -> Self {
        Self { reason, provider_text: text.into() }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.provider_text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_failure_has_one_name_whatever_the_provider() {
        let pairs = [
            (
                Reason::from_apns(410, "Unregistered"),
                Reason::from_fcm(404, "UNREGISTERED", "NOT_FOUND", ""),
            ),
            (
                Reason::from_apns(400, "BadDeviceToken"),
                Reason::from_fcm(
                    400,
                    "INVALID_ARGUMENT",
                    "INVALID_ARGUMENT",
                    "The registration token is not a valid FCM registration token",
                ),
            ),
            (
                Reason::from_apns(400, "DeviceTokenNotForTopic"),
                Reason::from_fcm(403, "SENDER_ID_MISMATCH", "PERMISSION_DENIED", ""),
            ),
            (
                Reason::from_apns(413, "PayloadTooLarge"),
                Reason::from_fcm(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Message is too big"),
            ),
            (
                Reason::from_apns(429, "TooManyRequests"),
                Reason::from_fcm(429, "QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED", ""),
            ),
            (
                Reason::from_apns(503, "ServiceUnavailable"),
                Reason::from_fcm(503, "UNAVAILABLE", "UNAVAILABLE", ""),
            ),
            (
                Reason::from_apns(403, "ExpiredProviderToken"),
                Reason::from_fcm(401, "THIRD_PARTY_AUTH_ERROR", "UNAUTHENTICATED", ""),
            ),
        ];
        let names: Vec<(&str, &str)> =
            pairs.iter().map(|(apns, fcm)| (apns.as_str(), fcm.as_str())).collect();
        assert_eq!(
            names,
            [
                ("unregistered", "unregistered"),
                ("bad_device_token", "bad_device_token"),
                ("token_not_for_app", "token_not_for_app"),
                ("payload_too_large", "payload_too_large"),
                ("rate_limited", "rate_limited"),
                ("provider_error", "provider_error"),
                ("credentials_refused", "credentials_refused"),
            ]
        );
    }

    #[test]
    fn unknown_answers_fall_back_on_the_status() {
        assert_eq!(Reason::from_apns(500, "SomethingNew"), Reason::ProviderError);
        assert_eq!(Reason::from_apns(400, "SomethingNew"), Reason::InvalidRequest);
        assert_eq!(Reason::from_fcm(502, "", "", "bad gateway"), Reason::ProviderError);
        assert_eq!(Reason::from_fcm(400, "", "", ""), Reason::InvalidRequest);
    }
}
