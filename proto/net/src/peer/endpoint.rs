//! The node's QUIC endpoint: one UDP socket that accepts members and dials
//! peers, or, with [`PeerEndpoint::dialing_from_here`], one that accepts on
//! the runtime it was bound on and a second, on an ephemeral port, that dials
//! from another.
//!
//! Accepting, in order: [`PeerEndpoint::accept`] judges each attempt against the
//! [`admission`](super::admission) caps before any handshake work (refused, asked
//! to retry, or taken with a counted slot); [`Arriving::handshake`] completes the
//! handshake within [`HANDSHAKE_TIMEOUT`] and gives a [`PeerConnection`] that
//! starts with a stranger's limits, listed under its key until it is dropped;
//! [`PeerConnection::trust`] raises its limits once its key is a member.
//! [`PeerEndpoint::close_peer`] and [`PeerEndpoint::close_unlisted`] close the
//! listed connections of keys that are no longer members.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cartable_proto::{NodeId, wire};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::PeerAddr;
use super::admission::{self, Admission, Limits, Slot, Verdict};
use super::auth::{self, Members};
use crate::identity::Identity;

/// A connection with no traffic for this long is closed. Dialing members send
/// keep-alives (below), the listening side sends none, so a quiet connection
/// stays open only while the side that wants it keeps it alive.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pings from the dialing side keep a quiet but live connection open.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// A handshake must finish this soon after its first packet: a half-open
/// handshake holds a counted slot, so it must not hold it for the idle timeout.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Packets buffered for one attempt before it is judged: an Initial and a few
/// more fit; attempts are judged as soon as they arrive.
const INCOMING_BUFFER_BYTES: u64 = 64 * 1024;
/// Packets buffered for all attempts not yet judged (quinn's default is 100 MiB).
const INCOMING_BUFFER_TOTAL_BYTES: u64 = 4 * 1024 * 1024;

/// A bound QUIC endpoint.
#[derive(Debug, Clone)]
pub struct PeerEndpoint {
    endpoint: quinn::Endpoint,
    /// Where connections this side opens go out: `endpoint` itself, or a
    /// client-only endpoint driven by another runtime.
    dialing: quinn::Endpoint,
    cert: CertificateDer<'static>,
    key: Arc<PrivateKeyDer<'static>>,
    members: Members,
    admission: Admission,
    listed: Listed,
}

/// How long a dial may take. A handshake takes a few round trips, so
/// milliseconds on a school network; a dead or silent peer (a burned site
/// sends no reset) would otherwise hold the dialer for the idle timeout, and a
/// copy waits for all its sources' dials.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The listening side's transport: a stranger's limits (raised by [`trust`]),
/// no keep-alive from this side.
///
/// [`trust`]: PeerConnection::trust
fn server_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    Arc::new(admission::stranger_transport(t))
}

/// The dialing side's transport: keep-alives, and no streams opened by the
/// server (every request goes from the dialer to the listener).
fn client_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    Arc::new(t)
}

/// Kernel buffer asked for each way of an endpoint's UDP socket. Linux's
/// default (208 KiB) holds about a millisecond of a copy at full speed: when
/// the receiving process is busy a moment longer (verifying, writing to disk),
/// datagrams are dropped, QUIC takes the loss for congestion and slows down,
/// and the sender spends CPU sending them again. The kernel caps what is asked
/// at `net.core.rmem_max` and `wmem_max`.
const SOCKET_BUFFER: usize = 4 << 20;

/// A QUIC endpoint on a [`udp_socket`] bound to `addr`, accepting with
/// `server` when given (a dialing one is dual-stack, as quinn's
/// `Endpoint::client`); on the runtime of the caller.
fn endpoint_on(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> anyhow::Result<quinn::Endpoint> {
    let socket = udp_socket(addr, server.is_none())?;
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
        .with_context(|| format!("starting QUIC on {addr}"))
}

/// A UDP socket bound to `addr`, its buffers asked for [`SOCKET_BUFFER`];
/// when `dual_stack` and `addr` is IPv6, reaching IPv4 peers too whatever
/// `net.ipv6.bindv6only` says.
fn udp_socket(addr: SocketAddr, dual_stack: bool) -> anyhow::Result<std::net::UdpSocket> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto, sockopt};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let bound = (|| {
        let fd = rustix::net::socket_with(
            family,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(ipproto::UDP),
        )?;
        if addr.is_ipv6() && dual_stack {
            sockopt::set_ipv6_v6only(&fd, false)?;
        }
        rustix::net::bind(&fd, &addr)?;
        Ok::<_, rustix::io::Errno>(std::net::UdpSocket::from(fd))
    })();
    let socket = bound.with_context(|| format!("binding QUIC on {addr}"))?;
    let sized = sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER)
        .and_then(|()| sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER));
    if let Err(e) = sized {
        // The default buffers work, only slower under load.
        tracing::warn!(%addr, error = %e, "could not size the QUIC socket's buffers");
    }
    // Linux grants at most net.core.rmem_max, silently (and reports twice
    // what it grants).
    let granted = sockopt::socket_recv_buffer_size(&socket).unwrap_or(0);
    if granted < 2 * SOCKET_BUFFER {
        static TOLD: std::sync::Once = std::sync::Once::new();
        TOLD.call_once(|| {
            tracing::info!(
                granted = granted / 2,
                "the kernel grants the QUIC socket less buffer than it asks; copies from \
                 peers may lose datagrams: set net.core.rmem_max and wmem_max to 4194304 \
                 (the packages do)"
            );
        });
    }
    Ok(socket)
}

