//! One client must never take a node or the coordinator down: silent
//! connections, half-sent prefaces, idle HTTP/2, readers that stop reading,
//! floods of requests. Real processes on loopback; each attacker and pupil
//! comes from its own 127.x address, so each is its own client network.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cartable_tests::cluster::Coordinator;
use cartable_tests::{HttpsClient, Node, process_use};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A node with `config` as its `[connections]` table.
fn node_with(connections: &str, extra: &[&str]) -> anyhow::Result<(Node, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    std::fs::write(&config, format!("[connections]\n{connections}\n"))?;
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let node = Node::start_in(&dir.path().join("data"), &args)?;
    Ok((node, dir))
}

/// Opens `n` TLS connections from `client` and keeps the ones that got through.
async fn open_silent(client: &HttpsClient, n: usize) -> Vec<impl AsyncReadExt + Unpin + use<>> {
    let mut kept = Vec::new();
    for _ in 0..n {
        if let Ok(conn) = client.connect().await {
            kept.push(conn);
        }
    }
    kept
}

/// Asserts `client` gets `path` answered 200 within a second, five times.
async fn answered_quickly(client: &HttpsClient, path: &str, headers: &[(&str, &str)]) {
    for _ in 0..5 {
        let started = Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(1), client.get(path, headers))
            .await
            .expect("answered within a second")
            .expect("answered");
        assert_eq!(reply.status, 200, "{path} after {:?}", started.elapsed());
    }
}

/// Waits until a silent connection is closed by the server (an HTTP/2 server
/// sends its settings first); how long it took.
async fn closed_within(conn: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> Duration {
    let started = Instant::now();
    let mut sent = Vec::new();
    match tokio::time::timeout(limit, conn.read_to_end(&mut sent)).await {
        Ok(_) => started.elapsed(),
        Err(_) => panic!("still open after {limit:?}"),
    }
}

#[tokio::test]
async fn silent_connections_from_one_network_leave_a_pupil_answered() -> anyhow::Result<()> {
    let (node, _dir) = node_with(
        "max_connections = 2000\nnetwork_share = 0.25\nfirst_bytes_timeout_secs = 3",
        &[],
    )?;
    let client = HttpsClient::for_node(&node)?;
    let before = process_use(node.pid())?;
    // 600 TLS connections from one /24: its share is 500.
    let mut silent = open_silent(&client.from(ip("127.0.1.1")), 600).await;
    let mut bare = Vec::new();
    for _ in 0..200 {
        bare.push(client.from(ip("127.0.1.2")).connect_tcp().await?);
    }
    assert!(
        (400..=500).contains(&silent.len()),
        "{} silent TLS connections got through",
        silent.len()
    );
    answered_quickly(&client.from(ip("127.0.2.1")), "/healthz", &[]).await;
    let during = process_use(node.pid())?;
    assert!(
        during.rss_kib < before.rss_kib + 64 * 1024,
        "{} KiB with the flood, {} KiB before",
        during.rss_kib,
        before.rss_kib
    );
    // Past the first-bytes deadline (3 s) and the shutdown grace, all are closed.
    closed_within(&mut silent[0], Duration::from_secs(10)).await;
    for conn in silent.iter_mut().skip(1).step_by(50) {
        closed_within(conn, Duration::from_secs(3)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = process_use(node.pid())?;
    assert!(
        after.fds <= before.fds + 20,
        "{} fds, {} before",
        after.fds,
        before.fds
    );
    Ok(())
}

#[tokio::test]
async fn silent_connections_do_not_lock_operators_out_of_the_coordinator() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = Coordinator::start_in(
        dir.path(),
        "[connections]\nmax_connections = 2000\nnetwork_share = 0.25\nfirst_bytes_timeout_secs = 3\n",
    )?;
    let addr = coordinator.url.trim_start_matches("https://");
    let cert = std::fs::read(coordinator.cert_path())?;
    let client = HttpsClient::new(addr, &cert, &[b"h2", b"http/1.1"])?;
    let silent = open_silent(&client.from(ip("127.0.1.1")), 600).await;
    assert!(silent.len() <= 500, "{} got through", silent.len());
    let operator = client.from(ip("127.0.2.1"));
    let bearer = format!("Bearer {}", coordinator.admin_token()?);
    answered_quickly(&operator, "/api/nodes", &[("authorization", &bearer)]).await;
    answered_quickly(&operator, "/healthz", &[]).await;
    Ok(())
}

#[tokio::test]
async fn a_school_behind_one_address_is_served_under_the_defaults() -> anyhow::Result<()> {
    let node = Node::start()?;
    let client = HttpsClient::for_node(&node)?
        .http1_only()
        .from(ip("127.0.3.1"));
    // A thousand pupils connect at once, each asks for a page and keeps its
    // connection open until all are answered.
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", node.addr());
    let all_done = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
    let pupils: Vec<_> = (0..1000)
        .map(|_| {
            let (client, request, all_done) = (client.clone(), request.clone(), all_done.clone());
            tokio::spawn(async move {
                let mut conn = client.connect().await?;
                conn.write_all(request.as_bytes()).await?;
                let mut head = [0u8; 12];
                conn.read_exact(&mut head).await?;
                all_done.wait().await;
                anyhow::Ok(&head == b"HTTP/1.1 200")
            })
        })
        .collect();
    let mut answered = 0;
    for pupil in pupils {
        answered += usize::from(pupil.await??);
    }
    assert_eq!(answered, 1000);
    Ok(())
}

#[tokio::test]
async fn a_half_sent_http2_preface_is_cut() -> anyhow::Result<()> {
    let (node, _dir) = node_with("first_bytes_timeout_secs = 2", &[])?;
    let h2 = HttpsClient::new(node.addr(), &node.cert_pem()?, &[b"h2"])?;
    let mut conn = h2.connect().await?;
    conn.write_all(b"PRI * HTTP/2.0\r\n").await?;
    let waited = closed_within(&mut conn, Duration::from_secs(8)).await;
    assert!(
        waited >= Duration::from_millis(1500),
        "cut after {waited:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_despite_pings() -> anyhow::Result<()> {
    let (node, _dir) = node_with("idle_timeout_secs = 2", &[])?;
    let h2 = HttpsClient::new(node.addr(), &node.cert_pem()?, &[b"h2"])?;
    let io = TokioIo::new(h2.connect().await?);
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(300))
        .keep_alive_while_idle(true)
        .handshake(io)
        .await?;
    let conn = tokio::spawn(conn);
    let request = http::Request::get(format!("https://{}/healthz", node.addr()))
        .body(Empty::<Bytes>::new())?;
    let reply = send.send_request(request).await?;
    assert_eq!(reply.status(), 200);
    drop(reply);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(8), conn)
        .await??
        .ok();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "closed after {waited:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_and_its_files_freed() -> anyhow::Result<()> {
    let lesson = tempfile::tempdir()?;
    let big: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(lesson.path().join("film.bin"), &big)?;
    let (node, _dir) = node_with("progress_timeout_secs = 2", &[])?;
    let id = node.add(lesson.path())?;
    let client = HttpsClient::for_node(&node)?.http1_only();
    let before = process_use(node.pid())?;
    let request = format!(
        "GET /b/{id}/film.bin HTTP/1.1\r\nHost: {}\r\n\r\n",
        node.addr()
    );
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut conn = client.connect().await?;
        conn.write_all(request.as_bytes()).await?;
        stalled.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = process_use(node.pid())?;
    assert!(
        during.fds >= before.fds + 20,
        "the readers hold their files"
    );
    // Once the socket buffers are full, no byte is taken for 2 s: every response
    // is dropped and what it held freed, while the clients still hold their
    // sockets open.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = process_use(node.pid())?;
    while after.fds > before.fds + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = process_use(node.pid())?;
    }
    assert!(
        after.fds <= before.fds + 2,
        "{} fds, {} before",
        after.fds,
        before.fds
    );
    let mut received = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        stalled[0].read_to_end(&mut received),
    )
    .await;
    assert!(read.is_ok(), "the server closed the connection");
    assert!(received.len() < big.len(), "a cut response");
    answered_quickly(&client, "/healthz", &[]).await;
    Ok(())
}

