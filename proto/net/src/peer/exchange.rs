//! One request to one peer, seen from the asking side: a manifest, or some
//! chunk groups of a blob verified as they arrive and handed to a
//! [`VerifiedSink`]. A node's background fetches and fetch-through keep them
//! (in a blob's partial files); the coordinator's spot checks only count them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bao_tree::io::sync::DecodeResponseIter;
use bao_tree::io::{BaoContentItem, DecodeError as BaoDecodeError};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use bytes::Bytes;
use cartable_proto::wire::{ErrorKind, GROUP_BYTES, GroupRanges, Request, Response, WireError};
use cartable_proto::{BlobHash, BundleId, Manifest};
use tokio::io::AsyncReadExt;

use super::batches::batched;
use super::frame;
use super::stall::StallGuard;

/// 16 KiB chunk groups ([`GROUP_BYTES`]): the granularity of verification, and
/// of resuming later.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);

/// Silence after which a peer's stream counts as stalled. A dead peer is only
/// noticed this way (QUIC would wait for its idle timeout), so it is short;
/// a live peer sends a 16 KiB group far more often than this even on a slow link.
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

/// Why one peer could not answer.
#[derive(Debug)]
pub enum PeerFailure {
    /// It does not hold it: ask another.
    Missing,
    /// It is overloaded: ask again after the delay it gave.
    Busy(Duration),
    /// It broke the protocol or sent bytes that failed verification: drop it.
    Lied(String),
    /// The connection failed or stalled: drop it.
    Gone(String),
    /// This node could not keep what the peer sent (its partial files were
    /// committed or replaced by another fetch meanwhile): not the peer's
    /// failure; start again from what the store now holds.
    Local(String),
}

/// Where the verified parts of a blob go.
pub trait VerifiedSink: Send + 'static {
    /// Keeps a verified pair of child hashes of the BLAKE3 tree.
    fn save_pair(
        &self,
        node: bao_tree::TreeNode,
        pair: &(blake3::Hash, blake3::Hash),
    ) -> std::io::Result<()>;
    /// Keeps a verified chunk group at `offset`.
    fn write_group(&self, offset: u64, data: &[u8]) -> std::io::Result<()>;
    /// Called once the stream ended; `UnexpectedEof` when groups asked for are missing.
    fn finish(&self, groups: &GroupRanges) -> std::io::Result<()>;
}

/// Keeps nothing: counts the bytes that verified (a spot check of a peer's copy).
#[derive(Debug, Default)]
struct CountingSink {
    received: AtomicU64,
}

impl VerifiedSink for Arc<CountingSink> {
    fn save_pair(
        &self,
        _: bao_tree::TreeNode,
        _: &(blake3::Hash, blake3::Hash),
    ) -> std::io::Result<()> {
        Ok(())
    }

    fn write_group(&self, _: u64, data: &[u8]) -> std::io::Result<()> {
        self.received
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn finish(&self, _: &GroupRanges) -> std::io::Result<()> {
        Ok(())
    }
}

/// Asks `conn` for a bundle's manifest, checked against the id.
pub async fn ask_manifest(
    conn: &quinn::Connection,
    bundle: BundleId,
) -> Result<Manifest, PeerFailure> {
    let mut recv = send_request(conn, &Request::Manifest(bundle)).await?;
    match read_answer(conn, &mut recv).await? {
        Response::Manifest(bytes) if BundleId::of_manifest(&bytes) == bundle => {
            Manifest::decode(&bytes).map_err(|e| PeerFailure::Lied(format!("manifest: {e}")))
        }
        Response::Manifest(_) => Err(PeerFailure::Lied(
            "manifest does not match the bundle id".into(),
        )),
        Response::Error(e) => Err(refusal(&e)),
        other => Err(PeerFailure::Lied(format!("unexpected answer {other:?}"))),
    }
}

/// Asks `conn` for `groups` of a blob of `size` bytes and stores what verifies.
pub async fn request_groups(
    conn: &quinn::Connection,
    hash: BlobHash,
    size: u64,
    groups: GroupRanges,
    sink: impl VerifiedSink,
) -> Result<(), PeerFailure> {
    let recv = ask_blob(conn, hash, size, groups.clone()).await?;
    let (pump, reader) = batched(recv, STALL_LIMIT);
    let mut decoding =
        tokio::task::spawn_blocking(move || decode(&sink, hash, size, &groups, reader));
    // The decoder may end before the stream does (it has all it asked for,
    // or a lie): the pump stops then. A request given up drops the pump,
    // which fails the decoder's next read, so no blocking thread is left
    // reading or writing for no one.
    tokio::select! {
        decoded = &mut decoding => return decoded.map_err(|e| PeerFailure::Gone(e.to_string()))?,
        () = pump.run() => {}
    }
    decoding
        .await
        .map_err(|e| PeerFailure::Gone(e.to_string()))?
}

/// The whole of a blob of at most one chunk group, checked against its hash:
/// the only way to hold one is [`WholeBlob::verify`].
#[derive(Debug, Clone)]
pub struct WholeBlob {
    hash: BlobHash,
    bytes: Bytes,
}

impl WholeBlob {
    /// `bytes` as the blob `hash`, if they are at most one chunk group and
    /// their BLAKE3 hash is `hash` (a tree of one group is its root).
    pub fn verify(hash: BlobHash, bytes: Bytes) -> Option<Self> {
        (bytes.len() as u64 <= GROUP_BYTES && BlobHash::of(&bytes) == hash)
            .then_some(Self { hash, bytes })
    }

