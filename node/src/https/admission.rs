//! Admission before work: which connections and requests a server takes, by
//! client network, checked at accept (before the TLS handshake) and before each
//! request reaches a handler.
//!
//! A client network is the first `ipv4_prefix` / `ipv6_prefix` bits of its
//! address, or a network the operator listed. Each holds at most its share of
//! the connections and spends a token bucket (`network_rate` per second, up to
//! `network_burst`) for each new connection and each request. Time is passed
//! in, so the rules are tested without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cartable_proto::cidr::Cidr;

use super::limits::ConnectionLimits;

/// Why a connection or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds all the connections it may.
    Full,
    /// The client's network holds its share of the connections.
    NetworkFull,
    /// The client's network spent its rate; it may come back after this long.
    TooFast(Duration),
}

/// What identifies a client network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum NetworkKey {
    /// A listed network, by its index in the rules.
    Listed(usize),
    /// An address's first bits.
    Prefix(Cidr),
}

/// What one client network holds and may still spend.
#[derive(Debug)]
struct Network {
    open: usize,
    tokens: f64,
    refreshed: Instant,
}

/// The caps of one network: connections and rate.
#[derive(Debug, Clone, Copy)]
struct Caps {
    connections: usize,
    rate: f64,
    burst: f64,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    networks: HashMap<NetworkKey, Network>,
}

/// The admission rules of one server, and what is open now.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    state: Mutex<State>,
}

/// A connection's place, given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    network: Option<NetworkKey>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.open = state.open.saturating_sub(1);
        if let Some(n) = self.network.and_then(|k| state.networks.get_mut(&k)) {
            n.open = n.open.saturating_sub(1);
        }
    }
}

impl Admission {
    /// Rules from `limits`, nothing open.
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::default(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Client networks tracked now (for tests of the bound on memory).
    pub fn networks_tracked(&self) -> usize {
        self.lock().networks.len()
    }

    /// Takes a place for a new connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refusal> {
        let mut state = self.lock();
        if state.open >= self.limits.max_connections {
            return Err(Refusal::Full);
        }
        let network = match self.network_of(ip) {
            None => None,
            Some((key, caps)) => {
                self.prune(&mut state);
                let n = state.networks.entry(key).or_insert_with(|| Network {
                    open: 0,
                    tokens: caps.burst,
                    refreshed: now,
                });
                if n.open >= caps.connections {
                    return Err(Refusal::NetworkFull);
                }
                spend(n, caps, now)?;
                n.open += 1;
                Some(key)
            }
        };
        state.open += 1;
        Ok(Ticket {
            admission: self.clone(),
            network,
        })
    }

    /// Spends one request of `ip`'s network, or says when it may come back.
    pub fn request(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let Some((key, caps)) = self.network_of(ip) else {
            return Ok(());
        };
        let mut state = self.lock();
        match state.networks.get_mut(&key) {
            Some(n) => spend(n, caps, now),
            // A request on a connection admitted before a prune: its network
            // has an open connection, so it is never pruned; nothing to spend.
            None => Ok(()),
        }
    }

    /// The network `ip` belongs to and its caps; `None` when exempt.
    fn network_of(&self, ip: IpAddr) -> Option<(NetworkKey, Caps)> {
        let l = &self.limits;
        let caps = |share: f64| Caps {
            connections: ((l.max_connections as f64 * share) as usize).max(1),
            rate: f64::from(l.network_rate) * share / l.network_share,
            burst: f64::from(l.network_burst) * share / l.network_share,
        };
        if let Some((i, rule)) = l
            .networks
            .iter()
            .enumerate()
            .find(|(_, r)| r.cidr.contains(ip))
        {
            return rule.share.map(|s| (NetworkKey::Listed(i), caps(s)));
        }
        let prefix = Cidr::enclosing(ip, l.ipv4_prefix, l.ipv6_prefix);
        Some((NetworkKey::Prefix(prefix), caps(l.network_share)))
    }

