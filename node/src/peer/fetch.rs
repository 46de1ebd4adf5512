//! Copying a bundle from peers: the manifest first (checked against the id),
//! then every missing part of every blob, as units of at most
//! [`UNIT_GROUPS`] chunk groups spread over all peers and fetched several at a
//! time. Each unit is verified group by group as it arrives and written to the
//! blob's partial files, recorded every 64 MiB or 2 s, so an interrupted
//! fetch resumes with what is missing.
//! A blob of one chunk group or less has nothing to resume: it is fetched
//! whole, many at a time, checked against its hash and stored in batches
//! ([`Store::store_whole`]), so a lesson of many small files costs a round
//! trip and a new file each, not a checkpoint each.
//! A peer that sends one wrong byte, lies about a size or stalls is dropped for
//! this bundle (liars are reported); its unit goes to another peer.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use cartable_proto::wire::{GROUP_BYTES, GroupRanges};
use cartable_proto::{BlobHash, BundleId, Manifest, NodeId};

use super::rate::RateLimit;
use super::reputation::Reputation;
use super::sink::GroupSink;
use crate::store::{PartialBlob, Store};
use cartable_net::https::shed::Pressure;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_net::peer::exchange::{
    PeerFailure, WholeBlob, ask_manifest, request_groups, request_whole,
};
use tokio::sync::mpsc;

/// Largest unit of work: 4 MiB, so a large file spreads over every peer.
pub const UNIT_GROUPS: u64 = 256;
/// Whole blobs stored at once: one `syncfs` for each batch. A fetch holds at
/// most two batches in memory (one being stored, one arriving), 8 MiB at most.
const WHOLE_BATCH: usize = 256;

/// How a blob is fetched, by its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Over one chunk group: in units of groups, into partial files.
    Parts,
    /// One chunk group at most: whole, into memory, stored in batches.
    Whole,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::Parts, Kind::Whole];

    fn of(size: u64) -> Self {
        if size <= GROUP_BYTES {
            Self::Whole
        } else {
            Self::Parts
        }
    }

    /// Requests of this kind in flight per peer. A whole blob is a round trip
    /// for a few KiB, so many are asked at once to keep the link busy; they
    /// hold 16 × 16 KiB per peer at most. Both kinds together stay under a
    /// member's 32 streams per connection.
    fn per_peer(self) -> usize {
        match self {
            Self::Parts => 4,
            Self::Whole => 16,
        }
    }
}

/// What a worker takes, and, for whole blobs, where they go to be stored.
enum Worker {
    Parts,
    Whole(mpsc::Sender<WholeBlob>),
}

impl Worker {
    fn kind(&self) -> Kind {
        match self {
            Self::Parts => Kind::Parts,
            Self::Whole(_) => Kind::Whole,
        }
    }
}

/// How a fetch runs.
#[derive(Clone)]
pub struct FetchOptions {
    /// A bandwidth cap in bytes per second (background copies only).
    pub rate: Option<u64>,
    /// Called with (bytes done, bytes in the bundle) as units complete.
    pub progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
    /// Where peers that lie are counted.
    pub reputation: Arc<Reputation>,
    /// Browsers this copy yields to: it pauses while they wait.
    pub yield_to: Option<Arc<Pressure>>,
    /// A daemon-wide count of verified bytes copied, added to as they arrive
    /// (for monitoring: its rate is the copy bandwidth).
    pub copied: Option<Arc<AtomicU64>>,
}

impl std::fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchOptions")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            rate: None,
            progress: Arc::new(|_, _| {}),
            reputation: Arc::default(),
            yield_to: None,
            copied: None,
        }
    }
}

/// What a fetch did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FetchReport {
    /// The bundle.
    pub bundle: BundleId,
    /// Files in it.
    pub files: u64,
    /// Its total size.
    pub bytes: u64,
    /// Verified blob bytes received from peers (resumed parts are not fetched again).
    pub bytes_received: u64,
    /// Peers dropped for sending data that failed verification, with the reason.
    pub liars: Vec<(NodeId, String)>,
}

