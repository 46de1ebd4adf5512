//! Fetch-through: a browser asks this node for a bundle it does not hold; the
//! node fetches from its peers only the chunk groups the request needs,
//! verified, into the blob's partial files, and serves them from there. A blob
//! whose every group has arrived moves into the store as cache: past the cap,
//! the cached blobs fetched longest ago are evicted (no bundle held here uses
//! them; those a held bundle uses are never evicted). Concurrent requests for
//! one blob wait for one upstream fetch rather than starting their own, and
//! then find their groups already here.
//!
//! What a stranger can make it cost is bounded: [`slots`] caps the blobs with
//! partial files open (descriptors) and the store trims abandoned partial
//! files past a count and the cache size; [`lookup`] asks the likely holders
//! first and remembers ids no peer had; dials happen outside any shared lock,
//! with a deadline ([`super::dial`]); manifest lookups run a few at a time.

mod lookup;
mod slots;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cartable_proto::wire::GroupRanges;
use cartable_proto::{BlobHash, BundleId, Manifest, NodeId};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use super::dial::Dialer;
use super::reputation::Reputation;
use crate::peer::sink::GroupSink;
use crate::store::{BlobFiles, MAX_PARTIAL_BLOBS, PartialBlob, Store};
use cartable_net::peer::PeerAddr;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_net::peer::exchange::{PeerFailure, STALL_LIMIT, ask_manifest, request_groups};
use cartable_proto::wire::GROUP_BYTES;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lookup::{Holders, Unknown, likely_first};
use slots::{Idle, SlotError, Slots};

/// Remote manifests remembered; the map is emptied when full.
const MAX_MANIFESTS: usize = 4096;
/// Manifest lookups running at once; each may ask every peer, so a flood of
/// unknown ids asks peers at most this many requests at a time.
const LOOKUPS_AT_ONCE: usize = 8;
/// How long a lookup waits for its turn before the browser gets "busy".
const LOOKUP_QUEUE_WAIT: Duration = Duration::from_secs(2);
/// How long one peer may take to answer a manifest request (stream credit
/// included, which a stalling peer may never give).
const MANIFEST_ASK_LIMIT: Duration = STALL_LIMIT;
/// A lookup asks no more peers after this long: a browser is waiting.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(10);
/// How long a blob's fetch waits for holders that answered "busy".
const BUSY_WAIT_LIMIT: Duration = Duration::from_secs(5);
/// A lookup, or a fetch of groups, asks the next peer too when none has
/// answered for this long.
const HEDGE_AFTER: Duration = Duration::from_millis(200);
/// Holders asked for the same groups at once, at most: a hung one and the
/// next; more would multiply a flood's cost on the holders.
const GROUP_ASKS_AT_ONCE: usize = 2;
/// `partial/` is trimmed once every this many new partial blobs: a trim lists
/// the folder and the cache index, too dear for every 1-byte request of a
/// flood, and the folder overshoots its bounds by at most this many.
const TRIM_EVERY_NEW_PARTIALS: u64 = 16;

/// Where verified bytes of a blob can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The store holds the whole blob.
    Stored,
    /// The groups asked for are verified in the blob's partial files.
    Partial,
}

/// Why the groups of a blob could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// No peer could provide them.
    #[error("no peer could provide blob {0}")]
    NoPeer(BlobHash),
    /// Too many blobs are being fetched through at once: try again later.
    #[error("{0} blobs are being fetched through already")]
    Busy(usize),
    /// This node could not open the blob's partial files now.
    #[error("opening the partial files of blob {0}: {1}")]
    Local(BlobHash, std::io::Error),
}

/// Why no manifest came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// Every peer that answered said it does not hold the bundle (404).
    #[error("no peer holds this bundle")]
    Unknown,
    /// No peer answered, or the node is busy looking up others (503).
    #[error("no peer could be asked now")]
    Unavailable,
}

/// One blob being fetched through.
#[derive(Debug)]
struct Slot {
    /// Held while fetching from upstream: one fetch per blob at a time.
    fetching: tokio::sync::Mutex<()>,
    partial: Arc<Mutex<Option<PartialBlob>>>,
}

impl Idle for Slot {
    /// Idle when no request holds the slot and no fetch still writes into its
    /// files (a fetch outlives a browser that went away).
    fn is_idle(slot: &Arc<Self>) -> bool {
        Arc::strong_count(slot) == 1 && Arc::strong_count(&slot.partial) == 1
    }
}

