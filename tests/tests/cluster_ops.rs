//! Operating a cluster through the `cartable` CLI, with real processes: draining
//! and removing a node, unpublishing, nodes finishing their copies while the
//! coordinator is down, and a claimed copy the node cannot prove.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cartable_net::control::ask;
use cartable_net::identity::Identity;
use cartable_net::peer::frame;
use cartable_node::store::Store;
use cartable_proto::control::{self, Contact, ControlRequest, ControlResponse, Heartbeat};
use cartable_proto::join::JoinToken;
use cartable_tests::cluster::{
    Cluster, cluster, complete, ensure_success, held, join_member, member_endpoint, publish,
    publish_dir, wait_for,
};
use cartable_tests::peers::{Lie, lying_peer};
use cartable_tests::{Node, cli_in};

fn node<'a>(cl: &'a Cluster, id: &str) -> &'a Node {
    cl.nodes
        .iter()
        .flatten()
        .find(|n| n.id == id)
        .expect("a running node")
}

#[test]
fn draining_a_node_moves_its_copies_before_it_lets_go() -> anyhow::Result<()> {
    let cl = cluster()?;
    let c = &cl.coordinator;
    let bundle = publish(c, &["--replicas", "3", "--wait"])?;
    let drained = complete(c, &bundle)?[0].0.clone();
    let early = c.cartable(&["node", "remove", &drained])?;
    assert!(
        !early.status.success(),
        "a node holding copies is not removed"
    );
    assert!(String::from_utf8_lossy(&early.stderr).contains("drain it first"));
    ensure_success(&c.cartable(&["node", "drain", &drained])?, "node drain")?;
    wait_for(
        Duration::from_secs(60),
        "copies moved off the drained node",
        || {
            let show = c.json(&["bundle", "show", &bundle])?;
            let whole = show["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["state"] != "copying")
                .count();
            assert!(whole >= 3, "make before break: {show}");
            let now = complete(c, &bundle)?;
            let moved = now.len() == 3 && now.iter().all(|(id, _, _)| *id != drained);
            Ok((moved && !held(node(&cl, &drained))?.contains(&bundle)).then_some(()))
        },
    )?;
    let view = c.json(&["node", "show", &drained])?;
    assert_eq!(view["state"], "draining");
    assert_eq!(view["replicas"], 0);
    ensure_success(&c.cartable(&["node", "remove", &drained])?, "node remove")?;
    let nodes = c.json(&["nodes"])?;
    assert!(
        nodes
            .as_array()
            .is_some_and(|a| a.iter().all(|n| n["id"] != drained.as_str()))
    );
    Ok(())
}

#[test]
fn an_unpublished_bundle_is_deleted_from_every_node() -> anyhow::Result<()> {
    let cl = cluster()?;
    let c = &cl.coordinator;
    let bundle = publish(c, &["--replicas", "2", "--wait"])?;
    ensure_success(&c.cartable(&["rm", &bundle])?, "cartable rm")?;
    assert_eq!(c.json(&["bundles"])?.as_array().map(Vec::len), Some(0));
    wait_for(Duration::from_secs(20), "every copy deleted", || {
        for n in cl.nodes.iter().flatten() {
            if held(n)?.contains(&bundle) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
}

#[test]
fn nodes_finish_their_copies_while_the_coordinator_is_down() -> anyhow::Result<()> {
    let mut cl = cluster()?;
    let bundle = publish(&cl.coordinator, &["--replicas", "2", "--wait"])?;
    let c = &cl.coordinator;
    ensure_success(
        &c.cartable(&["replicas", "set", &bundle, "4"])?,
        "replicas set",
    )?;
    // The orders reach the nodes with their next heartbeat (200 ms).
    std::thread::sleep(Duration::from_millis(600));
    cl.coordinator.kill()?;
    wait_for(
        Duration::from_secs(30),
        "four copies without the coordinator",
        || {
            let mut holding = 0;
            for n in cl.nodes.iter().flatten() {
                holding += usize::from(held(n)?.contains(&bundle));
            }
            Ok((holding == 4).then_some(()))
        },
    )
}

/// A member that joins with a token like any node, claims every bundle it is
/// asked to hold, and answers the coordinator's checks with a flipped bit.
async fn lying_member(dir: &Path, token: &str, holds: &Path) -> anyhow::Result<String> {
    let token: JoinToken = token.parse()?;
    let store = Arc::new(Store::open(dir)?);
    let bundle = store.add_folder(holds)?.summary.id;
    let identity = Identity::load_or_create(dir)?;
    let (endpoint, contact, conn) = member_endpoint(&identity, &token).await?;
    // Before joining, garbage and a heartbeat are refused with a reason.
    let body = exchange_raw(&conn, b"{not json").await?;
    let (_, answer) = control::decode_versioned::<ControlResponse>(&body)?;
    anyhow::ensure!(
        matches!(&answer, ControlResponse::Refused { reason } if reason.contains("control message")),
        "{answer:?}"
    );
    // A heartbeat as a node of protocol 1 sends it (no version field) is
    // answered in a form such a node reads; a frame of a version to come is
    // refused, naming both versions.
    let v1_beat = include_bytes!("../../proto/tests/fixtures/control-v1/heartbeat.json");
    let answer: ControlResponse = control::decode(&exchange_raw(&conn, v1_beat).await?)?;
    anyhow::ensure!(
        matches!(&answer, ControlResponse::Refused { reason } if reason.contains("unknown node")),
        "{answer:?}"
    );
    let v3 = br#"{"protocol":3,"message":{"Farewell":{}}}"#;
    let (_, answer) =
        control::decode_versioned::<ControlResponse>(&exchange_raw(&conn, v3).await?)?;
    anyhow::ensure!(
        matches!(&answer, ControlResponse::Refused { reason } if reason.contains("version 3") && reason.contains("speaks 2")),
        "{answer:?}"
    );
    let early = ControlRequest::Heartbeat(heartbeat(&contact, vec![bundle]));
    let answer = ask(&conn, &early).await?;
    anyhow::ensure!(
        matches!(&answer, ControlResponse::Refused { reason } if reason.contains("unknown node")),
        "{answer:?}"
    );
    join_member(&conn, &token, &contact, 1 << 30).await?;
    tokio::spawn(lying_peer(endpoint, store, Lie::FlipBit));
    tokio::spawn(async move {
        loop {
            let beat = ControlRequest::Heartbeat(heartbeat(&contact, vec![bundle]));
            if ask(&conn, &beat).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok(identity.id().to_string())
}

/// Sends `body` as one control frame and reads the answer's body.
async fn exchange_raw(conn: &quinn::Connection, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write_frame(&mut send, body).await?;
    send.finish()?;
    Ok(frame::read_body(&mut recv, control::MAX_FRAME_BYTES).await?)
}

fn heartbeat(contact: &Contact, held: Vec<cartable_proto::BundleId>) -> Heartbeat {
    Heartbeat {
        contact: contact.clone(),
        capacity: 1 << 30,
        used: 0,
        load: 0,
        held,
        failures: vec![],
        damaged: 0,
        names_version: 0,
    }
}

#[test]
fn a_claimed_copy_that_fails_its_spot_check_is_not_counted() -> anyhow::Result<()> {
    let cl = cluster()?;
    let c = &cl.coordinator;
    let lesson = tempfile::tempdir()?;
    std::fs::write(lesson.path().join("index.html"), b"<p>one small page</p>")?;
    let bundle = publish_dir(c, lesson.path(), &["--replicas", "4", "--wait"])?;
    let runtime = tokio::runtime::Runtime::new()?;
    let liar_dir = tempfile::tempdir()?;
    let token = c.token("sud", "bayonne")?;
    let liar = runtime.block_on(lying_member(liar_dir.path(), &token, lesson.path()))?;
    // A fifth site: the plan now wants a copy on the liar, which claims it at once.
    ensure_success(
        &c.cartable(&["replicas", "set", &bundle, "5"])?,
        "replicas set",
    )?;
    let state = |show: &serde_json::Value| {
        show["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["node"] == liar.as_str())
            .map(|r| r["state"].clone())
    };
    wait_for(Duration::from_secs(10), "the liar placed", || {
        Ok(state(&c.json(&["bundle", "show", &bundle])?).map(|_| ()))
    })?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(200));
        let show = c.json(&["bundle", "show", &bundle])?;
        // Copying, until repeated failures mark the liar and its copy moves away.
        let never = [None, Some("copying".into())];
        assert!(never.contains(&state(&show)), "{show}");
        assert_eq!(show["complete"], 4);
    }
    Ok(())
}

#[test]
fn a_copy_rotting_on_disk_is_found_by_the_scrub_and_fetched_again() -> anyhow::Result<()> {
    let mut cl = cluster()?;
    let lesson = tempfile::tempdir()?;
    let page = cartable_tests::peers::pattern(200_000, 7);
    std::fs::write(lesson.path().join("cours.pdf"), &page)?;
    let c = &cl.coordinator;
    let bundle = publish_dir(c, lesson.path(), &["--replicas", "3", "--wait"])?;
    let victim_id = complete(c, &bundle)?[0].0.clone();
    let slot = cl
        .nodes
        .iter_mut()
        .find(|n| n.as_ref().is_some_and(|n| n.id == victim_id))
        .expect("a holder");
    let victim = slot.as_mut().expect("running");
    let dir = victim.data_dir().to_owned();
    victim.shut_down()?;
    let blob = dir
        .join("blobs")
        .join(blake3::hash(&page).to_hex().as_str());
    let mut bytes = std::fs::read(&blob)?;
    bytes[150_000] ^= 1;
    std::fs::write(&blob, bytes)?;
    // The scrub's first pass runs as the node starts.
    victim.restart()?;
    let c = &cl.coordinator;
    wait_for(Duration::from_secs(30), "the rotten copy repaired", || {
        let whole = std::fs::read(&blob).is_ok_and(|b| b == page);
        let counted = complete(c, &bundle)?
            .iter()
            .any(|(id, _, _)| *id == victim_id);
        Ok((whole && counted).then_some(()))
    })?;
    let view = c.json(&["node", "show", &victim_id])?;
    assert_eq!(view["state"], "up");
    Ok(())
}

#[test]
fn names_keep_their_history_tokens_can_be_revoked_and_plans_are_previewed() -> anyhow::Result<()> {
    let cl = cluster()?;
    let c = &cl.coordinator;
    let first = publish(
        c,
        &["--replicas", "2", "--name", "maths/6e/fractions", "--wait"],
    )?;
    let lesson = tempfile::tempdir()?;
    std::fs::write(lesson.path().join("index.html"), b"<p>version 2</p>")?;
    let second = publish_dir(c, lesson.path(), &["--replicas", "2"])?;
    ensure_success(
        &c.cartable(&["name", "set", "maths/6e/fractions", &second])?,
        "name set",
    )?;
    let history = c.json(&["name", "history", "maths/6e/fractions"])?;
    let bundles: Vec<&str> = history
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["bundle"].as_str())
        .collect();
    assert_eq!(bundles, [first.as_str(), second.as_str()]);
    let bad_name = c.cartable(&["name", "set", "../up", &second])?;
    assert!(!bad_name.status.success());
    // The name points to the new version: that one cannot be unpublished.
    let named = c.cartable(&["rm", &second])?;
    assert!(!named.status.success(), "a named bundle is not unpublished");

    let token = c.token("sud", "nice")?;
    let listed = c.json(&["token", "ls"])?;
    let id = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["used_by"].is_null())
        .and_then(|t| t["id"].as_str())
        .expect("the unused token")
        .to_owned();
    ensure_success(&c.cartable(&["token", "revoke", &id])?, "token revoke")?;
    let dir = tempfile::tempdir()?;
    ensure_success(&cli_in(dir.path(), &["join", &token])?, "join")?;
    let logs = tempfile::tempdir()?;
    let log = logs.path().join("node.log");
    let _late = Node::start_logging_to(dir.path(), &[], &log)?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.json(&["nodes"])?.as_array().map(Vec::len),
        Some(4),
        "revoked"
    );
    // The refused node says why and what mends it, not that it goes on.
    let logged = std::fs::read_to_string(&log)?;
    assert!(
        logged.lines().any(|l| l.contains("ERROR")
            && l.contains("the coordinator refused this node's join")
            && l.contains("cartable-node join TOKEN")),
        "{logged}"
    );
    assert!(!logged.contains("going on with the last ones"), "{logged}");
    // A new token given while the daemon runs is taken at its restart, and
    // the command says so.
    let fresh = c.token("sud", "nice")?;
    let joined = cli_in(dir.path(), &["join", &fresh])?;
    ensure_success(&joined, "join again")?;
    let said = String::from_utf8(joined.stdout)?;
    assert!(
        said.contains("once the daemon running on this data folder is restarted"),
        "{said}"
    );

    let holder = complete(c, &first)?[0].0.clone();
    let preview = c.json(&["plan", "--dry-run", "--without", &holder])?;
    assert!(preview["added"].as_u64() >= Some(1), "{preview}");
    assert_eq!(preview["added"], preview["removed"]);
    let still = complete(c, &first)?;
    assert!(
        still.iter().any(|(id, _, _)| *id == holder),
        "a preview moves nothing"
    );
    Ok(())
}
