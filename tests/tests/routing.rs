//! Where the coordinator sends browsers after a fire, with real processes: not
//! to a node killed or frozen seconds ago (at the default heartbeat of 5 s),
//! not to an address a member merely claims, and a member's word against its
//! peers changes nothing but its own complaint counter.

use std::time::{Duration, Instant};

use cartable_net::control::ask;
use cartable_net::identity::Identity;
use cartable_proto::control::{ControlRequest, ControlResponse, FailureReport, Heartbeat};
use cartable_proto::join::JoinToken;
use cartable_tests::Node;
use cartable_tests::cluster::{
    Coordinator, cluster, complete, ensure_success, join_member, member_endpoint, publish,
    redirect, wait_for,
};

/// The goal: no browser sent to a node dead or silent for longer than this.
const BOUND: Duration = Duration::from_secs(3);

/// The origin of the node the coordinator sends a browser asking for `bundle`
/// to, and how long the coordinator took to answer.
fn follow(c: &Coordinator, bundle: &str) -> anyhow::Result<(String, Duration)> {
    let asked = Instant::now();
    let location = redirect(c, &format!("/b/{bundle}/index.html"))?;
    let origin = location.split("/b/").next().unwrap_or_default().to_owned();
    Ok((origin, asked.elapsed()))
}

