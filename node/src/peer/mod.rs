//! Node ↔ node copying over QUIC (protocol: [`cartable_proto::wire`]); the
//! endpoint, authentication and frames are [`cartable_net::peer`]'s.
//!
//! - [`dial`]: shared connections to peers, one dial per peer at a time, with a deadline.
//! - [`respond`]: answering peers' requests from the store, verified.
//! - [`asks`]: what answering asks of the store, at the daemon's priority.
//! - [`sink`]: where the verified groups a peer sends go: a blob's partial files.
//! - [`fetch`]: copying a bundle from peers, verifying every byte, resuming.
//! - [`through`]: fetch-through, serving browsers bundles held only by peers.
//! - [`reputation`]: verification failures counted per peer.
//! - [`rate`]: the bandwidth cap of background copies.
//! - [`pacing`]: copies served to peers give way to this node's browsers.

pub mod asks;
pub(crate) mod dial;
pub(crate) mod fetch;
pub(crate) mod pacing;
pub(crate) mod rate;
pub(crate) mod reputation;
pub mod respond;
pub(crate) mod sink;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod through;
