//! `/metrics` on both daemons, scraped from real processes and parsed: the
//! counters move after browser requests and after a copy between two nodes;
//! the coordinator counts nodes by state and bundles by copies; the metrics
//! address answers nothing but `GET /metrics`, and the browsers' port never
//! answers metrics.

use std::time::Duration;

use cartable_tests::cluster::{FAST_POLICY, PLACES, cluster_of, complete, publish, wait_for};
use cartable_tests::metrics::{Samples, http_get, scrape};
use cartable_tests::peers::node_id;
use cartable_tests::{HttpsClient, Node, sample_lesson};

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";

fn metrics_of(node: &Node) -> anyhow::Result<Samples> {
    scrape(node.metrics.as_deref().expect("started with metrics"))
}

#[tokio::test]
async fn node_counters_move_after_browser_requests_and_a_copy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let [a, b] = ["a", "b"].map(|n| dir.path().join(n));
    let allowed = format!("{}@127.0.0.1:9", node_id(&b)?);
    let source = Node::start_in(&a, &["--peer", &allowed, "--metrics", "127.0.0.1:0"])?;
    let bundle = source.add(&sample_lesson())?;
    let before = metrics_of(&source)?;
    let lesson_ok = [("route", "lesson"), ("status", "200")];
    let lesson_404 = [("route", "lesson"), ("status", "404")];
    assert_eq!(
        before.value("cartable_node_http_requests_total", &lesson_ok),
        None,
        "no request yet"
    );
    assert_eq!(before.value("cartable_node_bundles", &[]), Some(1.0));

    let client = HttpsClient::for_node(&source)?;
    let index = std::fs::read(sample_lesson().join("index.html"))?;
    for _ in 0..3 {
        let page = client.get(&format!("/b/{bundle}/"), &[]).await?;
        assert_eq!(page.status, 200);
    }
    assert_eq!(
        client
            .get(&format!("/b/{bundle}/nope.html"), &[])
            .await?
            .status,
        404
    );
    let after = metrics_of(&source)?;
    let served = after.value("cartable_node_http_requests_total", &lesson_ok);
    assert_eq!(served, Some(3.0), "three pages served");
    assert_eq!(
        after.value("cartable_node_http_requests_total", &lesson_404),
        Some(1.0)
    );
    assert!(
        after
            .value("cartable_node_served_bytes_total", &[])
            .unwrap_or(0.0)
            >= 3.0 * index.len() as f64,
        "bytes served counted"
    );
    let timed = [("route", "lesson")];
    assert_eq!(
        after.value("cartable_node_http_request_duration_seconds_count", &timed),
        Some(4.0)
    );
    assert!(after.has("cartable_node_http_request_duration_seconds_bucket"));
    // The page (under 64 KiB, so kept at its first read) was read from disk
    // once, then twice from memory.
    let reads = |s: &Samples, from: &str| {
        let name = format!("cartable_node_reads_from_{from}_total");
        s.value(&name, &[]).unwrap_or(0.0)
    };
    let moved = |from| reads(&after, from) - reads(&before, from);
    assert_eq!((moved("disk"), moved("memory")), (1.0, 2.0));
    let kept = after.value("cartable_node_memory_kept_bytes", &[]);
    assert!(kept.unwrap_or(0.0) >= index.len() as f64, "{kept:?}");
    assert_eq!(after.sum("cartable_https_refused_connections_total"), 0.0);
    assert!(
        after
            .value("cartable_node_disk_free_bytes", &[])
            .unwrap_or(0.0)
            > 0.0
    );

    let copy = Node::start_in(&b, &["--metrics", "127.0.0.1:0"])?;
    let idle = metrics_of(&copy)?;
    assert_eq!(
        idle.value("cartable_node_copied_bytes_total", &[]),
        Some(0.0)
    );
    let out = copy.cli(&["fetch", &bundle, "--from", &source.peer_addr()])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copied = metrics_of(&copy)?;
    let bytes = copied
        .value("cartable_node_copied_bytes_total", &[])
        .unwrap_or(0.0);
    let lesson_bytes: u64 = std::fs::read_dir(sample_lesson())?
        .map(|e| e.and_then(|e| e.metadata()).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    assert!(
        bytes >= lesson_bytes as f64,
        "the copy's {lesson_bytes} bytes counted: {bytes}"
    );
    // Gauges come from a snapshot a couple of seconds old at most.
    wait_for(
        Duration::from_secs(10),
        "the copy among the bundles held",
        || {
            let s = metrics_of(&copy)?;
            Ok((s.value("cartable_node_bundles", &[]) == Some(1.0)).then_some(()))
        },
    )?;
    Ok(())
}

