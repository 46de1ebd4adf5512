//! The node ↔ coordinator protocol, versions 1 and 2 ([`version`]).
//!
//! # Goals
//!
//! - A node joins with a one-time token and is known by its key from then on.
//! - A node reports what it holds; the coordinator answers with what it must hold,
//!   where to copy it from, what it may drop, and who the other members are.
//! - Everything the node needs to go on working without the coordinator comes in
//!   that one answer, so that the node can keep it on disk.
//!
//! # Non-goals
//!
//! - Pushing: the node asks, on its heartbeat; the coordinator never dials a node to
//!   give orders (only to spot-check a copy, over the node ↔ node protocol).
//! - Compactness: messages are JSON, so that they are easy to read in a capture and
//!   to extend; they are small next to the bytes being copied.
//!
//! # Transport
//!
//! QUIC with ALPN [`ALPN`]; both sides present certificates made from their
//! ed25519 keys (the node dials the key its join token names). One request per
//! bidirectional stream: a frame `u32 LE length ‖ JSON body`, capped at
//! [`MAX_FRAME_BYTES`] and checked before anything is allocated; the answer is one
//! frame the same way. The body names its protocol version ([`version`]): a node
//! and a coordinator of neighbouring versions understand each other, so a fleet
//! upgrades one daemon at a time. The ALPN stays the same across versions.
//!
//! ```text
//! node                              coordinator
//!  │ Join { secret, capacity, urls } ─▶ token checked, used up, key registered
//!  │ ◀─ Joined { region, site }
//!  │ Heartbeat { held, usage, … }   ─▶ liveness, replica states updated
//!  │ ◀─ Orders { members, hold, release, names }
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::decode::{DecodeError, check_limit};
use crate::id::{BundleId, NodeId};

pub mod version;
pub use version::{Protocol, VersionError, decode_versioned, encode_versioned};

/// The ALPN of the control protocol.
pub const ALPN: &[u8] = b"cartable-control/1";

/// The largest frame either side accepts.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// What a node asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Registers the dialing key with a join token.
    Join(JoinRequest),
    /// Reports the node's state and asks for its orders.
    Heartbeat(Heartbeat),
}

/// A node's first words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The secret part of the join token.
    pub secret: String,
    /// Where the node can be reached.
    pub contact: Contact,
    /// Bytes the node offers for assigned bundles.
    pub capacity: u64,
}

/// Where a node answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Its HTTPS base URL for browsers, without a trailing slash.
    pub https_url: String,
    /// Its QUIC address for peers.
    pub quic: SocketAddr,
    /// Lowercase hex SHA-256 of its HTTPS certificate (DER), for clients to pin
    /// a self-signed certificate.
    pub https_cert_sha256: String,
}

/// A node's periodic report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Where the node can be reached (it may have moved since it joined).
    pub contact: Contact,
    /// Bytes the node offers for assigned bundles.
    pub capacity: u64,
    /// Bytes its held bundles use.
    pub used: u64,
    /// Browser connections open now.
    pub load: u32,
    /// Bundles held complete and verified.
    pub held: Vec<BundleId>,
    /// Peers caught sending bytes that failed verification since the last report.
    pub failures: Vec<FailureReport>,
    /// Blobs found corrupt or missing by the scrub since the last report.
    pub damaged: u64,
    /// The version of the name table the node has (0: none).
    pub names_version: u64,
}

/// Verification failures of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureReport {
    /// The peer that sent bad bytes.
    pub peer: NodeId,
    /// How many times.
    pub count: u64,
}

/// What the coordinator answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// The join token was good: the node is a member at this place.
    Joined {
        /// Its region.
        region: String,
        /// Its site.
        site: String,
    },
    /// The orders that answer a heartbeat.
    Orders(Orders),
    /// The request was refused; nothing changed.
    Refused {
        /// Why, for the node's log.
        reason: String,
    },
}

/// Everything a node needs to go on working alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Orders {
    /// How often to send heartbeats, in milliseconds.
    pub heartbeat_ms: u64,
    /// Every member, the node itself included.
    pub members: Vec<Member>,
    /// Bundles to hold, each with the members to copy it from.
    pub hold: Vec<HoldOrder>,
    /// Bundles the node may delete: their replacements are complete elsewhere.
    pub release: Vec<BundleId>,
    /// The name table, when the node's version is stale.
    pub names: Option<NameTable>,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its key.
    pub id: NodeId,
    /// Where it answers.
    pub contact: Contact,
    /// Its region.
    pub region: String,
    /// Its site.
    pub site: String,
}

