//! `cartable-coordinator init` and `serve`: the key, certificate and admin token;
//! then the QUIC endpoint for nodes, the HTTPS admin API and the lifecycle loop.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use cartable_node::https::HttpsServer;
use cartable_node::identity::Identity;
use cartable_node::peer::PeerAddr;
use cartable_node::peer::auth::Members;
use cartable_node::peer::endpoint::PeerEndpoint;
use cartable_node::tls::TlsFiles;
use cartable_proto::{BundleId, NodeId, control};
use ring::rand::SecureRandom;

use crate::config::{CoordinatorConfig, Policy};
use crate::probe::Prober;
use crate::state::{Cluster, SledKv, secret_hash};
use crate::{lifecycle, spotcheck};

/// The admin token's file under the data folder (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// How often the lifecycle loop runs.
const TICK: Duration = Duration::from_millis(250);

/// Everything the coordinator's tasks share.
#[derive(Debug)]
pub struct Coordinator {
    cluster: Mutex<Cluster>,
    /// The replica policy.
    pub policy: Policy,
    /// The configuration.
    pub config: CoordinatorConfig,
    /// The coordinator's key (signs upload grants).
    pub identity: Identity,
    /// QUIC: nodes dial it; it dials nodes for spot checks.
    pub endpoint: PeerEndpoint,
    /// Its HTTPS base URL.
    pub https_url: String,
    /// Its QUIC address, as join tokens carry it.
    pub quic_addr: std::net::SocketAddr,
    /// Checks that nodes browsers are sent to still answer.
    pub prober: Arc<Prober>,
    checking: Mutex<HashSet<(BundleId, NodeId)>>,
}

impl Coordinator {
    /// The state, locked. Never held across an await.
    pub fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Verifies a copy `node` claims, in the background, then records it.
    pub fn spot_check(self: &Arc<Self>, node: NodeId, bundle: BundleId) {
        let addr = {
            let c = self.lock();
            match c.nodes.get(&node) {
                Some(n) => PeerAddr {
                    id: node,
                    addr: n.contact.quic,
                },
                None => return,
            }
        };
        if !self
            .checking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((bundle, node))
        {
            return;
        }
        let coord = self.clone();
        tokio::spawn(async move {
            match spotcheck::check_copy(&coord.endpoint, addr, bundle).await {
                Ok(bytes) => {
                    tracing::debug!(bundle = %bundle, node = %node, bytes, "spot check passed");
                    let mut c = coord.lock();
                    if let Err(e) =
                        lifecycle::confirm_copy(&mut c, bundle, node).and_then(|()| c.flush())
                    {
                        tracing::error!(
                            error = format!("{e:#}"),
                            "could not record a verified copy"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(bundle = %bundle, node = %node, error = %e, "a claimed copy failed its spot check");
                    // Do not ask again before the next heartbeats have passed.
                    tokio::time::sleep(coord.policy.heartbeat * 2).await;
                }
            }
            coord
                .checking
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(bundle, node));
        });
    }

    /// One turn of the lifecycle: notice down nodes, re-plan when needed,
    /// release replaced copies.
    pub fn tick(&self, last: &mut lifecycle::Eligibility) -> anyhow::Result<()> {
        let now = Instant::now();
        let mut c = self.lock();
        let eligible = lifecycle::eligibility(&mut c, &self.policy, now);
        if c.needs_plan || eligible != *last {
            lifecycle::replan(&mut c, &self.policy, now, &eligible)?;
            *last = eligible;
        }
        lifecycle::release_replaced(&mut c, &self.policy, now)?;
        c.flush()
    }
}

/// Makes the key, the HTTPS certificate and the admin token, unless they exist;
/// returns the admin token when one was made.
pub fn init(data_dir: &Path) -> anyhow::Result<Option<String>> {
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
    let token = cartable_proto::join::hex(&secret);
    let mut cluster = Cluster::load(Box::new(open_state(data_dir)?), Instant::now())?;
    cluster.set_admin_hash(secret_hash(token.as_bytes()))?;
    cartable_node::secret_file::create(&path, &format!("{token}\n"))
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
    if let Some(_token) = init(&data_dir)? {
        tracing::info!(file = %data_dir.join(ADMIN_TOKEN_FILE).display(), "made an admin token");
    }
    let identity = Identity::load_or_create(&data_dir)?;
    let cluster = Cluster::load(Box::new(open_state(&data_dir)?), Instant::now())?;
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
    let endpoint = PeerEndpoint::bind_for(
        config.quic,
        &identity,
        Members::anyone(),
        control::ALPN,
        config.quic_limits,
    )?;
    let https = format!("https://{}", server.local_addr()?);
    let quic = endpoint.local_addr()?;
    let public_url = config.public_url.clone().unwrap_or_else(|| https.clone());
    let public_quic = config.public_quic.unwrap_or(quic);
    let coord = Arc::new(Coordinator {
        cluster: Mutex::new(cluster),
        policy: config.policy.clone(),
        prober: Arc::new(Prober::new(config.routing)),
        config,
        identity,
        endpoint,
        https_url: public_url,
        quic_addr: public_quic,
        checking: Mutex::new(HashSet::new()),
    });
    let nodes_task = tokio::spawn(crate::control::serve_nodes(coord.clone()));
    let loop_coord = coord.clone();
    let loop_task = tokio::spawn(async move {
        let mut last = lifecycle::Eligibility::default();
        loop {
            if let Err(e) = loop_coord.tick(&mut last) {
                tracing::error!(error = format!("{e:#}"), "lifecycle step failed");
            }
            tokio::time::sleep(TICK).await;
        }
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "cartable-coordinator listening https={https} quic={quic} id={}",
        coord.identity.id()
    )?;
    stdout.flush()?;
    drop(stdout);
    let handler_coord = coord.clone();
    let handler = move |req, peer| crate::http::respond(handler_coord.clone(), req, peer);
    server
        .serve(handler, cartable_node::daemon::stop_signal())
        .await;
    loop_task.abort();
    coord.endpoint.close();
    let _ = nodes_task.await;
    coord.lock().flush()?;
    tracing::info!("stopped");
    Ok(())
}
