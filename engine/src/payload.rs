//! Platform payloads: a rendered message and its push options become the APNs request (JSON
//! body and headers) or the FCM HTTP v1 message. Payloads over the platform limit are refused,
//! never truncated.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::{
    campaign::{Priority, PushOptions},
    model::Platform,
};

/// Largest payload APNs and FCM accept, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// Longest time to live FCM accepts: 28 days (its `ttl` is from 0 to 2,419,200 s). APNs keeps a
/// notification a limited time too: its expiration is clamped the same way.
const MAX_TTL_MS: i64 = 28 * 86_400_000;

/// A time to live as the providers take it: from 0 to [`MAX_TTL_MS`], whatever was asked (an
/// unbounded or negative value never overflows the arithmetic nor makes an invalid request).
fn provider_ttl_ms(ttl_ms: i64) -> i64 {
    ttl_ms.clamp(0, MAX_TTL_MS)
}

/// A message's texts after rendering for one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderedMessage {
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Subtitle (iOS).
    pub subtitle: Option<String>,
    /// Deep link opened on tap.
    pub deep_link: Option<String>,
    /// Image URL (rich media).
    pub image_url: Option<String>,
}

/// Who the payload is for and where it came from; carried in the payload for attribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing<'a> {
    /// Campaign id.
    pub campaign: &'a str,
    /// Variant id.
    pub variant: &'a str,
    /// Deterministic message id ([`message_id`]).
    pub message_id: &'a str,
    /// Device token (FCM puts it in the message).
    pub token: &'a str,
}

/// Why no payload was built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// Over the platform limit.
    #[error("{platform} payload is {bytes} bytes; the limit is {MAX_PAYLOAD_BYTES}")]
    TooLarge {
        /// `apns` or `fcm`.
        platform: &'static str,
        /// Its size.
        bytes: usize,
    },
}

impl PayloadError {
    /// Reason recorded in skip counts.
    pub fn reason(&self) -> &'static str {
        match self {
            PayloadError::TooLarge { .. } => "payload_too_large",
        }
    }
}

/// An APNs request: the JSON body and the `apns-*` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct ApnsRequest {
    /// JSON body.
    pub body: String,
    /// Headers: apns-push-type, apns-priority, apns-id, and when set apns-collapse-id,
    /// apns-expiration.
    pub headers: BTreeMap<String, String>,
}

/// A deterministic message id for (campaign, run, user, device): the first 128 bits of their
/// SHA-256, formatted as a UUID (APNs `apns-id` requires one), so duplicates are recognisable
/// downstream and distinct sends never share an id.
pub fn message_id(campaign: &str, run: &str, user: &str, device: &str) -> String {
    let key = format!("{campaign}\u{0}{run}\u{0}{user}\u{0}{device}");
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid_text(bytes, 0x80) // version 8: custom
}

/// A fresh message id for one test send (`herald campaign test-send`): a random UUID
/// (version 4), so no two test sends share an id (senders never de-duplicate one against a
/// later one) and none equals a campaign send's [`message_id`] (version 8). The user stage
/// leaves receipts and notification events of test ids out of campaign stats
/// ([`is_test_message_id`]).
pub fn test_message_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system random generator works");
    uuid_text(bytes, 0x40)
}

/// Whether `id` is a test send's id ([`test_message_id`]): a UUID of version 4.
pub fn is_test_message_id(id: &str) -> bool {
    id.len() == 36 && id.as_bytes()[14] == b'4' && id.as_bytes()[8] == b'-'
}

