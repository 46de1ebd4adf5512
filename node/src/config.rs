//! The node's configuration: a TOML file (`--config`), overridden by flags, with
//! defaults that suit a first run on loopback. Unknown keys are refused, and
//! values are checked when loaded, not when first used.
//!
//! Every key, its default and what is allowed: [`template`], the commented
//! file `cartable-node init` writes, also shown in `docs/config.md`.
//!
//!
//! When the node is a member of a coordinator, `https.public_url` (default:
//! `https://` and the listening address) is where browsers are sent, and
//! `quic.public_addr` (default: the listening address) where peers dial it:
//! set both when the node listens on `0.0.0.0` or behind a NAT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::serve::{DEFAULT_DISK_MARGIN, FileLessons, LessonPolicy};
use crate::store::{HOT_BYTES_MAX, ScrubSettings};
use cartable_net::config::public_url;
use cartable_net::https::limits::{ConnectionLimits, FileConnections};
use cartable_net::metrics::FileMetrics;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::admission::{Limits, StatedLimits};
use cartable_net::tls::TlsFiles;

/// The node's own settings in the file `init` writes (see [`template`]).
const TEMPLATE: &str = include_str!("../cartable-node.toml");

/// The commented configuration file `cartable-node init` writes: every
/// setting, its default and what it may be.
pub fn template() -> String {
    [
        TEMPLATE,
        cartable_net::metrics::TEMPLATE,
        cartable_net::https::limits::TEMPLATE,
    ]
    .concat()
}

