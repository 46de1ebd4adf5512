//! One client must not take a node down through fetch-through. A flood of
//! 1-byte ranges of many files only a peer holds leaves the node's open
//! descriptors and its partial files bounded, so a blob it holds is never
//! marked damaged for want of a descriptor; a flood of made-up bundle ids,
//! with a dead peer in the list, is answered 404 quickly.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cartable_tests::{HttpsClient, Node, Reply, cli, sample_lesson};

/// The edge node's descriptor limit (`ulimit -n`). Before the fix, 60 such
/// requests left 120 descriptors open: this flood would exhaust it.
const OPEN_FILES: u64 = 256;
/// Fetch-through slots under that limit: a quarter of it, two descriptors each.
const SLOTS: usize = 32;
/// Files only the peer holds, each asked for one byte.
const FILES: usize = 300;
/// Three chunk groups: one byte fetches one group, never the whole file.
const FILE_LEN: usize = 40_000;
/// The edge node's fetch-through cache, which partial files count against.
const CACHE_MIB: u64 = 1;
/// Requests in flight at once.
const AT_ONCE: usize = 16;

/// A lesson of `FILES` distinct files, each starting with `f`; returns their names.
fn many_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for i in 0..FILES {
        let mut data = format!("file {i}\n").into_bytes();
        data.resize(FILE_LEN, (i % 251) as u8);
        let name = format!("f{i}.bin");
        std::fs::write(dir.join(&name), &data)?;
        files.push(name);
    }
    Ok(files)
}

fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let out = cli(&["--data-dir", data_dir.to_str().unwrap(), "id"])?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn open_descriptors(node: &Node) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{}/fd", node.pid()))?.count())
}

/// Partial blobs in DATA/partial (distinct hashes), their files, their bytes on disk.
fn partial_usage(node: &Node) -> anyhow::Result<(usize, usize, u64)> {
    let (mut blobs, mut files, mut bytes) = (HashSet::new(), 0, 0);
    let Ok(dir) = std::fs::read_dir(node.data_dir().join("partial")) else {
        return Ok((0, 0, 0));
    };
    for entry in dir {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        blobs.insert(name.split('.').next().unwrap_or_default().to_owned());
        files += 1;
        bytes += entry.metadata()?.blocks() * 512;
    }
    Ok((blobs.len(), files, bytes))
}

/// A holds many files; B, under a low descriptor limit and a 1 MiB cache,
/// has A as its peer and holds a lesson of its own.
struct Pair {
    _a: Node,
    b: Node,
    bundle: String,
    held: String,
    files: Vec<String>,
}

fn pair(dir: &Path) -> anyhow::Result<Pair> {
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    let files = many_files(&dir.join("lesson"))?;
    let a = Node::start_in(
        &a_dir,
        &["--peer", &format!("{}@127.0.0.1:9", node_id(&b_dir)?)],
    )?;
    let bundle = a.add(&dir.join("lesson"))?;
    let config = dir.join("b.toml");
    // One test client plays every pupil: its network may hold all the
    // connections the descriptor limit allows (64 of the 256 files).
    std::fs::write(
        &config,
        format!("[quic]\ncache_max_mib = {CACHE_MIB}\n[connections]\nnetwork_share = 1.0\n"),
    )?;
    let b = Node::start_with_open_files_in(
        &b_dir,
        OPEN_FILES,
        &[
            "--config",
            config.to_str().unwrap(),
            "--peer",
            &a.peer_addr(),
        ],
    )?;
    let held = b.add(&sample_lesson())?;
    Ok(Pair {
        _a: a,
        b,
        bundle,
        held,
        files,
    })
}

