//! The two credentials the coordinator hands out, in their text forms.
//!
//! - A [`JoinToken`] lets one new node register: it names the coordinator (its key
//!   and QUIC address, so the node needs nothing else) and carries a one-time secret.
//!   Text: `cj1-<secret, 64 hex>-<coordinator key, 64 hex>@<ip:port>`.
//! - An [`UploadGrant`] lets a publisher upload one bundle to one node until a
//!   deadline. The coordinator signs it with its ed25519 key, which the node knows
//!   from its join token, so the node checks it without a round trip. Text: 272 hex
//!   digits (bundle ‖ node ‖ deadline u64 BE ‖ signature).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::id::{BundleId, NodeId};

/// Why a token or grant did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// It does not have the shape of this credential.
    #[error("not a {0}: {1}")]
    Shape(&'static str, &'static str),
}

/// A one-time join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The one-time secret the coordinator keeps a hash of.
    pub secret: [u8; 32],
    /// The coordinator's key.
    pub coordinator: NodeId,
    /// The coordinator's QUIC address.
    pub quic: SocketAddr,
}

const JOIN_PREFIX: &str = "cj1-";

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{JOIN_PREFIX}{}-{}@{}",
            crate::hex::encode(&self.secret),
            self.coordinator,
            self.quic
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JoinToken({}@{}, secret hidden)",
            self.coordinator, self.quic
        )
    }
}

impl FromStr for JoinToken {
    type Err = CredentialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| CredentialError::Shape("join token", why);
        let rest = s
            .trim()
            .strip_prefix(JOIN_PREFIX)
            .ok_or(bad("it must start with cj1-"))?;
        let (keys, addr) = rest.split_once('@').ok_or(bad("no @address"))?;
        let (secret, coordinator) = keys.split_once('-').ok_or(bad("no coordinator key"))?;
        Ok(Self {
            secret: crate::hex::decode_lower(secret)
                .ok_or(bad("the secret is not 64 hex digits"))?,
            coordinator: coordinator
                .parse()
                .map_err(|_| bad("the coordinator key is not 64 hex digits"))?,
            quic: addr
                .parse()
                .map_err(|_| bad("the address is not ip:port"))?,
        })
    }
}

impl JoinToken {
    /// The secret as sent in a join and hashed by the coordinator: 64 hex digits.
    pub fn secret_text(&self) -> String {
        crate::hex::encode(&self.secret)
    }
}

/// A signed permission to upload one bundle to one node.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadGrant {
    /// The bundle that may be uploaded.
    pub bundle: BundleId,
    /// The node that may receive it.
    pub node: NodeId,
    /// Seconds since the Unix epoch after which the grant is void.
    pub expires: u64,
    /// The coordinator's ed25519 signature over [`UploadGrant::signed_bytes`].
    pub signature: [u8; 64],
}

impl UploadGrant {
    /// The bytes the signature covers: a context string, then the fields.
    pub fn signed_bytes(bundle: &BundleId, node: &NodeId, expires: u64) -> Vec<u8> {
        let mut bytes = b"cartable upload grant v1\0".to_vec();
        bytes.extend_from_slice(bundle.hash().as_bytes());
        bytes.extend_from_slice(node.as_bytes());
        bytes.extend_from_slice(&expires.to_be_bytes());
        bytes
    }
}

impl fmt::Display for UploadGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}{}",
            self.bundle,
            self.node,
            crate::hex::encode(&self.expires.to_be_bytes()),
            crate::hex::encode(&self.signature)
        )
    }
}

impl fmt::Debug for UploadGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UploadGrant({} to {} until {})",
            self.bundle, self.node, self.expires
        )
    }
}

impl FromStr for UploadGrant {
    type Err = CredentialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = CredentialError::Shape("upload grant", "expected 272 hex digits");
        let s = s.trim();
        if s.len() != 272 || !s.is_ascii() {
            return Err(bad);
        }
        let bundle: [u8; 32] = crate::hex::decode_lower(&s[..64]).ok_or(bad.clone())?;
        let node: [u8; 32] = crate::hex::decode_lower(&s[64..128]).ok_or(bad.clone())?;
        let expires: [u8; 8] = crate::hex::decode_lower(&s[128..144]).ok_or(bad.clone())?;
        let signature: [u8; 64] = crate::hex::decode_lower(&s[144..]).ok_or(bad)?;
        Ok(Self {
            bundle: BundleId::from_hash(crate::BlobHash::from_bytes(bundle)),
            node: NodeId::from_bytes(node),
            expires: u64::from_be_bytes(expires),
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_hide_their_secret_in_logs() {
        let token = JoinToken {
            secret: [0xab; 32],
            coordinator: NodeId::from_bytes([3; 32]),
            quic: "127.0.0.1:4433".parse().unwrap(),
        };
        let text = token.to_string();
        assert!(text.starts_with("cj1-abab"));
        assert_eq!(text.parse::<JoinToken>(), Ok(token.clone()));
        assert!(!format!("{token:?}").contains("abab"));
        let v6 = JoinToken {
            quic: "[::1]:9".parse().unwrap(),
            ..token
        };
        assert_eq!(v6.to_string().parse::<JoinToken>(), Ok(v6));
    }

    #[test]
    fn malformed_join_tokens_are_refused() {
        let good = JoinToken {
            secret: [1; 32],
            coordinator: NodeId::from_bytes([2; 32]),
            quic: "127.0.0.1:1".parse().unwrap(),
        }
        .to_string();
        for bad in [
            "",
            "cj2-",
            &good.replace('@', "#"),
            &good[..good.len() - 2],
            &good.replacen("0101", "01zz", 1),
            &good.replacen("cj1-01", "cj1-0", 1),
            "cj1-é@1",
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn upload_grants_round_trip_and_refuse_bad_text() {
        let grant = UploadGrant {
            bundle: BundleId::of_manifest(b"m"),
            node: NodeId::from_bytes([9; 32]),
            expires: 1_800_000_000,
            signature: [0x5a; 64],
        };
        let text = grant.to_string();
        assert_eq!(text.len(), 272);
        assert_eq!(text.parse::<UploadGrant>(), Ok(grant));
        assert!(text[1..].parse::<UploadGrant>().is_err());
        assert!(text.replacen('5', "G", 1).parse::<UploadGrant>().is_err());
        assert!(format!("é{}", &text[2..]).parse::<UploadGrant>().is_err());
    }
}
