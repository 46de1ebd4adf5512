//! The properties the node's fuzz targets check, shared by `node/fuzz` and by
//! `node/tests/fuzz_corpus.rs`, which replays every corpus input in each
//! ordinary test run (it includes this file as a module).
//!
//! - `range_headers`: `Range`, `If-Range` and `If-None-Match`; a range taken
//!   lies inside the file.
//! - `request_target`: the request path; a decoded path never leaves the
//!   bundle, and every escape in an accepted path is two hex digits.
//! - `node_config`: the TOML file; sizes in MiB become bytes exactly.
//! - `manifest_serve`: structure-aware, an arbitrary manifest the decoder
//!   accepts, through the store and serving computations.

use std::ops::Range;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use cartable_node::conditional::{RangeRequest, if_range_holds, none_match, parse_range};
use cartable_node::config::NodeConfig;
use cartable_node::store::{Store, disk_bytes};
use cartable_node::target::{self, Target};
use cartable_proto::manifest::{MAX_BUNDLE_BYTES, MAX_FILE_BYTES};
use cartable_proto::wire::GROUP_BYTES;
use cartable_proto::{BundleId, BundlePath, Manifest};

/// A check run on one input.
pub type Check = fn(&[u8]);

/// The targets, by the name of their corpus folder.
pub const TARGETS: [(&str, Check); 4] = [
    ("range_headers", range_headers),
    ("request_target", request_target),
    ("node_config", node_config),
    ("manifest_serve", manifest_serve),
];

/// The first 8 bytes are the file's length, the rest the header value (tried
/// as `Range`, `If-Range` and `If-None-Match`).
pub fn range_headers(data: &[u8]) {
    let (len, value) = match data.split_first_chunk::<8>() {
        Some((len, rest)) => (u64::from_le_bytes(*len), rest),
        None => return,
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    check_range(value, len);
    let etag = "\"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\"";
    if if_range_holds(value, etag) {
        assert!(
            none_match(value, etag),
            "If-Range held, If-None-Match did not"
        );
    }
    assert!(none_match(&format!("{value},{etag}"), etag));
}

/// A range taken lies inside the file, and is not empty.
fn check_range(value: &str, len: u64) -> Option<Range<u64>> {
    match parse_range(value, len) {
        Ok(RangeRequest::Partial(r)) => {
            assert!(r.start < r.end && r.end <= len, "{value:?} on {len}: {r:?}");
            Some(r)
        }
        _ => None,
    }
}

/// The raw request path (without the query).
pub fn request_target(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(target) = target::parse(raw) else {
        return;
    };
    let (id, path) = match &target {
        Target::File(id, path) => (id, path.to_string()),
        Target::Folder(id, path) => (id, path.clone()),
        Target::Status | Target::Health | Target::Name(_) | Target::BundleRoot(_) => return,
    };
    stays_in_the_bundle(&path);
    let escapes = raw.split('%').skip(1);
    for escape in escapes {
        let digits = escape.as_bytes().get(..2).unwrap_or_default();
        assert!(
            digits.len() == 2 && digits.iter().all(u8::is_ascii_hexdigit),
            "{raw:?}"
        );
    }
    // The link a listing writes for the path reads back as the same target.
    assert_eq!(target::parse(&link(id, &path, &target)), Ok(target));
}

fn stays_in_the_bundle(path: &str) {
    assert!(!path.starts_with('/') && !path.contains('\\') && !path.contains('\0'));
    if !path.is_empty() {
        assert!(
            path.split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."),
            "{path:?}"
        );
    }
}

fn link(id: &BundleId, path: &str, target: &Target) -> String {
    let encoded: Vec<String> = path.split('/').map(target::encode_segment).collect();
    let slash = if matches!(target, Target::Folder(..)) && !path.is_empty() {
        "/"
    } else {
        ""
    };
    format!("/b/{id}/{}{slash}", encoded.join("/"))
}

/// The node's TOML file. What is accepted gives each size in MiB as exactly
/// that many bytes.
pub fn node_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = NodeConfig::from_toml(text) else {
        return;
    };
    let table: toml::Table = text.parse().expect("accepted, so TOML");
    let mib = |section: &str, key: &str| {
        table
            .get(section)
            .and_then(|s| s.get(key))
            .and_then(toml::Value::as_integer)
            .map(|m| u128::try_from(m).expect("accepted, so positive") << 20)
    };
    let bytes = |b: u64| Some(u128::from(b));
    if let Some(m) = mib("quic", "cache_max_mib") {
        assert_eq!(bytes(config.quic.cache_max_bytes), Some(m));
    }
    assert_eq!(
        config.quic.fetch_rate.map(u128::from),
        mib("quic", "fetch_rate_mib_s")
    );
    if let Some(m) = mib("uploads", "keep_free_mib") {
        assert_eq!(bytes(config.uploads_keep_free), Some(m));
    }
    let now = std::time::Instant::now();
    for timing in [config.scrub.interval]
        .into_iter()
        .chain(config.connections.timings())
    {
        assert!(now.checked_add(timing * 4).is_some(), "{timing:?}");
    }
}