async fn one_byte_of_each(
    client: &HttpsClient,
    bundle: &str,
    files: &[String],
) -> anyhow::Result<Vec<Reply>> {
    let mut tasks = tokio::task::JoinSet::new();
    for name in files {
        let (client, path) = (client.clone(), format!("/b/{bundle}/{name}"));
        tasks.spawn(async move { client.get(&path, &[("range", "bytes=0-0")]).await });
    }
    let mut replies = Vec::new();
    while let Some(reply) = tasks.join_next().await {
        replies.push(reply??);
    }
    Ok(replies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_one_byte_ranges_leaves_descriptors_and_partial_files_bounded()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let p = pair(dir.path())?;
    let client = HttpsClient::for_node(&p.b)?;
    let held_path = format!("/b/{}/index.html", p.held);
    let expected = std::fs::read(sample_lesson().join("index.html"))?;
    assert_eq!(client.get(&held_path, &[]).await?.status, 200);
    // The manifest is fetched once; the flood is then about blobs alone.
    let first = one_byte_of_each(&client, &p.bundle, &p.files[..1]).await?;
    assert_eq!(first[0].status, 206);
    let baseline = open_descriptors(&p.b)?;
    let mut busiest = baseline;
    for batch in p.files[1..].chunks(AT_ONCE) {
        let replies = one_byte_of_each(&client, &p.bundle, batch).await?;
        for reply in &replies {
            assert_eq!(
                reply.status,
                206,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(reply.body, b"f", "each file starts with its name");
        }
        busiest = busiest.max(open_descriptors(&p.b)?);
        let held = client.get(&held_path, &[]).await?;
        assert!(
            held.status == 200 && held.body == expected,
            "{}",
            held.status
        );
    }
    // Slots hold two descriptors each; each request in flight at most a
    // connection and a verified read (two files).
    let bound = baseline + 2 * SLOTS + 3 * AT_ONCE;
    assert!(
        busiest <= bound,
        "{busiest} descriptors open, bound {bound}"
    );
    let settled = baseline + 2 * SLOTS + 4;
    let deadline = Instant::now() + Duration::from_secs(3);
    while open_descriptors(&p.b)? > settled && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = open_descriptors(&p.b)?;
    assert!(
        after <= settled,
        "{after} descriptors left open, bound {settled}"
    );
    let (blobs, files, bytes) = partial_usage(&p.b)?;
    // The cache's 1 MiB, plus the partial blobs open in slots (never trimmed).
    let max_bytes = (CACHE_MIB << 20) + (SLOTS * 3 * FILE_LEN) as u64;
    assert!(
        bytes <= max_bytes,
        "partial/ takes {bytes} bytes, bound {max_bytes}"
    );
    assert!(blobs < FILES / 2, "{blobs} partial blobs of {FILES} left");
    assert!(
        files <= 3 * blobs,
        "{files} files for {blobs} partial blobs"
    );
    let held = client.get(&held_path, &[]).await?;
    assert!(
        held.status == 200 && held.body == expected,
        "never marked damaged"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn made_up_bundle_ids_are_answered_quickly_despite_a_dead_peer() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let a = Node::start_in(
        &a_dir,
        &["--peer", &format!("{}@127.0.0.1:9", node_id(&b_dir)?)],
    )?;
    let bundle = a.add(&sample_lesson())?;
    // Nothing answers QUIC on the discard port: a dial there only times out.
    let dead = format!("{}@127.0.0.1:9", "ab".repeat(32));
    let b = Node::start_in(&b_dir, &["--peer", &dead, "--peer", &a.peer_addr()])?;
    let client = HttpsClient::for_node(&b)?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200u32 {
        let client = client.clone();
        let id = blake3::hash(&n.to_le_bytes()).to_hex().to_string();
        tasks.spawn(async move { client.get(&format!("/b/{id}/"), &[]).await });
    }
    while let Some(reply) = tasks.join_next().await {
        let reply = reply??;
        assert!(matches!(reply.status, 404 | 503), "{}", reply.status);
    }
    let flood = started.elapsed();
    // One dial to the dead peer (3 s) for all of them, not one each.
    assert!(
        flood < Duration::from_secs(12),
        "200 unknown ids took {flood:?}"
    );
    let page = client.get(&format!("/b/{bundle}/"), &[]).await?;
    assert_eq!(page.status, 200, "a bundle the live peer holds is served");
    Ok(())
}
