//! Content names: [`BlobHash`] (BLAKE3-256 of a blob) and [`BundleId`] (the hash of
//! a bundle's encoded manifest).
//!
//! Text forms: 64 lowercase hex characters in URLs and CLI output; 52 lowercase
//! RFC 4648 base32 characters without padding for per-bundle origins, since it fits
//! one DNS label (at most 63 characters). Parsing accepts upper case too.

use std::fmt;
use std::str::FromStr;

const HEX: &[u8; 16] = b"0123456789abcdef";
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Length of the hex text form.
pub const HEX_LEN: usize = 64;
/// Length of the base32 text form.
pub const BASE32_LEN: usize = 52;

/// Why a text id did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    /// The text has the wrong number of characters for the form.
    #[error("expected {expected} characters, got {got}")]
    BadLength {
        /// Characters the form needs.
        expected: usize,
        /// Characters given.
        got: usize,
    },
    /// A character outside the form's alphabet.
    #[error("invalid character {ch:?} at position {pos}")]
    BadChar {
        /// Zero-based character position.
        pos: usize,
        /// The offending character.
        ch: char,
    },
    /// Base32 text whose unused trailing bits are not zero (two texts would name one id).
    #[error("non-canonical base32: trailing bits must be zero")]
    NonCanonical,
}

/// The BLAKE3-256 hash of a blob: its name everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash([u8; 32]);

impl BlobHash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The hash from its 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// Lowercase hex as 64 ASCII bytes, without allocating (for hot paths).
    pub fn hex_digits(&self) -> [u8; HEX_LEN] {
        hex_digits(&self.0)
    }

    /// Lowercase base32 without padding, 52 characters.
    pub fn to_base32(&self) -> String {
        let mut s = String::with_capacity(BASE32_LEN);
        let (mut acc, mut bits) = (0u16, 0u32);
        for b in self.0 {
            acc = (acc << 8) | u16::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                s.push(BASE32[usize::from((acc >> bits) & 31)] as char);
            }
        }
        // 256 bits leave 1 bit: pad it with zeros on the right.
        s.push(BASE32[usize::from((acc << (5 - bits)) & 31)] as char);
        s
    }

    /// Parses the hex form (either case).
    pub fn from_hex(text: &str) -> Result<Self, IdParseError> {
        decode_hex(text).map(Self)
    }

    /// Parses the base32 form (either case).
    pub fn from_base32(text: &str) -> Result<Self, IdParseError> {
        check_len(text, BASE32_LEN)?;
        let mut out = [0u8; 32];
        let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
        for (pos, ch) in text.chars().enumerate() {
            let v = match ch.to_ascii_lowercase() {
                c @ 'a'..='z' => c as u32 - u32::from(b'a'),
                c @ '2'..='7' => c as u32 - u32::from(b'2') + 26,
                _ => return Err(IdParseError::BadChar { pos, ch }),
            };
            // Keep only the bits not yet emitted (at most 12).
            acc = ((acc << 5) | v) & 0xfff;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out[n] = (acc >> bits) as u8;
                n += 1;
            }
        }
        if acc & ((1 << bits) - 1) != 0 {
            return Err(IdParseError::NonCanonical);
        }
        Ok(Self(out))
    }
}

fn encode_hex(bytes: &[u8; 32]) -> String {
    hex_digits(bytes).iter().map(|&d| char::from(d)).collect()
}

fn hex_digits(bytes: &[u8; 32]) -> [u8; HEX_LEN] {
    let mut out = [0u8; HEX_LEN];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
    out
}

fn decode_hex(text: &str) -> Result<[u8; 32], IdParseError> {
    // Every request names its bundle in hex: the common, well-formed case
    // reads bytes; anything else is parsed by characters for a precise error.
    if let Some(out) = decode_ascii_hex(text.as_bytes()) {
        return Ok(out);
    }
    check_len(text, HEX_LEN)?;
    let mut out = [0u8; 32];
    for (pos, ch) in text.chars().enumerate() {
        let v = ch.to_digit(16).ok_or(IdParseError::BadChar { pos, ch })? as u8;
        out[pos / 2] |= if pos % 2 == 0 { v << 4 } else { v };
    }
    Ok(out)
}

fn decode_ascii_hex(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != HEX_LEN {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|v| v as u8);
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn check_len(text: &str, expected: usize) -> Result<(), IdParseError> {
    let got = text.chars().count();
    if got == expected {
        Ok(())
    } else {
        Err(IdParseError::BadLength { expected, got })
    }
}

impl FromStr for BlobHash {
    type Err = IdParseError;
    /// The hex form, as in URLs and CLI arguments.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.to_hex())
    }
}

