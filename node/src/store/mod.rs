//! The blob store of a node: blob files and their outboards named by hash, bundle
//! manifests named by id, and a sled index over them (see [`layout`]).
//!
//! The files are the truth: opening the store reconciles the index with the
//! bundle manifests on disk, so a crash between writing files and indexing them,
//! or a lost index folder, loses nothing. Writes (add, remove, check, and the
//! scrub's removal of a damaged blob) are serialised by one lock; reads go on
//! beside them. The background scrub ([`scrub`]) turns a blob rotten on disk
//! into a missing one that a fetch from a replica restores.

mod encode;
mod hot;
mod import;
mod incoming;
mod index;
pub mod layout;
mod maintenance;
mod outboard_builder;
mod partial;
mod partial_space;
mod scrub;
mod small;
pub mod verify;

#[cfg(test)]
mod cached_tests;
#[cfg(test)]
mod maintenance_tests;
#[cfg(test)]
mod partial_tests;
#[cfg(test)]
mod scrub_tests;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use cartable_net::folder::{Folder, FolderError, WalkError};
use cartable_proto::{BlobHash, BundleId, Manifest, ManifestError};

pub use encode::PiecePool;
pub use hot::{HOT_BYTES_MAX, HOT_FILE_MAX, HOT_PIECE};
pub use import::disk_bytes;
pub use incoming::{Incoming, ReceiveError, Received};
pub use index::BundleSummary;
pub use layout::Layout;
pub use maintenance::{CheckReport, Problem};
pub use partial::PartialBlob;
pub use partial_space::{MAX_PARTIAL_BLOBS, PartialUsage};
pub use scrub::{ScrubReport, ScrubSettings, scrub_forever};
pub use verify::{BlobFiles, VerifyError, io_shows_damage};

use hot::{Admit, Piece};
use index::Index;

/// What went wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder to add breaks a rule; nothing was imported.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// The files cannot form a manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No such bundle here.
    #[error("no bundle {0} here")]
    UnknownBundle(BundleId),
    /// A blob the new bundle needs went away while it was being fetched (the
    /// only bundle holding it was removed): the bundle is not recorded.
    #[error("blob {0} was removed while the bundle was fetched; fetch it again")]
    BlobGone(BlobHash),
    /// A file of the data folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The index failed; a second process holding the data folder shows up here.
    #[error("index at {path}: {source} (is another cartable-node using this data folder?)")]
    Index {
        /// The index folder.
        path: PathBuf,
        /// The failure.
        source: sled::Error,
    },
}

impl From<FolderError> for StoreError {
    fn from(e: FolderError) -> Self {
        match e {
            FolderError::Walk(e) => Self::Walk(e),
            FolderError::Manifest(e) => Self::Manifest(e),
        }
    }
}

/// A folder whose files are all copied in, its bundle not yet recorded.
struct CopiedFolder {
    manifest: Manifest,
    /// Each file and what its copy found.
    sources: Vec<(PathBuf, import::Imported)>,
    new_bytes: u64,
}

/// The result of adding a folder.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AddReport {
    /// What the index now records.
    #[serde(flatten)]
    pub summary: BundleSummary,
    /// Bytes written to the store (the rest was already there).
    pub new_bytes: u64,
}

/// What a failed read of a stored blob means, from [`Store::read_failed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFault {
    /// Its bytes or files are wrong or gone: marked damaged, repair pending.
    Damaged,
    /// The node could not read it now (descriptors, memory, a timeout):
    /// nothing was marked; a later request may succeed.
    Transient,
}

/// The memory of verified bytes read lately, as the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Memory charged, bookkeeping included.
    pub kept_bytes: u64,
    /// Files and pieces served from memory, since the start.
    pub reads_from_memory: u64,
    /// Files and pieces read from disk and verified to serve them.
    pub reads_from_disk: u64,
}

