//! Whom to ask for a bundle: the members the coordinator's orders name as its
//! holders, and the peer that gave its manifest, before anyone else; and the
//! bundle ids no peer had, remembered for a while so that a stranger asking
//! a thousand made-up ids does not make the node ask every peer a thousand
//! times. Pure: time is passed in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use cartable_proto::{BlobHash, BundleId, Manifest, NodeId};

use cartable_net::peer::PeerAddr;

/// How long an id no peer had is answered "unknown" without asking: long
/// enough to absorb a flood, short enough that a bundle just published
/// elsewhere shows up soon.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(30);
/// Unknown ids remembered at most (about 100 bytes each); past it, the oldest
/// are forgotten first.
pub const MAX_UNKNOWN: usize = 16_384;
/// Blobs whose bundle (and so whose holders) is remembered; the map is emptied
/// when full, like the manifest cache it follows.
pub const MAX_BLOB_HINTS: usize = 65_536;

/// Bundle ids no peer had, until their time is up.
#[derive(Debug, Default)]
pub(super) struct Unknown {
    until: HashMap<BundleId, Instant>,
    /// The same entries in the order they expire (one TTL for all).
    order: VecDeque<(BundleId, Instant)>,
}

impl Unknown {
    /// Whether `id` was found unknown less than [`UNKNOWN_TTL`] ago.
    pub(super) fn contains(&self, id: &BundleId, now: Instant) -> bool {
        self.until.get(id).is_some_and(|until| now < *until)
    }

    /// Remembers that no peer had `id`.
    pub(super) fn insert(&mut self, id: BundleId, now: Instant) {
        while let Some(&(old, until)) = self.order.front() {
            if until > now && self.order.len() < MAX_UNKNOWN {
                break;
            }
            self.order.pop_front();
            if self.until.get(&old) == Some(&until) {
                self.until.remove(&old);
            }
        }
        let until = now + UNKNOWN_TTL;
        self.until.insert(id, until);
        self.order.push_back((id, until));
    }

    /// Forgets `id` (the orders now name its holders).
    pub(super) fn forget(&mut self, id: &BundleId) {
        self.until.remove(id);
    }

    /// Ids remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.until.len()
    }
}

/// Who is known to hold what.
#[derive(Debug, Default)]
pub(super) struct Holders {
    /// From the orders: bundles this node is to hold, with the members to copy
    /// them from (the coordinator's verified replicas).
    assigned: HashMap<BundleId, Vec<NodeId>>,
    /// The peer that gave each manifest fetched through.
    answered: HashMap<BundleId, NodeId>,
    /// The bundle each blob fetched through was found in.
    blob_bundle: HashMap<BlobHash, BundleId>,
}

impl Holders {
    /// Replaces what the orders say.
    pub(super) fn set_assigned(&mut self, assigned: HashMap<BundleId, Vec<NodeId>>) {
        self.assigned = assigned;
    }

    /// Remembers that `peer` gave `manifest`, for the requests of its blobs.
    pub(super) fn learn(&mut self, manifest: &Manifest, peer: NodeId) {
        let id = manifest.id();
        if self.answered.len() >= MAX_BLOB_HINTS {
            self.answered.clear();
        }
        self.answered.insert(id, peer);
        if self.blob_bundle.len() + manifest.entries().len() > MAX_BLOB_HINTS {
            self.blob_bundle.clear();
        }
        for entry in manifest.entries().iter().take(MAX_BLOB_HINTS) {
            self.blob_bundle.insert(entry.hash, id);
        }
    }

    /// The members likely to hold `id`, best first.
    pub(super) fn of_bundle(&self, id: &BundleId) -> Vec<NodeId> {
        let mut out = self.assigned.get(id).cloned().unwrap_or_default();
        if let Some(peer) = self.answered.get(id)
            && !out.contains(peer)
        {
            out.push(*peer);
        }
        out
    }

    /// The members likely to hold blob `hash`, best first.
    pub(super) fn of_blob(&self, hash: &BlobHash) -> Vec<NodeId> {
        self.blob_bundle
            .get(hash)
            .map(|id| self.of_bundle(id))
            .unwrap_or_default()
    }
}

