//! A direct reader of app events written with the current `AppEvent` schema, the bulk of what
//! the events topic carries: it reads the Avro binary datum straight into an [`AppEvent`]
//! instead of through a generic Avro value and serde (a third of the decoding time). It reads
//! only the happy path: anything it does not accept (another schema version, a malformed
//! datum) is left to the generic decoder, which resolves it or names what is wrong.

use std::sync::OnceLock;

use super::super::{single_object, AppEvent, Fingerprint, Properties, PropertyValue};
use crate::model::SchemaRegistry;

/// The fingerprint the built-in registry writes app events with (the current schema).
fn current() -> Fingerprint {
    static CURRENT: OnceLock<Fingerprint> = OnceLock::new();
    *CURRENT.get_or_init(|| {
        let probe = AppEvent {
            event_id: String::new(),
            app_id: String::new(),
            user_id: String::new(),
            name: String::new(),
            timestamp_ms: 0,
            properties: Properties::new(),
            sdk_version: None,
        };
        let bytes = SchemaRegistry::builtin()
            .encode(&probe)
            .expect("an empty app event encodes with the built-in schema");
        single_object::split(&bytes).expect("the registry writes single-object records").0
    })
}

/// The app event in `bytes` (single-object, current schema), or `None` when the generic
/// decoder has to look at it. Values are not checked here.
pub(super) fn read(bytes: &[u8]) -> Option<AppEvent> {
    let (fingerprint, datum) = single_object::split(bytes).ok()?;
    if fingerprint != current() {
        return None;
    }
    let mut reader = Reader(datum);
    let event = AppEvent {
        event_id: reader.string()?,
        app_id: reader.string()?,
        user_id: reader.string()?,
        name: reader.string()?,
        timestamp_ms: reader.long()?,
        properties: reader.properties()?,
        sdk_version: match reader.long()? {
            0 => None,
            1 => Some(reader.string()?),
            _ => return None,
        },
    };
    reader.0.is_empty().then_some(event)
}

/// The unread rest of a datum.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, len: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        Some(head)
    }

    /// A zig-zag variable-length long, at most 10 bytes (as the Avro library reads them).
    fn long(&mut self) -> Option<i64> {
        let mut raw = 0u64;
        for shift in 0..10 {
            let byte = *self.take(1)?.first()?;
            raw |= u64::from(byte & 0x7f) << (shift * 7);
            if byte & 0x80 == 0 {
                return Some((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        None
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.long()?).ok()
    }

    fn string(&mut self) -> Option<String> {
        let len = self.len()?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }

    /// A map of `["null", "boolean", "long", "double", "string"]`, in blocks.
    fn properties(&mut self) -> Option<Properties> {
        let mut properties = Properties::new();
        loop {
            let count = match self.long()? {
                0 => return Some(properties),
                count if count < 0 => {
                    self.long()?; // the block's size in bytes
                    count.checked_neg()?
                }
                count => count,
            };
            for _ in 0..count {
                let key = self.string()?;
                let value = match self.long()? {
                    0 => PropertyValue::Null,
                    1 => match *self.take(1)?.first()? {
                        0 => PropertyValue::Bool(false),
                        1 => PropertyValue::Bool(true),
                        _ => return None,
                    },
                    2 => PropertyValue::Long(self.long()?),
                    3 => PropertyValue::Double(f64::from_le_bytes(self.take(8)?.try_into().ok()?)),
                    4 => PropertyValue::String(self.string()?),
                    _ => return None,
                };
                properties.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AppEvent {
        AppEvent {
            event_id: "e-1".into(),
            app_id: "shop".into(),
            user_id: "u-é".into(),
            name: "Added To Cart".into(),
            timestamp_ms: 1_764_000_000_123,
            properties: [
                ("none".to_string(), PropertyValue::Null),
                ("yes".to_string(), PropertyValue::Bool(true)),
                ("no".to_string(), PropertyValue::Bool(false)),
                ("count".to_string(), PropertyValue::Long(i64::MIN)),
                ("price".to_string(), PropertyValue::Double(-12.5)),
                ("item".to_string(), PropertyValue::String("tea".repeat(50))),
            ]
            .into(),
            sdk_version: Some("3.1".into()),
        }
    }

    fn generic(bytes: &[u8]) -> Option<AppEvent> {
        SchemaRegistry::builtin().decode::<AppEvent>(bytes).ok()
    }

    #[test]
    fn reads_what_the_generic_decoder_reads() {
        let registry = SchemaRegistry::builtin();
        let bare = AppEvent { properties: Properties::new(), sdk_version: None, ..event() };
        for event in [event(), bare] {
            let bytes = registry.encode(&event).unwrap();
            assert_eq!(read(&bytes), Some(event.clone()));
            assert_eq!(generic(&bytes), Some(event));
        }
    }

    #[test]
    fn accepts_nothing_the_generic_decoder_refuses() {
        let bytes = SchemaRegistry::builtin().encode(&event()).unwrap();
        let mut cases: Vec<Vec<u8>> = (0..bytes.len()).map(|len| bytes[..len].to_vec()).collect();
        cases.push([bytes.as_slice(), &[0]].concat());
        let mut random = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let mut mutated = bytes.clone();
            for _ in 0..random.usize(1..4) {
                let at = random.usize(single_object::HEADER_LEN..mutated.len());
                mutated[at] = random.u8(..);
            }
            cases.push(mutated);
        }
        for case in cases {
            if let Some(fast) = read(&case) {
                let slow = SchemaRegistry::builtin().decode_value(&case).ok().map(|(_, v)| v);
                assert!(slow.is_some(), "read {case:?}, which the generic decoder refuses");
                let slow: Option<AppEvent> = slow.and_then(|v| apache_avro::from_value(&v).ok());
                // Compared as text: a mutated double may be NaN, which equals nothing.
                assert_eq!(format!("{:?}", Some(fast)), format!("{slow:?}"), "{case:?}");
            }
        }
    }

    #[test]
    fn leaves_other_schema_versions_to_the_generic_decoder() {
        let bytes = SchemaRegistry::builtin().encode(&event()).unwrap();
        let mut other = bytes.clone();
        other[2] ^= 0xff;
        assert_eq!(read(&other), None);
    }
}
