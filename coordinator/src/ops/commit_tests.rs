//! A change's sync runs with the state's lock released: browsers' redirects
//! and heartbeats, which take the same lock, do not wait on the disk.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cartable_net::identity::Identity;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_proto::api::PlanChange;
use cartable_proto::{BlobHash, BundleId, BundlePath, Manifest, ManifestEntry, NodeId, control};

use crate::Coordinator;
use crate::config::CoordinatorConfig;
use crate::lifecycle::Eligibility;
use crate::ops::publish::PublishRequest;
use crate::state::{BundleRecord, Cluster, Kv, Liveness, MemoryKv, NodeRecord, kv::Rows};

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

/// A coordinator over `cluster`, its QUIC endpoint bound to a free port.
fn coordinator(dir: &Path, cluster: Cluster) -> anyhow::Result<Arc<Coordinator>> {
    let identity = Identity::load_or_create(dir)?;
    let config = CoordinatorConfig::from_toml("")?;
    let endpoint = PeerEndpoint::bind_for(
        "127.0.0.1:0".parse()?,
        &identity,
        Members::anyone(),
        control::ALPN,
        config.quic_limits,
    )?;
    let quic = endpoint.local_addr()?;
    Ok(Arc::new(Coordinator::new(
        cluster,
        config,
        identity,
        endpoint,
        "https://127.0.0.1:1".into(),
        quic,
    )))
}

#[tokio::test]
async fn a_slow_sync_does_not_hold_up_the_state() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = Arc::new(SlowDisk::default());
    let cluster = Cluster::load(Box::new(disk.clone()), Instant::now())?;
    let coord = coordinator(dir.path(), cluster)?;
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

/// A cluster big enough that a plan takes a while: `nodes` nodes over 13
/// regions of 8 sites, and `bundles` bundles of three copies.
fn big_cluster(nodes: u16, bundles: u32) -> anyhow::Result<Cluster> {
    let mut c = Cluster::load(Box::new(MemoryKv::default()), Instant::now())?;
    let contact = control::Contact {
        https_url: "https://127.0.0.1:1".into(),
        quic: "127.0.0.1:2".parse()?,
        https_cert_sha256: String::new(),
    };
    for i in 0..nodes {
        let mut id = [0u8; 32];
        id[..2].copy_from_slice(&i.to_le_bytes());
        let id = NodeId::from_bytes(id);
        let (region, site) = (format!("r{}", i % 13), format!("s{}", i % 104));
        c.save_node(NodeRecord::joined(
            id,
            &region,
            &site,
            1 << 40,
            contact.clone(),
        ))?;
        // Up: heard from just now.
        c.live.insert(id, Liveness::heard(Instant::now()));
    }
    for i in 0..bundles {
        let record = BundleRecord {
            size: 1 << 20,
            files: 1,
            replicas: 3,
            ..BundleRecord::default()
        };
        c.save_bundle(BundleId::of_manifest(&i.to_le_bytes()), record)?;
    }
    Ok(c)
}

/// Runs `work` on another thread, on a coordinator whose cluster is big
/// enough that a plan takes a while (its copies placed by a first tick),
/// while this one takes the state's lock every millisecond, as browsers'
/// redirects do, and asks that no wait for the lock be longer than
/// `1 / share` of `work`. A busy
/// machine may pause this thread while it holds or asks for the lock, or make
/// `work` too short to tell: such a look is taken again, up to three, `work`
/// being told which.
fn lock_free_during(
    what: &str,
    share: u32,
    work: impl Fn(&Coordinator, u8) -> anyhow::Result<()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coord = coordinator(dir.path(), big_cluster(300, 40_000)?)?;
    coord.tick(&mut Eligibility::default())?;
    let work = Arc::new(work);
    let mut looks = Vec::new();
    for look in 0..3 {
        let working = std::thread::spawn({
            let (work, coord) = (work.clone(), coord.clone());
            move || {
                let started = Instant::now();
                work(&coord, look).map(|()| started.elapsed())
            }
        });
        let mut longest = Duration::ZERO;
        while !working.is_finished() {
            let asked = Instant::now();
            drop(coord.names());
            longest = longest.max(asked.elapsed());
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = working.join().expect("the work")?;
        if took > Duration::from_millis(150) && longest < took / share {
            return Ok(());
        }
        looks.push((longest, took));
    }
    panic!("the state's lock was held this long during {what}: {looks:?}")
}

#[tokio::test]
async fn a_long_plan_does_not_hold_up_the_state() -> anyhow::Result<()> {
    // Ticks that re-plan and move nothing.
    // Nothing of every bundle is walked under the lock: a 20th is far above it.
    lock_free_during("ticks", 20, |coord, _| {
        coord.lock().needs_plan = true;
        coord.tick(&mut Eligibility::default())
    })
}

#[tokio::test]
async fn a_publish_plans_without_holding_up_the_state() -> anyhow::Result<()> {
    lock_free_during("publishes", 20, |coord, look| {
        let manifest = Manifest::new(vec![ManifestEntry {
            path: BundlePath::new(format!("lesson-{look}.html"))?,
            hash: BlobHash::of(&[look]),
            size: 1000,
            content_type: "text/html".into(),
        }])?;
        let request = PublishRequest {
            id: manifest.id(),
            manifest: &manifest,
            name: None,
            replicas: None,
        };
        coord.publish(&request)?;
        Ok(())
    })
}

#[tokio::test]
async fn a_plan_preview_does_not_hold_up_the_state() -> anyhow::Result<()> {
    // Nothing of every bundle is walked under the lock, not even what
    // removing nodes would lose.
    lock_free_during("previews", 20, |coord, _| {
        coord.plan(&PlanChange::default());
        Ok(())
    })
}
