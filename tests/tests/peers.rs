//! Nodes copying bundles from each other over QUIC, as real processes on
//! loopback: byte-exact copies, resuming after SIGKILL, strangers refused,
//! garbage on a stream answered with a typed error.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cartable_node::identity::Identity;
use cartable_node::peer::PeerAddr;
use cartable_node::peer::auth::Members;
use cartable_node::peer::endpoint::PeerEndpoint;
use cartable_proto::BlobHash;
use cartable_proto::wire::{ErrorKind, Request, Response};
use cartable_tests::{Node, cli, node_binary};

const GROUP: usize = 16 * 1024;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 14) as u8)
        .collect()
}

/// A lesson of awkward sizes: empty, one byte, chunk-group boundaries ±1, and a large file.
fn mixed_lesson(dir: &Path, large: usize) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let sizes = [
        0,
        1,
        GROUP - 1,
        GROUP,
        GROUP + 1,
        2 * GROUP - 1,
        2 * GROUP + 1,
        large,
    ];
    let mut files = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let name = format!("f{i}-{size}.bin");
        let data = pattern(size, i as u8);
        std::fs::write(dir.join(&name), &data)?;
        files.push((name, data));
    }
    Ok(files)
}

/// The id of a node that has not started yet (its key is made on first use).
fn node_id(data: &Path) -> anyhow::Result<String> {
    let out = cli(&["--data-dir", data.to_str().unwrap(), "id"])?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn fetch(data: &Path, bundle: &str, from: &Node) -> anyhow::Result<std::process::Output> {
    cli(&[
        "--data-dir",
        data.to_str().unwrap(),
        "fetch",
        bundle,
        "--from",
        &from.peer_addr(),
        "--json",
    ])
}

fn serving(data: &Path, allowed: &Path) -> anyhow::Result<Node> {
    let peer = format!("{}@127.0.0.1:9", node_id(allowed)?);
    Node::start_in(data, &["--peer", &peer])
}

#[test]
fn a_bundle_of_awkward_sizes_is_copied_byte_exact() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b, lesson) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("lesson"),
    );
    std::fs::create_dir_all(&lesson)?;
    let files = mixed_lesson(&lesson, 64 << 20)?;
    let source = serving(&a, &b)?;
    let bundle = source.add(&lesson)?;
    let out = fetch(&b, &bundle, &source)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(report["bytes_received"], total as u64);
    for (name, data) in &files {
        let stored = std::fs::read(b.join("blobs").join(BlobHash::of(data).to_hex()))?;
        assert!(stored == *data, "{name} differs");
    }
    let check = cli(&["--data-dir", b.to_str().unwrap(), "check"])?;
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let again = fetch(&b, &bundle, &source)?;
    let again: serde_json::Value = serde_json::from_slice(&again.stdout)?;
    assert_eq!(again["bytes_received"], 0, "nothing fetched twice");
    Ok(())
}

#[tokio::test]
async fn a_running_node_fetches_through_its_daemon_and_serves_the_copy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let source = serving(&a, &b)?;
    let bundle = source.add(&cartable_tests::sample_lesson())?;
    let copy = Node::start_in(&b, &[])?;
    let out = copy.cli(&["fetch", &bundle, "--from", &source.peer_addr()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = cartable_tests::HttpsClient::for_node(&copy)?;
    let page = client.get(&format!("/b/{bundle}/"), &[]).await?;
    assert_eq!(page.status, 200);
    let original = std::fs::read(cartable_tests::sample_lesson().join("index.html"))?;
    assert_eq!(page.body, original);
    Ok(())
}

#[test]
fn a_node_that_is_not_a_member_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b, stranger) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("s"),
    );
    let source = serving(&a, &b)?;
    let bundle = source.add(&cartable_tests::sample_lesson())?;
    let out = fetch(&stranger, &bundle, &source)?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "a clear reason"
    );
    assert_eq!(
        std::fs::read_dir(stranger.join("blobs"))?.count(),
        0,
        "nothing stored"
    );
    Ok(())
}

