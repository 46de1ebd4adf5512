//! Reading a node id out of a peer's certificate. Nodes present self-signed
//! X.509 certificates made from their ed25519 key; the id is that key. This is a
//! strict, total DER walk to the `subjectPublicKeyInfo` field, which must be an
//! ed25519 key: any other shape is refused.

use crate::decode::{DecodeError, Reader};
use crate::id::NodeId;

/// The DER of an ed25519 `SubjectPublicKeyInfo` up to the 32 key bytes:
/// SEQUENCE(42) { SEQUENCE(5) { OID 1.3.101.112 }, BIT STRING(33) { 0 unused bits } }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;

/// The node id in a certificate's DER, or why it has none.
pub fn node_id_of_cert(der: &[u8]) -> Result<NodeId, DecodeError> {
    let mut outer = Reader::new(der);
    let certificate = element(&mut outer, SEQUENCE)?;
    let mut cert = Reader::new(certificate);
    let tbs = element(&mut cert, SEQUENCE)?;
    let mut fields = Reader::new(tbs);
    if fields.peek() == Some(VERSION) {
        any_element(&mut fields)?;
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        any_element(&mut fields)?;
    }
    let spki = fields.bytes(ED25519_SPKI_PREFIX.len() + 32)?;
    if spki[..ED25519_SPKI_PREFIX.len()] != ED25519_SPKI_PREFIX {
        return Err(DecodeError::Invalid(
            "certificate key is not ed25519".into(),
        ));
    }
    let key: [u8; 32] = spki[ED25519_SPKI_PREFIX.len()..]
        .try_into()
        .map_err(|_| DecodeError::Invalid("short key".into()))?;
    Ok(NodeId::from_bytes(key))
}

/// One element's contents, which must carry `tag`.
fn element<'a>(r: &mut Reader<'a>, tag: u8) -> Result<&'a [u8], DecodeError> {
    let (found, content) = any_element(r)?;
    if found != tag {
        return Err(DecodeError::Invalid(format!(
            "expected DER tag {tag:#x}, found {found:#x}"
        )));
    }
    Ok(content)
}

/// One element: its tag and contents (definite lengths only, as DER requires).
fn any_element<'a>(r: &mut Reader<'a>) -> Result<(u8, &'a [u8]), DecodeError> {
    let tag = r.u8()?;
    let first = r.u8()?;
    let len = match first {
        0..=0x7f => usize::from(first),
        0x81..=0x83 => {
            let n = usize::from(first - 0x80);
            r.bytes(n)?
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        }
        _ => return Err(DecodeError::Invalid("unsupported DER length".into())),
    };
    Ok((tag, r.bytes(len)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn garbage_is_refused() {
        assert!(node_id_of_cert(b"").is_err());
        assert!(node_id_of_cert(&[0x30, 0x84, 0, 0, 0, 1]).is_err());
        assert!(node_id_of_cert(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = node_id_of_cert(&bytes);
        }
    }
}
