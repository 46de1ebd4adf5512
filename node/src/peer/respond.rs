//! Answering peers: one task per connection, one per stream, each request read
//! with its cap, answered from the store, and every byte sent verified first.
//! A request that does not decode gets a typed error; the node goes on.
//!
//! This runs on the copies' `SCHED_IDLE` threads (see [`crate::background`]),
//! but asks the store's index and memory through [`StoreAsks`]: they take
//! locks browsers wait on, which a thread the kernel may leave off the CPU must
//! not hold. Only opening, reading, verifying and sending blobs stay here.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cartable_proto::wire::{ErrorKind, GROUP_BYTES, GroupRanges, Request, Response, WireError};
use cartable_proto::{BlobHash, BundleId, DecodeError, Manifest, NodeId};
use quinn::{RecvStream, SendStream};
use tokio::sync::{Semaphore, mpsc};

use super::asks::{Share, StoreAsks, Unasked};
use super::pacing::{BrowsersFirst, PACED_SLICE};
use crate::store::{BlobFiles, PiecePool, ReadFault, Store, StoreError, VerifyError};
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_net::peer::frame::{self, FrameError};

/// Connections one peer may hold open at once; more are closed at once.
const MAX_CONNECTIONS_PER_PEER: usize = 4;
/// Blob streams served at once, all peers together; beyond, peers get `Busy`.
const MAX_BLOB_STREAMS: usize = 64;
/// When a busy node asks peers to come back.
const BUSY_RETRY_MS: u32 = 1000;

