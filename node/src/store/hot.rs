//! Verified bytes read lately, kept in memory. A lesson's HTML, CSS, scripts
//! and fonts are read thousands of times a morning, and so are the pieces of a
//! PDF or video a whole class opens at once; each read from disk costs an open,
//! a read and a hash. Small files are kept whole at their first read. Pieces of
//! larger files (aligned [`HOT_PIECE`]s) are kept at their second read within a
//! while, so one pass over a large file (a copy, one pupil's download) does not
//! push out what is read again. Bounded in bytes; eviction is a second-chance
//! queue, so what is read again survives one read of many others.
//!
//! Only bytes that passed verification enter, and a blob's hash fixes its
//! bytes, so what this serves is what a sound disk would, even once the disk
//! copy is found damaged; a blob leaves when it is deleted.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use cartable_proto::BlobHash;

/// Files up to this size are kept whole at their first read: four chunk
/// groups, the size of most of a lesson's text files and fonts.
pub const HOT_FILE_MAX: u64 = 64 * 1024;
/// Larger files are kept in pieces of this size, aligned: one verified block.
pub const HOT_PIECE: u64 = 256 * 1024;
/// Memory the kept bytes take at most, their bookkeeping included.
pub const HOT_BYTES_MAX: usize = 256 * 1024 * 1024;
/// What one kept piece costs beside its bytes (map and queue slots, the
/// allocation): counted, so a lesson of many tiny files cannot fill memory
/// the cap does not see.
const ENTRY_OVERHEAD: usize = 128;
/// Pieces read once and remembered, waiting for a second read: 1 GiB of
/// pieces, in a few hundred KiB.
const SEEN_MAX: usize = 4096;

/// Where a piece starts in its blob: a blob's pieces are told apart by it.
type Key = (BlobHash, u64);

/// When bytes read from disk are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// At once: a small file, whole.
    Now,
    /// When the same piece was read before, lately.
    WhenReadAgain,
}

/// The kept bytes.
#[derive(Debug)]
pub struct HotFiles {
    inner: Mutex<Kept>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Kept {
    /// Kept pieces by blob, then by start: a blob leaves at once.
    blobs: HashMap<BlobHash, HashMap<u64, Entry>>,
    /// Pieces kept, over all blobs.
    pieces: usize,
    /// Eviction order, oldest first: each kept piece once under its entry's
    /// number, beside the numbers of pieces forgotten since (skipped when met,
    /// so forgetting costs no scan).
    queue: VecDeque<(Key, u64)>,
    /// Memory charged: bytes plus [`ENTRY_OVERHEAD`] per piece.
    charged: usize,
    /// The number the next kept or seen piece gets.
    next: u64,
    /// Pieces read once lately, by the number they were seen under, and in
    /// the order they were (stale numbers skipped, as in `queue`).
    seen: HashMap<Key, u64>,
    seen_order: VecDeque<(Key, u64)>,
}

#[derive(Debug)]
struct Entry {
    bytes: Bytes,
    number: u64,
    /// Read since it last reached the queue's front: it gets another round.
    read_again: bool,
}

impl Kept {
    fn entry(&mut self, (hash, start): &Key) -> Option<&mut Entry> {
        self.blobs.get_mut(hash)?.get_mut(start)
    }

