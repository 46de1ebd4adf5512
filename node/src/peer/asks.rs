//! What answering peers asks of the store, asked on a thread of its own at the
//! daemon's priority, each peer within its share.
//!
//! Peers are answered on `SCHED_IDLE` threads (see [`crate::background`]), and
//! the store's index, its manifests and its damage marks take locks browsers'
//! threads wait on: a lock held by a thread the kernel keeps off its core
//! stalls everyone queued on it (`benches/README.md`, "A peer's lookups at
//! the daemon's priority"). So they are asked here instead. Not on the
//! daemon's own threads either: handing work to another runtime, and waking
//! a copies' task with the answer, take that runtime's scheduler locks, which
//! its idle workers hold while they park. This thread takes them; a browser's
//! thread never does.
//!
//! What is asked here runs at the daemon's priority, so each peer has a share
//! (a member that lies spends its own, not the others'): [`OUTSTANDING`] asks
//! at once, and while browsers are being served, [`UNITS_BESIDE_BROWSERS`] a
//! second. Past either, the ask is refused at once (the peer is told to come
//! back), never queued: nothing waits holding what others need, and nothing
//! piles up.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use cartable_proto::NodeId;
use tokio::sync::{Semaphore, oneshot};

use super::rate::RateLimit;
use crate::store::Store;

/// Asks one peer may have queued or running at once.
pub const OUTSTANDING: usize = 32;
/// What one peer may ask each second while browsers are being served, in
/// units of one ask's own cost (two threads woken: the sender's CPU grew by
/// 0.01-0.02 s per 1,000 files in `quic-copy --files 10000`, 10-20 µs an
/// ask): a fiftieth of a core per peer at most.
pub const UNITS_BESIDE_BROWSERS: u64 = 1_000;
/// Saved up at most.
const UNITS_BURST: u64 = 256;
/// Lookups in the index that cost about as much as an ask (a lookup's p50 is
/// 1.6-3.8 µs in `idle-lock-inversion`).
const LOOKUPS_PER_UNIT: usize = 16;
/// Peers whose shares are kept; past it, all are forgotten (only a node
/// that lets any key connect meets that many).
const SHARES_KEPT: usize = 4096;

type Ask = Box<dyn FnOnce(&Store) + Send>;

/// Why an ask was not answered.
#[derive(Debug, PartialEq)]
pub enum Unasked {
    /// The peer asks more, or faster, than its share.
    OverShare,
    /// The asking thread is gone, or the ask panicked.
    Stopping,
}

/// What one peer may ask.
#[derive(Debug)]
pub struct Share {
    outstanding: Semaphore,
    beside_browsers: RateLimit,
}

/// The asking thread's queue and the peers' shares; the thread ends when
/// every clone is dropped.
#[derive(Clone, Debug)]
pub struct StoreAsks {
    queue: mpsc::Sender<Ask>,
    shares: Arc<Mutex<HashMap<NodeId, Arc<Share>>>>,
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
            shares: Arc::default(),
        })
    }

    /// `peer`'s share, the same for all its connections.
    pub fn share_of(&self, peer: NodeId) -> Arc<Share> {
        let mut shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if shares.len() >= SHARES_KEPT && !shares.contains_key(&peer) {
            shares.clear();
        }
        let share = shares.entry(peer).or_insert_with(|| {
            Arc::new(Share {
                outstanding: Semaphore::new(OUTSTANDING),
                beside_browsers: RateLimit::with_burst(UNITS_BESIDE_BROWSERS, UNITS_BURST),
            })
        });
        share.clone()
    }

    /// `ask`'s answer, within `share`: `lookups` in the index, paced if
    /// `beside_browsers`.
    pub async fn ask<T: Send + 'static>(
        &self,
        share: &Share,
        lookups: usize,
        beside_browsers: bool,
        ask: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Result<T, Unasked> {
        let _outstanding = share
            .outstanding
            .try_acquire()
            .map_err(|_| Unasked::OverShare)?;
        let units = 1 + (lookups / LOOKUPS_PER_UNIT) as u64;
        if beside_browsers && !share.beside_browsers.try_take(units) {
            return Err(Unasked::OverShare);
        }
        let (answer, answered) = oneshot::channel();
        let asked: Ask = Box::new(move |store| {
            let _ = answer.send(ask(store));
        });
        self.queue.send(asked).map_err(|_| Unasked::Stopping)?;
        answered.await.map_err(|_| Unasked::Stopping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asks() -> anyhow::Result<(StoreAsks, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(Store::open(dir.path())?);
        Ok((StoreAsks::start(store)?, dir))
    }

    fn peer(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    #[tokio::test]
    async fn beside_browsers_a_peer_asks_within_its_pace_and_others_keep_theirs()
    -> anyhow::Result<()> {
        let (asks, _dir) = asks()?;
        let (liar, honest) = (asks.share_of(peer(1)), asks.share_of(peer(2)));
        // A "has" of the most hashes is 129 units: the burst of 256 allows
        // one or two (with what comes back meanwhile, 1 unit a millisecond).
        let has = |share| asks.ask(share, 2048, true, |_| ());
        let mut answered = 0;
        while has(&liar).await.is_ok() {
            answered += 1;
            assert!(answered < 10, "not paced");
        }
        // Right after, its other connections are refused too (the next "has"
        // would come back in 129 ms); another peer has its own pace.
        let again = asks.share_of(peer(1));
        assert_eq!(has(&again).await, Err(Unasked::OverShare));
        assert_eq!(has(&honest).await, Ok(()));
        // Without browsers to serve, nothing is paced.
        for _ in 0..4 {
            assert_eq!(asks.ask(&liar, 2048, false, |_| ()).await, Ok(()));
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_peer_has_a_bounded_number_of_asks_outstanding() -> anyhow::Result<()> {
        let (asks, _dir) = asks()?;
        let (liar, honest) = (asks.share_of(peer(1)), asks.share_of(peer(2)));
        let spawn_ask = |share: &Arc<Share>, ask: Box<dyn FnOnce(&Store) -> u8 + Send>| {
            let (asks, share) = (asks.clone(), share.clone());
            tokio::spawn(async move { asks.ask(&share, 1, false, ask).await })
        };
        // The thread is held by the first ask until the end.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let mut waiting = vec![spawn_ask(
            &liar,
            Box::new(move |_| held.recv().map_or(0, |()| 1)),
        )];
        for _ in 1..OUTSTANDING {
            waiting.push(spawn_ask(&liar, Box::new(|_| 1)));
        }
        tokio::task::yield_now().await;
        // Refused at once, not queued behind the held thread.
        let refused = asks.ask(&liar, 1, false, |_| ());
        let refused = tokio::time::timeout(std::time::Duration::from_secs(10), refused).await;
        assert_eq!(refused, Ok(Err(Unasked::OverShare)));
        // Another peer is not refused: its ask queues behind the others.
        let theirs = spawn_ask(&honest, Box::new(|_| 7));
        release.send(())?;
        assert_eq!(theirs.await?, Ok(7));
        for w in waiting {
            assert_eq!(w.await?, Ok(1));
        }
        Ok(())
    }

    #[tokio::test]
    async fn an_ask_that_panics_costs_only_its_own_answer() -> anyhow::Result<()> {
        let (asks, _dir) = asks()?;
        let share = asks.share_of(peer(1));
        let panics = asks.ask(&share, 1, false, |_| -> u8 { panic!("a bug") });
        assert_eq!(panics.await, Err(Unasked::Stopping));
        assert_eq!(asks.ask(&share, 1, false, |_| 2).await, Ok(2));
        Ok(())
    }
}
