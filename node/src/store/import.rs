//! Importing one file as a blob: a single streaming pass that copies the bytes to
//! a temporary file while computing the BLAKE3 hash and the outboard, so a 5 GiB
//! video never sits in memory (at most [`BLOCKS_IN_FLIGHT`] 1 MiB blocks do). The
//! temporary files are synced and renamed into place only when complete; a blob
//! already stored is not written twice.
//!
//! A blob received over the network is already in a temporary file of the
//! store: [`Store::import_received`] reads it once for its outboard and renames
//! it into place, so its bytes are written once, not copied.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::mpsc;

use bao_tree::BaoTree;
use bao_tree::io::sync::outboard_post_order;
use bytes::{Bytes, BytesMut};
use cartable_proto::BlobHash;

use super::layout::{self, Layout};
use super::{Store, StoreError, io_at};
use cartable_net::peer::exchange::BLOCK_SIZE;
use cartable_proto::wire::GROUP_BYTES;

/// Bytes read from the source per system call.
const READ_BUFFER: usize = 1 << 20;
/// Blocks queued between the reading-hashing thread and the writer thread.
const BLOCKS_IN_FLIGHT: usize = 8;
/// The writer syncs to disk after this many bytes.
const SYNC_EVERY: usize = 64 << 20;

/// The outcome of importing one file.
#[derive(Debug, Clone, Copy)]
pub struct Imported {
    /// The blob's hash.
    pub hash: BlobHash,
    /// Its size.
    pub size: u64,
    /// Whether its bytes were new to the store (false: deduplicated).
    pub new: bool,
}

/// Imports the file at `source`, which is expected to be `size` bytes long.
/// Fails with `InvalidData` if the file changed length while being read.
pub fn import_file(layout: &Layout, source: &Path, size: u64) -> io::Result<Imported> {
    let temp_data = layout.temp_path("data");
    let temp_outboard = layout.temp_path("obao");
    let result = copy_and_hash(source, size, &temp_data, &temp_outboard)
        .and_then(|hash| place(layout, hash, size, &temp_data, &temp_outboard));
    // On success the temporary files were renamed or are leftovers of a duplicate.
    let _ = layout::remove_if_present(&temp_data);
    let _ = layout::remove_if_present(&temp_outboard);
    result
}

/// Bytes a blob of `size` takes in the store: its data and, above one chunk
/// group, its outboard (64 bytes per 16 KiB group).
pub fn disk_bytes(size: u64) -> u64 {
    let outboard = if size > GROUP_BYTES {
        BaoTree::new(size, BLOCK_SIZE).outboard_size()
    } else {
        0
    };
    size.saturating_add(outboard)
}

impl Store {
    /// Moves a blob already written to `temp` in the store's `tmp/` folder (so
    /// on the same filesystem: an uploaded body, `size` bytes, hashed by the
    /// caller to `hash`) into place as that blob, without copying it: builds the
    /// outboard from the file, checks the root hash again, syncs both, renames
    /// the outboard then the data into place and syncs the folder. A crash
    /// leaves nothing under `hash` or a complete blob. A copy marked damaged is
    /// replaced; a sound copy already stored is kept and `temp` left to the
    /// caller. Returns whether the blob is new here. Fails with `InvalidData`,
    /// keeping nothing, if the file is not `size` bytes hashing to `hash`.
    pub fn import_received(
        &self,
        temp: &Path,
        hash: &BlobHash,
        size: u64,
    ) -> Result<bool, StoreError> {
        self.remove_if_damaged(hash)?;
        let temp_outboard = self.layout.temp_path("obao");
        let result = outboard_of(temp, size, &temp_outboard)
            .and_then(|found| {
                if found == *hash {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "changed since it was hashed",
                    ))
                }
            })
            .and_then(|()| place(&self.layout, *hash, size, temp, &temp_outboard))
            .and_then(|placed| {
                layout::sync_dir(&self.layout.blobs_dir())?;
                Ok(placed.new)
            });
        let _ = layout::remove_if_present(&temp_outboard);
        let new = result.map_err(io_at(temp))?;
        self.index
            .clear_damaged(hash)
            .map_err(|e| self.index_err(e))?;
        Ok(new)
    }

    /// Removes the files of a blob marked damaged: `place` keeps a stored file
    /// of the right length, and this one must be replaced.
    fn remove_if_damaged(&self, hash: &BlobHash) -> Result<(), StoreError> {
        if self.index.is_damaged(hash) {
            let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            for path in [self.layout.blob(hash), self.layout.outboard(hash)] {
                layout::remove_if_present(&path).map_err(io_at(&path))?;
            }
        }
        Ok(())
    }
}