/// A bundle to hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldOrder {
    /// The bundle.
    pub bundle: BundleId,
    /// Other members holding a verified copy, to copy it from (or repair it
    /// from, when this node already holds it); empty when no other has one.
    pub sources: Vec<NodeId>,
}

/// Names and the bundles they point to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NameTable {
    /// Grows by one at every change.
    pub version: u64,
    /// Every name, sorted.
    pub names: Vec<(String, BundleId)>,
}

impl NameTable {
    /// The bundle of the name that starts `path`, and the rest of the path.
    pub fn resolve<'a>(&self, path: &'a str) -> Option<(BundleId, &'a str)> {
        resolve_name(path, |name| {
            self.names
                .binary_search_by(|(n, _)| n.as_str().cmp(name))
                .ok()
                .map(|i| self.names[i].1)
        })
    }
}

/// Splits `path` (`maths/6e/fractions/index.html`) into the longest name that
/// `lookup` knows and the path after it (`index.html`): names hold slashes.
pub fn resolve_name(
    path: &str,
    lookup: impl Fn(&str) -> Option<BundleId>,
) -> Option<(BundleId, &str)> {
    let mut cut = path.len();
    loop {
        let (name, tail) = path.split_at(cut);
        if let Some(bundle) = lookup(name) {
            return Some((bundle, tail.strip_prefix('/').unwrap_or(tail)));
        }
        cut = name.rfind('/')?;
    }
}

/// The body of a frame, as JSON.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).expect("control messages always serialize")
}

/// Reads a frame body; refuses bodies over the cap and anything that is not a
/// well-formed message.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    check_limit("control frame", bytes.len() as u64, MAX_FRAME_BYTES as u64)?;
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid(format!("control message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat() -> ControlRequest {
        ControlRequest::Heartbeat(Heartbeat {
            contact: Contact {
                https_url: "https://127.0.0.1:8443".into(),
                quic: "127.0.0.1:4433".parse().unwrap(),
                https_cert_sha256: "ab".repeat(32),
            },
            capacity: 1 << 30,
            used: 12,
            load: 3,
            held: vec![BundleId::of_manifest(b"x")],
            failures: vec![FailureReport {
                peer: NodeId::from_bytes([7; 32]),
                count: 2,
            }],
            damaged: 0,
            names_version: 4,
        })
    }

    #[test]
    fn messages_round_trip() {
        let request = heartbeat();
        assert_eq!(decode::<ControlRequest>(&encode(&request)), Ok(request));
        let orders = ControlResponse::Orders(Orders {
            heartbeat_ms: 1000,
            names: Some(NameTable {
                version: 2,
                names: vec![("maths/6e".into(), BundleId::of_manifest(b"y"))],
            }),
            ..Orders::default()
        });
        assert_eq!(decode::<ControlResponse>(&encode(&orders)), Ok(orders));
    }

    #[test]
    fn the_longest_known_name_wins() {
        let (a, b) = (BundleId::of_manifest(b"a"), BundleId::of_manifest(b"b"));
        let table = NameTable {
            version: 1,
            names: vec![("maths".into(), a), ("maths/6e".into(), b)],
        };
        assert_eq!(
            table.resolve("maths/6e/index.html"),
            Some((b, "index.html"))
        );
        assert_eq!(table.resolve("maths/6e/"), Some((b, "")));
        assert_eq!(table.resolve("maths/5e/x"), Some((a, "5e/x")));
        assert_eq!(table.resolve("maths"), Some((a, "")));
        assert_eq!(table.resolve("physics/x"), None);
        assert_eq!(table.resolve(""), None);
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let good = encode(&heartbeat());
        for cut in [0, 1, good.len() / 2, good.len() - 1] {
            assert!(
                decode::<ControlRequest>(&good[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            decode::<ControlRequest>(br#"{"Join":{"secret":1}}"#),
            Err(DecodeError::Invalid(reason)) if reason.contains("invalid type")
        ));
        let bad_id = String::from_utf8(good)
            .unwrap()
            .replacen("\"held\":[\"", "\"held\":[\"zz", 1);
        assert!(decode::<ControlRequest>(bad_id.as_bytes()).is_err());
        let huge = vec![b' '; MAX_FRAME_BYTES + 1];
        assert!(matches!(
            decode::<ControlRequest>(&huge),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
