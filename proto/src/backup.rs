//! The coordinator's backup file: its whole state — key, HTTPS certificate,
//! admin token, every stored row (members, join tokens, bundles, replicas,
//! names) — in one versioned, checksummed file. The coordinator writes it
//! (`cartable-coordinator backup`, `POST /api/backup`), the CLI checks it
//! before keeping it (`cartable backup`), and `cartable-coordinator restore`
//! checks it before writing anything.
//!
//! # Goals and non-goals
//!
//! - A truncated, corrupted or foreign file is refused whole, by [`decode`],
//!   before any of it is used: restoring half a state is worse than none.
//! - The format says nothing about the rows' meaning: they are the stored
//!   rows as they are, with the state's schema row among them, so a backup is
//!   restored by the schema migrations every data folder goes through.
//! - Not encrypted: the file holds secrets and is kept like one (mode 0600,
//!   stored where only the operators can read it).
//!
//! # Layout
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 28 | magic `CARTABLE-COORDINATOR-BACKUP\n` |
//! | 28 | 4 | format version, big-endian, [`FORMAT_VERSION`] |
//! | 32 | 8 | body length `N`, big-endian, at most [`MAX_BACKUP_BYTES`] − 72 |
//! | 40 | N | body: a [`Snapshot`] as JSON |
//! | 40 + N | 32 | BLAKE3-256 of bytes `0 .. 40 + N` |
//!
//! The file is exactly `72 + N` bytes. Row keys are hex (they are binary ids
//! or text); row values are the stored JSON text as it is.

use serde::{Deserialize, Serialize};

/// The first bytes of every backup file (readable with `head -1`).
pub const MAGIC: &[u8; 28] = b"CARTABLE-COORDINATOR-BACKUP\n";
/// The layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The largest backup file written or read, header and checksum included.
pub const MAX_BACKUP_BYTES: u64 = 256 << 20;

const HEADER: usize = 40;
const CHECKSUM: usize = 32;

/// Everything a coordinator needs to start again as itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// When it was taken, Unix seconds.
    pub taken_at: u64,
    /// The coordinator's id (its key), in hex: which cluster this is.
    pub coordinator: String,
    /// Files of the data folder, by path relative to it.
    pub files: Vec<SnapshotFile>,
    /// Every table of the stored state.
    pub tables: Vec<SnapshotTable>,
}

/// One file of the data folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFile {
    /// Path relative to the data folder, `/`-separated.
    pub path: String,
    /// Its contents (PEM or a token: text).
    pub contents: String,
}

/// One table of the stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotTable {
    /// The table's name.
    pub name: String,
    /// Its rows, sorted by key.
    pub rows: Vec<SnapshotRow>,
}

/// One stored row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRow {
    /// The key, lowercase hex.
    pub key: String,
    /// The value: stored JSON text.
    pub value: String,
}

impl Snapshot {
    /// The row counts by table, for messages: `nodes=4 bundles=2 …`.
    pub fn summary(&self) -> String {
        self.tables
            .iter()
            .map(|t| format!("{}={}", t.name, t.rows.len()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A file's contents by its path.
    pub fn file(&self, path: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.contents.as_str())
    }
}

/// Why bytes are not a usable backup. Each refusal uses none of them.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file does not start with [`MAGIC`].
    #[error("not a Cartable coordinator backup (the file does not start with {:?})", String::from_utf8_lossy(MAGIC).trim_end())]
    NotABackup,
    /// A layout version this build does not read.
    #[error(
        "backup format version {found}; this coordinator reads version {known} (use a coordinator at least as new as the one that wrote it)"
    )]
    Version {
        /// The file's.
        found: u32,
        /// This build's.
        known: u32,
    },
    /// Larger than [`MAX_BACKUP_BYTES`].
    #[error("the backup is {len} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// Its size, or the size its header claims.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Fewer bytes than its header says: cut short while copied or written.
    #[error("the backup is truncated: {len} bytes where its header says {expected}")]
    Truncated {
        /// Bytes present.
        len: u64,
        /// Bytes the header announces.
        expected: u64,
    },
    /// More bytes than its header says.
    #[error("the backup has {0} unexpected bytes after its end")]
    Trailing(u64),
    /// The checksum does not match: bytes changed since it was written.
    #[error("the backup is corrupted: its BLAKE3 checksum does not match its contents")]
    Checksum,
    /// The checksum matches but the body is not a snapshot (a bug in the writer).
    #[error("the backup's contents are unreadable: {0}")]
    Body(String),
}

