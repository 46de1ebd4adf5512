//! The `[connections]` table both daemons read: a deadline on every phase of a
//! connection, the admission caps per client network, and the shedding threshold.
//!
//! Every key, its default and what is allowed: [`TEMPLATE`], which both
//! daemons' `init` write.

use std::time::Duration;

use anyhow::Context;
use cartable_proto::cidr::Cidr;
use serde::Deserialize;

/// The `[connections]` part of both daemons' commented configuration files.
pub const TEMPLATE: &str = include_str!("../../templates/connections.toml");

/// hyper will not read request heads into a smaller buffer.
const MIN_HEADER_BYTES: usize = 8192;
/// Connections never go above this, however high the open-file limit: about
/// 256 MiB of memory for idle TLS connections on a small machine.
const CONNECTIONS_CEILING: usize = 50_000;
/// Descriptors kept back from connections for blob files, the index and peers.
const RESERVED_FILES: u64 = 256;

/// The `[connections]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnections {
    max_connections: Option<usize>,
    network_share: Option<f64>,
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
    network_rate: Option<u32>,
    network_burst: Option<u32>,
    handshake_timeout_secs: Option<u64>,
    first_bytes_timeout_secs: Option<u64>,
    header_read_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    progress_timeout_secs: Option<u64>,
    max_header_bytes: Option<usize>,
    max_cookie_bytes: Option<usize>,
    max_streams: Option<u32>,
    max_pending: Option<usize>,
    max_in_flight: Option<usize>,
    retry_after_secs: Option<u64>,
    #[serde(default)]
    networks: Vec<FileNetwork>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNetwork {
    cidr: String,
    share: Option<f64>,
    #[serde(default)]
    exempt: bool,
}

/// The checked connection limits.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Share of `max_connections` one client network may hold.
    pub network_share: f64,
    /// Bits of an IPv4 address that make its client network.
    pub ipv4_prefix: u8,
    /// Bits of an IPv6 address that make its client network.
    pub ipv6_prefix: u8,
    /// New connections plus requests per second per client network.
    pub network_rate: u32,
    /// What a client network may spend at once.
    pub network_burst: u32,
    /// Deadlines of each phase.
    pub deadlines: Deadlines,
    /// Largest request head, cookies aside.
    pub max_header_bytes: usize,
    /// Cookies a request may carry on top of its head (and that are ignored).
    pub max_cookie_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
    /// Requests waiting for their answer beyond which new ones are shed.
    pub max_pending: usize,
    /// Requests in flight until their response ends, in total.
    pub max_in_flight: usize,
    /// What shed clients are told to wait.
    pub retry_after: Duration,
    /// Networks with a share of their own, or exempt.
    pub networks: Vec<NetworkRule>,
}

/// The deadline of each phase of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// TLS handshake.
    pub handshake: Duration,
    /// From the handshake to the first request's head.
    pub first_bytes: Duration,
    /// A request head, once its first bytes arrived (HTTP/1.1).
    pub header_read: Duration,
    /// No request in flight.
    pub idle: Duration,
    /// A response, or an upload, that moves no byte.
    pub progress: Duration,
}

/// An operator's rule for one network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkRule {
    /// The network.
    pub cidr: Cidr,
    /// Its share of the connections; `None`: exempt from per-network caps.
    pub share: Option<f64>,
}

impl ConnectionLimits {
    /// Every duration the table sets: what a check of a config (its fuzz
    /// target) holds against the clock.
    pub fn timings(&self) -> [Duration; 6] {
        let d = &self.deadlines;
        [
            d.handshake,
            d.first_bytes,
            d.header_read,
            d.idle,
            d.progress,
            self.retry_after,
        ]
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        FileConnections::default()
            .check()
            .expect("the defaults are valid")
    }
}

impl FileConnections {
    /// Checks every value and fills in the defaults.
    pub fn check(&self) -> anyhow::Result<ConnectionLimits> {
        let max_header_bytes = self.max_header_bytes.unwrap_or(16 * 1024);
        anyhow::ensure!(
            max_header_bytes >= MIN_HEADER_BYTES,
            "connections.max_header_bytes must be at least {MIN_HEADER_BYTES}"
        );
        // Raised whether or not the cap is configured: every connection and
        // every file read takes a descriptor.
        let files = raise_open_file_limit();
        let max_connections = self
            .max_connections
            .unwrap_or_else(|| connections_for(files));
        anyhow::ensure!(
            max_connections > 0,
            "connections.max_connections must be positive"
        );
        let network_share = share("connections.network_share", self.network_share, 0.1)?;
        let ipv4_prefix = self.ipv4_prefix.unwrap_or(24);
        let ipv6_prefix = self.ipv6_prefix.unwrap_or(56);
        anyhow::ensure!(
            ipv4_prefix <= 32 && ipv6_prefix <= 128,
            "connections.ipv4_prefix is at most 32, ipv6_prefix at most 128"
        );
        let network_rate = self.network_rate.unwrap_or(1000);
        let network_burst = self.network_burst.unwrap_or(10_000);
        anyhow::ensure!(
            network_rate > 0 && network_burst > 0,
            "connections.network_rate and network_burst must be positive"
        );
        let networks = self
            .networks
            .iter()
            .map(FileNetwork::check)
            .collect::<anyhow::Result<_>>()?;
        Ok(ConnectionLimits {
            max_connections,
            network_share,
            ipv4_prefix,
            ipv6_prefix,
            network_rate,
            network_burst,
            deadlines: Deadlines {
                handshake: secs("handshake_timeout_secs", self.handshake_timeout_secs, 10)?,
                first_bytes: secs(
                    "first_bytes_timeout_secs",
                    self.first_bytes_timeout_secs,
                    10,
                )?,
                header_read: secs(
                    "header_read_timeout_secs",
                    self.header_read_timeout_secs,
                    10,
                )?,
                idle: secs("idle_timeout_secs", self.idle_timeout_secs, 30)?,
                progress: secs("progress_timeout_secs", self.progress_timeout_secs, 30)?,
            },
            max_header_bytes,
            max_cookie_bytes: self.max_cookie_bytes.unwrap_or(32 * 1024),
            max_streams: self.max_streams.unwrap_or(100).max(1),
            max_pending: self.max_pending.unwrap_or(512).max(1),
            max_in_flight: self.max_in_flight.unwrap_or(2048).max(1),
            retry_after: secs("retry_after_secs", self.retry_after_secs, 2)?,
            networks,
        })
    }
}

