//! Admission before work: which connections and requests a server takes, by
//! client network, checked at accept (before the TLS handshake) and before each
//! request reaches a handler.
//!
//! A client network is the first `ipv4_prefix` / `ipv6_prefix` bits of its
//! address, or a network the operator listed. Each holds at most its share of
//! the connections and of the requests in flight (from their start to the end
//! of their response: what a response buffers is bounded by these), and spends
//! a token bucket (`network_rate` per second, up to `network_burst`) for each
//! request, and a bucket of half that for each new connection: the TLS
//! handshakes a network may make are capped, and a network that spent its
//! request rate still gets a connection to hear the 429 page. An IPv6 site
//! (a /48, what one customer is commonly given) holds many /56 networks: all
//! of them together get at most [`SITE_SHARES`] networks' worth. The last
//! `max_connections / 16` places are kept for listed and exempt networks, so
//! an operator gets in when strangers fill the rest. Time is passed in, so the
//! rules are tested without sleeping.

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
    /// The server has all the requests in flight it may: come back shortly.
    Busy,
    /// The client's network has its share of the requests in flight.
    NetworkBusy,
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

/// What a ticket holds a place of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Connection,
    Request,
}

/// What one client network holds and may still spend.
#[derive(Debug)]
struct Network {
    open: usize,
    requests: usize,
    request_tokens: Bucket,
    connection_tokens: Bucket,
}

/// A token bucket: tokens left, and when they were counted.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refreshed: Instant,
}

/// The IPv6 prefix of a site, whose networks share [`SITE_SHARES`] shares.
pub const IPV6_SITE_PREFIX: u8 = 48;
/// Network shares all the networks of one IPv6 site hold together.
pub const SITE_SHARES: f64 = 4.0;

/// The networks a client counts in: its own, and its IPv6 site.
type Keys = [Option<NetworkKey>; 2];

/// The share of a network's rate and burst that new connections get: enough
/// for a school whose browsers open several connections each.
const CONNECTION_RATE_SHARE: f64 = 0.5;

/// The caps of one network: connections, requests in flight and rate.
#[derive(Debug, Clone, Copy)]
struct Caps {
    connections: usize,
    requests: usize,
    rate: f64,
    burst: f64,
    /// Listed or exempt: may use the places kept back.
    listed: bool,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    requests: usize,
    networks: HashMap<NetworkKey, Network>,
}

/// The admission rules of one server, and what is open now.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    state: Mutex<State>,
}

