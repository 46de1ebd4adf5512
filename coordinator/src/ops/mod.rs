//! The coordinator's operations, typed: what each admin call, join and
//! heartbeat does to the state, whatever carried it. The HTTP handlers
//! ([`crate::http`]) and the QUIC handlers ([`crate::control`]) only turn
//! requests into these calls and their errors into answers.
//!
//! - [`Coordinator`]: what every task shares; the one lock over the state.
//! - [`admin`]: the admin API's operations: nodes (drain, trust, approve a
//!   contact, remove), bundles (unpublish, replicas), names, tokens, status and
//!   plan previews; [`publish`]: registering and placing a bundle.
//! - [`members`]: a node's join and heartbeats.
//! - [`checks`]: the spot checks of copies nodes claim, run in the background.
//! - [`OpError`]: why an operation was refused; every refusal changes nothing.

pub mod admin;
pub mod checks;
pub mod members;
pub mod publish;

#[cfg(test)]
mod commit_tests;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use cartable_net::identity::Identity;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_proto::{BundleId, NodeId};

use crate::config::{CoordinatorConfig, Policy};
use crate::lifecycle;
use crate::probe::Prober;
use crate::state::Cluster;

pub use checks::Check;

/// Why an admin operation was refused. Each refusal changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// No node has this id.
    #[error("no such node")]
    NoSuchNode,
    /// No bundle has this id.
    #[error("no such bundle")]
    NoSuchBundle,
    /// No name is recorded under this text.
    #[error("no such name")]
    NoSuchName,
    /// No single token has an id starting so.
    #[error("no token with that id (give at least 8 hex digits)")]
    NoSuchToken,
    /// The request breaks a rule; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the state (a node holding copies, names
    /// pointing to a bundle, no contact proposed); the text says what to do.
    #[error("{0}")]
    Conflict(String),
    /// No node that is up could be given the bundle.
    #[error("{0}")]
    Unavailable(String),
    /// No node that is up has room for the bundle.
    #[error("{0}")]
    NoRoom(String),
    /// The change could not be saved; the cause is logged, not shown.
    #[error("the coordinator could not save the change")]
    Save(#[source] anyhow::Error),
    /// The system gave no randomness for a secret.
    #[error("no system randomness")]
    NoRandomness,
}

impl From<anyhow::Error> for OpError {
    fn from(e: anyhow::Error) -> Self {
        Self::Save(e)
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
    /// What monitoring counts as it happens (the rest is read from the state).
    pub metrics: crate::metrics::Counts,
    checking: Mutex<HashSet<(BundleId, NodeId)>>,
    /// One plan at a time (a tick's or a publish's), from its inputs to its
    /// application, so that none is made without the one before it: plans
    /// run with the state's lock released.
    planning: Mutex<()>,
    /// One backup at a time: each holds a copy of the state in memory.
    pub(crate) backup_slot: Arc<tokio::sync::Semaphore>,
}

impl Coordinator {
    /// The coordinator over `cluster`, its state loaded.
    pub fn new(
        cluster: Cluster,
        config: CoordinatorConfig,
        identity: Identity,
        endpoint: PeerEndpoint,
        https_url: String,
        quic_addr: SocketAddr,
    ) -> Self {
        Self {
            cluster: Mutex::new(cluster),
            policy: config.policy.clone(),
            prober: Arc::new(Prober::new(config.routing)),
            config,
            identity,
            endpoint,
            https_url,
            quic_addr,
            metrics: crate::metrics::Counts::default(),
            checking: Mutex::new(HashSet::new()),
            planning: Mutex::new(()),
            backup_slot: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// The right to plan, held from a plan's inputs to its application.
    fn planning(&self) -> MutexGuard<'_, ()> {
        self.planning.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, locked. Never held across an await.
    pub fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `change` on the locked state, then syncs what it saved with the
    /// lock released, before returning: under the lock, a sync held up every
    /// browser's redirect and every heartbeat for its length (with 20 ms added
    /// to each sync, 20 ms in the redirects' p99: `benches/README.md`,
    /// "Coordinator"). Others may read the change before it is on disk; the
    /// caller is answered after.
    pub fn commit<T, E: From<anyhow::Error>>(
        &self,
        change: impl FnOnce(&mut Cluster) -> Result<T, E>,
    ) -> Result<T, E> {
        let (value, durable) = {
            let mut c = self.lock();
            let value = change(&mut c)?;
            (value, c.durable())
        };
        durable.flush()?;
        Ok(value)
    }

    /// One turn of the lifecycle: notice down nodes, re-plan when needed,
    /// release replaced copies. The plan is made with the state's lock
    /// released (seconds at national scale, while redirects and heartbeats
    /// wait on that lock), from inputs taken under it, then applied to the
    /// state as it is by then.
    pub fn tick(&self, last: &mut lifecycle::Eligibility) -> anyhow::Result<()> {
        let _planning = self.planning();
        let now = Instant::now();
        let inputs = {
            let mut c = self.lock();
            let eligible = lifecycle::eligibility(&mut c, &self.policy, now);
            (c.needs_plan || eligible != *last).then(|| {
                // A change from now on asks for the next plan.
                c.needs_plan = false;
                lifecycle::PlanInputs::take(&c, &self.policy, now, &eligible)
            })
        };
        let plans = inputs.map(|inputs| {
            let planning = Instant::now();
            let plans = inputs.plan();
            self.metrics
                .plan_seconds
                .observe(planning.elapsed().as_secs_f64());
            plans
        });
        self.commit(|c| {
            if let Some(plans) = plans {
                let eligible = plans.eligible().clone();
                if let Err(e) = plans.apply(c, &self.policy, now) {
                    c.needs_plan = true;
                    return Err(e);
                }
                *last = eligible;
            }
            lifecycle::release_replaced(c, &self.policy, now)
        })
    }
}