/// `bytes` as a UUID of `version` (high nibble) with the RFC 4122 variant.
fn uuid_text(mut bytes: [u8; 16], version: u8) -> String {
    bytes[6] = (bytes[6] & 0x0f) | version;
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

fn herald_section(
    message: &RenderedMessage,
    options: &PushOptions,
    to: &Addressing<'_>,
) -> Map<String, Value> {
    let mut herald = Map::new();
    herald.insert("campaign_id".into(), json!(to.campaign));
    herald.insert("variant_id".into(), json!(to.variant));
    herald.insert("message_id".into(), json!(to.message_id));
    let mut set = |key: &str, value: Option<&String>| {
        if let Some(value) = value {
            herald.insert(key.into(), json!(value));
        }
    };
    set("deep_link", message.deep_link.as_ref());
    set("external_url", options.external_url.as_ref());
    set("image_url", message.image_url.as_ref());
    set("video_url", options.video_url.as_ref());
    if !options.carousel.is_empty() {
        let cards: Vec<Value> = options
            .carousel
            .iter()
            .map(|c| json!({"image_url": c.image_url, "caption": c.caption, "sub_caption": c.sub_caption, "link": c.link}))
            .collect();
        herald.insert("carousel".into(), Value::Array(cards));
    }
    if !options.actions.is_empty() {
        let actions: Vec<Value> = options
            .actions
            .iter()
            .map(|a| json!({"id": a.id, "title": a.title, "link": a.link}))
            .collect();
        herald.insert("actions".into(), Value::Array(actions));
    }
    herald
}

fn checked(platform: &'static str, body: String) -> Result<String, PayloadError> {
    if body.len() > MAX_PAYLOAD_BYTES {
        return Err(PayloadError::TooLarge { platform, bytes: body.len() });
    }
    Ok(body)
}

/// The APNs request for `message` with `options`, sent at `now_ms`.
pub fn apns(
    message: &RenderedMessage,
    options: &PushOptions,
    to: &Addressing<'_>,
    now_ms: i64,
) -> Result<ApnsRequest, PayloadError> {
    let mut aps = Map::new();
    if options.silent {
        aps.insert("content-available".into(), json!(1));
    } else {
        let mut alert = Map::new();
        alert.insert("title".into(), json!(message.title));
        if let Some(subtitle) = &message.subtitle {
            alert.insert("subtitle".into(), json!(subtitle));
        }
        alert.insert("body".into(), json!(message.body));
        aps.insert("alert".into(), Value::Object(alert));
        if let Some(sound) = &options.sound {
            aps.insert("sound".into(), json!(sound));
        }
        if let Some(level) = options.interruption_level {
            aps.insert("interruption-level".into(), json!(level.as_apns()));
        }
    }
    if let Some(badge) = options.badge {
        aps.insert("badge".into(), json!(badge));
    }
    if let Some(category) = &options.category {
        aps.insert("category".into(), json!(category));
    }
    if let Some(thread) = &options.thread_id {
        aps.insert("thread-id".into(), json!(thread));
    }
    let rich =
        message.image_url.is_some() || options.video_url.is_some() || !options.carousel.is_empty();
    if options.mutable_content || rich {
        aps.insert("mutable-content".into(), json!(1));
    }
    let mut root = Map::new();
    root.insert("aps".into(), Value::Object(aps));
    root.insert("herald".into(), Value::Object(herald_section(message, options, to)));
    for (key, value) in &options.data {
        if key != "aps" && key != "herald" {
            root.insert(key.clone(), json!(value));
        }
    }
    let body = checked("apns", Value::Object(root).to_string())?;
    let mut headers = BTreeMap::new();
    let (push_type, priority) = if options.silent { ("background", "5") } else { ("alert", "10") };
    headers.insert("apns-push-type".into(), push_type.into());
    headers.insert("apns-priority".into(), priority.into());
    headers.insert("apns-id".into(), to.message_id.into());
    if let Some(collapse) = &options.collapse_id {
        headers.insert("apns-collapse-id".into(), collapse.clone());
    }
    if let Some(ttl) = options.ttl_ms {
        let expires_ms = now_ms.max(0).saturating_add(provider_ttl_ms(ttl));
        headers.insert("apns-expiration".into(), (expires_ms / 1000).to_string());
    }
    Ok(ApnsRequest { body, headers })
}

/// The request for a device on `platform`: the JSON body and the provider headers (none for
/// FCM).
pub fn request(
    platform: Platform,
    message: &RenderedMessage,
    options: &PushOptions,
    to: &Addressing<'_>,
    now_ms: i64,
) -> Result<(String, BTreeMap<String, String>), PayloadError> {
    match platform {
        Platform::Ios => apns(message, options, to, now_ms).map(|r| (r.body, r.headers)),
        Platform::Android => fcm(message, options, to).map(|body| (body, BTreeMap::new())),
    }
}

/// The FCM HTTP v1 request body (`{"message": …}`) for `message` with `options`.
pub fn fcm(
    message: &RenderedMessage,
    options: &PushOptions,
    to: &Addressing<'_>,
) -> Result<String, PayloadError> {
    // FCM data values are strings; structured parts travel as JSON text.
    let mut data: Map<String, Value> =
        options.data.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    for (key, value) in herald_section(message, options, to) {
        let text = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        data.insert(format!("herald_{key}"), json!(text));
    }
    let mut android = Map::new();
    let priority = match options.priority {
        Priority::Max | Priority::High => "HIGH",
        Priority::Default => "NORMAL",
    };
    android.insert("priority".into(), json!(priority));
    if let Some(ttl) = options.ttl_ms {
        android.insert("ttl".into(), json!(format!("{}s", provider_ttl_ms(ttl) / 1000)));
    }
    if let Some(collapse) = &options.collapse_id {
        android.insert("collapse_key".into(), json!(collapse));
    }
    let mut fcm_message = Map::new();
    fcm_message.insert("token".into(), json!(to.token));
    if !options.silent {
        let mut notification = Map::new();
        notification.insert("title".into(), json!(message.title));
        notification.insert("body".into(), json!(message.body));
        if let Some(image) = &message.image_url {
            notification.insert("image".into(), json!(image));
        }
        fcm_message.insert("notification".into(), Value::Object(notification));
        let mut android_notification = Map::new();
        if let Some(channel) = &options.channel_id {
            android_notification.insert("channel_id".into(), json!(channel));
        }
        if let Some(action) = &options.click_action {
            android_notification.insert("click_action".into(), json!(action));
        }
        if let Some(sound) = &options.sound {
            android_notification.insert("sound".into(), json!(sound));
        }
        if let Some(image) = &message.image_url {
            android_notification.insert("image".into(), json!(image));
        }
        if !android_notification.is_empty() {
            android.insert("notification".into(), Value::Object(android_notification));
        }
    }
    fcm_message.insert("android".into(), Value::Object(android));
    fcm_message.insert("data".into(), Value::Object(data));
    checked("fcm", json!({ "message": fcm_message }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::{Action, CarouselItem, InterruptionLevel};

    fn to() -> Addressing<'static> {
        Addressing { campaign: "c", variant: "B", message_id: "m-1", token: "tok" }
    }

    fn full_options() -> PushOptions {
        PushOptions {
            sound: Some("ping.caf".into()),
            badge: Some(3),
            category: Some("CART".into()),
            thread_id: Some("cart".into()),
            mutable_content: true,
            silent: false,
            interruption_level: Some(InterruptionLevel::TimeSensitive),
            collapse_id: Some("cart-u1".into()),
            ttl_ms: Some(3_600_000),
            priority: Priority::Max,
            channel_id: Some("offers".into()),
            click_action: Some("OPEN_CART".into()),
            video_url: Some("https://cdn/v.mp4".into()),
            carousel: vec![CarouselItem {
                image_url: "https://cdn/1.png".into(),
                caption: Some("One".into()),
                sub_caption: Some("first".into()),
                link: Some("shop://1".into()),
            }],
            actions: vec![Action {
                id: "buy".into(),
                title: "Buy".into(),
                link: Some("shop://buy".into()),
            }],
            external_url: Some("https://example.com".into()),
            data: [("coupon".to_string(), "X1".to_string())].into(),
        }
    }

    fn message() -> RenderedMessage {
        RenderedMessage {
            title: "Hé 👋".into(),
            body: "Your cart".into(),
            subtitle: Some("Sub".into()),
            deep_link: Some("shop://cart".into()),
            image_url: Some("https://cdn/i.png".into()),
        }
    }

    #[test]
    fn every_option_appears_in_the_apns_request() {
        let request = apns(&message(), &full_options(), &to(), 1_000_000).unwrap();
        let body: Value = serde_json::from_str(&request.body).unwrap();
        let aps = &body["aps"];
        assert_eq!(aps["alert"], json!({"title": "Hé 👋", "subtitle": "Sub", "body": "Your cart"}));
        assert_eq!(aps["sound"], "ping.caf");
        assert_eq!(aps["badge"], 3);
        assert_eq!(aps["category"], "CART");
        assert_eq!(aps["thread-id"], "cart");
        assert_eq!(aps["mutable-content"], 1);
        assert_eq!(aps["interruption-level"], "time-sensitive");
        assert_eq!(body["coupon"], "X1");
        let herald = &body["herald"];
        assert_eq!(herald["deep_link"], "shop://cart");
        assert_eq!(herald["external_url"], "https://example.com");
        assert_eq!(herald["video_url"], "https://cdn/v.mp4");
        assert_eq!(herald["carousel"][0]["caption"], "One");
        assert_eq!(herald["actions"][0]["id"], "buy");
        assert_eq!(herald["message_id"], "m-1");
        assert_eq!(request.headers["apns-push-type"], "alert");
        assert_eq!(request.headers["apns-priority"], "10");
        assert_eq!(request.headers["apns-collapse-id"], "cart-u1");
        assert_eq!(request.headers["apns-expiration"], "4600");
        assert_eq!(request.headers["apns-id"], "m-1");
    }

    #[test]
    fn a_huge_or_negative_ttl_gives_valid_fcm_ttl_and_apns_expiration() {
        let now = 253_402_300_799_000; // 9999-12-31T23:59:59Z, the latest time accepted
        for (ttl, fcm_ttl, apns_expiration) in [
            (i64::MAX, "2419200s", now / 1000 + 2_419_200),
            (u64::MAX as i64, "0s", now / 1000), // 2^64−1 read as a signed number
            (i64::MIN, "0s", now / 1000),
        ] {
            let options = PushOptions { ttl_ms: Some(ttl), ..full_options() };
            let body: Value =
                serde_json::from_str(&fcm(&message(), &options, &to()).unwrap()).unwrap();
            assert_eq!(body["message"]["android"]["ttl"], fcm_ttl, "{ttl}");
            let request = apns(&message(), &options, &to(), now).unwrap();
            assert_eq!(request.headers["apns-expiration"], apns_expiration.to_string(), "{ttl}");
        }
    }

    #[test]
    fn silent_apns_push_is_background_with_priority_5() {
        let options = PushOptions { silent: true, ..PushOptions::default() };
        let request = apns(&RenderedMessage::default(), &options, &to(), 0).unwrap();
        let body: Value = serde_json::from_str(&request.body).unwrap();
        assert_eq!(body["aps"], json!({"content-available": 1}));
        assert_eq!(request.headers["apns-push-type"], "background");
        assert_eq!(request.headers["apns-priority"], "5");
    }

    #[test]
    fn every_option_appears_in_the_fcm_message() {
        let body: Value =
            serde_json::from_str(&fcm(&message(), &full_options(), &to()).unwrap()).unwrap();
        let m = &body["message"];
        assert_eq!(m["token"], "tok");
        assert_eq!(
            m["notification"],
            json!({"title": "Hé 👋", "body": "Your cart", "image": "https://cdn/i.png"})
        );
        assert_eq!(m["android"]["priority"], "HIGH");
        assert_eq!(m["android"]["ttl"], "3600s");
        assert_eq!(m["android"]["collapse_key"], "cart-u1");
        assert_eq!(m["android"]["notification"]["channel_id"], "offers");
        assert_eq!(m["android"]["notification"]["click_action"], "OPEN_CART");
        assert_eq!(m["android"]["notification"]["sound"], "ping.caf");
        assert_eq!(m["data"]["coupon"], "X1");
        assert_eq!(m["data"]["herald_deep_link"], "shop://cart");
        let actions: Value =
            serde_json::from_str(m["data"]["herald_actions"].as_str().unwrap()).unwrap();
        assert_eq!(actions[0]["title"], "Buy");
        let default = PushOptions::default();
        let body: Value = serde_json::from_str(&fcm(&message(), &default, &to()).unwrap()).unwrap();
        assert_eq!(body["message"]["android"]["priority"], "NORMAL", "default maps to normal");
    }

    #[test]
    fn a_5_kb_payload_is_refused_not_truncated() {
        let big = RenderedMessage { body: "x".repeat(5 * 1024), ..message() };
        let err = apns(&big, &PushOptions::default(), &to(), 0).unwrap_err();
        assert!(
            matches!(err, PayloadError::TooLarge { platform: "apns", bytes } if bytes > 5 * 1024)
        );
        assert_eq!(err.reason(), "payload_too_large");
        assert!(matches!(
            fcm(&big, &PushOptions::default(), &to()),
            Err(PayloadError::TooLarge { platform: "fcm", .. })
        ));
    }

    #[test]
    fn message_ids_are_deterministic_uuids() {
        let a = message_id("c", "r", "u", "d");
        assert_eq!(a, message_id("c", "r", "u", "d"));
        assert_ne!(a, message_id("c", "r", "u", "d2"));
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn test_ids_are_fresh_uuids_told_apart_from_campaign_ids() {
        let (a, b) = (test_message_id(), test_message_id());
        assert_ne!(a, b);
        assert!(is_test_message_id(&a) && is_test_message_id(&b), "{a} {b}");
        assert_eq!(a.len(), 36);
        let campaign_ids = (0..1000).map(|i| message_id("c", "r", &format!("u{i}"), "d"));
        assert!(campaign_ids.into_iter().all(|id| !is_test_message_id(&id)));
        assert!(!is_test_message_id("bench-1"));
    }

    #[test]
    fn a_million_users_get_a_million_distinct_message_ids() {
        // A 32-bit hash (the first version) collided twice among 100,000 users.
        let ids: std::collections::HashSet<String> =
            (0..1_000_000).map(|i| message_id("c", "run", &format!("u{i}"), "d")).collect();
        assert_eq!(ids.len(), 1_000_000);
    }
}
