//! Helpers for the tests of nodes fetching from each other (`tests/peers.rs`,
//! `tests/peer_faults.rs`): deterministic lessons, nodes that serve one allowed
//! peer, and an in-process peer that speaks the real protocol but lies.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use cartable_net::identity::Identity;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::{Arriving, PeerEndpoint};
use cartable_net::peer::frame::{read_request, write_frame};
use cartable_node::store::{PiecePool, Store};
use cartable_proto::BlobHash;
use cartable_proto::wire::{GroupRanges, Request, Response};
use quinn::{RecvStream, SendStream};

use crate::{Node, cli_in};

/// The bytes in one chunk group, the unit a blob is verified and fetched in;
/// the lessons put file sizes on either side of its multiples.
pub const GROUP: usize = 16 * 1024;

/// Deterministic bytes, so a copy can be compared with what was written. The
/// seed tells files apart and the `i >> 14` term tells groups of one file apart,
/// so a group served in the wrong place shows.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 14) as u8)
        .collect()
}

/// Writes one `f{i}-{size}.bin` of [`pattern`] bytes per size into `dir` (made
/// if missing) and returns each name with its bytes, for checking the copy.
pub fn lesson_of_sizes(dir: &Path, sizes: &[usize]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let (name, data) = (format!("f{i}-{size}.bin"), pattern(size, i as u8));
        std::fs::write(dir.join(&name), &data)?;
        files.push((name, data));
    }
    Ok(files)
}

/// A lesson of awkward sizes: empty, one byte, chunk-group boundaries ±1, and a
/// `large` file, the edges where a transfer or its verification goes wrong.
pub fn mixed_lesson(dir: &Path, large: usize) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let sizes = [
        0,
        1,
        GROUP - 1,
        GROUP,
        GROUP + 1,
        2 * GROUP - 1,
        2 * GROUP + 1,
        large,
    ];
    lesson_of_sizes(dir, &sizes)
}

/// The id of a node that has not started yet (its key is made on first use),
/// so another node can be told to allow it before it runs.
pub fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let out = cli_in(data_dir, &["id"])?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Starts a node on `data` that allows the node whose folder is `allowed`: the
/// serving side of a fetch. The peer address given is a placeholder; only the
/// id matters to let the fetcher in.
pub fn serving(data: &Path, allowed: &Path) -> anyhow::Result<Node> {
    let peer = format!("{}@127.0.0.1:9", node_id(allowed)?);
    Node::start_in(data, &["--peer", &peer])
}

/// Whether a fetch into some node has written a checkpoint (a `*.groups`
/// record of verified groups) in its `partial` folder: the moment to kill
/// something mid-fetch.
pub fn has_checkpoint(partial: &Path) -> bool {
    std::fs::read_dir(partial).is_ok_and(|mut entries| {
        entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".groups")))
    })
}

/// The blob holding `content` as stored in the node folder `data_dir`, to
/// compare a copy byte for byte.
pub fn stored_blob(data_dir: &Path, content: &[u8]) -> std::io::Result<Vec<u8>> {
    std::fs::read(data_dir.join("blobs").join(BlobHash::of(content).to_hex()))
}

/// How a [`lying_peer`] lies when asked for a blob; manifests and `Has` are
/// answered honestly, so the fetcher does ask it for blobs.
#[derive(Debug, Clone, Copy)]
pub enum Lie {
    /// Flips one bit in the middle of the encoding; an empty encoding has no
    /// byte to flip, so that answer is honest.
    FlipBit,
    /// Sends the header and the first half of the encoding, then finishes the stream.
    Truncate,
    /// Announces one byte more than the blob holds, then sends the honest encoding.
    WrongSize,
    /// Reads the request and never answers, keeping the connection open.
    Stall,
}

