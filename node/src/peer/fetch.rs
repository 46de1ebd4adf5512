//! Copying a bundle from peers: the manifest first (checked against the id),
//! then each missing blob, verified group by group as it arrives and resumed
//! from what an earlier attempt stored. A peer that sends one wrong byte or
//! lies about a size is dropped for this bundle and reported; the rest is
//! fetched from the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use bao_tree::io::sync::DecodeResponseIter;
use bao_tree::io::{BaoContentItem, DecodeError as BaoDecodeError};
use bao_tree::{BaoTree, ChunkNum, ChunkRanges};
use cartable_proto::wire::{ErrorKind, GroupRanges, Request, Response};
use cartable_proto::{BlobHash, BundleId, Manifest, NodeId};
use tokio_util::io::SyncIoBridge;

use super::PeerAddr;
use super::endpoint::PeerEndpoint;
use super::frame;
use crate::store::verify::BLOCK_SIZE;
use crate::store::{PartialBlob, Store};

/// Verified groups written between two checkpoints (4 MiB).
const CHECKPOINT_GROUPS: u32 = 256;

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

/// Why one peer could not give a blob.
enum PeerFailure {
    /// It does not hold it: ask another.
    Missing,
    /// It broke the protocol or sent bytes that failed verification: drop it.
    Lied(String),
    /// The connection failed: drop it.
    Gone(String),
}

/// A connected peer.
struct Peer {
    addr: PeerAddr,
    conn: quinn::Connection,
}

/// Fetches `bundle` from `peers` into `store`; `progress` sees each verified byte count.
pub async fn fetch_bundle(
    endpoint: &PeerEndpoint,
    store: Arc<Store>,
    bundle: BundleId,
    peers: &[PeerAddr],
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
) -> anyhow::Result<FetchReport> {
    let mut live = Vec::new();
    for addr in peers {
        match endpoint.connect(*addr).await {
            Ok(conn) => live.push(Peer { addr: *addr, conn }),
            Err(e) => tracing::warn!(peer = %addr.id, error = format!("{e:#}"), "peer unreachable"),
        }
    }
    let mut liars = Vec::new();
    let manifest = manifest_from(&mut live, &mut liars, bundle, peers.len()).await?;
    let total = manifest.total_size();
    let received = Arc::new(AtomicU64::new(0));
    let mut done = 0u64;
    let mut blobs: Vec<(BlobHash, u64)> = manifest
        .entries()
        .iter()
        .map(|e| (e.hash, e.size))
        .collect();
    blobs.sort();
    blobs.dedup();
    for (i, (hash, size)) in blobs.into_iter().enumerate() {
        if !store.has_blob_file(&hash, size) {
            blob_from(&mut live, &mut liars, &store, hash, size, i, &received).await?;
        }
        done += size;
        progress(done, total);
    }
    store.add_fetched_bundle(&manifest)?;
    Ok(FetchReport {
        bundle,
        files: manifest.entries().len() as u64,
        bytes: total,
        bytes_received: received.load(Ordering::Relaxed),
        liars,
    })
}

fn drop_peer(
    live: &mut Vec<Peer>,
    liars: &mut Vec<(NodeId, String)>,
    i: usize,
    failure: PeerFailure,
) {
    let peer = live.remove(i);
    match failure {
        PeerFailure::Lied(why) => {
            tracing::warn!(peer = %peer.addr.id, reason = why, "peer sent data that failed verification; dropped");
            liars.push((peer.addr.id, why));
        }
        PeerFailure::Gone(why) => tracing::warn!(peer = %peer.addr.id, reason = why, "peer lost"),
        PeerFailure::Missing => {}
    }
}

async fn manifest_from(
    live: &mut Vec<Peer>,
    liars: &mut Vec<(NodeId, String)>,
    bundle: BundleId,
    asked: usize,
) -> anyhow::Result<Manifest> {
    let mut i = 0;
    while i < live.len() {
        match ask_manifest(&live[i].conn, bundle).await {
            Ok(m) => return Ok(m),
            Err(PeerFailure::Missing) => i += 1,
            Err(failure) => drop_peer(live, liars, i, failure),
        }
    }
    bail!(
        "no peer gave bundle {bundle}: of {asked} asked, {} do not hold it; the others were \
         unreachable, refused this node (is its id in their peers?) or lied",
        live.len()
    )
}

async fn ask_manifest(conn: &quinn::Connection, bundle: BundleId) -> Result<Manifest, PeerFailure> {
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| PeerFailure::Gone(e.to_string()))?;
    let gone = |e: frame::FrameError| PeerFailure::Gone(e.to_string());
    frame::write_frame(&mut send, &Request::Manifest(bundle).encode())
        .await
        .map_err(gone)?;
    let _ = send.finish();
    match frame::read_response(&mut recv).await {
        Ok(Response::Manifest(bytes)) if BundleId::of_manifest(&bytes) == bundle => {
            Manifest::decode(&bytes).map_err(|e| PeerFailure::Lied(format!("manifest: {e}")))
        }
        Ok(Response::Manifest(_)) => Err(PeerFailure::Lied(
            "manifest does not match the bundle id".into(),
        )),
        Ok(Response::Error(e)) if e.kind == ErrorKind::NotFound => Err(PeerFailure::Missing),
        Ok(other) => Err(PeerFailure::Lied(format!("unexpected answer {other:?}"))),
        Err(e) => Err(gone(e)),
    }
}