#[tokio::test]
async fn a_network_past_its_share_of_requests_is_shed_with_retry_after() -> anyhow::Result<()> {
    let lesson = tempfile::tempdir()?;
    std::fs::write(lesson.path().join("film.bin"), vec![7u8; 4 << 20])?;
    // One request in flight per network (10 × 0.1).
    let (node, _dir) = node_with(
        "max_in_flight = 10\nnetwork_share = 0.1\nretry_after_secs = 3",
        &[],
    )?;
    let id = node.add(lesson.path())?;
    let client = HttpsClient::for_node(&node)?;
    // A large answer keeps its network's place until its body ends.
    let mut reader = client.from(ip("127.0.6.1")).http1_only().connect().await?;
    let request = format!(
        "GET /b/{id}/film.bin HTTP/1.1\r\nHost: {}\r\n\r\n",
        node.addr()
    );
    reader.write_all(request.as_bytes()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let neighbour = client.from(ip("127.0.6.2"));
    let shed = neighbour.get("/healthz", &[]).await?;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("retry-after"), "3");
    let page = neighbour
        .get("/healthz", &[("sec-fetch-mode", "navigate")])
        .await?;
    assert_eq!(page.status, 503);
    assert!(page.header("content-type").starts_with("text/html"));
    let html = String::from_utf8(page.body)?;
    assert!(html.contains("http-equiv=refresh content=3"), "{html}");
    let other = client.from(ip("127.0.7.1")).get("/healthz", &[]).await?;
    assert_eq!(other.status, 200, "another network is served");
    Ok(())
}

#[tokio::test]
async fn a_network_past_its_rate_gets_429_and_others_do_not() -> anyhow::Result<()> {
    // Each fresh connection and each request take a token: eight GETs need 16,
    // far more than 4 plus what 1/s refills while they run.
    let (node, _dir) = node_with("network_rate = 1\nnetwork_burst = 4", &[])?;
    let client = HttpsClient::for_node(&node)?;
    let flood = client.from(ip("127.0.4.1"));
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(flood.get("/healthz", &[]).await.map_or(0, |r| r.status));
    }
    assert!(statuses.contains(&200), "{statuses:?}");
    // Refused at accept (status 0) or answered 429, once the burst is spent.
    assert!(
        statuses.iter().any(|s| *s == 429 || *s == 0),
        "{statuses:?}"
    );
    let reply = client.from(ip("127.0.5.1")).get("/healthz", &[]).await?;
    assert_eq!(reply.status, 200);
    Ok(())
}
