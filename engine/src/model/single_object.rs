//! Avro single-object encoding framing: `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin)
//! fingerprint of the writer schema, then the Avro binary datum.

use std::fmt;

use super::CodecError;

/// The two marker bytes that open every single-object encoded record.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Length of the header: marker plus fingerprint.
pub const HEADER_LEN: usize = 10;

/// CRC-64-AVRO fingerprint of a schema's parsing canonical form, as written on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 8]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// True when `bytes` starts with the single-object marker.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Splits a single-object encoded message into its writer fingerprint and datum bytes.
pub fn split(bytes: &[u8]) -> Result<(Fingerprint, &[u8]), CodecError> {
    if bytes.len() < MAGIC.len() || !has_magic(bytes) {
        return Err(CodecError::NotSingleObject {
            prefix: bytes.iter().take(2).map(|b| format!("{b:02x}")).collect(),
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated { len: bytes.len() });
    }
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[2..HEADER_LEN]);
    Ok((Fingerprint(fingerprint), &bytes[HEADER_LEN..]))
}

/// Writes the header for `fingerprint` followed by `datum`.
pub fn frame(fingerprint: Fingerprint, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&fingerprint.0);
    out.extend_from_slice(datum);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_reverses_frame() {
        let fp = Fingerprint([1, 2, 3, 4, 5, 6, 7, 8]);
        let framed = frame(fp, b"datum");
        assert_eq!(split(&framed).unwrap(), (fp, &b"datum"[..]));
    }

    #[test]
    fn short_or_unmarked_input_is_rejected() {
        assert!(matches!(split(b""), Err(CodecError::NotSingleObject { .. })));
        assert!(
            matches!(split(b"{\"a\":1}"), Err(CodecError::NotSingleObject { prefix }) if prefix == "7b22")
        );
        assert!(matches!(split(&[0xC3, 0x01, 9]), Err(CodecError::Truncated { len: 3 })));
    }
}
