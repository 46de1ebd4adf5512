//! The Cartable coordinator: membership, placement across sites and regions,
//! replica lifecycle and repair, names, routing; and the `cartable` admin CLI.
//!
//! - [`api`]: the admin API's routes and JSON types (the CLI's contract).
//! - [`config`]: the coordinator's TOML configuration and policy.
//! - [`cli`]: the `cartable` admin CLI, a client of the admin API.
//! - [`state`]: what the coordinator knows, behind one key-value interface (sled).

pub mod api;
pub mod cli;
pub mod config;
pub mod state;
