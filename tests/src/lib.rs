//! The integration harness: real `cartable-node` processes on loopback, a real
//! HTTPS client that trusts exactly the node's certificate, raw TLS requests that
//! no client normalizes, and a headless Chromium.
//!
//! Every node binds port 0 and lives in a temporary folder; dropping a [`Node`]
//! stops its process.

pub mod browser;
pub mod client;
/// A coordinator, the `cartable` CLI and member nodes.
pub mod cluster;
/// Lessons and readers for the fire scenarios.
pub mod fire;
/// Scraping `/metrics` and reading the OpenMetrics text.
pub mod metrics;
pub mod node;
/// Helpers shared by the peer-to-peer tests: sample lessons, serving nodes, lying peers.
pub mod peers;

pub use client::{HttpsClient, Reply};
pub use node::{Node, add_in, cli, cli_in, node_binary};

/// The sample lesson shipped in `examples/lessons/fractions`.
pub fn sample_lesson() -> std::path::PathBuf {
    workspace_root().join("examples/lessons/fractions")
}

/// The workspace's top folder.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// What a process uses now, read from /proc.
#[derive(Debug, Clone, Copy)]
pub struct ProcessUse {
    /// Resident memory, KiB.
    pub rss_kib: u64,
    /// Open file descriptors (sockets included).
    pub fds: usize,
    /// Threads.
    pub threads: u64,
}

/// What process `pid` uses now.
pub fn process_use(pid: u32) -> anyhow::Result<ProcessUse> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))?;
        let value = line[name.len()..].split_whitespace().next().unwrap_or("");
        Ok(value.parse()?)
    };
    Ok(ProcessUse {
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count(),
    })
}
