//! Importing one file as a blob: the kernel copies the bytes to a temporary file
//! while this process computes the BLAKE3 hash and the outboard of the copy as
//! it lands, so a 5 GiB video never sits in memory (one 1 MiB buffer does). The
//! temporary files are synced and renamed into place only when complete; a blob
//! already stored is not written twice. A blob received over the network is
//! stored as it arrives ([`received`](super::received)).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;

use bao_tree::BaoTree;
use bao_tree::io::sync::outboard_post_order;
use cartable_proto::BlobHash;

use super::layout::{self, Layout};
use super::{Store, StoreError, io_at};
use cartable_net::peer::exchange::BLOCK_SIZE;
use cartable_proto::wire::GROUP_BYTES;

/// Bytes the hasher reads from the copy per system call.
const READ_BUFFER: usize = 1 << 20;
/// Bytes the copy thread copies before telling the hasher.
pub(super) const COPY_STEP: u64 = 4 << 20;
/// The copy thread syncs to disk after this many bytes.
const SYNC_EVERY: u64 = 64 << 20;

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
    /// Removes the files of a blob marked damaged: `place` keeps a stored file
    /// of the right length, and this one must be replaced.
    pub(super) fn remove_if_damaged(&self, hash: &BlobHash) -> Result<(), StoreError> {
        if self.index().is_damaged(hash) {
            let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            for path in [self.layout.blob(hash), self.layout.outboard(hash)] {
                layout::remove_if_present(&path).map_err(io_at(&path))?;
            }
        }
        Ok(())
    }
}

/// Writes the temporary data and outboard files and returns the hash: the
/// kernel copies the source (`io::copy` between files is `copy_file_range` on
/// Linux), and the hasher reads the copy back as it lands, from the page cache.
fn copy_and_hash(
    source: &Path,
    size: u64,
    temp_data: &Path,
    temp_outboard: &Path,
) -> io::Result<BlobHash> {
    let input = open_regular(source)?;
    let (progress, landed) = mpsc::channel();
    let copy = move |data: &File| {
        let step = |input: &mut &File, mut data: &File, n| {
            Ok((io::copy(&mut input.take(n), &mut data)?, ()))
        };
        let announce = |copied, ()| progress.send(copied).map_err(|_| hashing_stopped());
        write_in_steps(&input, data, size, step, announce)
    };
    let landed = |file| {
        let landed = Landed {
            file,
            read: 0,
            copied: 0,
            progress: landed,
        };
        io::BufReader::with_capacity(READ_BUFFER, landed)
    };
    write_and_hash(size, temp_data, temp_outboard, copy, landed)?.ok_or_else(|| changed(source))
}

/// Writes the temporary data and outboard files of a blob of `size` bytes
/// and returns its hash, or `None` if the source was not `size` bytes long.
/// A second thread runs `write`, which fills the data file, syncing as it
/// goes, and hands each step to the hasher; this thread hashes what `landed`
/// (given the data file) reads, which ends where the writer ended. So
/// writing, hashing and the disk overlap.
pub(super) fn write_and_hash<R: Read>(
    size: u64,
    temp_data: &Path,
    temp_outboard: &Path,
    write: impl FnOnce(&File) -> io::Result<bool> + Send,
    landed: impl FnOnce(File) -> R,
) -> io::Result<Option<BlobHash>> {
    let data = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp_data)?;
    // Everything that can fail before the writing starts comes first: the
    // writing thread is only joined below.
    let outboard = File::create(temp_outboard)?;
    let reader = landed(data.try_clone()?);
    let (hashed, written) = std::thread::scope(|scope| {
        let data = &data;
        let writer = scope.spawn(move || write(data));
        // The reader is dropped once the hash is done or failed, so that a
        // writer waiting to hand it more stops.
        let hashed = write_outboard(reader, size, &outboard);
        (hashed, writer.join())
    });
    let written = written.map_err(|_| io::Error::other("the writing thread panicked"))?;
    match (hashed, written) {
        // The hasher's own failure (the outboard's disk full, a read error)
        // says why; the writer then only saw it stop.
        (Err(e), _) if e.kind() != io::ErrorKind::UnexpectedEof => Err(e),
        // The writer's says why the file stopped short; the hasher only saw
        // the end of what landed.
        (_, Err(e)) => Err(e),
        (Ok(hash), Ok(true)) => Ok(Some(hash)),
        (_, Ok(_)) => Ok(None),
    }
}

pub(super) fn hashing_stopped() -> io::Error {
    io::Error::other("hashing stopped")
}

/// Builds the outboard of the `size` bytes `data` gives into `outboard`,
/// synced, and returns their hash.
pub(super) fn write_outboard(data: impl Read, size: u64, outboard: &File) -> io::Result<BlobHash> {
    let mut writer = BufWriter::new(outboard);
    let hash = outboard_post_order(data, BaoTree::new(size, BLOCK_SIZE), &mut writer)?;
    writer.flush()?;
    drop(writer);
    outboard.sync_all()?;
    Ok(hash.into())
}