async fn blob_from(
    live: &mut Vec<Peer>,
    liars: &mut Vec<(NodeId, String)>,
    store: &Arc<Store>,
    hash: BlobHash,
    size: u64,
    spread: usize,
    received: &Arc<AtomicU64>,
) -> anyhow::Result<()> {
    // Start each blob at a different peer so that the load spreads.
    let mut tried = 0;
    while tried < live.len() {
        let i = (spread + tried) % live.len();
        let partial = store.partial(&hash, size).context("opening partial blob")?;
        match ask_blob(&live[i].conn, store.clone(), partial, received.clone()).await {
            Ok(()) => return Ok(()),
            Err(PeerFailure::Missing) => tried += 1,
            Err(failure) => drop_peer(live, liars, i, failure),
        }
    }
    bail!("no reachable peer could provide blob {hash}")
}

async fn ask_blob(
    conn: &quinn::Connection,
    store: Arc<Store>,
    partial: PartialBlob,
    received: Arc<AtomicU64>,
) -> Result<(), PeerFailure> {
    let Some(groups) = GroupRanges::new(partial.missing()) else {
        return finish(&store, partial);
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| PeerFailure::Gone(e.to_string()))?;
    let gone = |e: frame::FrameError| PeerFailure::Gone(e.to_string());
    let hash = partial.hash();
    let request = Request::Blob {
        hash,
        groups: groups.clone(),
    };
    frame::write_frame(&mut send, &request.encode())
        .await
        .map_err(gone)?;
    let _ = send.finish();
    match frame::read_response(&mut recv).await {
        Ok(Response::Blob { size }) if size == partial.size() => {}
        Ok(Response::Blob { size }) => {
            return Err(PeerFailure::Lied(format!(
                "size {size}, manifest says {}",
                partial.size()
            )));
        }
        Ok(Response::Error(e)) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Busy) => {
            return Err(PeerFailure::Missing);
        }
        Ok(other) => return Err(PeerFailure::Lied(format!("unexpected answer {other:?}"))),
        Err(e) => return Err(gone(e)),
    }
    let decode_store = store.clone();
    let decoded = tokio::task::spawn_blocking(move || {
        let mut partial = partial;
        let result = decode_into(
            &mut partial,
            &decode_store,
            hash,
            &groups,
            SyncIoBridge::new(recv),
            &received,
        );
        (partial, result)
    })
    .await
    .map_err(|e| PeerFailure::Gone(e.to_string()))?;
    let (partial, result) = decoded;
    result?;
    finish(&store, partial)
}

fn finish(store: &Store, partial: PartialBlob) -> Result<(), PeerFailure> {
    if !partial.is_complete() {
        return Err(PeerFailure::Lied(
            "stream ended before every group was sent".into(),
        ));
    }
    store
        .commit_partial(partial)
        .map_err(|e| PeerFailure::Gone(format!("storing: {e}")))
}

/// Verifies the encoded stream and stores each verified part; checkpoints as it goes.
fn decode_into(
    partial: &mut PartialBlob,
    store: &Store,
    hash: BlobHash,
    groups: &GroupRanges,
    encoded: impl std::io::Read,
    received: &AtomicU64,
) -> Result<(), PeerFailure> {
    let tree = BaoTree::new(partial.size(), BLOCK_SIZE);
    let mut chunks = ChunkRanges::empty();
    for g in groups.ranges() {
        chunks |= ChunkRanges::from(
            ChunkNum(g.start.saturating_mul(16))..ChunkNum(g.end.saturating_mul(16)),
        );
    }
    let local = |e: std::io::Error| PeerFailure::Gone(format!("writing partial blob: {e}"));
    let mut since_checkpoint = 0;
    for item in DecodeResponseIter::new(hash.into(), tree, encoded, &chunks) {
        match item {
            Ok(BaoContentItem::Parent(p)) => partial.save_pair(p.node, &p.pair).map_err(local)?,
            Ok(BaoContentItem::Leaf(leaf)) => {
                partial
                    .write_group(leaf.offset, &leaf.data)
                    .map_err(local)?;
                received.fetch_add(leaf.data.len() as u64, Ordering::Relaxed);
                since_checkpoint += 1;
                if since_checkpoint == CHECKPOINT_GROUPS {
                    partial.checkpoint(store).map_err(local)?;
                    since_checkpoint = 0;
                }
            }
            Err(e) => {
                // Keep what was verified before the failure.
                let _ = partial.checkpoint(store);
                return Err(match e {
                    BaoDecodeError::Io(e) => PeerFailure::Gone(e.to_string()),
                    other => PeerFailure::Lied(format!("{other:?}")),
                });
            }
        }
    }
    partial.checkpoint(store).map_err(local)
}