/// Fetch-through for one node.
#[derive(Debug)]
pub struct FetchThrough {
    dialer: Dialer,
    /// The daemon's runtime, where responses' fetches run (see [`Self::spawn`]).
    runtime: Handle,
    peers: Mutex<Vec<PeerAddr>>,
    store: Arc<Store>,
    manifests: Mutex<HashMap<BundleId, Arc<Manifest>>>,
    unknown: Mutex<Unknown>,
    holders: Mutex<Holders>,
    lookups: Semaphore,
    slots: Mutex<Slots<Slot>>,
    received: Arc<AtomicU64>,
    /// Partial blobs started since this node started, for trimming.
    started: AtomicU64,
    reputation: Arc<Reputation>,
    /// Bytes of fetched-through blobs (and partial files) kept before the
    /// least recently used go.
    cache_max_bytes: u64,
}

impl FetchThrough {
    /// Fetch-through from `peers`, into `store`; liars are counted in
    /// `reputation`. Partial files an earlier run left are trimmed to the cap.
    pub fn new(
        endpoint: PeerEndpoint,
        peers: Vec<PeerAddr>,
        store: Arc<Store>,
        reputation: Arc<Reputation>,
        cache_max_bytes: u64,
    ) -> Self {
        let through = Self {
            dialer: Dialer::new(endpoint),
            runtime: Handle::current(),
            peers: Mutex::new(peers),
            store,
            reputation,
            cache_max_bytes,
            manifests: Default::default(),
            unknown: Default::default(),
            holders: Default::default(),
            lookups: Semaphore::new(LOOKUPS_AT_ONCE),
            slots: Mutex::new(Slots::new(slots::open_slots_cap())),
            received: Default::default(),
            started: Default::default(),
        };
        through.trim_partials();
        through
    }

    /// Replaces the peers asked (a new member list from the coordinator).
    pub fn set_peers(&self, peers: Vec<PeerAddr>) {
        self.dialer.retain(&peers);
        *lock(&self.peers) = peers;
    }

    /// Records, from the orders, the members holding each bundle this node
    /// is to hold: they are asked first. Those ids are no longer "unknown".
    pub fn set_holders(&self, holders: HashMap<BundleId, Vec<NodeId>>) {
        let mut unknown = lock(&self.unknown);
        for id in holders.keys() {
            unknown.forget(id);
        }
        lock(&self.holders).set_assigned(holders);
    }

    /// The peers asked now.
    pub fn peers(&self) -> Vec<PeerAddr> {
        lock(&self.peers).clone()
    }

    /// Verified bytes received from peers so far.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Runs a response's fetching on the daemon's runtime, not on the thread
    /// of the HTTP/2 connection that asked: committing a fetched file syncs
    /// and renames under the store's write lock, which would stall every
    /// connection on that thread meanwhile.
    pub fn spawn(&self, fetching: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(fetching);
    }

    /// The manifest of a bundle a peer holds, checked against its id: asked of
    /// the likely holders first, then the other peers; ids no peer had are
    /// answered [`LookupError::Unknown`] for [`UNKNOWN_TTL`](lookup::UNKNOWN_TTL) without asking.
    pub async fn lookup(&self, id: &BundleId) -> Result<Arc<Manifest>, LookupError> {
        if let Some(m) = self.cached_manifest(id) {
            return Ok(m);
        }
        if lock(&self.unknown).contains(id, Instant::now()) {
            return Err(LookupError::Unknown);
        }
        let _turn = tokio::time::timeout(LOOKUP_QUEUE_WAIT, self.lookups.acquire())
            .await
            .map_err(|_| LookupError::Unavailable)?
            .map_err(|_| LookupError::Unavailable)?;
        // Another lookup of the same id may have finished while this one waited.
        if let Some(m) = self.cached_manifest(id) {
            return Ok(m);
        }
        if lock(&self.unknown).contains(id, Instant::now()) {
            return Err(LookupError::Unknown);
        }
        self.ask_peers(id).await
    }

    /// The manifest of `id` if a peer gave it lately, without asking anyone.
    pub fn cached_manifest(&self, id: &BundleId) -> Option<Arc<Manifest>> {
        lock(&self.manifests).get(id).cloned()
    }

