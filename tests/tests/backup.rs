//! The coordinator's disk is lost: a backup taken while it ran, restored into
//! a fresh folder, brings back a coordinator its nodes go on heartbeating to,
//! without joining again; a damaged backup changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::Context;
use cartable_proto::backup::Snapshot;
use serde_json::Value;

use cartable_tests::cluster::{
    FAST_POLICY, PLACES, cluster_of, complete, ensure_success, lists_bundle, publish, wait_for,
};

/// The ids of the members `cartable nodes` lists, and whether each was heard
/// from since the coordinator started, within the last 2 s.
fn heard_members(c: &cartable_tests::cluster::Coordinator) -> anyhow::Result<Vec<(String, bool)>> {
    let nodes = c.json(&["nodes"])?;
    Ok(nodes
        .as_array()
        .context("nodes is a list")?
        .iter()
        .map(|n| {
            let id = n["id"].as_str().unwrap_or_default().to_owned();
            let heard = n["last_seen_secs"].as_u64().is_some_and(|s| s <= 2);
            (id, heard && n["state"] == "up")
        })
        .collect())
}

#[test]
fn a_restored_coordinator_keeps_its_members_and_bundles() -> anyhow::Result<()> {
    let mut cl = cluster_of(&PLACES[..2], FAST_POLICY, "")?;
    let bundle = publish(&cl.coordinator, &["--replicas", "2", "--wait"])?;
    let c = &mut cl.coordinator;
    let before = heard_members(c)?;
    assert_eq!(before.len(), 2);

    // Taken while it runs, by the daemon's own command and by the admin CLI.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("coordinator.backup");
    let out = c.command(&["backup", file.to_str().context("UTF-8")?])?;
    ensure_success(&out, "cartable-coordinator backup")?;
    let said = String::from_utf8(out.stdout)?;
    assert!(said.contains("from the running coordinator"), "{said}");
    assert_eq!(
        std::fs::metadata(&file)?.permissions().mode() & 0o777,
        0o600,
        "the backup holds secrets"
    );
    let by_cli = dir.path().join("by-cli.backup");
    let out = c.cartable(&["backup", by_cli.to_str().context("UTF-8")?])?;
    ensure_success(&out, "cartable backup")?;
    assert_eq!(
        std::fs::metadata(&by_cli)?.permissions().mode() & 0o777,
        0o600
    );
    let refused = dir.path().join("refused.backup");
    let wrong = c.cartable_with_token(
        &"0".repeat(64),
        &["backup", refused.to_str().context("UTF-8")?],
    )?;
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && err.contains("401"), "{err}");
    assert!(!refused.exists(), "a backup needs the admin token");
    let tokens_before = c.json(&["token", "ls"])?;

    // The disk is lost.
    let stopped = c.stop_timed(Duration::from_secs(20))?;
    assert!(stopped.status.success(), "{stopped:?}");
    // A stopped coordinator's folder is read directly: the same coordinator
    // and members.
    let offline = dir.path().join("offline.backup");
    let out = c.command(&["backup", offline.to_str().context("UTF-8")?])?;
    ensure_success(&out, "cartable-coordinator backup (stopped)")?;
    let said = String::from_utf8(out.stdout)?;
    assert!(
        said.contains("from the stopped coordinator's folder"),
        "{said}"
    );
    let (running, stopped) = (read_backup(&file)?, read_backup(&offline)?);
    assert_eq!(running.coordinator, stopped.coordinator);
    assert_eq!(running.files, stopped.files);
    assert_eq!(row_keys(&running, "nodes"), row_keys(&stopped, "nodes"));
    assert_eq!(row_keys(&running, "bundles"), row_keys(&stopped, "bundles"));
    assert_eq!(row_keys(&running, "nodes").len(), 2);
    std::fs::remove_dir_all(c.data_dir())?;
    let out = c.command(&["restore", file.to_str().context("UTF-8")?])?;
    ensure_success(&out, "cartable-coordinator restore")?;
    std::fs::write(c.data_dir().join("test-config.toml"), FAST_POLICY)?;
    c.restart()?;

    // The same members, heard from again (a node that joined anew would be a
    // new id, and its used token would be refused).
    let again = wait_for(Duration::from_secs(20), "both members heard from", || {
        let now = heard_members(c)?;
        Ok(now.iter().all(|(_, heard)| *heard).then_some(now))
    })?;
    let ids = |list: &[(String, bool)]| list.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&before));
    // And still heartbeating a while later, not refused after one beat.
    std::thread::sleep(Duration::from_secs(2));
    assert!(heard_members(c)?.iter().all(|(_, heard)| *heard));
    assert!(lists_bundle(c, &bundle)?, "the bundle is listed");
    let copies = wait_for(Duration::from_secs(20), "both copies complete", || {
        let copies = complete(c, &bundle)?;
        Ok((copies.len() == 2).then_some(copies))
    })?;
    assert_eq!(copies.len(), 2);
    // The restored admin token still works, and the join tokens are the same.
    let tokens: Value = c.json(&["token", "ls"])?;
    assert_eq!(tokens, tokens_before);
    Ok(())
}

