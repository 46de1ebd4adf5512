//! The background scrub: every stored blob and its outboard re-read through the
//! verified read path, slowly, so that bytes rotting on disk are found before a
//! pupil or a peer asks for them.
//!
//! A blob found corrupt or missing is marked damaged and its files are removed.
//! From then on the store treats it as missing: it answers 503 to browsers and
//! "not held" to peers, [`Store::incomplete_bundles`] lists the bundles that use
//! it, and the next fetch of one of them copies it again from a replica, which
//! clears the mark ([`Store::commit_partial`]).
//!
//! A pass goes blob by blob and takes the store's write lock only to remove a bad
//! blob, so adds, fetches and reads go on beside it. Its pace caps the disk
//! bandwidth it takes, so that it never competes with pupils.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, Instant};

use cartable_proto::{BlobHash, BundleId};

use super::layout::{self, Stamp, stamp};
use super::{Store, StoreError, VerifyError, io_at};
use cartable_net::https::shed::{Level, Pressure};

/// How long a scrub paused for browsers waits before it looks again.
const YIELD_PAUSE: Duration = Duration::from_millis(200);

/// How fast and how often the scrub runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubSettings {
    /// Blob bytes verified per second, in MiB (2^20 bytes) per second; 0 lifts
    /// the limit. Default 16.
    pub mib_per_s: u64,
    /// Rest between the end of one pass and the start of the next. Default 1 hour.
    pub interval: Duration,
}

impl Default for ScrubSettings {
    fn default() -> Self {
        Self {
            mib_per_s: 16,
            interval: Duration::from_secs(3600),
        }
    }
}

/// What one pass found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Blobs whose every byte matched their hash.
    pub blobs_ok: u64,
    /// The bytes of those blobs.
    pub bytes_verified: u64,
    /// Blobs found corrupt or missing by this pass, now marked and removed.
    pub damaged: u64,
    /// Blobs found damaged before and still waiting for a repair.
    pub awaiting_repair: u64,
}

/// The reader's answer for one blob: what its verified read found, or
/// `None` if the pass halted meanwhile.
type Answer = Option<Result<(), VerifyError>>;

/// What became of one blob that was read.
enum Verdict {
    Whole,
    Removed,
    /// Not judged: changed while being read, or unreadable for now.
    Skipped,
}

/// Sets its flag when dropped: dropping [`scrub_forever`] stops the blocking
/// pass it started, and a pass that ends stops its reader.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs scrub passes until the future is dropped: a pass, `settings.interval`
/// of rest, and again. Each blob found corrupt or missing adds one to `found`
/// as soon as it is found. Dropping the future stops the pass under way within
/// one verified block. The pass pauses while browsers wait (`yield_to`).
pub async fn scrub_forever(
    store: Arc<Store>,
    settings: ScrubSettings,
    found: Arc<AtomicU64>,
    yield_to: Arc<Pressure>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = SetOnDrop(&stop);
    loop {
        let started = Instant::now();
        let (store, stop, found) = (store.clone(), stop.clone(), found.clone());
        let pressure = yield_to.clone();
        let busy = move || pressure.level() > Level::Calm;
        let pass =
            tokio::task::spawn_blocking(move || store.scrub_pass(&settings, &stop, &found, &busy))
                .await;
        match pass {
            Ok(Ok(r)) => tracing::info!(
                blobs_ok = r.blobs_ok,
                bytes = r.bytes_verified,
                damaged = r.damaged,
                awaiting_repair = r.awaiting_repair,
                secs = started.elapsed().as_secs(),
                "scrub pass done"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "scrub pass failed"),
            Err(e) => tracing::error!(error = %e, "scrub pass panicked"),
        }
        tokio::time::sleep(settings.interval).await;
    }
}

