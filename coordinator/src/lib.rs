//! The Cartable coordinator: membership, placement across sites and regions,
//! replica lifecycle and repair, names, routing; and the `cartable` admin CLI.
//!
//! - [`api`]: the admin API's routes and JSON types (the CLI's contract).

pub mod api;
