//! The IO half of the Cartable protocol, shared by both daemons and the admin CLI.
//! [`cartable_proto`] says what the bytes mean and does no IO; this crate moves
//! them: the same key, certificate, QUIC and HTTPS code runs in a node and in the
//! coordinator, so that neither daemon depends on the other.
//!
//! - [`identity`], [`secret_file`], [`tls`]: a daemon's ed25519 key and the
//!   certificate made from it, files other users cannot read, the HTTPS certificate.
//! - [`peer`]: the QUIC endpoint, its admission limits and mutual authentication
//!   by node key; length-prefixed frames; one request to a peer, its answer verified.
//! - [`control`]: one control request to the coordinator, seen from a node.
//! - [`https`]: the HTTPS server shell both daemons run: admission, a deadline on
//!   every phase of a connection, shedding.
//! - [`metrics`]: the `[metrics]` table, the plain-HTTP `/metrics` server on an
//!   address of its own, and the HTTPS shell's counts, for both daemons.
//! - [`client`], [`pin`]: HTTPS requests to one server whose certificate is pinned
//!   (the CLI to the coordinator and nodes, the coordinator probing nodes).
//! - [`folder`]: a lesson folder read into a manifest, the one way both a node's
//!   `add` and the CLI's `publish` do it.
//! - [`config`], [`logging`], [`signal`], [`progress`]: what both daemons'
//!   configuration files, logs, stopping and terminal output share.
//! - [`output`]: what the command-line tools print, and how they end.

pub mod client;
pub mod config;
pub mod control;
pub mod folder;
pub mod https;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod peer;
pub mod pin;
pub mod progress;
pub mod secret_file;
pub mod signal;
pub mod tls;
