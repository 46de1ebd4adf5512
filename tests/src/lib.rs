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
