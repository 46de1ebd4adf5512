//! Backup and restore of the whole coordinator: what `cartable-coordinator
//! backup` and `restore` and `POST /api/backup` do. The file's layout is
//! [`cartable_proto::backup`]'s.
//!
//! - [`take`]: a snapshot of the running state, with the lock held, and the
//!   data folder's secret files ([`DATA_FILES`]).
//! - [`offline`]: the same from a data folder no coordinator has open.
//! - [`fetch`]: `cartable-coordinator backup`: asks the running coordinator
//!   (its address and admin token are in the data folder), else reads the
//!   folder itself.
//! - [`restore`]: a checked backup written into a fresh data folder.

pub mod fetch;
pub mod restore;
#[cfg(test)]
mod restore_tests;

use std::path::Path;

use anyhow::Context;
use cartable_proto::backup::{Snapshot, SnapshotFile, SnapshotRow, SnapshotTable};
use cartable_proto::hex::encode as hex;

use crate::Coordinator;
use crate::state::kv::Rows;
use crate::state::{SledKv, scan_tables, unix_now};

/// The data folder's files a backup holds, relative to it: the coordinator's
/// key (it signs join tokens and upload grants; nodes know the coordinator by
/// it), the self-signed HTTPS certificate and its key (nodes and the CLI pin
/// it), the admin token. The first and the last must be there.
pub const DATA_FILES: [(&str, Required); 4] = [
    (cartable_net::identity::KEY_FILE, Required::Yes),
    ("tls/cert.pem", Required::No),
    ("tls/key.pem", Required::No),
    (crate::daemon::ADMIN_TOKEN_FILE, Required::Yes),
];

/// Whether a data file must be in every backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Required {
    /// A coordinator without it is not the same coordinator.
    Yes,
    /// Absent when the operator's own certificate is configured.
    No,
}

/// A snapshot of the running coordinator: its rows read at one instant, with
/// the state's lock held only for that, and its data folder's files.
pub fn take(coord: &Coordinator) -> anyhow::Result<Snapshot> {
    let tables = coord.lock().stored_tables()?;
    snapshot(
        tables,
        &coord.config.data_dir,
        coord.identity.id().to_string(),
    )
}

/// A snapshot of a data folder no coordinator has open, read without
/// changing anything in it.
pub fn offline(data_dir: &Path) -> anyhow::Result<Snapshot> {
    let state = data_dir.join("state");
    anyhow::ensure!(
        state.join("db").exists(),
        "{} holds no coordinator state",
        data_dir.display()
    );
    let identity = cartable_net::identity::Identity::load(data_dir)?;
    let kv = SledKv::open(&state).with_context(|| {
        format!(
            "opening {} (did a coordinator start on it meanwhile?)",
            state.display()
        )
    })?;
    let tables = scan_tables(&kv)?;
    drop(kv);
    snapshot(tables, data_dir, identity.id().to_string())
}

fn snapshot(
    tables: Vec<(&'static str, Rows)>,
    data_dir: &Path,
    coordinator: String,
) -> anyhow::Result<Snapshot> {
    let tables = tables
        .into_iter()
        .map(|(name, rows)| {
            let rows = rows
                .into_iter()
                .map(|(k, v)| {
                    let value = String::from_utf8(v).map_err(|_| {
                        anyhow::anyhow!("a row of table {name} is not UTF-8 JSON; not backed up")
                    })?;
                    Ok(SnapshotRow {
                        key: hex(&k),
                        value,
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            Ok(SnapshotTable {
                name: name.to_owned(),
                rows,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Snapshot {
        taken_at: unix_now(),
        coordinator,
        files: data_files(data_dir)?,
        tables,
    })
}

/// The [`DATA_FILES`] of `data_dir`, read as the secrets they are.
fn data_files(data_dir: &Path) -> anyhow::Result<Vec<SnapshotFile>> {
    let mut files = Vec::new();
    for (path, required) in DATA_FILES {
        let full = data_dir.join(path);
        if required == Required::No && !full.exists() {
            continue;
        }
        // The certificate is public; the rest are refused if others can read them.
        let contents = if path.ends_with("cert.pem") {
            std::fs::read_to_string(&full)
        } else {
            cartable_net::secret_file::read(&full)
        }
        .with_context(|| format!("reading {}", full.display()))?;
        files.push(SnapshotFile {
            path: path.to_owned(),
            contents,
        });
    }
    Ok(files)
}
