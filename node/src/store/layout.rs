//! Where a node's files live under its data folder, and the one way they are
//! written: to a temporary name in `tmp/`, synced, then renamed, so a crash leaves
//! either nothing or a complete file under its final name.
//!
//! ```text
//! DATA/blobs/<hex>        blob bytes, named by their BLAKE3 hash
//! DATA/blobs/<hex>.obao   its post-order outboard, for blobs over one chunk group
//! DATA/bundles/<hex>      a bundle's encoded manifest, named by the bundle id
//! DATA/tmp/               files being written; emptied when the store opens
//! DATA/partial/           blobs being fetched from peers, kept to resume
//! DATA/index/             sled: an index of the above, rebuilt from them when lost
//! ```

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use cartable_proto::{BlobHash, BundleId};

const OUTBOARD_SUFFIX: &str = ".obao";

/// The paths of one data folder.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`; nothing is created.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Creates the folders and empties `tmp/` of what a crash left there.
    pub fn prepare(&self) -> io::Result<()> {
        for dir in [self.blobs_dir(), self.bundles_dir(), self.tmp_dir()] {
            fs::create_dir_all(&dir)?;
        }
        for entry in fs::read_dir(self.tmp_dir())? {
            fs::remove_file(entry?.path())?;
        }
        Ok(())
    }

    /// The data folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes an unprivileged process may still write on the data folder's
    /// filesystem (`statvfs`: available blocks times the fragment size).
    pub fn free_bytes(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.root)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub(crate) fn bundles_dir(&self) -> PathBuf {
        self.root.join("bundles")
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    pub(crate) fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    pub(crate) fn blob(&self, hash: &BlobHash) -> PathBuf {
        self.blobs_dir().join(hash.to_hex())
    }

    pub(crate) fn outboard(&self, hash: &BlobHash) -> PathBuf {
        self.blobs_dir()
            .join(format!("{}{OUTBOARD_SUFFIX}", hash.to_hex()))
    }

    pub(crate) fn bundle(&self, id: &BundleId) -> PathBuf {
        self.bundles_dir().join(id.to_hex())
    }

    /// A fresh name in `tmp/`, unique within this process and across processes.
    pub(crate) fn temp_path(&self, what: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{}-{n}.{what}", std::process::id()))
    }

    /// The ids of the manifests in `bundles/`; other names are skipped.
    pub(crate) fn bundle_files(&self) -> io::Result<Vec<BundleId>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.bundles_dir())? {
            if let Some(id) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The hashes of the blob files in `blobs/`.
    pub(crate) fn blob_files(&self) -> io::Result<Vec<BlobHash>> {
        let mut hashes = Vec::new();
        for entry in fs::read_dir(self.blobs_dir())? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let name = name.strip_suffix(OUTBOARD_SUFFIX).unwrap_or(name);
            if let Ok(hash) = name.parse() {
                hashes.push(hash);
            }
        }
        hashes.sort();
        hashes.dedup();
        Ok(hashes)
    }
}

/// Syncs `file`, then renames it from `temp` to `dest`.
pub(crate) fn commit(file: &File, temp: &Path, dest: &Path) -> io::Result<()> {
    file.sync_all()?;
    fs::rename(temp, dest)
}

/// Bytes of a file being written that may wait for the disk at once: a
/// bound on the memory one import or upload keeps dirty (a 50 GiB video
/// written faster than the disk takes it would otherwise fill the kernel's
/// dirty limit, slowing every writer on the machine).
const WRITE_BEHIND: u64 = 64 << 20;

/// Called once `len` bytes of `file` were written at `at`, in order: asks the
/// kernel to start writing them to disk without waiting, then waits for the
/// same stretch [`WRITE_BEHIND`] bytes back to be on disk. A large file
/// written this way is mostly on disk when its final sync comes, instead of
/// all of it waiting for that sync, and the disk works while the next bytes
/// are written (an import of 1 GiB: 0.65 s against 1.0 s, see
/// benches/README.md). Blocking. Only a hint: a failure to write shows at
/// the final sync, which is checked.
pub(crate) fn write_behind(file: &File, at: u64, len: u64) {
    use libc::{SYNC_FILE_RANGE_WAIT_AFTER, SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE};
    sync_file_range(file, at, len, SYNC_FILE_RANGE_WRITE);
    if let Some(back) = at.checked_sub(WRITE_BEHIND) {
        let all = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
        sync_file_range(file, back, len, all);
    }
}

#[allow(unsafe_code)]
fn sync_file_range(file: &File, at: u64, len: u64, flags: libc::c_uint) {
    use std::os::fd::AsRawFd;
    let (Ok(at), Ok(len)) = (i64::try_from(at), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range reads no memory of ours; the descriptor is
    // open for as long as `file` is borrowed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), at, len, flags);
    }
}

/// Syncs a folder, so that the renames into it survive a power cut.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dest` through a synced temporary file.
pub(crate) fn write_atomic(layout: &Layout, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = layout.temp_path("write");
    let result = (|| {
        let file = File::create(&temp)?;
        io::Write::write_all(&mut &file, bytes)?;
        commit(&file, &temp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Removes `path`; a file already gone is not an error.
pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What identifies the version of a file: a repair replaces a blob's file by a
/// new one, with its own modification time.
pub(crate) type Stamp = Option<(u64, Option<SystemTime>)>;

/// The [`Stamp`] of the file at `path`; `None` if there is none.
pub(crate) fn stamp(path: &Path) -> Stamp {
    let meta = fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()))
}
