//! Fetch-through: node B serves browsers bundles that only its peer A holds,
//! fetching just the chunk groups each request needs, verified, once.

use std::path::Path;
use std::time::Duration;

use cartable_proto::BlobHash;
use cartable_tests::{HttpsClient, Node, browser, cli, sample_lesson};

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29) ^ (i >> 16) as u8)
        .collect()
}

/// A holds `lesson`; B has A as its peer. Returns (A, B, bundle id).
fn pair(dir: &Path, lesson: &Path) -> anyhow::Result<(Node, Node, String)> {
    let (a, b) = (dir.join("a"), dir.join("b"));
    let b_id = String::from_utf8(cli(&["--data-dir", b.to_str().unwrap(), "id"])?.stdout)?;
    let source = Node::start_in(&a, &["--peer", &format!("{}@127.0.0.1:9", b_id.trim())])?;
    let bundle = source.add(lesson)?;
    let edge = Node::start_in(&b, &["--peer", &source.peer_addr()])?;
    Ok((source, edge, bundle))
}

fn fetched_through(node: &Node) -> anyhow::Result<u64> {
    let out = node.cli(&["stats"])?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    stats["through_bytes_received"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no counter"))
}

fn large_lesson(dir: &Path, len: usize) -> anyhow::Result<(std::path::PathBuf, Vec<u8>)> {
    let lesson = dir.join("lesson");
    std::fs::create_dir_all(&lesson)?;
    let video = pattern(len);
    std::fs::write(lesson.join("video.mp4"), &video)?;
    Ok((lesson, video))
}

#[tokio::test]
async fn a_node_serves_a_lesson_only_its_peer_holds() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_a, b, bundle) = pair(dir.path(), &sample_lesson())?;
    let client = HttpsClient::for_node(&b)?;
    let page = client.get(&format!("/b/{bundle}/"), &[]).await?;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.body,
        std::fs::read(sample_lesson().join("index.html"))?
    );
    let unknown = client.get(&format!("/b/{}/", "cd".repeat(32)), &[]).await?;
    assert_eq!(unknown.status, 404, "a bundle no peer holds");
    Ok(())
}

#[tokio::test]
async fn a_range_near_the_end_fetches_only_the_groups_it_needs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let len = 64 << 20;
    let (lesson, video) = large_lesson(dir.path(), len)?;
    let (_a, b, bundle) = pair(dir.path(), &lesson)?;
    let client = HttpsClient::for_node(&b)?;
    let path = format!("/b/{bundle}/video.mp4");
    let tail = client.get(&path, &[("range", "bytes=-100000")]).await?;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, video[len - 100_000..]);
    let fetched = fetched_through(&b)?;
    assert!(
        fetched <= 1 << 20,
        "a 100 kB range fetched {fetched} bytes upstream"
    );
    let whole = client.get(&path, &[]).await?;
    assert!(
        whole.status == 200 && whole.body == video,
        "the whole file, verified"
    );
    assert!(
        fetched_through(&b)? <= len as u64 + (1 << 20),
        "nothing fetched twice"
    );
    let stored = b
        .data_dir()
        .join("blobs")
        .join(BlobHash::of(&video).to_hex());
    assert!(stored.exists(), "the complete blob moved into B's store");
    Ok(())
}

/// B's two peers both hold the lesson; the one B learnt the bundle from
/// hangs (SIGSTOP: its connection looks open, nothing answers). A file B has
/// not fetched yet is then asked of the next holder too, after a fraction of
/// a second, instead of after the hung one's stall limit (5 s).
#[tokio::test]
async fn a_hung_holder_costs_a_browser_a_fraction_of_a_second() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (lesson, video) = large_lesson(dir.path(), 2 << 20)?;
    std::fs::write(lesson.join("index.html"), b"<h1>Les volcans</h1>")?;
    let b_dir = dir.path().join("b");
    let b_id = String::from_utf8(cli(&["--data-dir", b_dir.to_str().unwrap(), "id"])?.stdout)?;
    let b_peer = format!("{}@127.0.0.1:9", b_id.trim());
    let holders =
        ["a1", "a2"].map(|name| Node::start_in(&dir.path().join(name), &["--peer", &b_peer]));
    let [first, second] = holders;
    let (first, second) = (first?, second?);
    let bundle = first.add(&lesson)?;
    assert_eq!(second.add(&lesson)?, bundle);
    let (first_peer, second_peer) = (first.peer_addr(), second.peer_addr());
    let b = Node::start_in(&b_dir, &["--peer", &first_peer, "--peer", &second_peer])?;
    let client = HttpsClient::for_node(&b)?;
    let page = client.get(&format!("/b/{bundle}/index.html"), &[]).await?;
    assert_eq!(
        (page.status, &page.body[..]),
        (200, &b"<h1>Les volcans</h1>"[..])
    );

    first.freeze()?;
    // Two segments of the file (1 MiB each): the second finds the hung holder rested.
    let mut waits = Vec::new();
    for start in [0, 1 << 20] {
        let asked = std::time::Instant::now();
        let range = format!("bytes={start}-{}", start + 99_999);
        let reply = client
            .get(&format!("/b/{bundle}/video.mp4"), &[("range", &range)])
            .await;
        waits.push(asked.elapsed());
        let reply = reply?;
        assert_eq!(reply.status, 206);
        assert_eq!(reply.body, video[start..start + 100_000]);
    }
    first.thaw()?;
    assert!(
        waits.iter().all(|w| *w < Duration::from_secs(3)),
        "waited {waits:?} for a hung holder"
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_browsers_share_one_upstream_fetch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let len = 8 << 20;
    let (lesson, video) = large_lesson(dir.path(), len)?;
    let (_a, b, bundle) = pair(dir.path(), &lesson)?;
    let client = HttpsClient::for_node(&b)?;
    let path = format!("/b/{bundle}/video.mp4");
    let mut browsers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (client, path) = (client.clone(), path.clone());
        browsers.spawn(async move { client.get(&path, &[]).await });
    }
    while let Some(reply) = browsers.join_next().await {
        let reply = reply??;
        assert!(reply.status == 200 && reply.body == video);
    }
    assert_eq!(
        fetched_through(&b)?,
        len as u64,
        "each byte fetched once for four browsers"
    );
    Ok(())
}

#[test]
fn chromium_plays_and_seeks_a_lesson_fetched_through() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_a, b, bundle) = pair(dir.path(), &sample_lesson())?;
    let url = format!("{}/b/{bundle}/#seek-test", b.url);
    let dom = browser::dump_dom(&url, Duration::from_secs(10))?;
    assert!(dom.contains("image: loaded"), "{dom}");
    assert!(dom.contains("video: loaded"), "{dom}");
    assert!(dom.contains("seek: done at 7s"), "{dom}");
    Ok(())
}
