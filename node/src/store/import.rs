//! Importing one file as a blob: the kernel copies the bytes to a temporary file
//! while this process computes the BLAKE3 hash and the outboard of the copy as
//! it lands, so a 5 GiB video never sits in memory (one 1 MiB buffer does). The
//! temporary files are synced and renamed into place only when complete; a blob
//! already stored is not written twice.
//!
//! A blob received over the network is stored as it arrives instead
//! ([`super::incoming`]); both put their files in place with [`place`].

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;

use bao_tree::BaoTree;
use bao_tree::io::sync::outboard_post_order;
use cartable_proto::BlobHash;

use super::layout::{self, Layout};
use cartable_net::peer::exchange::BLOCK_SIZE;
use cartable_proto::wire::GROUP_BYTES;

/// Bytes the hasher reads from the copy per system call.
const READ_BUFFER: usize = 1 << 20;
/// Bytes the copy thread copies before telling the hasher and starting
/// their way to disk.
const COPY_STEP: u64 = 4 << 20;

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

/// A file copied into `tmp/` with its outboard, and hashed: removed when
/// dropped unless placed.
#[derive(Debug)]
pub(super) struct Copied {
    /// The blob's hash.
    pub hash: BlobHash,
    /// Its size.
    pub size: u64,
    data: std::path::PathBuf,
    outboard: std::path::PathBuf,
}

/// Copies the file at `source`, which is expected to be `size` bytes long,
/// into `tmp/`, building its outboard. Fails with `InvalidData` if the file
/// changed length while being read.
pub(super) fn copy_in(layout: &Layout, source: &Path, size: u64) -> io::Result<Copied> {
    let (data, outboard) = (layout.temp_path("data"), layout.temp_path("obao"));
    match copy_and_hash(source, size, &data, &outboard) {
        Ok(hash) => Ok(Copied {
            hash,
            size,
            data,
            outboard,
        }),
        Err(e) => {
            remove_temps(&data, &outboard);
            Err(e)
        }
    }
}

impl Copied {
    /// Renames the copy into place unless the blob is already stored
    /// ([`place`]).
    pub(super) fn place(self, layout: &Layout) -> io::Result<Imported> {
        place(layout, self.hash, self.size, &self.data, &self.outboard)
    }
}

impl Drop for Copied {
    fn drop(&mut self) {
        // Renamed into place, or a duplicate's leftovers.
        remove_temps(&self.data, &self.outboard);
    }
}

fn remove_temps(data: &Path, outboard: &Path) {
    let _ = layout::remove_if_present(data);
    let _ = layout::remove_if_present(outboard);
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

/// Writes the temporary data and outboard files and returns the hash. A second
/// thread copies the source in the kernel (`io::copy` between files is
/// `copy_file_range` on Linux) and sends it to disk as it goes; this thread hashes the
/// copy as it lands, from the page cache. The hash is thus of the bytes stored,
/// whatever the source did meanwhile, and copying, hashing and the disk overlap.
fn copy_and_hash(
    source: &Path,
    size: u64,
    temp_data: &Path,
    temp_outboard: &Path,
) -> io::Result<BlobHash> {
    let input = open_regular(source)?;
    let data = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(temp_data)?;
    // Everything that can fail before the copy starts comes first: the copy
    // thread is only joined below.
    let outboard = File::create(temp_outboard)?;
    let (progress, landed) = mpsc::channel();
    let copy_to = data.try_clone()?;
    let copier = std::thread::spawn(move || copy_in_steps(&input, &copy_to, size, &progress));
    let reader = io::BufReader::with_capacity(
        READ_BUFFER,
        Landed {
            file: &data,
            read: 0,
            copied: 0,
            progress: landed,
        },
    );
    let hashed = write_outboard(reader, size, &outboard);
    let copied = copier
        .join()
        .map_err(|_| io::Error::other("copy thread panicked"))?;
    let hash = match (hashed, copied) {
        // The hasher's own failure (the outboard's disk full, a read error)
        // says why; the copier then only saw it stop.
        (Err(e), _) if e.kind() != io::ErrorKind::UnexpectedEof => return Err(e),
        // The copier's says why the copy stopped short; the hasher only saw
        // the end of what landed.
        (_, Err(e)) => return Err(e),
        (Ok(hash), Ok(true)) => hash,
        (_, Ok(_)) => return Err(changed(source)),
    };
    Ok(hash)
}

/// Builds the outboard of the `size` bytes `data` gives into `outboard`,
/// synced, and returns their hash.
fn write_outboard(data: impl Read, size: u64, outboard: &File) -> io::Result<BlobHash> {
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

/// The copy thread: `size` bytes from `input` to `data` in [`COPY_STEP`]s,
/// each announced to the hasher once written and sent on its way to disk
/// ([`layout::write_behind`]), so the final sync has little left to do.
/// Returns whether the source was exactly `size` bytes long.
fn copy_in_steps(
    mut input: &File,
    mut data: &File,
    size: u64,
    progress: &mpsc::Sender<u64>,
) -> io::Result<bool> {
    let mut copied = 0;
    while copied < size {
        let n = io::copy(&mut input.take(COPY_STEP.min(size - copied)), &mut data)?;
        if n == 0 {
            return Ok(false);
        }
        layout::write_behind(data, copied, n);
        copied += n;
        if progress.send(copied).is_err() {
            return Err(io::Error::other("hashing stopped"));
        }
    }
    let longer = input.read(&mut [0u8; 1])? != 0;
    data.sync_all()?;
    Ok(!longer)
}

pub(super) fn changed(source: &Path) -> io::Error {
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

/// Reads the copy as far as it has landed: waits for the copy thread to
/// announce more, and ends where the copy ended.
struct Landed<'a> {
    file: &'a File,
    read: u64,
    copied: u64,
    progress: mpsc::Receiver<u64>,
}

impl Read for Landed<'_> {
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
mod tests {
    use super::*;

    fn import_file(layout: &Layout, source: &Path, size: u64) -> io::Result<Imported> {
        copy_in(layout, source, size)?.place(layout)
    }
    use crate::store::Store;
    use crate::store::tests::{pattern, read_all};

    /// Neither a temporary file nor a blob is left in the store.
    fn holds_nothing(store: &Store) -> anyhow::Result<()> {
        assert_eq!(fs::read_dir(store.layout().tmp_dir())?.count(), 0);
        assert_eq!(fs::read_dir(store.layout().blobs_dir())?.count(), 0);
        Ok(())
    }

    #[test]
    fn an_imported_file_is_stored_whole_with_the_hash_of_its_bytes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path().join("store"))?;
        // Across copy steps, and empty, one group, and one byte over a group.
        for len in [0, 16 * 1024, 16 * 1024 + 1, 9 << 20] {
            let data = pattern(len, 7);
            let source = dir.path().join("source");
            fs::write(&source, &data)?;
            let imported = import_file(store.layout(), &source, len as u64)?;
            assert_eq!(imported.hash, BlobHash::of(&data), "{len} bytes");
            assert_eq!(
                read_all(&store, &imported.hash, len as u64, 0..len as u64)?,
                data
            );
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
        fs::write(&source, pattern(5 << 20, 7))?;
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
