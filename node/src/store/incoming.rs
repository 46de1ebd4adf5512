//! A blob received over the network (an upload's body), stored as it
//! arrives: each piece is hashed into the outboard where it lies in memory,
//! and gathered into 1 MiB batches that a blocking thread writes while the
//! next batch is received. One batch is written at a time, so a body holds at
//! most two batches of memory, and a thread only for as long as a write takes,
//! never while waiting for the sender. Once the last byte is in, the caller
//! compares the root hash with the one it expected, and only then
//! [`Store::place_received`] syncs the files and renames them into place:
//! the bytes are written once and never read back. A body refused or
//! dropped leaves nothing: its files are removed on a blocking thread.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use cartable_proto::BlobHash;
use cartable_proto::wire::GROUP_BYTES;
use tokio::task::JoinHandle;

use super::import::place;
use super::layout::{self, Layout};
use super::outboard_builder::OutboardBuilder;
use super::{Store, StoreError, io_at};

/// Bytes gathered before each write.
const BATCH: usize = 1 << 20;

/// Why a body was not stored.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// More bytes came than the blob has.
    #[error("the body is longer than the blob")]
    Longer,
    /// The body ended before the blob's last byte.
    #[error("the body is shorter than the blob")]
    Shorter,
    /// Writing the temporary files failed.
    #[error(transparent)]
    Disk(#[from] StoreError),
}

/// A blob's bytes on their way into the store (see the module's comment).
#[derive(Debug)]
pub struct Incoming {
    files: Arc<TempFiles>,
    size: u64,
    received: u64,
    outboard: OutboardBuilder,
    /// The bytes gathered for the next write, and where they go.
    batch: Batch,
    /// The batch being written; it gives its buffer back for the next one.
    writing: Option<JoinHandle<Result<Vec<u8>, StoreError>>>,
}

/// A blob fully received and hashed, not yet in place.
#[derive(Debug)]
pub struct Received {
    files: Arc<TempFiles>,
    hash: BlobHash,
    size: u64,
    /// The last bytes, written when placed.
    tail: Batch,
}

/// Bytes of the data file and of the outboard, each with the offset it is
/// written at.
#[derive(Debug, Default)]
struct Batch {
    data: Vec<u8>,
    at: u64,
    outboard: Vec<u8>,
    outboard_at: u64,
}

/// The temporary data file and, above one chunk group, outboard file of a
/// blob being received.
#[derive(Debug)]
struct Files {
    data_path: PathBuf,
    data: File,
    outboard_path: PathBuf,
    outboard: Option<File>,
}

