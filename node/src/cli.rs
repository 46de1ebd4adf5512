//! The `cartable-node` commands. `add`, `bundles`, `rm` and `check` go through
//! the running daemon's admin socket when there is one, and open the store
//! directly when there is not.

use cartable_proto::units::{human_bytes, utc_minute};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use cartable_proto::BundleId;
use clap::{Parser, Subcommand};

use crate::admin::{self, AdminClient, Info, Request};
use crate::config::{NodeConfig, Overrides};
use crate::peer::fetch::{FetchOptions, FetchReport, fetch_bundle};
use crate::store::{AddReport, BundleSummary, CheckReport, Store};
use cartable_net::identity::Identity;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_net::progress::Progress;

/// A Cartable node: keeps lesson bundles and serves them to browsers over HTTPS.
#[derive(Debug, Parser)]
#[command(name = "cartable-node", version)]
pub struct Cli {
    /// TOML configuration file; flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data folder [default: ./cartable-data].
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// `--log-format` and `--log-level`.
    #[command(flatten)]
    pub log: cartable_net::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a configuration file with every setting commented out at its default.
    Init {
        /// Where [default: the --config file, else ./cartable-node.toml].
        file: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Run the node: serve bundles over HTTPS until Ctrl-C or SIGTERM.
    Serve {
        /// Address to listen on [default: 127.0.0.1:8443]; port 0 picks a free port.
        #[arg(long, value_name = "ADDR")]
        https: Option<SocketAddr>,
        /// PEM certificate chain [default: a self-signed one made in DATA/tls/].
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of the certificate.
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// UDP address for peers [default: 127.0.0.1:4433]; port 0 picks a free port.
        #[arg(long, value_name = "ADDR")]
        quic: Option<SocketAddr>,
        /// A node allowed to copy from this one (repeatable).
        #[arg(long = "peer", value_name = "NODEID@ADDR")]
        peers: Vec<PeerAddr>,
        /// Serve Prometheus metrics at http://ADDR/metrics [default: metrics.listen,
        /// else none]; port 0 picks a free port. Never the HTTPS address.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
    },
    /// Add a lesson folder as a bundle; prints its id and URL.
    Add {
        /// The folder.
        dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the bundles held.
    Bundles {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a bundle and free the space only it used.
    Rm {
        /// The bundle id (64 hex characters).
        bundle: BundleId,
    },
    /// Re-verify every stored blob against its hash.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy a bundle from peers, verifying every byte.
    Fetch {
        /// The bundle id.
        bundle: BundleId,
        /// A peer holding it (repeatable).
        #[arg(long = "from", value_name = "NODEID@ADDR", required = true)]
        from: Vec<PeerAddr>,
        /// Bandwidth cap in MiB/s [default: quic.fetch_rate_mib_s, else none].
        #[arg(long, value_name = "MIB_S")]
        rate_mib_s: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the index from the data files (the daemon must be stopped).
    RebuildIndex,
    /// Print this node's id.
    Id,
    /// Record a join token from the coordinator; the next `serve` registers the node.
    Join {
        /// The token `cartable token create` printed.
        token: String,
        /// Space offered for assigned lessons: 200GB, 512GiB, or bytes.
        #[arg(long, default_value = "50GB", value_parser = cartable_proto::units::parse_size)]
        capacity: u64,
    },
    /// Print the running daemon's counters as JSON.
    Stats,
}

impl Cli {
    /// Runs the command.
    pub fn run(self) -> anyhow::Result<()> {
        if let Command::Init { file, force } = &self.command {
            let file = file.as_ref().or(self.config.as_ref());
            let file = file.map_or(Path::new("cartable-node.toml"), |f| f);
            return init(file, self.data_dir.as_deref(), *force);
        }
        let mut overrides = Overrides {
            data_dir: self.data_dir,
            ..Overrides::default()
        };
        if let Command::Serve {
            https,
            tls_cert,
            tls_key,
            quic,
            peers,
            metrics,
        } = &self.command
        {
            overrides.metrics = *metrics;
            overrides.https = *https;
            overrides.tls_cert = tls_cert.clone();
            overrides.tls_key = tls_key.clone();
            overrides.quic = *quic;
            overrides.peers = peers.clone();
        }
        let config = NodeConfig::load(self.config.as_deref(), overrides)?;
        match self.command {
            Command::Init { .. } => unreachable!("handled before the config is read"),
            Command::Serve { .. } => {
                anyhow::ensure!(
                    AdminClient::connect(&config.data_dir).is_none(),
                    "a cartable-node daemon is already running on {}: stop it first",
                    config.data_dir.display()
                );
                // Outlives the daemon's runtime: dropped here, outside any task.
                let copies = crate::background::Background::start()?;
                cartable_net::signal::block_on_daemon(crate::daemon::run(
                    config,
                    copies.handle().clone(),
                ))
            }
            Command::Add { dir, json } => add(&config, dir, json),
            Command::Bundles { json } => {
                let list: Vec<BundleSummary> = call(&config, Request::Bundles)?;
                print_bundles(&list, json)
            }
            Command::Rm { bundle } => {
                let removed: BundleSummary = call(&config, Request::Rm { bundle })?;
                cartable_net::say!("removed {}", removed.id)?;
                Ok(())
            }
            Command::Check { json } => check(&config, json),
            Command::Fetch {
                bundle,
                from,
                rate_mib_s,
                json,
            } => {
                let rate = rate_mib_s.map(|m| m << 20).or(config.quic.fetch_rate);
                fetch(&config, bundle, from, rate, json)
            }
            Command::RebuildIndex => rebuild_index(&config),
            Command::Stats => {
                let daemon = AdminClient::connect(&config.data_dir)
                    .context("no cartable-node daemon is running on this data folder")?;
                cartable_net::say!("{}", daemon.call(&Request::Stats)?)?;
                Ok(())
            }
            Command::Id => {
                cartable_net::say!("{}", Identity::load_or_create(&config.data_dir)?.id())?;
                Ok(())
            }
            Command::Join { token, capacity } => {
                let id = Identity::load_or_create(&config.data_dir)?.id();
                let token = crate::member::join(&config.data_dir, &token, capacity)?;
                // A running daemon read its membership when it started.
                let when = if AdminClient::connect(&config.data_dir).is_some() {
                    "once the daemon running on this data folder is restarted"
                } else {
                    "when `cartable-node serve` starts"
                };
                cartable_net::say!(
                    "node {id} will join coordinator {} at {} {when}",
                    token.coordinator,
                    token.quic
                )?;
                Ok(())
            }
        }
    }
}

/// Writes the commented configuration file.
fn init(file: &Path, data_dir: Option<&Path>, force: bool) -> anyhow::Result<()> {
    let template = crate::config::template();
    let written = cartable_net::config::template::write_template(file, &template, data_dir, force)?;
    cartable_net::say!(
        "{written}; edit it, then run `cartable-node --config {} serve`",
        file.display()
    )?;
    Ok(())
}

/// Sends a request to the daemon, or runs it on the store when none is running.
fn call<T: serde::de::DeserializeOwned>(
    config: &NodeConfig,
    request: Request,
) -> anyhow::Result<T> {
    let value = match AdminClient::connect(&config.data_dir) {
        Some(daemon) => daemon.call(&request)?,
        None => {
            let store = Store::open(&config.data_dir)
                .with_context(|| format!("opening store in {}", config.data_dir.display()))?;
            admin::execute(&store, None, request)?
        }
    };
    serde_json::from_value(value).context("unexpected answer")
}

fn add(config: &NodeConfig, dir: PathBuf, json: bool) -> anyhow::Result<()> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{}: cannot open folder", dir.display()))?;
    let report: AddReport = call(config, Request::Add { dir })?;
    let id = report.summary.id;
    let base = match AdminClient::connect(&config.data_dir) {
        Some(daemon) => daemon
            .call(&Request::Info)
            .ok()
            .and_then(|v| serde_json::from_value::<Info>(v).ok())
            .map(|i| i.https),
        None if config.https.listen.port() != 0 => Some(format!("https://{}", config.https.listen)),
        None => None,
    };
    let url = format!("{}/b/{id}/", base.as_deref().unwrap_or(""));
    if json {
        let mut value = serde_json::to_value(report)?;
        value["url"] = url.into();
        cartable_net::say!("{value}")?;
    } else {
        cartable_net::say!("{id}")?;
        cartable_net::say!("{url}")?;
        eprintln!(
            "added {} files, {} ({} new)",
            report.summary.files,
            human_bytes(report.summary.bytes),
            human_bytes(report.new_bytes)
        );
    }
    Ok(())
}

fn print_bundles(list: &[BundleSummary], json: bool) -> anyhow::Result<()> {
    if json {
        cartable_net::say!("{}", serde_json::to_string_pretty(list)?)?;
        return Ok(());
    }
    if list.is_empty() {
        cartable_net::say!("no bundles")?;
        return Ok(());
    }
    cartable_net::say!(
        "{:<64}  {:>7}  {:>10}  ADDED (UTC)",
        "BUNDLE",
        "FILES",
        "SIZE"
    )?;
    for b in list {
        cartable_net::say!(
            "{:<64}  {:>7}  {:>10}  {}",
            b.id,
            b.files,
            human_bytes(b.bytes),
            utc_minute(b.added_unix)
        )?;
    }
    Ok(())
}

fn check(config: &NodeConfig, json: bool) -> anyhow::Result<()> {
    let report: CheckReport = call(config, Request::Check)?;
    if json {
        cartable_net::say!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        cartable_net::say!(
            "{} bundles, {} blobs ({}) verified, {} orphans removed, {} problems",
            report.bundles_ok,
            report.blobs_ok,
            human_bytes(report.bytes_verified),
            report.orphans_removed,
            report.problems.len()
        )?;
        for p in &report.problems {
            cartable_net::say!("PROBLEM {}: {}", p.id, p.what)?;
        }
    }
    anyhow::ensure!(
        report.problems.is_empty(),
        "check found {} problems",
        report.problems.len()
    );
    Ok(())
}

fn fetch(
    config: &NodeConfig,
    bundle: BundleId,
    from: Vec<PeerAddr>,
    rate: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let report: FetchReport = match AdminClient::connect(&config.data_dir) {
        Some(daemon) => {
            serde_json::from_value(daemon.call(&Request::Fetch { bundle, from, rate })?)?
        }
        None => {
            tokio::runtime::Runtime::new()?.block_on(fetch_here(config, bundle, &from, rate))?
        }
    };
    if json {
        cartable_net::say!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        cartable_net::say!(
            "fetched {}: {} files, {} ({} received)",
            report.bundle,
            report.files,
            human_bytes(report.bytes),
            human_bytes(report.bytes_received)
        )?;
        for (peer, why) in &report.liars {
            cartable_net::say!("DROPPED {peer}: {why}")?;
        }
    }
    Ok(())
}

/// Fetches with an endpoint of our own, when no daemon owns the store.
async fn fetch_here(
    config: &NodeConfig,
    bundle: BundleId,
    from: &[PeerAddr],
    rate: Option<u64>,
) -> anyhow::Result<FetchReport> {
    let store = Arc::new(
        Store::open(&config.data_dir)
            .with_context(|| format!("opening store in {}", config.data_dir.display()))?,
    );
    let identity = Identity::load_or_create(&config.data_dir)?;
    let any: SocketAddr = if from.iter().all(|p| p.addr.is_ipv4()) {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let endpoint = PeerEndpoint::bind(any, &identity, Members::default())?;
    let progress = Arc::new(Progress::new());
    let options = FetchOptions {
        rate,
        progress: Arc::new(move |d, t| progress.update(d, t)),
        ..FetchOptions::default()
    };
    let report = fetch_bundle(&endpoint, store, bundle, from, options).await;
    endpoint.close();
    report
}

fn rebuild_index(config: &NodeConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        AdminClient::connect(&config.data_dir).is_none(),
        "a cartable-node daemon is using {}: stop it first",
        config.data_dir.display()
    );
    let store = Store::rebuild_index(&config.data_dir)?;
    cartable_net::say!("index rebuilt: {} bundles", store.bundles()?.len())?;
    Ok(())
}
