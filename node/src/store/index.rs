//! The sled index of a data folder: which bundles are held, which blobs each
//! references, blob sizes and blobs found damaged. Everything here can be rebuilt
//! from the files (see `layout`), so sled's lack of a stable on-disk format costs
//! no lesson. Keeping sled behind this type lets the engine change later.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use cartable_proto::{BlobHash, BundleId, Manifest};

/// What the index records of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BundleSummary {
    /// The bundle.
    pub id: BundleId,
    /// Number of files.
    pub files: u64,
    /// Sum of the files' sizes.
    pub bytes: u64,
    /// When it was added, in seconds since the Unix epoch (its manifest file's mtime).
    pub added_unix: u64,
}

impl BundleSummary {
    fn to_bytes(self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.files.to_le_bytes());
        out[8..16].copy_from_slice(&self.bytes.to_le_bytes());
        out[16..].copy_from_slice(&self.added_unix.to_le_bytes());
        out
    }

    fn from_bytes(id: BundleId, bytes: &[u8]) -> Option<Self> {
        let field = |i: usize| Some(u64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?));
        Some(Self {
            id,
            files: field(0)?,
            bytes: field(8)?,
            added_unix: field(16)?,
        })
    }
}

/// The sled database and its trees.
#[derive(Debug)]
pub struct Index {
    db: sled::Db,
    /// bundle id → [`BundleSummary`]
    bundles: sled::Tree,
    /// blob hash ‖ bundle id → (): who references a blob
    refs: sled::Tree,
    /// blob hash → size (u64 LE)
    blobs: sled::Tree,
    /// blob hash → why it was found damaged (UTF-8)
    damaged: sled::Tree,
    /// Marks in `damaged`, kept beside it: every request asks whether its
    /// file is damaged, and almost always none is, so the tree is not asked.
    damaged_marks: AtomicUsize,
    /// blob hash → when it was cached (a counter, u64 BE): blobs kept as evictable cache
    cached: sled::Tree,
}

fn ref_key(blob: &BlobHash, bundle: &BundleId) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(blob.as_bytes());
    key[32..].copy_from_slice(bundle.hash().as_bytes());
    key
}

fn hash_of(key: &[u8]) -> Option<BlobHash> {
    Some(BlobHash::from_bytes(key.get(..32)?.try_into().ok()?))
}

impl Index {
    /// Opens or creates the index at `dir`.
    pub fn open(dir: &Path) -> sled::Result<Self> {
        let db = sled::Config::new().path(dir).open()?;
        let damaged = db.open_tree("damaged")?;
        Ok(Self {
            bundles: db.open_tree("bundles")?,
            refs: db.open_tree("refs")?,
            blobs: db.open_tree("blobs")?,
            damaged_marks: AtomicUsize::new(damaged.len()),
            damaged,
            cached: db.open_tree("cached")?,
            db,
        })
    }

    /// Makes every change so far durable (the cache order and damage marks
    /// are written without a flush of their own).
    pub fn flush(&self) -> sled::Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Records a bundle and its blobs. Idempotent.
    pub fn insert_bundle(&self, manifest: &Manifest, summary: BundleSummary) -> sled::Result<()> {
        let mut refs = sled::Batch::default();
        let mut blobs = sled::Batch::default();
        for e in manifest.entries() {
            refs.insert(&ref_key(&e.hash, &summary.id)[..], &[][..]);
            blobs.insert(&e.hash.as_bytes()[..], &e.size.to_le_bytes()[..]);
        }
        self.refs.apply_batch(refs)?;
        self.blobs.apply_batch(blobs)?;
        // Last: a bundle is listed only once its blobs are recorded.
        self.bundles
            .insert(summary.id.hash().as_bytes(), &summary.to_bytes()[..])?;
        self.db.flush()?;
        Ok(())
    }

    /// Forgets a bundle; returns the blobs no other bundle references, which the
    /// caller deletes and then passes to [`Index::forget_blobs`].
    pub fn remove_bundle(&self, id: &BundleId, manifest: &Manifest) -> sled::Result<Vec<BlobHash>> {
        self.bundles.remove(id.hash().as_bytes())?;
        let mut freed = Vec::new();
        for e in manifest.entries() {
            self.refs.remove(&ref_key(&e.hash, id)[..])?;
            if self.refs.scan_prefix(e.hash.as_bytes()).next().is_none() {
                freed.push(e.hash);
            }
        }
        freed.sort();
        freed.dedup();
        self.db.flush()?;
        Ok(freed)
    }

