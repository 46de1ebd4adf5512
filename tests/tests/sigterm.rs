//! SIGTERM, as systemd sends it: both daemons exit within their bound even
//! with a browser's keep-alive connection open, and what they acknowledged
//! before is there after a restart.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use cartable_net::signal::STOP_DEADLINE;
use cartable_tests::cluster::{
    FAST_POLICY, PLACES, cluster_of, ensure_success, held, lists_bundle, publish,
};
use cartable_tests::{HttpsClient, Node, sample_lesson};

/// A connection that made one request over HTTP/1.1, read its answer and now
/// sits idle, as a browser keeps one.
async fn idle_connection(client: &HttpsClient) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut tls = client.http1_only().connect().await?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await?;
    let mut answer = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut answer))
        .await
        .context("no answer")??;
    anyhow::ensure!(answer[..n].starts_with(b"HTTP/1.1 "), "no HTTP answer");
    Ok(tls)
}

/// A connection in the middle of a request whose body never comes: a stop
/// must not wait for it past the bound.
async fn stalled_upload(client: &HttpsClient, token: &str) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut tls = client.http1_only().connect().await?;
    let head = format!(
        "POST /api/bundles HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
         content-length: 1000\r\n\r\nCBM"
    );
    tls.write_all(head.as_bytes()).await?;
    tls.flush().await?;
    Ok(tls)
}

#[test]
fn a_coordinator_stopped_by_sigterm_keeps_what_it_acknowledged() -> anyhow::Result<()> {
    let mut cl = cluster_of(&PLACES[..1], FAST_POLICY, "")?;
    let c = &mut cl.coordinator;
    let bundle = publish(c, &["--replicas", "1", "--name", "maths/6e", "--wait"])?;
    let token = c.token("sud", "nice")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = HttpsClient::new(
        c.url.trim_start_matches("https://"),
        &std::fs::read(c.cert_path())?,
        &[b"http/1.1"],
    )?;
    let _idle = runtime.block_on(idle_connection(&client))?;
    let _stalled = runtime.block_on(stalled_upload(&client, &c.admin_token()?))?;

    let stopped = c.stop_timed(STOP_DEADLINE + Duration::from_secs(5))?;
    eprintln!("{stopped:?}");
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(stopped.took < STOP_DEADLINE, "{stopped:?}");

    c.restart()?;
    assert!(lists_bundle(c, &bundle)?, "the bundle is listed");
    let names = c.json(&["name", "ls"])?;
    assert!(names.to_string().contains("maths/6e"), "{names}");
    let nodes = c.json(&["nodes"])?;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
    // The token made just before the stop still lets a node join.
    let dir = tempfile::tempdir()?;
    let out = cartable_tests::cli_in(dir.path(), &["join", &token, "--capacity", "1GB"])?;
    ensure_success(&out, "cartable-node join")?;
    let node = Node::start_in(dir.path(), &[])?;
    cartable_tests::cluster::wait_for(Duration::from_secs(20), "the new node up", || {
        let nodes = c.json(&["nodes"])?;
        let up = nodes
            .as_array()
            .map_or(0, |a| a.iter().filter(|n| n["state"] == "up").count());
        Ok((up == 2).then_some(()))
    })?;
    drop(node);
    Ok(())
}

#[test]
fn a_node_stopped_by_sigterm_keeps_what_it_acknowledged() -> anyhow::Result<()> {
    let mut node = Node::start()?;
    let bundle = node.add(&sample_lesson())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let _idle = runtime.block_on(idle_connection(&HttpsClient::for_node(&node)?))?;

    let stopped = node.stop_timed(STOP_DEADLINE + Duration::from_secs(5))?;
    eprintln!("{stopped:?}");
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(stopped.took < STOP_DEADLINE, "{stopped:?}");

    node.restart()?;
    assert!(held(&node)?.contains(&bundle));
    let reply = runtime
        .block_on(HttpsClient::for_node(&node)?.get(&format!("/b/{bundle}/index.html"), &[]))?;
    assert_eq!(reply.status, 200);
    Ok(())
}
