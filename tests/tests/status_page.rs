//! The status page at `/` on a node's HTTPS port: what it holds, its peers,
//! its coordinator, its disk and bandwidth, in plain HTML with strict headers
//! and no secret, loaded in headless Chromium.

use std::time::Duration;

use cartable_tests::cluster::{FAST_POLICY, PLACES, cluster_of, publish};
use cartable_tests::{HttpsClient, Node, browser, sample_lesson};

#[tokio::test]
async fn chromium_shows_the_bundle_just_added_and_no_secret() -> anyhow::Result<()> {
    let node = Node::start()?;
    let id = node.add(&sample_lesson())?;
    let client = HttpsClient::for_node(&node)?;
    let page = client.get("/", &[]).await?;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(
        page.header("content-security-policy")
            .starts_with("default-src 'none'"),
        "no script, no style, nothing loaded: {}",
        page.header("content-security-policy")
    );
    assert_eq!(page.header("cache-control"), "no-store");
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(
        page.header("access-control-allow-origin"),
        "",
        "lessons cannot read the node's own page"
    );
    let html = String::from_utf8(page.body)?;
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("style"), "{html}");

    let dom = browser::dump_dom(&format!("{}/", node.url), Duration::from_secs(3))?;
    assert!(dom.contains("Bundles held: 1"), "{dom}");
    assert!(dom.contains(&format!("href=\"/b/{id}/\"")), "{dom}");
    assert!(dom.contains(&node.id), "{dom}");
    assert!(dom.contains("Not a member of a coordinator"), "{dom}");
    let data_dir = node.data_dir().to_string_lossy().into_owned();
    for secret in [data_dir.as_str(), "admin.sock", "PRIVATE KEY", "token"] {
        assert!(!dom.contains(secret), "{secret:?} on the page: {dom}");
    }
    let key = std::fs::read_to_string(node.data_dir().join("tls/key.pem"))?;
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!dom.contains(&key_body[..32]), "TLS key on the page");
    Ok(())
}

#[test]
fn a_member_shows_its_coordinator_its_peers_and_its_copies() -> anyhow::Result<()> {
    let cluster = cluster_of(&PLACES, FAST_POLICY, "")?;
    let bundle = publish(&cluster.coordinator, &["--replicas", "4", "--wait"])?;
    let node = cluster.nodes[1].as_ref().expect("started");
    let membership = std::fs::read_to_string(node.data_dir().join("membership.json"))?;
    let token: serde_json::Value = serde_json::from_str(&membership)?;
    let token = token["token"].as_str().expect("a token").to_owned();
    let runtime = tokio::runtime::Runtime::new()?;
    let html = runtime.block_on(async {
        let page = HttpsClient::for_node(node)?.get("/", &[]).await?;
        anyhow::ensure!(page.status == 200, "status {}", page.status);
        Ok(String::from_utf8(page.body)?)
    })?;
    assert!(html.contains("Coordinator reachable"), "{html}");
    assert!(html.contains("Bundles held: 1"), "{html}");
    assert!(html.contains(&bundle), "{html}");
    assert!(html.contains("Peers: 3"), "{html}");
    assert!(html.contains("capacity offered<td>953.7 MiB"), "{html}");
    let secret = token.split('-').nth(1).expect("cj1-SECRET-...");
    assert!(!html.contains(secret), "the join secret on the page");
    Ok(())
}