    /// Forgets blobs whose files were deleted.
    pub fn forget_blobs(&self, hashes: &[BlobHash]) -> sled::Result<()> {
        for h in hashes {
            self.blobs.remove(h.as_bytes())?;
            self.clear_damaged(h)?;
            self.cached.remove(h.as_bytes())?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Drops every reference to a bundle the index lists but whose manifest is
    /// gone (a crash during removal); returns the blobs left unreferenced.
    pub fn purge_bundle(&self, id: &BundleId) -> sled::Result<Vec<BlobHash>> {
        self.bundles.remove(id.hash().as_bytes())?;
        let mut freed = Vec::new();
        for key in self.refs.iter().keys() {
            let key = key?;
            if key.get(32..) == Some(&id.hash().as_bytes()[..]) {
                self.refs.remove(&key)?;
                freed.extend(hash_of(&key));
            }
        }
        freed.retain(|h| self.refs.scan_prefix(h.as_bytes()).next().is_none());
        freed.dedup();
        self.db.flush()?;
        Ok(freed)
    }

    /// Every bundle, by id.
    pub fn bundles(&self) -> sled::Result<Vec<BundleSummary>> {
        let mut out = Vec::new();
        for item in self.bundles.iter() {
            let (k, v) = item?;
            if let Some(id) = hash_of(&k).map(BundleId::from_hash) {
                out.extend(BundleSummary::from_bytes(id, &v));
            }
        }
        Ok(out)
    }

    /// Whether a bundle is recorded.
    pub fn has_bundle(&self, id: &BundleId) -> sled::Result<bool> {
        self.bundles.contains_key(id.hash().as_bytes())
    }

    /// Every recorded blob with its size.
    pub fn blobs(&self) -> sled::Result<Vec<(BlobHash, u64)>> {
        let mut out = Vec::new();
        for item in self.blobs.iter() {
            let (k, v) = item?;
            let size = v.as_ref().try_into().map(u64::from_le_bytes);
            if let (Some(h), Ok(size)) = (hash_of(&k), size) {
                out.push((h, size));
            }
        }
        Ok(out)
    }

    /// A recorded blob's size.
    pub fn blob_size(&self, hash: &BlobHash) -> Option<u64> {
        let v = self.blobs.get(hash.as_bytes()).ok()??;
        v.as_ref().try_into().ok().map(u64::from_le_bytes)
    }

    /// Whether any bundle references the blob.
    pub fn is_referenced(&self, hash: &BlobHash) -> bool {
        self.refs.scan_prefix(hash.as_bytes()).next().is_some()
    }

    /// Records a blob kept as cache, as the newest.
    pub fn touch_cached(&self, hash: &BlobHash, size: u64) -> sled::Result<()> {
        let now = self.db.generate_id()?;
        self.cached.insert(hash.as_bytes(), &now.to_be_bytes())?;
        self.blobs.insert(hash.as_bytes(), &size.to_le_bytes())?;
        Ok(())
    }

    /// Cached blobs, oldest first, with their sizes.
    pub fn cached_by_age(&self) -> sled::Result<Vec<(BlobHash, u64)>> {
        let mut aged = Vec::new();
        for item in self.cached.iter() {
            let (k, v) = item?;
            let used = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if let Some(hash) = hash_of(&k) {
                aged.push((used, hash, self.blob_size(&hash).unwrap_or(0)));
            }
        }
        aged.sort();
        Ok(aged.into_iter().map(|(_, h, size)| (h, size)).collect())
    }

    /// Whether a blob is kept as cache.
    pub fn is_cached(&self, hash: &BlobHash) -> bool {
        matches!(self.cached.contains_key(hash.as_bytes()), Ok(true))
    }

    /// Stops treating a blob as cache.
    pub fn uncache(&self, hash: &BlobHash) -> sled::Result<()> {
        self.cached.remove(hash.as_bytes())?;
        Ok(())
    }

    /// Marks a blob damaged, for repair.
    pub fn mark_damaged(&self, hash: &BlobHash, why: &str) -> sled::Result<()> {
        // Counted before the mark is written, so no reader sees the mark
        // with a count of none; a count too high only costs a lookup.
        self.damaged_marks.fetch_add(1, Ordering::Relaxed);
        if self
            .damaged
            .insert(hash.as_bytes(), why.as_bytes())?
            .is_some()
        {
            self.damaged_marks.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Clears the damaged mark of a blob found whole again.
    pub fn clear_damaged(&self, hash: &BlobHash) -> sled::Result<()> {
        if self.damaged.remove(hash.as_bytes())?.is_some() {
            self.damaged_marks.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether a blob is marked damaged.
    pub fn is_damaged(&self, hash: &BlobHash) -> bool {
        self.damaged_marks.load(Ordering::Relaxed) > 0
            && matches!(self.damaged.contains_key(hash.as_bytes()), Ok(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_marks_are_counted_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (BlobHash::of(b"a"), BlobHash::of(b"b"));
        {
            let index = Index::open(dir.path()).unwrap();
            assert!(!index.is_damaged(&a));
            index.mark_damaged(&a, "first").unwrap();
            index.mark_damaged(&a, "again").unwrap();
            index.mark_damaged(&b, "other").unwrap();
            index.clear_damaged(&b).unwrap();
            index.clear_damaged(&b).unwrap();
            assert!(index.is_damaged(&a), "clearing twice takes one mark off");
            assert!(!index.is_damaged(&b));
            index.flush().unwrap();
        }
        let index = Index::open(dir.path()).unwrap();
        assert!(index.is_damaged(&a), "a mark outlives a restart");
        index.forget_blobs(&[a]).unwrap();
        assert!(!index.is_damaged(&a));
        index.mark_damaged(&b, "later").unwrap();
        assert!(
            index.is_damaged(&b),
            "a mark made after the last one went is seen"
        );
    }
}