/// Follows the redirect every 100 ms for `span` after a node at `origin`
/// stopped answering at `since`; returns the latest time after `since` a
/// browser was still sent there, and the slowest redirect.
fn watch(
    c: &Coordinator,
    bundle: &str,
    origin: &str,
    since: Instant,
    span: Duration,
) -> anyhow::Result<(Option<Duration>, Duration)> {
    let (mut last_sent, mut slowest) = (None, Duration::ZERO);
    while since.elapsed() < span {
        let (to, took) = follow(c, bundle)?;
        slowest = slowest.max(took);
        if to == origin {
            last_sent = Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((last_sent, slowest))
}

#[test]
fn browsers_are_not_sent_to_a_killed_or_frozen_node_at_the_default_heartbeat() -> anyhow::Result<()>
{
    let dirs = tempfile::tempdir()?;
    // The defaults (heartbeat 5 s, down after 30 s), but a short repair delay
    // is irrelevant here: nothing is re-placed within the test.
    let c = Coordinator::start_in(&dirs.path().join("coordinator"), "")?;
    let places = [("nord", "lille"), ("nord", "amiens"), ("sud", "nice")];
    let mut nodes = Vec::new();
    for (i, (region, site)) in places.iter().enumerate() {
        nodes.push(c.join_node(&dirs.path().join(format!("node{i}")), region, site)?);
    }
    let bundle = publish(&c, &["--replicas", "3", "--wait"])?;
    assert_eq!(complete(&c, &bundle)?.len(), 3);

    let (first, _) = follow(&c, &bundle)?;
    let killed = nodes.iter_mut().find(|n| n.url == first).expect("a node");
    killed.kill()?;
    let died = Instant::now();
    let (last_sent, slowest) = watch(&c, &bundle, &first, died, Duration::from_secs(6))?;
    println!(
        "killed node: last redirect to it {last_sent:?} after the kill; slowest redirect {slowest:?}"
    );
    assert!(last_sent.is_none_or(|t| t <= BOUND), "{last_sent:?}");

    let (second, _) = follow(&c, &bundle)?;
    assert_ne!(second, first);
    let frozen = nodes.iter().find(|n| n.url == second).expect("a node");
    frozen.freeze()?;
    let froze = Instant::now();
    let watched = watch(&c, &bundle, &second, froze, Duration::from_secs(6));
    frozen.thaw()?;
    let (last_sent, slowest) = watched?;
    println!(
        "frozen node: last redirect to it {last_sent:?} after the freeze; slowest redirect {slowest:?}"
    );
    assert!(last_sent.is_none_or(|t| t <= BOUND), "{last_sent:?}");
    // A frozen node costs a browser at most one check's timeout (1 s).
    assert!(slowest < Duration::from_millis(2500), "{slowest:?}");
    Ok(())
}

#[test]
fn a_member_cannot_move_browsers_or_accuse_peers_by_saying_so() -> anyhow::Result<()> {
    let start = Instant::now();
    let mut cl = cluster()?;
    let bundle = publish(&cl.coordinator, &["--replicas", "4", "--wait"])?;
    println!("cluster and publish: {:?}", start.elapsed());
    let c = &cl.coordinator;

    // A forging member joins like any node, then blames every honest node
    // in each of its heartbeats.
    let honest: Vec<String> = cl.nodes.iter().flatten().map(|n| n.id.clone()).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    let liar_dir = tempfile::tempdir()?;
    let token: JoinToken = c.token("sud", "bayonne")?.parse()?;
    let identity = Identity::load_or_create(liar_dir.path())?;
    let beats = runtime.block_on(async {
        let (_endpoint, contact, conn) = member_endpoint(&identity, &token).await?;
        join_member(&conn, &token, &contact, 1 << 30).await?;
        let failures: Vec<FailureReport> = honest
            .iter()
            .map(|id| -> anyhow::Result<FailureReport> {
                Ok(FailureReport {
                    peer: id.parse()?,
                    count: u64::MAX,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let mut beats = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            let beat = ControlRequest::Heartbeat(Heartbeat {
                contact: contact.clone(),
                capacity: 1 << 30,
                used: 0,
                load: 0,
                held: vec![],
                failures: failures.clone(),
                damaged: 0,
                names_version: 0,
            });
            anyhow::ensure!(matches!(
                ask(&conn, &beat).await?,
                ControlResponse::Orders(_)
            ));
            beats += 1;
        }
        Ok(beats)
    })?;
    assert!(beats > 20, "{beats} heartbeats sent as fast as answered");
    println!("forged reports sent: {:?}", start.elapsed());
    for id in &honest {
        let view = c.json(&["node", "show", id])?;
        assert_eq!(view["failure_reporters"], 1, "{view}");
        // Counted at most once per heartbeat interval (200 ms here), capped.
        let counted = view["reported_failures"].as_u64().unwrap_or(u64::MAX);
        assert!(counted <= 1_000 * 15, "{view}");
    }
    let status = c.json(&["status"])?;
    assert_eq!(
        status["reported"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );
    // (The plan may move a copy to the new member's site: the old one stays,
    // releasing, until that copy is verified, which a liar's never is.)
    let show = c.json(&["bundle", "show", &bundle])?;
    let whole = show["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["state"] == "complete" || r["state"] == "releasing")
        .count();
    assert_eq!(whole, 4, "no honest copy released: {show}");

    // A node that comes back on another port (its own, or a liar's claim)
    // keeps its recorded address until an admin approves the new one.
    let moved = cl.nodes[0].take().expect("running");
    let (id, old_url, dir) = (
        moved.id.clone(),
        moved.url.clone(),
        moved.data_dir().to_owned(),
    );
    moved.stop()?;
    let node = Node::start_in(&dir, &[])?;
    assert_ne!(node.url, old_url);
    wait_for(Duration::from_secs(10), "the new address proposed", || {
        let view = c.json(&["node", "show", &id])?;
        Ok((view["proposed_contact"]["https_url"] == node.url.as_str()).then_some(view))
    })?;
    println!("moved: {:?}", start.elapsed());
    let status = c.json(&["status"])?;
    assert_eq!(status["contact_changes"][0], id.as_str(), "{status}");
    let text = String::from_utf8(c.cartable(&["node", "show", &id])?.stdout)?;
    assert!(text.contains("cartable node approve-contact"), "{text}");
    for _ in 0..20 {
        let (to, _) = follow(c, &bundle)?;
        assert_ne!(to, node.url, "sent to an address nobody approved");
        assert_ne!(to, old_url, "sent to an address nobody answers");
    }

    ensure_success(
        &c.cartable(&["node", "approve-contact", &id])?,
        "node approve-contact",
    )?;
    let view = c.json(&["node", "show", &id])?;
    assert_eq!(view["https_url"], node.url.as_str());
    assert!(view["proposed_contact"].is_null(), "{view}");
    let again = c.cartable(&["node", "approve-contact", &id])?;
    assert!(!again.status.success(), "nothing left to approve");
    assert_eq!(view["state"], "up");
    Ok(())
}
