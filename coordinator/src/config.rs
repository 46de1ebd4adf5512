//! The coordinator's configuration: a TOML file (`--config`), overridden by flags,
//! with defaults that suit a first run on loopback. Unknown keys are refused.
//!
//! Every key, its default and what is allowed: [`template`], the commented
//! file `cartable-coordinator init` writes, also shown in `docs/config.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cartable_net::https::limits::{ConnectionLimits, FileConnections};
use cartable_net::metrics::FileMetrics;
use cartable_net::peer::admission::{Limits, StatedLimits};
use cartable_net::tls::TlsFiles;
use cartable_proto::cidr::Cidr;

use crate::probe::RouteTimes;
use serde::Deserialize;

/// The coordinator's own settings in the file `init` writes (see [`template`]).
const TEMPLATE: &str = include_str!("../cartable-coordinator.toml");

/// The commented configuration file `cartable-coordinator init` writes: every
/// setting, its default and what it may be.
pub fn template() -> String {
    [
        TEMPLATE,
        cartable_net::metrics::TEMPLATE,
        cartable_net::https::limits::TEMPLATE,
    ]
    .concat()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    https: Option<SocketAddr>,
    quic: Option<SocketAddr>,
    public_url: Option<String>,
    public_quic: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    heartbeat_ms: Option<u64>,
    down_after_ms: Option<u64>,
    repair_delay_secs: Option<u64>,
    default_replicas: Option<u8>,
    min_replicas: Option<u8>,
    copies_per_node: Option<usize>,
    route_fresh_ms: Option<u64>,
    route_check_timeout_ms: Option<u64>,
    quic_max_connections: Option<usize>,
    quic_max_strangers: Option<usize>,
    quic_max_strangers_per_network: Option<usize>,
    quic_retry_above_handshakes: Option<usize>,
    quic_retry_above_strangers: Option<usize>,
    #[serde(default)]
    regions: Vec<FileRegion>,
    #[serde(default)]
    metrics: FileMetrics,
    #[serde(default)]
    connections: FileConnections,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRegion {
    cidr: String,
    region: String,
}

/// Settings given on the command line; each overrides the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--https`
    pub https: Option<SocketAddr>,
    /// `--quic`
    pub quic: Option<SocketAddr>,
    /// `--metrics`
    pub metrics: Option<SocketAddr>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The data folder.
    pub data_dir: PathBuf,
    /// HTTPS listening address.
    pub https: SocketAddr,
    /// QUIC listening address.
    pub quic: SocketAddr,
    /// Where browsers and the CLI reach HTTPS; `None`: the bound address.
    pub public_url: Option<String>,
    /// Where nodes reach QUIC; `None`: the bound address.
    pub public_quic: Option<SocketAddr>,
    /// Configured certificate; `None`: self-signed in the data folder.
    pub tls: Option<TlsFiles>,
    /// The replica policy and timings.
    pub policy: Policy,
    /// How fresh a node must be to be sent browsers unchecked.
    pub routing: RouteTimes,
    /// Client networks and their regions.
    pub regions: Vec<RegionNet>,
    /// Caps and deadlines of HTTPS connections.
    pub connections: ConnectionLimits,
    /// Connection caps of the QUIC endpoint.
    pub quic_limits: Limits,
    /// Where `/metrics` is served (plain HTTP); `None`: nowhere.
    pub metrics: Option<SocketAddr>,
}

/// How replicas are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Interval of node heartbeats.
    pub heartbeat: Duration,
    /// Silence after which a node is down.
    pub down_after: Duration,
    /// Delay before a down node's copies are re-placed.
    pub repair_delay: Duration,
    /// Copies per bundle unless told otherwise.
    pub default_replicas: u8,
    /// Fewer complete copies than this: repaired at once.
    pub min_replicas: u8,
    /// Copies one node makes at once.
    pub copies_per_node: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            down_after: Duration::from_secs(30),
            repair_delay: Duration::from_secs(600),
            default_replicas: 3,
            min_replicas: 2,
            copies_per_node: 4,
        }
    }
}

