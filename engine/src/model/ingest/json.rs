//! Reading values out of foreign JSON records (Segment, mapped shapes): times, ids, properties
//! and devices, each refused with the field it came from when it does not fit.

use chrono::DateTime;
use serde_json::{Map, Value};

use super::{super::checks::check_timestamp, TimeUnit};
use crate::model::{CodecError, Device, Platform, Properties, PropertyValue};

/// Builds the errors of one foreign format, naming the field (a JSON pointer or key).
#[derive(Clone, Copy)]
pub(super) struct Fields {
    /// Name of the format, as shown in reasons (e.g. `Segment`).
    pub format: &'static str,
}

impl Fields {
    /// The error for `field`.
    pub fn invalid(self, field: &str, reason: impl Into<String>) -> CodecError {
        CodecError::Format {
            format: self.format.to_string(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// Parses `bytes` as one JSON object.
    pub fn object(self, bytes: &[u8]) -> Result<Map<String, Value>, CodecError> {
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(object)) => Ok(object),
            Ok(other) => {
                Err(self.invalid("(document)", format!("a JSON object, not {}", kind(&other))))
            }
            Err(e) => Err(self.invalid("(document)", e.to_string())),
        }
    }

    /// The text at `field`: a string, or a number written as text (ids are often numbers);
    /// `None` when absent, null or empty.
    pub fn text(self, value: Option<&Value>, field: &str) -> Result<Option<String>, CodecError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(other) => {
                Err(self.invalid(field, format!("text expected, found {}", kind(other))))
            }
        }
    }

    /// The time at `field` in epoch milliseconds: RFC 3339 text, or a number in `unit`s.
    pub fn time(
        self,
        value: Option<&Value>,
        field: &str,
        unit: TimeUnit,
    ) -> Result<i64, CodecError> {
        let ms = match value {
            Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
                .map_err(|e| self.invalid(field, format!("{text:?} is not an RFC 3339 time: {e}")))?
                .timestamp_millis(),
            Some(Value::Number(number)) => {
                let whole = match unit {
                    TimeUnit::Milliseconds => number.as_i64(),
                    TimeUnit::Seconds => None,
                };
                let scale = if unit == TimeUnit::Seconds { 1000.0 } else { 1.0 };
                let fraction = || {
                    number
                        .as_f64()
                        .map(|n| n * scale)
                        .filter(|ms| ms.is_finite() && ms.abs() < 9.0e15)
                        .map(|ms| ms.floor() as i64)
                };
                whole
                    .or_else(fraction)
                    .ok_or_else(|| self.invalid(field, format!("{number} is out of range")))?
            }
            None | Some(Value::Null) => return Err(self.invalid(field, "missing")),
            Some(other) => {
                return Err(self.invalid(field, format!("a time expected, found {}", kind(other))))
            }
        };
        check_timestamp("", ms).map_err(|e| self.invalid(field, e.reason))?;
        Ok(ms)
    }

    /// The properties of the object at `field` (absent or null: none). Nested objects are
    /// flattened into dotted names (`address.city`); lists are kept as their JSON text.
    pub fn properties(self, value: Option<&Value>, field: &str) -> Result<Properties, CodecError> {
        let mut properties = Properties::new();
        match value {
            None | Some(Value::Null) => {}
            Some(Value::Object(object)) => flatten(object, "", &mut properties),
            Some(other) => {
                return Err(
                    self.invalid(field, format!("an object expected, found {}", kind(other)))
                )
            }
        }
        Ok(properties)
    }

    /// The devices of the list at `field`, in Herald's field names (`device_id`, `platform`,
    /// `token`, …); the platform in any case, the device id defaulting to the token.
    pub fn devices(self, value: Option<&Value>, field: &str) -> Result<Vec<Device>, CodecError> {
        match value {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let at = |key: &str| item.get(key);
                    let field = format!("{field}/{i}");
                    let token = self.text(at("token"), &format!("{field}/token"))?;
                    let platform = self.text(at("platform"), &format!("{field}/platform"))?;
                    self.device(
                        DeviceFields {
                            id: self.text(at("device_id"), &format!("{field}/device_id"))?,
                            platform: platform.as_deref(),
                            token,
                            app_version: self.text(at("app_version"), &field)?,
                            os_version: self.text(at("os_version"), &field)?,
                            make: self.text(at("make"), &field)?,
                            model: self.text(at("model"), &field)?,
                            sdk_version: self.text(at("sdk_version"), &field)?,
                        },
                        &field,
                    )
                })
                .collect(),
            Some(other) => {
                Err(self.invalid(field, format!("a list expected, found {}", kind(other))))
            }
        }
    }

    /// A device from its fields read at `field`.
    pub fn device(self, fields: DeviceFields<'_>, field: &str) -> Result<Device, CodecError> {
        let token = fields.token.ok_or_else(|| self.invalid(field, "a device needs a token"))?;
        let platform = match fields.platform.map(str::to_ascii_lowercase).as_deref() {
            Some("ios") => Platform::Ios,
            Some("android") => Platform::Android,
            other => {
                return Err(self.invalid(
                    field,
                    format!("device platform must be ios or android, found {other:?}"),
                ))
            }
        };
        Ok(Device {
            device_id: fields.id.unwrap_or_else(|| token.clone()),
            platform,
            token,
            app_version: fields.app_version,
            os_version: fields.os_version,
            make: fields.make,
            model: fields.model,
            sdk_version: fields.sdk_version,
        })
    }
}