#[tokio::test]
async fn the_metrics_address_answers_nothing_but_get_metrics() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = Node::start_in(dir.path(), &["--metrics", "127.0.0.1:0"])?;
    let url = node
        .metrics
        .clone()
        .expect("metrics= in the listening line");
    let addr = url.trim_start_matches("http://");
    assert_ne!(addr, node.addr(), "an address of their own");
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/metrics/"),
        ("GET", "/metrics/../"),
        ("GET", "/METRICS"),
        ("HEAD", "/metrics"),
        ("POST", "/metrics"),
        ("GET", "/b/x/"),
        ("GET", "/healthz"),
    ] {
        let (status, body) = http_get(addr, method, path)?;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(!body.contains("cartable_"), "{method} {path}: {body}");
    }
    let (status, body) = http_get(addr, "GET", "/metrics")?;
    assert_eq!(status, 200);
    assert!(body.contains("cartable_node_bundles"), "{body}");
    let client = HttpsClient::for_node(&node)?;
    let browsers = client.get("/metrics", &[]).await?;
    assert_eq!(
        browsers.status, 404,
        "the browsers' port never answers metrics"
    );
    assert!(!String::from_utf8_lossy(&browsers.body).contains("cartable_"));
    Ok(())
}

#[test]
fn the_coordinator_counts_nodes_by_state_and_bundles_by_copies() -> anyhow::Result<()> {
    let mut cluster = cluster_of(&PLACES, &format!("{FAST_POLICY}{METRICS}"), METRICS)?;
    let coordinator = &cluster.coordinator;
    let url = coordinator
        .metrics
        .clone()
        .expect("metrics= in the coordinator's listening line");
    let up = [("state", "up")];
    let first = scrape(&url)?;
    assert_eq!(first.value("cartable_coordinator_nodes", &up), Some(4.0));
    assert_eq!(
        first.value("cartable_coordinator_nodes", &[("state", "down")]),
        Some(0.0)
    );
    let bundle = publish(coordinator, &["--replicas", "3"])?;
    wait_for(Duration::from_secs(60), "three complete copies", || {
        Ok((complete(coordinator, &bundle)?.len() == 3).then_some(()))
    })?;
    let placed = wait_for(Duration::from_secs(10), "bundles by copies", || {
        let s = scrape(&url)?;
        Ok((s.value("cartable_coordinator_bundles", &[("copies", "3")]) == Some(1.0)).then_some(s))
    })?;
    assert_eq!(
        placed.value("cartable_coordinator_bundles_under_target", &[]),
        Some(0.0)
    );
    assert!(
        placed
            .value("cartable_coordinator_heartbeats_total", &[])
            .unwrap_or(0.0)
            > 4.0
    );
    assert!(
        placed
            .value("cartable_coordinator_copies_completed_total", &[])
            .unwrap_or(0.0)
            >= 2.0,
        "copies beyond the uploaded one verified"
    );
    assert!(
        placed
            .value("cartable_coordinator_plan_duration_seconds_count", &[])
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        placed.value("cartable_coordinator_repair_queue", &[]),
        Some(0.0)
    );

    // The nodes that copied count the bytes, and see their coordinator.
    let mut copied = 0.0;
    for node in cluster.nodes.iter().flatten() {
        let s = metrics_of(node)?;
        copied += s
            .value("cartable_node_copied_bytes_total", &[])
            .unwrap_or(0.0);
        assert_eq!(
            s.value("cartable_node_coordinator_reachable", &[]),
            Some(1.0)
        );
        assert!(
            s.value("cartable_node_store_capacity_bytes", &[])
                .unwrap_or(0.0)
                > 0.0
        );
    }
    assert!(copied > 0.0, "copies between nodes counted");

    // A node holding a copy goes down: the coordinator sees it, and the
    // bundle under its target.
    let holders = complete(&cluster.coordinator, &bundle)?;
    let down = cluster
        .nodes
        .iter()
        .position(|n| n.as_ref().is_some_and(|n| n.id == holders[0].0))
        .expect("a holder among the nodes");
    if let Some(mut node) = cluster.nodes[down].take() {
        node.kill()?;
    }
    wait_for(Duration::from_secs(20), "one node down", || {
        let s = scrape(&url)?;
        let seen = s.value("cartable_coordinator_nodes", &[("state", "down")]) == Some(1.0)
            && s.value("cartable_coordinator_nodes", &up) == Some(3.0);
        Ok(seen.then_some(()))
    })?;
    Ok(())
}
