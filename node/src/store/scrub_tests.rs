//! The scrub on a real data folder: damage found, marked and removed; the
//! bundle listed as incomplete, answered 503, and restored by a fetch.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cartable_proto::ManifestEntry;

use super::*;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

const BIG: usize = 300_000;

/// A store holding two bundles: `a` (a large and a small file) and `b` (one
/// small file).
struct Fixture {
    store: Arc<Store>,
    a: BundleId,
    b: BundleId,
    /// The data folder, then the two lessons' folders.
    dirs: [tempfile::TempDir; 3],
}

impl Fixture {
    fn new() -> anyhow::Result<Self> {
        let dirs = [
            tempfile::tempdir()?,
            tempfile::tempdir()?,
            tempfile::tempdir()?,
        ];
        fs::write(dirs[1].path().join("big.bin"), pattern(BIG, 1))?;
        fs::write(dirs[1].path().join("small.txt"), b"a small file")?;
        fs::write(dirs[2].path().join("other.txt"), b"another lesson")?;
        let store = Arc::new(Store::open(dirs[0].path())?);
        let a = store.add_folder(dirs[1].path())?.summary.id;
        let b = store.add_folder(dirs[2].path())?.summary.id;
        Ok(Self { store, a, b, dirs })
    }

    fn entry(&self, bundle: &BundleId, path: &str) -> anyhow::Result<ManifestEntry> {
        let manifest = self.store.manifest(bundle)?.expect("bundle held");
        Ok(manifest.entry(path).expect("file in bundle").clone())
    }

    fn lesson_dir(&self) -> &Path {
        self.dirs[1].path()
    }

    /// One unthrottled pass, and what it counted.
    fn scrub(&self) -> anyhow::Result<(ScrubReport, u64)> {
        let found = AtomicU64::new(0);
        let settings = ScrubSettings {
            mib_per_s: 0,
            ..ScrubSettings::default()
        };
        let report = self
            .store
            .scrub_pass(&settings, &AtomicBool::new(false), &found, &|| false)?;
        Ok((report, found.load(Ordering::Relaxed)))
    }
}

fn flip_byte(path: &Path, at: usize) -> anyhow::Result<()> {
    let mut bytes = fs::read(path)?;
    bytes[at] ^= 0x01;
    fs::write(path, bytes)?;
    Ok(())
}

#[test]
fn a_clean_store_scrubs_clean() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let (report, found) = f.scrub()?;
    let bytes = (BIG + b"a small file".len() + b"another lesson".len()) as u64;
    let expected = ScrubReport {
        blobs_ok: 3,
        bytes_verified: bytes,
        damaged: 0,
        awaiting_repair: 0,
    };
    assert_eq!(report, expected);
    assert_eq!(found, 0);
    assert!(f.store.incomplete_bundles()?.is_empty());
    Ok(())
}

/// Damages the big file of bundle `a` with `damage`, scrubs, and checks the
/// blob was found, marked and removed, with bundle `b` untouched.
fn damage_is_found(
    damage: impl Fn(&Store, &ManifestEntry) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let big = f.entry(&f.a, "big.bin")?;
    damage(&f.store, &big)?;
    let (report, found) = f.scrub()?;
    assert_eq!(
        (report.damaged, report.blobs_ok, found),
        (1, 2, 1),
        "{report:?}"
    );
    assert!(f.store.is_damaged(&big.hash));
    assert!(!f.store.layout().blob(&big.hash).exists());
    assert!(!f.store.layout().outboard(&big.hash).exists());
    assert!(!f.store.has_blob_file(&big.hash, big.size));
    assert_eq!(
        f.store.blob_size(&big.hash),
        None,
        "peers are told it is not held"
    );
    assert_eq!(f.store.incomplete_bundles()?, [f.a]);
    let other = f.entry(&f.b, "other.txt")?;
    assert!(f.store.has_blob_file(&other.hash, other.size));
    // The next pass knows it is waiting for a repair and counts it once only.
    let (again, found) = f.scrub()?;
    assert_eq!((again.damaged, again.awaiting_repair, found), (0, 1, 0));
    Ok(())
}

#[test]
fn a_flipped_byte_in_a_blob_is_found_and_removed() -> anyhow::Result<()> {
    damage_is_found(|store, e| flip_byte(&store.layout().blob(&e.hash), 200_000))
}

