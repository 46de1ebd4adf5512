//! Blobs being fetched from peers: sparse data and outboard files in
//! `DATA/partial/`, and a record of which 16 KiB groups have been verified, so
//! an interrupted fetch resumes group by group from its last record (about
//! 64 MiB or 2 s of verified groups back). Only a complete blob is moved
//! under its final name in `blobs/`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{OutboardMut, WriteAt};
use bao_tree::{BaoTree, TreeNode};
use cartable_proto::{BlobHash, BundleId, Manifest};

use super::partial_space::OpenMark;
use super::verify::VerifyError;
use super::{BlobFiles, BundleSummary, Store, StoreError, io_at, layout};
use cartable_net::peer::exchange::BLOCK_SIZE;
use cartable_proto::wire::GROUP_BYTES;

/// A record of the groups a [`PartialBlob`] had verified, taken under the
/// lock its fetch's units share and written outside it: the syncs it waits
/// for (64 MiB of writeback) do not hold up the blob's other units.
#[derive(Debug)]
pub struct Checkpoint {
    data: File,
    outboard: File,
    done: Vec<u8>,
    paths: [PathBuf; 3],
    ids: [FileId; 2],
}

impl Checkpoint {
    /// Makes what was written before it was taken durable, then records it:
    /// a crash never leaves a group marked done whose bytes were lost, and a
    /// record is written only beside the files it describes.
    pub fn write(self, store: &Store) -> io::Result<()> {
        self.sync()?;
        // Under the lock commits take: a record never lands beside files a
        // commit has just moved away (a fetch-through's late unit).
        let _writing = store.writes.lock().unwrap_or_else(|e| e.into_inner());
        self.record(store)
    }

    fn sync(&self) -> io::Result<()> {
        self.data.sync_data()?;
        self.outboard.sync_data()
    }

    /// Writes the record beside the files it describes, once synced; the
    /// caller holds the store's write lock, or is alone. Two records of one
    /// blob may be written in either order: each keeps the groups the record
    /// already there marks (synced before it was written, and about these
    /// very files), so an older one never takes back a newer one's groups,
    /// the blob's completeness included.
    fn record(&self, store: &Store) -> io::Result<()> {
        if !files_in_place(&self.paths, self.ids) {
            return Err(replaced());
        }
        let mut done = self.done.clone();
        if let Some(recorded) = recorded_groups(&self.paths[2], done.len()) {
            for (d, r) in done.iter_mut().zip(recorded) {
                *d |= r;
            }
        }
        layout::write_atomic(&store.layout, &self.paths[2], &done)
    }
}

/// A blob being fetched.
#[derive(Debug)]
pub struct PartialBlob {
    hash: BlobHash,
    size: u64,
    data: File,
    outboard: PostOrderOutboard<File>,
    /// One byte per chunk group: 1 once written and verified.
    done: Vec<u8>,
    paths: [PathBuf; 3],
    /// The data and outboard files this holder opened: another fetch may
    /// commit them (moving them away) and a third open new ones at the same
    /// paths, which this holder's record does not describe.
    ids: [FileId; 2],
    /// Keeps the files from being trimmed while open.
    _open: OpenMark,
    /// Verified bytes written since the last checkpoint, and when that was.
    unrecorded: u64,
    recorded_at: Instant,
}

/// Unrecorded verified bytes past which a unit's end checkpoints.
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Time past which it does, whatever the bytes (a slow peer).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

impl PartialBlob {
    /// The chunk groups still to fetch, as ranges.
    pub fn missing(&self) -> Vec<Range<u64>> {
        missing_ranges(&self.done)
    }

    /// Stores a verified hash pair.
    pub fn save_pair(
        &mut self,
        node: TreeNode,
        pair: &(blake3::Hash, blake3::Hash),
    ) -> io::Result<()> {
        self.outboard.save(node, pair)
    }

    /// Stores a verified group's bytes.
    pub fn write_group(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.data.write_all_at(offset, bytes)?;
        if let Some(d) = self.done.get_mut((offset / GROUP_BYTES) as usize) {
            *d = 1;
        }
        self.unrecorded += bytes.len() as u64;
        Ok(())
    }

    /// A [`Checkpoint`] once [`CHECKPOINT_BYTES`] or [`CHECKPOINT_EVERY`] of
    /// verified groups are unrecorded. A crash then costs at most that much
    /// fetched again, where a checkpoint at the end of every 4 MiB unit cost
    /// two syncs, a write, a third sync and a rename each (about 750 syncs a
    /// GiB). The commit checkpoints last, whatever is due; a blob whose last
    /// group just landed is recorded at once, as its commit may not follow (a
    /// fetch-through whose browser went away), and
    /// [`Store::commit_if_complete`] finds it complete.
    pub fn checkpoint_if_due(&mut self) -> io::Result<Option<Checkpoint>> {
        let due = self.unrecorded >= CHECKPOINT_BYTES
            || self.recorded_at.elapsed() >= CHECKPOINT_EVERY
            || (self.unrecorded > 0 && self.is_complete());
        due.then(|| self.take_checkpoint()).transpose()
    }

