//! Node ↔ node and node ↔ coordinator over QUIC (protocol: [`cartable_proto::wire`]),
//! the parts both daemons run.
//!
//! - [`admission`]: connection caps per network and in total, retry under load,
//!   a stranger's small limits raised for members.
//! - [`auth`]: mutual authentication by node key, members only.
//! - [`endpoint`]: the QUIC endpoint, its limits, dialing a peer.
//! - [`frame`]: length-prefixed frames on QUIC streams, with hard caps.
//! - [`exchange`]: one request to one peer, its answer verified as it arrives.
//! - [`stall`]: cutting a stream whose peer stopped sending.

pub mod admission;
pub mod auth;
pub mod endpoint;
pub mod exchange;
pub mod frame;
pub mod stall;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use cartable_proto::NodeId;

/// A peer as given on the command line: `NODEID@IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr {
    /// The key it must present.
    pub id: NodeId,
    /// Its QUIC address.
    pub addr: SocketAddr,
}

impl FromStr for PeerAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, addr) = s.split_once('@').ok_or("expected NODEID@IP:PORT")?;
        Ok(Self {
            id: id.parse().map_err(|e| format!("node id: {e}"))?,
            addr: addr.parse().map_err(|e| format!("address: {e}"))?,
        })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

impl serde::Serialize for PeerAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PeerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
