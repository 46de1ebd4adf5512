//! Nodes copying bundles from each other over QUIC, as real processes on
//! loopback: byte-exact copies, resuming after SIGKILL (large files and many
//! small ones), strangers refused, garbage on a stream answered with a typed
//! error, liars caught, copies served from threads that yield to browsers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cartable_net::identity::Identity;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_proto::Manifest;
use cartable_proto::wire::{ErrorKind, GROUP_BYTES, GroupRanges, Request, Response};
use cartable_tests::peers::{
    GROUP, Lie, has_checkpoint, lesson_of_sizes, mixed_lesson, pattern, serving, start_liar,
    stored_blob,
};
use cartable_tests::{Node, cli_in, node_binary};

/// Runs `cartable-node fetch BUNDLE --from FROM --json` into the (stopped) node
/// in `data`: a fetch by the CLI alone, with its JSON report on stdout.
fn fetch(data: &Path, bundle: &str, from: &Node) -> anyhow::Result<std::process::Output> {
    cli_in(
        data,
        &["fetch", bundle, "--from", &from.peer_addr(), "--json"],
    )
}

/// The JSON report of a fetch that must have succeeded.
fn report_of(out: &std::process::Output) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// [`fetch`], insisting it succeeds: its JSON report.
fn fetch_ok(data: &Path, bundle: &str, from: &Node) -> anyhow::Result<serde_json::Value> {
    report_of(&fetch(data, bundle, from)?)
}

/// Every one of `files` is stored in the node folder `data`, byte-exact.
fn assert_stored(data: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    for (name, bytes) in files {
        anyhow::ensure!(stored_blob(data, bytes)? == *bytes, "{name} differs");
    }
    Ok(())
}

/// A thread of a running process: its name, scheduling policy and CPU ticks
/// (fields 2, 41, 14 and 15 of `/proc/PID/task/TID/stat`).
struct Thread {
    name: String,
    policy: u32,
    ticks: u64,
}

fn threads_of(pid: u32) -> anyhow::Result<Vec<Thread>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else {
            continue; // ended since the listing
        };
        let (open, close) = (stat.find('(').unwrap_or(0), stat.rfind(')').unwrap_or(0));
        // Field 3 onwards, after the name.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let field = |n: usize| -> anyhow::Result<u64> { Ok(fields[n - 3].parse()?) };
        threads.push(Thread {
            name: stat[open + 1..close].to_owned(),
            policy: u32::try_from(field(41)?)?,
            ticks: field(14)? + field(15)?,
        });
    }
    Ok(threads)
}

/// The CPU ticks of `pid`'s threads named `name`, and of the others.
fn ticks_of(pid: u32, name: &str) -> anyhow::Result<(u64, u64)> {
    let (mut named, mut others) = (0, 0);
    for t in threads_of(pid)? {
        *if t.name == name {
            &mut named
        } else {
            &mut others
        } += t.ticks;
    }
    Ok((named, others))
}

#[test]
fn copies_are_served_from_threads_that_yield_to_browsers() -> anyhow::Result<()> {
    const SCHED_IDLE: u32 = 5;
    const COPIES: &str = "cartable-copies";
    let dir = tempfile::tempdir()?;
    let [a, b, lesson] = ["a", "b", "lesson"].map(|n| dir.path().join(n));
    let files = lesson_of_sizes(&lesson, &[32 << 20])?;
    let source = serving(&a, &b)?;
    let bundle = source.add(&lesson)?;
    let before = ticks_of(source.pid(), COPIES)?;
    fetch_ok(&b, &bundle, &source)?;
    assert_stored(&b, &files)?;
    let threads = threads_of(source.pid())?;
    let (copies, others): (Vec<_>, Vec<_>) = threads.iter().partition(|t| t.name == COPIES);
    assert!(!copies.is_empty(), "no copies' threads");
    for t in &copies {
        assert_eq!(t.policy, SCHED_IDLE, "a copies' thread is not SCHED_IDLE");
    }
    for t in &others {
        assert_eq!(t.policy, 0, "{} is not under the normal policy", t.name);
    }
    // Reading, verifying, encrypting and sending 32 MiB for the peer was
    // done there; the rest of the node only took the peer's acknowledgements.
    let after = ticks_of(source.pid(), COPIES)?;
    let (copying, rest) = (after.0 - before.0, after.1 - before.1);
    assert!(
        copying > rest,
        "the copies' threads took {copying} ticks, the others {rest}"
    );
    Ok(())
}

