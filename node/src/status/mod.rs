//! What a node shows about itself: the status page at `/` for whoever runs the
//! school's server, and the gauges of `/metrics` (`crate::metrics`). Both read
//! one [`Snapshot`], taken at most every [`FRESH_FOR`] and keeping at most
//! [`LISTED`] bundles and peers, so that a node with 50,000 bundles answers a
//! flood of `/` with the same cheap page, not 50,000 rows per request.
//!
//! Nothing secret is read here: no token, key, admin socket or data folder.

pub mod page;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cartable_proto::NodeId;
use prometheus_client::metrics::counter::Counter;

use crate::member::Member;
use crate::peer::reputation::Reputation;
use crate::peer::through::FetchThrough;
use crate::store::{BundleSummary, Store, StoreError};

/// Bundles and peers a snapshot keeps (the page says how many more there are).
pub const LISTED: usize = 100;
/// A snapshot answers every page and scrape for this long.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// Where a node's status is read from.
#[derive(Debug)]
pub struct Sources {
    /// The node's id (its public key: not a secret).
    pub id: NodeId,
    /// The store.
    pub store: Arc<Store>,
    /// Fetch-through, when the node has peers.
    pub through: Option<Arc<FetchThrough>>,
    /// Membership of a coordinator, when the node joined one.
    pub member: Option<Arc<Member>>,
    /// Peers caught sending data that failed verification.
    pub reputation: Arc<Reputation>,
    /// Verified bytes copied from peers (assigned copies and `cartable-node fetch`).
    pub copied: Arc<AtomicU64>,
    /// Bytes of response bodies sent to browsers.
    pub served: Counter,
    cached: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
}

/// The node as it was a moment ago.
#[derive(Debug)]
pub struct Snapshot {
    taken: Instant,
    /// The first [`LISTED`] bundles held, by id.
    pub bundles: Vec<BundleSummary>,
    /// Bundles held in all.
    pub bundle_count: usize,
    /// Bytes of the bundles held (what the node reports to its coordinator).
    pub used_bytes: u64,
    /// Capacity offered to the coordinator at join; `None`: not a member.
    pub capacity: Option<u64>,
    /// Free bytes on the data folder's filesystem, when it could be read.
    pub disk_free: Option<u64>,
    /// The first [`LISTED`] peers, by id.
    pub peers: Vec<NodeId>,
    /// Peers in all.
    pub peer_count: usize,
    /// The coordinator as this node sees it; `None`: not a member.
    pub coordinator: Option<CoordinatorSeen>,
}

/// The coordinator as a member sees it.
#[derive(Debug, Clone, Copy)]
pub struct CoordinatorSeen {
    /// It answered within the time a heartbeat is given.
    pub reachable: bool,
    /// Since its last answer; `None`: none since this node started.
    pub last_answer: Option<Duration>,
    /// Bundles it assigned here that are not held whole yet.
    pub pending: usize,
}

/// Counts that grow, read live rather than from the snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    /// Bytes of response bodies sent to browsers.
    pub served: u64,
    /// Verified bytes copied from peers.
    pub copied: u64,
    /// Verified bytes fetched through from peers for browsers.
    pub through: u64,
}

impl Sources {
    /// Status read from these parts of a running node.
    pub fn new(
        id: NodeId,
        store: Arc<Store>,
        through: Option<Arc<FetchThrough>>,
        member: Option<Arc<Member>>,
        reputation: Arc<Reputation>,
        copied: Arc<AtomicU64>,
    ) -> Self {
        Self {
            id,
            store,
            through,
            member,
            reputation,
            copied,
            served: Counter::default(),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The snapshot, taken again when stale; the store is read on a blocking
    /// thread, by one request while the others wait for its result.
    pub async fn snapshot(self: &Arc<Self>) -> Result<Arc<Snapshot>, StoreError> {
        let mut cached = self.cached.lock().await;
        if let Some(fresh) = cached.as_ref().filter(|s| s.taken.elapsed() < FRESH_FOR) {
            return Ok(fresh.clone());
        }
        let sources = self.clone();
        let taken = tokio::task::spawn_blocking(move || sources.take())
            .await
            .map_err(|e| StoreError::Io {
                path: "status".into(),
                source: std::io::Error::other(e),
            })??;
        let taken = Arc::new(taken);
        *cached = Some(taken.clone());
        Ok(taken)
    }

    /// [`Sources::snapshot`] from a blocking thread (a metrics scrape).
    pub fn snapshot_blocking(&self) -> Result<Arc<Snapshot>, StoreError> {
        let mut cached = self.cached.blocking_lock();
        if let Some(fresh) = cached.as_ref().filter(|s| s.taken.elapsed() < FRESH_FOR) {
            return Ok(fresh.clone());
        }
        let taken = Arc::new(self.take()?);
        *cached = Some(taken.clone());
        Ok(taken)
    }

    /// The counts that grow, now.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            served: self.served.get(),
            copied: self.copied.load(Ordering::Relaxed),
            through: self.through.as_ref().map_or(0, |t| t.bytes_received()),
        }
    }

    fn take(&self) -> Result<Snapshot, StoreError> {
        let mut bundles = self.store.bundles()?;
        let bundle_count = bundles.len();
        let used_bytes = bundles.iter().map(|b| b.bytes).sum();
        bundles.truncate(LISTED);
        let mut peers: Vec<NodeId> = self
            .through
            .as_ref()
            .map(|t| t.peers().iter().map(|p| p.id).collect())
            .unwrap_or_default();
        let peer_count = peers.len();
        peers.truncate(LISTED);
        let coordinator = self.member.as_ref().map(|m| CoordinatorSeen {
            reachable: m.coordinator_reachable(),
            last_answer: m.last_answer(),
            pending: m.pending(),
        });
        Ok(Snapshot {
            taken: Instant::now(),
            bundles,
            bundle_count,
            used_bytes,
            capacity: self.member.as_ref().map(|m| m.capacity()),
            disk_free: self.store.layout().free_bytes().ok(),
            peers,
            peer_count,
            coordinator,
        })
    }
}