/// A connected peer; `None` in the table once dropped.
struct Peer {
    addr: PeerAddr,
    conn: quinn::Connection,
}

/// Which peer a unit goes to.
enum Pick {
    /// This one (its index in the table).
    Peer(usize, quinn::Connection),
    /// Every candidate has its [`Kind::per_peer`] requests in flight.
    AllFull,
    /// No live peer is left that might hold the unit.
    NoneLeft,
}

/// Part of a blob to fetch, and the peers that said they lack it.
struct Unit {
    hash: BlobHash,
    size: u64,
    groups: Range<u64>,
    lacking: Vec<usize>,
}

/// A blob fetched in parts, perhaps by several units at once.
struct BlobJob {
    /// Whether the partial files were opened (they are closed again at commit).
    opened: std::sync::atomic::AtomicBool,
    partial: Arc<Mutex<Option<PartialBlob>>>,
    units_left: AtomicUsize,
}

/// What the workers of one fetch share.
struct Fetch {
    store: Arc<Store>,
    peers: Mutex<Vec<Option<Peer>>>,
    liars: Mutex<Vec<(NodeId, String)>>,
    /// Units to fetch, by [`Kind`].
    queues: [Mutex<VecDeque<Unit>>; 2],
    /// The blobs fetched in parts.
    jobs: HashMap<BlobHash, Arc<BlobJob>>,
    next_peer: AtomicUsize,
    /// Requests in flight, per peer index and [`Kind`].
    inflight: Mutex<Vec<[usize; 2]>>,
    received: Arc<AtomicU64>,
    done: AtomicU64,
    total: u64,
    failed: Mutex<Option<String>>,
    options: FetchOptions,
    rate: Option<Arc<RateLimit>>,
}

/// Fetches `bundle` from `peers` into `store`.
pub async fn fetch_bundle(
    endpoint: &PeerEndpoint,
    store: Arc<Store>,
    bundle: BundleId,
    peers: &[PeerAddr],
    options: FetchOptions,
) -> anyhow::Result<FetchReport> {
    let connected = connect_all(endpoint, peers).await;
    let mut liars = Vec::new();
    let manifest = manifest_from(&connected, &mut liars, bundle, &options.reputation).await?;
    // Blobs an earlier fetch left complete are committed first, not fetched
    // again (a browser's fetch-through that went away before its commit).
    let (s, m) = (store.clone(), manifest.clone());
    tokio::task::spawn_blocking(move || s.commit_complete_partials(&m)).await??;
    let fetch = Arc::new(Fetch::plan(
        store.clone(),
        &manifest,
        connected,
        liars,
        options,
    )?);
    let (keep, kept) = mpsc::channel(WHOLE_BATCH);
    let storing = tokio::spawn(store_whole_blobs(store.clone(), kept));
    let mut tasks = tokio::task::JoinSet::new();
    for kind in Kind::ALL {
        let workers = (fetch.live_peers() * kind.per_peer()).min(fetch.queue_len(kind));
        for _ in 0..workers {
            // Only whole-blob workers hold a sender: the last batch is stored
            // when they end, not when the largest blob does.
            let worker = match kind {
                Kind::Parts => Worker::Parts,
                Kind::Whole => Worker::Whole(keep.clone()),
            };
            tasks.spawn(fetch.clone().work(worker));
        }
    }
    // The workers hold the only senders left: storing ends with them.
    drop(keep);
    while tasks.join_next().await.is_some() {}
    storing
        .await
        .context("storing whole blobs")?
        .context("storing whole blobs")?;
    if let Some(why) = fetch
        .failed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        bail!(why);
    }
    store.add_fetched_bundle(&manifest)?;
    let liars = std::mem::take(&mut *fetch.liars.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(FetchReport {
        bundle,
        files: manifest.entries().len() as u64,
        bytes: fetch.total,
        bytes_received: fetch.received.load(Ordering::Relaxed),
        liars,
    })
}