const DEFAULT_DATA_DIR: &str = "./cartable-data";
const DEFAULT_HTTPS: &str = "127.0.0.1:8443";
const DEFAULT_QUIC: &str = "127.0.0.1:4433";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    https: FileHttps,
    #[serde(default)]
    quic: FileQuic,
    #[serde(default)]
    scrub: FileScrub,
    #[serde(default)]
    connections: FileConnections,
    #[serde(default)]
    uploads: FileUploads,
    #[serde(default)]
    lessons: FileLessons,
    #[serde(default)]
    metrics: FileMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUploads {
    keep_free_mib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScrub {
    mib_per_s: Option<u64>,
    interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuic {
    listen: Option<SocketAddr>,
    public_addr: Option<SocketAddr>,
    #[serde(default)]
    peers: Vec<String>,
    fetch_rate_mib_s: Option<u64>,
    cache_max_mib: Option<u64>,
    max_connections: Option<usize>,
    max_strangers: Option<usize>,
    max_strangers_per_network: Option<usize>,
    retry_above_handshakes: Option<usize>,
    retry_above_strangers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttps {
    listen: Option<SocketAddr>,
    public_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    memory_mib: Option<u64>,
}

/// Settings given on the command line; each overrides the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--https`
    pub https: Option<SocketAddr>,
    /// `--tls-cert`
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`
    pub tls_key: Option<PathBuf>,
    /// `--quic`
    pub quic: Option<SocketAddr>,
    /// `--peer`, added to the file's peers
    pub peers: Vec<PeerAddr>,
    /// `--metrics`
    pub metrics: Option<SocketAddr>,
}

/// The checked configuration of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The data folder.
    pub data_dir: PathBuf,
    /// The HTTPS server.
    pub https: HttpsConfig,
    /// The QUIC endpoint for peers.
    pub quic: QuicConfig,
    /// The background scrub.
    pub scrub: ScrubSettings,
    /// Caps and deadlines of browser connections.
    pub connections: ConnectionLimits,
    /// Bytes of the data folder's filesystem that uploads leave free.
    pub uploads_keep_free: u64,
    /// The sandbox lesson documents run in.
    pub lessons: LessonPolicy,
    /// Where `/metrics` is served (plain HTTP); `None`: nowhere.
    pub metrics: Option<SocketAddr>,
}

/// The checked QUIC settings.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// Listening address (UDP).
    pub listen: SocketAddr,
    /// The address peers dial, as the coordinator tells them; `None`: the bound one.
    pub public_addr: Option<SocketAddr>,
    /// Nodes allowed to connect.
    pub peers: Vec<PeerAddr>,
    /// Bandwidth cap of background copies, bytes per second.
    pub fetch_rate: Option<u64>,
    /// Space for the fetch-through cache, bytes.
    pub cache_max_bytes: u64,
    /// Connection caps of the QUIC endpoint.
    pub limits: Limits,
}

/// The checked HTTPS settings.
#[derive(Debug, Clone)]
pub struct HttpsConfig {
    /// Listening address.
    pub listen: SocketAddr,
    /// The URL browsers are sent to; `None`: `https://` and the bound address.
    pub public_url: Option<String>,
    /// Configured certificate; `None` means self-signed in the data folder.
    pub tls: Option<TlsFiles>,
    /// Bytes of memory for verified bytes of files read lately.
    pub memory: usize,
}

impl NodeConfig {
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
        let h = file.https;
        let tls = TlsFiles::configured(o.tls_cert.or(h.tls_cert), o.tls_key.or(h.tls_key))?;
        let mut peers = file
            .quic
            .peers
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|e| anyhow::anyhow!("quic.peers: {p:?}: {e}"))
            })
            .collect::<anyhow::Result<Vec<PeerAddr>>>()?;
        peers.extend(o.peers);
        let public_url = public_url("https.public_url", h.public_url)?;
        let memory_mib = h.memory_mib.unwrap_or(HOT_BYTES_MAX as u64 >> 20);
        let memory = usize::try_from(mib("https.memory_mib", memory_mib)?)
            .context("https.memory_mib is too large")?;
        let defaults = ScrubSettings::default();
        let scrub = ScrubSettings {
            mib_per_s: file.scrub.mib_per_s.unwrap_or(defaults.mib_per_s),
            interval: file
                .scrub
                .interval_secs
                .map_or(defaults.interval, Duration::from_secs),
        };
        // Past a year the next pass never comes, and near `u64::MAX` the
        // interval would overflow the clock it is added to.
        anyhow::ensure!(
            scrub.interval <= Duration::from_secs(MAX_SCRUB_INTERVAL_SECS),
            "scrub.interval_secs must be at most {MAX_SCRUB_INTERVAL_SECS} (a year)"
        );
        let keep_free_mib = file
            .uploads
            .keep_free_mib
            .unwrap_or(DEFAULT_DISK_MARGIN >> 20);
        let uploads_keep_free = mib("uploads.keep_free_mib", keep_free_mib)?;
        let https_listen = o
            .https
            .or(h.listen)
            .unwrap_or_else(|| DEFAULT_HTTPS.parse().expect("valid default"));
        Ok(Self {
            data_dir: o
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            metrics: file.metrics.check(o.metrics, https_listen)?,
            https: HttpsConfig {
                listen: https_listen,
                public_url,
                tls,
                memory,
            },
            quic: QuicConfig {
                listen: o
                    .quic
                    .or(file.quic.listen)
                    .unwrap_or_else(|| DEFAULT_QUIC.parse().expect("valid default")),
                public_addr: file.quic.public_addr,
                peers,
                fetch_rate: file
                    .quic
                    .fetch_rate_mib_s
                    .map(|m| mib("quic.fetch_rate_mib_s", m))
                    .transpose()?,
                cache_max_bytes: mib(
                    "quic.cache_max_mib",
                    file.quic.cache_max_mib.unwrap_or(10_240),
                )?,
                limits: StatedLimits {
                    max_connections: file.quic.max_connections,
                    max_strangers: file.quic.max_strangers,
                    max_strangers_per_network: file.quic.max_strangers_per_network,
                    retry_above_handshakes: file.quic.retry_above_handshakes,
                    retry_above_strangers: file.quic.retry_above_strangers,
                }
                .check(|key| format!("quic.{key}"))?,
            },
            scrub,
            connections: file.connections.check()?,
            uploads_keep_free,
            lessons: file.lessons.check()?,
        })
    }

    /// The certificate to serve with: the configured one, or the self-signed one.
    pub fn tls_files(&self) -> TlsFiles {
        self.https
            .tls
            .clone()
            .unwrap_or_else(|| TlsFiles::self_signed_in(&self.data_dir))
    }
}

const MAX_SCRUB_INTERVAL_SECS: u64 = 365 * 86_400;

