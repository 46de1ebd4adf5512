//! Connections to peers shared by every fetch-through request. Each peer has
//! its own lock, held while dialing it: concurrent requests for one peer wait
//! for one dial rather than each dialing, and requests for other peers never
//! wait for it. A dial has a short deadline (the endpoint's), and a peer that failed is not
//! dialed again for a while, so a dead or stalling peer costs one deadline per
//! pause instead of one per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cartable_proto::NodeId;

use cartable_net::peer::PeerAddr;
use cartable_net::peer::endpoint::PeerEndpoint;
use tokio::runtime::Handle;

/// After a failed dial or a dropped connection, the peer is skipped this long.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

/// One peer's connection state.
#[derive(Debug, Default)]
struct Link {
    conn: Option<quinn::Connection>,
    failed_at: Option<Instant>,
}

impl Link {
    /// The live connection, if any.
    fn live(&self) -> Option<quinn::Connection> {
        self.conn.clone().filter(|c| c.close_reason().is_none())
    }

    /// Whether the peer failed too recently to dial again at `now`.
    fn resting(&self, now: Instant) -> bool {
        self.failed_at
            .is_some_and(|t| now.saturating_duration_since(t) < RETRY_AFTER_FAILURE)
    }
}

/// Connections to peers, dialed on demand and reused.
#[derive(Debug)]
pub struct Dialer {
    endpoint: PeerEndpoint,
    /// Where dials run: quinn drives a connection on the runtime current when
    /// it is made, and a dial made from a browser's request would leave the
    /// peer's connection on that request's HTTP/2 thread for its whole life.
    runtime: Handle,
    links: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Link>>>>,
}

impl Dialer {
    /// Dials through `endpoint`, its connections driven by the caller's runtime.
    pub fn new(endpoint: PeerEndpoint) -> Self {
        Self {
            endpoint,
            runtime: Handle::current(),
            links: Mutex::default(),
        }
    }

    fn link(&self, id: NodeId) -> Arc<tokio::sync::Mutex<Link>> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.entry(id).or_default().clone()
    }

    /// A connection to `peer`: the live one, or a new dial unless it failed
    /// within [`RETRY_AFTER_FAILURE`]. `None` when it cannot be reached.
    pub async fn connection(&self, peer: PeerAddr) -> Option<quinn::Connection> {
        let mut link = self.link(peer.id).lock_owned().await;
        if let Some(conn) = link.live() {
            return Some(conn);
        }
        if link.resting(Instant::now()) {
            return None;
        }
        // The dial keeps the link locked until it ends, even if this caller
        // goes: its outcome is kept, and the callers waiting share it.
        let endpoint = self.endpoint.clone();
        let dial = self.runtime.spawn(async move {
            match endpoint.connect(peer).await {
                Ok(conn) => {
                    link.conn = Some(conn.clone());
                    link.failed_at = None;
                    Some(conn)
                }
                Err(e) => {
                    tracing::warn!(peer = %peer.id, error = format!("{e:#}"), "peer unreachable");
                    link.failed_at = Some(Instant::now());
                    None
                }
            }
        });
        dial.await.ok().flatten()
    }

    /// Closes the connection to a peer that failed a request (stalled, went
    /// away, lied) and rests it for [`RETRY_AFTER_FAILURE`].
    pub async fn drop_peer(&self, id: NodeId) {
        let link = self.link(id);
        let mut link = link.lock().await;
        if let Some(conn) = link.conn.take() {
            conn.close(1u32.into(), b"dropped");
        }
        link.failed_at = Some(Instant::now());
    }

    /// Forgets the peers not in `keep` (a new member list), closing their connections.
    pub fn retain(&self, keep: &[PeerAddr]) {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|id, link| {
            let kept = keep.iter().any(|p| p.id == *id);
            // A link busy dialing closes with the last request holding it.
            if !kept
                && let Ok(mut link) = link.try_lock()
                && let Some(conn) = link.conn.take()
            {
                conn.close(0u32.into(), b"no longer a peer");
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartable_net::identity::Identity;
    use cartable_net::peer::auth::Members;
    use cartable_net::peer::endpoint::CONNECT_TIMEOUT;

    fn endpoint(keys: &std::path::Path, name: &str) -> anyhow::Result<(PeerEndpoint, NodeId)> {
        let identity = Identity::load_or_create(&keys.join(name))?;
        let bound = PeerEndpoint::bind("127.0.0.1:0".parse()?, &identity, Members::anyone())?;
        Ok((bound, identity.id()))
    }

    #[tokio::test]
    async fn requests_for_a_silent_peer_share_one_dial_then_skip_it() -> anyhow::Result<()> {
        let keys = tempfile::tempdir()?;
        let (ours, _) = endpoint(keys.path(), "us")?;
        // A socket that takes QUIC packets and never answers: a stalled peer.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let peer = PeerAddr {
            id: NodeId::from_bytes([9; 32]),
            addr: silent.local_addr()?,
        };
        let dialer = Arc::new(Dialer::new(ours));
        let started = Instant::now();
        let mut asks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let dialer = dialer.clone();
            asks.spawn(async move { dialer.connection(peer).await.is_none() });
        }
        while let Some(unreachable) = asks.join_next().await {
            assert!(unreachable?);
        }
        let waited = started.elapsed();
        assert!(
            waited >= CONNECT_TIMEOUT && waited < CONNECT_TIMEOUT * 2,
            "eight requests waited {waited:?}: one dial, not eight"
        );
        let again = Instant::now();
        assert!(dialer.connection(peer).await.is_none());
        assert!(
            again.elapsed() < Duration::from_millis(100),
            "resting: no dial"
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_live_connection_is_reused() -> anyhow::Result<()> {
        let keys = tempfile::tempdir()?;
        let (ours, _) = endpoint(keys.path(), "us")?;
        let (theirs, id) = endpoint(keys.path(), "them")?;
        let accept = theirs.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                tokio::spawn(async move {
                    if let Ok(peer) = incoming.handshake().await {
                        peer.conn.closed().await;
                    }
                });
            }
        });
        let peer = PeerAddr {
            id,
            addr: theirs.local_addr()?,
        };
        let dialer = Dialer::new(ours);
        let first = dialer.connection(peer).await.expect("a live peer");
        let second = dialer.connection(peer).await.expect("a live peer");
        assert_eq!(first.stable_id(), second.stable_id());
        dialer.drop_peer(peer.id).await;
        assert!(first.close_reason().is_some(), "dropped peers are closed");
        assert!(dialer.connection(peer).await.is_none(), "and rested");
        Ok(())
    }

    #[test]
    fn a_failed_peer_rests_then_is_dialed_again() {
        let t0 = Instant::now();
        let link = Link {
            conn: None,
            failed_at: Some(t0),
        };
        assert!(link.resting(t0 + RETRY_AFTER_FAILURE / 2));
        assert!(!link.resting(t0 + RETRY_AFTER_FAILURE));
        assert!(!Link::default().resting(t0), "never failed: dial");
    }
}