#[test]
fn a_bundle_of_awkward_sizes_is_copied_byte_exact() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let [a, b, lesson] = ["a", "b", "lesson"].map(|n| dir.path().join(n));
    let files = mixed_lesson(&lesson, 64 << 20)?;
    let source = serving(&a, &b)?;
    let bundle = source.add(&lesson)?;
    let report = fetch_ok(&b, &bundle, &source)?;
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(report["bytes_received"], total as u64);
    assert_stored(&b, &files)?;
    let check = cli_in(&b, &["check"])?;
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
    let [a, b] = ["a", "b"].map(|n| dir.path().join(n));
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
    let [a, b, stranger] = ["a", "b", "s"].map(|n| dir.path().join(n));
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

/// Starts `cartable-node fetch BUNDLE --from FROM` into the (stopped) node in
/// `data` and kills it with SIGKILL as soon as `ready` says so.
fn kill_fetch_when(
    data: &Path,
    bundle: &str,
    from: &Node,
    ready: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let mut child = Command::new(node_binary())
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "fetch",
            bundle,
            "--from",
            &from.peer_addr(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        assert!(
            child.try_wait()?.is_none(),
            "fetch finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// Files in `dir`, none when it is missing.
fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

#[test]
fn sigkill_mid_fetch_then_rerun_fetches_only_what_was_missing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let [a, b, lesson] = ["a", "b", "lesson"].map(|n| dir.path().join(n));
    std::fs::create_dir_all(&lesson)?;
    let size = 256 << 20;
    std::fs::write(lesson.join("video.mp4"), pattern(size, 3))?;
    let source = serving(&a, &b)?;
    let bundle = source.add(&lesson)?;
    // Killed once a checkpoint, the record of verified groups, appears.
    let partial = b.join("partial");
    kill_fetch_when(&b, &bundle, &source, || has_checkpoint(&partial))?;
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
    assert!(cli_in(&b, &["check"])?.status.success());
    Ok(())
}

#[test]
fn sigkill_mid_fetch_of_many_small_files_then_rerun_ends_byte_exact() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let [a, b, lesson] = ["a", "b", "lesson"].map(|n| dir.path().join(n));
    // Sizes from 1 byte to one whole chunk group: every file is fetched whole.
    let sizes: Vec<usize> = (0..4000).map(|i| 1 + (i * 997) % GROUP).collect();
    let files = lesson_of_sizes(&lesson, &sizes)?;
    let source = serving(&a, &b)?;
    let bundle = source.add(&lesson)?;
    // Killed once a first batch of files is stored under its names.
    let blobs = b.join("blobs");
    kill_fetch_when(&b, &bundle, &source, || files_in(&blobs) > 0)?;
    let report = fetch_ok(&b, &bundle, &source)?;
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    let received = report["bytes_received"].as_u64().unwrap();
    assert!(
        received < total as u64,
        "resumed: {received} of {total} bytes fetched again"
    );
    assert_stored(&b, &files)?;
    assert_eq!(files_in(&b.join("tmp")), 0, "no temporary file left");
    assert!(cli_in(&b, &["check"])?.status.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liar_sending_wrong_small_files_gets_none_of_them_stored() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let [a, b, liar_dir, lesson] = ["a", "b", "liar", "lesson"].map(|n| dir.path().join(n));
    let files = lesson_of_sizes(&lesson, &[1, 100, 4096, GROUP - 1, GROUP])?;
    let honest = serving(&a, &b)?;
    let bundle = honest.add(&lesson)?;
    let (liar_id, liar_addr) = start_liar(&liar_dir, &lesson, &b, Lie::FlipBit)?;
    let fetch_from = |from: Vec<String>| {
        let (into, bundle) = (b.clone(), bundle.clone());
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["fetch", &bundle, "--json"];
            for peer in &from {
                args.extend(["--from", peer]);
            }
            cli_in(&into, &args)
        })
    };
    // From the liar alone: every file it sends is caught, none is kept.
    let out = fetch_from(vec![liar_addr.clone()]).await??;
    assert!(!out.status.success(), "a fetch from a liar alone succeeded");
    assert_eq!(files_in(&b.join("blobs")), 0, "a lied file was stored");
    assert_eq!(files_in(&b.join("tmp")), 0, "a lied file was kept");
    // With an honest peer too, the copy completes byte-exact.
    let out = fetch_from(vec![liar_addr, honest.peer_addr()]).await??;
    let report = report_of(&out)?;
    assert_eq!(report["liars"][0][0], liar_id, "{report}");
    assert_stored(&b, &files)?;
    assert!(cli_in(&b, &["check"])?.status.success());
    Ok(())
}