impl PeerEndpoint {
    /// Binds `addr` for the node ↔ node protocol, accepting `members` only.
    pub fn bind(addr: SocketAddr, identity: &Identity, members: Members) -> anyhow::Result<Self> {
        Self::bind_for(addr, identity, members, wire::ALPN, Limits::default())
    }

    /// Binds `addr` for the protocol named by `alpn`, accepting `members` only,
    /// under the connection caps `limits`.
    pub fn bind_for(
        addr: SocketAddr,
        identity: &Identity,
        members: Members,
        alpn: &[u8],
        limits: Limits,
    ) -> anyhow::Result<Self> {
        let (cert, key) = identity.certificate()?;
        let tls = auth::server_config(cert.clone(), key.clone_key(), members.clone(), alpn)?;
        let mut server =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
        server
            .transport_config(server_transport())
            .max_incoming(limits.max_connections)
            .incoming_buffer_size(INCOMING_BUFFER_BYTES)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL_BYTES);
        let endpoint = endpoint_on(addr, Some(server))?;
        Ok(Self {
            dialing: endpoint.clone(),
            endpoint,
            cert,
            key: Arc::new(key),
            members,
            admission: Admission::new(limits),
            listed: Listed::default(),
        })
    }

    /// This endpoint, its own connections dialed from a second one on its
    /// address and an ephemeral port, driven by the runtime current now.
    /// quinn drives an endpoint, and the connections it accepts, on the
    /// runtime current when they are made: an endpoint bound on another
    /// runtime (a node's copies') so leaves its dialing to this one's, and
    /// neither waits on the other's threads.
    pub fn dialing_from_here(self) -> anyhow::Result<Self> {
        // The listening address with port 0 keeps an IPv6 scope.
        let mut dial_from = self.endpoint.local_addr()?;
        dial_from.set_port(0);
        let dialing = endpoint_on(dial_from, None)?;
        Ok(Self { dialing, ..self })
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
        config.transport_config(client_transport());
        let connecting = self
            .dialing
            .connect_with(config, peer.addr, "cartable-node")
            .with_context(|| format!("connecting to {peer}"))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(handshake) => handshake.with_context(|| format!("handshake with {peer}")),
            Err(_) => anyhow::bail!("handshake with {peer}: no answer within {CONNECT_TIMEOUT:?}"),
        }
    }

    /// The next connection attempt within the caps; `None` once closed. Attempts
    /// beyond the caps are refused here, and under load unvalidated addresses
    /// are asked to retry.
    pub async fn accept(&self) -> Option<Arriving> {
        loop {
            let incoming = self.endpoint.accept().await?;
            if let Some(arriving) = self.judge(incoming) {
                return Some(arriving);
            }
        }
    }

    /// Takes a slot for `incoming`, or refuses it, or asks it to retry.
    fn judge(&self, incoming: quinn::Incoming) -> Option<Arriving> {
        let remote = incoming.remote_address();
        let verdict = match self
            .admission
            .consider(remote.ip(), incoming.remote_address_validated())
        {
            Ok(slot) => {
                return Some(Arriving {
                    incoming,
                    slot,
                    listed: self.listed.clone(),
                });
            }
            Err(verdict) => verdict,
        };
        tracing::debug!(%remote, ?verdict, "connection attempt not taken");
        match verdict {
            // Retry is asked only of unvalidated addresses, which may always retry.
            Verdict::Retry => {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
            }
            _ => incoming.refuse(),
        }
        None
    }

    /// Connections (handshakes included) this endpoint counts now: in all, and
    /// strangers'.
    pub fn open_connections(&self) -> (usize, usize) {
        self.admission.open()
    }

    /// Closes every accepted connection from `peer` (a member removed).
    pub fn close_peer(&self, peer: &NodeId) {
        self.listed
            .close_where(|id| id == peer, b"no longer a member");
    }

    /// Closes every accepted connection from a key the member list no longer holds.
    pub fn close_unlisted(&self) {
        let members = self.members.clone();
        self.listed
            .close_where(|id| !members.contains(id), b"no longer a member");
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
        self.dialing.close(0u32.into(), b"shutting down");
    }
}

