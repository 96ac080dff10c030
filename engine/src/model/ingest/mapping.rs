//! JSON records of any shape, read through a topic's configured [`JsonMapping`]: which field is
//! the user, the time, the event name, the id, the properties, the devices.

use super::{
    json::{pointer, AppSource, Fields},
    IngestKind, IngestRecord, JsonMapping,
};
use crate::model::{AppEvent, CodecError, ProfileUpdate};

const F: Fields = Fields { format: "Mapped JSON" };

/// Decodes mapped JSON into Herald records.
pub(super) struct MappingDecoder {
    /// Field pointers.
    pub mapping: JsonMapping,
    /// Where a record's app id comes from.
    pub app: AppSource,
}

impl MappingDecoder {
    /// The record of one message on a topic carrying `kind` records.
    pub fn decode(&self, kind: IngestKind, bytes: &[u8]) -> Result<IngestRecord, CodecError> {
        let object = F.object(bytes)?;
        let m = &self.mapping;
        let at = |field: &str| pointer(&object, field);
        let optional = |field: &Option<String>| field.as_deref().and_then(at);
        let shown = |field: &Option<String>| field.clone().unwrap_or_default();
        let app_id = self.app.app(&object, F)?;
        let user_id =
            F.text(at(&m.user), &m.user)?.ok_or_else(|| F.invalid(&m.user, "missing user id"))?;
        let timestamp_ms = F.time(at(&m.time), &m.time, m.time_unit)?;
        let properties = F.properties(optional(&m.properties), &shown(&m.properties))?;
        Ok(match kind {
            IngestKind::Events => {
                let name_field = shown(&m.event);
                let name = F
                    .text(optional(&m.event), &name_field)?
                    .ok_or_else(|| F.invalid(&name_field, "missing event name"))?;
                IngestRecord::Event(AppEvent {
                    event_id: F.text(optional(&m.id), &shown(&m.id))?.unwrap_or_default(),
                    app_id,
                    user_id,
                    name,
                    timestamp_ms,
                    properties,
                    sdk_version: None,
                })
            }
            IngestKind::Profiles => IngestRecord::Profile(ProfileUpdate {
                app_id,
                user_id,
                timestamp_ms,
                set: properties,
                unset: Vec::new(),
                devices_added: F.devices(optional(&m.devices), &shown(&m.devices))?,
                tokens_removed: Vec::new(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{Platform, PropertyValue, TimeUnit};

    fn decoder(kind: IngestKind) -> MappingDecoder {
        let events = kind == IngestKind::Events;
        MappingDecoder {
            mapping: JsonMapping {
                user: "/who/id".into(),
                time: "/at".into(),
                time_unit: TimeUnit::Seconds,
                event: events.then(|| "/what".into()),
                id: events.then(|| "/uuid".into()),
                properties: Some("/data".into()),
                devices: (!events).then(|| "/devices".into()),
            },
            app: AppSource { field: Some("/app".into()), constant: Some("shop".into()) },
        }
    }

    #[test]
    fn an_event_is_read_through_the_pointers() {
        let bytes = json!({"who": {"id": 42}, "at": 1_795_773_600, "what": "Opened", "uuid": "e-1",
                           "data": {"screen": "home"}})
        .to_string();
        let IngestRecord::Event(event) =
            decoder(IngestKind::Events).decode(IngestKind::Events, bytes.as_bytes()).unwrap()
        else {
            panic!("not an event")
        };
        assert_eq!(
            (
                event.user_id.as_str(),
                event.name.as_str(),
                event.event_id.as_str(),
                event.app_id.as_str()
            ),
            ("42", "Opened", "e-1", "shop")
        );
        assert_eq!(event.timestamp_ms, 1_795_773_600_000);
        assert_eq!(event.properties["screen"], PropertyValue::String("home".into()));
    }

    #[test]
    fn a_profile_takes_properties_and_devices() {
        let bytes = json!({"who": {"id": "u1"}, "at": "2026-11-27T10:00:00Z", "app": "other",
                           "data": {"plan": "pro"}, "devices": [{"platform": "android", "token": "t"}]})
        .to_string();
        let IngestRecord::Profile(update) =
            decoder(IngestKind::Profiles).decode(IngestKind::Profiles, bytes.as_bytes()).unwrap()
        else {
            panic!("not a profile")
        };
        assert_eq!((update.user_id.as_str(), update.app_id.as_str()), ("u1", "other"));
        assert_eq!(update.set["plan"], PropertyValue::String("pro".into()));
        assert_eq!(update.devices_added[0].platform, Platform::Android);
    }

    #[test]
    fn missing_or_bad_fields_are_named_by_their_pointer() {
        let reason = |value: serde_json::Value| {
            decoder(IngestKind::Events)
                .decode(IngestKind::Events, value.to_string().as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            reason(json!({"at": 1, "what": "x"})),
            "Mapped JSON record: /who/id: missing user id"
        );
        assert_eq!(
            reason(json!({"who": {"id": "u"}, "at": 1})),
            "Mapped JSON record: /what: missing event name"
        );
        assert!(reason(json!({"who": {"id": "u"}, "what": "x", "at": -5}))
            .starts_with("Mapped JSON record: /at: -5000 is outside"));
        assert!(reason(json!({"who": {"id": ["u"]}, "at": 1, "what": "x"}))
            .starts_with("Mapped JSON record: /who/id: text expected"));
        assert!(reason(json!({"who": {"id": "u"}, "at": 1, "what": "x", "data": 3}))
            .starts_with("Mapped JSON record: /data: an object expected"));
    }
}
