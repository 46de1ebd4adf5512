//! The node's QUIC endpoint: one UDP socket that accepts members and dials peers,
//! with bounded streams and idle timeouts on every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cartable_proto::wire;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::PeerAddr;
use super::auth::{self, Members};
use crate::identity::Identity;

/// Concurrent requests (bidirectional streams) one peer may have open.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;
/// A connection with no traffic for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pings keep a quiet but live connection open.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A bound QUIC endpoint.
#[derive(Debug, Clone)]
pub struct PeerEndpoint {
    endpoint: quinn::Endpoint,
    cert: CertificateDer<'static>,
    key: Arc<PrivateKeyDer<'static>>,
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    Arc::new(t)
}

impl PeerEndpoint {
    /// Binds `addr` for the node ↔ node protocol, accepting `members` only.
    pub fn bind(addr: SocketAddr, identity: &Identity, members: Members) -> anyhow::Result<Self> {
        Self::bind_for(addr, identity, members, wire::ALPN)
    }

    /// Binds `addr` for the protocol named by `alpn`, accepting `members` only.
    pub fn bind_for(
        addr: SocketAddr,
        identity: &Identity,
        members: Members,
        alpn: &[u8],
    ) -> anyhow::Result<Self> {
        let (cert, key) = identity.certificate()?;
        let tls = auth::server_config(cert.clone(), key.clone_key(), members, alpn)?;
        let mut server =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        server.transport_config(transport());
        let endpoint = quinn::Endpoint::server(server, addr)
            .with_context(|| format!("binding QUIC on {addr}"))?;
        Ok(Self {
            endpoint,
            cert,
            key: Arc::new(key),
        })
    }

    /// The address bound (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Connects to `peer` for the node ↔ node protocol; it must present its node id.
    pub async fn connect(&self, peer: PeerAddr) -> anyhow::Result<quinn::Connection> {
        self.connect_for(peer, wire::ALPN).await
    }

    /// Connects to `peer` for the protocol named by `alpn`.
    pub async fn connect_for(
        &self,
        peer: PeerAddr,
        alpn: &[u8],
    ) -> anyhow::Result<quinn::Connection> {
        let tls = auth::client_config(self.cert.clone(), self.key.clone_key(), peer.id, alpn)?;
        let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
        config.transport_config(transport());
        let connecting = self
            .endpoint
            .connect_with(config, peer.addr, "cartable-node")
            .with_context(|| format!("connecting to {peer}"))?;
        connecting
            .await
            .with_context(|| format!("handshake with {peer}"))
    }

    /// The next incoming connection attempt; `None` once closed.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}