/// A node's blob store.
#[derive(Debug)]
pub struct Store {
    layout: Layout,
    /// Asked through [`Store::index`] only.
    sled: Index,
    writes: Mutex<()>,
    /// Asked through [`Store::manifests`] only.
    read_manifests: RwLock<HashMap<BundleId, Arc<Manifest>>>,
    /// Partial blobs open now, never trimmed.
    open_partials: partial_space::OpenPartials,
    /// Verified bytes read lately: small files, pieces of larger ones.
    hot: hot::HotFiles,
    /// Files and pieces read from disk to serve them, since the start.
    reads_from_disk: AtomicU64,
}

impl Store {
    /// Opens the store in `dir`, creating it if needed, and reconciles the index
    /// with the manifests on disk.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let layout = Layout::new(dir);
        layout.prepare().map_err(io_at(layout.root()))?;
        let index_dir = layout.index_dir();
        let index = Index::open(&index_dir).map_err(|source| StoreError::Index {
            path: index_dir,
            source,
        })?;
        let store = Self {
            layout,
            sled: index,
            writes: Mutex::new(()),
            read_manifests: RwLock::new(HashMap::new()),
            open_partials: Default::default(),
            hot: hot::HotFiles::new(hot::HOT_BYTES_MAX),
            reads_from_disk: AtomicU64::new(0),
        };
        store.reconcile()?;
        Ok(store)
    }

    /// The same store, keeping at most `max_bytes` of verified bytes read
    /// lately in memory (by default [`HOT_BYTES_MAX`]; 0: none).
    pub fn keeping_in_memory(self, max_bytes: usize) -> Self {
        Self {
            hot: hot::HotFiles::new(max_bytes),
            ..self
        }
    }

    /// What the memory of verified bytes holds and saves.
    pub fn memory_use(&self) -> MemoryUse {
        let (kept_bytes, reads_from_memory) = self.hot.usage();
        MemoryUse {
            kept_bytes: kept_bytes as u64,
            reads_from_memory,
            reads_from_disk: self.reads_from_disk.load(Ordering::Relaxed),
        }
    }

    /// The index. sled's reads and writes share one process-wide lock, and a
    /// writer waiting on it makes new readers queue behind whoever holds it.
    fn index(&self) -> &Index {
        crate::background::debug_assert_may_hold("sled's lock");
        &self.sled
    }

    /// The manifests read since the start, which every browser's request reads.
    fn manifests(&self) -> &RwLock<HashMap<BundleId, Arc<Manifest>>> {
        crate::background::debug_assert_may_hold("the manifests' lock");
        &self.read_manifests
    }

    /// The data folder.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Imports every file of `dir` as one bundle. Refuses the whole folder, before
    /// importing anything, if one entry breaks the rules. Adding a folder twice
    /// gives the same id and writes nothing new.
    ///
    /// A large lesson takes minutes to copy, so each file is copied and hashed
    /// without the store's write lock, which is taken only to rename it into
    /// place: copies, uploads and browsers' fetches through this node commit
    /// meanwhile. Under the lock, each blob is then checked still whole before
    /// the bundle is recorded.
    pub fn add_folder(&self, dir: &Path) -> Result<AddReport, StoreError> {
        let copied = self.copy_folder(Folder::read(dir)?)?;
        self.record_folder(copied)
    }

    /// [`Store::add_folder`]'s first half: each file copied in, without the
    /// lock but for its rename.
    fn copy_folder(&self, folder: Folder) -> Result<CopiedFolder, StoreError> {
        let mut new_bytes = 0;
        let mut sources = Vec::with_capacity(folder.files().len());
        let manifest = folder.manifest(|f| {
            let copied =
                import::copy_in(&self.layout, &f.source, f.size).map_err(io_at(&f.source))?;
            let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            let imported = self.place_copied(copied, &f.source)?;
            if imported.new {
                new_bytes += imported.size;
            }
            sources.push((f.source.clone(), imported));
            Ok::<_, StoreError>(imported.hash)
        })?;
        Ok(CopiedFolder {
            manifest,
            sources,
            new_bytes,
        })
    }

    /// [`Store::add_folder`]'s second half, under the lock: each blob checked
    /// still whole, then the bundle recorded.
    fn record_folder(&self, copied: CopiedFolder) -> Result<AddReport, StoreError> {
        let CopiedFolder {
            manifest,
            sources,
            mut new_bytes,
        } = copied;
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        for (source, imported) in &sources {
            // Found stored, and so not placed, then removed with the bundle
            // that held it, or marked damaged since: copied again, now that
            // nothing else can remove it (rare, so under the lock).
            if self.has_blob_file(&imported.hash, imported.size) {
                continue;
            }
            let copied =
                import::copy_in(&self.layout, source, imported.size).map_err(io_at(source))?;
            if copied.hash != imported.hash {
                return Err(io_at(source)(import::changed(source)));
            }
            self.place_copied(copied, source)?;
            if !imported.new {
                new_bytes += imported.size;
            }
        }
        layout::sync_dir(&self.layout.blobs_dir()).map_err(io_at(&self.layout.blobs_dir()))?;
        let id = manifest.id();
        let path = self.layout.bundle(&id);
        if !path.exists() {
            layout::write_atomic(&self.layout, &path, &manifest.encode()).map_err(io_at(&path))?;
            layout::sync_dir(&self.layout.bundles_dir()).map_err(io_at(&path))?;
        }
        let summary = self.index_bundle(id, &manifest)?;
        self.manifests()
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::new(manifest));
        Ok(AddReport { summary, new_bytes })
    }

    /// Puts a copy in place unless the blob is stored whole; the caller holds
    /// the write lock.
    fn place_copied(
        &self,
        copied: import::Copied,
        source: &Path,
    ) -> Result<import::Imported, StoreError> {
        if self.has_blob_file(&copied.hash, copied.size) {
            return Ok(import::Imported {
                hash: copied.hash,
                size: copied.size,
                new: false,
            });
        }
        // What is under the name is damaged or incomplete, and `place` keeps
        // a stored file of the right length.
        for path in [
            self.layout.blob(&copied.hash),
            self.layout.outboard(&copied.hash),
        ] {
            layout::remove_if_present(&path).map_err(io_at(&path))?;
        }
        let imported = copied.place(&self.layout).map_err(io_at(source))?;
        // Written afresh from the source, perhaps where the scrub had removed
        // a damaged copy.
        self.index()
            .clear_damaged(&imported.hash)
            .map_err(|e| self.index_err(e))?;
        Ok(imported)
    }

    /// Every bundle held, by id.
    pub fn bundles(&self) -> Result<Vec<BundleSummary>, StoreError> {
        self.index().bundles().map_err(|e| self.index_err(e))
    }

    /// Removes a bundle and frees the blobs no other bundle uses.
    pub fn remove(&self, id: &BundleId) -> Result<BundleSummary, StoreError> {
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let summary = self
            .bundles()?
            .into_iter()
            .find(|b| b.id == *id)
            .ok_or(StoreError::UnknownBundle(*id))?;
        let manifest = self.manifest(id)?.ok_or(StoreError::UnknownBundle(*id))?;
        // Deleting the manifest commits the removal; the rest is cleanup that
        // `reconcile` finishes if a crash interrupts it.
        let path = self.layout.bundle(id);
        layout::remove_if_present(&path).map_err(io_at(&path))?;
        layout::sync_dir(&self.layout.bundles_dir()).map_err(io_at(&path))?;
        let freed = self
            .index()
            .remove_bundle(id, &manifest)
            .map_err(|e| self.index_err(e));
        // After the index (see `keep_manifest`), and whether it failed or
        // not: the removal is committed.
        self.manifests()
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.delete_blobs(&freed?)?;
        Ok(summary)
    }

    /// The manifest of a bundle held here, verified against its id when loaded.
    pub fn manifest(&self, id: &BundleId) -> Result<Option<Arc<Manifest>>, StoreError> {
        if let Some(m) = self.manifest_in_memory(id) {
            return Ok(Some(m));
        }
        if !self.holds(id)? {
            return Ok(None);
        }
        let manifest = Arc::new(self.read_manifest(id)?);
        self.keep_manifest(id, &manifest)?;
        Ok(Some(manifest))
    }

    /// Keeps a manifest just read in memory, unless its bundle was removed
    /// since: a reader that read the file just before a removal may come to
    /// insert after the removal cleared the map. The removal clears it after
    /// the index, so such a reader finds the index without the bundle and
    /// takes its insert back.
    fn keep_manifest(&self, id: &BundleId, manifest: &Arc<Manifest>) -> Result<(), StoreError> {
        let manifests = || self.manifests().write().unwrap_or_else(|e| e.into_inner());
        manifests().insert(*id, manifest.clone());
        let held = self.holds(id);
        if !matches!(held, Ok(true)) {
            manifests().remove(id);
        }
        held.map(drop)
    }

    /// A bundle's manifest if it was read since the start: no disk.
    pub fn manifest_in_memory(&self, id: &BundleId) -> Option<Arc<Manifest>> {
        let manifests = self.manifests().read().unwrap_or_else(|e| e.into_inner());
        manifests.get(id).cloned()
    }

    /// Whether the index records `bundle` as held, from the index alone.
    pub fn holds(&self, bundle: &BundleId) -> Result<bool, StoreError> {
        self.index()
            .has_bundle(bundle)
            .map_err(|e| self.index_err(e))
    }

    /// Opens a stored blob for a verified read.
    pub fn open_blob(&self, hash: &BlobHash, size: u64) -> io::Result<BlobFiles> {
        self.open_blob_with(hash, size, open_to_read)
    }

    /// [`Store::open_blob`] if that cannot wait on the disk: every part of
    /// the files' paths in the kernel's lookup cache (`RESOLVE_CACHED`).
    /// `None`, with nothing judged, when it would wait or fails: open it on a
    /// blocking thread then, where a failure is judged. A thread that serves
    /// many browsers' connections must not stop them all for a disk's seek.
    pub fn open_blob_cached(&self, hash: &BlobHash, size: u64) -> Option<BlobFiles> {
        self.open_blob_with(hash, size, open_cached).ok()
    }

    fn open_blob_with(
        &self,
        hash: &BlobHash,
        size: u64,
        open: fn(&Path) -> io::Result<File>,
    ) -> io::Result<BlobFiles> {
        let data = open(&self.layout.blob(hash))?;
        let outboard = if size > cartable_proto::wire::GROUP_BYTES {
            Some(open(&self.layout.outboard(hash))?)
        } else {
            None
        };
        Ok(BlobFiles {
            hash: *hash,
            size,
            data,
            outboard,
        })
    }

    /// The whole of a stored blob of at most [`HOT_FILE_MAX`] bytes, verified:
    /// from memory when it was read lately ([`Store::hot_file`]), else read
    /// from disk (blocking) and kept.
    pub fn read_small(&self, hash: &BlobHash, size: u64) -> Result<Bytes, VerifyError> {
        if let Some(bytes) = self.hot_file(hash, size) {
            return Ok(bytes);
        }
        let files = self.open_blob(hash, size).map_err(VerifyError::Io)?;
        Ok(self.read_from_disk(hash, size, read_joined(&files, 0..size)?))
    }

    /// [`Store::read_small`] for a blob of one chunk group, if that cannot
    /// wait on the disk: from memory, or from the kernel's caches. `None` when
    /// it would wait: read it on a blocking thread then.
    pub fn read_small_cached(
        &self,
        hash: &BlobHash,
        size: u64,
    ) -> Option<Result<Bytes, VerifyError>> {
        if let Some(bytes) = self.hot_file(hash, size) {
            return Some(Ok(bytes));
        }
        let read = self.open_blob_cached(hash, size)?.read_small_cached()?;
        Some(read.map(|bytes| self.read_from_disk(hash, size, bytes)))
    }

    /// A whole blob just read and verified: counted and kept in memory.
    fn read_from_disk(&self, hash: &BlobHash, size: u64, bytes: Bytes) -> Bytes {
        self.reads_from_disk.fetch_add(1, Ordering::Relaxed);
        let whole = piece_of(hash, size, &(0..size));
        self.hot.keep(whole, bytes.clone(), Admit::Now);
        bytes
    }

    /// The whole of a blob of `size` bytes, when it was read lately: no disk,
    /// no hash. Only a blob of one piece is ever kept whole; a larger blob's
    /// first piece is not looked up (nor counted as read).
    pub fn hot_file(&self, hash: &BlobHash, size: u64) -> Option<Bytes> {
        (size <= HOT_PIECE)
            .then(|| self.hot.get(&piece_of(hash, size, &(0..size))))
            .flatten()
    }

    /// Bytes `range` of an open blob, verified, the range lying within one
    /// aligned [`HOT_PIECE`]: from memory when its piece was kept
    /// ([`Store::hot_piece`]), else read from disk (blocking); a whole piece
    /// read again lately is kept.
    pub fn read_piece(&self, files: &BlobFiles, range: Range<u64>) -> Result<Bytes, VerifyError> {
        if let Some(bytes) = self.hot_piece(&files.hash, files.size, &range) {
            return Ok(bytes);
        }
        let bytes = read_joined(files, range.clone())?;
        self.reads_from_disk.fetch_add(1, Ordering::Relaxed);
        let piece = piece_of(&files.hash, files.size, &range);
        if range == (piece.start..(piece.start + HOT_PIECE).min(files.size)) {
            self.hot.keep(piece, bytes.clone(), Admit::WhenReadAgain);
        }
        Ok(bytes)
    }

    /// Bytes `range` of the blob `hash` of `size` bytes, within one aligned
    /// [`HOT_PIECE`], when its piece was kept: no disk, no hash.
    pub fn hot_piece(&self, hash: &BlobHash, size: u64, range: &Range<u64>) -> Option<Bytes> {
        let piece = piece_of(hash, size, range);
        let bytes = self.hot.get(&piece)?;
        let (from, to) = (range.start - piece.start, range.end - piece.start);
        (to <= bytes.len() as u64).then(|| bytes.slice(from as usize..to as usize))
    }

    /// The size of a blob held whole and not marked damaged.
    pub fn blob_size(&self, hash: &BlobHash) -> Option<u64> {
        if self.index().is_damaged(hash) {
            return None;
        }
        self.index().blob_size(hash)
    }

    /// Records that a blob failed verification, so it is not trusted until
    /// repaired. Callers holding an error use [`Store::read_failed`], which
    /// marks only what shows damage.
    pub fn mark_damaged(&self, hash: &BlobHash, why: &str) {
        tracing::error!(blob = %hash, reason = why, "blob damaged on disk, marked for repair");
        if let Err(e) = self.index().mark_damaged(hash, why) {
            tracing::error!(blob = %hash, error = %e, "could not record damaged blob");
        }
    }

    /// Judges a failed open or verified read of a stored blob: the blob is
    /// marked damaged only when the failure shows its files wrong or gone
    /// ([`VerifyError::shows_damage`]); a node short of descriptors, memory or
    /// time marks nothing and answers "try again later".
    pub fn read_failed(&self, hash: &BlobHash, error: &VerifyError) -> ReadFault {
        if !error.shows_damage() {
            return transient(hash, error);
        }
        // Judged under the lock removals take, so that a blob evicted or
        // released between a reader's lookup and its open is found gone, not
        // damaged. Readers run on the async workers: while a long import
        // holds the lock, nothing is marked (a later read or the scrub will).
        crate::background::debug_assert_may_hold("the store's write lock");
        match self.writes.try_lock() {
            Ok(_writing) => self.read_failed_holding_writes(hash, error),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let _writing = p.into_inner();
                self.read_failed_holding_writes(hash, error)
            }
            Err(std::sync::TryLockError::WouldBlock) => transient(hash, error),
        }
    }

    /// [`Store::read_failed`] for a caller that holds the write lock.
    fn read_failed_holding_writes(&self, hash: &BlobHash, error: &VerifyError) -> ReadFault {
        let Some(size) = self.index().blob_size(hash) else {
            return transient(hash, error);
        };
        // A reader told another size than the one indexed was misled (by a
        // manifest that lies); the blob was not shown wrong.
        if matches!(error, VerifyError::WrongLength { expected, .. } if *expected != size) {
            return transient(hash, error);
        }
        let missing = matches!(error, VerifyError::Io(e) if e.kind() == io::ErrorKind::NotFound);
        // Missing then, back now: fetched through again since.
        if !error.shows_damage() || (missing && self.open_blob(hash, size).is_ok()) {
            return transient(hash, error);
        }
        self.mark_damaged(hash, &error.to_string());
        ReadFault::Damaged
    }

    /// Whether a blob is marked damaged.
    pub fn is_damaged(&self, hash: &BlobHash) -> bool {
        self.index().is_damaged(hash)
    }

    /// Makes the index's last changes durable, as a stop does. Blob files,
    /// manifests and partial-copy records are synced as they are written.
    pub fn flush(&self) -> Result<(), StoreError> {
        let path = self.layout.index_dir();
        self.index()
            .flush()
            .map_err(|source| StoreError::Index { path, source })
    }

    fn read_manifest(&self, id: &BundleId) -> Result<Manifest, StoreError> {
        let path = self.layout.bundle(id);
        let bytes = fs::read(&path).map_err(io_at(&path))?;
        let invalid = |why: String| StoreError::Io {
            path: path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, why),
        };
        if BundleId::of_manifest(&bytes) != *id {
            return Err(invalid("manifest does not match its bundle id".into()));
        }
        Manifest::decode(&bytes).map_err(|e| invalid(format!("manifest: {e}")))
    }

    fn index_bundle(&self, id: BundleId, manifest: &Manifest) -> Result<BundleSummary, StoreError> {
        let path = self.layout.bundle(&id);
        let mtime = fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(io_at(&path))?;
        let summary = BundleSummary {
            id,
            files: manifest.entries().len() as u64,
            bytes: manifest.total_size(),
            added_unix: mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        };
        self.index()
            .insert_bundle(manifest, summary)
            .map_err(|e| self.index_err(e))?;
        Ok(summary)
    }

    fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<(), StoreError> {
        for h in hashes {
            self.hot.forget(h, self.index().blob_size(h));
            for path in [self.layout.blob(h), self.layout.outboard(h)] {
                layout::remove_if_present(&path).map_err(io_at(&path))?;
            }
        }
        self.index()
            .forget_blobs(hashes)
            .map_err(|e| self.index_err(e))
    }

    fn index_err(&self, source: sled::Error) -> StoreError {
        StoreError::Index {
            path: self.layout.index_dir(),
            source,
        }
    }
}

