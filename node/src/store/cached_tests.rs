//! Reads that must not wait on the disk: done in place only when the kernel
//! already holds what they need, else left to a blocking thread.

use std::fs::{self, File};
use std::os::fd::AsFd;

use cartable_proto::ManifestEntry;

use super::*;

/// A store holding a lesson of one small file and one larger one; the data
/// folder, then the lesson's.
fn two_files() -> anyhow::Result<(tempfile::TempDir, tempfile::TempDir, BundleId)> {
    let (data, lesson) = (tempfile::tempdir()?, tempfile::tempdir()?);
    fs::write(lesson.path().join("style.css"), b"p { color: navy }")?;
    fs::write(lesson.path().join("video.bin"), vec![7u8; 200_000])?;
    let id = Store::open(data.path())?
        .add_folder(lesson.path())?
        .summary
        .id;
    Ok((data, lesson, id))
}

/// The store of [`two_files`] opened afresh. The index's lock outlives the
/// first handle's drop for a moment, while sled's own threads let go of it
/// (1 run in 20 of this file's tests failed on it): waited for, within 5 s.
fn reopen(dir: &Path) -> anyhow::Result<Store> {
    for _ in 0..500 {
        match Store::open(dir) {
            Err(StoreError::Index { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            opened => return Ok(opened?),
        }
    }
    Ok(Store::open(dir)?)
}

fn entry(store: &Store, id: &BundleId, path: &str) -> anyhow::Result<ManifestEntry> {
    let manifest = store.manifest(id)?.expect("bundle held");
    Ok(manifest.entry(path).expect("file in bundle").clone())
}

/// Drops `path`'s bytes from the page cache (they are clean: the store
/// synced them), as memory pressure or a reboot would.
fn evict(path: &Path) -> anyhow::Result<()> {
    let file = File::open(path)?;
    rustix::fs::fadvise(file.as_fd(), 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(())
}

/// Whether the file system under `dir` can tell a read that would wait
/// (`RWF_NOWAIT`); tmpfs cannot, and then nothing is read in place.
fn tells_waits(dir: &Path) -> anyhow::Result<bool> {
    let probe = dir.join("probe");
    fs::write(&probe, b"probe")?;
    let file = File::open(&probe)?;
    let mut buf = [0u8; 5];
    let mut bufs = [std::io::IoSliceMut::new(&mut buf)];
    let told = rustix::io::preadv2(&file, &mut bufs, 0, rustix::io::ReadWriteFlags::NOWAIT);
    fs::remove_file(&probe)?;
    Ok(told != Err(rustix::io::Errno::OPNOTSUPP))
}

/// The small file of [`two_files`], of a store opened afresh, on a file
/// system that can tell reads that would wait (`None` on one that cannot).
struct CssInPageCache {
    store: Store,
    css: ManifestEntry,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl CssInPageCache {
    fn new() -> anyhow::Result<Option<Self>> {
        let (data, lesson, id) = two_files()?;
        if !tells_waits(data.path())? {
            return Ok(None);
        }
        let store = reopen(data.path())?;
        let css = entry(&store, &id, "style.css")?;
        Ok(Some(Self {
            store,
            css,
            _dirs: (data, lesson),
        }))
    }

    fn path(&self) -> PathBuf {
        self.store.layout().blob(&self.css.hash)
    }
}

#[test]
fn a_small_file_in_the_page_cache_is_read_in_place_and_one_out_of_it_is_not() -> anyhow::Result<()>
{
    let (data, _lesson, id) = two_files()?;
    let in_place = tells_waits(data.path())?;
    // A store opened afresh keeps nothing in memory yet.
    let store = reopen(data.path())?;
    let css = entry(&store, &id, "style.css")?;
    let read = store.read_small_cached(&css.hash, css.size);
    if in_place {
        assert_eq!(
            read.transpose()?.as_deref(),
            Some(&b"p { color: navy }"[..])
        );
        assert_eq!(
            store.memory_use().reads_from_disk,
            1,
            "read from the page cache"
        );
    } else {
        assert!(read.is_none(), "read in place where a wait cannot be told");
    }

    drop(store);
    let store = reopen(data.path())?;
    evict(&store.layout().blob(&css.hash))?;
    assert!(
        store.read_small_cached(&css.hash, css.size).is_none(),
        "a read that waits on the disk is left to a thread"
    );
    assert_eq!(store.memory_use().reads_from_disk, 0);
    // The thread's read keeps it in memory: from then on, in place.
    assert_eq!(
        &store.read_small(&css.hash, css.size)?[..],
        b"p { color: navy }"
    );
    let again = store.read_small_cached(&css.hash, css.size);
    assert_eq!(
        again.transpose()?.as_deref(),
        Some(&b"p { color: navy }"[..])
    );
    Ok(())
}

#[test]
fn a_corrupt_small_file_in_the_page_cache_is_caught_in_place() -> anyhow::Result<()> {
    let Some(f) = CssInPageCache::new()? else {
        return Ok(());
    };
    let (store, css, path) = (&f.store, &f.css, f.path());
    let mut bytes = fs::read(&path)?;
    bytes[0] ^= 1;
    fs::write(&path, &bytes)?;
    let read = store
        .read_small_cached(&css.hash, css.size)
        .expect("in the page cache");
    assert!(matches!(read, Err(VerifyError::Corrupt { .. })), "{read:?}");
    assert!(
        store.hot_file(&css.hash, css.size).is_none(),
        "unverified bytes kept"
    );
    Ok(())
}

#[test]
fn a_blob_whose_files_are_gone_is_left_to_a_thread_to_judge() -> anyhow::Result<()> {
    let (data, _lesson, id) = two_files()?;
    let store = reopen(data.path())?;
    let (css, video) = (
        entry(&store, &id, "style.css")?,
        entry(&store, &id, "video.bin")?,
    );
    assert!(store.open_blob_cached(&video.hash, video.size).is_some());
    fs::remove_file(store.layout().outboard(&video.hash))?;
    fs::remove_file(store.layout().blob(&css.hash))?;
    assert!(store.open_blob_cached(&video.hash, video.size).is_none());
    assert!(store.read_small_cached(&css.hash, css.size).is_none());
    // Nothing judged on the way: a thread's read is what marks a blob damaged.
    assert!(!store.is_damaged(&css.hash) && !store.is_damaged(&video.hash));
    Ok(())
}

#[test]
fn a_manifest_is_in_memory_once_read_and_a_bundle_not_held_is_told_from_the_index()
-> anyhow::Result<()> {
    let (data, _lesson, id) = two_files()?;
    let store = reopen(data.path())?;
    assert!(store.manifest_in_memory(&id).is_none(), "read at the start");
    assert!(store.holds(&id)?);
    assert!(!store.holds(&BundleId::of_manifest(b"made up"))?);
    let read = store.manifest(&id)?.expect("held");
    assert_eq!(store.manifest_in_memory(&id), Some(read));
    Ok(())
}

#[test]
fn a_read_in_place_leaves_the_access_time_alone() -> anyhow::Result<()> {
    let Some(f) = CssInPageCache::new()? else {
        return Ok(());
    };
    let (store, css, path) = (&f.store, &f.css, f.path());
    // Two days old: under `relatime` a read would bring it up to date, a
    // write of the inode, which may wait on the journal.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
    File::open(&path)?.set_times(fs::FileTimes::new().set_accessed(old))?;
    let read = store
        .read_small_cached(&css.hash, css.size)
        .expect("in the page cache");
    assert_eq!(&read?[..], b"p { color: navy }");
    assert_eq!(fs::metadata(&path)?.accessed()?, old);
    // Nor does a read on a blocking thread, or the scrub's.
    store
        .open_blob(&css.hash, css.size)?
        .read_verified(0..css.size, |_| true)?;
    assert_eq!(fs::metadata(&path)?.accessed()?, old);
    Ok(())
}

#[test]
fn a_manifest_read_just_before_its_bundle_is_removed_is_not_kept_after() -> anyhow::Result<()> {
    let (data, _lesson, id) = two_files()?;
    let store = reopen(data.path())?;
    let read = store.manifest(&id)?.expect("held");
    store.remove(&id)?;
    assert!(store.manifest_in_memory(&id).is_none());
    // A reader that read the file before the removal, and keeps it after.
    store.keep_manifest(&id, &read)?;
    assert!(
        store.manifest_in_memory(&id).is_none(),
        "a removed lesson still served"
    );
    assert!(store.manifest(&id)?.is_none());
    Ok(())
}
