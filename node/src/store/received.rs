//! A blob received over the network, an upload's body: written to a temporary
//! file of the store as its pieces arrive, synced as it goes, while another
//! thread hashes the same pieces into the outboard. Once the last piece is
//! in, a short sync and two renames are left: the bytes are written once and
//! never read back.
//!
//! (Before, the body was written and hashed, then read again for the outboard
//! and synced whole at the end: 0.28× a durable copy of the same bytes, against
//! 0.9× asked; `benches/README.md`, "An upload stored as it arrives".)

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};

use bytes::Bytes;
use cartable_proto::BlobHash;
use tokio::sync::mpsc;

use super::import::{hashing_stopped, place, write_and_hash, write_in_steps};
use super::layout;
use super::{Store, StoreError, io_at};

/// Bytes of pieces handed over at once: one wake-up of the storing thread
/// per batch, not per piece (16 KiB each over HTTP/2).
const BATCH_BYTES: usize = 1 << 20;
/// Batches received ahead of the disk: what a slow disk lets pile up in
/// memory for one body, about 4 MiB.
const BATCHES_AHEAD: usize = 4;

/// Where the task receiving a body hands its pieces, in batches.
#[derive(Debug)]
pub struct BodySender {
    batches: mpsc::Sender<Vec<Bytes>>,
    batch: Vec<Bytes>,
    batched: usize,
}

/// The storing thread stopped reading the body (its error says why).
#[derive(Debug)]
pub struct BodyClosed;

impl BodySender {
    /// Adds `piece`, handing the batch over once it holds [`BATCH_BYTES`];
    /// waits while the storing thread is [`BATCHES_AHEAD`] behind.
    pub async fn send(&mut self, piece: Bytes) -> Result<(), BodyClosed> {
        self.batched += piece.len();
        self.batch.push(piece);
        if self.batched < BATCH_BYTES {
            return Ok(());
        }
        self.batched = 0;
        let batch = std::mem::take(&mut self.batch);
        self.batches.send(batch).await.map_err(|_| BodyClosed)
    }

    /// Hands over what is left: the body ends here. Dropping the sender
    /// without this cuts the body short.
    pub async fn finish(mut self) -> Result<(), BodyClosed> {
        let batch = std::mem::take(&mut self.batch);
        self.batches.send(batch).await.map_err(|_| BodyClosed)
    }
}

/// A body's pieces as the storing thread reads them.
#[derive(Debug)]
pub struct BodyPieces {
    batches: mpsc::Receiver<Vec<Bytes>>,
    pending: VecDeque<Bytes>,
}

impl BodyPieces {
    /// The two ends of one body.
    pub fn channel() -> (BodySender, Self) {
        let (batches, receiver) = mpsc::channel(BATCHES_AHEAD);
        let sender = BodySender {
            batches,
            batch: Vec::new(),
            batched: 0,
        };
        (sender, Self::reading(receiver))
    }

    fn reading(batches: mpsc::Receiver<Vec<Bytes>>) -> Self {
        Self {
            batches,
            pending: VecDeque::new(),
        }
    }

    /// The next pieces, `want` bytes of them unless the body ends first
    /// (none at its end). Blocks the calling thread: for a blocking thread,
    /// never a runtime's.
    fn take(&mut self, want: usize) -> Vec<Bytes> {
        let (mut taken, mut pieces) = (0, Vec::new());
        while taken < want {
            let Some(mut piece) = self.pending.pop_front() else {
                match self.batches.blocking_recv() {
                    Some(batch) => {
                        self.pending.extend(batch);
                        continue;
                    }
                    None => break,
                }
            };
            if piece.len() > want - taken {
                self.pending.push_front(piece.split_off(want - taken));
            }
            taken += piece.len();
            pieces.push(piece);
        }
        pieces
    }
}

impl Read for BodyPieces {
    /// Copies from the pieces straight into `buf`, which the hasher reads in
    /// chunk groups: no buffer between.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut at = 0;
        while at < buf.len() {
            let Some(piece) = self.pending.front_mut() else {
                if at > 0 {
                    break;
                }
                match self.batches.blocking_recv() {
                    Some(batch) => {
                        self.pending.extend(batch);
                        continue;
                    }
                    None => break,
                }
            };
            let n = piece.len().min(buf.len() - at);
            buf[at..at + n].copy_from_slice(&piece.split_to(n));
            at += n;
            if piece.is_empty() {
                self.pending.pop_front();
            }
        }
        Ok(at)
    }
}

impl Store {
    /// Stores the `size` bytes `body` gives as the blob `hash`: written to a
    /// temporary file and hashed into the outboard as they land, then both
    /// synced and renamed into place (the outboard first), and the folder
    /// synced. A crash leaves nothing under `hash` or a complete blob. A copy
    /// marked damaged is replaced; a sound copy already stored is kept.
    /// Returns whether the blob is new here. Fails with `InvalidData`, keeping
    /// nothing, if the body is not `size` bytes hashing to `hash`, and with
    /// the body's own error if reading it fails.
    pub fn import_stream(
        &self,
        body: BodyPieces,
        hash: &BlobHash,
        size: u64,
    ) -> Result<bool, StoreError> {
        self.remove_if_damaged(hash)?;
        let temp_data = self.layout.temp_path("upload");
        let temp_outboard = self.layout.temp_path("obao");
        // The pieces written go on to the hasher: hashed from memory, not
        // read back, and what is hashed is what was written.
        let (to_hasher, written) = mpsc::channel(BATCHES_AHEAD);
        let write = move |data: &File| {
            let step = |body: &mut BodyPieces, data: &File, n| {
                let pieces = body.take(usize::try_from(n).unwrap_or(usize::MAX));
                Ok((write_pieces(data, &pieces)?, pieces))
            };
            let announce = |_, pieces| {
                to_hasher
                    .blocking_send(pieces)
                    .map_err(|_| hashing_stopped())
            };
            write_in_steps(body, data, size, step, announce)
        };
        let landed = |_| BodyPieces::reading(written);
        let result = write_and_hash(size, &temp_data, &temp_outboard, write, landed)
            .and_then(|found| match found {
                Some(found) if found == *hash => Ok(()),
                Some(_) => Err(invalid("the body does not hash to the blob's hash")),
                None => Err(invalid("the body is not the blob's size")),
            })
            .and_then(|()| place(&self.layout, *hash, size, &temp_data, &temp_outboard))
            .and_then(|placed| {
                layout::sync_dir(&self.layout.blobs_dir())?;
                Ok(placed.new)
            });
        // On success the temporary files were renamed or are a duplicate's.
        let _ = layout::remove_if_present(&temp_data);
        let _ = layout::remove_if_present(&temp_outboard);
        let new = result.map_err(io_at(&temp_data))?;
        self.index()
            .clear_damaged(hash)
            .map_err(|e| self.index_err(e))?;
        Ok(new)
    }
}

