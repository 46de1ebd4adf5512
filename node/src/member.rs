//! Membership of a coordinator: the join token kept on disk, heartbeats, and the
//! orders they bring back — kept on disk too, so that with the coordinator gone
//! the node goes on serving, accepting its peers and finishing its copies.
//!
//! The replication agent lives here: each order's bundle that is not held
//! whole (never copied, or a blob the scrub removed) is fetched from the sources
//! named, verified; a released bundle is deleted.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cartable_proto::control::{
    self, Contact, ControlRequest, ControlResponse, FailureReport, Heartbeat, JoinRequest, Orders,
};
use cartable_proto::join::JoinToken;
use cartable_proto::{BundleId, NodeId};
use serde::{Deserialize, Serialize};

use crate::peer::fetch::{FetchOptions, fetch_bundle};
use crate::peer::reputation::Reputation;
use crate::peer::through::FetchThrough;
use crate::store::Store;
use cartable_net::control::ask;
use cartable_net::https::Load;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_net::secret_file;

/// The join token and what came of it, under the data folder (mode 0600).
pub const MEMBERSHIP_FILE: &str = "membership.json";
/// The last orders, under the data folder.
pub const ORDERS_FILE: &str = "orders.json";
/// Heartbeat interval until the coordinator says otherwise.
const FIRST_INTERVAL: Duration = Duration::from_secs(2);
/// Bundles copied at once by the agent.
const COPIES_AT_ONCE: usize = 4;
/// A heartbeat (connection included) not answered within this many intervals
/// is given up and the connection dropped: a coordinator killed and restarted
/// never closes the old connection, which would otherwise hold the node's
/// heartbeats until QUIC's idle timeout (30 s).
const ANSWER_WITHIN_BEATS: u32 = 3;
/// The least time an answer is given, whatever the interval.
const MIN_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Counts reported to the coordinator: lies per peer, damaged blobs.
type Reported = (BTreeMap<NodeId, u64>, u64);

/// The coordinator's answer refusing this node, as opposed to no answer:
/// retrying alone will not mend it, so the log says what will.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(
        "the coordinator refused this node's join: {0}. A join token admits one node, once: \
         make a new one (`cartable token create` where the coordinator runs), run \
         `cartable-node join TOKEN` here, then restart this daemon"
    )]
    Join(String),
    #[error(
        "the coordinator refused this node's heartbeat: {0}. A node removed from the cluster \
         (`cartable node remove`) comes back only with a new token: `cartable-node join TOKEN` \
         here, then restart this daemon"
    )]
    Heartbeat(String),
}

/// What `cartable-node join` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Membership {
    /// The join token, text form.
    pub token: String,
    /// Bytes offered for assigned bundles.
    pub capacity: u64,
    /// Whether the coordinator accepted the token.
    pub joined: bool,
}