impl FileNetwork {
    fn check(&self) -> anyhow::Result<NetworkRule> {
        let cidr: Cidr = self.cidr.parse().context("connections.networks: cidr")?;
        let share = match (self.exempt, self.share) {
            (true, None) => None,
            (false, Some(s)) => Some(share("connections.networks: share", Some(s), s)?),
            _ => anyhow::bail!("connections.networks {cidr}: give either share or exempt = true"),
        };
        Ok(NetworkRule { cidr, share })
    }
}

/// Raises the soft open-file limit to the hard one, and gives the limit then
/// in force: every connection takes a descriptor, and running out of them must
/// never happen.
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    open_file_limit().unwrap_or(u64::MAX)
}

/// The soft open-file limit in force; `None` when unlimited.
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Connections a process with `files` descriptors can hold and still open its
/// blob files: three quarters of them, at least some, at most the ceiling.
fn connections_for(files: u64) -> usize {
    let usable = files.saturating_sub(RESERVED_FILES) / 4 * 3;
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .clamp(64, CONNECTIONS_CEILING)
}

fn share(name: &str, value: Option<f64>, default: f64) -> anyhow::Result<f64> {
    let v = value.unwrap_or(default);
    anyhow::ensure!(v > 0.0 && v <= 1.0, "{name} must be above 0 and at most 1");
    Ok(v)
}

/// A deadline in seconds: positive, and at most a day (a longer one is a typo,
/// and near `u64::MAX` it would overflow the clock it is added to).
fn secs(name: &str, value: Option<u64>, default: u64) -> anyhow::Result<Duration> {
    const DAY: u64 = 86_400;
    let v = value.unwrap_or(default);
    anyhow::ensure!(v > 0, "connections.{name} must be positive");
    anyhow::ensure!(v <= DAY, "connections.{name} must be at most {DAY} (a day)");
    Ok(Duration::from_secs(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<ConnectionLimits> {
        toml::from_str::<FileConnections>(text)?.check()
    }

    #[test]
    fn the_connection_cap_follows_the_open_file_limit() {
        assert_eq!(connections_for(1024), 576);
        assert_eq!(connections_for(20_000), 14_808);
        assert_eq!(connections_for(1 << 20), CONNECTIONS_CEILING);
        assert_eq!(connections_for(100), 64, "never below a usable floor");
        let defaults = ConnectionLimits::default();
        assert!(defaults.max_connections >= 64);
        assert_eq!(defaults.deadlines.idle, Duration::from_secs(30));
    }

    #[test]
    fn a_school_nat_fits_under_the_defaults_when_files_allow() {
        let limits = parse("max_connections = 14000").unwrap();
        assert!(limits.max_in_flight as f64 * limits.network_share >= 200.0);
        let per_network = limits.max_connections as f64 * limits.network_share;
        assert!(per_network >= 1000.0, "{per_network}");
    }

    #[test]
    fn operators_give_networks_shares_or_exempt_them() -> anyhow::Result<()> {
        let limits = parse(
            "[[networks]]\ncidr = \"10.20.0.0/16\"\nshare = 0.5\n\
             [[networks]]\ncidr = \"192.0.2.0/24\"\nexempt = true\n",
        )?;
        assert_eq!(limits.networks[0].share, Some(0.5));
        assert_eq!(limits.networks[1].share, None);
        Ok(())
    }

    #[test]
    fn bad_limits_say_what_is_wrong() {
        for (text, says) in [
            ("max_header_bytes = 10", "at least 8192"),
            ("network_share = 1.5", "at most 1"),
            (
                "idle_timeout_secs = 0",
                "idle_timeout_secs must be positive",
            ),
            (
                "progress_timeout_secs = 18446744073709551615",
                "progress_timeout_secs must be at most 86400",
            ),
            ("ipv4_prefix = 40", "at most 32"),
            ("max_conections = 3", "unknown field"),
            (
                "[[networks]]\ncidr = \"10.0.0.0/8\"",
                "either share or exempt",
            ),
            ("[[networks]]\ncidr = \"10.0.0.0\"\nexempt = true", "cidr"),
        ] {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
