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
/// Memory the kept files take at most.
pub const HOT_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The kept files.
#[derive(Debug)]
pub struct HotFiles {
    inner: Mutex<Kept>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Kept {
    files: HashMap<BlobHash, Entry>,
    /// Eviction order, oldest first; every kept hash is in it once.
    queue: VecDeque<BlobHash>,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    bytes: Bytes,
    /// Read since it last reached the queue's front: it gets another round.
    read_again: bool,
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
        let len = bytes.len();
        if len as u64 > HOT_FILE_MAX || len > self.max_bytes {
            return;
        }
        let mut kept = self.kept();
        if kept.files.contains_key(&hash) {
            return;
        }
        // Each entry is given a second chance at most once per pass, so this
        // ends within two passes of the queue.
        while kept.bytes + len > self.max_bytes {
            let Some(oldest) = kept.queue.pop_front() else {
                break;
            };
            match kept.files.get_mut(&oldest) {
                Some(entry) if entry.read_again => {
                    entry.read_again = false;
                    kept.queue.push_back(oldest);
                }
                Some(_) => {
                    if let Some(gone) = kept.files.remove(&oldest) {
                        kept.bytes -= gone.bytes.len();
                    }
                }
                None => {}
            }
        }
        kept.bytes += len;
        kept.queue.push_back(hash);
        kept.files.insert(
            hash,
            Entry {
                bytes,
                read_again: false,
            },
        );
    }

    /// Drops `hash`: deleted, or found damaged on disk.
    pub fn forget(&self, hash: &BlobHash) {
        let mut kept = self.kept();
        if let Some(gone) = kept.files.remove(hash) {
            kept.bytes -= gone.bytes.len();
            kept.queue.retain(|h| h != hash);
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
        let hot = HotFiles::new(4 * 1024);
        for n in 0..4 {
            hot.keep(hash(n), file(1024));
        }
        for n in 4..8 {
            assert!(hot.get(&hash(0)).is_some(), "read again, so kept");
            hot.keep(hash(n), file(1024));
            assert!(hot.kept().bytes <= 4 * 1024);
        }
        assert!(hot.get(&hash(0)).is_some(), "read again, so kept");
        assert!(hot.get(&hash(1)).is_none(), "read once, so evicted");
        let kept = hot.kept();
        assert_eq!(kept.files.len(), kept.queue.len());
    }

    #[test]
    fn large_files_are_not_kept_and_forgotten_ones_are_gone() {
        let hot = HotFiles::new(HOT_BYTES_MAX);
        hot.keep(hash(1), file(HOT_FILE_MAX as usize + 1));
        assert!(hot.get(&hash(1)).is_none());
        hot.keep(hash(2), file(10));
        hot.forget(&hash(2));
        assert!(hot.get(&hash(2)).is_none());
        let kept = hot.kept();
        assert_eq!(kept.bytes, 0);
        assert!(kept.queue.is_empty());
    }
}
