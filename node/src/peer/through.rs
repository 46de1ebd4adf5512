//! Fetch-through: a browser asks this node for a bundle it does not hold; the
//! node fetches from its peers only the chunk groups the request needs,
//! verified, into the blob's partial files, and serves them from there. A blob
//! whose every group has arrived moves into the store as cache: past the cap,
//! the cached blobs fetched longest ago are evicted (no bundle held here uses
//! them; those a held bundle uses are never evicted). Concurrent requests for
//! one blob wait for one upstream fetch rather than starting their own, and
//! then find their groups already here.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cartable_proto::wire::GroupRanges;
use cartable_proto::{BlobHash, BundleId, Manifest, NodeId};

use super::PeerAddr;
use super::endpoint::PeerEndpoint;
use super::exchange::{GroupSink, PeerFailure, ask_manifest, request_groups};
use super::reputation::Reputation;
use crate::store::verify::GROUP_BYTES;
use crate::store::{PartialBlob, Store};

/// Remote manifests remembered; the map is emptied when full.
const MAX_MANIFESTS: usize = 4096;

/// Where verified bytes of a blob can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The store holds the whole blob.
    Stored,
    /// The groups asked for are verified in the blob's partial files.
    Partial,
}

/// The blob could not be fetched from any peer.
#[derive(Debug, thiserror::Error)]
#[error("no peer could provide blob {0}")]
pub struct Unavailable(BlobHash);

/// One blob being fetched through.
#[derive(Debug, Default)]
struct Slot {
    /// Held while fetching from upstream: one fetch per blob at a time.
    fetching: tokio::sync::Mutex<()>,
    partial: Arc<Mutex<Option<PartialBlob>>>,
}

/// Fetch-through for one node.
#[derive(Debug)]
pub struct FetchThrough {
    endpoint: PeerEndpoint,
    peers: Mutex<Vec<PeerAddr>>,
    store: Arc<Store>,
    conns: tokio::sync::Mutex<HashMap<NodeId, quinn::Connection>>,
    manifests: Mutex<HashMap<BundleId, Arc<Manifest>>>,
    slots: Mutex<HashMap<BlobHash, Arc<Slot>>>,
    received: Arc<AtomicU64>,
    reputation: Arc<Reputation>,
    /// Bytes of fetched-through blobs kept before the least recently used go.
    cache_max_bytes: u64,
}

impl FetchThrough {
    /// Fetch-through from `peers`, into `store`; liars are counted in `reputation`.
    pub fn new(
        endpoint: PeerEndpoint,
        peers: Vec<PeerAddr>,
        store: Arc<Store>,
        reputation: Arc<Reputation>,
        cache_max_bytes: u64,
    ) -> Self {
        Self {
            endpoint,
            peers: Mutex::new(peers),
            store,
            reputation,
            cache_max_bytes,
            conns: Default::default(),
            manifests: Default::default(),
            slots: Default::default(),
            received: Default::default(),
        }
    }

    /// Replaces the peers asked (a new member list from the coordinator).
    pub fn set_peers(&self, peers: Vec<PeerAddr>) {
        *self.peers.lock().unwrap_or_else(|e| e.into_inner()) = peers;
    }

    fn peers(&self) -> Vec<PeerAddr> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Verified bytes received from peers so far.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// A peer's connection, reused while it lives.
    async fn connection(&self, peer: PeerAddr) -> Option<quinn::Connection> {
        let mut conns = self.conns.lock().await;
        if let Some(conn) = conns.get(&peer.id).filter(|c| c.close_reason().is_none()) {
            return Some(conn.clone());
        }
        match self.endpoint.connect(peer).await {
            Ok(conn) => {
                conns.insert(peer.id, conn.clone());
                Some(conn)
            }
            Err(e) => {
                tracing::warn!(peer = %peer.id, error = format!("{e:#}"), "peer unreachable");
                None
            }
        }
    }

