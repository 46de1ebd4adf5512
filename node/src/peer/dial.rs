//! Connections to peers shared by every fetch-through request. Each peer has
//! its own lock, held while dialing it: concurrent requests for one peer wait
//! for one dial rather than each dialing, and requests for other peers never
//! wait for it. A dial has a short deadline, and a peer that failed is not
//! dialed again for a while, so a dead or stalling peer costs one deadline per
//! pause instead of one per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cartable_proto::NodeId;

use super::PeerAddr;
use super::endpoint::PeerEndpoint;

/// How long a dial may take: a loopback or school-network handshake takes
/// milliseconds; a dead peer would otherwise hold requests for QUIC's idle
/// timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
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
    links: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Link>>>>,
}

impl Dialer {
    /// Dials through `endpoint`.
    pub fn new(endpoint: PeerEndpoint) -> Self {
        Self {
            endpoint,
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
        let link = self.link(peer.id);
        let mut link = link.lock().await;
        if let Some(conn) = link.live() {
            return Some(conn);
        }
        if link.resting(Instant::now()) {
            return None;
        }
        let dialed = tokio::time::timeout(CONNECT_TIMEOUT, self.endpoint.connect(peer)).await;
        match dialed {
            Ok(Ok(conn)) => {
                link.conn = Some(conn.clone());
                link.failed_at = None;
                Some(conn)
            }
            Ok(Err(e)) => {
                tracing::warn!(peer = %peer.id, error = format!("{e:#}"), "peer unreachable");
                link.failed_at = Some(Instant::now());
                None
            }
            Err(_) => {
                tracing::warn!(peer = %peer.id, timeout = ?CONNECT_TIMEOUT, "peer did not answer");
                link.failed_at = Some(Instant::now());
                None
            }
        }
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
