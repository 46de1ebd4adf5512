//! Writes the seed corpus of the fuzz targets (`proto/fuzz/corpus/`): valid
//! encodings of each message, so fuzzers start from deep inside the formats.
//! Run: `cargo run -p cartable-proto --example fuzz_seeds`.

use std::path::Path;

use cartable_proto::fuzzing::crafted_manifest;
use cartable_proto::wire::{ErrorKind, GroupRanges, Request, Response, WireError};
use cartable_proto::{BlobHash, BundleId, BundlePath, Manifest, ManifestEntry, content_type};

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let entry = |path: &str, data: &[u8]| ManifestEntry {
        path: BundlePath::new(path).expect("valid seed path"),
        hash: BlobHash::of(data),
        size: data.len() as u64,
        content_type: content_type::for_path(path).to_owned(),
    };
    let manifest = Manifest::new(vec![
        entry("index.html", b"<h1>"),
        entry("media/video.mp4", b"video"),
        entry("fiche.pdf", b"%PDF"),
    ])
    .expect("valid seed manifest");
    let one = Manifest::new(vec![entry("a", b"")]).expect("valid seed manifest");
    let hash = BlobHash::of(b"seed");
    let requests = [
        Request::Manifest(BundleId::from_hash(hash)),
        Request::Blob {
            hash,
            groups: GroupRanges::new(vec![0..4, 10..12]).expect("valid ranges"),
        },
        Request::Has(vec![hash, BlobHash::of(b"other")]),
    ];
    let responses = [
        Response::Manifest(manifest.encode()),
        Response::Blob { size: 1 << 30 },
        Response::Has(vec![true, false, true]),
        Response::Error(WireError::new(ErrorKind::Busy, "busy")),
    ];
    // Regressions: the measured attack (one blob at two sizes, one near 2^64)
    // and sizes whose sum wraps a u64. Both must be refused.
    let two_sizes = crafted_manifest(&[("a", b"x", 1), ("b", b"x", u64::MAX - 1)]);
    let wrapping = crafted_manifest(&[("a", b"1", 1 << 63), ("b", b"2", 1 << 63)]);
    for refused in [&two_sizes, &wrapping] {
        assert!(
            Manifest::decode(refused).is_err(),
            "a regression seed decodes"
        );
    }
    write_all(
        &corpus.join("decode_manifest"),
        [
            manifest.encode(),
            one.encode(),
            b"CRTM\x01".to_vec(),
            two_sizes,
            wrapping,
        ],
    )?;
    write_all(
        &corpus.join("decode_request"),
        requests.iter().map(Request::encode),
    )?;
    write_all(
        &corpus.join("decode_response"),
        responses.iter().map(Response::encode),
    )?;
    Ok(())
}

fn write_all(dir: &Path, seeds: impl IntoIterator<Item = Vec<u8>>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (i, seed) in seeds.into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), seed)?;
    }
    Ok(())
}
