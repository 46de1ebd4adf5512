//! Protocol versions of control frames, so that a fleet upgrades one daemon
//! at a time: the coordinator first, then the nodes one by one.
//!
//! - **Version 1**: the first builds' frames, with no version field: the
//!   message itself, `{"Heartbeat":{…}}`.
//! - **Version 2**: the message in an envelope naming its version,
//!   `{"protocol":2,"message":{"Heartbeat":{…}}}`. The messages are those of
//!   version 1; what changes is that each side now says what it speaks.
//!
//! A build speaks [`Protocol::CURRENT`] and the one version before it. The
//! coordinator answers each request in the version it came in, so a node not
//! yet upgraded reads its answers as it always has. A frame of any other
//! version is refused with a [`VersionError`] naming both versions, answered
//! at [`Protocol::CURRENT`] (a newer node reads the version before its own).
//!
//! The version is read before the message, with a reader that accepts any
//! JSON value there without allocating for it: a number this build does not
//! speak, a huge number, a negative one, a string or an object all get the
//! same bounded refusal, whatever the message after it looks like.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::decode::{DecodeError, check_limit};

use super::MAX_FRAME_BYTES;

/// A control protocol version this build speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// Frames without a version field (the first builds).
    V1,
    /// Frames in an envelope naming their version.
    V2,
}

impl Protocol {
    /// The version this build sends.
    pub const CURRENT: Self = Self::V2;
    /// The oldest version this build still reads and answers.
    pub const OLDEST: Self = Self::V1;

    /// Its number on the wire.
    pub fn number(self) -> u64 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }

    fn from_number(n: u64) -> Result<Self, VersionError> {
        match n {
            1 => Ok(Self::V1),
            2 => Ok(Self::V2),
            n if n > Self::CURRENT.number() => Err(VersionError::Newer(n)),
            n => Err(VersionError::Older(n)),
        }
    }
}

/// Why a control frame was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// A version after the ones this build speaks.
    #[error(
        "control protocol version {0} is newer than this build's (it speaks {current}, and \
         {oldest} before it): upgrade the coordinator first, then the nodes",
        current = Protocol::CURRENT.number(), oldest = Protocol::OLDEST.number()
    )]
    Newer(u64),
    /// A version before the ones this build speaks.
    #[error(
        "control protocol version {0} is older than this build's (it speaks {current}, and \
         {oldest} before it): upgrade the node",
        current = Protocol::CURRENT.number(), oldest = Protocol::OLDEST.number()
    )]
    Older(u64),
    /// The version field holds something other than a whole number.
    #[error(
        "the control protocol version is not a whole number (this build speaks {current}, and \
         {oldest} before it)",
        current = Protocol::CURRENT.number(), oldest = Protocol::OLDEST.number()
    )]
    Unreadable,
    /// The frame is not a well-formed message of its version.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The envelope of versions after 1, as written.
#[derive(Serialize)]
struct Envelope<'a, T> {
    protocol: u64,
    message: &'a T,
}

/// The envelope as read: its version was read already, by [`Probe`].
#[derive(Deserialize)]
struct Opened<T> {
    #[serde(rename = "protocol")]
    _protocol: IgnoredAny,
    message: T,
}

/// Only the version of a frame; every other field is skipped unread.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    protocol: VersionField,
}

/// Whatever a version field holds, read without failing or allocating.
/// (Not an `Option`: `null` would read as no field, a version-1 frame.)
#[derive(Default)]
enum VersionField {
    #[default]
    Absent,
    Number(u64),
    Garbage,
}

impl<'de> Deserialize<'de> for VersionField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(VersionVisitor)
    }
}

struct VersionVisitor;