/// `snapshot` as a backup file.
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, BackupError> {
    let body = serde_json::to_vec(snapshot).map_err(|e| BackupError::Body(e.to_string()))?;
    let len = (HEADER + body.len() + CHECKSUM) as u64;
    if len > MAX_BACKUP_BYTES {
        return Err(BackupError::TooLarge {
            len,
            max: MAX_BACKUP_BYTES,
        });
    }
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    out.extend_from_slice(&body);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

/// The snapshot in a backup file, once its magic, version, length and
/// checksum are checked, in that order.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, BackupError> {
    let len = bytes.len() as u64;
    let magic_seen = &bytes[..bytes.len().min(MAGIC.len())];
    if magic_seen != &MAGIC[..magic_seen.len()] || bytes.is_empty() {
        return Err(BackupError::NotABackup);
    }
    if bytes.len() < HEADER {
        return Err(BackupError::Truncated {
            len,
            expected: (HEADER + CHECKSUM) as u64,
        });
    }
    let found = u32::from_be_bytes(bytes[28..32].try_into().unwrap_or_default());
    if found != FORMAT_VERSION {
        return Err(BackupError::Version {
            found,
            known: FORMAT_VERSION,
        });
    }
    let body_len = u64::from_be_bytes(bytes[32..40].try_into().unwrap_or_default());
    let expected = body_len.saturating_add((HEADER + CHECKSUM) as u64);
    if expected > MAX_BACKUP_BYTES {
        return Err(BackupError::TooLarge {
            len: expected,
            max: MAX_BACKUP_BYTES,
        });
    }
    if len < expected {
        return Err(BackupError::Truncated { len, expected });
    }
    if len > expected {
        return Err(BackupError::Trailing(len - expected));
    }
    let (signed, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    if blake3::hash(signed).as_bytes() != sum {
        return Err(BackupError::Checksum);
    }
    serde_json::from_slice(&signed[HEADER..]).map_err(|e| BackupError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            taken_at: 1_700_000_000,
            coordinator: "ab".repeat(32),
            files: vec![SnapshotFile {
                path: "admin-token".into(),
                contents: "secret\n".into(),
            }],
            tables: vec![SnapshotTable {
                name: "meta".into(),
                rows: vec![SnapshotRow {
                    key: "736368656d61".into(),
                    value: "\"1\"".into(),
                }],
            }],
        }
    }

    #[test]
    fn a_backup_decodes_to_what_was_encoded() -> Result<(), BackupError> {
        let bytes = encode(&sample())?;
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(decode(&bytes)?, sample());
        assert_eq!(sample().summary(), "meta=1");
        assert_eq!(sample().file("admin-token"), Some("secret\n"));
        Ok(())
    }

    #[test]
    fn every_truncation_is_refused() -> Result<(), BackupError> {
        let bytes = encode(&sample())?;
        for cut in 0..bytes.len() {
            let refused = decode(&bytes[..cut]);
            assert!(
                matches!(
                    refused,
                    Err(BackupError::Truncated { .. } | BackupError::NotABackup)
                ),
                "cut at {cut}: {refused:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn every_flipped_bit_is_refused() -> Result<(), BackupError> {
        let bytes = encode(&sample())?;
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "byte {i} changed and still accepted");
        }
        Ok(())
    }

    #[test]
    fn foreign_files_newer_versions_and_extra_bytes_say_what_they_are() -> Result<(), BackupError> {
        let bytes = encode(&sample())?;
        let err = decode(b"-----BEGIN PRIVATE KEY-----\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("not a Cartable coordinator backup")
        );
        let mut newer = bytes.clone();
        newer[28..32].copy_from_slice(&2u32.to_be_bytes());
        assert!(matches!(
            decode(&newer),
            Err(BackupError::Version { found: 2, known: 1 })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(BackupError::Trailing(1))));
        let mut huge = bytes;
        huge[32..40].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(decode(&huge), Err(BackupError::TooLarge { .. })));
        Ok(())
    }
}
