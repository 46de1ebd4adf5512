//! Verified bytes read lately, kept in memory. A lesson's HTML, CSS, scripts
//! and fonts are read thousands of times a morning, and so are the pieces of a
//! PDF or video a whole class opens at once; each read from disk costs an open,
//! a read and a hash. Small files are kept whole at their first read. Pieces of
//! larger files (aligned [`HOT_PIECE`]s) are kept at their second read within a
//! while, so one pass over a large file (a copy, one pupil's download) does not
//! push out what is read again. Bounded in bytes; eviction is a second-chance
//! queue, so what is read again survives one read of many others.
//!
//! Only bytes that passed verification enter, under their blob's hash and
//! size, which fix them: what this serves is what a sound disk would. A blob
//! leaves when it is deleted.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use cartable_proto::BlobHash;

/// Files up to this size are kept whole at their first read: four chunk
/// groups, the size of most of a lesson's text files and fonts.
pub const HOT_FILE_MAX: u64 = 64 * 1024;
/// Larger files are kept in pieces of this size, aligned: the blocks a
/// verified read hands out whole, without a copy.
pub const HOT_PIECE: u64 = super::verify::PIECE_BYTES as u64;
/// Memory the kept bytes take at most, their bookkeeping included.
pub const HOT_BYTES_MAX: usize = 256 * 1024 * 1024;
/// What one kept piece costs beside its bytes, at most: its map slot at the
/// map's emptiest, its queue slots (stale ones included), the allocation's
/// headers. Counted, so a lesson of many tiny files cannot fill memory the
/// cap does not see.
const ENTRY_OVERHEAD: usize = 512;
/// Pieces read once and remembered, waiting for a second read: 1 GiB of
/// pieces, in about a MiB.
const SEEN_MAX: usize = 4096;
/// Pieces one eviction spares for having been read again before it evicts
/// one regardless: a bound on the work done under the lock.
const SPARED_MAX: usize = 64;

/// A piece of a blob: its hash, its size (which the hash fixes, so a manifest
/// giving another finds nothing), and where the piece starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Piece {
    /// The blob's hash.
    pub hash: BlobHash,
    /// The blob's size.
    pub size: u64,
    /// Where the piece starts: 0 for a small file, whole.
    pub start: u64,
}

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
    /// Pieces found kept, since the start.
    hits: AtomicU64,
}

#[derive(Debug, Default)]
struct Kept {
    pieces: HashMap<Piece, Entry>,
    /// Eviction order, oldest first: each kept piece once under its entry's
    /// number, beside the numbers of pieces forgotten since (skipped when met,
    /// so forgetting costs no scan).
    queue: VecDeque<(Piece, u64)>,
    /// Memory charged: bytes plus [`ENTRY_OVERHEAD`] per piece.
    charged: usize,
    /// The number the next kept or seen piece gets.
    next: u64,
    /// Pieces read once lately, by the number they were seen under, and in
    /// the order they were (stale numbers skipped, as in `queue`).
    seen: HashMap<Piece, u64>,
    seen_order: VecDeque<(Piece, u64)>,
}

#[derive(Debug)]
struct Entry {
    bytes: Bytes,
    number: u64,
    /// Read since it last reached the queue's front: it gets another round.
    read_again: bool,
}