/// Where a foreign record's app id comes from: a field of the record, else a constant.
pub(super) struct AppSource {
    /// JSON pointer to the app id in the record.
    pub field: Option<String>,
    /// App id of records without one.
    pub constant: Option<String>,
}

impl AppSource {
    /// The app id of `object`.
    pub fn app(&self, object: &Map<String, Value>, fields: Fields) -> Result<String, CodecError> {
        let found = match &self.field {
            Some(field) => fields.text(pointer(object, field), field)?,
            None => None,
        };
        found.or_else(|| self.constant.clone()).ok_or_else(|| {
            fields.invalid(
                self.field.as_deref().unwrap_or("app"),
                "no app id, and the topic has no default `app`",
            )
        })
    }
}

/// The value at JSON pointer `pointer` (RFC 6901, e.g. `/user/id`) inside `object`.
pub(super) fn pointer<'a>(object: &'a Map<String, Value>, pointer: &str) -> Option<&'a Value> {
    let rest = pointer.strip_prefix('/')?;
    let (first, rest) = match rest.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (rest, None),
    };
    let value = object.get(&first.replace("~1", "/").replace("~0", "~"))?;
    match rest {
        None => Some(value),
        Some(rest) => value.pointer(&format!("/{rest}")),
    }
}

/// A device's values as read from a foreign shape.
pub(super) struct DeviceFields<'a> {
    pub id: Option<String>,
    pub platform: Option<&'a str>,
    pub token: Option<String>,
    pub app_version: Option<String>,
    pub os_version: Option<String>,
    pub make: Option<String>,
    pub model: Option<String>,
    pub sdk_version: Option<String>,
}

fn flatten(object: &Map<String, Value>, prefix: &str, into: &mut Properties) {
    for (key, value) in object {
        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let property = match value {
            Value::Null => PropertyValue::Null,
            Value::Bool(b) => PropertyValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(long) => PropertyValue::Long(long),
                None => PropertyValue::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => PropertyValue::String(s.clone()),
            Value::Array(_) => PropertyValue::String(value.to_string()),
            Value::Object(inner) => {
                flatten(inner, &name, into);
                continue;
            }
        };
        into.insert(name, property);
    }
}

/// What kind of JSON value this is, for reasons.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const F: Fields = Fields { format: "Test" };

    #[test]
    fn times_are_rfc3339_or_numbers_in_range() {
        let ms = TimeUnit::Milliseconds;
        assert_eq!(
            F.time(Some(&json!("2026-11-27T10:00:00.250Z")), "/t", ms).unwrap(),
            1_795_773_600_250
        );
        assert_eq!(
            F.time(Some(&json!(1_795_773_600_250_i64)), "/t", ms).unwrap(),
            1_795_773_600_250
        );
        assert_eq!(
            F.time(Some(&json!(1_795_773_600.25)), "/t", TimeUnit::Seconds).unwrap(),
            1_795_773_600_250
        );
        for bad in [json!(i64::MIN), json!(-1), json!(1e300), json!("yesterday"), json!(true)] {
            let error = F.time(Some(&bad), "/t", ms).unwrap_err().to_string();
            assert!(error.starts_with("Test record: /t: "), "{bad}: {error}");
        }
        assert_eq!(F.time(None, "/t", ms).unwrap_err().to_string(), "Test record: /t: missing");
    }

    #[test]
    fn nested_properties_flatten_and_lists_stay_json() {
        let props = F
            .properties(
                Some(&json!({"a": {"b": 1, "c": {"d": "x"}}, "l": [1, 2], "f": 2.5, "n": null})),
                "/p",
            )
            .unwrap();
        assert_eq!(props["a.b"], PropertyValue::Long(1));
        assert_eq!(props["a.c.d"], PropertyValue::String("x".into()));
        assert_eq!(props["l"], PropertyValue::String("[1,2]".into()));
        assert_eq!(props["f"], PropertyValue::Double(2.5));
        assert_eq!(props["n"], PropertyValue::Null);
        assert!(F.properties(Some(&json!([1])), "/p").is_err());
    }

    #[test]
    fn devices_need_a_token_and_a_known_platform() {
        let devices = F
            .devices(Some(&json!([{"platform": "iOS", "token": "t1"}, {"platform": "ANDROID", "token": "t2", "device_id": "d2"}])), "/d")
            .unwrap();
        assert_eq!((devices[0].device_id.as_str(), devices[0].platform), ("t1", Platform::Ios));
        assert_eq!((devices[1].device_id.as_str(), devices[1].platform), ("d2", Platform::Android));
        let error = F.devices(Some(&json!([{"platform": "web", "token": "t"}])), "/d").unwrap_err();
        assert!(
            error.to_string().contains("/d/0: device platform must be ios or android"),
            "{error}"
        );
        assert!(F.devices(Some(&json!([{"platform": "ios"}])), "/d").is_err());
    }
}
