//! The Cartable node: the daemon a school runs.
//!
//! - [`store`]: blob files and outboards named by hash, bundle manifests, a sled index.
//! - [`https`]: the HTTPS server shell both daemons run: admission, deadlines, shedding.
//! - [`serve`]: what a node answers browsers, every byte verified as it streams.
//! - [`admin`]: the local socket through which the CLI talks to a running daemon.
//! - [`daemon`]: `cartable-node serve`: store, HTTPS and admin socket together.
//! - [`member`]: membership of a coordinator: heartbeats, orders kept on disk, the replication agent.
//! - [`config`]: the TOML configuration and its defaults.
//! - [`tls`], [`identity`], [`secret_file`]: the HTTPS certificate, the node key.
//! - [`cli`]: the `cartable-node` commands.

pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod https;
pub mod identity;
pub mod member;
pub mod peer;
pub mod progress;
pub mod secret_file;
pub mod serve;
pub mod store;
pub mod tls;
