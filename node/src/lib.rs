//! The Cartable node: the daemon a school runs. What it shares with the
//! coordinator (key, TLS, QUIC endpoint, frames, the HTTPS server shell) is
//! [`cartable_net`]'s.
//!
//! - [`store`]: blob files and outboards named by hash, bundle manifests, a sled index.
//! - [`serve`]: what a node answers browsers, every byte verified as it streams;
//!   its parsers of what browsers send, [`conditional`] (`Range`, `If-Range`,
//!   `If-None-Match`) and [`target`] (the request path), are public for the
//!   fuzz targets in `node/fuzz`.
//! - [`admin`]: the local socket through which the CLI talks to a running daemon.
//! - [`daemon`]: `cartable-node serve`: store, HTTPS and admin socket together;
//!   copies between nodes on a [`background`] runtime that yields to browsers.
//! - [`member`]: membership of a coordinator: heartbeats, orders kept on disk, the replication agent.
//! - [`status`]: what the node shows about itself: the status page at `/`,
//!   and, in [`metrics`], what `/metrics` tells the operator's monitoring.
//! - [`config`]: the TOML configuration and its defaults.
//! - [`cli`]: the `cartable-node` commands.

// The map above names private modules: `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

mod admin;
mod background;
pub mod cli;
pub mod config;
mod daemon;
mod member;
mod metrics;
pub mod peer;
mod serve;
mod status;
pub mod store;

pub use serve::{conditional, target};
