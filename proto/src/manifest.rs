//! The bundle manifest: every file of a lesson as `(path, blob hash, size, content
//! type)`, sorted by path, in one canonical binary encoding. The bundle id is the
//! BLAKE3 hash of that encoding, so the same files give the same id on any machine.
//!
//! # Encoding, version 1
//!
//! All integers little-endian.
//!
//! ```text
//! magic      4 bytes   "CRTM"
//! version    u8        1
//! count      u32       number of entries, at most MAX_ENTRIES
//! entries    count times:
//!   path_len u16       1..=MAX_PATH_BYTES
//!   path     path_len  UTF-8, obeys the path rules
//!   hash     32 bytes  BLAKE3 of the file
//!   size     u64       file length in bytes
//!   type_len u8        1..=255
//!   type     type_len  content type, visible ASCII and spaces
//! ```
//!
//! Canonical form: entries strictly increasing by path bytes (so no duplicates),
//! no path that is also a folder of another path, nothing after the last entry.
//! The decoder refuses anything else, so one manifest has exactly one encoding.
//!
//! Sizes: a manifest comes from strangers (publishers, peers), and nodes size
//! files, records and reservations from it. So one blob hash has exactly one size
//! within a manifest (two sizes for one content are a lie, and would make a node
//! fetch or verify the same blob under two lengths), no file is over
//! [`MAX_FILE_BYTES`] and the sum of the sizes, computed with checked arithmetic,
//! is at most [`MAX_BUNDLE_BYTES`]. [`Manifest::decode`] and [`Manifest::new`]
//! both refuse a manifest that breaks these rules ([`ManifestError`]), so every
//! [`Manifest`] in memory obeys them and [`Manifest::total_size`] cannot wrap.

use std::collections::{HashMap, HashSet};

use crate::content_type;
use crate::decode::{DecodeError, Reader, check_limit};
use crate::id::{BlobHash, BundleId};
use crate::path::{BundlePath, MAX_PATH_BYTES};

const MAGIC: &[u8; 4] = b"CRTM";
/// The encoding version this build writes.
pub const VERSION: u8 = 1;
/// Most files in one bundle.
pub const MAX_ENTRIES: usize = 262_144;
/// Largest file in a bundle: 64 GiB, far above hours of HD video, the largest
/// file a lesson has. Nodes size what they keep per blob from it (the record of
/// verified 16 KiB groups is `size / 16 KiB` bytes, 4 MiB at this cap), so a
/// manifest must not be able to claim an exabyte.
pub const MAX_FILE_BYTES: u64 = 64 << 30;
/// Largest bundle, the sum of its files' sizes: 256 GiB, a whole course of video.
/// It bounds what one publish can ask of a node's capacity and disk, and keeps
/// every total far from `u64` overflow.
pub const MAX_BUNDLE_BYTES: u64 = 256 << 30;
/// Smallest encoded entry: 1-byte path and 1-byte type.
const MIN_ENTRY_BYTES: usize = 2 + 1 + 32 + 8 + 1 + 1;

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Where the file sits in the bundle.
    pub path: BundlePath,
    /// The file's content.
    pub hash: BlobHash,
    /// The file's length in bytes.
    pub size: u64,
    /// The `Content-Type` it is served with.
    pub content_type: String,
}