/// Writes the temporary data and outboard files and returns the hash. This
/// thread reads the source and hashes it; a second thread writes the copy and
/// flushes it to disk as it goes, so hashing, copying and the disk overlap.
fn copy_and_hash(
    source: &Path,
    size: u64,
    temp_data: &Path,
    temp_outboard: &Path,
) -> io::Result<BlobHash> {
    let mut input = File::open(source)?;
    let data = File::create(temp_data)?;
    let (blocks, to_writer) = mpsc::sync_channel::<Bytes>(BLOCKS_IN_FLIGHT);
    let writer = std::thread::spawn(move || write_blocks(&data, to_writer));
    let mut tee = Tee {
        input: &mut input,
        block: Bytes::new(),
        copy: blocks,
    };
    let tree = BaoTree::new(size, BLOCK_SIZE);
    let outboard = File::create(temp_outboard)?;
    let mut outboard_writer = BufWriter::new(&outboard);
    let hashed = outboard_post_order(&mut tee, tree, &mut outboard_writer);
    let leftover = tee.block.len() + tee.input.read(&mut [0u8; 1])?;
    drop(tee);
    let written = writer
        .join()
        .map_err(|_| io::Error::other("writer thread panicked"))?;
    written?;
    let hash = hashed.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => changed(source),
        _ => e,
    })?;
    if leftover != 0 {
        return Err(changed(source));
    }
    outboard_writer.flush()?;
    drop(outboard_writer);
    outboard.sync_all()?;
    Ok(hash.into())
}

/// Reads the file at `data`, which must be `size` bytes long, once to write its
/// outboard to `temp_outboard`; syncs both files and returns the root hash.
fn outboard_of(data: &Path, size: u64, temp_outboard: &Path) -> io::Result<BlobHash> {
    let file = File::open(data)?;
    if file.metadata()?.len() != size {
        return Err(changed(data));
    }
    let outboard = File::create(temp_outboard)?;
    let mut writer = BufWriter::new(&outboard);
    let tree = BaoTree::new(size, BLOCK_SIZE);
    let reader = io::BufReader::with_capacity(READ_BUFFER, &file);
    let hash = outboard_post_order(reader, tree, &mut writer)?;
    writer.flush()?;
    drop(writer);
    outboard.sync_all()?;
    file.sync_all()?;
    Ok(hash.into())
}

/// The writer thread: appends blocks, syncing every [`SYNC_EVERY`] bytes so the
/// final sync has little left to do.
fn write_blocks(mut file: &File, blocks: mpsc::Receiver<Bytes>) -> io::Result<()> {
    let mut unsynced = 0;
    for block in blocks {
        file.write_all(&block)?;
        unsynced += block.len();
        if unsynced >= SYNC_EVERY {
            file.sync_data()?;
            unsynced = 0;
        }
    }
    file.sync_all()
}

fn changed(source: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} changed while being imported", source.display()),
    )
}

/// Renames the temporary files into place unless the blob is already stored.
fn place(
    layout: &Layout,
    hash: BlobHash,
    size: u64,
    temp_data: &Path,
    temp_outboard: &Path,
) -> io::Result<Imported> {
    let dest = layout.blob(&hash);
    let stored_len = fs::metadata(&dest).map(|m| m.len()).ok();
    if stored_len == Some(size) {
        return Ok(Imported {
            hash,
            size,
            new: false,
        });
    }
    // The outboard goes first: a data file under its final name always has one.
    if size > GROUP_BYTES {
        fs::rename(temp_outboard, layout.outboard(&hash))?;
    }
    fs::rename(temp_data, dest)?;
    Ok(Imported {
        hash,
        size,
        new: true,
    })
}

