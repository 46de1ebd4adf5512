//! A change's sync runs with the state's lock released: browsers' redirects
//! and heartbeats, which take the same lock, do not wait on the disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cartable_net::identity::Identity;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_proto::control;

use crate::Coordinator;
use crate::config::CoordinatorConfig;
use crate::lifecycle::Eligibility;
use crate::state::{Cluster, Kv, MemoryKv, kv::Rows};

/// Tables in memory whose sync takes as long as a spinning disk's on a bad day.
#[derive(Debug, Default)]
struct SlowDisk {
    tables: MemoryKv,
    syncing: AtomicBool,
}

const SYNC: Duration = Duration::from_secs(1);

impl Kv for SlowDisk {
    fn scan(&self, table: &str) -> anyhow::Result<Rows> {
        self.tables.scan(table)
    }
    fn put(&self, table: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.tables.put(table, key, value)
    }
    fn delete(&self, table: &str, key: &[u8]) -> anyhow::Result<()> {
        self.tables.delete(table, key)
    }
    fn flush(&self) -> anyhow::Result<()> {
        self.syncing.store(true, Ordering::SeqCst);
        std::thread::sleep(SYNC);
        self.syncing.store(false, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn a_slow_sync_does_not_hold_up_the_state() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let identity = Identity::load_or_create(dir.path())?;
    let config = CoordinatorConfig::from_toml("")?;
    let endpoint = PeerEndpoint::bind_for(
        "127.0.0.1:0".parse()?,
        &identity,
        Members::anyone(),
        control::ALPN,
        config.quic_limits,
    )?;
    let quic = endpoint.local_addr()?;
    let disk = Arc::new(SlowDisk::default());
    let cluster = Cluster::load(Box::new(disk.clone()), Instant::now())?;
    let coord = Arc::new(Coordinator::new(
        cluster,
        config,
        identity,
        endpoint,
        "https://127.0.0.1:1".into(),
        quic,
    ));
    // A busy machine may pause this thread past the whole sync before it
    // asks: such a look proves nothing and is taken again.
    for _ in 0..3 {
        let ticking = std::thread::spawn({
            let coord = coord.clone();
            move || coord.tick(&mut Eligibility::default())
        });
        let started = Instant::now();
        while !disk.syncing.load(Ordering::SeqCst) {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "the tick never synced"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // What a browser's redirect does first: take the lock to read the names.
        let asked = Instant::now();
        let names = coord.names();
        let waited = asked.elapsed();
        let during = disk.syncing.load(Ordering::SeqCst);
        drop(names);
        ticking.join().expect("the tick")?;
        assert!(
            waited < SYNC / 2,
            "the state's lock was held {waited:?} by a sync of {SYNC:?}"
        );
        if during {
            return Ok(());
        }
    }
    anyhow::bail!("never got the lock while a sync was under way")
}