    /// Asks the likely holders first, one more every [`HEDGE_AFTER`] while
    /// none has answered: a holder that died a moment ago (its connection
    /// still looks open until a stall shows) costs a browser a fraction of a
    /// second, not the stall limit.
    async fn ask_peers(&self, id: &BundleId) -> Result<Arc<Manifest>, LookupError> {
        let likely = lock(&self.holders).of_bundle(id);
        let deadline = tokio::time::Instant::now() + LOOKUP_DEADLINE;
        let mut queue = likely_first(&self.peers(), &likely).into_iter();
        let mut asking = FuturesUnordered::new();
        // `unsure`: a peer that may hold it was busy, stalled or not asked in time.
        let (mut missing, mut unsure) = (0, false);
        loop {
            if asking.is_empty() {
                match queue.next() {
                    Some(peer) => asking.push(self.ask_one(peer, *id)),
                    None => break,
                }
            }
            let hedge = tokio::time::sleep(HEDGE_AFTER);
            tokio::select! {
                Some((peer, asked)) = asking.next() => match asked {
                    Ok(m) => return Ok(self.remember(m, peer.id)),
                    Err(None) => {}
                    Err(Some(PeerFailure::Missing)) => missing += 1,
                    Err(Some(PeerFailure::Busy(_))) => unsure = true,
                    Err(Some(failure)) => {
                        unsure = true;
                        self.peer_failed(peer.id, &failure).await;
                    }
                },
                () = hedge => {
                    if let Some(peer) = queue.next() {
                        asking.push(self.ask_one(peer, *id));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    unsure = true;
                    break;
                }
            }
        }
        if unsure || missing == 0 {
            return Err(LookupError::Unavailable);
        }
        lock(&self.unknown).insert(*id, Instant::now());
        Err(LookupError::Unknown)
    }

    /// Asks one peer for a manifest; `Err(None)` when it cannot be reached
    /// (were it the only holder, the bundle could not be served anyway).
    async fn ask_one(
        &self,
        peer: PeerAddr,
        id: BundleId,
    ) -> (PeerAddr, Result<Manifest, Option<PeerFailure>>) {
        let Some(conn) = self.dialer.connection(peer).await else {
            return (peer, Err(None));
        };
        let asked = tokio::time::timeout(MANIFEST_ASK_LIMIT, ask_manifest(&conn, id)).await;
        let result = match asked {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(failure)) => Err(Some(failure)),
            Err(_) => Err(Some(PeerFailure::Gone("stalled".into()))),
        };
        (peer, result)
    }

    fn remember(&self, manifest: Manifest, peer: NodeId) -> Arc<Manifest> {
        let m = Arc::new(manifest);
        lock(&self.holders).learn(&m, peer);
        let mut cache = lock(&self.manifests);
        if cache.len() >= MAX_MANIFESTS {
            cache.clear();
        }
        cache.insert(m.id(), m.clone());
        m
    }

    /// Drops a peer that failed a request (reporting a liar) and rests it.
    async fn peer_failed(&self, peer: NodeId, failure: &PeerFailure) {
        if let PeerFailure::Lied(why) = failure {
            self.reputation.report(peer, why);
        }
        tracing::warn!(peer = %peer, ?failure, "fetch-through from peer failed");
        self.dialer.drop_peer(peer).await;
    }

    /// The blob's slot, opening its partial files if needed; every
    /// [`TRIM_EVERY_NEW_PARTIALS`]th new partial blob trims the abandoned ones.
    fn slot(&self, hash: &BlobHash, size: u64) -> Result<Arc<Slot>, Unavailable> {
        let taken = lock(&self.slots).take(hash, Instant::now(), || {
            Ok(Slot {
                fetching: Default::default(),
                partial: Arc::new(Mutex::new(Some(self.store.partial(hash, size)?))),
            })
        });
        match taken {
            Ok((slot, new)) => {
                let nth = || self.started.fetch_add(1, Ordering::Relaxed) + 1;
                if new && nth() % TRIM_EVERY_NEW_PARTIALS == 0 {
                    self.trim_partials();
                }
                Ok(slot)
            }
            Err(SlotError::Full(n)) => Err(Unavailable::Busy(n)),
            Err(SlotError::Open(e)) => Err(Unavailable::Local(*hash, e)),
        }
    }

    /// Deletes abandoned partial files past [`MAX_PARTIAL_BLOBS`] or the cache size.
    fn trim_partials(&self) {
        if let Err(e) = self
            .store
            .trim_partials(self.cache_max_bytes, MAX_PARTIAL_BLOBS)
        {
            tracing::error!(error = %e, "trimming partial blobs");
        }
    }

