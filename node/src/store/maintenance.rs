//! Keeping the index true to the files: reconciling at open, `check` (re-verify
//! every blob, drop orphans) and `rebuild-index` (a new index from the files alone).

use std::fs;
use std::time::{Duration, SystemTime};

use cartable_proto::{BlobHash, BundleId};

use super::{ReadFault, Store, StoreError, VerifyError, io_at, layout};

/// How long `check` keeps a blob no bundle records. Such a blob is left by a
/// crash between storing a blob and recording its bundle, or in the middle
/// of a removal, or is a blob of an upload or a copy under way: an upload's
/// blobs are stored as they arrive and recorded once the bundle is complete,
/// which its grant allows for a day. Twice that, counted from when the blob
/// was written or last relied on ([`Store::rely_on_blob`]).
const UNRECORDED_KEPT: Duration = Duration::from_secs(2 * 24 * 3600);

/// One thing `check` found wrong.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// The blob or bundle, in hex.
    pub id: String,
    /// What is wrong with it.
    pub what: String,
}

/// What `check` found.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CheckReport {
    /// Bundles whose manifest matched its id.
    pub bundles_ok: u64,
    /// Blobs whose every byte matched their hash.
    pub blobs_ok: u64,
    /// Bytes verified.
    pub bytes_verified: u64,
    /// Blobs deleted that no bundle references: left by a crash or an
    /// interrupted removal, or an abandoned upload's older than two days.
    pub orphans_removed: u64,
    /// Damaged or missing bundles and blobs; each damaged blob is marked for repair.
    pub problems: Vec<Problem>,
}

impl Store {
    /// Brings the index in line with the manifests on disk: indexes bundles whose
    /// manifest was written but not indexed, and finishes interrupted removals.
    pub(super) fn reconcile(&self) -> Result<(), StoreError> {
        let dir = self.layout.bundles_dir();
        let on_disk = self.layout.bundle_files().map_err(io_at(&dir))?;
        let indexed: Vec<BundleId> = self.bundles()?.into_iter().map(|b| b.id).collect();
        for id in on_disk.iter().filter(|id| !indexed.contains(id)) {
            match self.read_manifest(id) {
                Ok(manifest) => {
                    self.index_bundle(*id, &manifest)?;
                    tracing::info!(bundle = %id, "indexed bundle found on disk");
                }
                Err(e) => tracing::error!(bundle = %id, error = %e, "unreadable manifest, skipped"),
            }
        }
        for id in indexed.iter().filter(|id| !on_disk.contains(id)) {
            let freed = self
                .index()
                .purge_bundle(id)
                .map_err(|e| self.index_err(e))?;
            self.delete_blobs(&freed)?;
            tracing::info!(bundle = %id, "finished removing bundle");
        }
        Ok(())
    }