/// `peers` with those in `likely` first (in that order), then the others: a
/// peer the node knows nothing about is still asked, after the likely ones.
pub(super) fn likely_first(peers: &[PeerAddr], likely: &[NodeId]) -> Vec<PeerAddr> {
    let mut out: Vec<PeerAddr> = likely
        .iter()
        .filter_map(|id| peers.iter().find(|p| p.id == *id).copied())
        .collect();
    out.extend(peers.iter().filter(|p| !likely.contains(&p.id)).copied());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> BundleId {
        BundleId::of_manifest(&[n])
    }

    #[test]
    fn an_unknown_id_is_remembered_for_its_ttl_only() {
        let t0 = Instant::now();
        let mut unknown = Unknown::default();
        unknown.insert(id(1), t0);
        assert!(unknown.contains(&id(1), t0 + UNKNOWN_TTL - Duration::from_millis(1)));
        assert!(!unknown.contains(&id(1), t0 + UNKNOWN_TTL));
        assert!(!unknown.contains(&id(2), t0));
        unknown.insert(id(2), t0 + UNKNOWN_TTL);
        assert_eq!(unknown.len(), 1, "the expired entry is dropped");
    }

    #[test]
    fn a_flood_of_distinct_ids_stays_bounded_and_keeps_the_newest() {
        let t0 = Instant::now();
        let mut unknown = Unknown::default();
        for n in 0..(MAX_UNKNOWN as u32 + 1000) {
            unknown.insert(BundleId::of_manifest(&n.to_le_bytes()), t0);
        }
        assert!(unknown.len() <= MAX_UNKNOWN);
        assert!(unknown.order.len() <= MAX_UNKNOWN);
        let newest = BundleId::of_manifest(&(MAX_UNKNOWN as u32 + 999).to_le_bytes());
        assert!(unknown.contains(&newest, t0));
        assert!(!unknown.contains(&BundleId::of_manifest(&0u32.to_le_bytes()), t0));
    }

    #[test]
    fn a_forgotten_id_is_asked_again() {
        let t0 = Instant::now();
        let mut unknown = Unknown::default();
        unknown.insert(id(1), t0);
        unknown.forget(&id(1));
        assert!(!unknown.contains(&id(1), t0));
    }

    #[test]
    fn the_assigned_holders_come_first_then_the_other_peers() -> anyhow::Result<()> {
        let peers: Vec<PeerAddr> = (1..=4u8)
            .map(|n| PeerAddr {
                id: NodeId::from_bytes([n; 32]),
                addr: ([127, 0, 0, n], 7000).into(),
            })
            .collect();
        let mut holders = Holders::default();
        holders.set_assigned(HashMap::from([(id(9), vec![peers[2].id, peers[3].id])]));
        let order = likely_first(&peers, &holders.of_bundle(&id(9)));
        let ids: Vec<NodeId> = order.iter().map(|p| p.id).collect();
        assert_eq!(ids, [peers[2].id, peers[3].id, peers[0].id, peers[1].id]);
        assert_eq!(
            likely_first(&peers, &[]),
            peers,
            "nothing known: every peer"
        );
        Ok(())
    }

    #[test]
    fn a_blob_is_asked_first_of_the_peer_that_gave_its_manifest() -> anyhow::Result<()> {
        let entry = cartable_proto::ManifestEntry {
            path: cartable_proto::BundlePath::new("a.txt")?,
            hash: BlobHash::of(b"a"),
            size: 1,
            content_type: "text/plain".into(),
        };
        let manifest = Manifest::new(vec![entry])?;
        let peer = NodeId::from_bytes([5; 32]);
        let mut holders = Holders::default();
        holders.learn(&manifest, peer);
        assert_eq!(holders.of_blob(&BlobHash::of(b"a")), [peer]);
        assert!(holders.of_blob(&BlobHash::of(b"b")).is_empty());
        Ok(())
    }
}
