//! Small files read lately, kept verified in memory: a lesson's HTML, CSS,
//! scripts and fonts are read thousands of times a morning, and each read from
//! disk costs an open, a read and a hash. Bounded in bytes; eviction is a
//! second-chance queue, so files read again survive one read of many others.
//!
//! Only bytes that passed verification enter, and a blob leaves when it is
//! deleted or marked damaged, so what this serves is what the disk would.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use cartable_proto::BlobHash;

/// Files up to this size are kept: four chunk groups, the size of most of a
/// lesson's text files and fonts.
pub const HOT_FILE_MAX: u64 = 64 * 1024;
/// Memory the kept files take at most, their bookkeeping included.
pub const HOT_BYTES_MAX: usize = 64 * 1024 * 1024;
/// What one kept file costs beside its bytes (map and queue slots, the
/// allocation): counted, so a lesson of many tiny files cannot fill memory
/// the cap does not see.
const ENTRY_OVERHEAD: usize = 128;

/// The kept files.
#[derive(Debug)]
pub struct HotFiles {
    inner: Mutex<Kept>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Kept {
    files: HashMap<BlobHash, Entry>,
    /// Eviction order, oldest first: each kept file once under its entry's
    /// number, beside the numbers of files forgotten since (skipped when met,
    /// so forgetting costs no scan).
    queue: VecDeque<(BlobHash, u64)>,
    /// Memory charged: bytes plus [`ENTRY_OVERHEAD`] per file.
    charged: usize,
    /// The number the next kept entry gets.
    next: u64,
}

#[derive(Debug)]
struct Entry {
    bytes: Bytes,
    number: u64,
    /// Read since it last reached the queue's front: it gets another round.
    read_again: bool,
}

impl Kept {
    /// Evicts the oldest entry not read again; false when nothing is left.
    fn evict_one(&mut self) -> bool {
        while let Some((hash, number)) = self.queue.pop_front() {
            match self.files.get_mut(&hash) {
                Some(entry) if entry.number == number && entry.read_again => {
                    entry.read_again = false;
                    self.queue.push_back((hash, number));
                }
                Some(entry) if entry.number == number => {
                    let gone = entry.bytes.len() + ENTRY_OVERHEAD;
                    self.files.remove(&hash);
                    self.charged -= gone;
                    return true;
                }
                _ => {} // forgotten, or kept again since under a new number
            }
        }
        false
    }
}

impl HotFiles {
    /// Nothing kept; at most `max_bytes` kept.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Kept::default()),
            max_bytes,
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The verified bytes of `hash`, when kept.
    pub fn get(&self, hash: &BlobHash) -> Option<Bytes> {
        let mut kept = self.kept();
        let entry = kept.files.get_mut(hash)?;
        entry.read_again = true;
        Some(entry.bytes.clone())
    }

    /// Keeps `bytes`, the whole of `hash` just verified, evicting what was not
    /// read again; a file larger than [`HOT_FILE_MAX`] is not kept.
    pub fn keep(&self, hash: BlobHash, bytes: Bytes) {
        let cost = bytes.len() + ENTRY_OVERHEAD;
        if bytes.len() as u64 > HOT_FILE_MAX || cost > self.max_bytes {
            return;
        }
        let mut kept = self.kept();
        if kept.files.contains_key(&hash) {
            return;
        }
        // Each entry gets a second chance at most once per pass, so this ends
        // within two passes of the queue.
        while kept.charged + cost > self.max_bytes && kept.evict_one() {}
        if kept.queue.len() > 2 * kept.files.len() + 1024 {
            // Forgotten files' numbers are dropped once they are most of the
            // queue: rarely, so forgetting stays O(1) on average.
            let Kept { files, queue, .. } = &mut *kept;
            queue.retain(|(h, n)| files.get(h).is_some_and(|e| e.number == *n));
        }
        let number = kept.next;
        kept.next += 1;
        kept.charged += cost;
        kept.queue.push_back((hash, number));
        kept.files.insert(
            hash,
            Entry {
                bytes,
                number,
                read_again: false,
            },
        );
    }

    /// Drops `hash`: deleted, or found damaged on disk.
    pub fn forget(&self, hash: &BlobHash) {
        let mut kept = self.kept();
        if let Some(gone) = kept.files.remove(hash) {
            kept.charged -= gone.bytes.len() + ENTRY_OVERHEAD;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> BlobHash {
        BlobHash::of(&[n])
    }

    fn file(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    #[test]
    fn memory_stays_under_the_cap_and_files_read_again_stay() {
        let cap = 4 * (1024 + ENTRY_OVERHEAD);
        let hot = HotFiles::new(cap);
        for n in 0..4 {
            hot.keep(hash(n), file(1024));
        }
        for n in 4..8 {
            assert!(hot.get(&hash(0)).is_some(), "read again, so kept");
            hot.keep(hash(n), file(1024));
            assert!(hot.kept().charged <= cap);
        }
        assert!(hot.get(&hash(0)).is_some(), "read again, so kept");
        assert!(hot.get(&hash(1)).is_none(), "read once, so evicted");
        let kept = hot.kept();
        assert_eq!(kept.files.len(), 4);
    }

    #[test]
    fn tiny_files_are_charged_their_bookkeeping() {
        let hot = HotFiles::new(100 * ENTRY_OVERHEAD);
        for n in 0..=255 {
            hot.keep(hash(n), file(1));
        }
        let kept = hot.kept();
        assert!(
            kept.files.len() < 100,
            "{} tiny files kept",
            kept.files.len()
        );
        assert!(kept.charged <= 100 * ENTRY_OVERHEAD);
    }

    #[test]
    fn forgetting_costs_no_scan_and_a_file_kept_again_is_not_evicted_for_its_old_self() {
        let hot = HotFiles::new(3 * (10 + ENTRY_OVERHEAD));
        hot.keep(hash(1), file(10));
        hot.forget(&hash(1));
        hot.keep(hash(1), file(10)); // queued twice now: old number, new number
        hot.keep(hash(2), file(10));
        hot.keep(hash(3), file(10));
        hot.keep(hash(4), file(10)); // evicts: the stale number of 1 is skipped
        assert!(hot.get(&hash(1)).is_none(), "1 was the oldest kept");
        assert!(hot.get(&hash(2)).is_some() && hot.get(&hash(4)).is_some());
        for round in 0..5000u32 {
            let h = BlobHash::of(&round.to_le_bytes());
            hot.keep(h, file(10));
            hot.forget(&h);
        }
        let kept = hot.kept();
        assert!(
            kept.queue.len() <= 2 * kept.files.len() + 1025,
            "{}",
            kept.queue.len()
        );
    }

    #[test]
    fn large_files_are_not_kept_and_forgotten_ones_are_gone() {
        let hot = HotFiles::new(HOT_BYTES_MAX);
        hot.keep(hash(1), file(HOT_FILE_MAX as usize + 1));
        assert!(hot.get(&hash(1)).is_none());
        hot.keep(hash(2), file(10));
        hot.forget(&hash(2));
        assert!(hot.get(&hash(2)).is_none());
        assert_eq!(hot.kept().charged, 0);
    }
}
