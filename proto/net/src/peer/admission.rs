//! Which QUIC connection attempts a listening endpoint takes, and how much a
//! connection may hold before and after its peer is known.
//!
//! A connection is a *stranger's* from its first packet until [`Slot::trust`]
//! (its key proved to be a member): on a node's peer port right after the
//! handshake, on the coordinator once the key has joined. Strangers are what the
//! caps bound; members are accountable (their keys can be removed) and only
//! count towards the total.
//!
//! An attempt is judged at `quinn::Incoming`, before any handshake work:
//!
//! 1. over [`Limits::max_connections`] in all, or [`Limits::max_strangers`]
//!    strangers: refused;
//! 2. the server is busy (more than [`Limits::retry_above_handshakes`] handshakes
//!    in progress, or more than [`Limits::retry_above_strangers`] strangers) and
//!    the address is not validated: asked to retry, so that a spoofed source
//!    address costs one stateless packet and no slot;
//! 3. its client network (an IPv4 address, an IPv6 /64) already holds
//!    [`Limits::max_strangers_per_network`] strangers: refused;
//! 4. otherwise taken, with a [`Slot`] that counts it until it is dropped (the
//!    connection's task ends).
//!
//! The flow-control windows and stream counts are sent in the handshake, before
//! the peer's certificate is checked, so every connection starts with
//! [`STRANGER_STREAMS`] streams and a [`STRANGER_RECEIVE_WINDOW`]; [`trust`] raises
//! them once the peer is a known member. quinn 0.11 can change the stream count
//! and the connection window of a live connection, not the per-stream window:
//! that one is fixed at [`STREAM_RECEIVE_WINDOW`] for every connection, and the
//! connection window is what bounds a stranger.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cartable_proto::cidr::Cidr;
use quinn::VarInt;

/// Default of [`Limits::max_connections`]: members keep one connection each to
/// the coordinator, and a national deployment has tens of thousands of nodes
/// (60,000 in the placement benchmark); an idle member connection costs a few
/// KiB. It bounds descriptors and tasks, not strangers.
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;
/// Default of [`Limits::max_strangers`]: measured, a stranger holding a frame
/// short of its last byte on each of its streams costs the coordinator about
/// 90 KiB of resident memory (`tests/tests/quic_limits.rs`), so 1,024
/// strangers stay around 100 MiB.
pub const DEFAULT_MAX_STRANGERS: usize = 1024;
/// Default of [`Limits::max_strangers_per_network`]: a school's nodes behind one
/// NAT address join a few at a time; one client network cannot take more than
/// 1/32 of [`DEFAULT_MAX_STRANGERS`].
pub const DEFAULT_MAX_STRANGERS_PER_NETWORK: usize = 32;
/// Default of [`Limits::retry_above_handshakes`]: members reconnect a few at a
/// time; many handshakes at once look like a flood, whose sources must prove
/// their address before costing a handshake.
pub const DEFAULT_RETRY_ABOVE_HANDSHAKES: usize = 32;
/// Default of [`Limits::retry_above_strangers`]: past a quarter of the strangers'
/// cap, every new address proves itself first (one more round trip for it).
pub const DEFAULT_RETRY_ABOVE_STRANGERS: usize = DEFAULT_MAX_STRANGERS / 4;

/// Bidirectional streams a connection may open before its peer is trusted: a
/// join needs one at a time, and two let a request overlap the previous answer.
pub const STRANGER_STREAMS: u32 = 2;
/// Unread bytes a connection may send, all streams together, before its peer is
/// trusted: a join request is well under this, and it bounds what a stranger
/// makes the server buffer.
pub const STRANGER_RECEIVE_WINDOW: u32 = 64 * 1024;
/// Bidirectional streams a trusted member may have open: concurrent requests
/// (copies of several blobs at once, a heartbeat while a spot check runs).
pub const MEMBER_STREAMS: u32 = 32;
/// Unread bytes a trusted member may send, all streams together: enough to
/// keep a large heartbeat flowing at full speed on a school's link.
pub const MEMBER_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-stream window of every connection. Fixed for a connection's life in quinn
/// 0.11, so it is sized for members (a heartbeat listing many bundles), while
/// [`STRANGER_RECEIVE_WINDOW`] caps what a stranger's streams hold together.
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// Connection caps of one listening endpoint; defaults are the `DEFAULT_*`
/// constants of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections and handshakes at once, members and strangers together.
    pub max_connections: usize,
    /// Strangers' connections and handshakes at once.
    pub max_strangers: usize,
    /// Strangers' connections and handshakes at once from one client network.
    pub max_strangers_per_network: usize,
    /// Handshakes in progress past which unvalidated addresses must retry.
    pub retry_above_handshakes: usize,
    /// Strangers past which unvalidated addresses must retry.
    pub retry_above_strangers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_strangers: DEFAULT_MAX_STRANGERS,
            max_strangers_per_network: DEFAULT_MAX_STRANGERS_PER_NETWORK,
            retry_above_handshakes: DEFAULT_RETRY_ABOVE_HANDSHAKES,
            retry_above_strangers: DEFAULT_RETRY_ABOVE_STRANGERS,
        }
    }
}