/// Writes `pieces` one after the other with as few system calls as the
/// kernel allows, not a copy into one buffer first. Returns the bytes written.
fn write_pieces(mut data: &File, pieces: &[Bytes]) -> io::Result<u64> {
    let mut slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    let mut written = 0;
    while !slices.is_empty() {
        match data.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                written += n as u64;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::store::disk_bytes;
    use crate::store::import::tests::{holds_nothing, pattern, read_verified};

    /// `data` as a body arrives: in pieces of `piece` bytes, from a task on
    /// another thread; `whole` false if the client goes away after them.
    fn send(data: &[u8], piece: usize, whole: bool) -> (BodyPieces, std::thread::JoinHandle<()>) {
        let (mut sender, body) = BodyPieces::channel();
        let pieces: Vec<Bytes> = data.chunks(piece).map(Bytes::copy_from_slice).collect();
        let feeding = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async move {
                for p in pieces {
                    if sender.send(p).await.is_err() {
                        return;
                    }
                }
                if whole {
                    let _ = sender.finish().await;
                }
            });
        });
        (body, feeding)
    }

    fn empty_store() -> anyhow::Result<(tempfile::TempDir, Store)> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        Ok((dir, store))
    }

    fn stream(
        store: &Store,
        data: &[u8],
        piece: usize,
        hash: &BlobHash,
        size: u64,
    ) -> Result<bool, StoreError> {
        let (body, feeding) = send(data, piece, true);
        let stored = store.import_stream(body, hash, size);
        feeding.join().unwrap();
        stored
    }

    #[test]
    fn a_body_is_stored_as_it_comes_whatever_its_pieces() -> anyhow::Result<()> {
        let (_dir, store) = empty_store()?;
        // Empty, one group, pieces across groups and buffers, syncs on the way.
        for (len, piece) in [(0, 1), (10, 3), (300_000, 16 << 10), (70 << 20, 100_003)] {
            let data = pattern(len);
            let (hash, size) = (BlobHash::of(&data), len as u64);
            assert!(stream(&store, &data, piece, &hash, size)?, "new");
            assert_eq!(read_verified(&store, &hash, size)?, data, "{len} bytes");
            let outboard = fs::metadata(store.layout().outboard(&hash)).map_or(0, |m| m.len());
            assert_eq!(disk_bytes(size), size + outboard);
        }
        assert_eq!(fs::read_dir(store.layout().tmp_dir())?.count(), 0);
        Ok(())
    }

    #[test]
    fn a_body_of_other_bytes_or_length_or_cut_short_leaves_nothing() -> anyhow::Result<()> {
        let (_dir, store) = empty_store()?;
        let data = pattern(100_000);
        let (hash, size) = (BlobHash::of(&data), data.len() as u64);
        let mut changed = data.clone();
        changed[50_000] ^= 1;
        let longer = [&data[..], b"x"].concat();
        for body in [&changed[..], &data[1..], &longer[..]] {
            let err = stream(&store, body, 4096, &hash, size).unwrap_err();
            assert!(
                matches!(&err, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::InvalidData),
                "{err}"
            );
            holds_nothing(&store)?;
        }
        // A client gone halfway: its pieces so far, then nothing.
        let (body, feeding) = send(&data[..60_000], 4096, false);
        assert!(store.import_stream(body, &hash, size).is_err());
        feeding.join().unwrap();
        holds_nothing(&store)?;
        Ok(())
    }

    #[test]
    fn a_blob_stored_already_is_kept_and_a_damaged_one_replaced() -> anyhow::Result<()> {
        let (_dir, store) = empty_store()?;
        let data = pattern(40_000);
        let (hash, size) = (BlobHash::of(&data), data.len() as u64);
        assert!(stream(&store, &data, 1000, &hash, size)?);
        let first = fs::metadata(store.layout().blob(&hash))?.ino();
        assert!(!stream(&store, &data, 1000, &hash, size)?, "not new");
        assert_eq!(fs::metadata(store.layout().blob(&hash))?.ino(), first);
        assert_eq!(fs::read_dir(store.layout().tmp_dir())?.count(), 0);

        // A byte rots, the scrub marks the blob: a new upload replaces it.
        let mut rotten = data.clone();
        rotten[20_000] ^= 1;
        fs::write(store.layout().blob(&hash), &rotten)?;
        store.mark_damaged(&hash, "test");
        assert!(stream(&store, &data, 1000, &hash, size)?, "written afresh");
        assert!(!store.is_damaged(&hash));
        assert_eq!(read_verified(&store, &hash, size)?, data);
        Ok(())
    }
}
