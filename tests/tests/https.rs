//! The HTTPS contract of DESIGN.md, checked against a real `cartable-node serve`
//! on port 0 with a real TLS client.

use std::path::Path;
use std::time::{Duration, Instant};

use cartable_proto::BlobHash;
use cartable_tests::{HttpsClient, Node};

const VIDEO_LEN: usize = 200_000;

fn video() -> Vec<u8> {
    (0..VIDEO_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

/// A node holding a small lesson; returns the node, a client and the bundle id.
fn lesson_node() -> anyhow::Result<(Node, HttpsClient, String, tempfile::TempDir)> {
    let lesson = tempfile::tempdir()?;
    let p = lesson.path();
    std::fs::create_dir_all(p.join("media"))?;
    std::fs::create_dir_all(p.join("docs/old"))?;
    std::fs::write(p.join("index.html"), "<h1>Les fractions</h1>")?;
    std::fs::write(p.join("media/video.mp4"), video())?;
    std::fs::write(p.join("empty.txt"), "")?;
    std::fs::write(p.join("docs/leçon 1.txt"), "un")?;
    std::fs::write(p.join("docs/old/a.txt"), "a")?;
    let node = Node::start()?;
    let id = node.add(p)?;
    let client = HttpsClient::for_node(&node)?;
    Ok((node, client, id, lesson))
}

fn etag_of(data: &[u8]) -> String {
    format!("\"{}\"", BlobHash::of(data))
}

#[tokio::test]
async fn a_file_comes_with_every_header_over_http2() -> anyhow::Result<()> {
    let (_node, client, id, _l) = lesson_node()?;
    let r = client.get(&format!("/b/{id}/media/video.mp4"), &[]).await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.body, video());
    assert_eq!(r.header("content-type"), "video/mp4");
    assert_eq!(r.header("content-length"), VIDEO_LEN.to_string());
    assert_eq!(r.header("etag"), etag_of(&video()));
    assert_eq!(
        r.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(r.header("x-content-type-options"), "nosniff");
    assert_eq!(r.header("accept-ranges"), "bytes");
    Ok(())
}

#[tokio::test]
async fn http1_is_served_to_clients_without_h2() -> anyhow::Result<()> {
    let (_node, client, id, _l) = lesson_node()?;
    let r = client
        .http1_only()
        .get(&format!("/b/{id}/media/video.mp4"), &[])
        .await?;
    assert_eq!((r.status, r.version), (200, http::Version::HTTP_11));
    assert_eq!(r.body, video());
    Ok(())
}

#[tokio::test]
async fn single_ranges_in_every_form() -> anyhow::Result<()> {
    let (_node, client, id, _l) = lesson_node()?;
    let path = format!("/b/{id}/media/video.mp4");
    let v = video();
    let n = VIDEO_LEN;
    let cases: [(&str, usize, usize); 7] = [
        ("bytes=0-0", 0, 1),
        ("bytes=100-16383", 100, 16384),
        ("bytes=16383-16384", 16383, 16385),
        ("bytes=150000-", 150_000, n),
        ("bytes=-1", n - 1, n),
        ("bytes=-500000", 0, n),
        ("bytes=199999-999999", n - 1, n),
    ];
    for (range, start, end) in cases {
        let r = client.get(&path, &[("range", range)]).await?;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            format!("bytes {start}-{}/{n}", end - 1),
            "{range}"
        );
        assert_eq!(
            r.header("content-length"),
            (end - start).to_string(),
            "{range}"
        );
        assert_eq!(r.body, v[start..end], "{range}");
    }
    for range in ["bytes=200000-", "bytes=300000-300001", "bytes=-0"] {
        let r = client.get(&path, &[("range", range)]).await?;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), format!("bytes */{n}"));
    }
    for range in ["bytes=5-1", "bytes=x-y", "bytes=-", "nonsense"] {
        let r = client.get(&path, &[("range", range)]).await?;
        assert_eq!(r.status, 400, "{range}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("Range"),
            "a short reason"
        );
    }
    let several = client.get(&path, &[("range", "bytes=0-1,5-6")]).await?;
    assert_eq!(
        (several.status, several.body.len()),
        (200, n),
        "several ranges: whole file"
    );
    let empty = client
        .get(&format!("/b/{id}/empty.txt"), &[("range", "bytes=0-")])
        .await?;
    assert_eq!(empty.status, 416);
    Ok(())
}

#[tokio::test]
async fn conditional_requests() -> anyhow::Result<()> {
    let (_node, client, id, _l) = lesson_node()?;
    let path = format!("/b/{id}/media/video.mp4");
    let etag = etag_of(&video());
    let r = client.get(&path, &[("if-none-match", &etag)]).await?;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), etag);
    let listed = format!("\"00\", W/{etag}");
    assert_eq!(
        client
            .get(&path, &[("if-none-match", &listed)])
            .await?
            .status,
        304
    );
    assert_eq!(
        client
            .get(&path, &[("if-none-match", "\"other\"")])
            .await?
            .status,
        200
    );
    let same = client
        .get(&path, &[("range", "bytes=0-9"), ("if-range", &etag)])
        .await?;
    assert_eq!((same.status, same.body.len()), (206, 10));
    let changed = client
        .get(&path, &[("range", "bytes=0-9"), ("if-range", "\"old\"")])
        .await?;
    assert_eq!((changed.status, changed.body.len()), (200, VIDEO_LEN));
    Ok(())
}