/// The caps as a configuration file states them; each `None` is its default.
#[derive(Debug, Default, Clone, Copy)]
pub struct StatedLimits {
    /// [`Limits::max_connections`].
    pub max_connections: Option<usize>,
    /// [`Limits::max_strangers`].
    pub max_strangers: Option<usize>,
    /// [`Limits::max_strangers_per_network`].
    pub max_strangers_per_network: Option<usize>,
    /// [`Limits::retry_above_handshakes`].
    pub retry_above_handshakes: Option<usize>,
    /// [`Limits::retry_above_strangers`].
    pub retry_above_strangers: Option<usize>,
}

impl StatedLimits {
    /// The caps, checked; `key` spells a setting's name as its file does.
    pub fn check(self, key: impl Fn(&str) -> String) -> anyhow::Result<Limits> {
        let d = Limits::default();
        let limits = Limits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_strangers: self.max_strangers.unwrap_or(d.max_strangers),
            max_strangers_per_network: self
                .max_strangers_per_network
                .unwrap_or(d.max_strangers_per_network),
            retry_above_handshakes: self
                .retry_above_handshakes
                .unwrap_or(d.retry_above_handshakes),
            retry_above_strangers: self
                .retry_above_strangers
                .unwrap_or(d.retry_above_strangers),
        };
        anyhow::ensure!(
            (1..=limits.max_connections).contains(&limits.max_strangers),
            "{} must be between 1 and {}",
            key("max_strangers"),
            key("max_connections")
        );
        anyhow::ensure!(
            (1..=limits.max_strangers).contains(&limits.max_strangers_per_network),
            "{} must be between 1 and {}",
            key("max_strangers_per_network"),
            key("max_strangers")
        );
        Ok(limits)
    }
}

/// A client network: what one subscriber or one school controls. An IPv6 user
/// gets a whole /64, so counting addresses there would count nothing.
pub type Network = Cidr;

/// The network `ip` belongs to: the address itself for IPv4, its /64 for IPv6.
fn network_of(ip: IpAddr) -> Network {
    Cidr::enclosing(ip, 32, 64)
}

/// What to do with a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Take it.
    Accept,
    /// Send a retry packet: the client must prove it receives at its address.
    Retry,
    /// Refuse it: the endpoint holds all the connections or strangers it may.
    RefuseFull,
    /// Refuse it: its network holds its share of strangers.
    RefuseNetwork,
}

/// Connections counted while they live.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    handshaking: usize,
    strangers: usize,
    strangers_per_network: HashMap<Network, usize>,
}

impl Counts {
    /// The verdict for an attempt from `network`; see the module doc for the order.
    fn verdict(&self, limits: &Limits, network: Network, validated: bool) -> Verdict {
        if self.total >= limits.max_connections || self.strangers >= limits.max_strangers {
            return Verdict::RefuseFull;
        }
        let busy = self.handshaking >= limits.retry_above_handshakes
            || self.strangers >= limits.retry_above_strangers;
        if busy && !validated {
            return Verdict::Retry;
        }
        let here = self.strangers_per_network.get(&network).copied();
        if here.unwrap_or(0) >= limits.max_strangers_per_network {
            return Verdict::RefuseNetwork;
        }
        Verdict::Accept
    }

    fn add(&mut self, network: Network) {
        self.total += 1;
        self.handshaking += 1;
        self.strangers += 1;
        *self.strangers_per_network.entry(network).or_default() += 1;
    }

    fn stranger_gone(&mut self, network: Network) {
        self.strangers -= 1;
        if let Some(count) = self.strangers_per_network.get_mut(&network) {
            *count -= 1;
            if *count == 0 {
                self.strangers_per_network.remove(&network);
            }
        }
    }
}

/// The caps of one endpoint and the connections it holds, shared by its tasks.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

impl Admission {
    /// No connection yet, under `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            counts: Arc::default(),
        }
    }

    /// The caps.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Judges an attempt from `ip`; an accepted one is counted until its slot drops.
    pub fn consider(&self, ip: IpAddr, validated: bool) -> Result<Slot, Verdict> {
        let network = network_of(ip);
        let mut counts = lock(&self.counts);
        match counts.verdict(&self.limits, network, validated) {
            Verdict::Accept => {
                counts.add(network);
                Ok(Slot {
                    counts: self.counts.clone(),
                    network,
                    handshaking: AtomicBool::new(true),
                    stranger: AtomicBool::new(true),
                })
            }
            other => Err(other),
        }
    }

    /// Connections (handshakes included) counted now: in all, and strangers.
    pub fn open(&self) -> (usize, usize) {
        let counts = lock(&self.counts);
        (counts.total, counts.strangers)
    }
}

fn lock(counts: &Mutex<Counts>) -> std::sync::MutexGuard<'_, Counts> {
    counts.lock().unwrap_or_else(|e| e.into_inner())
}