/// A peer speaking the real protocol from its own store, lying as `lie` says:
/// what a fetcher must catch, drop and report without storing a wrong byte.
pub async fn lying_peer(endpoint: PeerEndpoint, store: Arc<Store>, lie: Lie) -> anyhow::Result<()> {
    while let Some(arriving) = endpoint.accept().await {
        // A fetcher that caught a lie closes the connection, maybe while an
        // answer is still being written: that ends the connection, not the
        // liar, which the next fetch must still find.
        if let Err(e) = lie_on(arriving, &store, lie).await {
            eprintln!("lying peer: connection ended: {e:#}");
        }
    }
    Ok(())
}

/// Answers one connection's requests, lying as `lie` says, until it ends.
async fn lie_on(arriving: Arriving, store: &Store, lie: Lie) -> anyhow::Result<()> {
    let peer = arriving.handshake().await?;
    peer.trust();
    while let Ok((send, recv)) = peer.conn.accept_bi().await {
        // A stream the fetcher stopped (a hedge another peer answered first)
        // ends that answer only: the liar goes on lying on the next one.
        if let Err(e) = lie_on_stream(send, recv, store, lie).await {
            eprintln!("lying peer: stream ended: {e:#}");
        }
    }
    Ok(())
}

/// Answers one request, lying as `lie` says.
async fn lie_on_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    store: &Store,
    lie: Lie,
) -> anyhow::Result<()> {
    let (header, body) = match read_request(&mut recv).await? {
        Request::Manifest(id) => {
            let manifest = store.manifest(&id)?.context("liar lacks the bundle")?;
            (Response::Manifest(manifest.encode()), vec![])
        }
        Request::Has(hashes) => (Response::Has(vec![true; hashes.len()]), vec![]),
        Request::Blob { hash, groups } => lie_about_blob(store, &hash, &groups, lie).await?,
    };
    write_frame(&mut send, &header.encode()).await?;
    send.write_all(&body).await?;
    send.finish()?;
    Ok(())
}

/// The header and body a [`lying_peer`] sends for a blob request: the honest
/// encoding of `groups`, spoiled as `lie` says.
async fn lie_about_blob(
    store: &Store,
    hash: &BlobHash,
    groups: &GroupRanges,
    lie: Lie,
) -> anyhow::Result<(Response, Vec<u8>)> {
    let size = store.blob_size(hash).context("liar lacks the blob")?;
    let mut encoded = Vec::new();
    let blob = store.open_blob(hash, size)?;
    let pieces = std::sync::Arc::new(PiecePool::default());
    blob.encode_groups(groups.ranges(), &pieces, |piece| {
        encoded.extend_from_slice(&piece);
        Ok(())
    })?;
    match lie {
        Lie::FlipBit => {
            let middle = encoded.len() / 2;
            if let Some(byte) = encoded.get_mut(middle) {
                *byte ^= 0x10;
            }
            Ok((Response::Blob { size }, encoded))
        }
        Lie::Truncate => {
            encoded.truncate(encoded.len() / 2);
            Ok((Response::Blob { size }, encoded))
        }
        Lie::WrongSize => Ok((Response::Blob { size: size + 1 }, encoded)),
        Lie::Stall => {
            // The caller's `send` stays open; the runtime drops this at the test's end.
            std::future::pending::<()>().await;
            unreachable!()
        }
    }
}

/// Starts a [`lying_peer`] on this runtime, holding `lesson` in its own store
/// in `dir` and letting in the node whose folder is `allowed`; returns its id
/// and `NODEID@IP:PORT`, to name it as a source and find it among the liars.
pub fn start_liar(
    dir: &Path,
    lesson: &Path,
    allowed: &Path,
    lie: Lie,
) -> anyhow::Result<(String, String)> {
    let store = Arc::new(Store::open(dir)?);
    store.add_folder(lesson)?;
    let identity = Identity::load_or_create(dir)?;
    let members = Members::new([node_id(allowed)?.parse()?]);
    let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse()?, &identity, members)?;
    let addr = format!("{}@{}", identity.id(), endpoint.local_addr()?);
    tokio::spawn(async move {
        if let Err(e) = lying_peer(endpoint, store, lie).await {
            eprintln!("lying peer stopped: {e:#}");
        }
    });
    Ok((identity.id().to_string(), addr))
}
