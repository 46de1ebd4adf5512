//! Node ↔ node and node ↔ coordinator over QUIC (protocol: [`cartable_proto::wire`]),
//! the parts both daemons run.
//!
//! - [`admission`]: connection caps per network and in total, retry under load,
//!   a stranger's small limits raised for members.
//! - [`auth`]: mutual authentication by node key, members only.
//! - [`endpoint`]: the QUIC endpoint, its limits, dialing a peer.
//! - [`batches`]: a peer's stream handed to a decoding thread in batches.
//! - [`frame`]: length-prefixed frames on QUIC streams, with hard caps.
//! - [`exchange`]: one request to one peer, its answer verified as it arrives.
//! - [`stall`]: cutting a stream whose peer stopped sending.

pub mod admission;
pub mod auth;
pub mod batches;
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

/// Two peer endpoints on the loopback, connected, for tests.
#[cfg(test)]
pub(crate) mod connected {
    use super::PeerAddr;
    use super::auth::Members;
    use super::endpoint::{PeerConnection, PeerEndpoint};
    use crate::identity::Identity;

    /// A connection seen from both ends.
    pub struct Connected {
        /// The dialing end's.
        pub dialed: quinn::Connection,
        /// The accepting end's, after its handshake.
        pub accepted: PeerConnection,
        _keep: (tempfile::TempDir, PeerEndpoint, PeerEndpoint),
    }

    /// Binds two endpoints on 127.0.0.1 that accept anyone, and connects them.
    pub async fn connected() -> anyhow::Result<Connected> {
        let keys = tempfile::tempdir()?;
        let server_key = Identity::load_or_create(&keys.path().join("server"))?;
        let client_key = Identity::load_or_create(&keys.path().join("client"))?;
        let loopback = "127.0.0.1:0".parse()?;
        let server = PeerEndpoint::bind(loopback, &server_key, Members::anyone())?;
        let client = PeerEndpoint::bind(loopback, &client_key, Members::anyone())?;
        let addr = PeerAddr {
            id: server_key.id(),
            addr: server.local_addr()?,
        };
        let arriving = async { server.accept().await.expect("arrives").handshake().await };
        let (dialed, accepted) = tokio::join!(client.connect(addr), arriving);
        Ok(Connected {
            dialed: dialed?,
            accepted: accepted?,
            _keep: (keys, server, client),
        })
    }
}