impl From<blake3::Hash> for BlobHash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl From<BlobHash> for blake3::Hash {
    fn from(h: BlobHash) -> Self {
        blake3::Hash::from_bytes(h.0)
    }
}

/// A bundle's id: the hash of its encoded manifest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BundleId(BlobHash);

impl BundleId {
    /// The id of the bundle whose encoded manifest is `manifest_bytes`.
    pub fn of_manifest(manifest_bytes: &[u8]) -> Self {
        Self(BlobHash::of(manifest_bytes))
    }

    /// The id from the manifest blob's hash.
    pub const fn from_hash(hash: BlobHash) -> Self {
        Self(hash)
    }

    /// The manifest blob's hash.
    pub const fn hash(&self) -> BlobHash {
        self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }

    /// Lowercase base32, 52 characters: one DNS label.
    pub fn to_base32(&self) -> String {
        self.0.to_base32()
    }
}

impl FromStr for BundleId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BlobHash::from_hex(s).map(Self)
    }
}

impl fmt::Display for BundleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for BundleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BundleId({})", self.0.to_hex())
    }
}

/// A node's id: its ed25519 public key, which its certificates are made from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// The id from the raw 32-byte public key.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw public key.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for NodeId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_hex(s).map(Self)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_hex(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// Ids travel in JSON (admin socket, admin API) in their hex text form.
macro_rules! serde_as_text {
    ($($t:ty),*) => {$(
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_text!(BlobHash, BundleId, NodeId);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hex_matches_blake3() {
        let h = BlobHash::of(b"abc");
        assert_eq!(h.to_hex(), blake3::hash(b"abc").to_hex().as_str());
    }

    #[test]
    fn base32_of_zero_and_ones() {
        assert_eq!(BlobHash::from_bytes([0; 32]).to_base32(), "a".repeat(52));
        let ones = BlobHash::from_bytes([0xff; 32]).to_base32();
        assert_eq!(&ones[..51], "7".repeat(51));
        assert_eq!(&ones[51..], "q", "the last character carries one bit");
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert_eq!(
            BlobHash::from_hex("abc"),
            Err(IdParseError::BadLength {
                expected: 64,
                got: 3
            })
        );
        let bad = format!("{}g", "0".repeat(63));
        assert_eq!(
            BlobHash::from_hex(&bad),
            Err(IdParseError::BadChar { pos: 63, ch: 'g' })
        );
        let mut b32 = "a".repeat(51);
        b32.push('b');
        assert_eq!(BlobHash::from_base32(&b32), Err(IdParseError::NonCanonical));
        assert!(matches!(
            BlobHash::from_base32(&"1".repeat(52)),
            Err(IdParseError::BadChar { pos: 0, ch: '1' })
        ));
    }

    #[test]
    fn multibyte_text_is_refused_not_panicking() {
        let text = "é".repeat(64);
        assert!(matches!(
            BlobHash::from_hex(&text),
            Err(IdParseError::BadChar { pos: 0, .. })
        ));
        // 64 bytes, but 32 characters: counted as characters, as typed.
        assert_eq!(
            BlobHash::from_hex(&"é".repeat(32)),
            Err(IdParseError::BadLength {
                expected: 64,
                got: 32
            })
        );
        let mixed = format!("{}é{}", "0".repeat(31), "0".repeat(31));
        assert_eq!(
            BlobHash::from_hex(&mixed),
            Err(IdParseError::BadLength {
                expected: 64,
                got: 63
            })
        );
    }

    proptest! {
        #[test]
        fn text_forms_round_trip(bytes in any::<[u8; 32]>()) {
            let h = BlobHash::from_bytes(bytes);
            prop_assert_eq!(BlobHash::from_hex(&h.to_hex()), Ok(h));
            let theirs = blake3::Hash::from(h).to_hex();
            prop_assert_eq!(&h.hex_digits()[..], theirs.as_bytes());
            prop_assert_eq!(h.to_string(), theirs.as_str());
            prop_assert_eq!(BlobHash::from_hex(&h.to_hex().to_uppercase()), Ok(h));
            prop_assert_eq!(BlobHash::from_base32(&h.to_base32()), Ok(h));
            prop_assert_eq!(h.to_base32().len(), BASE32_LEN);
        }

        #[test]
        fn parsers_never_panic(text in ".{0,80}") {
            let _ = BlobHash::from_hex(&text);
            let _ = BlobHash::from_base32(&text);
        }
    }
}