    /// Makes what was written durable, then records it as done; the caller
    /// holds the store's write lock (a commit), or is alone.
    pub fn checkpoint(&mut self, store: &Store) -> io::Result<()> {
        let checkpoint = self.take_checkpoint()?;
        checkpoint.sync()?;
        checkpoint.record(store)
    }

    /// The groups verified so far, to record once the files are synced.
    pub(super) fn take_checkpoint(&mut self) -> io::Result<Checkpoint> {
        let checkpoint = Checkpoint {
            data: self.data.try_clone()?,
            outboard: self.outboard.data.try_clone()?,
            done: self.done.clone(),
            paths: self.paths.clone(),
            ids: self.ids,
        };
        (self.unrecorded, self.recorded_at) = (0, Instant::now());
        Ok(checkpoint)
    }

    /// Whether the files at this blob's partial paths are the ones this holder
    /// opened.
    fn files_in_place(&self) -> bool {
        files_in_place(&self.paths, self.ids)
    }

    /// Reads the whole blob back from this holder's files, verified.
    fn verify_all(&self) -> Result<(), VerifyError> {
        let files = BlobFiles {
            hash: self.hash,
            size: self.size,
            data: self.data.try_clone()?,
            outboard: if self.size > GROUP_BYTES {
                Some(self.outboard.data.try_clone()?)
            } else {
                None
            },
        };
        files.check_length()?;
        files.read_verified(0..self.size, |_| true)
    }

    /// Whether any group of `groups` is still missing.
    pub fn missing_in(&self, groups: &Range<u64>) -> bool {
        let end = (groups.end as usize).min(self.done.len());
        self.done
            .get(groups.start as usize..end)
            .is_none_or(|part| part.contains(&0))
    }

    /// Whether every group is done.
    pub fn is_complete(&self) -> bool {
        self.done.iter().all(|d| *d == 1)
    }

    /// The blob's hash.
    pub fn hash(&self) -> BlobHash {
        self.hash
    }

    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The groups not done, as ranges.
fn missing_ranges(done: &[u8]) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for (g, _) in done.iter().enumerate().filter(|(_, d)| **d == 0) {
        let g = g as u64;
        match out.last_mut() {
            Some(last) if last.end == g => last.end = g + 1,
            _ => out.push(g..g + 1),
        }
    }
    out
}

/// Deletes a blob's partial files and their record.
pub(super) fn remove_files(paths: &[PathBuf]) -> Result<(), StoreError> {
    for path in paths {
        layout::remove_if_present(path).map_err(io_at(path))?;
    }
    Ok(())
}

/// Which file a path or a handle is: device and inode.
type FileId = (u64, u64);

/// Whether the files at `paths` are the ones `ids` name.
fn files_in_place(paths: &[PathBuf; 3], ids: [FileId; 2]) -> bool {
    paths[..2]
        .iter()
        .zip(ids)
        .all(|(path, id)| fs::metadata(path).is_ok_and(|m| file_id(&m) == id))
}

fn file_id(meta: &fs::Metadata) -> FileId {
    (meta.dev(), meta.ino())
}

/// Partial files found to be another fetch's, or gone.
fn replaced() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "the partial files were committed or replaced by another fetch",
    )
}

/// Chunk groups in a blob of `size` bytes (an empty blob has one, empty).
fn group_count(size: u64) -> usize {
    size.div_ceil(GROUP_BYTES).max(1) as usize
}

/// The record of verified groups at `path`, or none done when it is missing or
/// does not fit a blob of `size`.
fn done_groups(path: &Path, size: u64) -> Vec<u8> {
    let groups = group_count(size);
    recorded_groups(path, groups).unwrap_or_else(|| vec![0; groups])
}

/// The record at `path` when it is one of `groups` groups, each 0 or 1.
fn recorded_groups(path: &Path, groups: usize) -> Option<Vec<u8>> {
    fs::read(path)
        .ok()
        .filter(|done| done.len() == groups && done.iter().all(|d| *d <= 1))
}

impl Store {
    pub(super) fn partial_paths(&self, hash: &BlobHash) -> [PathBuf; 3] {
        let dir = self.layout.partial_dir();
        let hex = hash.to_hex();
        [
            dir.join(&hex),
            dir.join(format!("{hex}.obao")),
            dir.join(format!("{hex}.groups")),
        ]
    }

