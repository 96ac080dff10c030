//! Segment-spec JSON messages (`track`, `screen`, `page`, `identify`, `alias`) as Herald
//! records. Mapping in `docs/ingest.md`.

use serde_json::{Map, Value};

use super::{
    json::{AppSource, DeviceFields, Fields},
    IngestRecord, TimeUnit, UserAlias,
};
use crate::model::{AppEvent, CodecError, ProfileUpdate, PropertyValue};

const F: Fields = Fields { format: "Segment" };

/// Event name of `screen` messages (the screen's name is the `name` property).
pub const SCREEN_EVENT: &str = "Screen Viewed";
/// Event name of `page` messages (the page's name is the `name` property).
pub const PAGE_EVENT: &str = "Page Viewed";

/// The message types ingested.
const TYPES: &str = "track, screen, page, identify and alias";
/// Why an alias message without both ids is refused.
const ALIAS_NEEDS: &str = "an alias message needs previousId (or anonymousId) and userId";

/// Decodes Segment messages into Herald records.
pub(super) struct SegmentDecoder {
    /// Where a message's app id comes from.
    pub app: AppSource,
}

/// One message's fields common to every type.
struct Message<'a> {
    object: &'a Map<String, Value>,
    app_id: String,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    timestamp_ms: i64,
}

impl SegmentDecoder {
    /// The records of one message.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<IngestRecord>, CodecError> {
        let object = F.object(bytes)?;
        let kind =
            F.text(object.get("type"), "type")?.ok_or_else(|| F.invalid("type", "missing"))?;
        let object = &object;
        let timestamp = object.get("timestamp").or_else(|| object.get("originalTimestamp"));
        let message = Message {
            object,
            app_id: self.app.app(object, F)?,
            user_id: F.text(object.get("userId"), "userId")?,
            anonymous_id: F.text(object.get("anonymousId"), "anonymousId")?,
            timestamp_ms: F.time(timestamp, "timestamp", TimeUnit::Milliseconds)?,
        };
        match kind.as_str() {
            "track" => {
                let name = F
                    .text(object.get("event"), "event")?
                    .ok_or_else(|| F.invalid("event", "a track message needs an event name"))?;
                Ok(vec![IngestRecord::Event(message.event(name)?)])
            }
            "screen" => Ok(vec![IngestRecord::Event(message.named_view(SCREEN_EVENT)?)]),
            "page" => Ok(vec![IngestRecord::Event(message.named_view(PAGE_EVENT)?)]),
            "identify" => {
                let mut records = vec![IngestRecord::Profile(message.profile()?)];
                records
                    .extend(message.alias(message.anonymous_id.clone()).map(IngestRecord::Alias));
                Ok(records)
            }
            "alias" => {
                let previous = F.text(object.get("previousId"), "previousId")?;
                let alias = message
                    .alias(previous.or_else(|| message.anonymous_id.clone()))
                    .ok_or_else(|| F.invalid("previousId", ALIAS_NEEDS))?;
                Ok(vec![IngestRecord::Alias(alias)])
            }
            other => {
                Err(F.invalid("type", format!("{other:?} messages are not ingested ({TYPES} are)")))
            }
        }
    }
}

