//! Blobs copied from peers: partial files, their records and commits, and
//! the trimming of partial files abandoned.

use std::fs;

use super::tests::{cache, lesson, pattern, read_all};
use super::*;

#[test]
fn two_copies_fetching_one_shared_blob_both_commit() -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let store = Store::open(data_dir.path())?;
    let data = pattern(10_000, 9);
    let hash = BlobHash::of(&data);
    // Two bundles sharing the file are copied at once: both fetch it.
    let (mut first, mut second) = (
        store.partial(&hash, data.len() as u64)?,
        store.partial(&hash, data.len() as u64)?,
    );
    first.write_group(0, &data)?;
    second.write_group(0, &data)?;
    store.commit_partial(first)?;
    store.commit_partial(second)?;
    assert!(store.has_blob_file(&hash, data.len() as u64));
    assert_eq!(read_all(&store, &hash, data.len() as u64, 0..10_000)?, data);
    Ok(())
}

#[test]
fn whole_blobs_are_stored_by_name_replacing_only_a_damaged_copy() -> anyhow::Result<()> {
    use cartable_net::peer::exchange::WholeBlob;
    let data_dir = tempfile::tempdir()?;
    let store = Store::open(data_dir.path())?;
    let (good, fresh) = (pattern(4096, 1), pattern(100, 2));
    let (good_hash, fresh_hash) = (BlobHash::of(&good), BlobHash::of(&fresh));
    // A copy rotten on disk, marked damaged: the batch replaces it.
    fs::write(store.layout().blob(&good_hash), pattern(4096, 3))?;
    store.mark_damaged(&good_hash, "test");
    let blobs = [(good_hash, &good), (fresh_hash, &fresh), (good_hash, &good)]
        .map(|(h, b)| WholeBlob::verify(h, b.clone().into()).expect("verified"));
    store.store_whole(&blobs)?;
    for (hash, data) in [(good_hash, &good), (fresh_hash, &fresh)] {
        assert!(store.has_blob_file(&hash, data.len() as u64));
        assert_eq!(
            read_all(&store, &hash, data.len() as u64, 0..data.len() as u64)?,
            *data
        );
    }
    assert_eq!(
        fs::read_dir(store.layout().tmp_dir())?.count(),
        0,
        "no temporary file left"
    );
    Ok(())
}

#[test]
fn a_whole_blob_is_never_replaced_by_partial_files_reopened_after_its_commit() -> anyhow::Result<()>
{
    let data_dir = tempfile::tempdir()?;
    let store = Store::open(data_dir.path())?;
    let data = pattern(10_000, 11);
    let (hash, len) = (BlobHash::of(&data), data.len() as u64);
    cache(&store, &data, u64::MAX)?;
    // The record of a commit a moment ago, not yet removed: files reopened
    // now are new and empty, and nothing in them is done.
    let groups = len.div_ceil(cartable_proto::wire::GROUP_BYTES) as usize;
    fs::write(&store.partial_paths(&hash)[2], vec![1u8; groups])?;
    let mut reopened = store.partial(&hash, len)?;
    assert!(!reopened.is_complete(), "a stale record trusted");
    // Even a partial that says it is complete never replaces the whole blob.
    for g in 0..groups as u64 {
        reopened.write_group(g * cartable_proto::wire::GROUP_BYTES, &[0; 1])?;
    }
    assert!(reopened.is_complete());
    store.commit_partial(reopened)?;
    assert_eq!(read_all(&store, &hash, len, 0..len)?, data);
    assert_eq!(partial_files(&store), 0, "the leftovers are removed");
    Ok(())
}

#[test]
fn a_record_of_complete_groups_beside_other_files_commits_nothing() -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let store = Store::open(data_dir.path())?;
    let data = pattern(100_000, 12);
    let (hash, len) = (BlobHash::of(&data), data.len() as u64);
    // Files opened fresh by one fetch beside the record another one left.
    let [partial_data, partial_outboard, groups] = store.partial_paths(&hash);
    fs::create_dir_all(store.layout().partial_dir())?;
    fs::File::create(&partial_data)?.set_len(len)?;
    fs::File::create(&partial_outboard)?;
    let count = len.div_ceil(cartable_proto::wire::GROUP_BYTES) as usize;
    fs::write(&groups, vec![1u8; count])?;
    assert!(!store.commit_if_complete(&hash, len)?, "zeros committed");
    assert!(!store.has_blob_file(&hash, len));
    assert_eq!(partial_files(&store), 0, "the junk is removed");
    assert_eq!(store.partial_missing(&hash, len).len(), 1, "all to fetch");
    Ok(())
}

#[test]
fn a_holder_whose_files_were_replaced_neither_records_nor_commits() -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let store = Store::open(data_dir.path())?;
    let data = pattern(10_000, 13);
    let (hash, len) = (BlobHash::of(&data), data.len() as u64);
    let mut holder = store.partial(&hash, len)?;
    holder.write_group(0, &data)?;
    // Another fetch committed these files, and the blob was removed since;
    // a third fetch opened new, empty ones at the same paths.
    let [partial_data, ..] = store.partial_paths(&hash);
    fs::remove_file(&partial_data)?;
    let third = store.partial(&hash, len)?;
    assert!(
        holder.checkpoint(&store).is_err(),
        "a record beside files it does not describe"
    );
    assert!(store.commit_partial(holder).is_err());
    assert!(
        !store.has_blob_file(&hash, len),
        "the third fetch's zeros committed"
    );
    assert!(!third.is_complete());
    Ok(())
}

