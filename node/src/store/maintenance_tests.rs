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

/// Lets a reader waiting to open the FIFO go on (it then finds no bytes),
/// until `done`; the reader may come to it later than it seemed.
fn release_until(fifo: &Path, done: impl Fn() -> bool) {
    use std::os::unix::fs::OpenOptionsExt;
    let started = std::time::Instant::now();
    while !done() && started.elapsed() < PROMPT {
        // Without a reader waiting, this fails and releases nothing.
        let _ = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo);
        std::thread::sleep(Duration::from_millis(5));
    }
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
    release_until(&fifo, || checking.is_finished());
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

/// Sets the times of a blob's files to `ago` before now.
fn written_ago(store: &Store, hash: &BlobHash, ago: Duration) -> anyhow::Result<()> {
    for path in [store.layout().blob(hash), store.layout().outboard(hash)] {
        fs::File::options()
            .write(true)
            .open(path)?
            .set_modified(SystemTime::now() - ago)?;
    }
    Ok(())
}

/// A manifest of one file, `bytes`.
fn one_file(bytes: &[u8]) -> anyhow::Result<Manifest> {
    Ok(Manifest::new(vec![cartable_proto::ManifestEntry {
        path: cartable_proto::BundlePath::new("video.bin")?,
        content_type: "application/octet-stream".into(),
        hash: BlobHash::of(bytes),
        size: bytes.len() as u64,
    }])?)
}

#[test]
fn check_keeps_the_blobs_uploads_rely_on_and_deletes_old_leftovers() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let store = Store::open(data.path())?;
    let (under_way, leftover, retried) = (
        pattern(300_000, 4),
        pattern(300_000, 5),
        pattern(300_000, 10),
    );
    let three_days = Duration::from_secs(3 * 24 * 3600);
    upload(&store, &under_way)?;
    // Blobs stored by uploads three days ago that never completed; one of
    // them is in a bundle published again now, whose upload is told the
    // node has it.
    let leftover_hash = upload(&store, &leftover)?;
    written_ago(&store, &leftover_hash, three_days)?;
    let retried_hash = upload(&store, &retried)?;
    written_ago(&store, &retried_hash, three_days)?;
    assert!(store.rely_on_blob(&retried_hash, retried.len() as u64));
    let report = store.check()?;
    assert_eq!(report.orphans_removed, 1);
    assert!(!store.layout().blob(&leftover_hash).exists());
    assert!(!store.layout().outboard(&leftover_hash).exists());
    // Both uploads complete: their blobs are still there.
    for bytes in [&under_way, &retried] {
        store.add_fetched_bundle(&one_file(bytes)?)?;
        let hash = BlobHash::of(bytes);
        assert_eq!(
            &super::tests::read_all(&store, &hash, bytes.len() as u64, 0..300_000)?,
            bytes
        );
    }
    Ok(())
}

#[test]
fn an_add_copies_its_files_while_another_writer_holds_the_lock() -> anyhow::Result<()> {
    let (data, a) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let video = pattern(300_000, 6);
    lesson(a.path(), &[("video.bin", video.clone())]);
    let store = Arc::new(Store::open(data.path())?);
    let writing = store.writes.lock().unwrap();
    let adding = std::thread::spawn({
        let (store, dir) = (store.clone(), a.path().to_owned());
        move || store.add_folder(&dir)
    });
    // The whole copy lands in `tmp/`, waiting only to be renamed.
    let copied = || {
        fs::read_dir(store.layout().tmp_dir()).is_ok_and(|files| {
            files
                .flatten()
                .any(|f| f.metadata().is_ok_and(|m| m.len() == video.len() as u64))
        })
    };
    let started = std::time::Instant::now();
    while !copied() && started.elapsed() < PROMPT {
        std::thread::sleep(Duration::from_millis(5));
    }
    let copied_beside = copied();
    drop(writing);
    let report = adding.join().expect("add panicked")?;
    assert!(
        copied_beside,
        "the add waited for the lock to copy its file"
    );
    let manifest = store.manifest(&report.summary.id)?.unwrap();
    let e = &manifest.entries()[0];
    assert_eq!(
        super::tests::read_all(&store, &e.hash, e.size, 0..e.size)?,
        video
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
    let store = Store::open(data.path())?;
    let first_id = store.add_folder(first.path())?.summary.id;
    let copied = store.copy_folder(Folder::read(second.path())?)?;
    // The shared blob, found stored, is removed before the bundle is
    // recorded (its bundle removed, say).
    store.remove(&first_id)?;
    assert!(!store.layout().blob(&BlobHash::of(&shared)).exists());
    let report = store.record_folder(copied)?;
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