/// An attempt within the caps, its handshake not done yet.
#[derive(Debug)]
pub struct Arriving {
    incoming: quinn::Incoming,
    slot: Slot,
    listed: Listed,
}

impl Arriving {
    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.incoming.remote_address()
    }

    /// Completes the handshake within [`HANDSHAKE_TIMEOUT`].
    pub async fn handshake(self) -> anyhow::Result<PeerConnection> {
        let Self {
            incoming,
            slot,
            listed,
        } = self;
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming)
            .await
            .context("handshake not finished in time")?
            .context("handshake failed")?;
        slot.handshake_done();
        let peer = auth::peer_node_id(&conn).context("the peer presented no node key")?;
        let listing = listed.add(peer, conn.clone());
        Ok(PeerConnection {
            conn,
            peer,
            slot,
            _listing: listing,
        })
    }
}

/// An accepted connection with a proven key, counted and listed while it lives:
/// keep it for as long as the connection is served.
#[derive(Debug)]
pub struct PeerConnection {
    /// The connection.
    pub conn: quinn::Connection,
    /// The key the peer proved.
    pub peer: NodeId,
    slot: Slot,
    _listing: Listing,
}

impl PeerConnection {
    /// Raises the limits from a stranger's to a member's, and stops counting
    /// the connection as a stranger's.
    pub fn trust(&self) {
        admission::trust(&self.conn);
        self.slot.trust();
    }
}

/// Accepted connections by key, so that a removed member's can be closed.
#[derive(Debug, Clone, Default)]
struct Listed {
    by_id: Arc<Mutex<HashMap<usize, (NodeId, quinn::Connection)>>>,
}

impl Listed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, (NodeId, quinn::Connection)>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, peer: NodeId, conn: quinn::Connection) -> Listing {
        let id = conn.stable_id();
        self.lock().insert(id, (peer, conn));
        Listing {
            listed: self.clone(),
            id,
        }
    }

    fn close_where(&self, close: impl Fn(&NodeId) -> bool, reason: &[u8]) {
        for (peer, conn) in self.lock().values().filter(|(peer, _)| close(peer)) {
            tracing::info!(%peer, "closing a connection: no longer a member");
            conn.close(CLOSED_NOT_MEMBER.into(), reason);
        }
    }
}

/// The application close code sent to a peer that is no longer a member.
pub const CLOSED_NOT_MEMBER: u32 = 2;

/// The QUIC close code of a connection refused for the peer's cap on
/// connections from one node: the asker is told to come back, not that the
/// peer is gone (see [`crate::peer::exchange::PeerFailure::Busy`]).
pub const CLOSED_TOO_MANY: u32 = 3;

/// A connection's entry in [`Listed`], removed when dropped.
#[derive(Debug)]
struct Listing {
    listed: Listed,
    id: usize,
}