async fn connect_all(endpoint: &PeerEndpoint, peers: &[PeerAddr]) -> Vec<Option<Peer>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, addr) in peers.iter().copied().enumerate() {
        let endpoint = endpoint.clone();
        tasks.spawn(async move { (i, addr, endpoint.connect(addr).await) });
    }
    let mut connected: Vec<Option<Peer>> = peers.iter().map(|_| None).collect();
    while let Some(Ok((i, addr, result))) = tasks.join_next().await {
        match result {
            Ok(conn) => connected[i] = Some(Peer { addr, conn }),
            Err(e) => tracing::warn!(peer = %addr.id, error = format!("{e:#}"), "peer unreachable"),
        }
    }
    connected
}

async fn manifest_from(
    peers: &[Option<Peer>],
    liars: &mut Vec<(NodeId, String)>,
    bundle: BundleId,
    reputation: &Reputation,
) -> anyhow::Result<Manifest> {
    let mut lacking = 0;
    for peer in peers.iter().flatten() {
        match ask_manifest(&peer.conn, bundle).await {
            Ok(m) => return Ok(m),
            Err(PeerFailure::Missing | PeerFailure::Busy(_)) => lacking += 1,
            Err(PeerFailure::Lied(why)) => {
                reputation.report(peer.addr.id, &why);
                liars.push((peer.addr.id, why));
            }
            Err(PeerFailure::Gone(why) | PeerFailure::Local(why)) => {
                tracing::warn!(peer = %peer.addr.id, reason = why, "peer lost")
            }
        }
    }
    bail!(
        "no peer gave bundle {bundle}: of {} asked, {lacking} do not hold it; the others were \
         unreachable, refused this node (is its id in their peers?) or lied",
        peers.len()
    )
}

impl Fetch {
    /// Opens the partial files of every missing blob and cuts what they lack into units.
    fn plan(
        store: Arc<Store>,
        manifest: &Manifest,
        peers: Vec<Option<Peer>>,
        liars: Vec<(NodeId, String)>,
        options: FetchOptions,
    ) -> anyhow::Result<Self> {
        let mut blobs: Vec<(BlobHash, u64)> = manifest
            .entries()
            .iter()
            .map(|e| (e.hash, e.size))
            .collect();
        blobs.sort();
        blobs.dedup();
        let (mut queues, mut jobs, mut done) =
            ([VecDeque::new(), VecDeque::new()], HashMap::new(), 0);
        for (hash, size) in blobs {
            if store.rely_on_blob(&hash, size) {
                done += size;
                continue;
            }
            let unit = |groups| Unit {
                hash,
                size,
                groups,
                lacking: vec![],
            };
            if Kind::of(size) == Kind::Whole {
                // Nothing to resume: one unit, and no record to read.
                queues[Kind::Whole as usize].push_back(unit(0..1));
                continue;
            }
            let units = split(&store.partial_missing(&hash, size));
            // Files are opened when a blob's first unit starts: a bundle of
            // many files would otherwise run out of file descriptors.
            let job = BlobJob {
                units_left: AtomicUsize::new(units.len()),
                partial: Arc::new(Mutex::new(None)),
                opened: std::sync::atomic::AtomicBool::new(false),
            };
            jobs.insert(hash, Arc::new(job));
            queues[Kind::Parts as usize].extend(units.into_iter().map(unit));
        }
        let peer_count = peers.len();
        Ok(Self {
            store,
            peers: Mutex::new(peers),
            liars: Mutex::new(liars),
            queues: queues.map(Mutex::new),
            jobs,
            next_peer: AtomicUsize::new(0),
            inflight: Mutex::new(vec![[0; 2]; peer_count]),
            received: Arc::new(AtomicU64::new(0)),
            done: AtomicU64::new(done),
            total: manifest.total_size(),
            failed: Mutex::new(None),
            rate: options.rate.map(|r| Arc::new(RateLimit::new(r))),
            options,
        })
    }

    fn live_peers(&self) -> usize {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .flatten()
            .count()
    }