/// Accepts members' connections and answers their requests until the endpoint
/// closes, opening `store`'s blobs and asking it the rest through `asks`;
/// blobs are sent at the `pacing` of this node's browsers, if given.
pub async fn serve_peers(
    endpoint: PeerEndpoint,
    store: Arc<Store>,
    asks: StoreAsks,
    pacing: Option<Arc<BrowsersFirst>>,
) {
    let open: Arc<Mutex<HashMap<NodeId, usize>>> = Arc::default();
    let answering = Arc::new(Answering {
        store,
        asks,
        streams: Semaphore::new(MAX_BLOB_STREAMS),
        pacing,
        pieces: Arc::default(),
    });
    while let Some(arriving) = endpoint.accept().await {
        let (answering, open) = (answering.clone(), open.clone());
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
            let share = answering.asks.share_of(peer.peer);
            while let Ok((send, recv)) = peer.conn.accept_bi().await {
                let (answering, share) = (answering.clone(), share.clone());
                tokio::spawn(async move {
                    if let Err(e) = answering.answer(&share, send, recv).await {
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

/// What answering a peer's stream takes, shared by all of them.
struct Answering {
    store: Arc<Store>,
    /// Where everything but opening blobs is asked of `store`.
    asks: StoreAsks,
    /// Blob streams served at once.
    streams: Semaphore,
    /// How fast blobs may go beside this node's browsers, if paced.
    pacing: Option<Arc<BrowsersFirst>>,
    pieces: Arc<PiecePool>,
}

impl Answering {
    async fn answer(
        &self,
        share: &Share,
        mut send: SendStream,
        mut recv: RecvStream,
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
            Request::Blob { hash, groups } => match self.streams.try_acquire() {
                Ok(_permit) => return self.send_blob(share, send, hash, groups).await,
                Err(_) => busy("serving too many blobs"),
            },
            Request::Manifest(id) => {
                match self.ask(share, 1, move |store| store.manifest(&id)).await {
                    Ok(held) => manifest(held, &id),
                    Err(refused) => refused,
                }
            }
            Request::Has(hashes) => {
                let lookups = hashes.len();
                let has = self.ask(share, lookups, move |store| {
                    let held = |h: &BlobHash| store.blob_size(h).is_some();
                    Response::Has(hashes.iter().map(held).collect())
                });
                has.await.unwrap_or_else(|refused| refused)
            }
        };
        frame::write_frame(&mut send, &response.encode()).await?;
        let _ = send.finish();
        Ok(())
    }

    async fn send_blob(
        &self,
        share: &Share,
        mut send: SendStream,
        hash: BlobHash,
        groups: GroupRanges,
    ) -> Result<(), FrameError> {
        let files = match self
            .open_held(share, hash)
            .await
            .and_then(|f| holding(f, &groups))
        {
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
        let pacing = self.pacing.as_ref().filter(|_| files.size > GROUP_BYTES);
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let pieces = self.pieces.clone();
        let reader = tokio::task::spawn_blocking(move || {
            files.encode_groups(groups.ranges(), &pieces, |piece| {
                tx.blocking_send(piece).map_err(|_| {
                    io::Error::new(io::ErrorKind::ConnectionReset, "peer stream closed")
                })
            })
        });
        while let Some(mut piece) = rx.recv().await {
            while !piece.is_empty() {
                // Paced in slices of a millisecond's worth: a whole piece at once
                // is a burst of datagrams the browsers' requests wait behind.
                let slice = piece.split_to(piece.len().min(PACED_SLICE));
                let delay = pacing.map(|p| p.delay(slice.len() as u64));
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
                return Ok(());
            }
            // Marks only a blob shown wrong on disk; a reset stream or a node
            // short of memory is not the blob's fault. Before the reset, so
            // that the peer, once told, finds it marked.
            Ok(Err(e)) if e.shows_damage() => {
                let mark = self.ask(share, 1, move |store| store.read_failed(&hash, &e));
                let _ = mark.await;
            }
            _ => {}
        }
        // Never end a stream normally after unverified data: the peer sees a reset.
        let _ = send.reset(1u32.into());
        Ok(())
    }

    /// Opens a blob held whole, or the answer for a peer: not held (or missing
    /// on disk, then marked damaged), or busy when this node cannot open files
    /// now.
    async fn open_held(&self, share: &Share, hash: BlobHash) -> Result<BlobFiles, Response> {
        let size = self.ask(share, 1, move |store| store.blob_size(&hash));
        let size = size.await?.ok_or_else(|| not_found("blob"))?;
        let e = match self.store.open_blob(&hash, size) {
            Ok(files) => return Ok(files),
            Err(e) => VerifyError::Io(e),
        };
        let fault = self.ask(share, 1, move |store| store.read_failed(&hash, &e));
        match fault.await? {
            ReadFault::Damaged => Err(not_found("blob")),
            ReadFault::Transient => Err(busy("cannot open the blob now")),
        }
    }

    /// `ask`'s answer within the peer's `share` (paced while this node's
    /// browsers are being served), or the peer's answer when refused.
    async fn ask<T: Send + 'static>(
        &self,
        share: &Share,
        lookups: usize,
        ask: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Result<T, Response> {
        let beside_browsers = self.pacing.as_ref().is_some_and(|p| p.browsers_served());
        let asked = self.asks.ask(share, lookups, beside_browsers, ask).await;
        asked.map_err(|refused| match refused {
            Unasked::OverShare => busy("asking faster than a peer's share"),
            Unasked::Stopping => busy("this node is stopping"),
        })
    }
}

/// Come back later, for `why`.
fn busy(why: &str) -> Response {
    Response::Error(WireError {
        retry_after_ms: BUSY_RETRY_MS,
        ..WireError::new(ErrorKind::Busy, why)
    })
}

fn not_found(what: &str) -> Response {
    Response::Error(WireError::new(
        ErrorKind::NotFound,
        format!("{what} not held here"),
    ))
}

fn manifest(held: Result<Option<Arc<Manifest>>, StoreError>, id: &BundleId) -> Response {
    match held {
        Ok(Some(m)) => Response::Manifest(m.encode()),
        Ok(None) => not_found("bundle"),
        Err(e) => {
            tracing::error!(bundle = %id, error = %e, "reading manifest for a peer");
            not_found("bundle")
        }
    }
}

/// `files` if they hold every group asked for: groups that start past a
/// blob's end have no honest encoding, and are refused by name.
fn holding(files: BlobFiles, groups: &GroupRanges) -> Result<BlobFiles, Response> {
    match groups.ranges().last() {
        Some(past) if past.start >= files.groups() => Err(Response::Error(WireError::new(
            ErrorKind::BadRequest,
            format!(
                "groups from {} asked of a blob of {}",
                past.start,
                files.groups()
            ),
        ))),
        _ => Ok(files),
    }
}