    /// Forgets networks with nothing open once there are many: what a network
    /// with no connection spent is forgotten with it, which only ever favours
    /// the client, and keeps the map within twice the connection cap.
    fn prune(&self, state: &mut State) {
        if state.networks.len() > 2 * self.limits.max_connections + 1024 {
            state.networks.retain(|_, n| n.open > 0);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes one token from a network's bucket, refilled for the time since.
fn spend(n: &mut Network, caps: Caps, now: Instant) -> Result<(), Refusal> {
    let elapsed = now.saturating_duration_since(n.refreshed).as_secs_f64();
    n.tokens = (n.tokens + elapsed * caps.rate).min(caps.burst);
    n.refreshed = now;
    if n.tokens >= 1.0 {
        n.tokens -= 1.0;
        return Ok(());
    }
    let wait = (1.0 - n.tokens) / caps.rate;
    Err(Refusal::TooFast(Duration::from_secs_f64(wait.max(0.001))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::https::limits::FileConnections;

    fn admission(text: &str) -> Arc<Admission> {
        let file: FileConnections = toml::from_str(text).unwrap();
        Admission::new(file.check().unwrap())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_network_holds_only_its_share() {
        let a = admission("max_connections = 100\nnetwork_share = 0.1");
        let now = Instant::now();
        let held: Vec<_> = (0..10)
            .map(|i| a.admit(ip(&format!("127.0.1.{i}")), now).unwrap())
            .collect();
        assert_eq!(
            a.admit(ip("127.0.1.200"), now).unwrap_err(),
            Refusal::NetworkFull
        );
        assert!(a.admit(ip("127.0.2.1"), now).is_ok(), "another /24 gets in");
        drop(held);
        assert!(a.admit(ip("127.0.1.1"), now).is_ok(), "places come back");
    }

    #[test]
    fn the_total_cap_holds_whatever_the_networks() {
        let a = admission("max_connections = 4\nnetwork_share = 0.5");
        let now = Instant::now();
        let _held: Vec<_> = (0..4)
            .map(|i| a.admit(ip(&format!("10.0.{i}.1")), now).unwrap())
            .collect();
        assert_eq!(a.admit(ip("10.9.9.9"), now).unwrap_err(), Refusal::Full);
        assert_eq!(a.open(), 4);
    }

    #[test]
    fn a_network_spends_its_rate_and_gets_it_back_with_time() {
        let a = admission("network_rate = 10\nnetwork_burst = 5");
        let t0 = Instant::now();
        let _conn = a.admit(ip("192.0.2.1"), t0).unwrap();
        for _ in 0..4 {
            a.request(ip("192.0.2.7"), t0).unwrap();
        }
        let Err(Refusal::TooFast(wait)) = a.request(ip("192.0.2.7"), t0) else {
            panic!("the burst is spent");
        };
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(
            a.request(ip("198.51.100.1"), t0).is_ok(),
            "others unaffected"
        );
        assert!(
            a.request(ip("192.0.2.7"), t0 + Duration::from_millis(150))
                .is_ok()
        );
    }

    #[test]
    fn ipv6_networks_are_slash_56_and_mapped_v4_is_v4() {
        let a = admission("max_connections = 10\nnetwork_share = 0.1");
        let now = Instant::now();
        let _one = a.admit(ip("2001:db8:0:1::1"), now).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8:0:ff::2"), now).unwrap_err(),
            Refusal::NetworkFull,
            "same /56"
        );
        assert!(a.admit(ip("2001:db8:0:100::1"), now).is_ok(), "next /56");
        let _v4 = a.admit(ip("192.0.2.1"), now).unwrap();
        assert_eq!(
            a.admit(ip("::ffff:192.0.2.9"), now).unwrap_err(),
            Refusal::NetworkFull
        );
    }

    #[test]
    fn listed_networks_get_their_share_and_exempt_ones_no_cap() {
        let a = admission(
            "max_connections = 100\nnetwork_share = 0.01\n\
             [[networks]]\ncidr = \"10.20.0.0/16\"\nshare = 0.5\n\
             [[networks]]\ncidr = \"10.30.0.0/16\"\nexempt = true\n",
        );
        let now = Instant::now();
        let listed: Vec<_> = (0..50)
            .map(|i| a.admit(ip(&format!("10.20.{i}.1")), now).unwrap())
            .collect();
        assert_eq!(
            a.admit(ip("10.20.99.1"), now).unwrap_err(),
            Refusal::NetworkFull
        );
        let exempt: Vec<_> = (0..50)
            .map(|i| a.admit(ip(&format!("10.30.0.{i}")), now).unwrap())
            .collect();
        assert_eq!(a.open(), 100);
        assert_eq!(a.admit(ip("10.30.0.200"), now).unwrap_err(), Refusal::Full);
        drop((listed, exempt));
        assert_eq!(a.open(), 0);
    }

    #[test]
    fn networks_that_left_are_forgotten() {
        let a = admission("max_connections = 10\nnetwork_share = 1.0");
        let now = Instant::now();
        for i in 0..5000u32 {
            let addr = IpAddr::V4((0x0a00_0000 + (i << 8)).into());
            drop(a.admit(addr, now).unwrap());
        }
        assert!(a.networks_tracked() <= 2 * 10 + 1024 + 1);
    }
}