/// Why a list of entries cannot form a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Two entries with one path.
    #[error("duplicate path {0}")]
    Duplicate(BundlePath),
    /// A path that is also a folder of another entry (`a` and `a/b`).
    #[error("{0} is both a file and a folder")]
    FileIsAlsoFolder(BundlePath),
    /// More than [`MAX_ENTRIES`] entries.
    #[error("{len} files, more than the limit {max}")]
    TooManyEntries {
        /// Entries given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A content type that cannot be sent as a header.
    #[error("invalid content type for {0}")]
    BadContentType(BundlePath),
    /// One blob hash listed with two sizes: one content has one length.
    #[error("blob {hash} is listed with two sizes, {first} and {second} bytes ({path})")]
    ConflictingSizes {
        /// The blob.
        hash: BlobHash,
        /// The size of its first entry.
        first: u64,
        /// The other size, at `path`.
        second: u64,
        /// The entry with the other size.
        path: BundlePath,
    },
    /// A file over [`MAX_FILE_BYTES`].
    #[error("{path} is {size} bytes, more than the limit {max} per file")]
    FileTooLarge {
        /// The file.
        path: BundlePath,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Files adding up to more than [`MAX_BUNDLE_BYTES`].
    #[error("the files add up to at least {total} bytes, more than the limit {max} per bundle")]
    BundleTooLarge {
        /// The sum when it passed the limit (`u64::MAX` if it overflowed).
        total: u64,
        /// The limit.
        max: u64,
    },
}

/// A bundle's list of files, sorted by path. Build one with [`Manifest::new`] or
/// [`Manifest::decode`]; both enforce the canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Sorts `entries` by path and checks the rules.
    pub fn new(mut entries: Vec<ManifestEntry>) -> Result<Self, ManifestError> {
        entries.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
        if let Some(pair) = entries.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(ManifestError::Duplicate(pair[0].path.clone()));
        }
        validate_sorted(&entries)?;
        Ok(Self { entries })
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    /// The file at `path`, if any.
    pub fn entry(&self, path: &str) -> Option<&ManifestEntry> {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The files below folder `folder` (`""` for the root), in path order.
    pub fn files_under<'a>(&'a self, folder: &str) -> impl Iterator<Item = &'a ManifestEntry> {
        let prefix = if folder.is_empty() {
            String::new()
        } else {
            format!("{folder}/")
        };
        let start = self
            .entries
            .partition_point(|e| e.path.as_str() < prefix.as_str());
        self.entries[start..]
            .iter()
            .take_while(move |e| e.path.as_str().starts_with(&prefix))
    }

    /// Whether `path` names a folder of this bundle.
    pub fn is_folder(&self, path: &str) -> bool {
        self.files_under(path).next().is_some()
    }

    /// Sum of the files' sizes, at most [`MAX_BUNDLE_BYTES`] (checked when built).
    pub fn total_size(&self) -> u64 {
        // Saturating only so that no arithmetic here can panic or wrap; the
        // checks at construction keep the sum under the cap.
        self.entries
            .iter()
            .fold(0u64, |total, e| total.saturating_add(e.size))
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let len: usize = self
            .entries
            .iter()
            .map(|e| MIN_ENTRY_BYTES - 2 + e.path.as_str().len() + e.content_type.len())
            .sum();
        let mut out = Vec::with_capacity(9 + len);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            let path = e.path.as_str().as_bytes();
            out.extend_from_slice(&(path.len() as u16).to_le_bytes());
            out.extend_from_slice(path);
            out.extend_from_slice(e.hash.as_bytes());
            out.extend_from_slice(&e.size.to_le_bytes());
            out.push(e.content_type.len() as u8);
            out.extend_from_slice(e.content_type.as_bytes());
        }
        out
    }

    /// The bundle id: the hash of [`Manifest::encode`].
    pub fn id(&self) -> BundleId {
        BundleId::of_manifest(&self.encode())
    }

    /// Decodes untrusted bytes, refusing any non-canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.bytes(4)? != MAGIC {
            return Err(DecodeError::BadMagic("manifest"));
        }
        match r.u8()? {
            VERSION => {}
            v => return Err(DecodeError::BadVersion(v)),
        }
        let count = r.u32()? as usize;
        check_limit("entry count", count as u64, MAX_ENTRIES as u64)?;
        // Each entry takes at least MIN_ENTRY_BYTES: refuse a count the input
        // cannot hold before allocating for it.
        let fit = r.remaining() / MIN_ENTRY_BYTES;
        check_limit("entry count for the input length", count as u64, fit as u64)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(decode_entry(&mut r)?);
        }
        r.finish()?;
        if let Some(pair) = entries
            .windows(2)
            .find(|w| w[0].path.as_str() >= w[1].path.as_str())
        {
            return Err(DecodeError::Invalid(format!(
                "entries not in strictly increasing path order at {}",
                pair[1].path
            )));
        }
        validate_sorted(&entries)?;
        Ok(Self { entries })
    }
}