/// A read that failed for a reason that is not the blob's: nothing marked.
fn transient(hash: &BlobHash, error: &VerifyError) -> ReadFault {
    tracing::warn!(blob = %hash, error = %error, "cannot read blob now; not marked damaged");
    ReadFault::Transient
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The aligned [`HOT_PIECE`] of a blob that `range` starts in.
fn piece_of(hash: &BlobHash, size: u64, range: &Range<u64>) -> Piece {
    Piece {
        hash: *hash,
        size,
        start: range.start - range.start % HOT_PIECE,
    }
}

/// Opens a file of the store to read it without access times (`O_NOATIME`):
/// under `relatime` a read would write the inode back, a journal transaction
/// that may wait on the disk, on whatever thread reads (a browser's, or an
/// idle one the kernel may leave holding the journal). The node owns its
/// files; one it does not (`EPERM`) is opened as usual.
fn open_to_read(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let no_atime = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path);
    match no_atime {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        opened => opened,
    }
}

/// [`open_to_read`] only if every part of `path` is in the kernel's lookup
/// cache (`RESOLVE_CACHED`); `WouldBlock` if not.
fn open_cached(path: &Path) -> io::Result<File> {
    use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat2};
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOATIME;
    Ok(openat2(CWD, path, flags, Mode::empty(), ResolveFlags::CACHED)?.into())
}

/// Bytes `range` of `files`, verified, in one buffer: a range within one
/// verified block comes as one piece, without a copy.
fn read_joined(files: &BlobFiles, range: Range<u64>) -> Result<Bytes, VerifyError> {
    let mut pieces = Vec::new();
    files.read_verified(range, |piece| {
        pieces.push(piece);
        true
    })?;
    Ok(match <[Bytes; 1]>::try_from(pieces) {
        Ok([one]) => one,
        Err(pieces) => pieces.concat().into(),
    })
}