/// One file of an arbitrary manifest: sizes gather near the edges where
/// arithmetic breaks.
#[derive(Debug, Arbitrary)]
struct File {
    path: Vec<Segment>,
    size: Size,
    content: u8,
    ranges: Vec<(Option<u64>, Option<u64>)>,
}

#[derive(Debug, Arbitrary)]
enum Segment {
    Name(u8),
    Dot,
    DotDot,
    Empty,
    Text(String),
}

#[derive(Debug, Arbitrary)]
enum Size {
    Small(u16),
    NearGroup(u8, i16),
    NearFileCap(i32),
    NearBundleCap(i32),
    NearMax(u16),
    Any(u64),
}

impl Size {
    fn bytes(&self) -> u64 {
        let near = |base: u64, d: i64| base.saturating_add_signed(d);
        match *self {
            Self::Small(n) => n.into(),
            Self::NearGroup(k, d) => near(u64::from(k) * GROUP_BYTES, d.into()),
            Self::NearFileCap(d) => near(MAX_FILE_BYTES, d.into()),
            Self::NearBundleCap(d) => near(MAX_BUNDLE_BYTES, d.into()),
            Self::NearMax(d) => u64::MAX - u64::from(d),
            Self::Any(n) => n,
        }
    }
}

impl Segment {
    fn text(&self) -> String {
        match self {
            Self::Name(n) => format!("f{}", n % 8),
            Self::Dot => ".".into(),
            Self::DotDot => "..".into(),
            Self::Empty => String::new(),
            Self::Text(t) => t.clone(),
        }
    }
}

/// Structure-aware: the bytes build a list of files, encoded as a manifest by
/// hand (skipping every rule `Manifest::new` enforces, as an attacker would);
/// what the decoder accepts goes through the serving and store computations.
pub fn manifest_serve(data: &[u8]) {
    let Ok(files) = Vec::<File>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let paths: Vec<String> = files
        .iter()
        .map(|f| {
            f.path
                .iter()
                .map(Segment::text)
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    let entries: Vec<(&str, &[u8], u64)> = files
        .iter()
        .zip(&paths)
        .map(|(f, p)| (p.as_str(), std::slice::from_ref(&f.content), f.size.bytes()))
        .collect();
    let bytes = cartable_proto::fuzzing::crafted_manifest(&entries);
    let Ok(manifest) = Manifest::decode(&bytes) else {
        return;
    };
    let total: u128 = manifest.entries().iter().map(|e| u128::from(e.size)).sum();
    assert!(total <= u128::from(MAX_BUNDLE_BYTES));
    assert_eq!(u128::from(manifest.total_size()), total);
    let id = manifest.id();
    for (entry, file) in manifest.entries().iter().zip(&files) {
        assert!(entry.size <= MAX_FILE_BYTES);
        serve_entry(&manifest, &id, &entry.path, entry.size, &entry.hash);
        for (first, last) in &file.ranges {
            let spec = |n: &Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
            check_range(&format!("bytes={}-{}", spec(first), spec(last)), entry.size);
        }
    }
}

/// What serving one file computes from its manifest entry.
fn serve_entry(
    manifest: &Manifest,
    id: &BundleId,
    path: &BundlePath,
    size: u64,
    hash: &cartable_proto::BlobHash,
) {
    let file = Target::File(*id, path.clone());
    assert_eq!(target::parse(&link(id, path.as_str(), &file)), Ok(file));
    assert!(
        manifest
            .entry(path.as_str())
            .is_some_and(|e| e.size == size)
    );
    let mut folder = path.as_str();
    while let Some((parent, _)) = folder.rsplit_once('/') {
        assert!(manifest.is_folder(parent), "{parent:?}");
        folder = parent;
    }
    assert!(manifest.files_under("").count() == manifest.entries().len());
    // Data and outboard on disk: no overflow, and at least the data.
    let disk = disk_bytes(size);
    assert!(disk >= size && disk - size <= size / GROUP_BYTES * 64 + 64);
    // The groups still to fetch when nothing is here yet: all of them, one range.
    let groups = size.div_ceil(GROUP_BYTES).max(1);
    assert_eq!(store().partial_missing(hash, size), vec![0..groups]);
    for end in [1, size / 2 + 1, size] {
        check_range(&format!("bytes=0-{}", end.saturating_sub(1)), size);
    }
}

/// One empty store for the whole process, in [`store_dir`].
fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| Store::open(store_dir()).expect("an empty store opens"))
}

/// The folder of this process's store, for whoever runs the checks to remove.
pub fn store_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cartable-fuzz-store-{}", std::process::id()))
}