/// Starts the partial files of `count` blobs of `len` bytes, one group written
/// each, and closes them (an abandoned fetch).
fn abandoned_partials(store: &Store, count: u8, len: usize) -> anyhow::Result<Vec<BlobHash>> {
    let mut hashes = Vec::new();
    for seed in 0..count {
        let data = pattern(len, seed);
        let hash = BlobHash::of(&data);
        let mut partial = store.partial(&hash, len as u64)?;
        partial.write_group(0, &data[..cartable_proto::wire::GROUP_BYTES as usize])?;
        partial.checkpoint(store)?;
        hashes.push(hash);
        // File times tick at the kernel's clock granularity: keep the order clear.
        std::thread::sleep(std::time::Duration::from_millis(15));
    }
    Ok(hashes)
}

fn partial_files(store: &Store) -> usize {
    fs::read_dir(store.layout().partial_dir()).map_or(0, |d| d.count())
}

#[test]
fn abandoned_partial_blobs_are_trimmed_to_the_count_oldest_first() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let store = Store::open(data.path())?;
    let hashes = abandoned_partials(&store, 6, 40_000)?;
    assert_eq!(partial_files(&store), 18, "data, outboard and groups each");
    let open = store.partial(&hashes[0], 40_000)?;
    let usage = store.trim_partials(u64::MAX, 2)?;
    assert_eq!((usage.blobs, usage.removed), (2, 4));
    assert_eq!(partial_files(&store), 6);
    let kept = |h: &BlobHash| store.layout().partial_dir().join(h.to_hex()).exists();
    assert!(kept(&hashes[0]), "an open partial blob is never trimmed");
    assert!(kept(&hashes[5]), "the newest abandoned one stays");
    drop(open);
    Ok(())
}

#[test]
fn partial_blobs_count_against_the_cache_size() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let store = Store::open(data.path())?;
    abandoned_partials(&store, 4, 40_000)?;
    let before = store.trim_partials(u64::MAX, usize::MAX)?;
    assert_eq!((before.blobs, before.removed), (4, 0));
    let cap = before.bytes + 50_000;
    cache(&store, &pattern(50_000, 99), cap)?;
    let after = store.trim_partials(cap, usize::MAX)?;
    assert_eq!(after.removed, 0, "cache and partials fit the cap exactly");
    let after = store.trim_partials(cap - 1, usize::MAX)?;
    assert_eq!(
        after.removed, 1,
        "one over the cap: the oldest partial goes"
    );
    assert!(after.bytes + 50_000 < cap);
    Ok(())
}

#[test]
fn stale_partials_of_an_earlier_run_are_counted_and_trimmed() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    {
        let store = Store::open(data.path())?;
        abandoned_partials(&store, 5, 20_000)?;
    }
    let store = Store::open(data.path())?;
    let usage = store.trim_partials(u64::MAX, 3)?;
    assert_eq!((usage.blobs, usage.removed), (3, 2));
    assert_eq!(partial_files(&store), 9);
    Ok(())
}

#[test]
fn a_blob_that_cannot_be_opened_now_is_not_marked_damaged() -> anyhow::Result<()> {
    let (data, src) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store = Store::open(data.path())?;
    let bytes = pattern(50_000, 7);
    lesson(src.path(), &[("a.bin", bytes.clone())]);
    store.add_folder(src.path())?;
    let hash = BlobHash::of(&bytes);
    for transient in [libc::EMFILE, libc::ENFILE, libc::ENOMEM] {
        let e = VerifyError::Io(io::Error::from_raw_os_error(transient));
        assert_eq!(store.read_failed(&hash, &e), ReadFault::Transient);
    }
    let timeout = VerifyError::Io(io::ErrorKind::TimedOut.into());
    assert_eq!(store.read_failed(&hash, &timeout), ReadFault::Transient);
    assert!(!store.is_damaged(&hash));
    assert_eq!(store.blob_size(&hash), Some(50_000), "still served");
    // A file missing then and still missing now is damage.
    fs::remove_file(store.layout().blob(&hash))?;
    let gone = VerifyError::Io(io::ErrorKind::NotFound.into());
    {
        // A reader on an async worker never waits for a long import.
        let _import = store.writes.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(store.read_failed(&hash, &gone), ReadFault::Transient);
    }
    assert_eq!(store.read_failed(&hash, &gone), ReadFault::Damaged);
    assert!(store.is_damaged(&hash));
    Ok(())
}

#[test]
fn a_checkpoint_records_only_what_was_written_before_it_was_taken() -> anyhow::Result<()> {
    let group = cartable_proto::wire::GROUP_BYTES as usize;
    let data_dir = tempfile::tempdir()?;
    let store = Store::open(data_dir.path())?;
    let data = pattern(3 * group, 21);
    let (hash, len) = (BlobHash::of(&data), data.len() as u64);
    let mut partial = store.partial(&hash, len)?;
    partial.write_group(0, &data[..group])?;
    let checkpoint = partial.take_checkpoint()?;
    // Written while the checkpoint syncs, outside the blob's lock.
    partial.write_group(group as u64, &data[group..2 * group])?;
    checkpoint.write(&store)?;
    drop(partial);
    let groups_missing: Vec<_> = std::iter::once(1..3).collect();
    assert_eq!(store.partial_missing(&hash, len), groups_missing);
    Ok(())
}