    /// Opens the files holding the verified bytes of `range` of a blob,
    /// fetching the missing groups from a peer. The files can move under the
    /// blob's slot (a copy committed them, then released them or let them be
    /// evicted): the slot is then forgotten once and the fetch starts again
    /// from what the store holds.
    pub async fn open(
        &self,
        hash: BlobHash,
        size: u64,
        range: Range<u64>,
    ) -> std::io::Result<BlobFiles> {
        let mut retried = false;
        loop {
            let (opened, moved) = match self.ensure(hash, size, range.clone()).await {
                Ok(source) => {
                    let opened = match source {
                        Source::Stored => self.store.open_blob(&hash, size),
                        Source::Partial => self.store.open_partial(&hash, size),
                    };
                    let gone =
                        matches!(&opened, Err(e) if e.kind() == std::io::ErrorKind::NotFound);
                    (opened, gone)
                }
                Err(Unavailable::Local(_, e)) => (Err(e), true),
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            };
            if !moved || retried {
                return opened;
            }
            self.forget_partial(&hash);
            retried = true;
        }
    }

    /// Makes sure the groups covering `range` of a blob are verified here,
    /// fetching the missing ones from a peer.
    async fn ensure(
        &self,
        hash: BlobHash,
        size: u64,
        range: Range<u64>,
    ) -> Result<Source, Unavailable> {
        if self.store.has_blob_file(&hash, size) {
            return Ok(Source::Stored);
        }
        let slot = self.slot(&hash, size)?;
        let _fetching = slot.fetching.lock().await;
        if self.store.has_blob_file(&hash, size) {
            return Ok(Source::Stored);
        }
        let wanted = range.start / GROUP_BYTES..range.end.div_ceil(GROUP_BYTES).max(1);
        let missing = {
            let partial = lock(&slot.partial);
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

    /// Forgets what this node knows of a blob's partial files, when they were
    /// found gone: a copy of a bundle using the blob committed them, and the
    /// blob was released or evicted since. The next request starts afresh.
    fn forget_partial(&self, hash: &BlobHash) {
        lock(&self.slots).remove(hash);
    }

    /// Fetches `groups` of a blob from its likely holders first. A holder
    /// that has sent no group [`HEDGE_AFTER`] after it was asked (a machine
    /// hung with its connection still open) is not waited on alone: the next
    /// holder is asked too, and the first to deliver them all wins (the bytes
    /// both write are verified and the same); one that sent nothing meanwhile
    /// is rested. Holders that answered "busy" are asked again until
    /// [`BUSY_WAIT_LIMIT`].
    async fn fetch_groups(
        &self,
        hash: BlobHash,
        size: u64,
        groups: GroupRanges,
        slot: &Slot,
    ) -> Result<(), Unavailable> {
        let give_up = Instant::now() + BUSY_WAIT_LIMIT;
        let likely = lock(&self.holders).of_blob(&hash);
        let mut peers = likely_first(&self.peers(), &likely);
        // Each request in flight, with the bytes its holder delivered so far.
        let ask = |peer: PeerAddr, in_flight: &mut Vec<(NodeId, Arc<AtomicU64>)>| {
            let delivered = Arc::new(AtomicU64::new(0));
            in_flight.push((peer.id, delivered.clone()));
            let sink = GroupSink {
                partial: slot.partial.clone(),
                store: self.store.clone(),
                received: self.received.clone(),
                also_counted: Some(delivered),
                rate: None,
            };
            self.request_one(peer, hash, size, groups.clone(), sink)
        };
        loop {
            let (mut busy, mut pause) = (Vec::new(), BUSY_WAIT_LIMIT);
            let mut queue = peers.into_iter();
            let (mut asking, mut in_flight) = (FuturesUnordered::new(), Vec::new());
            loop {
                if asking.is_empty() {
                    match queue.next() {
                        Some(peer) => asking.push(ask(peer, &mut in_flight)),
                        None => break,
                    }
                }
                let may_hedge = asking.len() < GROUP_ASKS_AT_ONCE && queue.len() > 0;
                let hedge = tokio::time::sleep(HEDGE_AFTER);
                tokio::select! {
                    Some((peer, asked)) = asking.next() => {
                        in_flight.retain(|(id, _)| *id != peer.id);
                        match asked {
                            Ok(()) => {
                                self.rest_silent(&in_flight).await;
                                return Ok(());
                            }
                            Err(None) | Err(Some(PeerFailure::Missing)) => {}
                            Err(Some(PeerFailure::Local(why))) => {
                                return Err(Unavailable::Local(hash, std::io::Error::other(why)));
                            }
                            Err(Some(PeerFailure::Busy(after))) => {
                                busy.push(peer);
                                pause = pause.min(after);
                            }
                            Err(Some(failure)) => self.peer_failed(peer.id, &failure).await,
                        }
                    },
                    () = hedge, if may_hedge && silent(&in_flight) => {
                        if silent(&in_flight) && let Some(peer) = queue.next() {
                            asking.push(ask(peer, &mut in_flight));
                        }
                    }
                }
            }
            if busy.is_empty() || Instant::now() + pause > give_up {
                return Err(Unavailable::NoPeer(hash));
            }
            tokio::time::sleep(pause).await;
            peers = busy;
        }
    }

    /// Rests the holders still asked that sent nothing while another sent
    /// every group: hung, most likely, and else asked first again and again.
    async fn rest_silent(&self, in_flight: &[(NodeId, Arc<AtomicU64>)]) {
        for (peer, delivered) in in_flight {
            if delivered.load(Ordering::Relaxed) == 0 {
                let why = "sent nothing while another holder sent every group";
                self.peer_failed(*peer, &PeerFailure::Gone(why.into()))
                    .await;
            }
        }
    }

    /// Asks one peer for groups of a blob; `Err(None)` when it cannot be
    /// reached.
    async fn request_one(
        &self,
        peer: PeerAddr,
        hash: BlobHash,
        size: u64,
        groups: GroupRanges,
        sink: GroupSink,
    ) -> (PeerAddr, Result<(), Option<PeerFailure>>) {
        let Some(conn) = self.dialer.connection(peer).await else {
            return (peer, Err(None));
        };
        let asked = request_groups(&conn, hash, size, groups, sink).await;
        (peer, asked.map_err(Some))
    }

    /// Keeps a fetched-through blob as cache, evicting the oldest beyond the cap.
    fn keep(&self, hash: &BlobHash, size: u64) {
        if let Err(e) = self.store.use_cached(hash, size, self.cache_max_bytes) {
            tracing::error!(blob = %hash, error = %e, "updating the fetch-through cache");
        }
    }

    fn commit_if_complete(&self, hash: &BlobHash, slot: &Slot) {
        let mut partial = lock(&slot.partial);
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
        lock(&self.slots).remove(hash);
    }
}

/// Whether no holder asked has delivered a byte yet.
fn silent(in_flight: &[(NodeId, Arc<AtomicU64>)]) -> bool {
    in_flight
        .iter()
        .all(|(_, delivered)| delivered.load(Ordering::Relaxed) == 0)
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::testing::setup;
    use super::*;

    #[tokio::test]
    async fn partial_files_gone_under_a_blob_are_fetched_again_once_forgotten() -> anyhow::Result<()>
    {
        let s = setup()?;
        let lesson = tempfile::tempdir()?;
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(lesson.path().join("film.bin"), &bytes)?;
        let id = s.peer_store.add_folder(lesson.path())?.summary.id;
        let manifest = s.through.lookup(&id).await?;
        let (hash, size) = (manifest.entries()[0].hash, manifest.entries()[0].size);
        assert_eq!(s.through.ensure(hash, size, 0..100).await?, Source::Partial);
        // A copy of the bundle committed the files, and the blob was released since.
        std::fs::remove_dir_all(s.through.store.layout().partial_dir())?;
        assert_eq!(s.through.ensure(hash, size, 0..100).await?, Source::Partial);
        assert!(s.through.store.open_partial(&hash, size).is_err());
        s.through.forget_partial(&hash);
        assert_eq!(s.through.ensure(hash, size, 0..100).await?, Source::Partial);
        let mut read = Vec::new();
        s.through
            .store
            .open_partial(&hash, size)?
            .read_verified(0..100, |b| {
                read.extend_from_slice(&b);
                true
            })?;
        assert_eq!(read, bytes[..100]);
        Ok(())
    }

    #[tokio::test]
    async fn an_id_no_peer_holds_is_answered_from_memory_afterwards() -> anyhow::Result<()> {
        let s = setup()?;
        let (made_up, other) = (BundleId::of_manifest(b"x"), BundleId::of_manifest(b"y"));
        assert_eq!(s.through.lookup(&made_up).await, Err(LookupError::Unknown));
        // With the peer gone, only memory can answer "unknown".
        s.peer.server.close();
        s.through.dialer.drop_peer(s.through.peers()[0].id).await;
        assert_eq!(s.through.lookup(&made_up).await, Err(LookupError::Unknown));
        assert_eq!(
            s.through.lookup(&other).await,
            Err(LookupError::Unavailable),
            "no peer could be asked: not known unknown"
        );
        Ok(())
    }

    #[tokio::test]
    async fn orders_naming_holders_make_an_unknown_id_asked_again() -> anyhow::Result<()> {
        let s = setup()?;
        let id = BundleId::of_manifest(b"x");
        assert_eq!(s.through.lookup(&id).await, Err(LookupError::Unknown));
        s.through
            .set_holders(HashMap::from([(id, vec![s.through.peers()[0].id])]));
        assert!(!lock(&s.through.unknown).contains(&id, Instant::now()));
        Ok(())
    }
}
