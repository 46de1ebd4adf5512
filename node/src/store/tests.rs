//! Store behaviour on a real data folder: dedupe, idempotence, removal, rebuild,
//! corruption caught, verified ranges.

use std::fs;
use std::path::Path;

use proptest::prelude::*;

use super::*;

pub(super) fn lesson(dir: &Path, files: &[(&str, Vec<u8>)]) {
    for (path, data) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
}

pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// Files in the store's `tmp/` once those let go of are removed (on a
/// blocking thread, so shortly after), or after 5 s.
pub(crate) async fn tmp_count_settled(store: &Store) -> anyhow::Result<usize> {
    let count = || Ok::<_, anyhow::Error>(fs::read_dir(store.layout().tmp_dir())?.count());
    for _ in 0..500 {
        if count()? == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    count()
}

pub(super) fn read_all(
    store: &Store,
    hash: &BlobHash,
    size: u64,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, VerifyError> {
    let mut out = Vec::new();
    store.open_blob(hash, size)?.read_verified(range, |b| {
        out.extend_from_slice(&b);
        true
    })?;
    Ok(out)
}

fn blob_bytes_on_disk(store: &Store) -> u64 {
    fs::read_dir(store.layout().blobs_dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn identical_files_are_stored_once_across_bundles() -> anyhow::Result<()> {
    let (data, a, b) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let video = pattern(100_000, 1);
    lesson(
        a.path(),
        &[("index.html", b"a".to_vec()), ("v.mp4", video.clone())],
    );
    lesson(
        b.path(),
        &[("index.html", b"b".to_vec()), ("media/v.mp4", video)],
    );
    let store = Store::open(data.path())?;
    let first = store.add_folder(a.path())?;
    let second = store.add_folder(b.path())?;
    assert_eq!(first.new_bytes, 100_001);
    assert_eq!(second.new_bytes, 1, "only the new index.html is written");
    assert_ne!(first.summary.id, second.summary.id);
    Ok(())
}

#[test]
fn a_node_adds_a_folder_under_the_id_the_cli_computes() -> anyhow::Result<()> {
    // The CLI's `publish` hashes the folder without importing it; both build
    // the manifest with `cartable_net::folder`, and a blob's outboard root is
    // its plain BLAKE3 hash, so the ids agree.
    let (data, a) = (tempfile::tempdir()?, tempfile::tempdir()?);
    lesson(
        a.path(),
        &[
            ("index.html", b"<h1>Fractions</h1>".to_vec()),
            ("style.css", b"h1 { color: red }".to_vec()),
            ("media/deep/copy.css", b"h1 { color: red }".to_vec()),
            ("media/video.mp4", pattern((3 << 20) + 5, 7)),
        ],
    );
    let hashed = Folder::read(a.path())?
        .manifest(|f| cartable_net::folder::hash_file(&f.source, f.size, &mut |_| {}))?;
    let added = Store::open(data.path())?.add_folder(a.path())?;
    assert_eq!(hashed.id(), added.summary.id);
    Ok(())
}

#[test]
fn adding_a_folder_twice_is_idempotent() -> anyhow::Result<()> {
    let (data, a) = (tempfile::tempdir()?, tempfile::tempdir()?);
    lesson(
        a.path(),
        &[
            ("index.html", b"hi".to_vec()),
            ("big.bin", pattern(70_000, 2)),
        ],
    );
    let store = Store::open(data.path())?;
    let first = store.add_folder(a.path())?;
    let before = blob_bytes_on_disk(&store);
    let again = store.add_folder(a.path())?;
    assert_eq!(first.summary, again.summary);
    assert_eq!(again.new_bytes, 0);
    assert_eq!(blob_bytes_on_disk(&store), before);
    assert_eq!(store.bundles()?.len(), 1);
    assert_eq!(
        fs::read_dir(store.layout().tmp_dir())?.count(),
        0,
        "no temp file left"
    );
    Ok(())
}

#[test]
fn removing_a_bundle_frees_only_its_own_blobs() -> anyhow::Result<()> {
    let (data, a, b) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let shared = pattern(50_000, 3);
    lesson(
        a.path(),
        &[
            ("shared.bin", shared.clone()),
            ("own.bin", pattern(40_000, 4)),
        ],
    );
    lesson(b.path(), &[("shared.bin", shared.clone())]);
    let store = Store::open(data.path())?;
    let a_id = store.add_folder(a.path())?.summary.id;
    let b_id = store.add_folder(b.path())?.summary.id;
    let before = blob_bytes_on_disk(&store);
    store.remove(&a_id)?;
    assert!(
        blob_bytes_on_disk(&store) <= before - 40_000,
        "own.bin freed"
    );
    assert!(matches!(
        store.remove(&a_id),
        Err(StoreError::UnknownBundle(_))
    ));
    let m = store.manifest(&b_id)?.unwrap();
    let e = &m.entries()[0];
    assert_eq!(
        read_all(&store, &e.hash, e.size, 0..e.size)?,
        shared,
        "shared blob kept"
    );
    store.remove(&b_id)?;
    assert_eq!(blob_bytes_on_disk(&store), 0);
    Ok(())
}

#[test]
fn a_fetched_bundle_is_not_recorded_when_a_blob_it_skipped_was_removed_meanwhile()
-> anyhow::Result<()> {
    let (data, other, a, b) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let shared = pattern(50_000, 3);
    lesson(a.path(), &[("shared.bin", shared.clone())]);
    lesson(b.path(), &[("style.bin", shared)]);
    let store = Store::open(data.path())?;
    let a_id = store.add_folder(a.path())?.summary.id;
    // B's manifest, as a peer would send it.
    let b_id = Store::open(other.path())?.add_folder(b.path())?.summary.id;
    let b_manifest = Store::open(other.path())?.manifest(&b_id)?.expect("held");
    let shared_entry = &b_manifest.entries()[0];
    assert!(
        store.has_blob_file(&shared_entry.hash, shared_entry.size),
        "a fetch of B would skip the shared blob"
    );
    // The coordinator releases A while B is being copied.
    store.remove(&a_id)?;
    assert!(matches!(
        store.add_fetched_bundle(&b_manifest),
        Err(StoreError::BlobGone(h)) if h == shared_entry.hash
    ));
    assert!(
        store.bundles()?.is_empty(),
        "B not recorded with a blob missing"
    );
    Ok(())
}

#[test]
fn a_refused_folder_imports_nothing() -> anyhow::Result<()> {
    let (data, a) = (tempfile::tempdir()?, tempfile::tempdir()?);
    lesson(
        a.path(),
        &[("a.bin", pattern(30_000, 5)), ("z\\bad", b"x".to_vec())],
    );
    let store = Store::open(data.path())?;
    let err = store.add_folder(a.path()).unwrap_err();
    assert!(err.to_string().contains("z\\bad"), "{err}");
    assert_eq!(blob_bytes_on_disk(&store), 0);
    assert!(store.bundles()?.is_empty());
    Ok(())
}

#[test]
fn a_folder_over_the_size_caps_is_refused_before_anything_is_read() -> anyhow::Result<()> {
    let (data, a) = (tempfile::tempdir()?, tempfile::tempdir()?);
    lesson(a.path(), &[("a.bin", pattern(30_000, 5))]);
    // Sparse: listed as over the cap, taking no disk.
    let huge = fs::File::create(a.path().join("huge.mp4"))?;
    huge.set_len(cartable_proto::manifest::MAX_FILE_BYTES + 1)?;
    let store = Store::open(data.path())?;
    let err = store.add_folder(a.path()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Manifest(ManifestError::FileTooLarge { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("huge.mp4"), "{err}");
    assert_eq!(blob_bytes_on_disk(&store), 0);
    assert!(store.bundles()?.is_empty());
    Ok(())
}

#[test]
fn losing_the_index_loses_no_lesson() -> anyhow::Result<()> {
    let (data, a, b) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    lesson(
        a.path(),
        &[
            ("index.html", b"a".to_vec()),
            ("v.bin", pattern(200_000, 6)),
        ],
    );
    lesson(b.path(), &[("x/y.txt", b"b".to_vec())]);
    let listing = {
        let store = Store::open(data.path())?;
        store.add_folder(a.path())?;
        store.add_folder(b.path())?;
        store.bundles()?
    };
    fs::remove_dir_all(data.path().join("index"))?;
    let rebuilt = Store::rebuild_index(data.path())?;
    assert_eq!(rebuilt.bundles()?, listing);
    let report = rebuilt.check()?;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.blobs_ok, 3);
    Ok(())
}

#[test]
fn a_flipped_byte_is_caught_and_never_served() -> anyhow::Result<()> {
    let (data, a) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let big = pattern(300_000, 7);
    lesson(
        a.path(),
        &[
            ("big.bin", big.clone()),
            ("small.txt", b"small file".to_vec()),
        ],
    );
    let store = Store::open(data.path())?;
    let id = store.add_folder(a.path())?.summary.id;
    let m = store.manifest(&id)?.unwrap();
    for e in m.entries() {
        let path = store.layout().blob(&e.hash);
        let mut bytes = fs::read(&path)?;
        let at = bytes.len() - 3;
        bytes[at] ^= 0x20;
        fs::write(&path, &bytes)?;
        let mut served = Vec::new();
        let err = store
            .open_blob(&e.hash, e.size)?
            .read_verified(0..e.size, |b| {
                served.extend_from_slice(&b);
                true
            })
            .unwrap_err();
        assert!(matches!(err, VerifyError::Corrupt { .. }), "{err}");
        let first_bad = at as usize;
        assert!(
            served.len() <= first_bad,
            "nothing from the bad group was emitted"
        );
        assert_eq!(served[..], big[..served.len()]);
        // The untouched start of the big file is still served.
        if e.size > 100_000 {
            assert_eq!(read_all(&store, &e.hash, e.size, 0..50_000)?, big[..50_000]);
        }
    }
    let report = store.check()?;
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(m.entries().iter().all(|e| store.is_damaged(&e.hash)));
    Ok(())
}

#[test]
fn small_files_read_lately_come_from_memory_and_only_once_verified() -> anyhow::Result<()> {
    let (data, a) = (tempfile::tempdir()?, tempfile::tempdir()?);
    lesson(
        a.path(),
        &[
            ("page.html", pattern(40_000, 1)),
            ("tiny.css", b"p{}".to_vec()),
        ],
    );
    let store = Store::open(data.path())?;
    let id = store.add_folder(a.path())?.summary.id;
    let m = store.manifest(&id)?.unwrap();
    for e in m.entries() {
        let path = store.layout().blob(&e.hash);
        let good = fs::read(&path)?;
        let mut bad = good.clone();
        bad[0] ^= 1;
        fs::write(&path, &bad)?;
        let err = store.read_small(&e.hash, e.size).unwrap_err();
        assert!(matches!(err, VerifyError::Corrupt { .. }), "{err}");
        assert!(
            store.hot_file(&e.hash, e.size).is_none(),
            "unverified bytes kept"
        );
        fs::write(&path, &good)?;
        assert_eq!(store.read_small(&e.hash, e.size)?, good);
        // Read again with the file away: the bytes come from memory.
        let away = path.with_extension("away");
        fs::rename(&path, &away)?;
        assert_eq!(store.read_small(&e.hash, e.size)?, good);
        fs::rename(&away, &path)?;
    }
    // Asked with another size than the one stored (a manifest that lies):
    // an error, and the blob is not the one judged wrong.
    let e = &m.entries()[0];
    let misled = store.read_small(&e.hash, e.size + 1).unwrap_err();
    assert_eq!(store.read_failed(&e.hash, &misled), ReadFault::Transient);
    assert!(!store.is_damaged(&e.hash));
    store.remove(&id)?;
    assert!(
        m.entries()
            .iter()
            .all(|e| store.hot_file(&e.hash, e.size).is_none())
    );
    Ok(())
}

/// Pieces of a large file read twice come from memory, whole or in part; a
/// piece read once, or found corrupt, is not kept; a removed bundle's pieces
/// are gone.
#[test]
fn pieces_read_again_are_kept_verified_and_leave_with_their_bundle() -> anyhow::Result<()> {
    let (data, a) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let piece = HOT_PIECE;
    let bytes = pattern(2 * piece as usize + 1000, 3);
    lesson(a.path(), &[("film.bin", bytes.clone())]);
    let store = Store::open(data.path())?;
    let id = store.add_folder(a.path())?.summary.id;
    let e = store
        .manifest(&id)?
        .unwrap()
        .entry("film.bin")
        .unwrap()
        .clone();
    let files = store.open_blob(&e.hash, e.size)?;
    let path = store.layout().blob(&e.hash);
    let good = fs::read(&path)?;
    let mut bad = good.clone();
    bad[piece as usize + 5] ^= 1;
    fs::write(&path, &bad)?;
    for _ in 0..2 {
        let err = store.read_piece(&files, piece..2 * piece).unwrap_err();
        assert!(matches!(err, VerifyError::Corrupt { .. }), "{err}");
    }
    fs::write(&path, &good)?;
    let whole = |r: std::ops::Range<u64>| &bytes[r.start as usize..r.end as usize];
    for r in [0..piece, piece..2 * piece, 2 * piece..e.size] {
        assert_eq!(store.read_piece(&files, r.clone())?, whole(r.clone()));
        assert!(
            store.hot_piece(&e.hash, e.size, &r).is_none(),
            "read once: not kept"
        );
        assert_eq!(store.read_piece(&files, r.clone())?, whole(r.clone()));
        assert!(
            store.hot_piece(&e.hash, e.size, &r).is_some(),
            "read twice: kept"
        );
    }
    // Zeroed on disk now: what is served comes from memory, verified earlier.
    fs::write(&path, vec![0u8; good.len()])?;
    let part = piece + 10..piece + 2000;
    assert_eq!(store.read_piece(&files, part.clone())?, whole(part));
    assert_eq!(store.read_piece(&files, 0..piece)?, whole(0..piece));
    fs::write(&path, &good)?;
    store.remove(&id)?;
    assert!(store.hot_piece(&e.hash, e.size, &(0..piece)).is_none());
    Ok(())
}

/// With no memory for them (`https.memory_mib = 0`), nothing read is kept.
#[test]
fn a_store_without_memory_keeps_nothing() -> anyhow::Result<()> {
    let (data, a) = (tempfile::tempdir()?, tempfile::tempdir()?);
    lesson(
        a.path(),
        &[
            ("a.css", pattern(100, 1)),
            ("b.bin", pattern(HOT_PIECE as usize + 9, 2)),
        ],
    );
    let store = Store::open(data.path())?.keeping_in_memory(0);
    let id = store.add_folder(a.path())?.summary.id;
    let m = store.manifest(&id)?.unwrap();
    let (small, large) = (m.entry("a.css").unwrap(), m.entry("b.bin").unwrap());
    let files = store.open_blob(&large.hash, large.size)?;
    for _ in 0..3 {
        store.read_small(&small.hash, small.size)?;
        store.read_piece(&files, 0..HOT_PIECE)?;
    }
    assert!(store.hot_file(&small.hash, small.size).is_none());
    assert!(
        store
            .hot_piece(&large.hash, large.size, &(0..HOT_PIECE))
            .is_none()
    );
    Ok(())
}

#[test]
fn a_truncated_blob_is_caught() -> anyhow::Result<()> {
    let (data, a) = (tempfile::tempdir()?, tempfile::tempdir()?);
    lesson(a.path(), &[("big.bin", pattern(100_000, 8))]);
    let store = Store::open(data.path())?;
    let id = store.add_folder(a.path())?.summary.id;
    let e = store.manifest(&id)?.unwrap().entries()[0].clone();
    fs::File::options()
        .write(true)
        .open(store.layout().blob(&e.hash))?
        .set_len(99_999)?;
    assert!(matches!(
        read_all(&store, &e.hash, e.size, 0..10),
        Err(VerifyError::WrongLength { actual: 99_999, .. })
    ));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn verified_ranges_equal_the_source(
        len in prop::sample::select(vec![0usize, 1, 1023, 1024, 16_383, 16_384, 16_385, 32_768, 100_000, 1 << 20]),
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
    ) {
        let (data, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let bytes = pattern(len, 9);
        lesson(dir.path(), &[("f", bytes.clone())]);
        let store = Store::open(data.path()).unwrap();
        let id = store.add_folder(dir.path()).unwrap().summary.id;
        let e = store.manifest(&id).unwrap().unwrap().entries()[0].clone();
        prop_assert_eq!(e.hash, BlobHash::of(&bytes));
        let (x, y) = (a.index(len + 1) as u64, b.index(len + 1) as u64);
        let (start, end) = (x.min(y), x.max(y));
        let got = read_all(&store, &e.hash, e.size, start..end).unwrap();
        prop_assert_eq!(&got[..], &bytes[start as usize..end as usize]);
    }
}

/// Stores `data` as if fetched through from a peer, then keeps it as cache.
pub(super) fn cache(store: &Store, data: &[u8], max: u64) -> anyhow::Result<BlobHash> {
    let hash = BlobHash::of(data);
    let mut partial = store.partial(&hash, data.len() as u64)?;
    partial.write_group(0, data)?;
    store.commit_partial(partial)?;
    store.use_cached(&hash, data.len() as u64, max)?;
    Ok(hash)
}

#[test]
fn the_fetch_through_cache_evicts_the_oldest_beyond_its_cap() -> anyhow::Result<()> {
    let (data, pinned_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store = Store::open(data.path())?;
    let shared = pattern(10_000, 20);
    lesson(pinned_dir.path(), &[("kept.bin", shared.clone())]);
    let max = 25_000;
    let first = cache(&store, &pattern(10_000, 21), max)?;
    let pinned = cache(&store, &shared, max)?;
    store.add_folder(pinned_dir.path())?;
    let third = cache(&store, &pattern(10_000, 22), max)?;
    let fourth = cache(&store, &pattern(10_000, 23), max)?;
    let present = |h: &BlobHash| store.layout().blob(h).exists();
    assert!(!present(&first), "the oldest cached blob went");
    assert!(
        present(&pinned),
        "a blob a held bundle uses is never evicted"
    );
    assert!(
        present(&third) && present(&fourth),
        "the newest stay within the cap"
    );
    let report = store.check()?;
    assert_eq!(report.orphans_removed, 0, "check keeps cached blobs");
    assert!(present(&third) && present(&fourth));
    Ok(())
}

#[test]
fn a_cached_blob_evicted_under_a_reader_is_not_marked_damaged() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let store = Store::open(data.path())?;
    let max = 15_000;
    let first = cache(&store, &pattern(10_000, 31), max)?;
    // A reader looked the blob up, then the next fetch-through evicted it.
    assert_eq!(store.blob_size(&first), Some(10_000));
    cache(&store, &pattern(10_000, 32), max)?;
    let opened = store.open_blob(&first, 10_000).map_err(VerifyError::Io);
    let fault = store.read_failed(&first, &opened.expect_err("evicted"));
    assert!(matches!(fault, ReadFault::Transient));
    assert!(!store.is_damaged(&first), "no mark outlives the blob");
    // A blob still recorded whose file is gone is damaged.
    let held = cache(&store, &pattern(10_000, 33), max)?;
    fs::remove_file(store.layout().blob(&held))?;
    let opened = store.open_blob(&held, 10_000).map_err(VerifyError::Io);
    let fault = store.read_failed(&held, &opened.expect_err("deleted"));
    assert!(matches!(fault, ReadFault::Damaged));
    Ok(())
}

#[test]
fn a_blob_without_its_outboard_is_not_taken_as_held() -> anyhow::Result<()> {
    let (data, lesson_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let big = pattern(50_000, 5);
    lesson(lesson_dir.path(), &[("big.bin", big.clone())]);
    let store = Store::open(data.path())?;
    store.add_folder(lesson_dir.path())?;
    let hash = BlobHash::of(&big);
    assert!(store.has_blob_file(&hash, 50_000));
    fs::remove_file(store.layout().outboard(&hash))?;
    assert!(
        !store.has_blob_file(&hash, 50_000),
        "a copy fetches it again rather than skip what cannot be read verified"
    );
    Ok(())
}
