//! The `cartable-node` commands as a school's IT person runs them: with and
//! without a daemon, interrupted by SIGKILL, with the index lost, on bad input.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cartable_tests::{Node, cli, node_binary, sample_lesson};

fn run_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = cli(args)?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn listing(data: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&run_ok(&[
        "--data-dir",
        data,
        "bundles",
        "--json",
    ])?)?)
}

#[test]
fn add_list_and_remove_work_without_a_daemon() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let lesson = sample_lesson();
    let out = run_ok(&["--data-dir", data, "add", lesson.to_str().unwrap()])?;
    let mut lines = out.lines();
    let id = lines.next().unwrap();
    assert_eq!(id.len(), 64);
    assert!(
        lines.next().unwrap().ends_with(&format!("/b/{id}/")),
        "{out}"
    );
    let list = listing(data)?;
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["files"], 6);
    assert_eq!(
        run_ok(&["--data-dir", data, "add", lesson.to_str().unwrap()])?
            .lines()
            .next(),
        Some(id)
    );
    assert_eq!(
        listing(data)?.as_array().unwrap().len(),
        1,
        "adding twice is idempotent"
    );
    run_ok(&["--data-dir", data, "rm", id])?;
    assert_eq!(listing(data)?, serde_json::json!([]));
    let blobs = std::fs::read_dir(dir.path().join("data/blobs"))?.count();
    assert_eq!(blobs, 0, "rm freed the space");
    Ok(())
}

/// `cartable-node add LESSON | head -1` in a script: once the reader has gone,
/// the command ends quietly, its work done, instead of panicking.
#[test]
fn add_into_a_pipe_nobody_reads_ends_quietly_and_adds() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let lesson = sample_lesson();
    let out = Command::new(node_binary())
        .args(["--data-dir", data, "add", lesson.to_str().unwrap()])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(listing(data)?.as_array().map(Vec::len), Some(1));
    Ok(())
}

/// `init --data-dir D` writes D into the file it makes: a later `--config
/// FILE` command, run from elsewhere (as a service is), uses D, not the
/// default folder, for the node and for the coordinator.
#[test]
fn the_data_dir_given_to_init_is_the_one_the_config_file_uses() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let elsewhere = tempfile::tempdir()?;
    let run = |binary: &Path, args: &[&str], cwd: &Path| -> anyhow::Result<String> {
        let out = Command::new(binary).args(args).current_dir(cwd).output()?;
        anyhow::ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    // `init` says the folder it wrote live.
    let init = |binary: &Path, file: &str, data: &str| -> anyhow::Result<()> {
        let said = run(
            binary,
            &["--config", file, "--data-dir", data, "init"],
            dir.path(),
        )?;
        let live = format!("but data_dir, set to {}", dir.path().join(data).display());
        assert!(said.contains(&live), "{said}");
        Ok(())
    };
    let node = node_binary();
    init(node, "n.toml", "nd")?;
    let config = dir.path().join("n.toml");
    let config = config.to_str().unwrap();
    let id = run(node, &["--config", config, "id"], elsewhere.path())?;
    assert_eq!(run(node, &["--data-dir", "nd", "id"], dir.path())?, id);
    let coordinator = cartable_tests::node::binary("cartable-coordinator");
    init(&coordinator, "c.toml", "cd")?;
    let backup = dir.path().join("c.backup");
    let config = dir.path().join("c.toml");
    let args = [
        "--config",
        config.to_str().unwrap(),
        "backup",
        backup.to_str().unwrap(),
    ];
    run(&coordinator, &args, elsewhere.path())?;
    assert!(backup.exists());
    assert_eq!(
        std::fs::read_dir(elsewhere.path())?.count(),
        0,
        "nothing made in the default folder"
    );
    Ok(())
}

