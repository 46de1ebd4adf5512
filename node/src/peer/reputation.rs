//! Peers caught sending data that failed verification, counted per peer for
//! the life of the daemon: `cartable-node stats` shows them, and the
//! coordinator will collect them with heartbeats.

use std::collections::BTreeMap;
use std::sync::Mutex;

use cartable_proto::NodeId;

/// Verification failures per peer.
#[derive(Debug, Default)]
pub struct Reputation {
    failures: Mutex<BTreeMap<NodeId, u64>>,
}

impl Reputation {
    /// Records that `peer` sent data that failed verification.
    pub fn report(&self, peer: NodeId, why: &str) {
        tracing::warn!(%peer, reason = why, "peer sent data that failed verification");
        *self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer)
            .or_default() += 1;
    }

    /// Failures so far, by peer.
    pub fn failures(&self) -> BTreeMap<NodeId, u64> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