#[test]
fn a_flipped_byte_in_an_outboard_is_found_and_removed() -> anyhow::Result<()> {
    damage_is_found(|store, e| flip_byte(&store.layout().outboard(&e.hash), 40))
}

#[test]
fn a_removed_blob_file_is_found() -> anyhow::Result<()> {
    damage_is_found(|store, e| Ok(fs::remove_file(store.layout().blob(&e.hash))?))
}

#[test]
fn a_truncated_blob_is_found() -> anyhow::Result<()> {
    damage_is_found(|store, e| {
        let file = fs::File::options()
            .write(true)
            .open(store.layout().blob(&e.hash))?;
        Ok(file.set_len(e.size - 1)?)
    })
}

#[test]
fn a_damaged_small_blob_is_found() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let small = f.entry(&f.a, "small.txt")?;
    flip_byte(&f.store.layout().blob(&small.hash), 0)?;
    let (report, found) = f.scrub()?;
    assert_eq!((report.damaged, found), (1, 1));
    assert!(!f.store.layout().blob(&small.hash).exists());
    assert_eq!(f.store.incomplete_bundles()?, [f.a]);
    Ok(())
}

#[test]
fn a_stale_mark_on_a_whole_blob_is_cleared() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let big = f.entry(&f.a, "big.bin")?;
    f.store
        .mark_damaged(&big.hash, "cannot open: too many open files");
    assert_eq!(f.store.incomplete_bundles()?, [f.a]);
    let (report, found) = f.scrub()?;
    assert_eq!((report.blobs_ok, found), (3, 0));
    assert!(!f.store.is_damaged(&big.hash));
    assert!(f.store.incomplete_bundles()?.is_empty());
    Ok(())
}

#[test]
fn a_stopped_pass_judges_nothing() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    flip_byte(&f.store.layout().blob(&f.entry(&f.a, "big.bin")?.hash), 0)?;
    let found = AtomicU64::new(0);
    let report = f.store.scrub_pass(
        &ScrubSettings::default(),
        &AtomicBool::new(true),
        &found,
        &|| false,
    )?;
    assert_eq!(report, ScrubReport::default());
    assert!(f.store.incomplete_bundles()?.is_empty());
    Ok(())
}

#[test]
fn a_blob_fetched_again_is_no_longer_damaged() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let small = f.entry(&f.a, "small.txt")?;
    flip_byte(&f.store.layout().blob(&small.hash), 3)?;
    f.scrub()?;
    // What a fetch from a replica does once the bytes are verified.
    let mut partial = f.store.partial(&small.hash, small.size)?;
    partial.write_group(0, b"a small file")?;
    f.store.commit_partial(partial)?;
    assert!(!f.store.is_damaged(&small.hash));
    assert_eq!(f.store.blob_size(&small.hash), Some(small.size));
    assert!(f.store.incomplete_bundles()?.is_empty());
    assert_eq!(f.scrub()?.0.blobs_ok, 3);
    Ok(())
}

#[test]
fn adding_the_folder_again_repairs_it() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let big = f.entry(&f.a, "big.bin")?;
    flip_byte(&f.store.layout().blob(&big.hash), 7)?;
    f.scrub()?;
    let report = f.store.add_folder(f.lesson_dir())?;
    assert_eq!(report.new_bytes, big.size);
    assert!(!f.store.is_damaged(&big.hash));
    assert!(f.store.incomplete_bundles()?.is_empty());
    Ok(())
}