    /// The manifest of a bundle a peer holds, checked against its id.
    pub async fn manifest(&self, id: &BundleId) -> Option<Arc<Manifest>> {
        if let Some(m) = self
            .manifests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Some(m.clone());
        }
        for peer in &self.peers() {
            let Some(conn) = self.connection(*peer).await else {
                continue;
            };
            match ask_manifest(&conn, *id).await {
                Ok(m) => {
                    let m = Arc::new(m);
                    let mut cache = self.manifests.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() >= MAX_MANIFESTS {
                        cache.clear();
                    }
                    cache.insert(*id, m.clone());
                    return Some(m);
                }
                Err(PeerFailure::Missing | PeerFailure::Busy(_)) => {}
                Err(failure) => {
                    tracing::warn!(peer = %peer.id, ?failure, "manifest fetch-through failed")
                }
            }
        }
        None
    }

    fn slot(&self, hash: &BlobHash, size: u64) -> std::io::Result<Arc<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(hash) {
            return Ok(slot.clone());
        }
        let slot = Arc::new(Slot {
            fetching: Default::default(),
            partial: Arc::new(Mutex::new(Some(self.store.partial(hash, size)?))),
        });
        slots.insert(*hash, slot.clone());
        Ok(slot)
    }

    /// Makes sure the groups covering `range` of a blob are verified here,
    /// fetching the missing ones from a peer.
    pub async fn ensure(
        &self,
        hash: BlobHash,
        size: u64,
        range: Range<u64>,
    ) -> Result<Source, Unavailable> {
        if self.store.has_blob_file(&hash, size) {
            return Ok(Source::Stored);
        }
        let slot = self.slot(&hash, size).map_err(|_| Unavailable(hash))?;
        let _fetching = slot.fetching.lock().await;
        if self.store.has_blob_file(&hash, size) {
            return Ok(Source::Stored);
        }
        let wanted = range.start / GROUP_BYTES..range.end.div_ceil(GROUP_BYTES).max(1);
        let missing = {
            let partial = slot.partial.lock().unwrap_or_else(|e| e.into_inner());
            let ranges = partial
                .as_ref()
                .map(PartialBlob::missing)
                .unwrap_or_default();
            let clipped = ranges
                .iter()
                .map(|r| r.start.max(wanted.start)..r.end.min(wanted.end));
            GroupRanges::new(clipped.collect())
        };
        if let Some(missing) = missing {
            self.fetch_groups(hash, size, missing, &slot).await?;
        }
        self.commit_if_complete(&hash, &slot);
        Ok(if self.store.has_blob_file(&hash, size) {
            Source::Stored
        } else {
            Source::Partial
        })
    }

    async fn fetch_groups(
        &self,
        hash: BlobHash,
        size: u64,
        groups: GroupRanges,
        slot: &Slot,
    ) -> Result<(), Unavailable> {
        for peer in &self.peers() {
            let Some(conn) = self.connection(*peer).await else {
                continue;
            };
            let sink = GroupSink {
                partial: slot.partial.clone(),
                store: self.store.clone(),
                received: self.received.clone(),
                rate: None,
            };
            match request_groups(&conn, hash, size, groups.clone(), sink).await {
                Ok(()) => return Ok(()),
                Err(PeerFailure::Missing | PeerFailure::Busy(_)) => {}
                Err(failure) => {
                    if let PeerFailure::Lied(why) = &failure {
                        self.reputation.report(peer.id, why);
                    }
                    tracing::warn!(peer = %peer.id, blob = %hash, ?failure, "fetch-through from peer failed");
                    if let Some(conn) = self.conns.lock().await.remove(&peer.id) {
                        conn.close(1u32.into(), b"dropped");
                    }
                }
            }
        }
        Err(Unavailable(hash))
    }

    /// Keeps a fetched-through blob as cache, evicting the oldest beyond the cap.
    fn keep(&self, hash: &BlobHash, size: u64) {
        if let Err(e) = self.store.use_cached(hash, size, self.cache_max_bytes) {
            tracing::error!(blob = %hash, error = %e, "updating the fetch-through cache");
        }
    }

    fn commit_if_complete(&self, hash: &BlobHash, slot: &Slot) {
        let mut partial = slot.partial.lock().unwrap_or_else(|e| e.into_inner());
        if !partial.as_ref().is_some_and(PartialBlob::is_complete) {
            return;
        }
        if let Some(complete) = partial.take() {
            let size = complete.size();
            match self.store.commit_partial(complete) {
                Ok(()) => self.keep(hash, size),
                Err(e) => {
                    tracing::error!(blob = %hash, error = %e, "storing a fetched-through blob")
                }
            }
        }
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
    }
}
