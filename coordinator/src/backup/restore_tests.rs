//! Restores of hand-made snapshots: what is checked before anything is written.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use cartable_net::identity::Identity;
use cartable_net::tls::TlsFiles;
use cartable_proto::BundleId;
use cartable_proto::backup::{Snapshot, SnapshotFile, SnapshotRow};

use super::restore::restore;
use crate::state::{BundleRecord, Cluster, MemoryKv, scan_tables, secret_hash};

const TOKEN: &str = "an-admin-token";

/// A coordinator's folder (key, certificate, token) and its state in memory,
/// as a snapshot.
fn snapshot_of_a_coordinator(dir: &Path) -> anyhow::Result<Snapshot> {
    let id = Identity::load_or_create(dir)?.id();
    TlsFiles::self_signed_in(dir).create_self_signed_if_missing()?;
    cartable_net::secret_file::create(&dir.join("admin-token"), &format!("{TOKEN}\n"))?;
    let kv = std::sync::Arc::new(MemoryKv::default());
    let mut cluster = Cluster::load(Box::new(kv.clone()), Instant::now())?;
    cluster.set_admin_hash(secret_hash(TOKEN.as_bytes()))?;
    let record = BundleRecord {
        size: 5,
        files: 1,
        replicas: 2,
        ..BundleRecord::default()
    };
    cluster.save_bundle(BundleId::of_manifest(b"m"), record)?;
    super::snapshot(scan_tables(&*kv)?, dir, id.to_string())
}

/// Restores `snapshot` into a folder that does not exist; its error text.
fn refusal(snapshot: &Snapshot) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("backup");
    std::fs::write(&file, cartable_proto::backup::encode(snapshot)?)?;
    let target = dir.path().join("data");
    let err = restore(&file, &target, false).expect_err("restored");
    assert!(!target.exists(), "a refused restore made the folder");
    Ok(format!("{err:#}"))
}

#[test]
fn a_snapshot_restores_into_an_absent_folder_with_private_files() -> anyhow::Result<()> {
    let source = tempfile::tempdir()?;
    let snapshot = snapshot_of_a_coordinator(source.path())?;
    assert_eq!(
        snapshot.files.len(),
        4,
        "key, certificate and its key, token"
    );
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("backup");
    std::fs::write(&file, cartable_proto::backup::encode(&snapshot)?)?;
    let target = dir.path().join("data");
    let restored = restore(&file, &target, false)?;
    assert_eq!(restored.snapshot, snapshot);
    assert!(restored.set_aside.is_none());
    let mut names: Vec<String> = std::fs::read_dir(&target)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    names.sort();
    assert_eq!(names, ["admin-token", "node-key.pem", "state", "tls"]);
    for f in &snapshot.files {
        let path = target.join(&f.path);
        assert_eq!(std::fs::read_to_string(&path)?, f.contents);
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(
        Identity::load(&target)?.id().to_string(),
        snapshot.coordinator
    );
    Ok(())
}

#[test]
fn snapshots_a_coordinator_could_not_start_from_are_refused() -> anyhow::Result<()> {
    let source = tempfile::tempdir()?;
    let good = snapshot_of_a_coordinator(source.path())?;

    let mut escaping = good.clone();
    escaping.files.push(SnapshotFile {
        path: "../outside".into(),
        contents: "x".into(),
    });
    assert!(refusal(&escaping)?.contains("unexpected file \"../outside\""));

    let mut no_key = good.clone();
    no_key.files.retain(|f| f.path != "node-key.pem");
    assert!(refusal(&no_key)?.contains("lacks node-key.pem"));

    let mut other_id = good.clone();
    other_id.coordinator = "00".repeat(32);
    assert!(refusal(&other_id)?.contains("not the key of coordinator"));

    let mut other_token = good.clone();
    for f in &mut other_token.files {
        if f.path == "admin-token" {
            f.contents = "another\n".into();
        }
    }
    assert!(refusal(&other_token)?.contains("admin token is not the one"));

    let mut unknown_table = good.clone();
    unknown_table.tables[0].name = "future".into();
    assert!(refusal(&unknown_table)?.contains("unknown table \"future\""));

    let mut newer = good.clone();
    let meta = newer
        .tables
        .iter_mut()
        .find(|t| t.name == "meta")
        .expect("a meta table");
    meta.rows
        .retain(|r| r.key != cartable_proto::hex::encode(b"schema"));
    meta.rows.push(SnapshotRow {
        key: cartable_proto::hex::encode(b"schema"),
        value: "\"99\"".into(),
    });
    assert!(refusal(&newer)?.contains("schema 99"));
    Ok(())
}