#[tokio::test]
async fn add_list_and_remove_go_through_a_running_daemon() -> anyhow::Result<()> {
    let node = Node::start()?;
    let id = node.add(&sample_lesson())?;
    let out = node.cli(&["add", sample_lesson().to_str().unwrap()])?;
    let url = String::from_utf8(out.stdout)?
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    assert_eq!(
        url,
        format!("{}/b/{id}/", node.url),
        "the URL is the daemon's"
    );
    let client = cartable_tests::HttpsClient::for_node(&node)?;
    assert_eq!(
        client.get(&format!("/b/{id}/"), &[]).await?.status,
        200,
        "served at once"
    );
    let list = String::from_utf8(node.cli(&["bundles"])?.stdout)?;
    assert!(list.contains(&id), "{list}");
    let rm = node.cli(&["rm", &id])?;
    assert!(rm.status.success());
    assert_eq!(client.get(&format!("/b/{id}/"), &[]).await?.status, 404);
    let check = node.cli(&["check"])?;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let rebuild = node.cli(&["rebuild-index"])?;
    assert!(
        !rebuild.status.success(),
        "rebuild-index refuses while the daemon runs"
    );
    let second = node.cli(&["serve", "--https", "127.0.0.1:0", "--quic", "127.0.0.1:0"])?;
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && err.contains("already running"),
        "{err}"
    );
    assert_eq!(
        client.get("/healthz", &[]).await?.status,
        200,
        "the first daemon serves on"
    );
    Ok(())
}

#[test]
fn a_bad_folder_is_refused_by_name_and_imports_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let lesson = dir.path().join("lesson");
    std::fs::create_dir_all(&lesson)?;
    std::fs::write(lesson.join("index.html"), vec![1u8; 100_000])?;
    std::os::unix::fs::symlink("/etc/passwd", lesson.join("evil-link"))?;
    let data = dir.path().join("data");
    let out = cli(&[
        "--data-dir",
        data.to_str().unwrap(),
        "add",
        lesson.to_str().unwrap(),
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("evil-link") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(data.join("blobs"))?.count(), 0);
    Ok(())
}

#[test]
fn a_bad_config_is_refused_with_its_reason() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[https]\nlisten = \"127.0.0.1:0\"\nport = 3\n")?;
    let out = cli(&["--config", config.to_str().unwrap(), "serve"])?;
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("unknown field `port`"), "{err}");
    Ok(())
}

#[test]
fn a_world_readable_node_key_is_refused() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_str().unwrap();
    let id = run_ok(&["--data-dir", data, "id"])?;
    assert_eq!(run_ok(&["--data-dir", data, "id"])?, id, "the id is stable");
    let key = dir.path().join("node-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    let out = cli(&["--data-dir", data, "id"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)?.contains("readable by other users"));
    Ok(())
}

#[test]
fn sigkill_during_a_large_import_leaves_no_partial_blob() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let lesson = dir.path().join("lesson");
    std::fs::create_dir_all(&lesson)?;
    // Sparse: large to import, cheap to make.
    std::fs::File::create(lesson.join("video.mp4"))?.set_len(1 << 30)?;
    std::fs::write(lesson.join("index.html"), "hi")?;
    let data = dir.path().join("data");
    let mut child = Command::new(node_binary())
        .arg("--data-dir")
        .arg(&data)
        .arg("add")
        .arg(&lesson)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    while temp_bytes(&data.join("tmp")) < 64 << 20 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "import never started"
        );
        assert!(
            child.try_wait()?.is_none(),
            "import finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill()?; // SIGKILL
    child.wait()?;
    let data = data.to_str().unwrap();
    let big = std::fs::read_dir(Path::new(data).join("blobs"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.len() > 1 << 20)
        .count();
    assert_eq!(big, 0, "no partial blob under a final name");
    let check = run_ok(&["--data-dir", data, "check"])?;
    assert!(check.contains("0 problems"), "{check}");
    assert_eq!(listing(data)?, serde_json::json!([]));
    assert_eq!(
        std::fs::read_dir(Path::new(data).join("tmp"))?.count(),
        0,
        "temp files cleaned"
    );
    run_ok(&["--data-dir", data, "add", lesson.to_str().unwrap()])?;
    assert_eq!(
        listing(data)?.as_array().map(Vec::len),
        Some(1),
        "a rerun completes"
    );
    assert!(run_ok(&["--data-dir", data, "check"])?.contains("0 problems"));
    Ok(())
}

fn temp_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

#[test]
fn deleting_the_index_and_rebuilding_gives_the_same_listing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_str().unwrap();
    run_ok(&["--data-dir", data, "add", sample_lesson().to_str().unwrap()])?;
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other)?;
    std::fs::write(other.join("a.txt"), "a")?;
    run_ok(&["--data-dir", data, "add", other.to_str().unwrap()])?;
    let before = listing(data)?;
    std::fs::remove_dir_all(dir.path().join("index"))?;
    let out = run_ok(&["--data-dir", data, "rebuild-index"])?;
    assert!(out.contains("2 bundles"), "{out}");
    assert_eq!(listing(data)?, before);
    assert!(run_ok(&["--data-dir", data, "check"])?.contains("0 problems"));
    Ok(())
}
