//! The Cartable coordinator: membership, placement across sites and regions,
//! replica lifecycle and repair, names, routing. The admin API's types are
//! [`cartable_proto::api`]; what it shares with nodes (key, TLS, QUIC endpoint,
//! frames, the HTTPS server shell) is [`cartable_net`]'s.
//!
//! Where each behaviour lives:
//!
//! - [`ops`]: every operation, typed, on the one [`Coordinator`] that owns the
//!   state's lock: the admin API's (publish, drain, remove, trust, contacts,
//!   replicas, names, tokens, status, plan) and the nodes' (join, heartbeat),
//!   with the spot checks of claimed copies they start. Refusals are
//!   [`ops::OpError`], [`ops::members::JoinError`], [`ops::members::HeartbeatError`].
//! - [`http`]: HTTPS: the admin API's routes mapped to [`ops`] (statuses in one
//!   place), and browser redirects to nodes [`probe`] checked still answer.
//! - [`control`]: QUIC: nodes' join and heartbeat frames mapped to [`ops`],
//!   each answered in its protocol version; strangers' limits and deadline.
//! - [`lifecycle`]: replicas from placed to complete to released; repair; routing (no IO).
//! - [`trust`]: when a member's claims count, and what repeated failed checks cost it (no IO).
//! - [`spotcheck`]: verifying a claimed copy over QUIC; [`contact`]: where members
//!   answer, fixed at join; [`failure_reports`]: members' complaints about peers.
//! - [`views`]: the state as the admin API shows it.
//! - [`state`]: what the coordinator knows, behind one key-value interface (sled);
//!   the rows' stored schema, its version and migrations: [`state::records`].
//! - [`metrics`]: what the operator's monitoring reads at `/metrics`.
//! - [`config`]: the coordinator's TOML configuration and policy.
//! - [`daemon`]: `cartable-coordinator init` and `serve`: the key, certificate
//!   and admin token; the endpoints and the lifecycle loop; what a stop persists.
//! - [`backup`]: `backup` and `restore`: the whole coordinator in one file.

pub mod backup;
pub mod config;
pub mod contact;
pub mod control;
pub mod daemon;
pub mod failure_reports;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod ops;
pub mod probe;
pub mod spotcheck;
pub mod state;
pub mod trust;
pub mod views;

pub use ops::Coordinator;