impl Drop for Listing {
    fn drop(&mut self) {
        self.listed.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_socket_buffers_what_the_kernel_allows_up_to_its_size() -> anyhow::Result<()> {
        use rustix::net::sockopt;
        let socket = udp_socket("127.0.0.1:0".parse()?, false)?;
        for (got, max) in [
            (sockopt::socket_recv_buffer_size(&socket)?, "rmem_max"),
            (sockopt::socket_send_buffer_size(&socket)?, "wmem_max"),
        ] {
            let allowed: usize = std::fs::read_to_string(format!("/proc/sys/net/core/{max}"))?
                .trim()
                .parse()?;
            // Linux reports twice what it grants: its own bookkeeping included.
            assert_eq!(got, 2 * SOCKET_BUFFER.min(allowed), "{max} {allowed}");
        }
        Ok(())
    }

    #[test]
    fn a_dialing_socket_on_ipv6_reaches_ipv4_peers_too() -> anyhow::Result<()> {
        use rustix::net::sockopt;
        let Ok(socket) = udp_socket("[::]:0".parse()?, true) else {
            return Ok(()); // no IPv6 on this machine
        };
        assert!(!sockopt::ipv6_v6only(&socket)?);
        let listening = udp_socket("[::]:0".parse()?, false)?;
        let system = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only")?;
        assert_eq!(sockopt::ipv6_v6only(&listening)?, system.trim() == "1");
        Ok(())
    }

    /// A listening endpoint under `limits` that serves every accepted connection
    /// (trusted, one echo of a byte per stream), and a client of it.
    async fn pair(limits: Limits) -> anyhow::Result<(PeerEndpoint, PeerEndpoint, PeerAddr)> {
        let keys = tempfile::tempdir()?;
        let server_key = Identity::load_or_create(&keys.path().join("server"))?;
        let client_key = Identity::load_or_create(&keys.path().join("client"))?;
        let loopback = "127.0.0.1:0".parse()?;
        let server =
            PeerEndpoint::bind_for(loopback, &server_key, Members::anyone(), wire::ALPN, limits)?;
        let client = PeerEndpoint::bind(loopback, &client_key, Members::anyone())?;
        let addr = PeerAddr {
            id: server_key.id(),
            addr: server.local_addr()?,
        };
        let listening = server.clone();
        tokio::spawn(async move {
            while let Some(arriving) = listening.accept().await {
                tokio::spawn(async move {
                    let Ok(peer) = arriving.handshake().await else {
                        return;
                    };
                    peer.trust();
                    // Held until the client closes, so that the slot stays counted.
                    let _ = peer.conn.closed().await;
                });
            }
        });
        Ok((server, client, addr))
    }

    /// Waits (up to 1 s) for the server to count `expected` (in all, strangers').
    async fn counted(server: &PeerEndpoint, expected: (usize, usize)) -> (usize, usize) {
        for _ in 0..50 {
            if server.open_connections() == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.open_connections()
    }

    fn refused(e: &anyhow::Error) -> bool {
        matches!(
            e.downcast_ref::<quinn::ConnectionError>(),
            Some(quinn::ConnectionError::ConnectionClosed(close))
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
        )
    }

    #[tokio::test]
    async fn a_busy_endpoint_makes_new_addresses_retry_and_they_still_connect() -> anyhow::Result<()>
    {
        let (server, client, addr) = pair(Limits {
            retry_above_handshakes: 0,
            ..Limits::default()
        })
        .await?;
        let conn = client.connect(addr).await?;
        assert!(conn.close_reason().is_none());
        assert_eq!(
            counted(&server, (1, 0)).await,
            (1, 0),
            "counted, as a member"
        );
        Ok(())
    }

    #[tokio::test]
    async fn attempts_past_the_cap_are_refused_until_a_connection_closes() -> anyhow::Result<()> {
        let (server, client, addr) = pair(Limits {
            max_connections: 2,
            max_strangers: 2,
            max_strangers_per_network: 2,
            ..Limits::default()
        })
        .await?;
        let first = client.connect(addr).await?;
        let _second = client.connect(addr).await?;
        let third = client.connect(addr).await.unwrap_err();
        assert!(refused(&third), "{third:#}");
        first.close(0u32.into(), b"done");
        assert_eq!(counted(&server, (1, 0)).await, (1, 0));
        assert!(client.connect(addr).await.is_ok(), "a freed place is taken");
        Ok(())
    }

    #[test]
    fn listening_on_another_runtime_leaves_dialing_to_the_callers() -> anyhow::Result<()> {
        let keys = tempfile::tempdir()?;
        let (a_key, b_key) = (
            Identity::load_or_create(&keys.path().join("a"))?,
            Identity::load_or_create(&keys.path().join("b"))?,
        );
        let loopback: SocketAddr = "127.0.0.1:0".parse()?;
        let dialing = tokio::runtime::Runtime::new()?;
        let listening = tokio::runtime::Runtime::new()?;
        let a = {
            let _listening = listening.enter();
            PeerEndpoint::bind(loopback, &a_key, Members::anyone())?
        };
        let a = {
            let _dialing = dialing.enter();
            a.dialing_from_here()?
        };
        // With the listening runtime gone, A's listener has no driver left...
        drop(listening);
        dialing.block_on(async {
            let b = PeerEndpoint::bind(loopback, &b_key, Members::anyone())?;
            let (seen, arrived) = tokio::sync::oneshot::channel();
            let accepting = b.clone();
            tokio::spawn(async move {
                let arriving = accepting.accept().await.expect("B is open");
                let _ = seen.send(arriving.remote_address());
                let _ = arriving.handshake().await;
            });
            let a_at = PeerAddr {
                id: a_key.id(),
                addr: a.local_addr()?,
            };
            let b_at = PeerAddr {
                id: b_key.id(),
                addr: b.local_addr()?,
            };
            // ...while it still dials, from a port of its own.
            a.connect(b_at).await?;
            let from = arrived.await?;
            assert_ne!(
                from.port(),
                a_at.addr.port(),
                "dialed from the listening port"
            );
            assert!(b.connect(a_at).await.is_err(), "A still accepts");
            Ok(())
        })
    }
}