#[tokio::test]
async fn garbage_on_a_stream_gets_a_typed_error_and_the_node_stays_up() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let [a, b] = ["a", "b"].map(|n| dir.path().join(n));
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
        match cartable_net::peer::frame::read_response(&mut recv).await? {
            Response::Error(e) => assert_eq!(e.kind, kind),
            other => panic!("expected an error, got {other:?}"),
        }
    }
    let (mut send, mut recv) = conn.open_bi().await?;
    let request = Request::Manifest(bundle.parse()?).encode();
    cartable_net::peer::frame::write_frame(&mut send, &request).await?;
    send.finish()?;
    let answer = cartable_net::peer::frame::read_response(&mut recv).await?;
    let Response::Manifest(manifest) = answer else {
        panic!("not serving manifests any more: {answer:?}");
    };
    // Groups past a blob's end have no honest encoding: refused by name.
    let manifest = Manifest::decode(&manifest)?;
    let entry = &manifest.entries()[0];
    let past = entry.size.div_ceil(GROUP_BYTES).max(1);
    // Apart from the first range: touching ranges would merge into one.
    let groups = GroupRanges::new(vec![0..1, past + 1..past + 3]).expect("valid ranges");
    let (mut send, mut recv) = conn.open_bi().await?;
    let request = Request::Blob {
        hash: entry.hash,
        groups,
    };
    cartable_net::peer::frame::write_frame(&mut send, &request.encode()).await?;
    send.finish()?;
    match cartable_net::peer::frame::read_response(&mut recv).await? {
        Response::Error(e) => assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}"),
        other => panic!("groups past the end got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_peer_is_caught_dropped_and_reported_and_the_honest_one_completes()
-> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let [a, b, liar_dir, lesson] = ["a", "b", "liar", "lesson"].map(|n| dir.path().join(n));
    let files = mixed_lesson(&lesson, 3 << 20)?;
    let honest = serving(&a, &b)?;
    let bundle = honest.add(&lesson)?;
    let (liar_id, liar_addr) = start_liar(&liar_dir, &lesson, &b, Lie::FlipBit)?;
    let (into, honest_addr) = (b.clone(), honest.peer_addr());
    let out = tokio::task::spawn_blocking(move || {
        let args = [
            "fetch",
            &bundle,
            "--from",
            &liar_addr,
            "--from",
            &honest_addr,
            "--json",
        ];
        cli_in(&into, &args)
    })
    .await??;
    let report = report_of(&out)?;
    assert_eq!(report["liars"][0][0], liar_id, "{report}");
    assert_stored(&b, &files)?;
    assert!(cli_in(&b, &["check"])?.status.success());
    Ok(())
}