/// A client network and its region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionNet {
    network: Cidr,
    /// The region.
    pub region: String,
}

impl RegionNet {
    /// Parses `a.b.c.d/n` or an IPv6 CIDR.
    pub fn parse(cidr: &str, region: &str) -> anyhow::Result<Self> {
        Ok(Self {
            network: cidr.parse()?,
            region: region.to_owned(),
        })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.network.contains(ip)
    }
}

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// A timing setting, `default` when absent; a value outside `range` is refused
/// by its name (past a day, a deadline is a typo, and near `u64::MAX` it would
/// overflow the clock it is added to).
fn timing(
    name: &str,
    value: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<u64> {
    let v = value.unwrap_or(default);
    anyhow::ensure!(
        range.contains(&v),
        "{name} must be between {} and {}",
        range.start(),
        range.end()
    );
    Ok(v)
}

/// The QUIC caps from the file, defaults where absent.
fn quic_limits(file: &FileConfig) -> anyhow::Result<Limits> {
    StatedLimits {
        max_connections: file.quic_max_connections,
        max_strangers: file.quic_max_strangers,
        max_strangers_per_network: file.quic_max_strangers_per_network,
        retry_above_handshakes: file.quic_retry_above_handshakes,
        retry_above_strangers: file.quic_retry_above_strangers,
    }
    .check(|key| format!("quic_{key}"))
}

impl CoordinatorConfig {
    /// Reads the file at `path` (if given) and applies the overrides.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> anyhow::Result<Self> {
        cartable_net::config::load(path, |file| Self::resolve(file, overrides))
    }

    /// The configuration a file's text gives, without flags: a pure function
    /// of the text (no file is read), so that it can be fuzzed.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        cartable_net::config::check_text(text, |file| Self::resolve(file, Overrides::default()))
    }

    fn resolve(file: FileConfig, o: Overrides) -> anyhow::Result<Self> {
        let d = Policy::default();
        let ms = |name, v, default: Duration, max| -> anyhow::Result<Duration> {
            let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
            Ok(Duration::from_millis(timing(name, v, default, 1..=max)?))
        };
        let policy = Policy {
            heartbeat: ms("heartbeat_ms", file.heartbeat_ms, d.heartbeat, HOUR_MS)?,
            down_after: ms("down_after_ms", file.down_after_ms, d.down_after, DAY_MS)?,
            repair_delay: Duration::from_secs(timing(
                "repair_delay_secs",
                file.repair_delay_secs,
                d.repair_delay.as_secs(),
                0..=30 * DAY_MS / 1000,
            )?),
            default_replicas: file.default_replicas.unwrap_or(d.default_replicas),
            min_replicas: file.min_replicas.unwrap_or(d.min_replicas),
            copies_per_node: file.copies_per_node.unwrap_or(d.copies_per_node),
        };
        anyhow::ensure!(
            policy.down_after > policy.heartbeat,
            "down_after_ms must be longer than heartbeat_ms"
        );
        anyhow::ensure!(
            policy.default_replicas >= 1,
            "default_replicas must be at least 1"
        );
        anyhow::ensure!(policy.min_replicas >= 1, "min_replicas must be at least 1");
        anyhow::ensure!(
            policy.copies_per_node >= 1,
            "copies_per_node must be at least 1"
        );
        let d_route = RouteTimes::default();
        let routing = RouteTimes {
            fresh: ms(
                "route_fresh_ms",
                file.route_fresh_ms,
                d_route.fresh,
                HOUR_MS,
            )?,
            probe_timeout: ms(
                "route_check_timeout_ms",
                file.route_check_timeout_ms,
                d_route.probe_timeout,
                HOUR_MS,
            )?,
        };
        let quic_limits = quic_limits(&file)?;
        let tls = TlsFiles::configured(file.tls_cert, file.tls_key)?;
        let public_url = cartable_net::config::public_url("public_url", file.public_url)?;
        let https = o
            .https
            .or(file.https)
            .unwrap_or_else(|| "127.0.0.1:7443".parse().expect("valid default"));
        let regions = file
            .regions
            .iter()
            .map(|r| RegionNet::parse(&r.cidr, &r.region).context("regions"))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            data_dir: o
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "./cartable-coordinator-data".into()),
            metrics: file.metrics.check(o.metrics, https)?,
            https,
            quic: o
                .quic
                .or(file.quic)
                .unwrap_or_else(|| "127.0.0.1:7444".parse().expect("valid default")),
            public_url,
            public_quic: file.public_quic,
            tls,
            policy,
            routing,
            regions,
            connections: file.connections.check()?,
            quic_limits,
        })
    }

    /// The region of a client address, from the CIDR table (first match).
    pub fn region_of(&self, ip: IpAddr) -> Option<&str> {
        self.regions
            .iter()
            .find(|r| r.contains(ip))
            .map(|r| r.region.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartable_net::config::check_text;
    use cartable_net::config::fields::{check_reference, check_template};

    fn parse(text: &str) -> anyhow::Result<CoordinatorConfig> {
        check_text(text, |file| {
            CoordinatorConfig::resolve(file, Overrides::default())
        })
    }

    #[test]
    fn init_writes_every_setting_at_its_default_as_the_docs_show() -> anyhow::Result<()> {
        check_template::<FileConfig>(&template(), |text| Ok(format!("{:?}", parse(text)?)))?;
        check_reference("coordinator", TEMPLATE)
    }

    #[test]
    fn defaults_suit_a_first_run() -> anyhow::Result<()> {
        let c = parse("")?;
        assert_eq!(c.https.to_string(), "127.0.0.1:7443");
        assert_eq!(c.policy, Policy::default());
        assert_eq!(c.quic_limits, Limits::default());
        assert_eq!(c.metrics, None, "no metrics unless asked");
        assert_eq!(
            parse("[metrics]\nlisten = \"127.0.0.1:0\"")?.metrics,
            Some("127.0.0.1:0".parse()?)
        );
        Ok(())
    }

    #[test]
    fn client_networks_map_to_regions() -> anyhow::Result<()> {
        let c = parse(
            "[[regions]]\ncidr = \"10.12.0.0/16\"\nregion = \"est\"\n\
             [[regions]]\ncidr = \"fd00::/8\"\nregion = \"v6\"\n\
             [[regions]]\ncidr = \"0.0.0.0/0\"\nregion = \"rest\"",
        )?;
        assert_eq!(c.region_of("10.12.200.1".parse()?), Some("est"));
        assert_eq!(c.region_of("::ffff:10.12.0.9".parse()?), Some("est"));
        assert_eq!(c.region_of("10.13.0.1".parse()?), Some("rest"));
        assert_eq!(c.region_of("fd12::1".parse()?), Some("v6"));
        assert_eq!(c.region_of("2001:db8::1".parse()?), None);
        Ok(())
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        for (text, says) in [
            ("heartbeat_ms = 0", "between 1 and 3600000"),
            (
                "repair_delay_secs = 18446744073709551615",
                "between 0 and 2592000",
            ),
            ("heartbeat_ms = 5000\ndown_after_ms = 100", "longer than"),
            ("min_replicas = 0", "at least 1"),
            ("quic_max_strangers_per_network = 0", "between 1 and"),
            (
                "quic_max_connections = 10\nquic_max_strangers = 11",
                "between 1 and quic_max_connections",
            ),
            (
                "[[regions]]\ncidr = \"10.0.0.0/33\"\nregion = \"x\"",
                "at most 32 for IPv4",
            ),
            (
                "[[regions]]\ncidr = \"10.0.0.0\"\nregion = \"x\"",
                "ADDRESS/PREFIX",
            ),
            ("heartbeat = 1", "unknown field"),
            ("tls_cert = \"/c.pem\"", "go together"),
            ("public_url = \"http://x\"", "https://"),
            ("[metrics]\nlisten = \"9464\"", "line 2: metrics.listen"),
            (
                "https = \"127.0.0.1:7443\"\n[metrics]\nlisten = \"127.0.0.1:7443\"",
                "must differ from the HTTPS address",
            ),
        ] {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