/// A connection's or a request's place, given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    networks: Keys,
    resource: Resource,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut guard = self.admission.lock();
        let state = &mut *guard;
        let total = match self.resource {
            Resource::Connection => &mut state.open,
            Resource::Request => &mut state.requests,
        };
        *total = total.saturating_sub(1);
        for key in self.networks.iter().flatten() {
            if let Some(n) = state.networks.get_mut(key) {
                let held = match self.resource {
                    Resource::Connection => &mut n.open,
                    Resource::Request => &mut n.requests,
                };
                *held = held.saturating_sub(1);
            }
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
        let l = &self.limits;
        let networks = self.networks_of(ip);
        let listed = networks[0].is_none_or(|(_, c)| c.listed);
        let cap = if listed {
            l.max_connections
        } else {
            l.max_connections - l.max_connections / 16
        };
        let mut state = self.lock();
        if state.open >= cap {
            return Err(Refusal::Full);
        }
        self.prune(&mut state);
        for (key, caps) in networks.iter().flatten() {
            if network_entry(&mut state, *key, caps, now).open >= caps.connections {
                return Err(Refusal::NetworkFull);
            }
        }
        let share = CONNECTION_RATE_SHARE;
        for (key, caps) in networks.iter().flatten() {
            network_entry(&mut state, *key, caps, now)
                .connection_tokens
                .spend(caps.rate * share, caps.burst * share, now)?;
        }
        for (key, caps) in networks.iter().flatten() {
            network_entry(&mut state, *key, caps, now).open += 1;
        }
        state.open += 1;
        Ok(self.ticket(networks, Resource::Connection))
    }

    /// Takes a place for a request from `ip` until its response ends: its
    /// network's rate, its share of the requests in flight, and the total.
    pub fn request(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refusal> {
        let mut state = self.lock();
        if state.requests >= self.limits.max_in_flight {
            return Err(Refusal::Busy);
        }
        let networks = self.networks_of(ip);
        for (key, caps) in networks.iter().flatten() {
            if network_entry(&mut state, *key, caps, now).requests >= caps.requests {
                return Err(Refusal::NetworkBusy);
            }
        }
        for (key, caps) in networks.iter().flatten() {
            network_entry(&mut state, *key, caps, now)
                .request_tokens
                .spend(caps.rate, caps.burst, now)?;
        }
        for (key, caps) in networks.iter().flatten() {
            network_entry(&mut state, *key, caps, now).requests += 1;
        }
        state.requests += 1;
        Ok(self.ticket(networks, Resource::Request))
    }

    fn ticket(
        self: &Arc<Self>,
        networks: [Option<(NetworkKey, Caps)>; 2],
        resource: Resource,
    ) -> Ticket {
        Ticket {
            admission: self.clone(),
            networks: networks.map(|n| n.map(|(key, _)| key)),
            resource,
        }
    }

    /// The network `ip` belongs to, then its IPv6 site when it is a
    /// network of its own, with their caps; none when exempt.
    fn networks_of(&self, ip: IpAddr) -> [Option<(NetworkKey, Caps)>; 2] {
        let l = &self.limits;
        let network = self.network_of(ip);
        let site = match network {
            Some((NetworkKey::Prefix(_), caps))
                if matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none())
                    && l.ipv6_prefix > IPV6_SITE_PREFIX =>
            {
                let site = Cidr::enclosing(ip, l.ipv4_prefix, IPV6_SITE_PREFIX);
                Some((NetworkKey::Prefix(site), caps.times(SITE_SHARES, l)))
            }
            _ => None,
        };
        [network, site]
    }

    /// The network `ip` belongs to and its caps; `None` when exempt.
    fn network_of(&self, ip: IpAddr) -> Option<(NetworkKey, Caps)> {
        let l = &self.limits;
        let caps = |share: f64, listed: bool| Caps {
            connections: ((l.max_connections as f64 * share) as usize).max(1),
            requests: ((l.max_in_flight as f64 * share) as usize).max(1),
            rate: f64::from(l.network_rate) * share / l.network_share,
            burst: f64::from(l.network_burst) * share / l.network_share,
            listed,
        };
        if let Some((i, rule)) = l
            .networks
            .iter()
            .enumerate()
            .find(|(_, r)| r.cidr.contains(ip))
        {
            return rule.share.map(|s| (NetworkKey::Listed(i), caps(s, true)));
        }
        let prefix = Cidr::enclosing(ip, l.ipv4_prefix, l.ipv6_prefix);
        Some((NetworkKey::Prefix(prefix), caps(l.network_share, false)))
    }

    /// Forgets networks with nothing open once there are many: what a network
    /// with no connection spent is forgotten with it, which only ever favours
    /// the client, and keeps the map within twice the connection cap.
    fn prune(&self, state: &mut State) {
        if state.networks.len() > 2 * self.limits.max_connections + 1024 {
            state.networks.retain(|_, n| n.open > 0 || n.requests > 0);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Caps {
    /// `shares` times these caps, within the server's totals.
    fn times(self, shares: f64, l: &ConnectionLimits) -> Self {
        let scale = |n: usize, total: usize| ((n as f64 * shares) as usize).min(total);
        Self {
            connections: scale(self.connections, l.max_connections),
            requests: scale(self.requests, l.max_in_flight),
            rate: self.rate * shares,
            burst: self.burst * shares,
            listed: self.listed,
        }
    }
}

/// A network's entry, made with full buckets if it is new.
fn network_entry<'a>(
    state: &'a mut State,
    key: NetworkKey,
    caps: &Caps,
    now: Instant,
) -> &'a mut Network {
    let full = |burst: f64| Bucket {
        tokens: burst.max(1.0),
        refreshed: now,
    };
    state.networks.entry(key).or_insert_with(|| Network {
        open: 0,
        requests: 0,
        request_tokens: full(caps.burst),
        connection_tokens: full(caps.burst * CONNECTION_RATE_SHARE),
    })
}