    fn queue(&self, kind: Kind) -> std::sync::MutexGuard<'_, VecDeque<Unit>> {
        self.queues[kind as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn queue_len(&self, kind: Kind) -> usize {
        self.queue(kind).len()
    }

    /// One worker: takes units of its kind until none is left or the fetch
    /// failed.
    async fn work(self: Arc<Self>, worker: Worker) {
        let kind = worker.kind();
        loop {
            if let Some(pressure) = &self.options.yield_to {
                pressure.wait_calm().await;
            }
            if self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
            {
                return;
            }
            let Some(mut unit) = self.queue(kind).pop_front() else {
                return;
            };
            let (index, conn) = match self.pick_peer(&unit, kind) {
                Pick::Peer(index, conn) => (index, conn),
                Pick::AllFull => {
                    // Every candidate has its share in flight: let one finish.
                    self.queue(kind).push_front(unit);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Pick::NoneLeft => {
                    let why = format!("no reachable peer could provide blob {}", unit.hash);
                    *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    return;
                }
            };
            let result = match &worker {
                Worker::Parts => self.fetch_parts(conn, &unit).await,
                Worker::Whole(keep) => self.fetch_whole(conn, &unit, keep).await,
            };
            self.inflight.lock().unwrap_or_else(|e| e.into_inner())[index][kind as usize] -= 1;
            match result {
                Ok(()) => self.unit_done(&unit),
                Err(PeerFailure::Busy(delay)) => {
                    // Not this peer's fault: come back to it later.
                    tokio::time::sleep(delay).await;
                    self.queue(kind).push_back(unit);
                }
                Err(PeerFailure::Local(why)) => {
                    // The partial files moved under this copy, or storing
                    // failed: it stops, and the next try starts from what the
                    // store holds then.
                    for each in Kind::ALL {
                        self.queue(each).clear();
                    }
                    *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    return;
                }
                Err(failure) => {
                    if matches!(failure, PeerFailure::Missing) {
                        unit.lacking.push(index);
                    }
                    self.drop_peer(index, failure);
                    self.queue(kind).push_back(unit);
                }
            }
        }
    }

    /// A live peer not known to lack the unit and with room for one more
    /// request, taking peers in turn. The cap keeps a dead or stalled peer from
    /// holding every worker while the others sit idle.
    fn pick_peer(&self, unit: &Unit, kind: Kind) -> Pick {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let start = self.next_peer.fetch_add(1, Ordering::Relaxed);
        let candidates: Vec<usize> = (0..peers.len())
            .map(|k| (start + k) % peers.len())
            .filter(|i| !unit.lacking.contains(i) && peers[*i].is_some())
            .collect();
        let room = |i: &&usize| inflight[**i][kind as usize] < kind.per_peer();
        let Some(&i) = candidates.iter().find(room) else {
            return if candidates.is_empty() {
                Pick::NoneLeft
            } else {
                Pick::AllFull
            };
        };
        inflight[i][kind as usize] += 1;
        let conn = peers[i]
            .as_ref()
            .map(|p| p.conn.clone())
            .expect("candidates are live");
        Pick::Peer(i, conn)
    }

    fn drop_peer(&self, index: usize, failure: PeerFailure) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(peer) = peers.get(index).and_then(Option::as_ref) else {
            return;
        };
        let id = peer.addr.id;
        match failure {
            PeerFailure::Missing | PeerFailure::Busy(_) | PeerFailure::Local(_) => return,
            PeerFailure::Lied(why) => {
                self.options.reputation.report(id, &why);
                self.liars
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((id, why));
            }
            PeerFailure::Gone(why) => {
                tracing::warn!(peer = %id, reason = why, "peer lost; dropped")
            }
        }
        // Closing fails its other streams at once, so their units move on.
        peer.conn.close(1u32.into(), b"dropped");
        peers[index] = None;
    }

    fn unit_done(&self, unit: &Unit) {
        let last_part = |job: &&Arc<BlobJob>| job.units_left.fetch_sub(1, Ordering::AcqRel) == 1;
        if let Some(job) = self.jobs.get(&unit.hash).filter(last_part) {
            let partial = job.partial.lock().unwrap_or_else(|e| e.into_inner()).take();
            let committed = match partial {
                Some(p) if p.is_complete() => {
                    self.store.commit_partial(p).map_err(|e| e.to_string())
                }
                _ => Err("blob incomplete after every unit".to_owned()),
            };
            if let Err(why) = committed {
                *self.failed.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("blob {}: {why}", unit.hash));
            }
        }
        // A whole blob counts its size, not a whole group's.
        let groups_bytes = ((unit.groups.end - unit.groups.start) * GROUP_BYTES).min(unit.size);
        let done = self.done.fetch_add(groups_bytes, Ordering::Relaxed) + groups_bytes;
        (self.options.progress)(done.min(self.total), self.total);
    }

