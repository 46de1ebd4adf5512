//! `check` and `add` beside the store's other writers: neither holds the
//! store's write lock while it reads or copies, and neither loses what the
//! others wrote meanwhile.

use std::fs;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use super::tests::{lesson, pattern};
use super::*;

/// Longest a step that should not wait on another is given.
const PROMPT: Duration = Duration::from_secs(10);

/// Replaces a stored blob's file by a FIFO: opening it to read waits until
/// a writer opens it, as a read of a slow disk would.
fn make_fifo(path: &Path) -> anyhow::Result<()> {
    use rustix::fs::{CWD, FileType, Mode, mknodat};
    fs::remove_file(path)?;
    mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
    Ok(())
}

/// The name of the thread that runs the check.
const CHECKER: &str = "slow-check";

/// Whether this process's thread named `name` is in the system call `openat`.
fn in_open(name: &str) -> bool {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return false;
    };
    let openat = libc::SYS_openat.to_string();
    tasks.flatten().any(|task| {
        let read = |what: &str| fs::read_to_string(task.path().join(what)).unwrap_or_default();
        read("comm").trim_end() == name && read("syscall").split(' ').next() == Some(&openat)
    })
}

/// Waits until this process's thread named `name` has been in `openat` for
/// 100 ms on end (the system call waiting for the FIFO's writer); false
/// after [`PROMPT`].
fn waits_in_open(name: &str) -> bool {
    let started = std::time::Instant::now();
    let mut since = None;
    while started.elapsed() < PROMPT {
        let in_open = in_open(name);
        match (in_open, since) {
            (false, _) => since = None,
            (true, None) => since = Some(std::time::Instant::now()),
            (true, Some(at)) if at.elapsed() > Duration::from_millis(100) => return true,
            (true, Some(_)) => {}
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Lets a reader waiting to open the FIFO go on (it then finds no bytes).
fn release(fifo: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    // Without a reader waiting, there is nothing to release.
    let _ = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo);
}

/// Runs `f` on a thread of its own; its result if it ends within [`PROMPT`].
fn within_prompt<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, mpsc::RecvTimeoutError> {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    result.recv_timeout(PROMPT)
}

#[test]
fn a_check_lets_bundles_be_added_and_removed_while_it_reads() -> anyhow::Result<()> {
    let (data, slow, kept, added) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    lesson(slow.path(), &[("page.html", pattern(4_000, 1))]);
    lesson(kept.path(), &[("gone.bin", pattern(300_000, 2))]);
    lesson(added.path(), &[("new.bin", pattern(300_000, 3))]);
    let store = Arc::new(Store::open(data.path())?);
    let slow_id = store.add_folder(slow.path())?.summary.id;
    let gone = store.add_folder(kept.path())?.summary.id;
    let slow_blob = store.manifest(&slow_id)?.unwrap().entries()[0].hash;
    let fifo = store.layout().blob(&slow_blob);
    make_fifo(&fifo)?;
    let checking = std::thread::Builder::new().name(CHECKER.into()).spawn({
        let store = store.clone();
        move || store.check()
    })?;
    // The check is now opening the blob, and waits on it.
    let waited = waits_in_open(CHECKER);
    let writers = {
        let (store, dir) = (store.clone(), added.path().to_owned());
        within_prompt(move || -> Result<_, StoreError> {
            let id = store.add_folder(&dir)?.summary.id;
            store.remove(&gone)?;
            Ok(id)
        })
    };
    // Let the check go on, whatever the writers did.
    release(&fifo);
    let report = checking.join().expect("check panicked")?;
    assert!(waited, "the check never opened the slow blob");
    let added_id = writers.expect("an add and a removal waited for the check to end")?;
    assert!(store.holds(&added_id)? && !store.holds(&gone)?);
    assert_eq!(
        report
            .problems
            .iter()
            .map(|p| p.id.clone())
            .collect::<Vec<_>>(),
        vec![slow_blob.to_hex()],
        "only the blob that is not a file is reported"
    );
    Ok(())
}

/// Stores `bytes` as an upload does, before any bundle records them.
fn upload(store: &Store, bytes: &[u8]) -> anyhow::Result<BlobHash> {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let received = runtime.block_on(async {
        let mut incoming = store.incoming(bytes.len() as u64)?;
        incoming.push(bytes).await?;
        anyhow::Ok(incoming.finish().await?)
    })?;
    let hash = received.hash();
    store.place_received(received)?;
    Ok(hash)
}

#[test]
fn check_keeps_an_upload_under_way_and_deletes_old_leftovers() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let store = Store::open(data.path())?;
    let (under_way, leftover) = (pattern(300_000, 4), pattern(300_000, 5));
    let under_way_hash = upload(&store, &under_way)?;
    let leftover_hash = upload(&store, &leftover)?;
    // A blob stored by an upload three days ago that never completed.
    let three_days = Duration::from_secs(3 * 24 * 3600);
    for path in [
        store.layout().blob(&leftover_hash),
        store.layout().outboard(&leftover_hash),
    ] {
        fs::File::options()
            .write(true)
            .open(path)?
            .set_modified(SystemTime::now() - three_days)?;
    }
    let report = store.check()?;
    assert_eq!(report.orphans_removed, 1);
    assert!(!store.layout().blob(&leftover_hash).exists());
    assert!(!store.layout().outboard(&leftover_hash).exists());
    // The upload under way completes: its blob is still there.
    let manifest = Manifest::new(vec![cartable_proto::ManifestEntry {
        path: cartable_proto::BundlePath::new("video.bin")?,
        content_type: "application/octet-stream".into(),
        hash: under_way_hash,
        size: under_way.len() as u64,
    }])?;
    store.add_fetched_bundle(&manifest)?;
    assert_eq!(
        super::tests::read_all(&store, &under_way_hash, under_way.len() as u64, 0..300_000)?,
        under_way
    );
    Ok(())
}

#[test]
fn a_blob_removed_while_its_folder_is_copied_in_is_copied_again() -> anyhow::Result<()> {
    let (data, first, second) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let (shared, new) = (pattern(300_000, 6), pattern(300_000, 7));
    lesson(first.path(), &[("a.bin", shared.clone())]);
    lesson(
        second.path(),
        &[("a.bin", shared.clone()), ("b.bin", new.clone())],
    );
    let store = Arc::new(Store::open(data.path())?);
    store.add_folder(first.path())?;
    let (shared_hash, new_hash) = (BlobHash::of(&shared), BlobHash::of(&new));
    let writing = store.writes.lock().unwrap();
    let adding = std::thread::spawn({
        let (store, dir) = (store.clone(), second.path().to_owned());
        move || store.add_folder(&dir)
    });
    // The add copies its files while another writer holds the lock: the
    // shared file found stored, the new one copied in.
    let started = std::time::Instant::now();
    while !store.layout().blob(&new_hash).exists() && started.elapsed() < PROMPT {
        std::thread::sleep(Duration::from_millis(5));
    }
    let copied_beside = store.layout().blob(&new_hash).exists();
    // That writer removes the shared blob (as the scrub removes a damaged one).
    for path in [
        store.layout().blob(&shared_hash),
        store.layout().outboard(&shared_hash),
    ] {
        fs::remove_file(path)?;
    }
    drop(writing);
    let report = adding.join().expect("add panicked")?;
    assert!(
        copied_beside,
        "the add waited for the lock to copy its files"
    );
    assert_eq!(report.new_bytes, (shared.len() + new.len()) as u64);
    let manifest = store.manifest(&report.summary.id)?.unwrap();
    for (e, bytes) in manifest.entries().iter().zip([&shared, &new]) {
        assert!(store.has_blob_file(&e.hash, e.size));
        assert_eq!(
            &super::tests::read_all(&store, &e.hash, e.size, 0..e.size)?,
            bytes
        );
    }
    assert!(store.incomplete_bundles()?.is_empty());
    Ok(())
}