impl Bucket {
    /// Takes one token, refilled at `rate` per second up to `burst` (never
    /// below one, so a bucket always refills) for the time since.
    fn spend(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Refusal> {
        let elapsed = now.saturating_duration_since(self.refreshed).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst.max(1.0));
        self.refreshed = self.refreshed.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / rate;
        Err(Refusal::TooFast(Duration::from_secs_f64(wait.max(0.001))))
    }
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
        for _ in 0..5 {
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
    fn the_networks_of_one_ipv6_site_share_a_few_shares() {
        let a = admission("max_connections = 1000\nnetwork_share = 0.01\nmax_in_flight = 1000");
        let now = Instant::now();
        // A /48 is 256 /56s: without a site cap, 2,560 places.
        let site: Vec<_> = (0..256u32)
            .flat_map(|n| (0..10).map(move |h| format!("2001:db8:7:{:x}::{h:x}", n << 8)))
            .map_while(|addr| a.admit(ip(&addr), now).ok())
            .collect();
        assert_eq!(site.len(), 40, "four networks' worth");
        assert_eq!(
            a.admit(ip("2001:db8:7:ff00::1"), now).unwrap_err(),
            Refusal::NetworkFull
        );
        assert!(a.admit(ip("2001:db8:8::1"), now).is_ok(), "the next site");
        assert!(a.admit(ip("192.0.2.1"), now).is_ok(), "IPv4 unaffected");
        let requests: Vec<_> = (0..100)
            .map_while(|n| {
                a.request(ip(&format!("2001:db8:7:{:x}::1", n << 8)), now)
                    .ok()
            })
            .collect();
        assert_eq!(requests.len(), 40);
        drop((site, requests));
        assert_eq!(a.open(), 0);
        assert!(
            a.admit(ip("2001:db8:7:100::1"), now).is_ok(),
            "places come back"
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
    fn connections_have_a_rate_of_their_own() {
        let a = admission("network_rate = 100\nnetwork_burst = 100");
        let t0 = Instant::now();
        let conns: Vec<_> = (0..50)
            .map(|_| a.admit(ip("192.0.2.1"), t0).unwrap())
            .collect();
        assert!(
            matches!(a.admit(ip("192.0.2.1"), t0), Err(Refusal::TooFast(_))),
            "half the burst for handshakes"
        );
        for _ in 0..100 {
            a.request(ip("192.0.2.1"), t0).unwrap();
        }
        assert!(matches!(
            a.request(ip("192.0.2.1"), t0),
            Err(Refusal::TooFast(_))
        ));
        drop(conns);
        let later = t0 + Duration::from_millis(50);
        assert!(
            a.admit(ip("192.0.2.1"), later).is_ok(),
            "a network past its request rate still connects, to hear the 429"
        );
    }

    #[test]
    fn one_network_has_only_its_share_of_requests_in_flight() {
        let a = admission("max_in_flight = 100\nnetwork_share = 0.1");
        let now = Instant::now();
        let _conn = a.admit(ip("192.0.2.1"), now).unwrap();
        let held: Vec<_> = (0..10)
            .map(|_| a.request(ip("192.0.2.1"), now).unwrap())
            .collect();
        assert_eq!(
            a.request(ip("192.0.2.9"), now).unwrap_err(),
            Refusal::NetworkBusy
        );
        assert!(
            a.request(ip("198.51.100.1"), now).is_ok(),
            "others unaffected"
        );
        drop(held);
        assert!(a.request(ip("192.0.2.1"), now).is_ok(), "places come back");
    }

    #[test]
    fn listed_networks_get_in_when_strangers_filled_the_rest() {
        let a = admission(
            "max_connections = 32\nnetwork_share = 1.0\n\
             [[networks]]\ncidr = \"10.20.0.0/16\"\nexempt = true\n",
        );
        let now = Instant::now();
        let strangers: Vec<_> = (0..30)
            .map_while(|_| a.admit(ip("203.0.113.1"), now).ok())
            .collect();
        assert_eq!(strangers.len(), 30, "all but the places kept back");
        assert_eq!(a.admit(ip("198.51.100.1"), now).unwrap_err(), Refusal::Full);
        assert!(
            a.admit(ip("10.20.0.1"), now).is_ok(),
            "the operator gets in"
        );
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
