//! The layout of each view, checked on hand-made API answers.
use cartable_proto::{BlobHash, BundleId, NodeId};

use super::views::*;
use cartable_proto::api::{
    BundleView, NodeState, NodeView, ReplicaState, ReplicaView, Status, TokenView,
};

fn node_id(i: u8) -> NodeId {
    NodeId::from_bytes([i; 32])
}

fn bundle_id(i: u8) -> BundleId {
    BundleId::from_hash(BlobHash::from_bytes([i; 32]))
}

fn node_view() -> NodeView {
    NodeView {
        id: node_id(0xab),
        region: "east".into(),
        site: "lyon-2".into(),
        state: NodeState::Draining,
        https_url: "https://10.0.0.1:8443".into(),
        capacity: 200 << 30,
        used: 3 << 30,
        load: 7,
        last_seen_secs: Some(4),
        replicas: 10,
        complete: 9,
        reported_failures: 0,
        capacity_limit: None,
        failed_checks: 0,
        unreliable: false,
        failure_reporters: 0,
        proposed_contact: None,
    }
}

#[test]
fn the_node_table_shows_short_ids_and_api_words() {
    let mut never = node_view();
    never.id = node_id(1);
    never.state = NodeState::Down;
    never.last_seen_secs = None;
    assert_eq!(
        nodes(&[node_view(), never]),
        "NODE          REGION  SITE    STATE        USED   CAPACITY  LOAD  COPIES    SEEN  FAILURES\n\
         abababababab  east    lyon-2  draining  3.0 GiB  200.0 GiB     7    9/10  4s ago         0\n\
         010101010101  east    lyon-2  down      3.0 GiB  200.0 GiB     7    9/10   never         0\n"
    );
    assert_eq!(nodes(&[]), "no nodes\n");
    assert!(
        node(&node_view()).contains(&"ab".repeat(32)),
        "show gives the full id"
    );
}

#[test]
fn a_bundle_shows_every_replica() {
    let view = BundleView {
        id: bundle_id(2),
        size: 2048,
        files: 3,
        replicas_wanted: 3,
        complete: 1,
        names: vec!["maths/6e/fractions".into()],
        unplaced: Some("only 2 sites".into()),
        replicas: vec![ReplicaView {
            node: node_id(9),
            region: "west".into(),
            site: "brest".into(),
            state: ReplicaState::Copying,
            node_up: false,
        }],
    };
    let text = bundle(&view);
    assert!(text.contains("1 of 3 complete"), "{text}");
    assert!(text.contains("only 2 sites"), "{text}");
    assert!(
        text.contains("090909090909  west    brest  copying  no"),
        "{text}"
    );
    assert!(bundles(&[view]).contains("1/3  maths/6e/fractions  only 2 sites"));
}

#[test]
fn status_cuts_long_lists_and_tokens_show_their_state() {
    let status_view = Status {
        nodes_up: 4,
        nodes_down: vec![node_id(1)],
        nodes_draining: Vec::new(),
        nodes_unreliable: vec![node_id(7)],
        bundles: 30,
        under_replicated: (0..25).map(bundle_id).collect(),
        unplaceable: Vec::new(),
        repair_queue: Vec::new(),
        contact_changes: vec![node_id(7)],
        reported: Vec::new(),
    };
    let text = status(&status_view);
    assert!(
        text.contains("4 up, 1 down, 0 draining, 1 unreliable"),
        "{text}"
    );
    assert!(text.contains("unreliable        0707070707"), "{text}");
    assert!(text.contains("… and 15 more"), "{text}");
    assert!(text.contains("draining          -"), "{text}");
    assert!(text.contains("repair queue: 0 copies waiting"), "{text}");
    assert!(text.contains("new address       0707"), "{text}");

    let token = |expires, used_by| TokenView {
        id: "0123456789abcdef".into(),
        region: "east".into(),
        site: "lyon".into(),
        expires,
        used_by,
        capacity: None,
    };
    let text = tokens(
        &[
            token(100, None),
            token(300, None),
            token(100, Some(node_id(5))),
        ],
        200,
    );
    let states: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.rsplit("  ").next().unwrap())
        .collect();
    assert_eq!(states, ["expired", "unused", "used by 050505050505"]);
}