/// `value` MiB in bytes; a value past `u64` is refused by the name of its
/// setting, rather than wrapped to a small one.
fn mib(setting: &str, value: u64) -> anyhow::Result<u64> {
    value
        .checked_mul(1 << 20)
        .with_context(|| format!("{setting} is too large: {value} MiB"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartable_net::config::fields::{check_reference, check_template};

    #[test]
    fn init_writes_every_setting_at_its_default_as_the_docs_show() -> anyhow::Result<()> {
        check_template::<FileConfig>(&template(), |text| {
            Ok(format!("{:?}", NodeConfig::from_toml(text)?))
        })?;
        check_reference("node", TEMPLATE)
    }

    #[test]
    fn defaults_suit_a_first_run() -> anyhow::Result<()> {
        let c = NodeConfig::from_toml("")?;
        assert_eq!(c.data_dir, PathBuf::from("./cartable-data"));
        assert_eq!(c.https.listen.to_string(), "127.0.0.1:8443");
        assert!(c.https.tls.is_none());
        assert_eq!(c.uploads_keep_free, 256 << 20);
        assert_eq!(
            NodeConfig::from_toml("[uploads]\nkeep_free_mib = 1")?.uploads_keep_free,
            1 << 20
        );
        assert_eq!(c.https.memory, 256 << 20);
        let none = NodeConfig::from_toml("[https]\nmemory_mib = 0")?;
        assert_eq!(none.https.memory, 0);
        let err = NodeConfig::from_toml("[https]\nmemory_mib = 17592186044416").unwrap_err();
        assert!(format!("{err:#}").contains("https.memory_mib"), "{err:#}");
        Ok(())
    }

    #[test]
    fn flags_override_the_file() -> anyhow::Result<()> {
        let file = toml::from_str("data_dir = \"/a\"\n[https]\nlisten = \"127.0.0.1:1\"")?;
        let c = NodeConfig::resolve(
            file,
            Overrides {
                data_dir: Some("/b".into()),
                https: Some("127.0.0.1:2".parse()?),
                ..Overrides::default()
            },
        )?;
        assert_eq!(c.data_dir, PathBuf::from("/b"));
        assert_eq!(c.https.listen.port(), 2);
        Ok(())
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let unknown = NodeConfig::from_toml("[https]\nlisen = \"127.0.0.1:1\"").unwrap_err();
        assert!(
            format!("{unknown:#}").contains("unknown field `lisen`"),
            "{unknown:#}"
        );
        let half = NodeConfig::from_toml("[https]\ntls_cert = \"/c.pem\"").unwrap_err();
        assert!(half.to_string().contains("go together"));
        let small = NodeConfig::from_toml("[connections]\nmax_header_bytes = 10").unwrap_err();
        assert!(small.to_string().contains("at least 8192"));
        assert!(NodeConfig::from_toml("[https]\nlisten = \"nowhere\"").is_err());
        let peer = NodeConfig::from_toml("[quic]\npeers = [\"abc@127.0.0.1:1\"]").unwrap_err();
        assert!(peer.to_string().contains("node id"), "{peer}");
        let huge =
            NodeConfig::from_toml("[uploads]\nkeep_free_mib = 18446744073709551615").unwrap_err();
        assert!(huge.to_string().contains("keep_free_mib"), "{huge}");
        let shared =
            NodeConfig::from_toml("[lessons]\nsandbox = [\"allow-same-origin\"]").unwrap_err();
        assert!(shared.to_string().contains("allow-same-origin"), "{shared}");
        let never =
            NodeConfig::from_toml("[scrub]\ninterval_secs = 18446744073709551615").unwrap_err();
        assert!(never.to_string().contains("at most 31536000"), "{never}");
        let quic =
            NodeConfig::from_toml("[quic]\nmax_strangers = 5\nmax_strangers_per_network = 6")
                .unwrap_err();
        assert!(
            quic.to_string().contains(
                "quic.max_strangers_per_network must be between 1 and quic.max_strangers"
            ),
            "{quic}"
        );
    }

    #[test]
    fn metrics_listen_where_told_and_a_bad_address_names_the_field() -> anyhow::Result<()> {
        assert_eq!(NodeConfig::from_toml("")?.metrics, None);
        let on = NodeConfig::from_toml("[metrics]\nlisten = \"127.0.0.1:0\"")?;
        assert_eq!(on.metrics, Some("127.0.0.1:0".parse()?));
        let bad = NodeConfig::from_toml("\n[metrics]\nlisten = \"everywhere\"").unwrap_err();
        let said = format!("{bad:#}");
        assert!(said.starts_with("line 3: metrics.listen"), "{said}");
        assert!(said.contains("expected IP:PORT"), "{said}");
        let browsers = NodeConfig::from_toml(
            "[https]\nlisten = \"127.0.0.1:8443\"\n[metrics]\nlisten = \"127.0.0.1:8443\"",
        )
        .unwrap_err();
        assert!(
            format!("{browsers:#}").contains("metrics.listen"),
            "{browsers:#}"
        );
        Ok(())
    }

    #[test]
    fn mib_settings_past_u64_are_refused_not_wrapped() {
        // 2^44 MiB is 2^64 bytes: `<< 20` made it 0 (no cache, no rate).
        for setting in ["cache_max_mib", "fetch_rate_mib_s"] {
            let text = format!("[quic]\n{setting} = 17592186044416");
            let huge = NodeConfig::from_toml(&text).unwrap_err();
            assert!(huge.to_string().contains(setting), "{huge}");
        }
        let near = NodeConfig::from_toml("[quic]\ncache_max_mib = 17592186044415").unwrap();
        assert_eq!(near.quic.cache_max_bytes, u64::MAX - (1 << 20) + 1);
    }
}
