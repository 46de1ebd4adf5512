//! The Cartable coordinator: membership, placement across sites and regions,
//! replica lifecycle and repair, names, routing; and the `cartable` admin CLI.
//!
//! - [`api`]: the admin API's routes and JSON types (the CLI's contract).
//! - [`config`]: the coordinator's TOML configuration and policy.
//! - [`cli`]: the `cartable` admin CLI, a client of the admin API.
//! - [`state`]: what the coordinator knows, behind one key-value interface (sled).
//! - [`lifecycle`]: replicas from placed to complete to released; repair; routing (no IO).
//! - [`control`]: joins and heartbeats from nodes over QUIC; [`spotcheck`]: verifying claimed copies;
//!   [`contact`]: where members answer, fixed at join; [`failure_reports`]: members' complaints about peers.
//! - [`http`]: the admin API and browser redirects, to nodes [`probe`] checked still answer; [`views`]: the state as the API shows it.
//! - [`trust`]: when a member's claims count, and what repeated failed checks cost it (no IO).
//! - [`daemon`]: `cartable-coordinator init` and `serve`.

pub mod api;
pub mod cli;
pub mod config;
pub mod contact;
pub mod control;
pub mod daemon;
pub mod failure_reports;
pub mod http;
pub mod lifecycle;
pub mod probe;
pub mod spotcheck;
pub mod state;
pub mod trust;
pub mod views;

pub use daemon::Coordinator;