impl Message<'_> {
    /// The known user id, else the anonymous one.
    fn user(&self) -> Result<String, CodecError> {
        self.user_id
            .clone()
            .or_else(|| self.anonymous_id.clone())
            .ok_or_else(|| F.invalid("userId", "neither userId nor anonymousId is set"))
    }

    fn context(&self, path: &str) -> Option<&Value> {
        self.object.get("context").and_then(|context| context.pointer(path))
    }

    fn event(&self, name: String) -> Result<AppEvent, CodecError> {
        Ok(AppEvent {
            event_id: F.text(self.object.get("messageId"), "messageId")?.unwrap_or_default(),
            app_id: self.app_id.clone(),
            user_id: self.user()?,
            name,
            timestamp_ms: self.timestamp_ms,
            properties: F.properties(self.object.get("properties"), "properties")?,
            sdk_version: F.text(self.context("/library/version"), "context.library.version")?,
        })
    }

    /// A `screen` or `page` message: event `name`, the screen's or page's name as the `name`
    /// property.
    fn named_view(&self, name: &str) -> Result<AppEvent, CodecError> {
        let mut event = self.event(name.to_string())?;
        if let Some(viewed) = F.text(self.object.get("name"), "name")? {
            event.properties.insert("name".into(), PropertyValue::String(viewed));
        }
        Ok(event)
    }

    /// An `identify` message: traits set on the profile, and the device of `context.device`
    /// when it carries a push token.
    fn profile(&self) -> Result<ProfileUpdate, CodecError> {
        let text = |path: &str, field: &str| F.text(self.context(path), field);
        let token = text("/device/token", "context.device.token")?;
        let devices_added = match token {
            None => Vec::new(),
            Some(token) => {
                let platform = match text("/device/type", "context.device.type")? {
                    Some(platform) => Some(platform),
                    None => text("/os/name", "context.os.name")?,
                };
                vec![F.device(
                    DeviceFields {
                        id: text("/device/id", "context.device.id")?,
                        platform: platform.as_deref(),
                        token: Some(token),
                        app_version: text("/app/version", "context.app.version")?,
                        os_version: text("/os/version", "context.os.version")?,
                        make: text("/device/manufacturer", "context.device.manufacturer")?,
                        model: text("/device/model", "context.device.model")?,
                        sdk_version: text("/library/version", "context.library.version")?,
                    },
                    "context.device",
                )?]
            }
        };
        Ok(ProfileUpdate {
            app_id: self.app_id.clone(),
            user_id: self.user()?,
            timestamp_ms: self.timestamp_ms,
            set: F.properties(self.object.get("traits"), "traits")?,
            unset: Vec::new(),
            devices_added,
            tokens_removed: Vec::new(),
        })
    }

    /// The alias of `anonymous` to the message's user id, when both are set and differ.
    fn alias(&self, anonymous: Option<String>) -> Option<UserAlias> {
        let (anonymous_id, user_id) = (anonymous?, self.user_id.clone()?);
        (anonymous_id != user_id).then(|| UserAlias {
            app_id: self.app_id.clone(),
            anonymous_id,
            user_id,
            timestamp_ms: self.timestamp_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{Platform, Properties};

    fn decoder() -> SegmentDecoder {
        SegmentDecoder {
            app: AppSource {
                field: Some("/context/app/namespace".into()),
                constant: Some("shop".into()),
            },
        }
    }

    fn decode(message: Value) -> Result<Vec<IngestRecord>, CodecError> {
        decoder().decode(message.to_string().as_bytes())
    }

    #[test]
    fn track_becomes_an_event() {
        let records = decode(json!({
            "type": "track", "event": "Added To Cart", "userId": "u1", "anonymousId": "a1",
            "messageId": "m-1", "timestamp": "2026-11-27T10:00:00.000Z",
            "properties": {"item": "tea", "price": 12.5, "qty": 2},
            "context": {"library": {"name": "analytics-ios", "version": "4.1.0"}}
        }))
        .unwrap();
        let expected = AppEvent {
            event_id: "m-1".into(),
            app_id: "shop".into(),
            user_id: "u1".into(),
            name: "Added To Cart".into(),
            timestamp_ms: 1_795_773_600_000,
            properties: Properties::from([
                ("item".into(), PropertyValue::String("tea".into())),
                ("price".into(), PropertyValue::Double(12.5)),
                ("qty".into(), PropertyValue::Long(2)),
            ]),
            sdk_version: Some("4.1.0".into()),
        };
        assert_eq!(records, vec![IngestRecord::Event(expected)]);
    }

    #[test]
    fn screen_and_page_are_named_view_events_of_the_anonymous_user() {
        for (kind, name) in [("screen", SCREEN_EVENT), ("page", PAGE_EVENT)] {
            let records = decode(json!({
                "type": kind, "name": "Checkout", "anonymousId": "a1", "originalTimestamp": "2026-11-27T10:00:00Z",
                "context": {"app": {"namespace": "com.shop.ios"}}
            }))
            .unwrap();
            let [IngestRecord::Event(event)] = records.as_slice() else { panic!("{records:?}") };
            assert_eq!((event.name.as_str(), event.user_id.as_str()), (name, "a1"));
            assert_eq!(event.app_id, "com.shop.ios", "app from app_field");
            assert_eq!(event.properties["name"], PropertyValue::String("Checkout".into()));
            assert_eq!(event.event_id, "");
        }
    }

    #[test]
    fn identify_sets_traits_adds_the_push_device_and_aliases_the_anonymous_id() {
        let records = decode(json!({
            "type": "identify", "userId": "u1", "anonymousId": "a1", "timestamp": "2026-11-27T10:00:00Z",
            "traits": {"first_name": "Ana", "address": {"city": "Paris"}},
            "context": {"device": {"id": "dev-1", "type": "ios", "token": "tok-1", "model": "iPhone16,1", "manufacturer": "Apple"},
                        "os": {"name": "iOS", "version": "18.1"}, "app": {"version": "5.2.0"}}
        }))
        .unwrap();
        let [IngestRecord::Profile(update), IngestRecord::Alias(alias)] = records.as_slice() else {
            panic!("{records:?}")
        };
        assert_eq!(update.user_id, "u1");
        assert_eq!(update.set["first_name"], PropertyValue::String("Ana".into()));
        assert_eq!(update.set["address.city"], PropertyValue::String("Paris".into()));
        let device = &update.devices_added[0];
        assert_eq!(
            (device.device_id.as_str(), device.platform, device.token.as_str()),
            ("dev-1", Platform::Ios, "tok-1")
        );
        assert_eq!(
            (device.os_version.as_deref(), device.app_version.as_deref()),
            (Some("18.1"), Some("5.2.0"))
        );
        assert_eq!(device.make.as_deref(), Some("Apple"));
        assert_eq!(
            *alias,
            UserAlias {
                app_id: "shop".into(),
                anonymous_id: "a1".into(),
                user_id: "u1".into(),
                timestamp_ms: 1_795_773_600_000
            }
        );
    }

    #[test]
    fn identify_of_a_known_user_alone_is_no_alias_and_android_is_read_from_the_os() {
        let records = decode(json!({
            "type": "identify", "userId": "u1", "timestamp": "2026-11-27T10:00:00Z",
            "context": {"device": {"token": "fcm-1"}, "os": {"name": "Android"}}
        }))
        .unwrap();
        let [IngestRecord::Profile(update)] = records.as_slice() else { panic!("{records:?}") };
        assert_eq!(update.devices_added[0].platform, Platform::Android);
        assert_eq!(update.devices_added[0].device_id, "fcm-1");
    }

    #[test]
    fn alias_links_the_previous_id() {
        let records = decode(json!({
            "type": "alias", "previousId": "a1", "userId": "u1", "timestamp": "2026-11-27T10:00:00Z"
        }))
        .unwrap();
        let [IngestRecord::Alias(alias)] = records.as_slice() else { panic!("{records:?}") };
        assert_eq!((alias.anonymous_id.as_str(), alias.user_id.as_str()), ("a1", "u1"));
    }

    #[test]
    fn bad_messages_name_the_field() {
        let reason = |message: Value| decode(message).unwrap_err().to_string();
        let at = "2026-11-27T10:00:00Z";
        assert_eq!(reason(json!({"event": "x"})), "Segment record: type: missing");
        assert_eq!(
            reason(json!({"type": "track", "event": "x", "timestamp": at})),
            "Segment record: userId: neither userId nor anonymousId is set"
        );
        assert!(reason(json!({"type": "track", "userId": "u", "timestamp": at}))
            .starts_with("Segment record: event:"));
        assert!(reason(json!({"type": "track", "event": "x", "userId": "u"}))
            .starts_with("Segment record: timestamp: missing"));
        assert!(reason(
            json!({"type": "track", "event": "x", "userId": "u", "timestamp": i64::MIN})
        )
        .starts_with("Segment record: timestamp: -9223372036854775808 is outside"));
        assert!(reason(json!({"type": "group", "userId": "u", "timestamp": at}))
            .contains("\"group\" messages are not ingested"));
        assert!(reason(json!({"type": "alias", "userId": "u", "timestamp": at}))
            .starts_with("Segment record: previousId:"));
        assert!(reason(json!({"type": "identify", "userId": "u", "timestamp": at, "context": {"device": {"token": "t", "type": "web"}}}))
            .starts_with("Segment record: context.device: device platform must be ios or android"));
        assert!(reason(json!([1])).starts_with("Segment record: (document): a JSON object"));
    }
}