impl Membership {
    /// The membership recorded in `data_dir`, if any.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = data_dir.join(MEMBERSHIP_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text =
            secret_file::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let m: Self =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        m.parsed_token()?;
        Ok(Some(m))
    }

    /// The token, parsed.
    pub fn parsed_token(&self) -> anyhow::Result<JoinToken> {
        self.token.parse().context("join token")
    }

    /// Writes it (temporary file, then rename).
    pub fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(MEMBERSHIP_FILE);
        let tmp = data_dir.join(format!("{MEMBERSHIP_FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        secret_file::create(&tmp, &serde_json::to_string_pretty(self)?)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// `cartable-node join`: checks and records the token; the next `serve` registers.
pub fn join(data_dir: &Path, token: &str, capacity: u64) -> anyhow::Result<JoinToken> {
    let parsed: JoinToken = token.parse().context("join token")?;
    if let Some(existing) = Membership::load(data_dir)?
        && existing.joined
    {
        bail!(
            "this node is already a member of coordinator {}; remove {} to join another",
            existing.parsed_token()?.coordinator,
            data_dir.join(MEMBERSHIP_FILE).display()
        );
    }
    anyhow::ensure!(capacity > 0, "capacity must be positive");
    Membership {
        token: parsed.to_string(),
        capacity,
        joined: false,
    }
    .save(data_dir)?;
    Ok(parsed)
}

/// A node's membership while it runs.
#[derive(Debug)]
pub struct Member {
    /// The data folder.
    pub data_dir: PathBuf,
    /// What was recorded at join.
    pub membership: Mutex<Membership>,
    /// The coordinator.
    pub coordinator: PeerAddr,
    /// This node.
    pub id: NodeId,
    /// Where it answers.
    pub contact: Contact,
    /// The store.
    pub store: Arc<Store>,
    /// The QUIC endpoint.
    pub endpoint: PeerEndpoint,
    /// Who may connect (updated from the orders).
    pub members: Members,
    /// Fetch-through (its peers updated from the orders).
    pub through: Arc<FetchThrough>,
    /// Liars caught, reported to the coordinator.
    pub reputation: Arc<Reputation>,
    /// Blobs the scrub found damaged, reported to the coordinator.
    pub damaged: Arc<AtomicU64>,
    /// Bandwidth cap of background copies.
    pub fetch_rate: Option<u64>,
    /// Names and their bundles, from the orders.
    pub names: Arc<Mutex<control::NameTable>>,
    /// Browser connections open (the load reported) and the pressure copies yield to.
    pub load: Load,
    /// Verified bytes copied from peers by assigned copies, for monitoring.
    pub copied: Arc<AtomicU64>,
    /// When the coordinator last answered a heartbeat, and the interval it asked for.
    answered: Mutex<Option<(Instant, Duration)>>,
    /// Bundles the last orders assign here that are not held whole yet.
    pending: AtomicUsize,
    fetching: Mutex<HashSet<BundleId>>,
    reported: Mutex<Reported>,
    /// Whether the operator was told that the coordinator still sends
    /// browsers and peers to the address recorded at join.
    told_unapproved: AtomicBool,
}

impl Member {
    /// A member ready to run; the last orders on disk are applied at once.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        data_dir: PathBuf,
        membership: Membership,
        id: NodeId,
        contact: Contact,
        store: Arc<Store>,
        endpoint: PeerEndpoint,
        members: Members,
        through: Arc<FetchThrough>,
        reputation: Arc<Reputation>,
        fetch_rate: Option<u64>,
        damaged: Arc<AtomicU64>,
        load: Load,
        copied: Arc<AtomicU64>,
    ) -> anyhow::Result<Arc<Self>> {
        let token = membership.parsed_token()?;
        let member = Arc::new(Self {
            data_dir,
            membership: Mutex::new(membership),
            coordinator: PeerAddr {
                id: token.coordinator,
                addr: token.quic,
            },
            id,
            contact,
            store,
            endpoint,
            members,
            through,
            reputation,
            damaged,
            load,
            copied,
            answered: Mutex::default(),
            pending: AtomicUsize::new(0),
            fetch_rate,
            names: Arc::default(),
            fetching: Mutex::default(),
            reported: Mutex::default(),
            told_unapproved: AtomicBool::new(false),
        });
        if let Some(orders) = member.saved_orders() {
            tracing::info!(
                members = orders.members.len(),
                "applying the last orders kept on disk"
            );
            member.apply(&orders);
        } else {
            member.members.replace([token.coordinator]);
        }
        Ok(member)
    }

    /// Warns once when the coordinator keeps this node at another address
    /// than the one it listens on: a node's address is fixed at join, and a
    /// move waits for an admin (`cartable node approve-contact`).
    fn check_recorded_address(&self, orders: &Orders) {
        let Some(recorded) = orders.members.iter().find(|m| m.id == self.id) else {
            return;
        };
        let moved = recorded.contact.https_url != self.contact.https_url
            || recorded.contact.quic != self.contact.quic;
        if moved && !self.told_unapproved.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                recorded = recorded.contact.https_url,
                quic = %recorded.contact.quic,
                listening = self.contact.https_url,
                "the coordinator still sends browsers and peers to the address recorded at join: \
                 ask its operator to run `cartable node approve-contact {}`, or listen there again",
                self.id
            );
        } else if !moved {
            self.told_unapproved.store(false, Ordering::Relaxed);
        }
    }

    /// How long ago the coordinator last answered a heartbeat; `None`: not
    /// since this node started.
    pub fn last_answer(&self) -> Option<Duration> {
        let answered = *self.answered.lock().unwrap_or_else(|e| e.into_inner());
        answered.map(|(at, _)| at.elapsed())
    }

    /// Whether the coordinator answered within the time a heartbeat is given
    /// (the node gives up on one after as long).
    pub fn coordinator_reachable(&self) -> bool {
        let answered = *self.answered.lock().unwrap_or_else(|e| e.into_inner());
        answered.is_some_and(|(at, interval)| {
            at.elapsed() < interval + (interval * ANSWER_WITHIN_BEATS).max(MIN_ANSWER_WAIT)
        })
    }

    /// Bundles assigned here by the last orders that are not held whole yet.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The capacity offered at join, in bytes.
    pub fn capacity(&self) -> u64 {
        self.membership
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .capacity
    }

    fn saved_orders(&self) -> Option<Orders> {
        let text = std::fs::read(self.data_dir.join(ORDERS_FILE)).ok()?;
        control::decode(&text)
            .map_err(|e| tracing::warn!(error = %e, "ignoring unreadable saved orders"))
            .ok()
    }

    /// Heartbeats until the task is dropped. New orders are applied as they come;
    /// without the coordinator the last ones are applied again at each beat, so
    /// that copies that failed are retried from the sources named.
    pub async fn run(self: Arc<Self>) {
        let mut interval = FIRST_INTERVAL;
        let mut conn: Option<quinn::Connection> = None;
        let mut last = self.saved_orders().map(Arc::new);
        loop {
            let wait = (interval * ANSWER_WITHIN_BEATS).max(MIN_ANSWER_WAIT);
            let answer = tokio::time::timeout(wait, self.exchange(&mut conn))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {wait:?}")));
            let fresh = answer.is_ok();
            match answer {
                Ok(mut orders) => {
                    interval = Duration::from_millis(orders.heartbeat_ms.clamp(100, 60_000));
                    *self.answered.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((Instant::now(), interval));
                    // Orders name the table only when it changed: keep the last one
                    // on disk with them, for a restart without the coordinator.
                    if orders.names.is_none() {
                        orders.names =
                            Some(self.names.lock().unwrap_or_else(|e| e.into_inner()).clone());
                    }
                    last = Some(Arc::new(orders));
                }
                Err(e) => {
                    conn = None;
                    let error = format!("{e:#}");
                    if e.downcast_ref::<Refused>().is_some() {
                        tracing::error!(coordinator = %self.coordinator, "{error}");
                    } else if last.is_some() {
                        tracing::warn!(coordinator = %self.coordinator, error, "no orders from the coordinator; going on with the last ones");
                    } else {
                        tracing::warn!(coordinator = %self.coordinator, error, "no orders from the coordinator yet; trying again at each beat");
                    }
                }
            }
            if let Some(orders) = last.clone() {
                // Files written and synced, the store listed and bundles
                // removed, locks taken that copies' threads hold: on a blocking
                // thread, not on a worker whose browsers' connections wait.
                let member = self.clone();
                let applied = tokio::task::spawn_blocking(move || {
                    if fresh {
                        member.save_orders(&orders);
                    }
                    member.apply(&orders);
                });
                if let Err(e) = applied.await {
                    tracing::error!(error = %e, "applying the orders failed");
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    async fn exchange(&self, conn: &mut Option<quinn::Connection>) -> anyhow::Result<Orders> {
        let c = match conn {
            Some(c) if c.close_reason().is_none() => c.clone(),
            _ => {
                let c = self
                    .endpoint
                    .connect_for(self.coordinator, control::ALPN)
                    .await?;
                *conn = Some(c.clone());
                c
            }
        };
        let (token, capacity, joined) = {
            let m = self.membership.lock().unwrap_or_else(|e| e.into_inner());
            (m.parsed_token()?, m.capacity, m.joined)
        };
        if !joined {
            let join = ControlRequest::Join(JoinRequest {
                secret: token.secret_text(),
                contact: self.contact.clone(),
                capacity,
            });
            match ask(&c, &join).await? {
                ControlResponse::Joined { region, site } => {
                    tracing::info!(region, site, "joined the coordinator");
                    let mut m = self.membership.lock().unwrap_or_else(|e| e.into_inner());
                    m.joined = true;
                    m.save(&self.data_dir)?;
                }
                ControlResponse::Refused { reason } => return Err(Refused::Join(reason).into()),
                other => bail!("unexpected answer to a join: {other:?}"),
            }
        }
        let (beat, counts) = self.heartbeat(capacity)?;
        match ask(&c, &ControlRequest::Heartbeat(beat)).await? {
            ControlResponse::Orders(orders) => {
                // The coordinator has these counts: later beats send only what is new.
                *self.reported.lock().unwrap_or_else(|e| e.into_inner()) = counts;
                Ok(orders)
            }
            ControlResponse::Refused { reason } => Err(Refused::Heartbeat(reason).into()),
            other => bail!("unexpected answer to a heartbeat: {other:?}"),
        }
    }

    /// The heartbeat to send, and the counts it reports (committed once it is answered).
    fn heartbeat(&self, capacity: u64) -> anyhow::Result<(Heartbeat, Reported)> {
        let incomplete: HashSet<BundleId> = self.store.incomplete_bundles()?.into_iter().collect();
        let bundles = self.store.bundles()?;
        let (reported, damaged_reported) = self
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now: Reported = (
            self.reputation.failures(),
            self.damaged.load(Ordering::Relaxed),
        );
        let failures = now
            .0
            .iter()
            .filter_map(|(peer, count)| {
                let new = count.saturating_sub(reported.get(peer).copied().unwrap_or(0));
                (new > 0).then_some(FailureReport {
                    peer: *peer,
                    count: new,
                })
            })
            .collect();
        let beat = Heartbeat {
            contact: self.contact.clone(),
            capacity,
            used: bundles.iter().map(|b| b.bytes).sum(),
            load: u32::try_from(self.load.connections()).unwrap_or(u32::MAX),
            held: bundles
                .iter()
                .map(|b| b.id)
                .filter(|id| !incomplete.contains(id))
                .collect(),
            failures,
            damaged: now.1.saturating_sub(damaged_reported),
            names_version: self.names.lock().unwrap_or_else(|e| e.into_inner()).version,
        };
        Ok((beat, now))
    }

    fn save_orders(&self, orders: &Orders) {
        let path = self.data_dir.join(ORDERS_FILE);
        let tmp = self.data_dir.join(format!("{ORDERS_FILE}.tmp"));
        let written = std::fs::write(&tmp, control::encode(orders))
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not keep the orders on disk");
        }
    }

    fn apply(self: &Arc<Self>, orders: &Orders) {
        self.check_recorded_address(orders);
        let addrs: BTreeMap<NodeId, PeerAddr> = orders
            .members
            .iter()
            .map(|m| {
                (
                    m.id,
                    PeerAddr {
                        id: m.id,
                        addr: m.contact.quic,
                    },
                )
            })
            .collect();
        self.members.replace(
            addrs
                .keys()
                .copied()
                .chain([self.coordinator.id])
                .filter(|id| *id != self.id),
        );
        // A peer dropped from the list keeps no connection it opened before.
        self.endpoint.close_unlisted();
        self.through.set_peers(
            addrs
                .values()
                .filter(|p| p.id != self.id)
                .copied()
                .collect(),
        );
        self.through.set_holders(
            orders
                .hold
                .iter()
                .map(|h| (h.bundle, h.sources.clone()))
                .collect(),
        );
        if let Some(names) = &orders.names {
            *self.names.lock().unwrap_or_else(|e| e.into_inner()) = names.clone();
        }
        let (all, incomplete) = match (self.store.bundles(), self.store.incomplete_bundles()) {
            (Ok(all), Ok(incomplete)) => (all, incomplete),
            (Err(e), _) | (_, Err(e)) => {
                return tracing::error!(error = %e, "cannot list the store; orders not applied");
            }
        };
        let kept: HashSet<BundleId> = orders.hold.iter().map(|h| h.bundle).collect();
        let mut held = HashSet::new();
        for id in all.into_iter().map(|b| b.id) {
            if orders.release.contains(&id) && !kept.contains(&id) {
                match self.store.remove(&id) {
                    Ok(_) => {
                        tracing::info!(bundle = %id, "released: the coordinator placed it elsewhere")
                    }
                    Err(e) => tracing::warn!(bundle = %id, error = %e, "could not release"),
                }
            } else if !incomplete.contains(&id) {
                held.insert(id);
            }
        }
        let pending = orders.hold.iter().filter(|o| !held.contains(&o.bundle));
        self.pending.store(pending.count(), Ordering::Relaxed);
        for order in &orders.hold {
            if held.contains(&order.bundle) || order.sources.is_empty() {
                continue;
            }
            let sources: Vec<PeerAddr> = order
                .sources
                .iter()
                .filter_map(|id| addrs.get(id).copied())
                .collect();
            self.start_copy(order.bundle, sources);
        }
    }

    fn start_copy(self: &Arc<Self>, bundle: BundleId, sources: Vec<PeerAddr>) {
        {
            let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            if fetching.len() >= COPIES_AT_ONCE || !fetching.insert(bundle) {
                return;
            }
        }
        let member = self.clone();
        tokio::spawn(async move {
            let options = FetchOptions {
                rate: member.fetch_rate,
                reputation: member.reputation.clone(),
                yield_to: Some(member.load.pressure().clone()),
                copied: Some(member.copied.clone()),
                ..FetchOptions::default()
            };
            tracing::info!(bundle = %bundle, sources = sources.len(), "copying an assigned bundle");
            match fetch_bundle(
                &member.endpoint,
                member.store.clone(),
                bundle,
                &sources,
                options,
            )
            .await
            {
                Ok(report) => {
                    tracing::info!(bundle = %bundle, bytes = report.bytes_received, "copy complete and verified")
                }
                Err(e) => {
                    tracing::warn!(bundle = %bundle, error = format!("{e:#}"), "copy failed; retrying at a later heartbeat")
                }
            }
            member
                .fetching
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&bundle);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_records_the_token_and_refuses_a_second_coordinator() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let token = format!("cj1-{}-{}@127.0.0.1:7444", "ab".repeat(32), "cd".repeat(32));
        assert!(join(dir.path(), "cj1-nonsense", 1).is_err());
        assert!(
            !dir.path().join(MEMBERSHIP_FILE).exists(),
            "a bad token writes nothing"
        );
        join(dir.path(), &token, 10)?;
        let mut m = Membership::load(dir.path())?.expect("recorded");
        assert_eq!(
            (m.token.as_str(), m.capacity, m.joined),
            (token.as_str(), 10, false)
        );
        join(dir.path(), &token, 20)?;
        m.joined = true;
        m.save(dir.path())?;
        let again = join(dir.path(), &token, 10).unwrap_err();
        assert!(again.to_string().contains("already a member"), "{again}");
        Ok(())
    }
}