impl<'de> Visitor<'de> for VersionVisitor {
    type Value = VersionField;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<VersionField, E> {
        Ok(VersionField::Number(n))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<VersionField, E> {
        Ok(u64::try_from(n).map_or(VersionField::Garbage, VersionField::Number))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<VersionField, E> {
        Ok(VersionField::Garbage)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<VersionField, E> {
        Ok(VersionField::Garbage)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<VersionField, E> {
        Ok(VersionField::Garbage)
    }
    fn visit_unit<E: de::Error>(self) -> Result<VersionField, E> {
        Ok(VersionField::Garbage)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<VersionField, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(VersionField::Garbage)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VersionField, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(VersionField::Garbage)
    }
}

/// The body of a frame of `version`: the bare message for version 1, the
/// envelope after it.
pub fn encode_versioned<T: Serialize>(version: Protocol, message: &T) -> Vec<u8> {
    match version {
        Protocol::V1 => super::encode(message),
        Protocol::V2 => super::encode(&Envelope {
            protocol: version.number(),
            message,
        }),
    }
}

/// Reads a frame body of any version this build speaks, and says which.
/// Bodies over the cap are refused before anything is read; the version is
/// read before the message, so a frame of an unknown version is refused as
/// such whatever its message.
pub fn decode_versioned<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(Protocol, T), VersionError> {
    check_limit("control frame", bytes.len() as u64, MAX_FRAME_BYTES as u64)?;
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| DecodeError::Invalid(format!("control message: {e}")))?;
    match probe.protocol {
        VersionField::Absent => Ok((Protocol::V1, super::decode(bytes)?)),
        VersionField::Garbage => Err(VersionError::Unreadable),
        VersionField::Number(n) => {
            let version = Protocol::from_number(n)?;
            let opened: Opened<T> = super::decode(bytes)?;
            Ok((version, opened.message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ControlRequest, ControlResponse, Heartbeat, JoinRequest, Orders};

    const V1_FRAMES: [&[u8]; 5] = [
        include_bytes!("../../tests/fixtures/control-v1/join.json"),
        include_bytes!("../../tests/fixtures/control-v1/heartbeat.json"),
        include_bytes!("../../tests/fixtures/control-v1/joined.json"),
        include_bytes!("../../tests/fixtures/control-v1/orders.json"),
        include_bytes!("../../tests/fixtures/control-v1/refused.json"),
    ];

    #[test]
    fn version_1_requests_are_read_and_answered_in_the_same_bytes() {
        for frame in &V1_FRAMES[..2] {
            let (version, request) = decode_versioned::<ControlRequest>(frame).unwrap();
            assert_eq!(version, Protocol::V1);
            assert_eq!(encode_versioned(version, &request), *frame);
        }
        let (_, join) = decode_versioned::<ControlRequest>(V1_FRAMES[0]).unwrap();
        assert!(
            matches!(join, ControlRequest::Join(JoinRequest { capacity, .. }) if capacity == 1 << 30)
        );
        let (_, beat) = decode_versioned::<ControlRequest>(V1_FRAMES[1]).unwrap();
        assert!(matches!(
            beat,
            ControlRequest::Heartbeat(Heartbeat {
                names_version: 4,
                ..
            })
        ));
        // Answers to a version-1 node are the bytes the first builds wrote.
        for frame in &V1_FRAMES[2..] {
            let answer: ControlResponse = crate::control::decode(frame).unwrap();
            assert_eq!(encode_versioned(Protocol::V1, &answer), *frame);
        }
    }

    #[test]
    fn current_frames_carry_their_version() {
        let answer = ControlResponse::Orders(Orders::default());
        let body = encode_versioned(Protocol::CURRENT, &answer);
        assert!(body.starts_with(br#"{"protocol":2,"message":{"Orders""#));
        assert_eq!(decode_versioned(&body), Ok((Protocol::V2, answer)));
    }

    #[test]
    fn unknown_versions_are_refused_naming_both() {
        let frame = |v: &str| format!(r#"{{"protocol":{v},"message":{{"Goodbye":{{}}}}}}"#);
        let refusal =
            |v: &str| decode_versioned::<ControlRequest>(frame(v).as_bytes()).unwrap_err();
        assert_eq!(refusal("3"), VersionError::Newer(3));
        let text = refusal("3").to_string();
        assert!(
            text.contains("version 3") && text.contains("speaks 2"),
            "{text}"
        );
        assert_eq!(refusal("0"), VersionError::Older(0));
        assert_eq!(
            refusal("18446744073709551615"),
            VersionError::Newer(u64::MAX)
        );
        for garbage in [
            "99999999999999999999999",
            "-1",
            "2.5",
            r#""2""#,
            "null",
            "[[[2]]]",
            r#"{"a":[1]}"#,
        ] {
            assert_eq!(refusal(garbage), VersionError::Unreadable, "{garbage}");
        }
        // A number past f64 is not JSON this build parses at all.
        assert!(matches!(refusal("1e400"), VersionError::Decode(_)));
        let huge = format!(r#"{{"protocol":"{}"}}"#, "9".repeat(MAX_FRAME_BYTES));
        assert!(matches!(
            decode_versioned::<ControlRequest>(huge.as_bytes()),
            Err(VersionError::Decode(DecodeError::TooLarge { .. }))
        ));
    }

    #[test]
    fn malformed_frames_are_refused_as_messages() {
        for bad in [
            &b""[..],
            b"[]",
            br#"{"protocol":2}"#,
            br#"{"Join":{"secret":1}}"#,
        ] {
            assert!(matches!(
                decode_versioned::<ControlRequest>(bad),
                Err(VersionError::Decode(DecodeError::Invalid(reason))) if reason.starts_with("control message")
            ));
        }
    }
}