/// A reader over the source that hands every block it reads to the writer thread.
struct Tee<'a> {
    input: &'a mut File,
    /// The part of the last block not yet read through.
    block: Bytes,
    copy: mpsc::SyncSender<Bytes>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.block.is_empty() {
            let mut next = BytesMut::zeroed(READ_BUFFER);
            let n = self.input.read(&mut next)?;
            next.truncate(n);
            self.block = next.freeze();
            if n > 0 && self.copy.send(self.block.clone()).is_err() {
                return Err(io::Error::other("writer thread stopped"));
            }
        }
        let n = buf.len().min(self.block.len());
        buf[..n].copy_from_slice(&self.block.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + i / 4099) as u8).collect()
    }

    /// Writes `data` where an upload's body lands: a file in the store's `tmp/`.
    fn received(store: &Store, data: &[u8]) -> io::Result<std::path::PathBuf> {
        let temp = store.layout().temp_path("upload");
        fs::write(&temp, data)?;
        Ok(temp)
    }

    fn read_verified(store: &Store, hash: &BlobHash, size: u64) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        store.open_blob(hash, size)?.read_verified(0..size, |b| {
            out.extend_from_slice(&b);
            true
        })?;
        Ok(out)
    }

    #[test]
    fn a_received_blob_is_moved_into_place_not_copied() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        for len in [10, 300_000] {
            let data = pattern(len);
            let (hash, size) = (BlobHash::of(&data), len as u64);
            let temp = received(&store, &data)?;
            let inode = fs::metadata(&temp)?.ino();
            assert!(store.import_received(&temp, &hash, size)?, "new");
            assert!(!temp.exists(), "renamed away");
            let stored = fs::metadata(store.layout().blob(&hash))?;
            assert_eq!(stored.ino(), inode, "the very file written, not a copy");
            assert_eq!(read_verified(&store, &hash, size)?, data);
            assert_eq!(disk_bytes(size), {
                let outboard = fs::metadata(store.layout().outboard(&hash)).map_or(0, |m| m.len());
                size + outboard
            });
        }
        assert_eq!(fs::read_dir(store.layout().tmp_dir())?.count(), 0);
        Ok(())
    }

    #[test]
    fn a_received_file_that_does_not_hash_right_leaves_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let data = pattern(100_000);
        let hash = BlobHash::of(&data);
        let mut changed = data.clone();
        changed[50_000] ^= 1;
        let temp = received(&store, &changed)?;
        let err = store.import_received(&temp, &hash, data.len() as u64);
        assert!(err.is_err());
        // Nor a file of another length.
        let short = received(&store, &data[1..])?;
        assert!(
            store
                .import_received(&short, &hash, data.len() as u64)
                .is_err()
        );
        assert!(!store.has_blob_file(&hash, data.len() as u64));
        assert_eq!(fs::read_dir(store.layout().blobs_dir())?.count(), 0);
        // Only the caller's own temporary files are left, for it to remove.
        assert_eq!(fs::read_dir(store.layout().tmp_dir())?.count(), 2);
        Ok(())
    }

    #[test]
    fn a_blob_stored_already_is_kept_and_a_damaged_one_replaced() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let data = pattern(40_000);
        let (hash, size) = (BlobHash::of(&data), data.len() as u64);
        store.import_received(&received(&store, &data)?, &hash, size)?;
        let first = fs::metadata(store.layout().blob(&hash))?.ino();
        let again = received(&store, &data)?;
        assert!(!store.import_received(&again, &hash, size)?, "not new");
        assert!(again.exists(), "a duplicate is left to the caller");
        assert_eq!(fs::metadata(store.layout().blob(&hash))?.ino(), first);

        store.mark_damaged(&hash, "test");
        let repair = received(&store, &data)?;
        assert!(
            store.import_received(&repair, &hash, size)?,
            "written afresh"
        );
        assert!(!store.is_damaged(&hash));
        assert_ne!(fs::metadata(store.layout().blob(&hash))?.ino(), first);
        assert_eq!(read_verified(&store, &hash, size)?, data);
        Ok(())
    }
}