    /// The blob's hash.
    pub fn hash(&self) -> BlobHash {
        self.hash
    }

    /// The blob's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Asks `conn` for the whole of a blob of `size` bytes, at most one chunk
/// group ([`GROUP_BYTES`]), and checks it. Such a blob's tree has no parent
/// hashes, so its encoding is its bytes: they are read whole (never more than
/// `size` held) and hashed at once, on this task, with no blocking thread.
pub async fn request_whole(
    conn: &quinn::Connection,
    hash: BlobHash,
    size: u64,
) -> Result<WholeBlob, PeerFailure> {
    let limit = usize::try_from(size)
        .ok()
        .filter(|s| *s as u64 <= GROUP_BYTES)
        .ok_or_else(|| PeerFailure::Local(format!("blob of {size} bytes asked for whole")))?;
    let only_group = 0..1;
    let whole = GroupRanges::new(vec![only_group]).expect("one group is a valid range");
    let recv = ask_blob(conn, hash, size, whole).await?;
    // A slow link is not a stalled one: the deadline is on progress, as for
    // every other read from a peer, not on the whole blob.
    let mut reader = StallGuard::new(recv, STALL_LIMIT).take(limit as u64 + 1);
    let mut bytes = Vec::with_capacity(limit);
    if let Err(e) = reader.read_to_end(&mut bytes).await {
        return Err(match e.kind() {
            std::io::ErrorKind::TimedOut => PeerFailure::Gone("stalled".into()),
            _ => lost(conn, e),
        });
    }
    if bytes.len() > limit {
        return Err(PeerFailure::Lied("sent more than the blob".into()));
    }
    if bytes.len() < limit {
        return Err(PeerFailure::Lied(
            "stream ended before every group was sent".into(),
        ));
    }
    WholeBlob::verify(hash, bytes.into())
        .ok_or_else(|| PeerFailure::Lied("blob does not match its hash".into()))
}

/// Sends a blob request and reads the answer's header: the stream of the
/// encoding, once the peer agreed on the size.
async fn ask_blob(
    conn: &quinn::Connection,
    hash: BlobHash,
    size: u64,
    groups: GroupRanges,
) -> Result<quinn::RecvStream, PeerFailure> {
    let mut recv = send_request(conn, &Request::Blob { hash, groups }).await?;
    match read_answer(conn, &mut recv).await? {
        Response::Blob { size: claimed } if claimed == size => Ok(recv),
        Response::Blob { size: claimed } => Err(PeerFailure::Lied(format!(
            "size {claimed}, manifest says {size}"
        ))),
        Response::Error(e) => Err(refusal(&e)),
        other => Err(PeerFailure::Lied(format!("unexpected answer {other:?}"))),
    }
}

/// Asks `conn` for `groups` of a blob of `size` bytes and checks every byte
/// against the hash, keeping nothing: how the coordinator makes sure a node
/// holds the copy it claims. Returns the bytes verified.
pub async fn verify_groups(
    conn: &quinn::Connection,
    hash: BlobHash,
    size: u64,
    groups: GroupRanges,
) -> Result<u64, PeerFailure> {
    let sink = Arc::new(CountingSink::default());
    request_groups(conn, hash, size, groups.clone(), sink.clone()).await?;
    let group = GROUP_BYTES;
    let expected: u64 = groups
        .ranges()
        .iter()
        .map(|g| (g.end * group).min(size).saturating_sub(g.start * group))
        .sum();
    let received = sink.received.load(Ordering::Relaxed);
    if received == expected {
        Ok(received)
    } else {
        Err(PeerFailure::Lied(format!(
            "sent {received} verified bytes of the {expected} asked for"
        )))
    }
}

/// A connection that failed: gone, unless the peer closed it for its cap on
/// connections from this node, which is a busy peer to ask again shortly
/// (one copy too many at once must not cost a source).
fn lost(conn: &quinn::Connection, e: impl std::fmt::Display) -> PeerFailure {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == super::endpoint::CLOSED_TOO_MANY.into() =>
        {
            PeerFailure::Busy(Duration::from_secs(1))
        }
        _ => PeerFailure::Gone(e.to_string()),
    }
}

/// What a typed error from a peer means for the asker.
fn refusal(e: &WireError) -> PeerFailure {
    match e.kind {
        ErrorKind::NotFound => PeerFailure::Missing,
        ErrorKind::Busy => PeerFailure::Busy(Duration::from_millis(
            u64::from(e.retry_after_ms).min(10_000),
        )),
        _ => PeerFailure::Lied(format!("refused a valid request: {e}")),
    }
}

async fn send_request(
    conn: &quinn::Connection,
    request: &Request,
) -> Result<quinn::RecvStream, PeerFailure> {
    let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(conn, e))?;
    frame::write_frame(&mut send, &request.encode())
        .await
        .map_err(|e| lost(conn, e))?;
    let _ = send.finish();
    Ok(recv)
}