/// Opens `source` for reading only if it is still a regular file: the folder
/// was listed earlier, and a file swapped since for a symlink (to a secret
/// the node may read) or a FIFO (which would block the import, holding the
/// store's lock) is refused, not followed or waited on.
fn open_regular(source: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(source)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is no longer a regular file", source.display()),
        ));
    }
    Ok(file)
}

/// The writing thread: `size` bytes from `source` into `data` in steps of
/// at most [`COPY_STEP`], each made by `step` (which writes at most the bytes
/// asked and says how many, 0 at the source's end, and what to hand the
/// hasher) and handed to the hasher by `announce` (given the bytes written so
/// far) once written, syncing every [`SYNC_EVERY`] bytes so that the final
/// sync has little left to do. Returns whether the source was exactly `size`
/// bytes long.
pub(super) fn write_in_steps<R: Read, S>(
    mut source: R,
    data: &File,
    size: u64,
    mut step: impl FnMut(&mut R, &File, u64) -> io::Result<(u64, S)>,
    mut announce: impl FnMut(u64, S) -> io::Result<()>,
) -> io::Result<bool> {
    let (mut written, mut unsynced) = (0, 0);
    while written < size {
        let (n, landed) = step(&mut source, data, COPY_STEP.min(size - written))?;
        if n == 0 {
            return Ok(false);
        }
        written += n;
        unsynced += n;
        if unsynced >= SYNC_EVERY {
            data.sync_data()?;
            unsynced = 0;
        }
        announce(written, landed)?;
    }
    let longer = source.read(&mut [0u8; 1])? != 0;
    data.sync_all()?;
    Ok(!longer)
}

fn changed(source: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} changed while being imported", source.display()),
    )
}

/// Renames the temporary files into place unless the blob is already stored.
pub(super) fn place(
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

/// Reads the copy back as far as it has landed: waits for the copy thread to
/// announce more, and ends where the copy ended.
struct Landed {
    file: File,
    read: u64,
    copied: u64,
    progress: mpsc::Receiver<u64>,
}

impl Read for Landed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.read >= self.copied {
            match self.progress.recv() {
                Ok(copied) => self.copied = copied,
                Err(_) => return Ok(0),
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.copied - self.read).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.read)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::store) fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + i / 4099) as u8).collect()
    }

    /// Neither a temporary file nor a blob is left in the store.
    pub(in crate::store) fn holds_nothing(store: &Store) -> anyhow::Result<()> {
        assert_eq!(fs::read_dir(store.layout().tmp_dir())?.count(), 0);
        assert_eq!(fs::read_dir(store.layout().blobs_dir())?.count(), 0);
        Ok(())
    }

    pub(in crate::store) fn read_verified(
        store: &Store,
        hash: &BlobHash,
        size: u64,
    ) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        store.open_blob(hash, size)?.read_verified(0..size, |b| {
            out.extend_from_slice(&b);
            true
        })?;
        Ok(out)
    }

    #[test]
    fn an_imported_file_is_stored_whole_with_the_hash_of_its_bytes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path().join("store"))?;
        // Across copy steps, and empty, one group, and one byte over a group.
        for len in [0, 16 * 1024, 16 * 1024 + 1, 9 << 20] {
            let data = pattern(len);
            let source = dir.path().join("source");
            fs::write(&source, &data)?;
            let imported = import_file(store.layout(), &source, len as u64)?;
            assert_eq!(imported.hash, BlobHash::of(&data), "{len} bytes");
            assert_eq!(read_verified(&store, &imported.hash, len as u64)?, data);
        }
        assert_eq!(fs::read_dir(store.layout().tmp_dir())?.count(), 0);
        Ok(())
    }

    #[test]
    fn a_file_that_shrank_or_grew_since_it_was_listed_is_refused_and_leaves_nothing()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path().join("store"))?;
        let source = dir.path().join("source");
        fs::write(&source, pattern(5 << 20))?;
        for listed in [(6 << 20) as u64, (5 << 20) - 1, 1] {
            let err = import_file(store.layout(), &source, listed).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{listed}: {err}");
            assert!(err.to_string().contains("changed while being imported"));
        }
        holds_nothing(&store)
    }

    #[test]
    fn a_file_swapped_for_a_symlink_or_a_fifo_is_refused_not_followed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path().join("store"))?;
        let secret = dir.path().join("secret");
        fs::write(&secret, b"the node's key")?;
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&secret, &link)?;
        assert!(
            import_file(store.layout(), &link, 14).is_err(),
            "a symlink is not followed"
        );
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )?;
        let err = import_file(store.layout(), &fifo, 14).unwrap_err();
        assert!(
            err.to_string().contains("no longer a regular file"),
            "{err}"
        );
        holds_nothing(&store)
    }
}
