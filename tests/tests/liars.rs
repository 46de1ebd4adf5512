//! Members that lie to the coordinator, with real processes: one claims copies
//! it lacks (its peer side answers from an empty store), one declares a huge
//! capacity and no load. Neither gets a copy counted or more than its join
//! token allows, no honest copy is released because of them, and `cartable
//! status` names the one whose checks fail.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cartable_net::control::ask;
use cartable_net::identity::Identity;
use cartable_node::peer::asks::StoreAsks;
use cartable_node::peer::respond::serve_peers;
use cartable_node::store::Store;
use cartable_proto::BundleId;
use cartable_proto::control::{ControlRequest, ControlResponse, Heartbeat};
use cartable_proto::join::JoinToken;
use cartable_tests::cluster::{
    Coordinator, cluster, complete, ensure_success, held, join_member, member_endpoint,
    publish_dir, wait_for,
};
use cartable_tests::peers::pattern;

/// What a lying member declares: more room than any disk has, and no load.
const CLAIMED_CAPACITY: u64 = 1 << 50;

/// Joins a member with `token`, then heartbeats every 200 ms with a huge
/// capacity, load 0, and as held `also_claims` and, when `claims_orders`,
/// every bundle its orders name. Its peer side answers from the empty store in
/// `dir`: it holds nothing. Returns its id.
async fn lying_member(
    dir: &Path,
    token: &str,
    claims_orders: bool,
    also_claims: Vec<BundleId>,
) -> anyhow::Result<String> {
    let token: JoinToken = token.parse()?;
    let identity = Identity::load_or_create(dir)?;
    let (endpoint, contact, conn) = member_endpoint(&identity, &token).await?;
    join_member(&conn, &token, &contact, CLAIMED_CAPACITY).await?;
    let store = Arc::new(Store::open(dir)?);
    let asks = StoreAsks::start(store.clone())?;
    tokio::spawn(serve_peers(endpoint, store, asks, None));
    let ordered = Arc::new(Mutex::new(BTreeSet::new()));
    tokio::spawn(async move {
        loop {
            let mut held: BTreeSet<BundleId> = ordered.lock().expect("not poisoned").clone();
            held.extend(also_claims.iter().copied());
            let beat = ControlRequest::Heartbeat(Heartbeat {
                contact: contact.clone(),
                capacity: CLAIMED_CAPACITY,
                used: 0,
                load: 0,
                held: held.into_iter().collect(),
                failures: vec![],
                damaged: 0,
                names_version: 0,
            });
            match ask(&conn, &beat).await {
                Ok(ControlResponse::Orders(orders)) if claims_orders => {
                    *ordered.lock().expect("not poisoned") =
                        orders.hold.iter().map(|h| h.bundle).collect();
                }
                Ok(ControlResponse::Orders(_)) => {}
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok(identity.id().to_string())
}

/// Makes a join token at `sud / site`, with `--capacity` when given.
fn token(c: &Coordinator, site: &str, capacity: Option<&str>) -> anyhow::Result<String> {
    let mut args = vec!["token", "create", "--region", "sud", "--site", site];
    args.extend(capacity.iter().flat_map(|cap| ["--capacity", cap]));
    let out = c.cartable(&args)?;
    ensure_success(&out, "cartable token create")?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The state of `node`'s replica of `bundle`, if it has one.
fn replica_state(c: &Coordinator, bundle: &str, node: &str) -> anyhow::Result<Option<String>> {
    let show = c.json(&["bundle", "show", bundle])?;
    Ok(show["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["node"] == node)
        .and_then(|r| r["state"].as_str().map(str::to_owned)))
}

#[test]
fn a_member_claiming_copies_it_lacks_never_counts_and_is_named() -> anyhow::Result<()> {
    let cl = cluster()?;
    let c = &cl.coordinator;
    let lesson = tempfile::tempdir()?;
    std::fs::write(lesson.path().join("index.html"), pattern(100_000, 3))?;
    let bundle = publish_dir(c, lesson.path(), &["--replicas", "4", "--wait"])?;
    let runtime = tokio::runtime::Runtime::new()?;
    let liar_dir = tempfile::tempdir()?;
    // From its first heartbeat it claims the bundle, whether given or not.
    let liar = runtime.block_on(lying_member(
        liar_dir.path(),
        &token(c, "bayonne", None)?,
        true,
        vec![bundle.parse()?],
    ))?;
    // Draining an honest holder leaves the liar the only site for the fourth
    // copy (if the plan did not give it one at once).
    let drained = cl.nodes[0].as_ref().expect("running");
    ensure_success(&c.cartable(&["node", "drain", &drained.id])?, "node drain")?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let state = replica_state(c, &bundle, &liar)?;
        assert!(
            matches!(state.as_deref(), None | Some("copying")),
            "the liar's claim counted: {state:?}"
        );
        let show = c.json(&["bundle", "show", &bundle])?;
        assert!(show["complete"].as_u64() >= Some(4), "{show}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        held(drained)?.contains(&bundle),
        "the drained copy is kept: its replacement never proved itself"
    );
    let honest: Vec<String> = complete(c, &bundle)?.into_iter().map(|r| r.0).collect();
    assert!(!honest.contains(&liar), "{honest:?}");

    let status = c.json(&["status"])?;
    assert_eq!(
        status["nodes_unreliable"],
        serde_json::json!([liar]),
        "{status}"
    );
    let text = String::from_utf8(c.cartable(&["status"])?.stdout)?;
    let line = text
        .lines()
        .find(|l| l.starts_with("unreliable"))
        .unwrap_or_default();
    assert!(line.contains(&liar[..10]), "{text}");
    let view = c.json(&["node", "show", &liar])?;
    assert_eq!(view["unreliable"], true, "{view}");
    assert!(view["failed_checks"].as_u64() >= Some(3), "{view}");

    let out = c.cartable(&["node", "trust", &liar])?;
    ensure_success(&out, "node trust")?;
    assert!(String::from_utf8(out.stdout)?.contains("trusted again"));
    Ok(())
}

#[test]
fn a_member_declaring_huge_capacity_and_no_load_gets_only_its_tokens_capacity() -> anyhow::Result<()>
{
    let cl = cluster()?;
    let c = &cl.coordinator;
    let lessons = tempfile::tempdir()?;
    let mut bundles = Vec::new();
    for i in 0..5u8 {
        let dir = lessons.path().join(format!("lesson{i}"));
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("cours.pdf"), pattern(400_000, i))?;
        bundles.push(publish_dir(c, &dir, &["--replicas", "3", "--wait"])?);
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let liar_dir = tempfile::tempdir()?;
    let liar = runtime.block_on(lying_member(
        liar_dir.path(),
        &token(c, "bayonne", Some("1MB"))?,
        false,
        vec![],
    ))?;
    let view = c.json(&["node", "show", &liar])?;
    assert_eq!(view["capacity"], 1_000_000, "cut down at join: {view}");
    assert_eq!(view["capacity_limit"], 1_000_000, "{view}");
    // Heartbeats keep claiming 1 PiB: the record stays at the token's bound,
    // and the plan, which weighs free capacity, gives it no more than that.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let view = c.json(&["node", "show", &liar])?;
        assert_eq!(view["capacity"], 1_000_000, "{view}");
        let mut given = 0;
        for b in &bundles {
            if replica_state(c, b, &liar)?.is_some() {
                given += 400_000;
            }
        }
        assert!(given <= 1_000_000, "{given} bytes placed on a 1 MB member");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The operator raises the bound: from the next heartbeat the node counts
    // for what it may now hold, never more than it declares.
    let out = c.cartable(&["node", "capacity", &liar, "3MB"])?;
    ensure_success(&out, "node capacity")?;
    assert!(String::from_utf8(out.stdout)?.contains("at most 2.9 MiB"));
    wait_for(Duration::from_secs(5), "the raised bound counted", || {
        let view = c.json(&["node", "show", &liar])?;
        Ok((view["capacity"] == 3_000_000 && view["capacity_limit"] == 3_000_000).then_some(()))
    })?;
    // No copy is counted on it, so its zero load brings it no browser.
    for b in &bundles {
        let show = c.json(&["bundle", "show", b])?;
        assert!(show["complete"].as_u64() >= Some(3), "{show}");
        assert_eq!(
            replica_state(c, b, &liar)?
                .as_deref()
                .filter(|s| *s != "copying"),
            None
        );
    }
    Ok(())
}