    /// Re-verifies every bundle manifest and every blob against its hash, marks
    /// damaged blobs for repair, and deletes blobs no bundle references.
    ///
    /// On a large store this reads for hours, so it reads without the store's
    /// write lock: copies, uploads and browsers' fetches through this node
    /// commit beside it. The lock is taken only to judge a blob that failed
    /// (unless it changed meanwhile: repaired, or removed with its bundle) and,
    /// at the end, to delete the orphans.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let mut report = CheckReport::default();
        for b in self.bundles()? {
            match self.read_manifest(&b.id) {
                Ok(_) => report.bundles_ok += 1,
                // Removed since it was listed: not a problem.
                Err(_) if !self.holds(&b.id)? => {}
                Err(e) => report.problems.push(Problem {
                    id: b.id.to_hex(),
                    what: e.to_string(),
                }),
            }
        }
        for (hash, size) in self.index().blobs().map_err(|e| self.index_err(e))? {
            if !self.index().is_referenced(&hash) && !self.index().is_cached(&hash) {
                // An orphan, deleted below.
                continue;
            }
            let seen = layout::stamp(&self.layout.blob(&hash));
            match self.verify_blob(&hash, size) {
                Ok(()) => {
                    report.blobs_ok += 1;
                    report.bytes_verified += size;
                    self.index()
                        .clear_damaged(&hash)
                        .map_err(|e| self.index_err(e))?;
                }
                Err(e) => {
                    let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
                    if layout::stamp(&self.layout.blob(&hash)) != seen
                        || self.index().blob_size(&hash).is_none()
                    {
                        continue;
                    }
                    // Marked only when the files are wrong or gone; a check
                    // run short of descriptors reports the blob, marks nothing.
                    let what = match self.read_failed_holding_writes(&hash, &e) {
                        ReadFault::Damaged => e.to_string(),
                        ReadFault::Transient => format!("cannot read now: {e}"),
                    };
                    report.problems.push(Problem {
                        id: hash.to_hex(),
                        what,
                    });
                }
            }
        }
        report.orphans_removed = self.remove_orphans(SystemTime::now())?;
        Ok(report)
    }

    /// Deletes the blobs no bundle references and none keeps as cache whose
    /// files were last written, or relied on ([`Store::rely_on_blob`]), more
    /// than [`UNRECORDED_KEPT`] before `now`; returns how many.
    fn remove_orphans(&self, now: SystemTime) -> Result<u64, StoreError> {
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let indexed = self.index().blobs().map_err(|e| self.index_err(e))?;
        let mut candidates: Vec<BlobHash> = indexed
            .iter()
            .map(|(hash, _)| *hash)
            .filter(|hash| !self.index().is_referenced(hash) && !self.index().is_cached(hash))
            .collect();
        let blobs_dir = self.layout.blobs_dir();
        for hash in self.layout.blob_files().map_err(io_at(&blobs_dir))? {
            if indexed.binary_search_by(|(h, _)| h.cmp(&hash)).is_err() {
                candidates.push(hash);
            }
        }
        let old = |hash: &BlobHash| {
            let written = fs::metadata(self.layout.blob(hash))
                .or_else(|_| fs::metadata(self.layout.outboard(hash)))
                .and_then(|m| m.modified());
            // A blob whose files are gone is forgotten at once.
            written.map_or(true, |at| {
                now.duration_since(at).unwrap_or_default() > UNRECORDED_KEPT
            })
        };
        candidates.retain(old);
        self.delete_blobs(&candidates)?;
        Ok(candidates.len() as u64)
    }

    /// Whether a blob is stored whole, for a writer that is about to rely on
    /// that (an upload told it need not send it, a copy that skips it): a
    /// blob no bundle records yet has its time renewed, so that `check`
    /// keeps it two more days. A check deleting it at that very instant may
    /// still win: the writer then finds it gone when it records the bundle,
    /// and fails without recording anything.
    pub fn rely_on_blob(&self, hash: &BlobHash, size: u64) -> bool {
        if !self.has_blob_file(hash, size) {
            return false;
        }
        if !self.index().is_referenced(hash) && !self.index().is_cached(hash) {
            let renewed = fs::File::open(self.layout.blob(hash))
                .and_then(|f| f.set_modified(SystemTime::now()));
            if let Err(e) = renewed {
                tracing::warn!(blob = %hash, error = %e, "cannot renew an unrecorded blob's time");
            }
        }
        true
    }

    fn verify_blob(&self, hash: &BlobHash, size: u64) -> Result<(), VerifyError> {
        self.open_blob(hash, size)?.read_verified(0..size, |_| true)
    }

    /// Deletes the index of the store in `dir` and builds a new one from the
    /// manifests and blob files alone. Refuses while a daemon holds the store.
    pub fn rebuild_index(dir: impl Into<std::path::PathBuf>) -> Result<Self, StoreError> {
        let layout = layout::Layout::new(dir);
        let index_dir = layout.index_dir();
        // Opening first takes sled's lock: fail here, not after deleting, if the
        // store is in use.
        drop(
            super::index::Index::open(&index_dir).map_err(|source| StoreError::Index {
                path: index_dir.clone(),
                source,
            })?,
        );
        if index_dir.exists() {
            fs::remove_dir_all(&index_dir).map_err(io_at(&index_dir))?;
        }
        Self::open(layout.root())
    }
}
