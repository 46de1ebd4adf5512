//! The room blobs being fetched take in `DATA/partial/`. Fetch-through starts a
//! partial blob for any file a browser asks for, so a stranger asking one byte
//! of many files could fill the disk with them: they are counted against the
//! fetch-through cache, and those nobody has open are deleted, oldest first,
//! past a count and a size. The store knows which are open (fetch-through and
//! background copies alike), and never deletes those.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use cartable_proto::BlobHash;

use super::{Store, StoreError, io_at};

/// Partial blobs kept on disk at most (each is two or three files). A flood of
/// 1-byte ranges of distinct files leaves no more than this behind. Four times
/// the fetch-through's open blobs, so those in use and a recent history of
/// interrupted fetches, worth resuming, fit.
pub const MAX_PARTIAL_BLOBS: usize = 1024;

/// Blobs whose partial files are open, with how many holders each.
#[derive(Debug, Default, Clone)]
pub(crate) struct OpenPartials(Arc<Mutex<HashMap<BlobHash, usize>>>);

impl OpenPartials {
    /// Counts one more holder of `hash`'s files until the mark is dropped.
    pub(crate) fn mark(&self, hash: BlobHash) -> OpenMark {
        *self.lock().entry(hash).or_default() += 1;
        OpenMark {
            open: self.clone(),
            hash,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BlobHash, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One holder of a partial blob's files; unmarks them when dropped.
#[derive(Debug)]
pub(crate) struct OpenMark {
    open: OpenPartials,
    hash: BlobHash,
}

impl Drop for OpenMark {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.hash);
            }
        }
    }
}

/// One partial blob found on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OnDisk {
    pub hash: BlobHash,
    /// Disk space its files take (sparse data files count what was written).
    pub bytes: u64,
    /// The last write to any of its files.
    pub modified: SystemTime,
}

/// What [`Store::trim_partials`] left and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartialUsage {
    /// Partial blobs left.
    pub blobs: usize,
    /// Disk space they take.
    pub bytes: u64,
    /// Partial blobs deleted.
    pub removed: usize,
}

/// The partial blobs to delete, oldest first, so that at most `max_blobs`
/// remain and they take at most `max_bytes`; open ones are kept and still count.
pub(crate) fn to_remove(
    mut found: Vec<OnDisk>,
    max_bytes: u64,
    max_blobs: usize,
    is_open: impl Fn(&BlobHash) -> bool,
) -> Vec<BlobHash> {
    found.sort_by_key(|p| (p.modified, p.hash));
    let mut bytes: u64 = found.iter().map(|p| p.bytes).sum();
    let mut blobs = found.len();
    let mut out = Vec::new();
    for p in found {
        if blobs <= max_blobs && bytes <= max_bytes {
            break;
        }
        if !is_open(&p.hash) {
            bytes -= p.bytes;
            blobs -= 1;
            out.push(p.hash);
        }
    }
    out
}

/// The hash a file of `partial/` belongs to: `<hex>`, `<hex>.obao`, `<hex>.groups`.
fn owner(name: &str) -> Option<BlobHash> {
    let stem = name
        .strip_suffix(".obao")
        .or_else(|| name.strip_suffix(".groups"))
        .unwrap_or(name);
    stem.parse().ok()
}

impl Store {
    /// The partial blobs in `partial/`, their files taken together.
    pub(crate) fn partials_on_disk(&self) -> io::Result<Vec<OnDisk>> {
        let mut found: HashMap<BlobHash, OnDisk> = HashMap::new();
        let entries = match fs::read_dir(self.layout.partial_dir()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            entries => entries?,
        };
        for entry in entries {
            let entry = entry?;
            let Some(hash) = entry.file_name().to_str().and_then(owner) else {
                continue;
            };
            // A file removed meanwhile (a commit) is simply not counted.
            let Ok(meta) = entry.metadata() else { continue };
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let p = found.entry(hash).or_insert(OnDisk {
                hash,
                bytes: 0,
                modified,
            });
            p.bytes += meta.blocks() * 512;
            p.modified = p.modified.max(modified);
        }
        Ok(found.into_values().collect())
    }