/// One accepted connection, counted until dropped: as a handshake until
/// [`Slot::handshake_done`], as a stranger's until [`Slot::trust`].
#[derive(Debug)]
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    network: Network,
    handshaking: AtomicBool,
    stranger: AtomicBool,
}

impl Slot {
    /// The handshake is over: the connection stops counting as a handshake.
    pub fn handshake_done(&self) {
        if self.handshaking.swap(false, Ordering::Relaxed) {
            lock(&self.counts).handshaking -= 1;
        }
    }

    /// The peer is a member: the connection stops counting as a stranger's.
    pub fn trust(&self) {
        if self.stranger.swap(false, Ordering::Relaxed) {
            lock(&self.counts).stranger_gone(self.network);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.handshake_done();
        self.trust();
        lock(&self.counts).total -= 1;
    }
}

/// Raises `conn`'s limits from a stranger's to a member's: more streams, a
/// larger connection window. Call it once the peer's key is known to be a member.
pub fn trust(conn: &quinn::Connection) {
    conn.set_max_concurrent_bi_streams(MEMBER_STREAMS.into());
    conn.set_receive_window(MEMBER_RECEIVE_WINDOW.into());
}

/// The transport of a listening endpoint: every connection starts as a
/// stranger's (see the module doc).
pub fn stranger_transport(base: quinn::TransportConfig) -> quinn::TransportConfig {
    let mut t = base;
    t.max_concurrent_bidi_streams(STRANGER_STREAMS.into())
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .receive_window(STRANGER_RECEIVE_WINDOW.into())
        .stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 8,
            max_strangers: 6,
            max_strangers_per_network: 3,
            retry_above_handshakes: 4,
            retry_above_strangers: 5,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn take(admission: &Admission, from: &str, validated: bool) -> Slot {
        admission.consider(ip(from), validated).unwrap()
    }

    #[test]
    fn one_network_gets_its_share_of_strangers_and_others_still_get_in() {
        let admission = Admission::new(limits());
        let mut mine: Vec<Slot> = (0..3)
            .map(|_| take(&admission, "192.0.2.1", false))
            .collect();
        assert_eq!(
            admission.consider(ip("192.0.2.1"), true).unwrap_err(),
            Verdict::RefuseNetwork
        );
        assert!(admission.consider(ip("192.0.2.2"), false).is_ok());
        mine.pop();
        assert!(
            admission.consider(ip("192.0.2.1"), false).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn members_leave_their_networks_share_to_strangers() {
        let admission = Admission::new(limits());
        let members: Vec<Slot> = (0..3)
            .map(|_| take(&admission, "192.0.2.1", false))
            .collect();
        members.iter().for_each(Slot::trust);
        assert_eq!(admission.open(), (3, 0));
        assert!(
            admission.consider(ip("192.0.2.1"), false).is_ok(),
            "a school with three members behind one address can add a fourth"
        );
    }

    #[test]
    fn an_ipv6_slash_64_is_one_network_and_mapped_ipv4_is_ipv4() {
        assert_eq!(
            network_of(ip("2001:db8:1:2::1")),
            network_of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            network_of(ip("2001:db8:1:2::1")),
            network_of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            network_of(ip("::ffff:192.0.2.1")),
            network_of(ip("192.0.2.1"))
        );
    }

    #[test]
    fn many_handshakes_or_strangers_make_unvalidated_addresses_retry() {
        let admission = Admission::new(limits());
        let slots: Vec<Slot> = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
            .iter()
            .map(|a| take(&admission, a, false))
            .collect();
        assert_eq!(
            admission.consider(ip("192.0.2.9"), false).unwrap_err(),
            Verdict::Retry
        );
        let _validated = take(&admission, "192.0.2.9", true);
        slots.iter().for_each(Slot::handshake_done);
        // One handshake left, but five strangers: still busy.
        assert_eq!(
            admission.consider(ip("192.0.2.10"), false).unwrap_err(),
            Verdict::Retry
        );
        slots.iter().for_each(Slot::trust);
        assert!(admission.consider(ip("192.0.2.10"), false).is_ok());
    }

    #[test]
    fn a_full_endpoint_refuses_even_validated_addresses_until_one_closes() {
        let admission = Admission::new(limits());
        let mut slots: Vec<Slot> = (1..=6)
            .map(|i| take(&admission, &format!("192.0.2.{i}"), true))
            .collect();
        assert_eq!(
            admission.consider(ip("192.0.2.99"), true).unwrap_err(),
            Verdict::RefuseFull,
            "six strangers is the cap"
        );
        slots.iter().for_each(Slot::trust);
        slots.push(take(&admission, "192.0.2.7", true));
        slots.push(take(&admission, "192.0.2.8", true));
        assert_eq!(
            admission.consider(ip("192.0.2.99"), true).unwrap_err(),
            Verdict::RefuseFull,
            "eight connections is the cap, members included"
        );
        slots.truncate(2);
        assert_eq!(admission.open(), (2, 0));
        assert!(admission.consider(ip("192.0.2.99"), false).is_ok());
    }
}
