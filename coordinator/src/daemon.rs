//! `cartable-coordinator init` and `serve`: the key, certificate and admin token;
//! then the QUIC endpoint for nodes, the HTTPS admin API and the lifecycle loop.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use cartable_net::https::HttpsServer;
use cartable_net::identity::Identity;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_net::tls::TlsFiles;
use cartable_proto::{BundleId, NodeId, control};
use ring::rand::SecureRandom;

use crate::config::{CoordinatorConfig, Policy};
use crate::probe::Prober;
use crate::state::{Cluster, SledKv, secret_hash};
use crate::{lifecycle, spotcheck, trust};

/// The admin token's file under the data folder (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// How often the lifecycle loop runs.
const TICK: Duration = Duration::from_millis(250);
/// Checks of copies running at once: each holds a connection to a node and up
/// to a megabyte in flight.
const CHECKS_AT_ONCE: usize = 16;

/// Why a copy is checked ([`crate::trust`] gives the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A node claims a copy: passed, it is complete.
    Claim,
    /// A complete copy must pass this to count for releases.
    UnderLoad,
    /// A complete copy checked again, at random.
    Again,
}

impl Check {
    fn sample(self) -> spotcheck::Sample {
        match self {
            Self::Claim | Self::Again => spotcheck::Sample::CLAIM,
            Self::UnderLoad => spotcheck::Sample::UNDER_LOAD,
        }
    }
}

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

    /// Checks `node`'s copy of `bundle` in the background, then records what
    /// came of it. At most `CHECKS_AT_ONCE` (16) run at once, one per copy: a
    /// check refused for want of a slot comes again (a claim with the next
    /// heartbeat, a proof or re-check with a later tick).
    pub fn check(self: &Arc<Self>, node: NodeId, bundle: BundleId, kind: Check) {
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
        {
            let mut checking = self.checking.lock().unwrap_or_else(|e| e.into_inner());
            if checking.len() >= CHECKS_AT_ONCE || !checking.insert((bundle, node)) {
                return;
            }
        }
        let coord = self.clone();
        tokio::spawn(async move {
            let result = spotcheck::check_copy(&coord.endpoint, addr, bundle, kind.sample()).await;
            let failed = result.is_err();
            if let Err(e) = coord.record_check(node, bundle, kind, result) {
                tracing::error!(error = format!("{e:#}"), "could not record a check");
            }
            if failed {
                // Do not ask again before the next heartbeats have passed.
                tokio::time::sleep(coord.policy.heartbeat * 2).await;
            }
            coord
                .checking
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(bundle, node));
        });
    }

    fn record_check(
        &self,
        node: NodeId,
        bundle: BundleId,
        kind: Check,
        result: Result<u64, spotcheck::CheckError>,
    ) -> anyhow::Result<()> {
        let mut c = self.lock();
        let recorded = c
            .replicas
            .get(&bundle)
            .is_some_and(|r| r.contains_key(&node));
        match result {
            Ok(bytes) => {
                tracing::debug!(bundle = %bundle, node = %node, bytes, ?kind, "check passed");
                match kind {
                    Check::Claim => {
                        lifecycle::confirm_copy(&mut c, bundle, node, &self.policy, Instant::now())?
                    }
                    Check::UnderLoad => trust::proven(&mut c, node, bundle)?,
                    Check::Again => {}
                }
            }
            Err(spotcheck::CheckError::Unreachable(why)) => {
                tracing::info!(bundle = %bundle, node = %node, error = why, ?kind, "could not check a copy");
            }
            // A copy released while it was checked may be deleted by now.
            Err(spotcheck::CheckError::Refuted(_)) if kind != Check::Claim && !recorded => {}
            Err(e) => {
                tracing::warn!(bundle = %bundle, node = %node, error = %e, ?kind, "a copy failed its check");
                trust::refuted(&mut c, node, bundle)?;
            }
        }
        c.flush()
    }

    /// Starts the background checks due: a check under load for copies not
    /// proven yet, and a re-check of a random complete copy every
    /// [`trust::RECHECK_EVERY`].
    pub fn start_checks(self: &Arc<Self>, last_recheck: &mut Instant) {
        let now = Instant::now();
        let (proofs, again) = {
            let c = self.lock();
            let busy = self
                .checking
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let proofs: Vec<(BundleId, NodeId)> =
                trust::awaiting_proof(&c, now, self.policy.down_after)
                    .filter(|copy| !busy.contains(copy))
                    .take(CHECKS_AT_ONCE.saturating_sub(busy.len()))
                    .collect();
            let due = now.saturating_duration_since(*last_recheck) >= trust::RECHECK_EVERY;
            let again = due
                .then(|| {
                    trust::nth_complete(
                        &c,
                        spotcheck::random_below(u64::MAX),
                        now,
                        self.policy.down_after,
                    )
                })
                .flatten();
            (proofs, again)
        };
        for (bundle, node) in proofs {
            self.check(node, bundle, Check::UnderLoad);
        }
        if let Some((bundle, node)) = again {
            *last_recheck = now;
            self.check(node, bundle, Check::Again);
        }
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
    let token = cartable_proto::join::hex(&secret);
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
    let mut cluster = Cluster::load(Box::new(open_state(&data_dir)?), Instant::now())?;
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
        let mut last_recheck = Instant::now();
        loop {
            if let Err(e) = loop_coord.tick(&mut last) {
                tracing::error!(error = format!("{e:#}"), "lifecycle step failed");
            }
            loop_coord.start_checks(&mut last_recheck);
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
        .serve(handler, cartable_net::signal::stop_signal())
        .await;
    loop_task.abort();
    coord.endpoint.close();
    let _ = nodes_task.await;
    coord.lock().flush()?;
    tracing::info!("stopped");
    Ok(())
}