impl Store {
    /// Verifies every stored blob once, at `settings.mib_per_s`; blocks the
    /// thread for the whole pass (run it with `spawn_blocking`). A blob found
    /// corrupt or missing is marked damaged, its files are removed, and `found`
    /// grows by one. Returns early, with what was done, once `stop` is set.
    /// While `busy` says so, it pauses between verified blocks.
    ///
    /// The reading and hashing, an hour of it every hour on a large store, run
    /// on a thread of their own under `SCHED_IDLE` ([`crate::background`]): a
    /// browser's request takes the core from it at once. That thread only
    /// opens, reads and hashes files, one blob at a time as the calling thread
    /// asks; everything else stays on the calling thread, whose priority is
    /// the daemon's: the index's lookups (sled's reads share a lock with its
    /// writes) and the writes (a mark cleared, a damaged blob removed under
    /// the store's write lock). A thread the kernel may leave off the CPU for
    /// long must hold nothing that others wait on.
    pub fn scrub_pass(
        &self,
        settings: &ScrubSettings,
        stop: &AtomicBool,
        found: &AtomicU64,
        busy: &(dyn Fn() -> bool + Sync),
    ) -> Result<ScrubReport, StoreError> {
        let done = AtomicBool::new(false);
        let halted = || stop.load(Ordering::Relaxed) || done.load(Ordering::Relaxed);
        std::thread::scope(|scope| {
            // Set however the pass ends (an error, a panic), so that the
            // reader stops within one block.
            let _done = SetOnDrop(&done);
            let (ask, asked) = mpsc::sync_channel(0);
            let (answer, answered) = mpsc::sync_channel(0);
            std::thread::Builder::new()
                .name("cartable-scrub".into())
                .spawn_scoped(scope, move || {
                    crate::background::idle_this_thread();
                    self.read_asked(settings, asked, answer, &halted, busy);
                })
                .map_err(|e| StoreError::Io {
                    path: self.layout.blobs_dir(),
                    source: e,
                })?;
            self.judge_pass(&ask, &answered, &halted, found)
        })
    }

    /// The calling thread's half of a pass: every blob looked up, asked of
    /// the reader, and what it found written down.
    fn judge_pass(
        &self,
        ask: &SyncSender<(BlobHash, u64)>,
        answered: &Receiver<Answer>,
        halted: &dyn Fn() -> bool,
        found: &AtomicU64,
    ) -> Result<ScrubReport, StoreError> {
        let mut report = ScrubReport::default();
        for (hash, size) in self.index().blobs().map_err(|e| self.index_err(e))? {
            if halted() {
                break;
            }
            if !self.index().is_referenced(&hash) && !self.index().is_cached(&hash) {
                // An orphan: `check` deletes those.
                continue;
            }
            let seen = stamp(&self.layout.blob(&hash));
            if seen.is_none() && self.index().is_damaged(&hash) {
                report.awaiting_repair += 1;
                continue;
            }
            // No answer: the reader stopped (halted, or gone).
            let answer = ask
                .send((hash, size))
                .ok()
                .and_then(|()| answered.recv().ok());
            let Some(Some(read)) = answer else {
                break;
            };
            if halted() {
                break;
            }
            match self.judge(&hash, seen, read)? {
                Verdict::Whole => {
                    report.blobs_ok += 1;
                    report.bytes_verified += size;
                }
                Verdict::Removed => {
                    report.damaged += 1;
                    found.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Skipped => {}
            }
        }
        Ok(report)
    }

    /// The reader's half of a pass: each blob asked, read at the pace, until
    /// the calling thread stops asking or stops listening.
    fn read_asked(
        &self,
        settings: &ScrubSettings,
        asked: Receiver<(BlobHash, u64)>,
        answer: SyncSender<Answer>,
        halted: &dyn Fn() -> bool,
        busy: &dyn Fn() -> bool,
    ) {
        let mut pace = Pace::new(settings.mib_per_s, Instant::now());
        for (hash, size) in asked {
            let read = self.read_blob(&hash, size, &mut pace, halted, busy);
            if answer.send(read).is_err() {
                break;
            }
        }
    }

    /// Held bundles with at least one blob missing or damaged: the ones to fetch
    /// again from replicas (a fetch copies only what is missing).
    pub fn incomplete_bundles(&self) -> Result<Vec<BundleId>, StoreError> {
        let mut incomplete = Vec::new();
        for bundle in self.bundles()? {
            let manifest = match self.manifest(&bundle.id) {
                Ok(Some(m)) => m,
                // Removed since it was listed.
                Ok(None) => continue,
                // A fetch does not rewrite a manifest, so listing it would not help.
                Err(e) => {
                    tracing::error!(bundle = %bundle.id, error = %e, "unreadable manifest");
                    continue;
                }
            };
            if manifest
                .entries()
                .iter()
                .any(|e| !self.has_blob_file(&e.hash, e.size))
            {
                incomplete.push(bundle.id);
            }
        }
        Ok(incomplete)
    }

    /// Reads one blob through the verified read path, paced; `None` if the
    /// pass halted meanwhile. Touches neither the index nor any lock.
    fn read_blob(
        &self,
        hash: &BlobHash,
        size: u64,
        pace: &mut Pace,
        halted: &dyn Fn() -> bool,
        busy: &dyn Fn() -> bool,
    ) -> Answer {
        let verified = self
            .open_blob(hash, size)
            .map_err(VerifyError::Io)
            .and_then(|files| {
                files.read_verified(0..size, |piece| {
                    std::thread::sleep(pace.after(piece.len() as u64, Instant::now()));
                    while busy() && !halted() {
                        std::thread::sleep(YIELD_PAUSE);
                    }
                    !halted()
                })
            });
        (!halted()).then_some(verified)
    }

    /// What a read found, written down.
    fn judge(
        &self,
        hash: &BlobHash,
        seen: Stamp,
        read: Result<(), VerifyError>,
    ) -> Result<Verdict, StoreError> {
        match read {
            Ok(()) => {
                // A mark left by a passing failure (a full file table, say) on
                // a blob that is whole after all.
                if self.index().is_damaged(hash) {
                    self.index()
                        .clear_damaged(hash)
                        .map_err(|e| self.index_err(e))?;
                }
                Ok(Verdict::Whole)
            }
            Err(e) if e.shows_damage() => self.remove_damaged(hash, seen, &e.to_string()),
            Err(e) => {
                tracing::warn!(blob = %hash, error = %e, "scrub: cannot read blob now, retried next pass");
                Ok(Verdict::Skipped)
            }
        }
    }

    /// Marks a blob that failed verification and removes its files, unless it
    /// changed while being read (repaired, or removed with its bundle): the next
    /// pass judges the new state.
    fn remove_damaged(
        &self,
        hash: &BlobHash,
        seen: Stamp,
        why: &str,
    ) -> Result<Verdict, StoreError> {
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        if stamp(&self.layout.blob(hash)) != seen || self.index().blob_size(hash).is_none() {
            return Ok(Verdict::Skipped);
        }
        if !self.index().is_referenced(hash) {
            // Only kept as cache: forgotten, a browser's next request fetches it again.
            tracing::error!(blob = %hash, reason = why, "scrub: cached blob damaged, dropped");
            self.delete_blobs(&[*hash])?;
            return Ok(Verdict::Removed);
        }
        tracing::error!(blob = %hash, reason = why, "scrub: blob damaged, removed for repair");
        // Marked first: if the mark cannot be recorded, the files stay and the
        // next pass tries again.
        self.index()
            .mark_damaged(hash, why)
            .map_err(|e| self.index_err(e))?;
        for path in [self.layout.blob(hash), self.layout.outboard(hash)] {
            layout::remove_if_present(&path).map_err(io_at(&path))?;
        }
        Ok(Verdict::Removed)
    }
}

/// Spaces reads out to a byte rate: each block read is due `len / rate` after
/// the previous one. Time spent not reading (waiting for the lock, opening
/// files) is not made up later in a burst.
#[derive(Debug)]
struct Pace {
    /// 0: no limit.
    bytes_per_s: u64,
    /// When the bytes read so far are paid for.
    paid_until: Instant,
}

impl Pace {
    fn new(mib_per_s: u64, now: Instant) -> Self {
        Self {
            bytes_per_s: mib_per_s.saturating_mul(1 << 20),
            paid_until: now,
        }
    }

