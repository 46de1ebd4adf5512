//! The blobs being fetched through, each with its open partial files (two file
//! descriptors): at most [`MAX_OPEN_SLOTS`] at once, fewer under a low
//! descriptor limit ([`open_slots_cap`]). Idle ones (no request
//! using them) are closed when unused for [`IDLE_CLOSE`] or, when the map is
//! full, least recently used first; when every slot is in use, a new blob is
//! refused (the browser gets a 503) rather than opening more files. A closed
//! slot loses nothing: its verified groups are on disk and resume.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartable_proto::BlobHash;

/// Blobs with partial files open for fetch-through at most (512 descriptors),
/// and fewer under a low descriptor limit: see [`open_slots_cap`].
pub const MAX_OPEN_SLOTS: usize = 256;
/// Slots allowed even under a tiny descriptor limit, so fetch-through works.
const MIN_OPEN_SLOTS: usize = 4;
/// Descriptors one slot holds: the data file and the outboard.
const FILES_PER_SLOT: u64 = 2;
/// Slots take at most this fraction (1/4) of the process's descriptor limit:
/// the rest is for browsers' connections, peers, the index and reads.
const SHARE_OF_LIMIT: u64 = 4;
/// An idle slot unused this long is closed at the next new slot, so descriptors
/// do not stay open for blobs nobody reads any more.
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// The cap on open slots for this process: [`MAX_OPEN_SLOTS`], or a quarter
/// of its descriptor limit (`ulimit -n`) when that is lower.
pub(super) fn open_slots_cap() -> usize {
    cap_for(cartable_net::https::limits::open_file_limit())
}

/// The slot cap under a soft descriptor limit (`None`: unlimited or unknown).
fn cap_for(limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return MAX_OPEN_SLOTS;
    };
    let slots = limit / (FILES_PER_SLOT * SHARE_OF_LIMIT);
    usize::try_from(slots)
        .unwrap_or(MAX_OPEN_SLOTS)
        .clamp(MIN_OPEN_SLOTS, MAX_OPEN_SLOTS)
}

/// Whether a slot is in use by anyone but the map.
pub(super) trait Idle {
    /// `true` when only the map holds `slot`: it may be closed.
    fn is_idle(slot: &Arc<Self>) -> bool {
        Arc::strong_count(slot) == 1
    }
}

/// Why no slot was given.
#[derive(Debug, thiserror::Error)]
pub(super) enum SlotError {
    /// Every slot is in use.
    #[error("{0} blobs are being fetched through already")]
    Full(usize),
    /// The partial files could not be opened.
    #[error("opening partial files: {0}")]
    Open(#[from] io::Error),
}

/// A capped map of open slots, least recently used closed first.
#[derive(Debug)]
pub(super) struct Slots<T> {
    cap: usize,
    map: HashMap<BlobHash, (Arc<T>, Instant)>,
}

impl<T: Idle> Slots<T> {
    /// At most `cap` slots.
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            map: HashMap::new(),
        }
    }

    /// The slot of `hash`, opened with `open` when there is none; `true` with
    /// a slot just opened. Closes idle slots first when a new one is needed.
    pub(super) fn take(
        &mut self,
        hash: &BlobHash,
        now: Instant,
        open: impl FnOnce() -> io::Result<T>,
    ) -> Result<(Arc<T>, bool), SlotError> {
        if let Some((slot, used)) = self.map.get_mut(hash) {
            *used = now;
            return Ok((slot.clone(), false));
        }
        self.close_idle(now);
        if self.map.len() >= self.cap {
            return Err(SlotError::Full(self.map.len()));
        }
        let slot = Arc::new(open()?);
        self.map.insert(*hash, (slot.clone(), now));
        Ok((slot, true))
    }

    /// Forgets a slot (its blob is complete).
    pub(super) fn remove(&mut self, hash: &BlobHash) {
        self.map.remove(hash);
    }

    /// Slots open.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Closes the idle slots unused for [`IDLE_CLOSE`], then, while the map is
    /// full, the least recently used idle one.
    fn close_idle(&mut self, now: Instant) {
        self.map
            .retain(|_, (slot, used)| !(T::is_idle(slot) && now - *used >= IDLE_CLOSE));
        while self.map.len() >= self.cap {
            let oldest = self
                .map
                .iter()
                .filter(|(_, (slot, _))| T::is_idle(slot))
                .min_by_key(|(_, (_, used))| *used)
                .map(|(hash, _)| *hash);
            match oldest {
                Some(hash) => self.map.remove(&hash),
                None => return,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fake;
    impl Idle for Fake {}

    fn hash(n: u8) -> BlobHash {
        BlobHash::of(&[n])
    }

    #[test]
    fn a_full_map_closes_the_least_recently_used_idle_slot() -> anyhow::Result<()> {
        let t0 = Instant::now();
        let mut slots = Slots::new(2);
        slots.take(&hash(1), t0, || Ok(Fake))?;
        slots.take(&hash(2), t0 + Duration::from_secs(1), || Ok(Fake))?;
        // Used again: now the most recent.
        slots.take(&hash(1), t0 + Duration::from_secs(2), || Ok(Fake))?;
        let (_, new) = slots.take(&hash(3), t0 + Duration::from_secs(3), || Ok(Fake))?;
        assert!(new);
        assert_eq!(slots.len(), 2);
        assert!(slots.map.contains_key(&hash(1)) && !slots.map.contains_key(&hash(2)));
        Ok(())
    }

    #[test]
    fn slots_in_use_are_never_closed_and_a_new_blob_is_refused() -> anyhow::Result<()> {
        let t0 = Instant::now();
        let mut slots = Slots::new(2);
        let (_a, _) = slots.take(&hash(1), t0, || Ok(Fake))?;
        let (_b, _) = slots.take(&hash(2), t0, || Ok(Fake))?;
        let later = t0 + IDLE_CLOSE * 2;
        assert!(matches!(
            slots.take(&hash(3), later, || Ok(Fake)),
            Err(SlotError::Full(2))
        ));
        let (again, new) = slots.take(&hash(1), later, || Ok(Fake))?;
        assert!(!new && Arc::ptr_eq(&again, &_a), "the open slot is shared");
        Ok(())
    }

    #[test]
    fn idle_slots_close_after_a_while_and_the_map_never_passes_its_cap() -> anyhow::Result<()> {
        let t0 = Instant::now();
        let mut slots = Slots::new(8);
        for n in 0..=255u8 {
            slots.take(&hash(n), t0, || Ok(Fake))?;
            assert!(slots.len() <= 8);
        }
        let fresh = BlobHash::of(b"fresh");
        slots.take(&fresh, t0 + IDLE_CLOSE, || Ok(Fake))?;
        assert_eq!(slots.len(), 1, "the idle ones closed, the new one open");
        Ok(())
    }

    #[test]
    fn slots_take_a_quarter_of_a_low_descriptor_limit() {
        assert_eq!(cap_for(Some(256)), 32);
        assert_eq!(cap_for(Some(1024)), 128);
        assert_eq!(cap_for(Some(1 << 20)), MAX_OPEN_SLOTS);
        assert_eq!(cap_for(Some(10)), MIN_OPEN_SLOTS);
        assert_eq!(cap_for(None), MAX_OPEN_SLOTS, "unlimited");
    }

    #[test]
    fn a_failed_open_leaves_no_slot() {
        let mut slots: Slots<Fake> = Slots::new(2);
        let failed = slots.take(&hash(1), Instant::now(), || {
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        });
        assert!(matches!(failed, Err(SlotError::Open(_))));
        assert_eq!(slots.len(), 0);
    }
}