fn decode_entry(r: &mut Reader<'_>) -> Result<ManifestEntry, DecodeError> {
    let path_len = usize::from(r.u16()?);
    check_limit("path length", path_len as u64, MAX_PATH_BYTES as u64)?;
    let path = r.str(path_len, "path")?;
    let path =
        BundlePath::new(path).map_err(|e| DecodeError::Invalid(format!("path {path:?}: {e}")))?;
    let hash = BlobHash::from_bytes(r.array()?);
    let size = r.u64()?;
    let type_len = usize::from(r.u8()?);
    let content_type = r.str(type_len, "content type")?.to_owned();
    Ok(ManifestEntry {
        path,
        hash,
        size,
        content_type,
    })
}

/// Checks the rules that need the whole list; `entries` is sorted without duplicates.
fn validate_sorted(entries: &[ManifestEntry]) -> Result<(), ManifestError> {
    if entries.len() > MAX_ENTRIES {
        return Err(ManifestError::TooManyEntries {
            len: entries.len(),
            max: MAX_ENTRIES,
        });
    }
    if let Some(e) = entries
        .iter()
        .find(|e| !content_type::is_valid(&e.content_type))
    {
        return Err(ManifestError::BadContentType(e.path.clone()));
    }
    check_sizes(entries)?;
    let files: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    for e in entries {
        let path = e.path.as_str();
        let folders = path.match_indices('/').map(|(i, _)| &path[..i]);
        if let Some(folder) = folders.into_iter().find(|f| files.contains(f)) {
            return Err(ManifestError::FileIsAlsoFolder(
                BundlePath::new(folder).expect("a prefix of a valid path is valid"),
            ));
        }
    }
    Ok(())
}

/// One size per hash, and the size caps.
fn check_sizes(entries: &[ManifestEntry]) -> Result<(), ManifestError> {
    let mut sizes: HashMap<BlobHash, u64> = HashMap::with_capacity(entries.len());
    for e in entries {
        let first = *sizes.entry(e.hash).or_insert(e.size);
        if first != e.size {
            return Err(ManifestError::ConflictingSizes {
                hash: e.hash,
                first,
                second: e.size,
                path: e.path.clone(),
            });
        }
    }
    check_size_caps(entries.iter().map(|e| (&e.path, e.size)))?;
    Ok(())
}

