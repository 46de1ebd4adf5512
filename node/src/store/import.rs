//! Importing one file as a blob: a single streaming pass that copies the bytes to
//! a temporary file while computing the BLAKE3 hash and the outboard, so a 5 GiB
//! video never sits in memory (at most [`BLOCKS_IN_FLIGHT`] 1 MiB blocks do). The temporary files are synced and renamed into
//! place only when complete; a blob already stored is not written twice.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::sync::mpsc;

use bao_tree::BaoTree;
use bao_tree::io::sync::outboard_post_order;
use bytes::{Bytes, BytesMut};
use cartable_proto::BlobHash;

use super::layout::{self, Layout};
use super::verify::{BLOCK_SIZE, GROUP_BYTES};
use super::{Store, StoreError, io_at};

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

impl Store {
    /// Imports the file at `source`, `size` bytes long and already hashed by the
    /// caller to `hash`, as that blob with its outboard; a copy marked damaged is
    /// replaced. Fails with `InvalidData`, keeping nothing under `hash`, if the
    /// file's bytes do not hash to `hash`.
    pub fn import_blob(&self, source: &Path, hash: &BlobHash, size: u64) -> Result<(), StoreError> {
        if self.index.is_damaged(hash) {
            // `place` keeps a stored file of the right length: remove the bad one.
            let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            for path in [self.layout.blob(hash), self.layout.outboard(hash)] {
                layout::remove_if_present(&path).map_err(io_at(&path))?;
            }
        }
        let imported = import_file(&self.layout, source, size).map_err(io_at(source))?;
        if imported.hash != *hash {
            // Placed under its own hash, referenced by nothing: `check` removes it.
            let wrong = io::Error::new(io::ErrorKind::InvalidData, "changed since it was hashed");
            return Err(io_at(source)(wrong));
        }
        self.index
            .clear_damaged(hash)
            .map_err(|e| self.index_err(e))
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
