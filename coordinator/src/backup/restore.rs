//! `cartable-coordinator restore FILE`: a backup written into a fresh data
//! folder, after every check that can fail has passed.
//!
//! Order, so that a refusal changes nothing and a crash leaves no half state
//! that looks whole:
//!
//! 1. the file is read (at most [`MAX_BACKUP_BYTES`]) and decoded: magic,
//!    version, length, checksum ([`cartable_proto::backup::decode`]);
//! 2. its contents are checked: known files only, the key matches the id the
//!    backup names, the rows load as a state this build reads (a newer schema
//!    is refused), the admin token matches the state's;
//! 3. the folder is checked: no coordinator running on it; empty or absent,
//!    unless `--force`;
//! 4. everything is written under `DATA/.restore-partial/` and synced;
//! 5. with `--force`, what the folder held is moved into `DATA/replaced-UNIX/`
//!    (nothing is deleted); then each entry is renamed into place.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use cartable_net::identity::Identity;
use cartable_proto::backup::{MAX_BACKUP_BYTES, Snapshot};

use super::{DATA_FILES, Required};
use crate::state::{Cluster, Kv, MemoryKv, SledKv, TABLES, secret_hash};

/// Where a restore is written before it is moved into place.
const STAGING: &str = ".restore-partial";

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The backup's contents.
    pub snapshot: Snapshot,
    /// Where the folder's former contents went (`--force` on a folder in use).
    pub set_aside: Option<PathBuf>,
}

/// Restores the backup `file` into `data_dir` (see the module doc).
pub fn restore(file: &Path, data_dir: &Path, force: bool) -> anyhow::Result<Restored> {
    let snapshot = read(file)?;
    check(&snapshot).with_context(|| format!("{} cannot be restored", file.display()))?;
    let existing = check_target(data_dir, force)?;
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let staging = data_dir.join(STAGING);
    if staging.exists() {
        // Left by an interrupted restore: never moved into place, so unused.
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    write_staging(&snapshot, &staging)?;
    let set_aside = match existing.is_empty() {
        true => None,
        false => Some(set_aside(data_dir, &existing)?),
    };
    for entry in fs::read_dir(&staging)? {
        let name = entry?.file_name();
        fs::rename(staging.join(&name), data_dir.join(&name))
            .with_context(|| format!("moving {} into place", name.to_string_lossy()))?;
    }
    fs::remove_dir(&staging)?;
    fs::File::open(data_dir)?.sync_all()?;
    Ok(Restored {
        snapshot,
        set_aside,
    })
}

/// The backup in `file`, checked whole.
fn read(file: &Path) -> anyhow::Result<Snapshot> {
    let len = fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_BACKUP_BYTES,
        "{}: {len} bytes, more than a backup can be ({MAX_BACKUP_BYTES})",
        file.display()
    );
    let bytes = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    cartable_proto::backup::decode(&bytes).with_context(|| format!("{}", file.display()))
}

/// Whether the snapshot is one this build can start from, as the module doc says.
fn check(snapshot: &Snapshot) -> anyhow::Result<()> {
    for f in &snapshot.files {
        anyhow::ensure!(
            DATA_FILES.iter().any(|(path, _)| *path == f.path),
            "it holds an unexpected file {:?}",
            f.path
        );
    }
    for (path, required) in DATA_FILES {
        anyhow::ensure!(
            required == Required::No || snapshot.file(path).is_some(),
            "it lacks {path}"
        );
    }
    let key = snapshot
        .file(cartable_net::identity::KEY_FILE)
        .unwrap_or_default();
    let id = Identity::from_pem(key)
        .context("its key is unreadable")?
        .id();
    anyhow::ensure!(
        id.to_string() == snapshot.coordinator,
        "its key is not the key of coordinator {}",
        snapshot.coordinator
    );
    let kv = MemoryKv::default();
    fill(&kv, snapshot)?;
    let cluster = Cluster::load(Box::new(kv), Instant::now()).context("its state is unreadable")?;
    let token = snapshot
        .file(crate::daemon::ADMIN_TOKEN_FILE)
        .unwrap_or_default();
    anyhow::ensure!(
        cluster.admin_hash.as_deref() == Some(secret_hash(token.trim().as_bytes()).as_str()),
        "its admin token is not the one its state accepts"
    );
    Ok(())
}

/// Writes the snapshot's rows into `kv`.
fn fill(kv: &dyn Kv, snapshot: &Snapshot) -> anyhow::Result<()> {
    for table in &snapshot.tables {
        let name = TABLES
            .iter()
            .find(|t| **t == table.name)
            .with_context(|| format!("it holds an unknown table {:?}", table.name))?;
        for row in &table.rows {
            let key = cartable_proto::hex::decode_lower_vec(&row.key)
                .with_context(|| format!("a key of table {name} is not hex: {:?}", row.key))?;
            kv.put(name, &key, row.value.as_bytes())?;
        }
    }
    Ok(())
}

/// The folder's entries that a restore would replace; refuses a folder in use,
/// and one that is not empty unless `force`.
fn check_target(data_dir: &Path, force: bool) -> anyhow::Result<Vec<PathBuf>> {
    let state = data_dir.join("state");
    anyhow::ensure!(
        !SledKv::is_open_elsewhere(&state)
            .with_context(|| format!("checking {}", state.display()))?,
        "a coordinator is running on {}: stop it first",
        data_dir.display()
    );
    let existing: Vec<PathBuf> = match fs::read_dir(data_dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|p| p.file_name() != Some(STAGING.as_ref()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", data_dir.display())),
    };
    if !existing.is_empty() && !force {
        let mut names: Vec<String> = existing
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        anyhow::bail!(
            "{} is not empty (it holds {}): restore into a fresh folder, or pass --force to move \
             what it holds into a replaced-* folder inside it",
            data_dir.display(),
            names.join(", ")
        );
    }
    Ok(existing)
}

/// Writes every file and row of the snapshot under `staging`, synced.
fn write_staging(snapshot: &Snapshot, staging: &Path) -> anyhow::Result<()> {
    for f in &snapshot.files {
        let path = staging.join(&f.path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        cartable_net::secret_file::create(&path, &f.contents)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let state = staging.join("state");
    let kv = SledKv::open(&state).with_context(|| format!("creating {}", state.display()))?;
    fill(&kv, snapshot)?;
    kv.flush()?;
    drop(kv);
    for dir in [staging.join("tls"), staging.to_owned()] {
        if dir.exists() {
            fs::File::open(&dir)?.sync_all()?;
        }
    }
    Ok(())
}

/// Moves `entries` of `data_dir` into a new `replaced-UNIX` folder inside it.
fn set_aside(data_dir: &Path, entries: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let aside = data_dir.join(format!("replaced-{}", crate::state::unix_now()));
    fs::create_dir(&aside).with_context(|| format!("creating {}", aside.display()))?;
    for path in entries {
        let name = path.file_name().context("an entry without a name")?;
        fs::rename(path, aside.join(name))
            .with_context(|| format!("moving {} aside", path.display()))?;
    }
    Ok(aside)
}