#[test]
fn a_damaged_cached_blob_is_dropped_from_the_cache() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let data = pattern(20_000, 9);
    let hash = BlobHash::of(&data);
    let mut partial = f.store.partial(&hash, data.len() as u64)?;
    partial.write_group(0, &data[..16_384])?;
    partial.write_group(16_384, &data[16_384..])?;
    // The outboard pairs are not written here, so the cached copy fails verification.
    f.store.commit_partial(partial)?;
    f.store.use_cached(&hash, data.len() as u64, 1 << 20)?;
    let (report, found) = f.scrub()?;
    assert_eq!((report.damaged, found), (1, 1));
    assert!(!f.store.layout().blob(&hash).exists());
    assert!(
        !f.store.is_damaged(&hash),
        "forgotten, not waiting for a repair"
    );
    assert!(f.store.incomplete_bundles()?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_removed_blob_answers_503_and_nothing_panics() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let ctx = Arc::new(crate::serve::ServeContext::new(f.store.clone()));
    let get = |path: &str| {
        let uri = format!("/b/{path}");
        crate::serve::respond(
            ctx.clone(),
            http::Request::get(uri)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
    };
    let big = f.entry(&f.a, "big.bin")?;
    flip_byte(&f.store.layout().blob(&big.hash), 1)?;
    f.scrub()?;
    let (a, b) = (f.a, f.b);
    assert_eq!(get(&format!("{a}/big.bin")).await.status(), 503);
    assert_eq!(get(&format!("{a}/small.txt")).await.status(), 200);
    // Deleted behind the store's back, not yet scrubbed: 503 as well...
    let other = f.entry(&b, "other.txt")?;
    fs::remove_file(f.store.layout().blob(&other.hash))?;
    assert_eq!(get(&format!("{b}/other.txt")).await.status(), 503);
    // ...unless read lately: its verified bytes answer from memory until the
    // scrub finds the file gone.
    let small = f.entry(&a, "small.txt")?;
    fs::remove_file(f.store.layout().blob(&small.hash))?;
    assert_eq!(get(&format!("{a}/small.txt")).await.status(), 200);
    f.scrub()?;
    assert_eq!(get(&format!("{a}/small.txt")).await.status(), 503);
    Ok(())
}

#[tokio::test]
async fn scrub_forever_counts_what_it_finds_and_stops_when_dropped() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    fs::remove_file(f.store.layout().blob(&f.entry(&f.b, "other.txt")?.hash))?;
    let found = Arc::new(AtomicU64::new(0));
    let settings = ScrubSettings {
        mib_per_s: 0,
        interval: Duration::from_millis(10),
    };
    let calm = cartable_net::https::shed::Pressure::new(8);
    let task = tokio::spawn(scrub_forever(
        f.store.clone(),
        settings,
        found.clone(),
        calm,
    ));
    // Several passes run; the one blob is counted once.
    for _ in 0..1000 {
        if found.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    assert_eq!(found.load(Ordering::Relaxed), 1);
    assert_eq!(f.store.incomplete_bundles()?, [f.b]);
    Ok(())
}

use crate::peer::fetch::{FetchOptions, fetch_bundle};
use crate::peer::testing::Answering;

/// Fetches `id` from `from` into `into`: the bytes received.
async fn fetch(from: &Answering, into: &Arc<Store>, id: BundleId) -> anyhow::Result<u64> {
    let peers = [from.peer];
    let report = fetch_bundle(
        &from.client,
        into.clone(),
        id,
        &peers,
        FetchOptions::default(),
    );
    Ok(report.await?.bytes_received)
}

fn answering(store: &Arc<Store>) -> anyhow::Result<Answering> {
    Answering::start(store.clone(), &tokio::runtime::Handle::current())
}

#[tokio::test]
async fn a_scrubbed_blob_is_restored_by_a_fetch_from_a_healthy_peer() -> anyhow::Result<()> {
    // The same lessons, so the same bundle ids, on two nodes.
    let (healthy, damaged) = (Fixture::new()?, Fixture::new()?);
    let serving = answering(&healthy.store)?;
    let big = damaged.entry(&damaged.a, "big.bin")?;
    flip_byte(&damaged.store.layout().blob(&big.hash), 123_456)?;
    damaged.scrub()?;
    for id in damaged.store.incomplete_bundles()? {
        assert_eq!(
            fetch(&serving, &damaged.store, id).await?,
            big.size,
            "only the removed blob is fetched"
        );
    }
    assert!(!damaged.store.is_damaged(&big.hash));
    assert!(damaged.store.incomplete_bundles()?.is_empty());
    assert_eq!(damaged.scrub()?, healthy.scrub()?, "whole again");
    Ok(())
}

#[tokio::test]
async fn a_copy_commits_a_blob_a_fetch_through_left_complete() -> anyhow::Result<()> {
    let healthy = Fixture::new()?;
    let serving = answering(&healthy.store)?;
    let data = tempfile::tempdir()?;
    let store = Arc::new(Store::open(data.path())?);
    // A browser's fetch-through verified every group of the big file, then
    // the browser went away before the blob was committed.
    let big = healthy.entry(&healthy.a, "big.bin")?;
    let [partial_data, partial_outboard, groups] = store.partial_paths(&big.hash);
    fs::create_dir_all(store.layout().partial_dir())?;
    fs::copy(healthy.store.layout().blob(&big.hash), partial_data)?;
    fs::copy(healthy.store.layout().outboard(&big.hash), partial_outboard)?;
    fs::write(
        groups,
        vec![1u8; big.size.div_ceil(cartable_proto::wire::GROUP_BYTES) as usize],
    )?;

    let received = fetch(&serving, &store, healthy.a).await?;
    let small = healthy.entry(&healthy.a, "small.txt")?;
    assert_eq!(received, small.size, "the big file is not fetched again");
    assert!(store.has_blob_file(&big.hash, big.size));
    let files = store.open_blob(&big.hash, big.size)?;
    let mut read = Vec::new();
    files.read_verified(0..big.size, |b| {
        read.extend_from_slice(&b);
        true
    })?;
    assert_eq!(read, pattern(BIG, 1));
    Ok(())
}

#[test]
fn a_scrub_waits_while_browsers_wait() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    let started = std::time::Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stopper.store(true, Ordering::Relaxed);
    });
    let report = f.store.scrub_pass(
        &ScrubSettings::default(),
        &stop,
        &AtomicU64::new(0),
        &|| true,
    )?;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(report.blobs_ok, 0, "nothing verified while browsers wait");
    let calm = f.store.scrub_pass(
        &ScrubSettings::default(),
        &AtomicBool::new(false),
        &AtomicU64::new(0),
        &|| false,
    )?;
    assert!(calm.blobs_ok > 0);
    Ok(())
}

