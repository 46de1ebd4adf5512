//! Answering peers: one task per connection, one per stream, each request read
//! with its cap, answered from the store, and every byte sent verified first.
//! A request that does not decode gets a typed error; the node goes on.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use cartable_proto::wire::{ErrorKind, GROUP_BYTES, GroupRanges, Request, Response, WireError};
use cartable_proto::{BlobHash, BundleId, DecodeError, NodeId};
use quinn::{RecvStream, SendStream};
use tokio::sync::{Semaphore, mpsc};

use super::pacing::{BrowsersFirst, PACED_SLICE};
use crate::store::{ReadFault, Store, VerifyError};
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_net::peer::frame::{self, FrameError};

/// Encoded bytes handed from the disk reader to the stream at a time.
const PIECE_BYTES: usize = 256 * 1024;
/// Room for a piece and the one write that takes it past [`PIECE_BYTES`] (a
/// chunk group and its hashes), so a piece is never reallocated.
const PIECE_CAPACITY: usize = PIECE_BYTES + 64 * 1024;

/// Connections one peer may hold open at once; more are closed at once.
const MAX_CONNECTIONS_PER_PEER: usize = 4;
/// Blob streams served at once, all peers together; beyond, peers get `Busy`.
const MAX_BLOB_STREAMS: usize = 64;
/// When a busy node asks peers to come back.
const BUSY_RETRY_MS: u32 = 1000;

/// Accepts members' connections and answers their requests until the endpoint
/// closes; blobs are sent at the `pacing` of this node's browsers, if given.
pub async fn serve_peers(
    endpoint: PeerEndpoint,
    store: Arc<Store>,
    pacing: Option<Arc<BrowsersFirst>>,
) {
    let open: Arc<Mutex<HashMap<NodeId, usize>>> = Arc::default();
    let streams = Arc::new(Semaphore::new(MAX_BLOB_STREAMS));
    while let Some(arriving) = endpoint.accept().await {
        let (store, open, streams) = (store.clone(), open.clone(), streams.clone());
        let pacing = pacing.clone();
        tokio::spawn(async move {
            let remote = arriving.remote_address();
            let peer = match arriving.handshake().await {
                Ok(peer) => peer,
                Err(e) => {
                    return tracing::debug!(%remote, error = format!("{e:#}"), "peer handshake failed");
                }
            };
            let Some(_slot) = ConnectionSlot::take(&open, peer.peer) else {
                let code = cartable_net::peer::endpoint::CLOSED_TOO_MANY;
                peer.conn.close(code.into(), b"too many connections");
                return;
            };
            // The handshake checked the key against the member list.
            peer.trust();
            while let Ok((send, recv)) = peer.conn.accept_bi().await {
                let (store, streams, pacing) = (store.clone(), streams.clone(), pacing.clone());
                tokio::spawn(async move {
                    if let Err(e) = answer(send, recv, store, streams, pacing).await {
                        tracing::debug!(%remote, error = %e, "peer stream ended");
                    }
                });
            }
        });
    }
}

/// One of a peer's connections, counted while it lives.
struct ConnectionSlot {
    open: Arc<Mutex<HashMap<NodeId, usize>>>,
    peer: NodeId,
}