    /// How long to wait, at `now`, after reading `bytes`.
    fn after(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.bytes_per_s == 0 {
            return Duration::ZERO;
        }
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_s);
        let cost = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.paid_until = (self.paid_until + cost).max(now);
        self.paid_until - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: u64 = 256 * 1024;

    #[test]
    fn reads_are_spaced_to_the_rate() {
        let t0 = Instant::now();
        let mut pace = Pace::new(1, t0);
        // 256 KiB at 1 MiB/s is a quarter of a second.
        assert_eq!(pace.after(BLOCK, t0), Duration::from_millis(250));
        // Read right after the wait: the next block waits its own share.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(pace.after(BLOCK, t1), Duration::from_millis(250));
        // A read that took 100 ms of the share leaves 150 ms to wait.
        let t2 = t1 + Duration::from_millis(350);
        assert_eq!(pace.after(BLOCK, t2), Duration::from_millis(150));
    }

    #[test]
    fn time_lost_is_not_made_up_in_a_burst() {
        let t0 = Instant::now();
        let mut pace = Pace::new(16, t0);
        let later = t0 + Duration::from_secs(60);
        // Far behind schedule: no wait, and no credit either.
        assert_eq!(pace.after(BLOCK, later), Duration::ZERO);
        let share = Duration::from_nanos(15_625_000);
        assert_eq!(pace.after(BLOCK, later), share);
        assert_eq!(pace.after(BLOCK, later), share * 2);
    }

    #[test]
    fn zero_lifts_the_limit_and_huge_rates_do_not_overflow() {
        let now = Instant::now();
        assert_eq!(Pace::new(0, now).after(u64::MAX, now), Duration::ZERO);
        assert_eq!(Pace::new(u64::MAX, now).after(BLOCK, now), Duration::ZERO);
    }

    #[test]
    fn defaults_are_gentle_and_hourly() {
        let d = ScrubSettings::default();
        assert_eq!(d.mib_per_s, 16);
        assert_eq!(d.interval, Duration::from_secs(3600));
    }
}