    /// Deletes the partial blobs no one has open, least recently written
    /// first, until at most `max_blobs` remain and, with the blobs kept as
    /// fetch-through cache, they fit in `cache_max_bytes`. Stale ones left by
    /// an earlier run are counted and trimmed like the others.
    pub fn trim_partials(
        &self,
        cache_max_bytes: u64,
        max_blobs: usize,
    ) -> Result<PartialUsage, StoreError> {
        let dir = self.layout.partial_dir();
        let found = self.partials_on_disk().map_err(io_at(&dir))?;
        let max_bytes = cache_max_bytes.saturating_sub(self.cached_bytes()?);
        let (mut blobs, mut bytes) = (found.len(), found.iter().map(|p| p.bytes).sum::<u64>());
        let sizes: HashMap<BlobHash, u64> = found.iter().map(|p| (p.hash, p.bytes)).collect();
        let candidates = to_remove(found, max_bytes, max_blobs, |h| {
            self.open_partials.lock().contains_key(h)
        });
        let mut removed = 0;
        for hash in candidates {
            if self.remove_partial_if_closed(&hash)? {
                removed += 1;
                blobs -= 1;
                bytes -= sizes.get(&hash).copied().unwrap_or(0);
            }
        }
        if removed > 0 {
            tracing::info!(removed, blobs, bytes, "trimmed abandoned partial blobs");
        }
        Ok(PartialUsage {
            blobs,
            bytes,
            removed,
        })
    }

    /// Deletes a partial blob's files unless someone opened them meanwhile:
    /// the open marks stay locked while deleting, so an opening waits.
    fn remove_partial_if_closed(&self, hash: &BlobHash) -> Result<bool, StoreError> {
        let open = self.open_partials.lock();
        if open.contains_key(hash) {
            return Ok(false);
        }
        super::partial::remove_files(&self.partial_paths(hash))?;
        Ok(true)
    }

    /// Bytes kept as fetch-through cache.
    fn cached_bytes(&self) -> Result<u64, StoreError> {
        let cached = self
            .index()
            .cached_by_age()
            .map_err(|e| self.index_err(e))?;
        Ok(cached.iter().map(|(_, size)| size).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn on_disk(n: u8, bytes: u64, age_s: u64) -> OnDisk {
        OnDisk {
            hash: BlobHash::of(&[n]),
            bytes,
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1000 - age_s),
        }
    }

    #[test]
    fn the_oldest_closed_partials_go_first_past_the_count() {
        let found = vec![on_disk(1, 10, 5), on_disk(2, 10, 50), on_disk(3, 10, 20)];
        let open = BlobHash::of(&[2]);
        let gone = to_remove(found, u64::MAX, 1, |h| *h == open);
        assert_eq!(gone, [BlobHash::of(&[3]), BlobHash::of(&[1])]);
    }

    #[test]
    fn bytes_past_the_budget_are_trimmed_and_within_it_nothing_is() {
        let found = vec![on_disk(1, 100, 5), on_disk(2, 100, 50), on_disk(3, 100, 20)];
        assert!(to_remove(found.clone(), 300, 10, |_| false).is_empty());
        let gone = to_remove(found, 150, 10, |_| false);
        assert_eq!(gone, [BlobHash::of(&[2]), BlobHash::of(&[3])]);
    }

    #[test]
    fn files_are_grouped_by_the_blob_they_belong_to() {
        let hex = BlobHash::of(b"x").to_hex();
        for name in [hex.clone(), format!("{hex}.obao"), format!("{hex}.groups")] {
            assert_eq!(owner(&name), Some(BlobHash::of(b"x")), "{name}");
        }
        assert_eq!(owner("notes.txt"), None);
    }

    #[test]
    fn a_partial_is_open_while_any_holder_keeps_its_mark() {
        let open = OpenPartials::default();
        let hash = BlobHash::of(b"x");
        let (a, b) = (open.mark(hash), open.mark(hash));
        drop(a);
        assert!(open.lock().contains_key(&hash));
        drop(b);
        assert!(open.lock().is_empty());
    }
}