#[test]
fn a_pass_reads_on_a_thread_that_yields_to_browsers() -> anyhow::Result<()> {
    use crate::background::my_policy;
    let f = Fixture::new()?;
    let big = f.entry(&f.a, "big.bin")?;
    flip_byte(&f.store.layout().blob(&big.hash), 0)?;
    let caller = my_policy();
    assert_eq!(caller, libc::SCHED_OTHER);
    // `busy` is asked between the blocks read, on the thread reading them.
    let readers = std::sync::Mutex::new(Vec::new());
    let busy = || {
        readers.lock().unwrap().push(my_policy());
        false
    };
    let settings = ScrubSettings {
        mib_per_s: 0,
        ..ScrubSettings::default()
    };
    let found = AtomicU64::new(0);
    let report = f
        .store
        .scrub_pass(&settings, &AtomicBool::new(false), &found, &busy)?;
    let readers = readers.into_inner().unwrap();
    assert!(!readers.is_empty());
    assert!(
        readers.iter().all(|p| *p == libc::SCHED_IDLE),
        "{readers:?}"
    );
    // The damaged blob was removed all the same, by the caller's thread,
    // whose priority is left as it was.
    assert_eq!(
        (report.damaged, report.blobs_ok, found.into_inner()),
        (1, 2, 1)
    );
    assert!(!f.store.layout().blob(&big.hash).exists());
    assert_eq!(my_policy(), caller);
    Ok(())
}

/// The copies' threads answer peers under `SCHED_IDLE`, and ask the store,
/// whose locks browsers wait on, from a thread of the daemon's (in a debug build,
/// asking it from an idle thread aborts): a bundle is served whole, and a blob
/// found damaged or gone on the way is marked.
#[test]
fn peers_are_answered_on_idle_threads_that_ask_the_store_elsewhere() -> anyhow::Result<()> {
    let copies = crate::background::Background::start()?;
    let daemon = tokio::runtime::Runtime::new()?;
    let source = Fixture::new()?;
    let big = source.entry(&source.a, "big.bin")?;
    let fetching = tempfile::tempdir()?;
    let empty = |n: &str| Store::open(fetching.path().join(n)).map(Arc::new);
    daemon.block_on(async {
        let serving = Answering::start(source.store.clone(), copies.handle())?;
        let whole = empty("whole")?;
        let received = fetch(&serving, &whole, source.a).await?;
        assert_eq!(received, big.size + b"a small file".len() as u64);
        assert!(whole.incomplete_bundles()?.is_empty());
        flip_byte(&source.store.layout().blob(&big.hash), 70_000)?;
        assert!(fetch(&serving, &empty("torn")?, source.a).await.is_err());
        assert!(source.store.is_damaged(&big.hash));
        // A file gone is found so at its open, before anything is sent.
        let small = source.entry(&source.a, "small.txt")?;
        fs::remove_file(source.store.layout().blob(&small.hash))?;
        assert!(fetch(&serving, &empty("gone")?, source.a).await.is_err());
        assert!(source.store.is_damaged(&small.hash));
        anyhow::Ok(())
    })?;
    drop(daemon);
    drop(copies);
    Ok(())
}
