//! The HTTPS shell's counts, as both daemons export them: connections open,
//! requests waiting, connections refused and requests shed by reason.

use prometheus_client::collector::Collector;

use super::encode::{self, Scrape};
use crate::https::Load;

/// Reads a server's [`Load`] at each scrape.
#[derive(Debug)]
pub struct HttpsCollector(pub Load);

impl Collector for HttpsCollector {
    fn encode(&self, mut scrape: Scrape) -> std::fmt::Result {
        let load = &self.0;
        encode::gauge(
            &mut scrape,
            "cartable_https_connections",
            "HTTPS connections open now",
            load.connections() as f64,
        )?;
        encode::gauge(
            &mut scrape,
            "cartable_https_pending_requests",
            "HTTPS requests waiting for their answer now (shedding starts at connections.max_pending)",
            load.pressure().pending() as f64,
        )?;
        encode::counters(
            &mut scrape,
            "cartable_https_refused_connections",
            "HTTPS connections closed before their TLS handshake, by reason: full (connections.max_connections), network_full (the client network's share), too_fast (its handshake rate)",
            "reason",
            load.refusals().connections(),
        )?;
        encode::counters(
            &mut scrape,
            "cartable_https_shed_requests",
            "HTTPS requests answered without their handler, by reason: too_fast (429), network_busy, busy (max_in_flight), overloaded (max_pending) (503), head_too_large (431)",
            "reason",
            load.refusals().requests(),
        )
    }
}