impl ConnectionSlot {
    fn take(open: &Arc<Mutex<HashMap<NodeId, usize>>>, peer: NodeId) -> Option<Self> {
        let mut counts = open.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(peer).or_default();
        if *count >= MAX_CONNECTIONS_PER_PEER {
            tracing::warn!(%peer, "too many connections from one peer, closing");
            return None;
        }
        *count += 1;
        Some(Self {
            open: open.clone(),
            peer,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

async fn answer(
    mut send: SendStream,
    mut recv: RecvStream,
    store: Arc<Store>,
    streams: Arc<Semaphore>,
    pacing: Option<Arc<BrowsersFirst>>,
) -> Result<(), FrameError> {
    let request = match frame::read_request(&mut recv).await {
        Ok(request) => request,
        Err(FrameError::Decode(e)) => {
            let kind = match e {
                DecodeError::TooLarge { .. } => ErrorKind::TooLarge,
                _ => ErrorKind::BadRequest,
            };
            let response = Response::Error(WireError::new(kind, e.to_string()));
            frame::write_frame(&mut send, &response.encode()).await?;
            let _ = send.finish();
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let response = match request {
        Request::Blob { hash, groups } => match streams.try_acquire_owned() {
            Ok(_permit) => return send_blob(send, &store, hash, groups, pacing).await,
            Err(_) => Response::Error(WireError {
                retry_after_ms: BUSY_RETRY_MS,
                ..WireError::new(ErrorKind::Busy, "serving too many blobs")
            }),
        },
        Request::Manifest(id) => manifest(&store, &id),
        Request::Has(hashes) => Response::Has(
            hashes
                .iter()
                .map(|h| store.blob_size(h).is_some())
                .collect(),
        ),
    };
    frame::write_frame(&mut send, &response.encode()).await?;
    let _ = send.finish();
    Ok(())
}

fn not_found(what: &str) -> Response {
    Response::Error(WireError::new(
        ErrorKind::NotFound,
        format!("{what} not held here"),
    ))
}

fn manifest(store: &Store, id: &BundleId) -> Response {
    match store.manifest(id) {
        Ok(Some(m)) => Response::Manifest(m.encode()),
        Ok(None) => not_found("bundle"),
        Err(e) => {
            tracing::error!(bundle = %id, error = %e, "reading manifest for a peer");
            not_found("bundle")
        }
    }
}

async fn send_blob(
    mut send: SendStream,
    store: &Arc<Store>,
    hash: BlobHash,
    groups: GroupRanges,
    pacing: Option<Arc<BrowsersFirst>>,
) -> Result<(), FrameError> {
    let files = match open_held(store, &hash) {
        Ok(files) => files,
        Err(refusal) => {
            frame::write_frame(&mut send, &refusal.encode()).await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    frame::write_frame(&mut send, &Response::Blob { size: files.size }.encode()).await?;
    // A file of one group (a page, a style sheet) is a round trip a pupil
    // reading through a peer waits on, and too small to matter: never paced.
    let pacing = pacing.filter(|_| files.size > GROUP_BYTES);
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let reader_store = store.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            tx,
            buf: BytesMut::new(),
        };
        let result = files.encode_groups(groups.ranges(), out);
        if let Err(e) = &result {
            // Marks only a blob shown wrong on disk; a reset stream or a node
            // short of memory is not the blob's fault.
            reader_store.read_failed(&files.hash, e);
        }
        result
    });
    while let Some(mut piece) = rx.recv().await {
        while !piece.is_empty() {
            // Paced in slices of a millisecond's worth: a whole piece at once
            // is a burst of datagrams the browsers' requests wait behind.
            let slice = piece.split_to(piece.len().min(PACED_SLICE));
            let delay = pacing.as_ref().map(|p| p.delay(slice.len() as u64));
            if let Some(delay) = delay.filter(|d| !d.is_zero()) {
                tokio::time::sleep(delay).await;
            }
            // Handed over whole: quinn keeps the slice itself rather than a copy.
            send.write_chunk(slice).await?;
        }
    }
    match reader.await {
        Ok(Ok(())) => {
            let _ = send.finish();
        }
        _ => {
            // Never end a stream normally after unverified data: the peer sees a reset.
            let _ = send.reset(1u32.into());
        }
    }
    Ok(())
}

/// Opens a blob held whole, or the answer for a peer: not held (or missing on
/// disk, then marked damaged), or busy when this node cannot open files now.
fn open_held(store: &Store, hash: &BlobHash) -> Result<crate::store::BlobFiles, Response> {
    let size = store.blob_size(hash).ok_or_else(|| not_found("blob"))?;
    store
        .open_blob(hash, size)
        .map_err(|e| match store.read_failed(hash, &VerifyError::Io(e)) {
            ReadFault::Damaged => not_found("blob"),
            ReadFault::Transient => Response::Error(WireError {
                retry_after_ms: BUSY_RETRY_MS,
                ..WireError::new(ErrorKind::Busy, "cannot open the blob now")
            }),
        })
}

/// A blocking writer feeding an async stream through a bounded channel.
struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // quinn keeps a piece until the peer acknowledges it, and with it the
        // allocation it sits in: a short piece (a small blob, a blob's end) is
        // copied out, so that it does not hold a whole piece's room, and the
        // room is kept for the next one.
        let piece = if self.buf.len() < PIECE_BYTES / 4 {
            let short = Bytes::copy_from_slice(&self.buf);
            self.buf.clear();
            short
        } else {
            self.buf.split().freeze()
        };
        self.tx
            .blocking_send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::ConnectionReset, "peer stream closed"))
    }
}

impl io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.is_empty() && self.buf.capacity() < PIECE_BYTES {
            // A fresh piece's room at once: grown by doubling from what
            // `split` left, it would be copied at every step.
            self.buf = BytesMut::with_capacity(PIECE_CAPACITY);
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.send();
    }
}