    /// Asks one peer for a whole blob and hands it, verified, to be stored.
    async fn fetch_whole(
        &self,
        conn: quinn::Connection,
        unit: &Unit,
        keep: &mpsc::Sender<WholeBlob>,
    ) -> Result<(), PeerFailure> {
        let blob = request_whole(&conn, unit.hash, unit.size).await?;
        if let Some(rate) = &self.rate {
            tokio::time::sleep(rate.reserve(unit.size)).await;
        }
        for count in std::iter::once(&self.received).chain(&self.options.copied) {
            count.fetch_add(unit.size, Ordering::Relaxed);
        }
        keep.send(blob)
            .await
            .map_err(|_| PeerFailure::Local("storing whole blobs stopped".into()))
    }

    /// Asks one peer for one unit of a blob's groups and stores what verifies.
    async fn fetch_parts(&self, conn: quinn::Connection, unit: &Unit) -> Result<(), PeerFailure> {
        let job = &self.jobs[&unit.hash];
        {
            // Under the lock, so that no unit of this blob writes before the files are open.
            let mut slot = job.partial.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() && !job.opened.load(Ordering::Acquire) {
                let partial = self.store.partial(&unit.hash, unit.size);
                *slot = Some(
                    partial
                        .map_err(|e| PeerFailure::Local(format!("opening partial blob: {e}")))?,
                );
                job.opened.store(true, Ordering::Release);
            }
        }
        let groups = GroupRanges::new(vec![unit.groups.clone()]).ok_or(PeerFailure::Missing)?;
        let sink = GroupSink {
            partial: job.partial.clone(),
            store: self.store.clone(),
            received: self.received.clone(),
            also_counted: self.options.copied.clone(),
            rate: self.rate.clone(),
        };
        request_groups(&conn, unit.hash, unit.size, groups, sink).await
    }
}

/// Stores the whole blobs the workers send, [`WHOLE_BATCH`] at a time, and
/// those left once the workers are done (whether the fetch failed or not: a
/// later try need not fetch them again).
async fn store_whole_blobs(
    store: Arc<Store>,
    mut kept: mpsc::Receiver<WholeBlob>,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(WHOLE_BATCH);
    loop {
        let room = WHOLE_BATCH - batch.len();
        let more = kept.recv_many(&mut batch, room).await > 0;
        if batch.len() == WHOLE_BATCH || (!more && !batch.is_empty()) {
            let (store, full) = (store.clone(), std::mem::take(&mut batch));
            tokio::task::spawn_blocking(move || store.store_whole(&full)).await??;
        }
        if !more {
            return Ok(());
        }
    }
}

/// Cuts group ranges into units of at most [`UNIT_GROUPS`].
fn split(ranges: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut units = Vec::new();
    for r in ranges {
        let mut start = r.start;
        while start < r.end {
            let end = (start + UNIT_GROUPS).min(r.end);
            units.push(start..end);
            start = end;
        }
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_parts_are_cut_into_bounded_units() {
        assert_eq!(
            split(&[0..600, 700..701]),
            [0..256, 256..512, 512..600, 700..701]
        );
        assert!(split(&[]).is_empty());
    }
}