#[test]
fn sigkill_mid_fetch_then_rerun_fetches_only_what_was_missing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (a, b, lesson) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("lesson"),
    );
    std::fs::create_dir_all(&lesson)?;
    let size = 256 << 20;
    std::fs::write(lesson.join("video.mp4"), pattern(size, 3))?;
    let source = serving(&a, &b)?;
    let bundle = source.add(&lesson)?;
    let mut child = Command::new(node_binary())
        .args([
            "--data-dir",
            b.to_str().unwrap(),
            "fetch",
            &bundle,
            "--from",
            &source.peer_addr(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    // Wait for a checkpoint: the record of verified groups appears.
    while !has_checkpoint(&b.join("partial")) {
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint");
        assert!(
            child.try_wait()?.is_none(),
            "fetch finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill()?;
    child.wait()?;
    let out = fetch(&b, &bundle, &source)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let received = report["bytes_received"].as_u64().unwrap();
    assert!(
        received < size as u64,
        "resumed: {received} of {size} bytes fetched again"
    );
    assert!(
        cli(&["--data-dir", b.to_str().unwrap(), "check"])?
            .status
            .success()
    );
    Ok(())
}

fn has_checkpoint(partial: &Path) -> bool {
    std::fs::read_dir(partial).is_ok_and(|mut entries| {
        entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".groups")))
    })
}

#[tokio::test]
async fn garbage_on_a_stream_gets_a_typed_error_and_the_node_stays_up() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let identity = Identity::load_or_create(&b)?;
    let source = serving(&a, &b)?;
    let bundle = source.add(&cartable_tests::sample_lesson())?;
    let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse()?, &identity, Members::default())?;
    let peer: PeerAddr = source.peer_addr().parse().map_err(anyhow::Error::msg)?;
    let conn = endpoint.connect(peer).await?;
    let unknown_tag = [&5u32.to_le_bytes()[..], &[9, 9, 9, 9, 9]].concat();
    let oversized = [&u32::MAX.to_le_bytes()[..], &[1]].concat();
    for (garbage, kind) in [
        (unknown_tag, ErrorKind::BadRequest),
        (oversized, ErrorKind::TooLarge),
    ] {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&garbage).await?;
        send.finish()?;
        match cartable_node::peer::frame::read_response(&mut recv).await? {
            Response::Error(e) => assert_eq!(e.kind, kind),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    let (mut send, mut recv) = conn.open_bi().await?;
    let request = Request::Manifest(bundle.parse()?).encode();
    cartable_node::peer::frame::write_frame(&mut send, &request).await?;
    send.finish()?;
    let answer = cartable_node::peer::frame::read_response(&mut recv).await?;
    assert!(matches!(answer, Response::Manifest(_)), "still serving");
    Ok(())
}

/// A peer speaking the real protocol that flips one bit in every blob it sends.
async fn lying_peer(
    endpoint: PeerEndpoint,
    store: std::sync::Arc<cartable_node::store::Store>,
) -> anyhow::Result<()> {
    use cartable_node::peer::frame::{read_request, write_frame};
    while let Some(incoming) = endpoint.accept().await {
        let conn = incoming.await?;
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let (header, body) = match read_request(&mut recv).await? {
                Request::Manifest(id) => (
                    Response::Manifest(store.manifest(&id)?.unwrap().encode()),
                    vec![],
                ),
                Request::Blob { hash, groups } => {
                    let size = store.blob_size(&hash).unwrap();
                    let mut encoded = Vec::new();
                    store
                        .open_blob(&hash, size)?
                        .encode_groups(groups.ranges(), &mut encoded)?;
                    // An empty blob's encoding has no byte to flip: that answer is honest.
                    let middle = encoded.len() / 2;
                    if let Some(byte) = encoded.get_mut(middle) {
                        *byte ^= 0x10;
                    }
                    (Response::Blob { size }, encoded)
                }
                Request::Has(hashes) => (Response::Has(vec![true; hashes.len()]), vec![]),
            };
            write_frame(&mut send, &header.encode()).await?;
            send.write_all(&body).await?;
            send.finish()?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_peer_is_caught_dropped_and_reported_and_the_honest_one_completes()
-> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let (a, b, liar_dir, lesson) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("liar"),
        dir.path().join("lesson"),
    );
    std::fs::create_dir_all(&lesson)?;
    let files = mixed_lesson(&lesson, 3 << 20)?;
    let honest = serving(&a, &b)?;
    let bundle = honest.add(&lesson)?;
    let liar_store = std::sync::Arc::new(cartable_node::store::Store::open(&liar_dir)?);
    liar_store.add_folder(&lesson)?;
    let liar_identity = Identity::load_or_create(&liar_dir)?;
    let members = Members::new([node_id(&b)?.parse()?]);
    let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse()?, &liar_identity, members)?;
    let liar_addr = format!("{}@{}", liar_identity.id(), endpoint.local_addr()?);
    tokio::spawn(lying_peer(endpoint, liar_store));
    let args = [
        "--data-dir".to_owned(),
        b.to_str().unwrap().to_owned(),
        "fetch".to_owned(),
        bundle,
        "--from".to_owned(),
        liar_addr,
        "--from".to_owned(),
        honest.peer_addr(),
        "--json".to_owned(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args)
    })
    .await??;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        report["liars"][0][0],
        liar_identity.id().to_string(),
        "{report}"
    );
    for (name, data) in &files {
        let stored = std::fs::read(b.join("blobs").join(BlobHash::of(data).to_hex()))?;
        assert!(stored == *data, "{name}: not one wrong byte stored");
    }
    assert!(
        cli(&["--data-dir", b.to_str().unwrap(), "check"])?
            .status
            .success()
    );
    Ok(())
}
