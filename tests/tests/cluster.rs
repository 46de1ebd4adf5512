//! A coordinator and member nodes as real processes on loopback, set up through
//! the `cartable` CLI: placement on distinct sites, verified copies, redirects,
//! repair after a node dies, restarts, and the bad inputs an operator can give.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;

use cartable_proto::fuzzing::crafted_manifest;
use cartable_tests::cluster::{
    PLACES, cluster, complete, ensure_success, publish, redirect, wait_for,
};
use cartable_tests::{HttpsClient, Node};

#[test]
fn a_published_lesson_gets_verified_copies_on_distinct_sites_and_survives_a_lost_node()
-> anyhow::Result<()> {
    let mut cl = cluster()?;
    let c = &cl.coordinator;
    let bundle = publish(
        c,
        &["--replicas", "3", "--name", "maths/fractions", "--wait"],
    )?;
    let copies = complete(c, &bundle)?;
    assert_eq!(copies.len(), 3, "{copies:?}");
    let sites: BTreeSet<_> = copies.iter().map(|(_, r, s)| (r, s)).collect();
    let regions: BTreeSet<_> = copies.iter().map(|(_, r, _)| r).collect();
    assert_eq!(sites.len(), 3, "three distinct sites");
    assert_eq!(regions.len(), 2, "both regions");

    let location = redirect(c, &format!("/b/{bundle}/index.html"))?;
    let holder = cl
        .nodes
        .iter()
        .flatten()
        .find(|n| location.starts_with(&n.url))
        .expect("the redirect names a node");
    assert!(copies.iter().any(|(id, _, _)| *id == holder.id));
    assert!(location.ends_with(&format!("/b/{bundle}/index.html")));
    let by_name = redirect(c, "/n/maths/fractions/index.html")?;
    assert_eq!(by_name, format!("/b/{bundle}/index.html"));
    // Nodes learn the names with their orders and answer them too.
    let client = HttpsClient::new(
        holder.url.trim_start_matches("https://"),
        &holder.cert_pem()?,
        &[b"h2"],
    )?;
    let runtime = tokio::runtime::Runtime::new()?;
    let at_node = wait_for(Duration::from_secs(10), "the node knows the name", || {
        let reply = runtime.block_on(client.get("/n/maths/fractions/index.html", &[]))?;
        Ok((reply.status == 302).then(|| reply.header("location").to_owned()))
    })?;
    assert_eq!(at_node, format!("/b/{bundle}/index.html"));
    // A pupil's browser given the coordinator's link lands on a copy and plays it.
    let dom = cartable_tests::browser::dump_dom(
        &format!("{}/n/maths/fractions/", c.url),
        Duration::from_secs(10),
    )?;
    assert!(dom.contains("Les fractions"), "the page rendered: {dom}");
    assert!(dom.contains("image: loaded"), "{dom}");
    assert!(dom.contains("video: loaded"), "{dom}");

    // Kill one holder: after the repair delay a fourth site takes its place,
    // and at no point is there less than one complete copy or a redirect to it.
    let victim_id = copies[0].0.clone();
    let victim = cl
        .nodes
        .iter_mut()
        .find(|n| n.as_ref().is_some_and(|n| n.id == victim_id))
        .expect("victim is a node");
    victim.as_mut().expect("running").kill()?;
    let dead_url = victim.take().expect("running").url.clone();
    wait_for(Duration::from_secs(10), "the killed node seen down", || {
        let status = c.json(&["status"])?;
        Ok((status["nodes_down"][0] == victim_id.as_str()).then_some(()))
    })?;
    let repaired = wait_for(Duration::from_secs(60), "repair back to 3 copies", || {
        let now = complete(c, &bundle)?;
        assert!(
            !now.is_empty(),
            "a bundle never drops to zero complete copies"
        );
        let location = redirect(c, &format!("/b/{bundle}/"))?;
        assert!(
            !location.starts_with(&dead_url),
            "redirected to a dead node"
        );
        Ok((now.len() == 3 && now.iter().all(|(id, _, _)| *id != victim_id)).then_some(now))
    })?;
    let sites: BTreeSet<_> = repaired.iter().map(|(_, r, s)| (r, s)).collect();
    assert_eq!(sites.len(), 3);
    let status = c.json(&["status"])?;
    assert_eq!(status["nodes_down"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[test]
fn the_coordinator_keeps_its_state_across_restarts_and_nodes_serve_without_it() -> anyhow::Result<()>
{
    let mut cl = cluster()?;
    let bundle = publish(&cl.coordinator, &["--replicas", "2", "--wait"])?;
    let before = complete(&cl.coordinator, &bundle)?;
    cl.coordinator.kill()?;
    // Without the coordinator, a holder still serves the lesson.
    let holder = cl
        .nodes
        .iter()
        .flatten()
        .find(|n| before.iter().any(|(id, _, _)| *id == n.id))
        .expect("a holder");
    let client = HttpsClient::new(
        holder.url.trim_start_matches("https://"),
        &holder.cert_pem()?,
        &[b"h2"],
    )?;
    let page = tokio::runtime::Runtime::new()?
        .block_on(client.get(&format!("/b/{bundle}/index.html"), &[]))?;
    assert_eq!(page.status, 200);
    cl.coordinator.restart()?;
    let after = complete(&cl.coordinator, &bundle)?;
    assert_eq!(before, after, "replica states survive a restart");
    let names = cl.coordinator.json(&["nodes"])?;
    assert_eq!(names.as_array().map(Vec::len), Some(PLACES.len()));
    Ok(())
}

#[test]
fn bad_admin_input_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let cl = cluster()?;
    let c = &cl.coordinator;
    let wrong = c.cartable_with_token("not-the-token", &["nodes"])?;
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));

    let bundle = publish(c, &["--replicas", "2"])?;
    let too_many = c.cartable(&["replicas", "set", &bundle, "9"])?;
    assert!(!too_many.status.success());
    assert!(String::from_utf8_lossy(&too_many.stderr).contains("sites"));
    let show = c.json(&["bundle", "show", &bundle])?;
    assert_eq!(show["replicas_wanted"], 2, "nothing changed");

    let bad = tempfile::tempdir()?;
    std::fs::write(bad.path().join("a\\b.html"), "x")?;
    let refused = c.cartable(&["publish", bad.path().to_str().unwrap()])?;
    assert!(!refused.status.success());
    assert_eq!(c.json(&["bundles"])?.as_array().map(Vec::len), Some(1));

    let client = HttpsClient::new(
        c.url.trim_start_matches("https://"),
        &std::fs::read(c.cert_path())?,
        &[b"http/1.1"],
    )?;
    let runtime = tokio::runtime::Runtime::new()?;
    // Crafted manifests, sent as no CLI would: refused, and nothing recorded.
    let admin = format!("Bearer {}", c.admin_token()?);
    let ids = || -> anyhow::Result<Vec<serde_json::Value>> {
        let bundles = c.json(&["bundles"])?;
        let list = bundles.as_array().context("a list of bundles")?;
        Ok(list.iter().map(|b| b["id"].clone()).collect())
    };
    let before = ids()?;
    let post = |manifest: Vec<u8>| {
        let auth = [("authorization", admin.as_str())];
        runtime.block_on(client.send("POST", "/api/bundles", &auth, manifest.into()))
    };
    let gib = 1 << 30;
    let two_sizes = post(crafted_manifest(&[
        ("a", b"same", 4),
        ("b", b"same", u64::MAX - 3),
    ]))?;
    assert_eq!(two_sizes.status, 400);
    assert!(
        String::from_utf8_lossy(&two_sizes.body).contains("two sizes"),
        "{}",
        String::from_utf8_lossy(&two_sizes.body)
    );
    // Each file fits the caps, but no node offers 2 GiB (the four nodes join with 1 GB).
    let too_big = post(crafted_manifest(&[("a", b"1", gib), ("b", b"2", gib)]))?;
    assert_eq!(too_big.status, 507);
    let reason = String::from_utf8_lossy(&too_big.body);
    assert!(reason.contains("no node that is up has room"), "{reason}");
    assert_eq!(ids()?, before, "no record left behind");
    assert_eq!(before.len(), 1);

    // A token works once: a second node with the same token never joins.
    let token = c.token("nord", "lille")?;
    let dirs = tempfile::tempdir()?;
    let (a, b) = (dirs.path().join("a"), dirs.path().join("b"));
    ensure_success(&cartable_tests::cli_in(&a, &["join", &token])?, "join a")?;
    ensure_success(&cartable_tests::cli_in(&b, &["join", &token])?, "join b")?;
    let _a = Node::start_in(&a, &[])?;
    wait_for(Duration::from_secs(20), "first node joined", || {
        Ok((c.json(&["nodes"])?.as_array().map(Vec::len) == Some(5)).then_some(()))
    })?;
    let _b = Node::start_in(&b, &[])?;
    // An expired token is refused too.
    let out = c.cartable(&[
        "token",
        "create",
        "--region",
        "sud",
        "--site",
        "pau",
        "--expires",
        "1s",
    ])?;
    ensure_success(&out, "token create")?;
    let expired = String::from_utf8(out.stdout)?.trim().to_owned();
    std::thread::sleep(Duration::from_millis(1500));
    let late = dirs.path().join("late");
    ensure_success(
        &cartable_tests::cli_in(&late, &["join", &expired])?,
        "join late",
    )?;
    let _late = Node::start_in(&late, &[])?;
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.json(&["nodes"])?.as_array().map(Vec::len),
        Some(5),
        "reused and expired tokens refused"
    );
    let tokens = c.json(&["token", "ls"])?;
    let unused = tokens
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["used_by"].is_null())
        .count();
    assert_eq!(unused, 1, "only the expired token is left unused: {tokens}");
    let garbage = cartable_tests::cli_in(&b, &["join", "cj1-garbage"])?;
    assert!(!garbage.status.success());

    // The API itself, without the CLI: no token, no answer.
    let bare = runtime.block_on(client.get("/api/nodes", &[]))?;
    assert_eq!(bare.status, 401);
    assert!(String::from_utf8_lossy(&bare.body).contains("admin token"));
    let wrong = runtime.block_on(client.get("/api/nodes", &[("authorization", "Bearer nope")]))?;
    assert_eq!(wrong.status, 401);
    Ok(())
}