    /// The groups of a blob still to fetch, without opening its files.
    pub fn partial_missing(&self, hash: &BlobHash, size: u64) -> Vec<Range<u64>> {
        missing_ranges(&done_groups(&self.partial_paths(hash)[2], size))
    }

    /// Opens (resuming) or starts the partial files of a blob to fetch.
    pub fn partial(&self, hash: &BlobHash, size: u64) -> io::Result<PartialBlob> {
        // Marked before the files are touched, so a trim running meanwhile
        // leaves them alone.
        let open_mark = self.open_partials.mark(*hash);
        fs::create_dir_all(self.layout.partial_dir())?;
        let paths = self.partial_paths(hash);
        let open = |p: &PathBuf| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
        };
        let tree = BaoTree::new(size, BLOCK_SIZE);
        // Files created here hold nothing yet, whatever the record of a blob
        // committed a moment ago (or half-committed before a crash) says:
        // trusting it would commit zeros.
        let outboard_kept = size <= GROUP_BYTES || paths[1].exists();
        let (data, created) = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&paths[0])
        {
            Ok(fresh) => (fresh, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (open(&paths[0])?, false),
            Err(e) => return Err(e),
        };
        let done = if created || !outboard_kept {
            // The record goes too, so that no later open pairs it with these files.
            layout::remove_if_present(&paths[2])?;
            vec![0; group_count(size)]
        } else {
            done_groups(&paths[2], size)
        };
        data.set_len(size)?;
        let outboard = open(&paths[1])?;
        let ids = [file_id(&data.metadata()?), file_id(&outboard.metadata()?)];
        Ok(PartialBlob {
            hash: *hash,
            size,
            data,
            outboard: PostOrderOutboard {
                root: (*hash).into(),
                tree,
                data: outboard,
            },
            done,
            paths,
            ids,
            _open: open_mark,
            unrecorded: 0,
            recorded_at: Instant::now(),
        })
    }

    /// Opens the partial files of a blob for a verified read of the groups done.
    pub fn open_partial(&self, hash: &BlobHash, size: u64) -> io::Result<BlobFiles> {
        let dir = self.layout.partial_dir();
        let hex = hash.to_hex();
        let outboard = if size > GROUP_BYTES {
            Some(File::open(dir.join(format!("{hex}.obao")))?)
        } else {
            None
        };
        Ok(BlobFiles {
            hash: *hash,
            size,
            data: File::open(dir.join(hex))?,
            outboard,
        })
    }

    /// Whether a blob's file is already here, whole in length (verified later by
    /// every read) and not marked damaged: if not, a fetch copies it again.
    pub fn has_blob_file(&self, hash: &BlobHash, size: u64) -> bool {
        // Without its outboard a blob cannot be read verified: it is fetched
        // again (the commit puts both files in place).
        !self.index().is_damaged(hash)
            && fs::metadata(self.layout.blob(hash)).is_ok_and(|m| m.len() == size)
            && (size <= GROUP_BYTES || self.layout.outboard(hash).exists())
    }

    /// Moves a complete partial blob under its final name, replacing a damaged
    /// copy if one is left, and clears the blob's damaged mark.
    pub fn commit_partial(&self, mut partial: PartialBlob) -> Result<(), StoreError> {
        // Two copies of bundles sharing a file fetch that blob into the same
        // partial files at once; the first to finish moves them into place.
        // Committing under the lock removals take, the second finds the blob
        // whole and is done: its bytes were the same verified ones.
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let [data, outboard, done] = partial.paths.clone();
        let ours = partial.files_in_place();
        if self.has_blob_file(&partial.hash, partial.size) {
            // A whole blob is never replaced. Files of this holder's still at
            // the partial paths are leftovers: removed, so that no later
            // commit takes them for a complete blob.
            if ours {
                remove_files(&partial.paths)?;
            }
            return Ok(());
        }
        if !ours {
            return Err(io_at(&data)(replaced()));
        }
        partial.checkpoint(self).map_err(io_at(&data))?;
        if partial.size > GROUP_BYTES {
            let dest = self.layout.outboard(&partial.hash);
            fs::rename(&outboard, &dest).map_err(io_at(&dest))?;
        } else {
            layout::remove_if_present(&outboard).map_err(io_at(&outboard))?;
        }
        let dest = self.layout.blob(&partial.hash);
        fs::rename(&data, &dest).map_err(io_at(&dest))?;
        layout::remove_if_present(&done).map_err(io_at(&done))?;
        // After the rename: a blob is never unmarked while its bad copy is in place.
        self.index()
            .clear_damaged(&partial.hash)
            .map_err(|e| self.index_err(e))
    }

    /// Commits a blob whose partial files already hold every verified group,
    /// and says whether it did. A fetch cut short after its last group (a
    /// browser that went away before its fetch-through committed) leaves the
    /// files so; with nothing left to fetch, no copy would ever commit them.
    /// The files are read back whole first: only a record of this node's
    /// says they are complete, and it reads blocking.
    pub(super) fn commit_if_complete(
        &self,
        hash: &BlobHash,
        size: u64,
    ) -> Result<bool, StoreError> {
        if !self.partial_missing(hash, size).is_empty() {
            return Ok(false);
        }
        let dir = self.layout.partial_dir();
        let partial = self.partial(hash, size).map_err(io_at(&dir))?;
        if !partial.is_complete() {
            return Ok(false);
        }
        if let Err(e) = partial.verify_all() {
            tracing::warn!(blob = %hash, error = %e, "partial blob recorded complete does not verify; fetched again");
            remove_files(&partial.paths)?;
            return Ok(false);
        }
        self.commit_partial(partial)?;
        Ok(true)
    }

    /// Commits the blobs of `manifest` that a fetch left complete but not
    /// committed ([`Store::commit_if_complete`]); blocking.
    pub fn commit_complete_partials(&self, manifest: &Manifest) -> Result<(), StoreError> {
        for e in manifest.entries() {
            if !self.has_blob_file(&e.hash, e.size) {
                self.commit_if_complete(&e.hash, e.size)?;
            }
        }
        Ok(())
    }

    /// Keeps a blob fetched through for browsers as cache, then evicts the
    /// cached blobs kept longest ago beyond `max_bytes`.
    /// Blobs a held bundle references are never evicted: they leave the cache.
    pub fn use_cached(&self, hash: &BlobHash, size: u64, max_bytes: u64) -> Result<(), StoreError> {
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        self.index()
            .touch_cached(hash, size)
            .map_err(|e| self.index_err(e))?;
        let mut cached = self
            .index()
            .cached_by_age()
            .map_err(|e| self.index_err(e))?;
        cached.retain(|(h, _)| {
            let pinned = self.index().is_referenced(h);
            if pinned {
                let _ = self.index().uncache(h);
            }
            !pinned
        });
        let mut total: u64 = cached.iter().map(|(_, size)| size).sum();
        let mut evict = Vec::new();
        for (h, size) in cached {
            if total <= max_bytes || h == *hash {
                break;
            }
            total -= size;
            evict.push(h);
        }
        if !evict.is_empty() {
            tracing::info!(blobs = evict.len(), "evicting cached blobs");
        }
        self.delete_blobs(&evict)
    }

    /// Records a fetched bundle whose blobs are all in place.
    pub fn add_fetched_bundle(&self, manifest: &Manifest) -> Result<BundleSummary, StoreError> {
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let id: BundleId = manifest.id();
        // A fetch skips the blobs it finds here; the bundle that held one may
        // have been removed since, with its files. Checked under the lock
        // removals take, so a bundle is never recorded with a blob missing.
        let gone = manifest
            .entries()
            .iter()
            .find(|e| !self.has_blob_file(&e.hash, e.size));
        if let Some(e) = gone {
            return Err(StoreError::BlobGone(e.hash));
        }
        layout::sync_dir(&self.layout.blobs_dir()).map_err(io_at(&self.layout.blobs_dir()))?;
        let path = self.layout.bundle(&id);
        if !path.exists() {
            layout::write_atomic(&self.layout, &path, &manifest.encode()).map_err(io_at(&path))?;
            layout::sync_dir(&self.layout.bundles_dir()).map_err(io_at(&path))?;
        }
        self.index_bundle(id, manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_record_written_last_keeps_the_newer_ones_groups() -> anyhow::Result<()> {
        let group = GROUP_BYTES as usize;
        let data_dir = tempfile::tempdir()?;
        let store = Store::open(data_dir.path())?;
        let data: Vec<u8> = (0..2 * group).map(|i| (i % 251) as u8).collect();
        let (hash, len) = (BlobHash::of(&data), data.len() as u64);
        let mut partial = store.partial(&hash, len)?;
        partial.write_group(0, &data[..group])?;
        let older = partial.take_checkpoint()?;
        partial.write_group(group as u64, &data[group..])?;
        let newer = partial.take_checkpoint()?;
        // Two units' checkpoints, synced outside the blob's lock, land in
        // the other order.
        newer.write(&store)?;
        older.write(&store)?;
        drop(partial);
        assert_eq!(store.partial_missing(&hash, len), Vec::<Range<u64>>::new());
        // Whoever opens it next finds it complete, as the newer record said.
        assert!(store.partial(&hash, len)?.is_complete());
        Ok(())
    }
}
