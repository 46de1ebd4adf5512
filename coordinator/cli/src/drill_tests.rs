//! The drill read from hand-made API answers: which nodes burn, what is copied
//! where, and the timeline.
use cartable_proto::{BlobHash, BundleId, NodeId};

use super::*;
use cartable_proto::api::{BundleMove, NodeState};

fn node_id(i: u8) -> NodeId {
    NodeId::from_bytes([i; 32])
}

fn bundle_id(i: u8) -> BundleId {
    BundleId::from_hash(BlobHash::from_bytes([i; 32]))
}

fn node(i: u8, region: &str, site: &str, capacity: u64, used: u64) -> NodeView {
    NodeView {
        id: node_id(i),
        region: region.into(),
        site: site.into(),
        state: NodeState::Up,
        https_url: format!("https://10.0.0.{i}:8443"),
        capacity,
        used,
        load: 0,
        last_seen_secs: Some(0),
        replicas: 0,
        complete: 0,
        reported_failures: 0,
        failure_reporters: 0,
        proposed_contact: None,
        capacity_limit: None,
        failed_checks: 0,
        unreliable: false,
    }
}

const TIMINGS: RepairTimings = RepairTimings {
    heartbeat_ms: 500,
    down_after_ms: 3000,
    repair_delay_secs: 10,
    min_replicas: 2,
    copies_per_node: 2,
};

/// Bundle 1 (100 bytes) to node 3, bundle 2 (400 bytes) to nodes 3 and 4.
fn preview(urgent: usize) -> PlanPreview {
    let moved = |b: u8, size: u64, to: &[u8]| BundleMove {
        bundle: bundle_id(b),
        size,
        to: to.iter().map(|n| node_id(*n).to_string()).collect(),
        from: vec![node_id(1).to_string()],
    };
    PlanPreview {
        replicas: 6,
        added: 3,
        removed: 3,
        unplaced: 0,
        lost: vec![],
        urgent,
        bytes_on_removed: 500,
        moves: vec![moved(1, 100, &[3]), moved(2, 400, &[3, 4])],
        timings: TIMINGS,
    }
}

#[test]
fn a_site_is_found_by_name_or_by_region_and_site() -> anyhow::Result<()> {
    let nodes = [
        node(1, "nord", "lille", 1000, 0),
        node(2, "nord", "lille", 1000, 0),
        node(3, "sud", "nice", 1000, 0),
        node(4, "sud", "lille", 1000, 0),
    ];
    let (label, ids) = Lose::Site("nord/lille".into()).nodes(&nodes)?;
    assert_eq!(
        (label.as_str(), ids),
        ("site nord/lille", vec![node_id(1), node_id(2)])
    );
    let (label, ids) = Lose::Site("nice".into()).nodes(&nodes)?;
    assert_eq!((label.as_str(), ids), ("site sud/nice", vec![node_id(3)]));
    let (label, ids) = Lose::Region("sud".into()).nodes(&nodes)?;
    assert_eq!(
        (label.as_str(), ids),
        ("region sud", vec![node_id(3), node_id(4)])
    );
    let two = Lose::Site("lille".into()).nodes(&nodes).unwrap_err();
    assert!(
        two.to_string().contains("say which, as REGION/lille"),
        "{two}"
    );
    let none = Lose::Site("pau".into()).nodes(&nodes).unwrap_err();
    assert_eq!(
        none.to_string(),
        "no node in site pau: `cartable nodes` lists regions and sites"
    );
    Ok(())
}

#[test]
fn the_drill_adds_up_copies_room_and_time() -> anyhow::Result<()> {
    let nodes = [
        node(1, "nord", "lille", 1000, 500),
        node(3, "sud", "nice", 1000, 100),
        node(4, "sud", "pau", 1000, 700),
    ];
    let r = report(
        "site nord/lille".into(),
        vec![node_id(1)],
        &preview(0),
        &nodes,
        Some(100),
    )?;
    assert_eq!((r.copies_to_make, r.bundles_to_repair), (3, 2));
    assert_eq!((r.bytes_to_copy, r.bytes_lost), (900, 500));
    assert_eq!(r.receivers[0].bytes, 500);
    assert_eq!(r.receivers[1].room, 300);
    assert!(!r.disk_ok, "node 4 has 300 bytes of room for 400");
    // Seen down at 3 s, copies from 13 s; node 3 runs its two copies side by
    // side (1 s + 1 s of heartbeats, 4 s for 400 bytes at 100 B/s).
    assert_eq!((r.estimate.detect_secs, r.estimate.start_secs), (3.0, 13.0));
    assert_eq!(r.estimate.done_secs, 18.0);
    let shown = text(&r);
    assert!(
        shown.contains("bundles that would lose every copy: 0\n"),
        "{shown}"
    );
    assert!(
        shown.contains("all verified 18.0s after the fire"),
        "{shown}"
    );
    assert!(shown.contains("SHORT"), "{shown}");
    Ok(())
}

#[test]
fn urgent_bundles_do_not_wait_and_no_rate_leaves_the_transfer_out() -> anyhow::Result<()> {
    let nodes = [
        node(3, "sud", "nice", 1000, 0),
        node(4, "sud", "pau", 1000, 0),
    ];
    let r = report(
        "region nord".into(),
        vec![node_id(1)],
        &preview(2),
        &nodes,
        None,
    )?;
    assert!(r.disk_ok);
    assert_eq!(r.estimate.start_secs, 3.0, "every bundle to copy is urgent");
    assert_eq!(r.estimate.done_secs, 4.0, "heartbeats only");
    let shown = text(&r);
    assert!(shown.contains("all verified at least 4.0s"), "{shown}");
    assert!(shown.contains("no --copy-rate"), "{shown}");
    Ok(())
}

#[test]
fn a_copy_rate_needs_its_unit() {
    let bare = parse_rate("20").unwrap_err();
    assert!(bare.contains("20MiB"), "{bare}");
    assert_eq!(parse_rate("20MiB"), Ok(20 << 20));
    assert!(parse_rate("20 furlongs").is_err());
}