#[test]
fn a_damaged_backup_or_a_used_folder_is_refused_and_nothing_changes() -> anyhow::Result<()> {
    let cl = cluster_of(&PLACES[..1], FAST_POLICY, "")?;
    let c = &cl.coordinator;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("good.backup");
    ensure_success(
        &c.command(&["backup", file.to_str().context("UTF-8")?])?,
        "backup",
    )?;
    let good = std::fs::read(&file)?;

    let restore = |backup: &std::path::Path, target: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["--data-dir", target.to_str().unwrap_or_default(), "restore"];
        args.push(backup.to_str().unwrap_or_default());
        args.extend_from_slice(extra);
        std::process::Command::new(cartable_tests::node::binary("cartable-coordinator"))
            .args(&args)
            .output()
    };
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("truncated", good[..good.len() - 100].to_vec(), "truncated"),
        ("flipped", flip(&good, good.len() / 2), "corrupted"),
        (
            "foreign",
            b"hello\n".to_vec(),
            "not a Cartable coordinator backup",
        ),
    ];
    for (name, bytes, why) in cases {
        let bad = dir.path().join(name);
        std::fs::write(&bad, bytes)?;
        let absent = dir.path().join(format!("{name}-absent"));
        let out = restore(&bad, &absent, &[])?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{name}: {err}");
        assert!(
            !absent.exists(),
            "{name}: a refused restore made the folder"
        );
        let empty = dir.path().join(format!("{name}-empty"));
        std::fs::create_dir(&empty)?;
        let out = restore(&bad, &empty, &["--force"])?;
        assert!(!out.status.success(), "{name}: restored with --force");
        assert_eq!(
            std::fs::read_dir(&empty)?.count(),
            0,
            "{name}: wrote something"
        );
    }

    // A folder in use is refused, even with --force, and left as it was.
    let listing = |d: &std::path::Path| -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(d)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<anyhow::Result<_>>()?;
        names.sort();
        Ok(names)
    };
    let before = listing(c.data_dir())?;
    let out = restore(&file, c.data_dir(), &["--force"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("running"), "{err}");
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken)?;
    std::fs::write(taken.join("notes.txt"), "mine")?;
    let out = restore(&file, &taken, &[])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not empty") && err.contains("notes.txt"),
        "{err}"
    );
    assert_eq!(listing(&taken)?, ["notes.txt"]);
    assert_eq!(listing(c.data_dir())?, before);
    // So is a second coordinator started on it by mistake: it stops at once,
    // leaving the running one's address, so backups go on.
    let out = c.command(&["serve", "--https", "127.0.0.1:0", "--quic", "127.0.0.1:0"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already running"),
        "{err}"
    );
    assert_eq!(listing(c.data_dir())?, before);
    let again = dir.path().join("again.backup");
    ensure_success(
        &c.command(&["backup", again.to_str().context("UTF-8")?])?,
        "backup after a second serve",
    )?;

    // The good file restores, and --force keeps what a used folder held.
    let out = restore(&file, &taken, &["--force"])?;
    ensure_success(&out, "restore --force")?;
    let now = listing(&taken)?;
    assert!(now.contains(&"admin-token".to_owned()) && now.contains(&"state".to_owned()));
    let aside = now
        .iter()
        .find(|n| n.starts_with("replaced-"))
        .context("the former contents set aside")?;
    assert_eq!(
        std::fs::read_to_string(taken.join(aside).join("notes.txt"))?,
        "mine"
    );
    for secret in ["admin-token", "node-key.pem", "tls/key.pem"] {
        let mode = std::fs::metadata(taken.join(secret))?.permissions().mode();
        assert_eq!(mode & 0o077, 0, "{secret} is private");
    }
    Ok(())
}

fn read_backup(file: &std::path::Path) -> anyhow::Result<Snapshot> {
    Ok(cartable_proto::backup::decode(&std::fs::read(file)?)?)
}

fn row_keys(snapshot: &Snapshot, table: &str) -> Vec<String> {
    snapshot
        .tables
        .iter()
        .filter(|t| t.name == table)
        .flat_map(|t| t.rows.iter().map(|r| r.key.clone()))
        .collect()
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 1;
    out
}