#[tokio::test]
async fn head_has_the_headers_and_no_body() -> anyhow::Result<()> {
    let (_node, client, id, _l) = lesson_node()?;
    for c in [client.clone(), client.http1_only()] {
        let r = c
            .request("HEAD", &format!("/b/{id}/media/video.mp4"), &[])
            .await?;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), VIDEO_LEN.to_string());
        assert_eq!(r.header("etag"), etag_of(&video()));
        assert!(r.body.is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn folders_indexes_listings_and_redirects() -> anyhow::Result<()> {
    let (_node, client, id, _l) = lesson_node()?;
    let root = client.get(&format!("/b/{id}"), &[]).await?;
    assert_eq!(root.status, 301);
    assert_eq!(root.header("location"), format!("/b/{id}/"));
    let index = client.get(&format!("/b/{id}/"), &[]).await?;
    assert_eq!(index.status, 200);
    assert_eq!(index.body, b"<h1>Les fractions</h1>");
    assert_eq!(index.header("content-type"), "text/html; charset=utf-8");
    let folder = client.get(&format!("/b/{id}/docs"), &[]).await?;
    assert_eq!(
        (folder.status, folder.header("location")),
        (301, &*format!("/b/{id}/docs/"))
    );
    let listing = client.get(&format!("/b/{id}/docs/"), &[]).await?;
    assert_eq!(listing.status, 200);
    let html = String::from_utf8(listing.body)?;
    assert!(html.contains("href=\"le%C3%A7on%201.txt\""), "{html}");
    assert!(html.contains("href=\"old/\""), "{html}");
    let encoded = client
        .get(&format!("/b/{id}/docs/le%C3%A7on%201.txt"), &[])
        .await?;
    assert_eq!((encoded.status, &encoded.body[..]), (200, &b"un"[..]));
    Ok(())
}

#[tokio::test]
async fn unknown_and_malformed_requests() -> anyhow::Result<()> {
    let (_node, client, id, _l) = lesson_node()?;
    let unknown_bundle = format!("/b/{}/index.html", "ab".repeat(32));
    let cases = [
        (unknown_bundle.as_str(), 404),
        (&*format!("/b/{id}/nope.html"), 404),
        (&*format!("/b/{id}/nope/"), 404),
        ("/b/not-an-id/index.html", 400),
        ("/elsewhere", 404),
        ("/healthz", 200),
    ];
    for (path, status) in cases {
        let r = client.get(path, &[]).await?;
        assert_eq!(r.status, status, "{path}");
        assert!(!r.body.is_empty(), "{path}: a short reason");
    }
    let post = client.request("POST", &format!("/b/{id}/"), &[]).await?;
    assert_eq!(
        (post.status, post.header("allow")),
        (405, "GET, HEAD, OPTIONS")
    );
    Ok(())
}

#[tokio::test]
async fn traversal_in_every_spelling_never_leaves_the_bundle() -> anyhow::Result<()> {
    let (_node, client, id, _l) = lesson_node()?;
    let spellings = [
        "../../../../etc/passwd",
        "media/../../../etc/passwd",
        "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "media%2f..%2f..%2findex.html",
        "..\\..\\etc\\passwd",
        "..%5c..%5cetc%5cpasswd",
        "index.html%00.txt",
        "/etc/passwd",
        "./index.html",
    ];
    for spelling in spellings {
        let request = format!(
            "GET /b/{id}/{spelling} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        let answer = client
            .raw(request.as_bytes(), Duration::from_secs(5))
            .await?;
        assert!(answer.starts_with("HTTP/1.1 400"), "{spelling}: {answer}");
        assert!(!answer.contains("root:"), "{spelling}");
    }
    Ok(())
}

#[tokio::test]
async fn oversized_headers_get_431() -> anyhow::Result<()> {
    let (_node, client, id, _l) = lesson_node()?;
    let big = "x".repeat(40_000);
    let request = format!("GET /b/{id}/ HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
    let answer = client
        .raw(request.as_bytes(), Duration::from_secs(5))
        .await?;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn slow_clients_are_cut_after_the_header_timeout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[connections]\nheader_read_timeout_secs = 1\n")?;
    let data = dir.path().join("data");
    let node = Node::start_in(&data, &["--config", config.to_str().unwrap()])?;
    let client = HttpsClient::for_node(&node)?;
    let started = Instant::now();
    // Half a request head, then silence.
    let answer = client
        .raw(
            b"GET /healthz HTTP/1.1\r\nHost: local",
            Duration::from_secs(20),
        )
        .await?;
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "cut after {waited:?}");
    assert!(!answer.contains("200"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn a_corrupt_blob_on_disk_is_never_served() -> anyhow::Result<()> {
    let (node, client, id, _l) = lesson_node()?;
    let path = format!("/b/{id}/media/video.mp4");
    let v = video();
    let blob = node
        .data_dir()
        .join("blobs")
        .join(BlobHash::of(&v).to_hex());
    flip_byte(&blob, 150_000)?;
    // The first part verifies and may be sent; the response is cut at the bad group.
    let whole = client.get(&path, &[]).await;
    match whole {
        Ok(r) => assert!(
            r.status != 200 || r.body != v,
            "a corrupt body was served whole"
        ),
        Err(e) => assert!(format!("{e:#}").contains("body"), "{e:#}"),
    }
    // Now marked damaged: refused up front.
    let again = client.get(&path, &[]).await?;
    assert_eq!(again.status, 503);
    assert!(!again.header("retry-after").is_empty());
    let check = node.cli(&["check"])?;
    assert!(!check.status.success(), "check reports the damage");
    assert!(String::from_utf8_lossy(&check.stdout).contains(&BlobHash::of(&v).to_hex()));
    Ok(())
}

#[tokio::test]
async fn a_corrupt_first_group_gets_503_not_a_cut_200() -> anyhow::Result<()> {
    let (node, client, id, _l) = lesson_node()?;
    let blob = node
        .data_dir()
        .join("blobs")
        .join(BlobHash::of(&video()).to_hex());
    flip_byte(&blob, 10)?;
    let r = client.get(&format!("/b/{id}/media/video.mp4"), &[]).await?;
    assert_eq!(r.status, 503);
    Ok(())
}

fn flip_byte(path: &Path, at: usize) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path)?;
    bytes[at] ^= 1;
    std::fs::write(path, bytes)?;
    Ok(())
}

#[tokio::test]
async fn a_configured_pem_certificate_is_served() -> anyhow::Result<()> {
    // A first node makes a certificate; a second one is given it by path.
    let maker = Node::start()?;
    let tls = maker.data_dir().join("tls");
    let dir = tempfile::tempdir()?;
    let cert = tls.join("cert.pem");
    let key = tls.join("key.pem");
    let node = Node::start_in(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    )?;
    assert!(!dir.path().join("tls").exists(), "no self-signed pair made");
    let client = HttpsClient::new(node.addr(), &std::fs::read(&cert)?, &[b"h2"])?;
    assert_eq!(client.get("/healthz", &[]).await?.status, 200);
    Ok(())
}

/// The node's threads named `cartable-h2-N` (not their `cartable-h2-io`
/// helpers), each with how often it has
/// gone to sleep waiting (`voluntary_ctxt_switches`): once at least for every
/// connection that woke it.
fn connection_threads(node: &Node) -> anyhow::Result<Vec<(String, u64)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", node.pid()))? {
        let task = task?.path();
        let name = std::fs::read_to_string(task.join("comm"))?;
        let number = name.trim().strip_prefix("cartable-h2-");
        if number.is_none_or(|n| n.parse::<usize>().is_err()) {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status"))?;
        let waits = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map(|n| n.trim().parse())
            .transpose()?
            .unwrap_or_default();
        threads.push((name.trim().to_owned(), waits));
    }
    threads.sort();
    Ok(threads)
}

#[tokio::test]
async fn http2_connections_are_shared_out_among_one_thread_per_core() -> anyhow::Result<()> {
    let (node, client, id, _l) = lesson_node()?;
    let cores = match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(n) => n.parse()?,
        Err(_) => std::thread::available_parallelism()?.get(),
    };
    let path = format!("/b/{id}/index.html");
    let at_start = connection_threads(&node)?;
    let names: Vec<_> = at_start.iter().map(|(name, _)| name.clone()).collect();
    let expected: Vec<_> = (0..cores).map(|i| format!("cartable-h2-{i}")).collect();
    assert_eq!(names, expected);
    // HTTP/1.1 connections stay on the daemon's runtime: these threads sleep on.
    let http1 = client.http1_only();
    for _ in 0..10 {
        assert_eq!(http1.get(&path, &[]).await?.status, 200);
    }
    let before = connection_threads(&node)?;
    for ((name, was), (_, is)) in at_start.iter().zip(&before) {
        assert!(is - was < 3, "HTTP/1.1 woke {name} {} times", is - was);
    }
    let connections = 10 * cores;
    for _ in 0..connections {
        let r = client.get(&path, &[]).await?;
        assert_eq!((r.status, r.version), (200, http::Version::HTTP_2));
    }
    // Each connection is dealt to the next thread, which sleeps between them.
    let after = connection_threads(&node)?;
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert!(is - was >= 10, "{name} woke {} times", is - was);
    }
    Ok(())
}
