//! The rules between the workspace's crates (`../shared/DESIGN.md`, "Parts and
//! where they live"), read from `cargo metadata` so that a new dependency that
//! breaks one fails here rather than in review: the coordinator never depends
//! on the node, nor the node on the coordinator; `proto` and `placement` have no
//! IO dependencies; the admin CLI links no storage engine, nor either daemon.
//!
//! Only what a crate links counts: its normal dependencies, followed
//! transitively (dev-dependencies serve its tests, build-dependencies its
//! build scripts).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// Crates that do IO: async runtimes, sockets, TLS, HTTP, QUIC, storage engines.
const IO_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "quinn",
    "rustls",
    "tokio-rustls",
    "hyper",
    "hyper-util",
    "sled",
];

/// Storage engines.
const STORAGE_ENGINES: &[&str] = &["sled", "etcd-client", "rocksdb", "redb"];

/// The packages each workspace package links, by name, found by following
/// normal dependencies from it.
struct Graph {
    names: BTreeMap<String, String>,
    links: BTreeMap<String, Vec<String>>,
}

impl Graph {
    fn read() -> anyhow::Result<Self> {
        let out = Command::new(env!("CARGO"))
            .current_dir(cartable_tests::workspace_root())
            .args(["metadata", "--format-version", "1"])
            .output()
            .context("running cargo metadata")?;
        if !out.status.success() {
            bail!("cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
        }
        let meta: Value = serde_json::from_slice(&out.stdout)?;
        let mut names = BTreeMap::new();
        for p in meta["packages"].as_array().context("no packages")? {
            let (id, name) = (p["id"].as_str(), p["name"].as_str());
            names.insert(
                id.context("package id")?.to_owned(),
                name.context("package name")?.to_owned(),
            );
        }
        let mut links = BTreeMap::new();
        for node in meta["resolve"]["nodes"].as_array().context("no resolve")? {
            let id = node["id"].as_str().context("node id")?.to_owned();
            let normal = node["deps"]
                .as_array()
                .context("deps")?
                .iter()
                .filter(|d| {
                    d["dep_kinds"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()))
                })
                .filter_map(|d| d["pkg"].as_str().map(str::to_owned))
                .collect();
            links.insert(id, normal);
        }
        Ok(Self { names, links })
    }

    /// Every package `package` links, itself excluded.
    fn linked_by(&self, package: &str) -> anyhow::Result<BTreeSet<&str>> {
        let start = self
            .names
            .iter()
            .find(|(_, name)| *name == package)
            .map(|(id, _)| id.as_str())
            .with_context(|| format!("no package {package}"))?;
        let mut seen = BTreeSet::new();
        let mut todo = vec![start];
        while let Some(id) = todo.pop() {
            for dep in self.links.get(id).into_iter().flatten() {
                if seen.insert(dep.as_str()) {
                    todo.push(dep);
                }
            }
        }
        Ok(seen.into_iter().map(|id| self.names[id].as_str()).collect())
    }

    /// Fails naming the forbidden packages `package` links.
    fn forbid(&self, package: &str, forbidden: &[&str], why: &str) -> anyhow::Result<()> {
        let linked = self.linked_by(package)?;
        let found: Vec<_> = forbidden.iter().filter(|f| linked.contains(**f)).collect();
        if !found.is_empty() {
            bail!("{package} links {found:?}: {why}");
        }
        Ok(())
    }
}

#[test]
fn the_crates_keep_to_the_rules_between_the_parts() -> anyhow::Result<()> {
    let graph = Graph::read()?;
    graph.forbid(
        "cartable-coordinator",
        &["cartable-node"],
        "what both daemons share belongs in cartable-net",
    )?;
    graph.forbid(
        "cartable-node",
        &["cartable-coordinator"],
        "what both daemons share belongs in cartable-net",
    )?;
    for pure in ["cartable-proto", "cartable-placement"] {
        graph.forbid(pure, IO_CRATES, "it must stay free of IO")?;
    }
    graph.forbid(
        "cartable-cli",
        STORAGE_ENGINES,
        "the CLI is a client of the admin API",
    )?;
    graph.forbid(
        "cartable-cli",
        &["cartable-node", "cartable-coordinator"],
        "the CLI is a client of the admin API",
    )?;
    Ok(())
}

#[test]
fn the_graph_sees_what_a_daemon_links() -> anyhow::Result<()> {
    // The rules above would pass on an empty graph: check it finds real links.
    let graph = Graph::read()?;
    let node = graph.linked_by("cartable-node")?;
    for expected in ["cartable-net", "cartable-proto", "sled", "tokio", "quinn"] {
        assert!(node.contains(expected), "cartable-node links {expected}");
    }
    assert!(graph.forbid("cartable-node", &["sled"], "example").is_err());
    Ok(())
}