impl Kept {
    fn number(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Evicts the oldest piece not read again, or after [`SPARED_MAX`] spared
    /// the oldest left; false when nothing is left.
    fn evict_one(&mut self) -> bool {
        let mut spared = 0;
        while let Some((piece, number)) = self.queue.pop_front() {
            match self.pieces.get_mut(&piece) {
                Some(entry)
                    if entry.number == number && entry.read_again && spared < SPARED_MAX =>
                {
                    entry.read_again = false;
                    spared += 1;
                    self.queue.push_back((piece, number));
                }
                Some(entry) if entry.number == number => {
                    self.remove(&piece);
                    return true;
                }
                _ => {} // forgotten, or kept again since under a new number
            }
        }
        false
    }

    fn remove(&mut self, piece: &Piece) {
        if let Some(gone) = self.pieces.remove(piece) {
            self.charged -= gone.bytes.len() + ENTRY_OVERHEAD;
        }
    }

    /// Whether `piece` was read once lately; if not, remembers that it was now.
    fn seen_before(&mut self, piece: Piece) -> bool {
        if self.seen.remove(&piece).is_some() {
            return true;
        }
        let number = self.number();
        self.seen.insert(piece, number);
        self.seen_order.push_back((piece, number));
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
            self.seen_order.retain(|(p, n)| seen.get(p) == Some(n));
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
            hits: AtomicU64::new(0),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        crate::background::debug_assert_may_hold("the memory of verified bytes' lock");
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The verified bytes of `piece`, when kept: a small file whole, or the
    /// piece of a larger one.
    pub fn get(&self, piece: &Piece) -> Option<Bytes> {
        let mut kept = self.kept();
        let entry = kept.pieces.get_mut(piece)?;
        entry.read_again = true;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry.bytes.clone())
    }

    /// Memory charged now, and the pieces found kept since the start.
    pub fn usage(&self) -> (usize, u64) {
        (self.kept().charged, self.hits.load(Ordering::Relaxed))
    }

    /// Keeps `bytes`, just verified, the bytes of `piece`, when `admit` says
    /// so, evicting what was not read again. Nothing larger than a
    /// [`HOT_PIECE`] is kept.
    pub fn keep(&self, piece: Piece, bytes: Bytes, admit: Admit) {
        let cost = bytes.len() + ENTRY_OVERHEAD;
        if bytes.len() as u64 > HOT_PIECE || cost > self.max_bytes {
            return;
        }
        let mut kept = self.kept();
        if kept.pieces.contains_key(&piece)
            || (admit == Admit::WhenReadAgain && !kept.seen_before(piece))
        {
            return;
        }
        while kept.charged + cost > self.max_bytes && kept.evict_one() {}
        if kept.queue.len() > 2 * kept.pieces.len() + 1024 {
            // Forgotten pieces' numbers are dropped once they are most of the
            // queue: rarely, so forgetting stays O(1) on average.
            let Kept { pieces, queue, .. } = &mut *kept;
            queue.retain(|(p, n)| pieces.get(p).is_some_and(|e| e.number == *n));
        }
        let number = kept.number();
        kept.charged += cost;
        kept.queue.push_back((piece, number));
        kept.pieces.insert(
            piece,
            Entry {
                bytes,
                number,
                read_again: false,
            },
        );
    }

    /// Drops every piece of the blob `hash` of `size` bytes, deleted; of any
    /// size when it is not known. Looked up piece by piece, or by a scan of
    /// what is kept when that is shorter.
    pub fn forget(&self, hash: &BlobHash, size: Option<u64>) {
        let mut kept = self.kept();
        let short = |size: &u64| size / HOT_PIECE <= kept.pieces.len() as u64;
        let Some(size) = size.filter(short) else {
            let gone: usize = (kept.pieces.iter())
                .filter(|(p, _)| p.hash == *hash)
                .map(|(_, e)| e.bytes.len() + ENTRY_OVERHEAD)
                .sum();
            kept.pieces.retain(|p, _| p.hash != *hash);
            kept.charged -= gone;
            return;
        };
        for start in (0..size.max(1)).step_by(HOT_PIECE as usize) {
            kept.remove(&Piece {
                hash: *hash,
                size,
                start,
            });
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

    /// The piece at `start` of a blob of 1 GiB.
    fn at(hash: BlobHash, start: u64) -> Piece {
        Piece {
            hash,
            size: 1 << 30,
            start,
        }
    }

    #[test]
    fn memory_stays_under_the_cap_and_files_read_again_stay() {
        let cap = 4 * (1024 + ENTRY_OVERHEAD);
        let hot = HotFiles::new(cap);
        for n in 0..4 {
            hot.keep(at(hash(n), 0), file(1024), Admit::Now);
        }
        for n in 4..8 {
            assert!(hot.get(&at(hash(0), 0)).is_some(), "read again, so kept");
            hot.keep(at(hash(n), 0), file(1024), Admit::Now);
            assert!(hot.kept().charged <= cap);
        }
        assert!(hot.get(&at(hash(0), 0)).is_some(), "read again, so kept");
        assert!(hot.get(&at(hash(1), 0)).is_none(), "read once, so evicted");
        let kept = hot.kept();
        assert_eq!(kept.pieces.len(), 4);
    }

    #[test]
    fn tiny_files_are_charged_their_bookkeeping() {
        let hot = HotFiles::new(100 * ENTRY_OVERHEAD);
        for n in 0..=255 {
            hot.keep(at(hash(n), 0), file(1), Admit::Now);
        }
        let kept = hot.kept();
        assert!(
            kept.pieces.len() < 100,
            "{} tiny files kept",
            kept.pieces.len()
        );
        assert!(kept.charged <= 100 * ENTRY_OVERHEAD);
    }

    #[test]
    fn forgetting_costs_no_scan_and_a_file_kept_again_is_not_evicted_for_its_old_self() {
        let hot = HotFiles::new(3 * (10 + ENTRY_OVERHEAD));
        hot.keep(at(hash(1), 0), file(10), Admit::Now);
        hot.forget(&hash(1), Some(1 << 30));
        hot.keep(at(hash(1), 0), file(10), Admit::Now); // queued twice now: old number, new number
        hot.keep(at(hash(2), 0), file(10), Admit::Now);
        hot.keep(at(hash(3), 0), file(10), Admit::Now);
        hot.keep(at(hash(4), 0), file(10), Admit::Now); // evicts: the stale number of 1 is skipped
        assert!(hot.get(&at(hash(1), 0)).is_none(), "1 was the oldest kept");
        assert!(hot.get(&at(hash(2), 0)).is_some() && hot.get(&at(hash(4), 0)).is_some());
        for round in 0..5000u32 {
            let h = BlobHash::of(&round.to_le_bytes());
            hot.keep(at(h, 0), file(10), Admit::Now);
            hot.forget(&h, Some(1 << 30));
        }
        let kept = hot.kept();
        assert!(
            kept.queue.len() <= 2 * kept.pieces.len() + 1025,
            "{}",
            kept.queue.len()
        );
    }

    #[test]
    fn pieces_of_large_files_are_kept_when_read_again_and_leave_with_their_blob() {
        let hot = HotFiles::new(HOT_BYTES_MAX);
        let piece = HOT_PIECE as usize;
        let blob = |start| Piece {
            hash: hash(1),
            size: 2 * HOT_PIECE + 10,
            start,
        };
        hot.keep(blob(0), file(piece + 1), Admit::Now);
        assert!(hot.get(&blob(0)).is_none(), "larger than a piece");
        hot.keep(blob(0), file(piece), Admit::WhenReadAgain);
        assert!(hot.get(&blob(0)).is_none(), "read once");
        hot.keep(blob(HOT_PIECE), file(piece), Admit::WhenReadAgain);
        hot.keep(blob(0), file(piece), Admit::WhenReadAgain);
        assert!(hot.get(&blob(0)).is_some(), "read twice");
        assert!(hot.get(&blob(HOT_PIECE)).is_none(), "read once");
        let lie = Piece {
            size: 2 * HOT_PIECE,
            ..blob(0)
        };
        assert!(hot.get(&lie).is_none(), "another size is another blob");
        hot.keep(blob(HOT_PIECE), file(piece), Admit::WhenReadAgain);
        hot.keep(blob(2 * HOT_PIECE), file(10), Admit::Now);
        hot.keep(at(hash(2), 0), file(10), Admit::Now);
        hot.keep(at(hash(3), 0), file(10), Admit::Now);
        hot.forget(&hash(1), Some(2 * HOT_PIECE + 10)); // piece by piece
        for start in [0, HOT_PIECE, 2 * HOT_PIECE] {
            assert!(hot.get(&blob(start)).is_none());
        }
        assert!(hot.get(&at(hash(2), 0)).is_some());
        assert_eq!(hot.kept().charged, 2 * (10 + ENTRY_OVERHEAD));
        hot.forget(&hash(2), None); // by a scan
        hot.forget(&hash(3), Some(1 << 30)); // by a scan: shorter
        let kept = hot.kept();
        assert_eq!((kept.charged, kept.pieces.len()), (0, 0));
    }

    #[test]
    fn a_pass_over_many_pieces_keeps_none_and_remembers_a_bounded_number() {
        let hot = HotFiles::new(HOT_BYTES_MAX);
        for n in 0..3 * SEEN_MAX as u64 {
            hot.keep(at(hash(1), n * HOT_PIECE), file(16), Admit::WhenReadAgain);
        }
        let kept = hot.kept();
        assert_eq!(kept.pieces.len(), 0);
        assert_eq!(kept.seen.len(), SEEN_MAX);
        assert!(kept.seen_order.len() <= 2 * SEEN_MAX + 1);
        drop(kept);
        let last = (3 * SEEN_MAX as u64 - 1) * HOT_PIECE;
        hot.keep(at(hash(1), last), file(16), Admit::WhenReadAgain);
        assert!(
            hot.get(&at(hash(1), last)).is_some(),
            "seen lately, so kept"
        );
        hot.keep(at(hash(1), 0), file(16), Admit::WhenReadAgain);
        assert!(hot.get(&at(hash(1), 0)).is_none(), "seen too long ago");
    }
}
