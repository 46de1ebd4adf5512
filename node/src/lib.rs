//! The Cartable node: the daemon a school runs.
//!
//! - [`store`]: blob files and outboards named by hash, bundle manifests, a sled index.
//! - [`serve`]: HTTPS for browsers (hyper 1 over rustls), every byte verified as it streams.
//! - [`admin`]: the local admin socket through which the CLI talks to a running daemon.
//! - [`config`]: the TOML configuration and its defaults.
//! - [`tls`]: the HTTPS certificate, made on first run when none is configured.
//! - [`cli`]: the `cartable-node` commands.

pub mod store;
