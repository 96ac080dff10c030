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
        RegistryError::UnknownId(_) | RegistryError::Unreadable { .. } => {
            IngestError::Invalid(invalid("schema id", error.to_string()))
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
    use super::*;

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