async fn read_answer(
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
) -> Result<Response, PeerFailure> {
    match tokio::time::timeout(STALL_LIMIT, frame::read_response(recv)).await {
        Err(_) => Err(PeerFailure::Gone("stalled".into())),
        Ok(Err(frame::FrameError::Decode(e))) => Err(PeerFailure::Lied(format!("answer: {e}"))),
        Ok(Err(e)) => Err(lost(conn, e)),
        Ok(Ok(response)) => Ok(response),
    }
}

/// Verifies the encoded stream and stores each verified part.
fn decode(
    sink: &impl VerifiedSink,
    hash: BlobHash,
    size: u64,
    groups: &GroupRanges,
    encoded: impl std::io::Read,
) -> Result<(), PeerFailure> {
    let tree = BaoTree::new(size, BLOCK_SIZE);
    let local = |e: std::io::Error| PeerFailure::Local(format!("writing partial blob: {e}"));
    for item in DecodeResponseIter::new(hash.into(), tree, encoded, &chunk_ranges(groups)) {
        match item {
            Ok(BaoContentItem::Parent(p)) => sink.save_pair(p.node, &p.pair).map_err(local)?,
            Ok(BaoContentItem::Leaf(leaf)) => {
                sink.write_group(leaf.offset, &leaf.data).map_err(local)?
            }
            Err(BaoDecodeError::Io(e)) => return Err(PeerFailure::Gone(e.to_string())),
            Err(other) => return Err(PeerFailure::Lied(format!("{other:?}"))),
        }
    }
    sink.finish(groups).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            PeerFailure::Lied("stream ended before every group was sent".into())
        }
        _ => local(e),
    })
}

/// The bao chunk ranges of chunk-group ranges (16 chunks a group).
pub fn chunk_ranges(groups: &GroupRanges) -> ChunkRanges {
    let mut chunks = ChunkRanges::empty();
    for g in groups.ranges() {
        chunks |= ChunkRanges::from(
            ChunkNum(g.start.saturating_mul(16))..ChunkNum(g.end.saturating_mul(16)),
        );
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::connected::connected;
    use crate::peer::endpoint::CLOSED_TOO_MANY;

    /// What asking a peer that closes the connection with `code` gives.
    async fn asked_of_a_peer_closing_with(code: u32) -> anyhow::Result<PeerFailure> {
        let both = connected().await?;
        both.accepted.conn.close(code.into(), b"closing");
        let bundle = BundleId::of_manifest(b"any");
        Ok(ask_manifest(&both.dialed, bundle)
            .await
            .expect_err("closed"))
    }

    #[test]
    fn a_blob_of_one_group_is_encoded_as_its_bytes_and_checked_by_its_hash() {
        use bao_tree::io::outboard::PostOrderOutboard;
        use bao_tree::io::sync::encode_ranges_validated;
        for size in [0, 1, 1025, GROUP_BYTES as usize] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let hash = BlobHash::of(&data);
            let outboard = PostOrderOutboard {
                root: hash.into(),
                tree: BaoTree::new(size as u64, BLOCK_SIZE),
                data: Vec::new(),
            };
            let only_group = 0..1;
            let whole = GroupRanges::new(vec![only_group]).expect("valid");
            let mut encoded = Vec::new();
            encode_ranges_validated(&data[..], outboard, &chunk_ranges(&whole), &mut encoded)
                .expect("encodes");
            assert_eq!(encoded, data, "{size} bytes");
            assert!(WholeBlob::verify(hash, encoded.into()).is_some());
        }
        let mut wrong = vec![7; 100];
        let hash = BlobHash::of(&wrong);
        wrong[50] ^= 1;
        assert!(WholeBlob::verify(hash, wrong.into()).is_none());
        let large = vec![0; GROUP_BYTES as usize + 1];
        assert!(WholeBlob::verify(BlobHash::of(&large), large.into()).is_none());
    }

    #[tokio::test]
    async fn a_peer_at_its_connection_cap_is_busy_not_gone() -> anyhow::Result<()> {
        let failure = asked_of_a_peer_closing_with(CLOSED_TOO_MANY).await?;
        assert!(matches!(failure, PeerFailure::Busy(_)), "{failure:?}");
        let failure = asked_of_a_peer_closing_with(0).await?;
        assert!(matches!(failure, PeerFailure::Gone(_)), "{failure:?}");
        Ok(())
    }
}
