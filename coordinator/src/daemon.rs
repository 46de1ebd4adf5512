//! `cartable-coordinator init` and `serve`: the key, certificate and admin token;
//! then the QUIC endpoint for nodes, the HTTPS admin API and the lifecycle loop,
//! wired to the [`Coordinator`] that owns the state.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cartable_net::https::HttpsServer;
use cartable_net::identity::Identity;
use cartable_net::metrics::MetricsServer;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_net::tls::TlsFiles;
use cartable_proto::control;
use ring::rand::SecureRandom;

use crate::Coordinator;
use crate::config::CoordinatorConfig;
use crate::lifecycle;
use crate::state::{Cluster, SledKv, secret_hash};

/// The admin token's file under the data folder (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Where the running coordinator's admin API answers (`https://IP:PORT`),
/// written at each start under the data folder, for `cartable-coordinator
/// backup` to find it when the port was chosen at start (port 0).
pub const ADMIN_URL_FILE: &str = "admin-url";
/// How often the lifecycle loop runs.
const TICK: Duration = Duration::from_millis(250);

/// Makes the key, the HTTPS certificate and the admin token, unless they exist;
/// returns the admin token when one was made.
pub fn init(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let mut cluster = Cluster::load(Box::new(open_state(data_dir)?), Instant::now())?;
    init_with(data_dir, &mut cluster)
}

/// [`init`] with the state already open: the state is opened once per
/// process, since sled releases its lock only after its threads notice the
/// handle went (a second open at once fails with "could not acquire lock").
fn init_with(data_dir: &Path, cluster: &mut Cluster) -> anyhow::Result<Option<String>> {
    Identity::load_or_create(data_dir)?;
    TlsFiles::self_signed_in(data_dir).create_self_signed_if_missing()?;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        return Ok(None);
    }
    let mut secret = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let token = cartable_proto::hex::encode(&secret);
    cluster.set_admin_hash(secret_hash(token.as_bytes()))?;
    cartable_net::secret_file::create(&path, &format!("{token}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(token))
}

fn open_state(data_dir: &Path) -> anyhow::Result<SledKv> {
    let dir = data_dir.join("state");
    SledKv::open(&dir).with_context(|| format!("opening state in {}", dir.display()))
}

/// Runs the coordinator until a stop signal.
pub async fn run(config: CoordinatorConfig) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    if SledKv::is_open_elsewhere(&data_dir.join("state"))? {
        anyhow::bail!(
            "a coordinator is already running on {}: stop it first",
            data_dir.display()
        );
    }
    let state = open_state(&data_dir)?;
    // Only once the state is this run's (its lock held): a former run's
    // address is not this run's, and until this run listens `backup` finds
    // none rather than a wrong one. A second coordinator started by mistake
    // on the same folder stops above, leaving the running one's address.
    let _ = std::fs::remove_file(data_dir.join(ADMIN_URL_FILE));
    let mut cluster = Cluster::load(Box::new(state), Instant::now())?;
    if let Some(_token) = init_with(&data_dir, &mut cluster)? {
        tracing::info!(file = %data_dir.join(ADMIN_TOKEN_FILE).display(), "made an admin token");
    }
    let identity = Identity::load_or_create(&data_dir)?;
    let tls = config
        .tls
        .clone()
        .unwrap_or_else(|| TlsFiles::self_signed_in(&data_dir));
    let server = HttpsServer::bind(
        config.https,
        tls.server_config()?,
        config.connections.clone(),
    )
    .await
    .with_context(|| format!("binding HTTPS on {}", config.https))?;
    let metrics = MetricsServer::bind_configured(config.metrics).await?;
    let endpoint = PeerEndpoint::bind_for(
        config.quic,
        &identity,
        Members::anyone(),
        control::ALPN,
        config.quic_limits,
    )?;
    let https = format!("https://{}", server.local_addr()?);
    write_admin_url(&data_dir, server.local_addr()?)?;
    let quic = endpoint.local_addr()?;
    let public_url = config.public_url.clone().unwrap_or_else(|| https.clone());
    let public_quic = config.public_quic.unwrap_or(quic);
    let coord = Arc::new(Coordinator::new(
        cluster,
        config,
        identity,
        endpoint,
        public_url,
        public_quic,
    ));
    let nodes_task = tokio::spawn(crate::control::serve_nodes(coord.clone()));
    let metrics_word = MetricsServer::listening_word(metrics.as_ref())?;
    let metrics_task =
        metrics.map(|m| m.spawn(crate::metrics::registry(coord.clone(), server.load())));
    let loop_coord = coord.clone();
    let loop_task = tokio::spawn(async move {
        let mut last = lifecycle::Eligibility::default();
        let mut last_recheck = Instant::now();
        loop {
            // A re-plan and a sync take milliseconds, more on a slow disk or a
            // large cluster: on a blocking thread, not one that serves browsers.
            let ticking = loop_coord.clone();
            let step = tokio::task::spawn_blocking(move || {
                let result = ticking.tick(&mut last);
                (result, last)
            });
            last = match step.await {
                Ok((result, seen)) => {
                    if let Err(e) = result {
                        tracing::error!(error = format!("{e:#}"), "lifecycle step failed");
                    }
                    seen
                }
                Err(e) => {
                    tracing::error!(error = %e, "lifecycle step panicked");
                    lifecycle::Eligibility::default()
                }
            };
            loop_coord.start_checks(&mut last_recheck);
            tokio::time::sleep(TICK).await;
        }
    });
    // Before the listening line: a stop signal from then on is a clean stop.
    let stop = cartable_net::signal::stop_signal();
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "cartable-coordinator listening https={https} quic={quic} id={}{metrics_word}",
        coord.identity.id()
    )?;
    stdout.flush()?;
    drop(stdout);
    let handler_coord = coord.clone();
    let handler = move |req, peer| crate::http::respond(handler_coord.clone(), req, peer);
    server.serve(handler, stop).await;
    loop_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    coord.endpoint.close();
    let _ = tokio::time::timeout(NODES_CLOSE, nodes_task).await;
    // Every acknowledged change was flushed before its answer; this flush
    // makes the lifecycle's and heartbeats' last bookkeeping durable too.
    let flushing = coord.clone();
    cartable_net::signal::persist("the coordinator's state", move || flushing.lock().flush())
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// How long the node-facing QUIC side gets to close at a stop.
const NODES_CLOSE: Duration = Duration::from_secs(1);

/// Writes [`ADMIN_URL_FILE`]: the bound address, with a wildcard IP given as
/// loopback, the address a local command reaches it on.
fn write_admin_url(data_dir: &Path, bound: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut reach = bound;
    if reach.ip().is_unspecified() {
        reach.set_ip(match reach {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let path = data_dir.join(ADMIN_URL_FILE);
    cartable_net::secret_file::replace(&path, format!("https://{reach}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
