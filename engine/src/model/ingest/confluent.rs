//! Confluent wire format: magic byte `00`, the writer schema's registry id as a 4-byte
//! big-endian integer, then the Avro binary datum. The writer schema comes from the schema
//! registry and is resolved to Herald's current reader schema.

use super::{registry_client::RegistryError, IngestError, RegistryClient};
use crate::model::{registry::checked, CodecError, Record, SchemaRegistry};

/// The byte that opens every Confluent-framed record.
pub const MAGIC: u8 = 0;
/// Length of the header: magic byte and schema id.
pub const HEADER_LEN: usize = 5;

const FORMAT: &str = "Confluent";

fn invalid(field: &str, reason: String) -> CodecError {
    CodecError::Format { format: FORMAT.into(), field: field.into(), reason }
}

/// Writes the header for schema `id` followed by `datum`.
pub fn frame(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

/// Splits a Confluent-framed record into its schema id and datum bytes.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    match bytes.first() {
        Some(&MAGIC) => {}
        Some(other) => {
            return Err(invalid("magic byte", format!("expected 00, found {other:02x}")));
        }
        None => return Err(invalid("magic byte", "empty record".into())),
    }
    let id = bytes
        .get(1..HEADER_LEN)
        .and_then(|id| <[u8; 4]>::try_from(id).ok())
        .ok_or_else(|| invalid("schema id", format!("cut short: {} bytes in all", bytes.len())))?;
    Ok((u32::from_be_bytes(id), &bytes[HEADER_LEN..]))
}

/// Decodes a Confluent-framed record as `T`, resolving its writer schema to `T`'s current one.
pub(super) fn decode<T: Record>(
    client: &RegistryClient,
    registry: &SchemaRegistry,
    bytes: &[u8],
) -> Result<T, IngestError> {
    let (id, mut datum) = split(bytes)?;
    let writer = client.schema(id).map_err(|error| match error {
        RegistryError::Unreachable { .. } => IngestError::Unavailable(error.to_string()),
        RegistryError::UnknownId(_) => {
            invalid("schema id", format!("{id} is not in the schema registry")).into()
        }
        RegistryError::Unreadable { reason, .. } => {
            invalid("schema id", format!("{id}: {reason}")).into()
        }
    })?;
    let reader = registry.current_schema(T::FULL_NAME)?;
    let corrupt = |reason: String| CodecError::Corrupt {
        schema: format!("{} (schema id {id})", T::FULL_NAME),
        reason,
    };
    let value = apache_avro::from_avro_datum(&writer, &mut datum, Some(reader))
        .map_err(|e| corrupt(e.to_string()))?;
    if !datum.is_empty() {
        return Err(corrupt(format!("{} trailing bytes after the datum", datum.len())).into());
    }
    let record: T = apache_avro::from_value(&value).map_err(|e| corrupt(e.to_string()))?;
    Ok(checked(record)?)
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;

    use super::{super::fake_registry, *};
    use crate::model::{AppEvent, PropertyValue};

    /// A pipeline's own event schema: another name, a field Herald does not know, no
    /// properties.
    const FOREIGN: &str = r#"{"type":"record","name":"CartEvent","namespace":"com.acme","fields":[
        {"name":"event_id","type":"string"},{"name":"app_id","type":"string"},
        {"name":"user_id","type":"string"},{"name":"name","type":"string"},
        {"name":"country","type":"string"},{"name":"timestamp_ms","type":"long"}]}"#;

    fn answers(path: &str) -> (u16, String) {
        let schema = match path {
            "/apis/ccompat/v7/schemas/ids/1" => FOREIGN.to_string(),
            "/apis/ccompat/v7/schemas/ids/2" => SchemaRegistry::builtin()
                .current_schema(AppEvent::FULL_NAME)
                .expect("built in")
                .canonical_form(),
            _ => return (404, r#"{"error_code":40403}"#.into()),
        };
        (200, serde_json::json!({ "schema": schema }).to_string())
    }

    fn foreign_datum(timestamp_ms: i64) -> Vec<u8> {
        let schema = apache_avro::Schema::parse_str(FOREIGN).unwrap();
        let value = Value::Record(
            [
                ("event_id", Value::String("e-1".into())),
                ("app_id", Value::String("shop".into())),
                ("user_id", Value::String("u1".into())),
                ("name", Value::String("Opened".into())),
                ("country", Value::String("FR".into())),
                ("timestamp_ms", Value::Long(timestamp_ms)),
            ]
            .map(|(name, value)| (name.to_string(), value))
            .into(),
        );
        apache_avro::to_avro_datum(&schema, value).unwrap()
    }

    #[test]
    fn a_foreign_writer_schema_resolves_to_herald_s_reader_schema() {
        let fake = fake_registry::fake(answers);
        let client = fake_registry::client(&fake.url);
        let registry = SchemaRegistry::builtin();
        let event: AppEvent =
            decode(&client, registry, &frame(1, &foreign_datum(1_795_773_600_000))).unwrap();
        assert_eq!((event.event_id.as_str(), event.name.as_str()), ("e-1", "Opened"));
        assert_eq!((event.timestamp_ms, event.properties.len()), (1_795_773_600_000, 0));

        let mut herald = AppEvent { sdk_version: Some("4.1".into()), ..event };
        herald.properties.insert("n".into(), PropertyValue::Long(3));
        let datum = registry
            .encode_datum(AppEvent::FULL_NAME, apache_avro::to_value(&herald).unwrap())
            .unwrap();
        assert_eq!(decode::<AppEvent>(&client, registry, &frame(2, &datum)).unwrap(), herald);
        assert_eq!(fake.requests.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn bad_datums_and_unknown_ids_are_invalid_records() {
        let fake = fake_registry::fake(answers);
        let client = fake_registry::client(&fake.url);
        let registry = SchemaRegistry::builtin();
        let reason = |bytes: &[u8]| match decode::<AppEvent>(&client, registry, bytes) {
            Err(IngestError::Invalid(error)) => error.to_string(),
            other => panic!("{other:?}"),
        };
        let datum = foreign_datum(1_795_773_600_000);
        assert!(reason(&frame(1, &datum[..datum.len() - 3]))
            .starts_with("corrupt io.herald.AppEvent (schema id 1)"));
        let mut long = datum.clone();
        long.push(0);
        assert!(reason(&frame(1, &long)).ends_with("1 trailing bytes after the datum"));
        assert!(reason(&frame(1, &foreign_datum(i64::MIN)))
            .starts_with("invalid io.herald.AppEvent: timestamp_ms: -9223372036854775808"));
        assert_eq!(
            reason(&frame(9, &datum)),
            "Confluent record: schema id: 9 is not in the schema registry"
        );
    }

    #[test]
    fn split_reverses_frame() {
        let framed = frame(0x0102_0304, b"datum");
        assert_eq!(&framed[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(split(&framed).unwrap(), (0x0102_0304, &b"datum"[..]));
    }

    #[test]
    fn wrong_magic_and_short_headers_are_named() {
        let reason = |bytes: &[u8]| split(bytes).unwrap_err().to_string();
        assert_eq!(reason(b"{\"a\":1}"), "Confluent record: magic byte: expected 00, found 7b");
        assert_eq!(reason(b""), "Confluent record: magic byte: empty record");
        assert_eq!(reason(&[0, 0, 1]), "Confluent record: schema id: cut short: 3 bytes in all");
    }
}