/// Checks files' sizes against [`MAX_FILE_BYTES`] each and [`MAX_BUNDLE_BYTES`]
/// in all, with checked arithmetic, and returns the total. The manifest
/// rules call it; so can a publisher before reading a byte of a folder.
pub fn check_size_caps<'a>(
    files: impl IntoIterator<Item = (&'a BundlePath, u64)>,
) -> Result<u64, ManifestError> {
    let mut total = 0u64;
    for (path, size) in files {
        if size > MAX_FILE_BYTES {
            return Err(ManifestError::FileTooLarge {
                path: path.clone(),
                size,
                max: MAX_FILE_BYTES,
            });
        }
        // Each size is at most MAX_FILE_BYTES and the total so far at most
        // MAX_BUNDLE_BYTES, so this cannot overflow; checked all the same.
        total = match total.checked_add(size) {
            Some(t) if t <= MAX_BUNDLE_BYTES => t,
            sum => {
                return Err(ManifestError::BundleTooLarge {
                    total: sum.unwrap_or(u64::MAX),
                    max: MAX_BUNDLE_BYTES,
                });
            }
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(path: &str, data: &[u8]) -> ManifestEntry {
        ManifestEntry {
            path: BundlePath::new(path).unwrap(),
            hash: BlobHash::of(data),
            size: data.len() as u64,
            content_type: content_type::for_path(path).to_owned(),
        }
    }

    fn sample() -> Manifest {
        Manifest::new(vec![
            entry("media/video.mp4", b"video"),
            entry("index.html", b"<h1>"),
            entry("media/a.png", b"png"),
        ])
        .unwrap()
    }

    #[test]
    fn lookups_find_files_and_folders() {
        let m = sample();
        assert_eq!(m.entry("media/a.png").unwrap().size, 3);
        assert!(m.entry("media").is_none());
        assert!(m.is_folder("media"));
        assert!(!m.is_folder("index.html"));
        let under: Vec<_> = m.files_under("media").map(|e| e.path.as_str()).collect();
        assert_eq!(under, ["media/a.png", "media/video.mp4"]);
        assert_eq!(m.files_under("").count(), 3);
        assert_eq!(m.total_size(), 12);
    }

    #[test]
    fn building_refuses_duplicates_and_file_folder_clashes() {
        let dup = Manifest::new(vec![entry("a", b"1"), entry("a", b"2")]);
        assert!(matches!(dup, Err(ManifestError::Duplicate(_))));
        let clash = Manifest::new(vec![
            entry("a", b"1"),
            entry("a.txt", b""),
            entry("a/b", b""),
        ]);
        assert!(matches!(clash, Err(ManifestError::FileIsAlsoFolder(p)) if p.as_str() == "a"));
    }

    #[test]
    fn decoder_refuses_non_canonical_forms() {
        let bytes = sample().encode();
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            Manifest::decode(&trailing),
            Err(DecodeError::TrailingBytes(1))
        );
        let mut version = bytes.clone();
        version[4] = 9;
        assert_eq!(Manifest::decode(&version), Err(DecodeError::BadVersion(9)));
        assert_eq!(
            Manifest::decode(b"NOPE\x01"),
            Err(DecodeError::BadMagic("manifest"))
        );
        // Swap the two entries' order by encoding them unsorted by hand.
        let m = sample();
        let unsorted = Manifest {
            entries: m.entries.iter().rev().cloned().collect(),
        };
        assert!(matches!(
            Manifest::decode(&unsorted.encode()),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut bytes = b"CRTM\x01".to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut bytes = b"CRTM\x01".to_vec();
        bytes.extend_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    fn sized(path: &str, seed: &[u8], size: u64) -> ManifestEntry {
        ManifestEntry {
            size,
            ..entry(path, seed)
        }
    }

    /// Encodes entries as a crafted manifest would be, skipping every check.
    fn crafted(entries: Vec<ManifestEntry>) -> Vec<u8> {
        Manifest { entries }.encode()
    }

    #[test]
    fn one_hash_with_two_sizes_is_refused() {
        // The measured attack: one blob listed twice, once with a size near 2^64.
        let bytes = crafted(vec![sized("a", b"x", 1), sized("b", b"x", u64::MAX - 1)]);
        let err = Manifest::decode(&bytes).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Manifest(ManifestError::ConflictingSizes { first: 1, .. })
            ),
            "{err:?}"
        );
        let bytes = crafted(vec![sized("a", b"x", 1), sized("b", b"x", 2)]);
        let err = Manifest::decode(&bytes).unwrap_err();
        assert!(
            matches!(
                &err,
                DecodeError::Manifest(ManifestError::ConflictingSizes { first: 1, second: 2, path, .. })
                    if path.as_str() == "b"
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("two sizes, 1 and 2 bytes"),
            "{err}"
        );
        let built = Manifest::new(vec![sized("b", b"x", 2), sized("a", b"x", 1)]);
        assert!(matches!(built, Err(ManifestError::ConflictingSizes { .. })));
    }

    #[test]
    fn one_hash_at_two_paths_with_one_size_is_fine() {
        let m = Manifest::new(vec![entry("a", b"same"), entry("b", b"same")]).unwrap();
        assert_eq!(Manifest::decode(&m.encode()), Ok(m.clone()));
        assert_eq!(m.total_size(), 8);
    }

    #[test]
    fn file_sizes_are_capped() {
        let at_cap = Manifest::new(vec![sized("big.mp4", b"v", MAX_FILE_BYTES)]).unwrap();
        assert_eq!(Manifest::decode(&at_cap.encode()), Ok(at_cap));
        let over = crafted(vec![sized("big.mp4", b"v", MAX_FILE_BYTES + 1)]);
        assert_eq!(
            Manifest::decode(&over),
            Err(DecodeError::Manifest(ManifestError::FileTooLarge {
                path: BundlePath::new("big.mp4").unwrap(),
                size: MAX_FILE_BYTES + 1,
                max: MAX_FILE_BYTES,
            }))
        );
    }

    #[test]
    fn bundle_totals_are_capped_without_wrapping() {
        let files = |n: u64| -> Vec<ManifestEntry> {
            (0..n)
                .map(|i| sized(&format!("f{i}"), &i.to_le_bytes(), MAX_FILE_BYTES))
                .collect()
        };
        let n_at_cap = MAX_BUNDLE_BYTES / MAX_FILE_BYTES;
        let full = Manifest::new(files(n_at_cap)).unwrap();
        assert_eq!(full.total_size(), MAX_BUNDLE_BYTES);
        let err = Manifest::decode(&crafted(files(n_at_cap + 1))).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Manifest(ManifestError::BundleTooLarge {
                    max: MAX_BUNDLE_BYTES,
                    ..
                })
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("per bundle"), "{err}");
        // Sizes that would wrap a u64 sum are refused, never summed to a small total.
        let wrapping = crafted(vec![
            sized("a", b"1", u64::MAX / 2 + 1),
            sized("b", b"2", u64::MAX / 2 + 1),
        ]);
        assert!(matches!(
            Manifest::decode(&wrapping),
            Err(DecodeError::Manifest(_))
        ));
    }

    fn arb_entries() -> impl Strategy<Value = Vec<ManifestEntry>> {
        let name = "[a-z0-9]{1,6}(\\.[a-z]{1,3})?";
        let path = prop::collection::vec(name, 1..4).prop_map(|segs| segs.join("/"));
        prop::collection::btree_map(path, prop::collection::vec(any::<u8>(), 0..8), 0..20).prop_map(
            |files| {
                let mut entries: Vec<ManifestEntry> =
                    files.iter().map(|(p, d)| entry(p, d)).collect();
                // Drop files that are also folders of others: a filesystem cannot hold both.
                let all: Vec<String> = files.keys().cloned().collect();
                entries.retain(|e| {
                    let folder = format!("{}/", e.path);
                    !all.iter().any(|p| p.starts_with(&folder))
                });
                entries
            },
        )
    }

    proptest! {
        #[test]
        fn encoding_round_trips(entries in arb_entries()) {
            let m = Manifest::new(entries).unwrap();
            let bytes = m.encode();
            prop_assert_eq!(Manifest::decode(&bytes), Ok(m.clone()));
            prop_assert_eq!(BundleId::of_manifest(&bytes), m.id());
        }

        #[test]
        fn id_does_not_depend_on_listing_order(entries in arb_entries(), seed in any::<u64>()) {
            let mut shuffled = entries.clone();
            // A cheap deterministic shuffle driven by the seed.
            let n = shuffled.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(i as u64 + 1).rotate_left(17) % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            prop_assert_eq!(Manifest::new(entries).unwrap().id(), Manifest::new(shuffled).unwrap().id());
        }

        #[test]
        fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::decode(&bytes);
        }

        #[test]
        fn decoder_never_panics_on_mutated_manifests(
            entries in arb_entries(), at in any::<prop::sample::Index>(), byte in any::<u8>()
        ) {
            let mut bytes = Manifest::new(entries).unwrap().encode();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Ok(m) = Manifest::decode(&bytes) {
                prop_assert_eq!(m.encode(), bytes, "a decoded manifest re-encodes to its input");
            }
        }
    }
}