    fn number(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Evicts the oldest piece not read again; false when nothing is left.
    fn evict_one(&mut self) -> bool {
        while let Some((key, number)) = self.queue.pop_front() {
            match self.entry(&key) {
                Some(entry) if entry.number == number && entry.read_again => {
                    entry.read_again = false;
                    self.queue.push_back((key, number));
                }
                Some(entry) if entry.number == number => {
                    self.remove(&key);
                    return true;
                }
                _ => {} // forgotten, or kept again since under a new number
            }
        }
        false
    }

    fn remove(&mut self, (hash, start): &Key) {
        let Some(pieces) = self.blobs.get_mut(hash) else {
            return;
        };
        if let Some(gone) = pieces.remove(start) {
            self.charged -= gone.bytes.len() + ENTRY_OVERHEAD;
            self.pieces -= 1;
        }
        if pieces.is_empty() {
            self.blobs.remove(hash);
        }
    }

    /// Whether `key` was read once lately; if not, remembers that it was now.
    fn seen_before(&mut self, key: Key) -> bool {
        if self.seen.remove(&key).is_some() {
            return true;
        }
        let number = self.number();
        self.seen.insert(key, number);
        self.seen_order.push_back((key, number));
        while self.seen.len() > SEEN_MAX {
            let Some((oldest, n)) = self.seen_order.pop_front() else {
                break;
            };
            if self.seen.get(&oldest) == Some(&n) {
                self.seen.remove(&oldest);
            }
        }
        if self.seen_order.len() > 2 * SEEN_MAX {
            let seen = &self.seen;
            self.seen_order.retain(|(k, n)| seen.get(k) == Some(n));
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

    /// The verified bytes of `hash` from `start` on, as kept: a small file
    /// whole (from 0), or one piece.
    pub fn get(&self, hash: &BlobHash, start: u64) -> Option<Bytes> {
        let mut kept = self.kept();
        let entry = kept.entry(&(*hash, start))?;
        entry.read_again = true;
        Some(entry.bytes.clone())
    }

    /// Keeps `bytes`, just verified, the bytes of `hash` from `start` on, when
    /// `admit` says so, evicting what was not read again. Nothing larger than
    /// a [`HOT_PIECE`] is kept.
    pub fn keep(&self, hash: BlobHash, start: u64, bytes: Bytes, admit: Admit) {
        let cost = bytes.len() + ENTRY_OVERHEAD;
        if bytes.len() as u64 > HOT_PIECE || cost > self.max_bytes {
            return;
        }
        let key = (hash, start);
        let mut kept = self.kept();
        if kept.entry(&key).is_some() || (admit == Admit::WhenReadAgain && !kept.seen_before(key)) {
            return;
        }
        // Each entry gets a second chance at most once per pass, so this ends
        // within two passes of the queue.
        while kept.charged + cost > self.max_bytes && kept.evict_one() {}
        if kept.queue.len() > 2 * kept.pieces + 1024 {
            // Forgotten pieces' numbers are dropped once they are most of the
            // queue: rarely, so forgetting stays O(1) on average.
            let Kept { blobs, queue, .. } = &mut *kept;
            queue.retain(|((h, s), n)| {
                blobs
                    .get(h)
                    .and_then(|p| p.get(s))
                    .is_some_and(|e| e.number == *n)
            });
        }
        let number = kept.number();
        kept.charged += cost;
        kept.pieces += 1;
        kept.queue.push_back((key, number));
        kept.blobs.entry(hash).or_default().insert(
            start,
            Entry {
                bytes,
                number,
                read_again: false,
            },
        );
    }

    /// Drops every piece of `hash`, deleted.
    pub fn forget(&self, hash: &BlobHash) {
        let mut kept = self.kept();
        if let Some(gone) = kept.blobs.remove(hash) {
            kept.pieces -= gone.len();
            kept.charged -= gone
                .values()
                .map(|e| e.bytes.len() + ENTRY_OVERHEAD)
                .sum::<usize>();
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
            hot.keep(hash(n), 0, file(1024), Admit::Now);
        }
        for n in 4..8 {
            assert!(hot.get(&hash(0), 0).is_some(), "read again, so kept");
            hot.keep(hash(n), 0, file(1024), Admit::Now);
            assert!(hot.kept().charged <= cap);
        }
        assert!(hot.get(&hash(0), 0).is_some(), "read again, so kept");
        assert!(hot.get(&hash(1), 0).is_none(), "read once, so evicted");
        let kept = hot.kept();
        assert_eq!(kept.pieces, 4);
    }

    #[test]
    fn tiny_files_are_charged_their_bookkeeping() {
        let hot = HotFiles::new(100 * ENTRY_OVERHEAD);
        for n in 0..=255 {
            hot.keep(hash(n), 0, file(1), Admit::Now);
        }
        let kept = hot.kept();
        assert!(kept.pieces < 100, "{} tiny files kept", kept.pieces);
        assert!(kept.charged <= 100 * ENTRY_OVERHEAD);
    }

    #[test]
    fn forgetting_costs_no_scan_and_a_file_kept_again_is_not_evicted_for_its_old_self() {
        let hot = HotFiles::new(3 * (10 + ENTRY_OVERHEAD));
        hot.keep(hash(1), 0, file(10), Admit::Now);
        hot.forget(&hash(1));
        hot.keep(hash(1), 0, file(10), Admit::Now); // queued twice now: old number, new number
        hot.keep(hash(2), 0, file(10), Admit::Now);
        hot.keep(hash(3), 0, file(10), Admit::Now);
        hot.keep(hash(4), 0, file(10), Admit::Now); // evicts: the stale number of 1 is skipped
        assert!(hot.get(&hash(1), 0).is_none(), "1 was the oldest kept");
        assert!(hot.get(&hash(2), 0).is_some() && hot.get(&hash(4), 0).is_some());
        for round in 0..5000u32 {
            let h = BlobHash::of(&round.to_le_bytes());
            hot.keep(h, 0, file(10), Admit::Now);
            hot.forget(&h);
        }
        let kept = hot.kept();
        assert!(
            kept.queue.len() <= 2 * kept.pieces + 1025,
            "{}",
            kept.queue.len()
        );
    }

    #[test]
    fn pieces_of_large_files_are_kept_when_read_again_and_leave_with_their_blob() {
        let hot = HotFiles::new(HOT_BYTES_MAX);
        let piece = HOT_PIECE as usize;
        hot.keep(hash(1), 0, file(piece + 1), Admit::Now);
        assert!(hot.get(&hash(1), 0).is_none(), "larger than a piece");
        hot.keep(hash(1), 0, file(piece), Admit::WhenReadAgain);
        assert!(hot.get(&hash(1), 0).is_none(), "read once");
        hot.keep(hash(1), HOT_PIECE, file(piece), Admit::WhenReadAgain);
        hot.keep(hash(1), 0, file(piece), Admit::WhenReadAgain);
        assert!(hot.get(&hash(1), 0).is_some(), "read twice");
        assert!(
            hot.get(&hash(1), HOT_PIECE).is_none(),
            "another piece, read once"
        );
        hot.keep(hash(1), HOT_PIECE, file(piece), Admit::WhenReadAgain);
        hot.keep(hash(2), 0, file(10), Admit::Now);
        hot.forget(&hash(1));
        assert!(hot.get(&hash(1), 0).is_none() && hot.get(&hash(1), HOT_PIECE).is_none());
        assert!(hot.get(&hash(2), 0).is_some());
        assert_eq!(hot.kept().charged, 10 + ENTRY_OVERHEAD);
        hot.forget(&hash(2));
        let kept = hot.kept();
        assert_eq!((kept.charged, kept.pieces), (0, 0));
    }

    #[test]
    fn a_pass_over_many_pieces_keeps_none_and_remembers_a_bounded_number() {
        let hot = HotFiles::new(HOT_BYTES_MAX);
        for n in 0..3 * SEEN_MAX as u64 {
            hot.keep(hash(1), n * HOT_PIECE, file(16), Admit::WhenReadAgain);
        }
        let kept = hot.kept();
        assert_eq!(kept.pieces, 0);
        assert_eq!(kept.seen.len(), SEEN_MAX);
        assert!(kept.seen_order.len() <= 2 * SEEN_MAX + 1);
        drop(kept);
        let last = (3 * SEEN_MAX as u64 - 1) * HOT_PIECE;
        hot.keep(hash(1), last, file(16), Admit::WhenReadAgain);
        assert!(hot.get(&hash(1), last).is_some(), "seen lately, so kept");
        hot.keep(hash(1), 0, file(16), Admit::WhenReadAgain);
        assert!(hot.get(&hash(1), 0).is_none(), "seen too long ago");
    }
}
