//! Connections refused and requests answered without their handler, counted by
//! reason for the life of the server: what an operator's monitoring reads
//! (`cartable_https_refused_connections_total`, `cartable_https_shed_requests_total`)
//! and what the log summarises now and then. Counts only grow; the log says
//! what changed since its last line, so a flood never becomes a flood of lines.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::admission::Refusal;

/// Refused connections are logged as a count at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a connection was closed before its TLS handshake, as monitoring names it.
pub const CONNECTION_REASONS: [&str; 3] = ["full", "network_full", "too_fast"];

/// Why a request was answered without its handler, as monitoring names it.
pub const REQUEST_REASONS: [&str; 5] = [
    "too_fast",
    "network_busy",
    "busy",
    "overloaded",
    "head_too_large",
];

/// Why a request was answered without its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Its network spent its rate: 429.
    TooFast,
    /// Its network has its share of the requests in flight: 503.
    NetworkBusy,
    /// The server has all the requests in flight it may: 503.
    Busy,
    /// Past `max_pending` requests waiting for their answer: 503.
    Overloaded,
    /// Its head, cookies aside, is over `max_header_bytes`: 431.
    HeadTooLarge,
}

impl Shed {
    /// The shed reason of a refused request place.
    pub fn of(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TooFast(_) => Self::TooFast,
            Refusal::NetworkBusy | Refusal::NetworkFull => Self::NetworkBusy,
            Refusal::Busy | Refusal::Full => Self::Busy,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What the refusals log line last reported.
#[derive(Debug, Default)]
struct Logged {
    at: Option<Instant>,
    connections: [u64; 3],
}

/// The counts of one server.
#[derive(Debug, Default)]
pub struct Refusals {
    connections: [AtomicU64; 3],
    requests: [AtomicU64; 5],
    logged: Mutex<Logged>,
}

impl Refusals {
    /// A connection was refused at accept.
    pub fn connection(&self, why: Refusal) {
        let i = match why {
            Refusal::Full | Refusal::Busy => 0,
            Refusal::NetworkFull | Refusal::NetworkBusy => 1,
            Refusal::TooFast(_) => 2,
        };
        self.connections[i].fetch_add(1, Ordering::Relaxed);
        self.log_now_and_then();
    }

    /// A request was answered without its handler.
    pub fn request(&self, why: Shed) {
        self.requests[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections refused so far, by reason (see [`CONNECTION_REASONS`]).
    pub fn connections(&self) -> [(&'static str, u64); 3] {
        let counts = self
            .connections
            .each_ref()
            .map(|c| c.load(Ordering::Relaxed));
        std::array::from_fn(|i| (CONNECTION_REASONS[i], counts[i]))
    }

    /// Requests shed so far, by reason (see [`REQUEST_REASONS`]).
    pub fn requests(&self) -> [(&'static str, u64); 5] {
        let counts = self.requests.each_ref().map(|c| c.load(Ordering::Relaxed));
        std::array::from_fn(|i| (REQUEST_REASONS[i], counts[i]))
    }

    fn log_now_and_then(&self) {
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.at.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        let now = self.connections().map(|(_, n)| n);
        let [full, network_full, too_fast] =
            std::array::from_fn(|i| now[i].saturating_sub(logged.connections[i]));
        *logged = Logged {
            at: Some(Instant::now()),
            connections: now,
        };
        tracing::warn!(
            full,
            network_full,
            too_fast,
            "connections refused since the last report"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_grow_and_keep_their_reason() {
        let r = Refusals::default();
        r.connection(Refusal::NetworkFull);
        r.connection(Refusal::NetworkFull);
        r.connection(Refusal::TooFast(Duration::from_secs(1)));
        r.request(Shed::Overloaded);
        r.request(Shed::of(Refusal::TooFast(Duration::ZERO)));
        assert_eq!(
            r.connections(),
            [("full", 0), ("network_full", 2), ("too_fast", 1)]
        );
        let requests = r.requests();
        assert_eq!(requests[0], ("too_fast", 1));
        assert_eq!(requests[3], ("overloaded", 1));
        assert_eq!(requests.iter().map(|(_, n)| n).sum::<u64>(), 2);
    }
}