/// [`Files`], removed when the last holder lets go unless they were renamed
/// into place (the batch being written when a body is dropped holds them
/// until its write ends). Removing a large file takes the filesystem a while
/// (0.55 s for 2 GiB once synced, on this project's VM), so it is done on a
/// blocking thread, never on the async thread that drops a refused body.
#[derive(Debug)]
struct TempFiles(Option<Files>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        let Some(files) = self.0.take() else { return };
        let remove = move || {
            let _ = layout::remove_if_present(&files.data_path);
            let _ = layout::remove_if_present(&files.outboard_path);
            // The files are closed here too: the last close of an unlinked
            // file is what frees its blocks.
            drop(files);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

impl TempFiles {
    fn create(layout: &Layout, size: u64) -> io::Result<Self> {
        let data_path = layout.temp_path("upload");
        let outboard_path = layout.temp_path("obao");
        let data = File::create(&data_path)?;
        // Made at once, so that a failure below still removes the data file.
        let mut temp = Self(Some(Files {
            data_path,
            data,
            outboard_path,
            outboard: None,
        }));
        if size > GROUP_BYTES {
            let files = temp.0.as_mut().expect("just made");
            files.outboard = Some(File::create(&files.outboard_path)?);
        }
        Ok(temp)
    }

    fn files(&self) -> &Files {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl Files {
    fn write(&self, batch: &Batch) -> Result<(), StoreError> {
        self.data
            .write_all_at(&batch.data, batch.at)
            .map_err(io_at(&self.data_path))?;
        layout::write_behind(&self.data, batch.at, batch.data.len() as u64);
        if let Some(file) = &self.outboard {
            file.write_all_at(&batch.outboard, batch.outboard_at)
                .map_err(io_at(&self.outboard_path))?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.data.sync_all().map_err(io_at(&self.data_path))?;
        if let Some(outboard) = &self.outboard {
            outboard.sync_all().map_err(io_at(&self.outboard_path))?;
        }
        Ok(())
    }
}

impl Incoming {
    /// Takes the next piece of the body, writing each full batch meanwhile.
    pub async fn push(&mut self, mut piece: &[u8]) -> Result<(), ReceiveError> {
        if piece.len() as u64 > self.size - self.received {
            return Err(ReceiveError::Longer);
        }
        self.received += piece.len() as u64;
        self.outboard.update(piece);
        while !piece.is_empty() {
            // A batch never grows past its size: a larger piece is split.
            let room = BATCH - self.batch.data.len();
            let (now, rest) = piece.split_at(room.min(piece.len()));
            self.batch.data.extend_from_slice(now);
            piece = rest;
            if self.batch.data.len() == BATCH {
                self.write_batch().await?;
            }
        }
        Ok(())
    }

    /// Once the last byte is in: the blob and its hash, for the caller to
    /// check before placing it.
    pub async fn finish(mut self) -> Result<Received, ReceiveError> {
        self.written().await?;
        let Some(hash) = self.outboard.root() else {
            return Err(ReceiveError::Shorter);
        };
        self.batch.outboard = self.outboard.take_outboard();
        Ok(Received {
            hash,
            size: self.size,
            tail: self.batch,
            files: self.files,
        })
    }

    /// Hands the full batch to a blocking thread, once the one before is written.
    async fn write_batch(&mut self) -> Result<(), StoreError> {
        let buffer = self
            .written()
            .await?
            .unwrap_or_else(|| Vec::with_capacity(BATCH));
        let outboard = self.outboard.take_outboard();
        let next = Batch {
            at: self.batch.at + BATCH as u64,
            outboard_at: self.batch.outboard_at + outboard.len() as u64,
            data: buffer,
            outboard: Vec::new(),
        };
        let mut batch = std::mem::replace(&mut self.batch, next);
        batch.outboard = outboard;
        let files = self.files.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            files.files().write(&batch)?;
            let mut buffer = batch.data;
            buffer.clear();
            Ok(buffer)
        }));
        Ok(())
    }

    /// Waits for the batch being written; its buffer, emptied.
    async fn written(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(writing) = self.writing.take() else {
            return Ok(None);
        };
        match writing.await {
            Ok(done) => Ok(Some(done?)),
            Err(e) => Err(io_at(&self.files.files().data_path)(io::Error::other(
                format!("the writing thread failed: {e}"),
            ))),
        }
    }
}

impl Received {
    /// The root hash of the bytes received.
    pub fn hash(&self) -> BlobHash {
        self.hash
    }
}

impl Store {
    /// Starts receiving a blob of `size` bytes into temporary files of the
    /// store. Blocking: it creates them.
    pub fn incoming(&self, size: u64) -> Result<Incoming, StoreError> {
        let files = TempFiles::create(&self.layout, size).map_err(io_at(&self.layout.tmp_dir()))?;
        Ok(Incoming {
            files: Arc::new(files),
            size,
            received: 0,
            outboard: OutboardBuilder::new(size),
            batch: Batch {
                data: Vec::with_capacity(BATCH.min(usize::try_from(size).unwrap_or(BATCH))),
                ..Batch::default()
            },
            writing: None,
        })
    }

    /// Puts a received blob in place under its hash (blocking): writes its
    /// last bytes, syncs both files, renames the outboard then the data and
    /// syncs the folder, so a crash leaves nothing under the hash or a complete
    /// blob. A copy marked damaged is replaced; a sound copy already stored is
    /// kept and the received files removed. Returns whether the blob is new.
    pub fn place_received(&self, received: Received) -> Result<bool, StoreError> {
        let Received {
            files,
            hash,
            size,
            tail,
        } = received;
        if self.has_blob_file(&hash, size) {
            return Ok(false);
        }
        let files = files.files();
        files.write(&tail)?;
        files.sync()?;
        {
            // Under the lock removals and commits take: of two bodies of one
            // blob placed at once, the second finds the first's, not new.
            let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            if self.has_blob_file(&hash, size) {
                return Ok(false);
            }
            // What is under the name is damaged or incomplete, and `place`
            // keeps a stored file of the right length.
            for path in [self.layout.blob(&hash), self.layout.outboard(&hash)] {
                layout::remove_if_present(&path).map_err(io_at(&path))?;
            }
            place(
                &self.layout,
                hash,
                size,
                &files.data_path,
                &files.outboard_path,
            )
            .map_err(io_at(&files.data_path))?;
        }
        let blobs = self.layout.blobs_dir();
        layout::sync_dir(&blobs).map_err(io_at(&blobs))?;
        // After the rename: a blob is never unmarked while its bad copy is in place.
        self.index()
            .clear_damaged(&hash)
            .map_err(|e| self.index_err(e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::tests::{pattern, read_all, tmp_count_settled};
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::store::disk_bytes;

    /// Receives `data` in pieces of `piece` bytes, as an upload's body comes.
    async fn receive(store: &Store, data: &[u8], piece: usize) -> Result<Received, ReceiveError> {
        let mut incoming = store.incoming(data.len() as u64)?;
        for piece in data.chunks(piece) {
            incoming.push(piece).await?;
        }
        incoming.finish().await
    }

    #[tokio::test]
    async fn a_received_blob_is_stored_whole_with_its_outboard() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        for (len, piece) in [
            (0, 1),
            (10, 3),
            (16_384, 16_384),
            (300_000, 16_384),
            (3 * BATCH + 5, 100_000),
        ] {
            let data = pattern(len, 7);
            let (hash, size) = (BlobHash::of(&data), len as u64);
            let received = receive(&store, &data, piece).await?;
            assert_eq!(received.hash(), hash);
            assert!(store.place_received(received)?, "new");
            assert_eq!(read_all(&store, &hash, size, 0..size)?, data, "{len} bytes");
            let outboard = fs::metadata(store.layout().outboard(&hash)).map_or(0, |m| m.len());
            assert_eq!(disk_bytes(size), size + outboard, "{len} bytes");
        }
        assert_eq!(tmp_count_settled(&store).await?, 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_body_of_another_length_or_content_leaves_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let data = pattern(2 * BATCH + 100, 7);
        let size = data.len() as u64;
        let mut incoming = store.incoming(size)?;
        incoming.push(&data).await?;
        assert!(matches!(
            incoming.push(&[0]).await,
            Err(ReceiveError::Longer)
        ));
        drop(incoming);
        let mut short = store.incoming(size)?;
        short.push(&data[1..]).await?;
        assert!(matches!(short.finish().await, Err(ReceiveError::Shorter)));
        let mut changed = data.clone();
        changed[BATCH + 7] ^= 1;
        let received = receive(&store, &changed, 16_384).await?;
        assert_ne!(received.hash(), BlobHash::of(&data));
        drop(received);
        assert_eq!(tmp_count_settled(&store).await?, 0);
        assert_eq!(fs::read_dir(store.layout().blobs_dir())?.count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_blob_stored_already_is_kept_and_a_damaged_one_replaced() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let data = pattern(40_000, 7);
        let (hash, size) = (BlobHash::of(&data), data.len() as u64);
        store.place_received(receive(&store, &data, 4096).await?)?;
        let first = fs::metadata(store.layout().blob(&hash))?.ino();
        assert!(
            !store.place_received(receive(&store, &data, 4096).await?)?,
            "not new"
        );
        assert_eq!(fs::metadata(store.layout().blob(&hash))?.ino(), first);
        assert_eq!(
            tmp_count_settled(&store).await?,
            0,
            "the duplicate is removed"
        );

        store.mark_damaged(&hash, "test");
        assert!(
            store.place_received(receive(&store, &data, 4096).await?)?,
            "written afresh"
        );
        assert!(!store.is_damaged(&hash));
        assert_ne!(fs::metadata(store.layout().blob(&hash))?.ino(), first);
        assert_eq!(read_all(&store, &hash, size, 0..size)?, data);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_two_bodies_of_one_blob_placed_at_once_one_is_new() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(Store::open(dir.path())?);
        for round in 0..100 {
            let data = pattern(20_000, round);
            let hash = BlobHash::of(&data);
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let mut placing = Vec::new();
            for _ in 0..2 {
                let received = receive(&store, &data, 4096).await?;
                let (store, barrier) = (store.clone(), barrier.clone());
                placing.push(tokio::task::spawn_blocking(move || {
                    barrier.wait();
                    store.place_received(received)
                }));
            }
            let mut new = 0;
            for placed in placing {
                new += usize::from(placed.await??);
            }
            assert_eq!(new, 1, "round {round}: one copy is new, the other found it");
            assert_eq!(read_all(&store, &hash, 20_000, 0..20_000)?, data);
        }
        Ok(())
    }
}
