//! The Cartable coordinator: membership, placement across sites and regions,
//! replica lifecycle and repair, names, routing. The admin API's types are
//! [`cartable_proto::api`]; what it shares with nodes (key, TLS, QUIC endpoint,
//! frames, the HTTPS server shell) is [`cartable_net`]'s.
//!
//! - [`config`]: the coordinator's TOML configuration and policy.
//! - [`state`]: what the coordinator knows, behind one key-value interface (sled).
//! - [`lifecycle`]: replicas from placed to complete to released; repair; routing (no IO).
//! - [`control`]: joins and heartbeats from nodes over QUIC; [`spotcheck`]: verifying claimed copies;
//!   [`contact`]: where members answer, fixed at join; [`failure_reports`]: members' complaints about peers.
//! - [`http`]: the admin API and browser redirects, to nodes [`probe`] checked still answer; [`views`]: the state as the API shows it.
//! - [`trust`]: when a member's claims count, and what repeated failed checks cost it (no IO).
//! - [`daemon`]: `cartable-coordinator init` and `serve`.

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
