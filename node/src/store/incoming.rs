//! A blob received over the network (an upload's body), stored as it
//! arrives: each piece is hashed into the outboard where it lies in memory,
//! and gathered into 1 MiB batches that a blocking thread writes while the
//! next batch is received. One batch is written at a time, so a body holds at
//! most two batches of memory, and a thread only for as long as a write takes,
//! never while waiting for the sender. Once the last byte is in, the caller
//! compares the root hash with the one it expected, and only then
//! [`Store::place_received`] syncs the files and renames them into place:
//! the bytes are written once and never read back.

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
    batch: Vec<u8>,
    /// Where the batch starts in the data file, and the outboard's next bytes
    /// in theirs.
    at: u64,
    outboard_at: u64,
    /// The batch being written; it gives its buffer back for the next one.
    writing: Option<JoinHandle<Result<Vec<u8>, StoreError>>>,
}

/// A blob fully received and hashed, not yet in place.
#[derive(Debug)]
pub struct Received {
    files: Arc<TempFiles>,
    hash: BlobHash,
    size: u64,
    /// The last bytes of data and outboard, written when placed.
    data_tail: (Vec<u8>, u64),
    outboard_tail: (Vec<u8>, u64),
}

/// The temporary data file and, above one chunk group, outboard file of a
/// blob being received: removed when the last holder lets go, unless they
/// were renamed into place (the batch being written when a body is dropped
/// holds them until its write ends).
#[derive(Debug)]
struct TempFiles {
    data_path: PathBuf,
    data: File,
    outboard_path: PathBuf,
    outboard: Option<File>,
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        let _ = layout::remove_if_present(&self.data_path);
        let _ = layout::remove_if_present(&self.outboard_path);
    }
}

impl TempFiles {
    fn create(layout: &Layout, size: u64) -> io::Result<Self> {
        let data_path = layout.temp_path("upload");
        let outboard_path = layout.temp_path("obao");
        let data = File::create(&data_path)?;
        let mut files = Self {
            data_path,
            data,
            outboard_path,
            outboard: None,
        };
        if size > GROUP_BYTES {
            files.outboard = Some(File::create(&files.outboard_path)?);
        }
        Ok(files)
    }

    fn write(
        &self,
        data: &[u8],
        at: u64,
        outboard: &[u8],
        outboard_at: u64,
    ) -> Result<(), StoreError> {
        self.data
            .write_all_at(data, at)
            .map_err(io_at(&self.data_path))?;
        if let Some(file) = &self.outboard {
            file.write_all_at(outboard, outboard_at)
                .map_err(io_at(&self.outboard_path))?;
        }
        Ok(())
    }
}

impl Incoming {
    /// Takes the next piece of the body, writing a full batch meanwhile.
    pub async fn push(&mut self, piece: &[u8]) -> Result<(), ReceiveError> {
        if piece.len() as u64 > self.size - self.received {
            return Err(ReceiveError::Longer);
        }
        self.outboard.update(piece);
        self.received += piece.len() as u64;
        self.batch.extend_from_slice(piece);
        if self.batch.len() >= BATCH {
            let next = self
                .written()
                .await?
                .unwrap_or_else(|| Vec::with_capacity(BATCH));
            let batch = std::mem::replace(&mut self.batch, next);
            let outboard = self.outboard.take_outboard();
            let (at, outboard_at) = (self.at, self.outboard_at);
            self.at += batch.len() as u64;
            self.outboard_at += outboard.len() as u64;
            let files = self.files.clone();
            self.writing = Some(tokio::task::spawn_blocking(move || {
                files.write(&batch, at, &outboard, outboard_at)?;
                let mut batch = batch;
                batch.clear();
                Ok(batch)
            }));
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
        Ok(Received {
            hash,
            size: self.size,
            data_tail: (std::mem::take(&mut self.batch), self.at),
            outboard_tail: (self.outboard.take_outboard(), self.outboard_at),
            files: self.files,
        })
    }

    /// Waits for the batch being written; its buffer, emptied.
    async fn written(&mut self) -> Result<Option<Vec<u8>>, ReceiveError> {
        let Some(writing) = self.writing.take() else {
            return Ok(None);
        };
        match writing.await {
            Ok(done) => Ok(Some(done?)),
            Err(e) => Err(io_at(&self.files.data_path)(io::Error::other(format!(
                "the writing thread failed: {e}"
            )))
            .into()),
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
    /// store (creating them: blocking).
    pub fn incoming(&self, size: u64) -> Result<Incoming, StoreError> {
        let files = TempFiles::create(&self.layout, size).map_err(io_at(&self.layout.tmp_dir()))?;
        Ok(Incoming {
            files: Arc::new(files),
            size,
            received: 0,
            outboard: OutboardBuilder::new(size),
            batch: Vec::with_capacity(BATCH.min(usize::try_from(size).unwrap_or(BATCH))),
            at: 0,
            outboard_at: 0,
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
            data_tail,
            outboard_tail,
        } = received;
        files.write(&data_tail.0, data_tail.1, &outboard_tail.0, outboard_tail.1)?;
        files.data.sync_all().map_err(io_at(&files.data_path))?;
        if let Some(outboard) = &files.outboard {
            outboard.sync_all().map_err(io_at(&files.outboard_path))?;
        }
        self.remove_if_damaged(&hash)?;
        let new = place(
            &self.layout,
            hash,
            size,
            &files.data_path,
            &files.outboard_path,
        )
        .and_then(|placed| {
            layout::sync_dir(&self.layout.blobs_dir())?;
            Ok(placed.new)
        })
        .map_err(io_at(&files.data_path))?;
        self.index()
            .clear_damaged(&hash)
            .map_err(|e| self.index_err(e))?;
        Ok(new)
    }

    /// Removes the files of a blob marked damaged: `place` keeps a stored file
    /// of the right length, and this one must be replaced.
    fn remove_if_damaged(&self, hash: &BlobHash) -> Result<(), StoreError> {
        if self.index().is_damaged(hash) {
            let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            for path in [self.layout.blob(hash), self.layout.outboard(hash)] {
                layout::remove_if_present(&path).map_err(io_at(&path))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::tests::{pattern, read_all};
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

    fn tmp_count(store: &Store) -> anyhow::Result<usize> {
        Ok(fs::read_dir(store.layout().tmp_dir())?.count())
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
        assert_eq!(tmp_count(&store)?, 0);
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
        // Nothing in tmp/ once the last batch written has let go of the files.
        for _ in 0..100 {
            if tmp_count(&store)? == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(tmp_count(&store)?, 0);
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
        assert_eq!(tmp_count(&store)?, 0, "the duplicate is removed");

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
}
