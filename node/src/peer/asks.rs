//! What answering peers asks of the store, asked on a thread of its own at the
//! daemon's priority, at a capped pace.
//!
//! Peers are answered on `SCHED_IDLE` threads (see [`crate::background`]), and
//! the store's index, its manifests and its damage marks take locks browsers'
//! threads wait on: a lock held by a thread the kernel keeps off its core
//! stalls everyone queued on it (`benches/README.md`, "A peer's lookups at
//! the daemon's priority"). So they are asked here instead. Not on the
//! daemon's own threads either: handing work to another runtime, and waking
//! a copies' task with the answer, take that runtime's scheduler locks, which
//! its idle workers hold while they park. This thread takes them; a browser's
//! thread never does. And a member that lies could otherwise buy the daemon's
//! CPU with idle-priority requests (one "has" is up to 2,048 lookups): what
//! peers ask is capped at [`LOOKUPS_PER_SEC`], well above a copy of 10,000
//! small files a second, and waits for its turn on the copies' side.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::rate::RateLimit;
use crate::store::Store;

/// Lookups in the index peers may ask for each second, all together: about a
/// twentieth of a core.
const LOOKUPS_PER_SEC: u64 = 50_000;
/// Saved up at most: one "has" of the most hashes, twice.
const LOOKUPS_BURST: u64 = 4096;

type Ask = Box<dyn FnOnce(&Store) + Send>;

/// The asking thread's queue; the thread ends when every clone is dropped.
#[derive(Clone, Debug)]
pub struct StoreAsks {
    queue: mpsc::Sender<Ask>,
    pace: Arc<RateLimit>,
}

impl StoreAsks {
    /// Starts the thread, which inherits the caller's scheduling policy: call
    /// this from one of the daemon's threads, never from the copies'.
    pub fn start(store: Arc<Store>) -> std::io::Result<Self> {
        let (queue, asked) = mpsc::channel::<Ask>();
        std::thread::Builder::new()
            .name("cartable-asks".into())
            .spawn(move || {
                while let Ok(ask) = asked.recv() {
                    // One ask's panic costs its peer an answer, not the others theirs.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| ask(&store)));
                }
            })?;
        Ok(Self {
            queue,
            pace: Arc::new(RateLimit::with_burst(LOOKUPS_PER_SEC, LOOKUPS_BURST)),
        })
    }

    /// `ask`'s answer, counted as `lookups` against the pace; `None` if the
    /// thread is gone or `ask` panicked.
    pub async fn ask<T: Send + 'static>(
        &self,
        lookups: usize,
        ask: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Option<T> {
        let wait = self.pace.reserve(lookups as u64);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let (answer, answered) = oneshot::channel();
        let asked: Ask = Box::new(move |store| {
            let _ = answer.send(ask(store));
        });
        self.queue.send(asked).ok()?;
        answered.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn store() -> anyhow::Result<(Arc<Store>, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        Ok((Arc::new(Store::open(dir.path())?), dir))
    }

    #[tokio::test]
    async fn lookups_past_the_burst_wait_for_the_pace() -> anyhow::Result<()> {
        let (store, _dir) = store()?;
        // Before the pace starts counting, which it does from the start.
        let start = Instant::now();
        let asks = StoreAsks::start(store)?;
        let burst = LOOKUPS_BURST as usize;
        assert_eq!(
            asks.ask(burst, |store| store.bundles().ok()).await,
            Some(Some(vec![]))
        );
        asks.ask(5_000, |_| ()).await;
        // 5,000 lookups past the burst, at 50,000 a second.
        assert!(
            start.elapsed() >= Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
        Ok(())
    }

    #[tokio::test]
    async fn an_ask_that_panics_costs_only_its_own_answer() -> anyhow::Result<()> {
        let (store, _dir) = store()?;
        let asks = StoreAsks::start(store)?;
        assert_eq!(asks.ask(1, |_| -> u8 { panic!("a bug") }).await, None);
        assert_eq!(asks.ask(1, |_| 2).await, Some(2));
        Ok(())
    }
}
