//! What the coordinator knows: members, join tokens, bundles, replicas, names.
//! Durable records live in a [`Kv`] (written through on every change, read once
//! at start) in the shapes of [`records`], the stored schema, versioned apart
//! from these types and from the API's; what nodes report between heartbeats
//! lives only in memory.

pub mod kv;
mod plan_view;
pub mod records;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cartable_proto::control::Contact;
use cartable_proto::{BundleId, NodeId};
use serde::{Serialize, de::DeserializeOwned};

use cartable_proto::api::{NameChange, ReplicaState};
pub use kv::{Kv, MemoryKv, SledKv};
pub use plan_view::PlanView;
use records::{BundleRow, NameRow, NodeRow, ReplicaRow, TokenRow};

const NODES: &str = "nodes";
const TOKENS: &str = "tokens";
const BUNDLES: &str = "bundles";
const REPLICAS: &str = "replicas";
const NAMES: &str = "names";
const RETIRED: &str = "retired";
const META: &str = "meta";
const PROVEN: &str = "proven";

/// Every table the state keeps, and so every table a backup holds.
pub const TABLES: [&str; 8] = [
    NODES, TOKENS, BUNDLES, REPLICAS, NAMES, RETIRED, META, PROVEN,
];

/// Every row of every table in `kv`, by table.
pub fn scan_tables(kv: &dyn Kv) -> anyhow::Result<Vec<(&'static str, kv::Rows)>> {
    TABLES.iter().map(|t| Ok((*t, kv.scan(t)?))).collect()
}

/// A member node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Its key.
    pub id: NodeId,
    /// Its region.
    pub region: String,
    /// Its site.
    pub site: String,
    /// Bytes it offers.
    pub capacity: u64,
    /// Where it answers.
    pub contact: Contact,
    /// Being emptied before it leaves.
    pub draining: bool,
    /// Verification failures peers reported against it, by reporter: a member
    /// that forges reports only grows its own count.
    pub failure_reports: BTreeMap<NodeId, u64>,
    /// Where the node now says it answers, when that differs from `contact`:
    /// browsers and peers keep being sent to `contact` until an admin approves.
    pub proposed_contact: Option<Contact>,
    /// The most capacity it may claim, from its join token (`None`: tokens
    /// made before capacities were bounded).
    pub capacity_limit: Option<u64>,
    /// What the coordinator's checks found.
    pub trust: Trust,
}

/// A member's record of failed checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trust {
    /// Checks it failed since the mark was last cleared.
    pub failed_checks: u64,
    /// Set after repeated failed checks: its claims no longer count, its
    /// copies are moved away, until an admin clears the mark.
    pub unreliable: bool,
}

impl NodeRecord {
    /// A member as it joins: up, not draining, nothing reported against it.
    pub fn joined(id: NodeId, region: &str, site: &str, capacity: u64, contact: Contact) -> Self {
        Self {
            id,
            region: region.to_owned(),
            site: site.to_owned(),
            capacity,
            contact,
            draining: false,
            failure_reports: BTreeMap::new(),
            proposed_contact: None,
            capacity_limit: None,
            trust: Trust::default(),
        }
    }

    /// `claimed` capacity, bounded by what the operator allowed.
    pub fn allowed_capacity(&self, claimed: u64) -> u64 {
        self.capacity_limit
            .map_or(claimed, |limit| claimed.min(limit))
    }

    /// Whether it may be given copies: an unreliable node's move away as a
    /// drained node's do.
    pub fn takes_copies(&self) -> bool {
        !self.draining && !self.trust.unreliable
    }

    /// Whether placement reads anything that differs between the two records.
    fn places_like(&self, other: &Self) -> bool {
        (&self.region, &self.site, self.capacity, self.draining)
            == (&other.region, &other.site, other.capacity, other.draining)
            && self.trust.unreliable == other.trust.unreliable
    }
}

/// A join token, kept as a hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Region given to the node.
    pub region: String,
    /// Site given to the node.
    pub site: String,
    /// Unix seconds after which it is void.
    pub expires: u64,
    /// The node that used it.
    pub used_by: Option<NodeId>,
    /// The most capacity the node may claim (`None`: what it declares).
    pub capacity: Option<u64>,
}

/// A published bundle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BundleRecord {
    /// Bytes of its files.
    pub size: u64,
    /// Number of files.
    pub files: usize,
    /// Target number of copies.
    pub replicas: u8,
    /// A name to point at the bundle once its first copy is verified: a
    /// teacher's link keeps working while the new version uploads.
    pub pending_name: Option<String>,
    /// Nodes given an upload grant for it, latest last (at most
    /// [`BundleRecord::MAX_UPLOADS`]): a copy they claim counts even when the
    /// plan put the bundle elsewhere meanwhile.
    pub uploads: Vec<NodeId>,
}

impl BundleRecord {
    /// Upload grants remembered per bundle.
    pub const MAX_UPLOADS: usize = 4;

    /// Remembers that `node` was given an upload grant.
    pub fn granted(&mut self, node: NodeId) {
        self.uploads.retain(|n| *n != node);
        self.uploads.push(node);
        let extra = self.uploads.len().saturating_sub(Self::MAX_UPLOADS);
        self.uploads.drain(..extra);
    }
}

/// A name and its past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRecord {
    /// Every value it had, oldest first; the last is current.
    pub history: Vec<NameChange>,
}

impl NameRecord {
    /// The bundle it points to now.
    pub fn current(&self) -> Option<BundleId> {
        self.history.last().map(|c| c.bundle)
    }
}

/// What a node said in its last heartbeat (memory only).
#[derive(Debug, Clone)]
pub struct Liveness {
    /// When it was last heard from (the coordinator's start, for nodes not heard
    /// from since: a restart must not make every node look down).
    pub last_seen: Instant,
    /// Bytes used.
    pub used: u64,
    /// Requests in flight.
    pub load: u32,
    /// Bundles held complete, as reported.
    pub held: BTreeSet<BundleId>,
    /// The name table version it has.
    pub names_version: u64,
    /// When its failure reports about peers were last counted.
    pub reports_counted: Option<Instant>,
    /// Up only because the coordinator started at `last_seen` and has not
    /// heard from it since: it may have died meanwhile, so its copies do not
    /// count for releasing others until it reports.
    pub assumed: bool,
    /// A refuted check cost it a strike since its last heartbeat.
    pub struck: bool,
}

impl Liveness {
    /// A node heard from at `now`, before it reported anything.
    pub fn heard(now: Instant) -> Self {
        Self {
            last_seen: now,
            used: 0,
            load: 0,
            held: BTreeSet::new(),
            names_version: 0,
            reports_counted: None,
            assumed: false,
            struck: false,
        }
    }

    /// A member when the coordinator starts at `now`: up until the grace
    /// period passes, but not heard from.
    pub fn assumed(now: Instant) -> Self {
        Self {
            assumed: true,
            ..Self::heard(now)
        }
    }
}

/// Makes the changes made before it was taken durable (and any made since).
#[derive(Debug)]
pub struct Durable(Arc<dyn Kv>);

impl Durable {
    /// Syncs the tables to disk.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.0.flush()
    }
}

/// The whole state.
#[derive(Debug)]
pub struct Cluster {
    kv: Arc<dyn Kv>,
    /// Members.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// Join tokens, by the hex BLAKE3 hash of their secret.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Published bundles. Changed only by `save_bundle` and `retire_bundle`,
    /// which keep the indexes below.
    pub bundles: BTreeMap<BundleId, BundleRecord>,
    /// Replicas of each bundle and their states. Changed only by
    /// `set_replica`, which keeps the indexes below.
    pub replicas: BTreeMap<BundleId, BTreeMap<NodeId, ReplicaState>>,
    /// The same replicas by node (kept by `set_replica`), so that a heartbeat
    /// costs what the node holds.
    by_node: HashMap<NodeId, BTreeSet<BundleId>>,
    /// The bundles with a copy being released (kept by `set_replica`), so
    /// that a tick's look for copies to release costs what is releasing.
    releasing: BTreeSet<BundleId>,
    /// Every bundle as the planner sees it (kept by `load`, `save_bundle`,
    /// `retire_bundle` and `set_replica`), so that a plan takes it without a
    /// walk.
    plan_view: PlanView,
    /// Names.
    pub names: BTreeMap<String, NameRecord>,
    /// Unpublished bundles, which nodes are told to delete.
    pub retired: BTreeSet<BundleId>,
    /// Grows at every name change.
    pub names_version: u64,
    /// Hash of the admin token.
    pub admin_hash: Option<String>,
    /// Copies that passed a check under load since they were last copied:
    /// only these count for releasing another copy.
    pub proven: BTreeSet<(BundleId, NodeId)>,
    /// Heartbeat reports.
    pub live: HashMap<NodeId, Liveness>,
    /// Bundles the last plan could not place fully, and why.
    pub unplaced: BTreeMap<BundleId, String>,
    /// When each node was first seen down (memory only).
    pub down_since: HashMap<NodeId, Instant>,
    /// Set when the inputs of placement changed.
    pub needs_plan: bool,
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The hex BLAKE3 hash of a secret: what is kept instead of the secret.
pub fn secret_hash(secret: &[u8]) -> String {
    blake3::hash(secret).to_hex().to_string()
}

/// The rows of `table`, each read as its stored shape `R` and converted.
fn rows<K: Ord, R: DeserializeOwned + Into<V>, V>(
    kv: &dyn Kv,
    table: &str,
    key: impl Fn(&[u8]) -> anyhow::Result<K>,
) -> anyhow::Result<BTreeMap<K, V>> {
    kv.scan(table)?
        .into_iter()
        .map(|(k, v)| Ok((key(&k)?, records::decode::<R>(table, &v)?.into())))
        .collect()
}

fn id32(bytes: &[u8]) -> anyhow::Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("state key of {} bytes, expected 32", bytes.len()))
}

fn bundle_key(bytes: &[u8]) -> anyhow::Result<BundleId> {
    Ok(BundleId::from_hash(cartable_proto::BlobHash::from_bytes(
        id32(bytes)?,
    )))
}

fn replica_key(bytes: &[u8]) -> anyhow::Result<(BundleId, NodeId)> {
    anyhow::ensure!(bytes.len() == 64, "replica key of {} bytes", bytes.len());
    Ok((
        bundle_key(&bytes[..32])?,
        NodeId::from_bytes(id32(&bytes[32..])?),
    ))
}

fn replica_bytes(bundle: &BundleId, node: &NodeId) -> Vec<u8> {
    let mut key = bundle.hash().as_bytes().to_vec();
    key.extend_from_slice(node.as_bytes());
    key
}

fn text_key(bytes: &[u8]) -> anyhow::Result<String> {
    Ok(String::from_utf8(bytes.to_vec())?)
}

impl Cluster {
    /// Loads the state kept in `kv`.
    /// A folder of an older schema is migrated first; one of a newer schema is
    /// refused ([`records::SchemaError`]).
    pub fn load(kv: Box<dyn Kv>, now: Instant) -> anyhow::Result<Self> {
        let kv: Arc<dyn Kv> = Arc::from(kv);
        records::open(&*kv)?;
        let nodes: BTreeMap<NodeId, NodeRecord> =
            rows::<_, NodeRow, _>(&*kv, NODES, |k| Ok(NodeId::from_bytes(id32(k)?)))?;
        let flat: BTreeMap<(BundleId, NodeId), ReplicaState> =
            rows::<_, ReplicaRow, _>(&*kv, REPLICAS, replica_key)?;
        let mut replicas: BTreeMap<BundleId, BTreeMap<NodeId, ReplicaState>> = BTreeMap::new();
        let mut by_node: HashMap<NodeId, BTreeSet<BundleId>> = HashMap::new();
        let mut releasing = BTreeSet::new();
        for ((b, n), state) in flat {
            replicas.entry(b).or_default().insert(n, state);
            by_node.entry(n).or_default().insert(b);
            if state == ReplicaState::Releasing {
                releasing.insert(b);
            }
        }
        let retired: BTreeMap<BundleId, bool> = rows::<_, bool, _>(&*kv, RETIRED, bundle_key)?;
        let proven: BTreeMap<(BundleId, NodeId), bool> =
            rows::<_, bool, _>(&*kv, PROVEN, replica_key)?;
        let meta: BTreeMap<String, String> = rows::<_, String, _>(&*kv, META, text_key)?;
        let live = nodes
            .keys()
            .map(|id| (*id, Liveness::assumed(now)))
            .collect();
        let mut c = Self {
            tokens: rows::<_, TokenRow, _>(&*kv, TOKENS, text_key)?,
            bundles: rows::<_, BundleRow, _>(&*kv, BUNDLES, bundle_key)?,
            names: rows::<_, NameRow, _>(&*kv, NAMES, text_key)?,
            retired: retired.into_keys().collect(),
            proven: proven.into_keys().collect(),
            // Changes are synced after heartbeats may have handed them out,
            // so a crash can lose a version some node holds; given again to
            // another table, that node would never ask for it. Each start
            // moves past every version handed out before.
            names_version: meta
                .get("names_version")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                .max(unix_micros())
                + 1,
            admin_hash: meta.get("admin_hash").cloned(),
            nodes,
            replicas,
            by_node,
            releasing,
            live,
            unplaced: BTreeMap::new(),
            down_since: HashMap::new(),
            needs_plan: true,
            plan_view: PlanView::default(),
            kv,
        };
        c.plan_view = c.built_plan_view();
        Ok(c)
    }

    fn put<V: Serialize>(&self, table: &str, key: &[u8], value: &V) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(value)?;
        self.kv.put(table, key, &bytes)
    }

    /// Every stored row, by table, as of now: with the state's lock held,
    /// no change lands half in it.
    pub fn stored_tables(&self) -> anyhow::Result<Vec<(&'static str, kv::Rows)>> {
        scan_tables(&*self.kv)
    }

    /// Makes every change so far durable.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.kv.flush()
    }

    /// What makes the changes so far durable, to be used once the state's
    /// lock is released.
    pub fn durable(&self) -> Durable {
        Durable(self.kv.clone())
    }

    /// Records the admin token's hash.
    pub fn set_admin_hash(&mut self, hash: String) -> anyhow::Result<()> {
        self.put(META, b"admin_hash", &hash)?;
        self.admin_hash = Some(hash);
        self.flush()
    }

    /// Writes a node record; plans again only when what placement reads changed
    /// (a contact or a failure report must not cost a plan).
    pub fn save_node(&mut self, record: NodeRecord) -> anyhow::Result<()> {
        self.put(NODES, record.id.as_bytes(), &NodeRow::from(&record))?;
        let replan = self
            .nodes
            .get(&record.id)
            .is_none_or(|old| !old.places_like(&record));
        self.nodes.insert(record.id, record);
        self.needs_plan |= replan;
        Ok(())
    }

    /// Forgets a node and its replicas.
    pub fn remove_node(&mut self, id: &NodeId) -> anyhow::Result<()> {
        self.kv.delete(NODES, id.as_bytes())?;
        self.nodes.remove(id);
        self.live.remove(id);
        let holding: Vec<BundleId> = self.placed_on(id).map(|(b, _)| b).collect();
        for b in holding {
            self.set_replica(b, *id, None)?;
        }
        self.needs_plan = true;
        Ok(())
    }

    /// Writes a token record.
    pub fn save_token(&mut self, hash: String, record: TokenRecord) -> anyhow::Result<()> {
        self.put(TOKENS, hash.as_bytes(), &TokenRow::from(&record))?;
        self.tokens.insert(hash, record);
        Ok(())
    }

    /// Deletes a token.
    pub fn delete_token(&mut self, hash: &str) -> anyhow::Result<()> {
        self.kv.delete(TOKENS, hash.as_bytes())?;
        self.tokens.remove(hash);
        Ok(())
    }

    /// Writes a bundle record (publishing it again un-retires it).
    pub fn save_bundle(&mut self, id: BundleId, record: BundleRecord) -> anyhow::Result<()> {
        self.put(BUNDLES, id.hash().as_bytes(), &BundleRow::from(&record))?;
        if self.retired.remove(&id) {
            self.kv.delete(RETIRED, id.hash().as_bytes())?;
        }
        self.bundles.insert(id, record);
        self.refresh_plan_view(id);
        self.needs_plan = true;
        Ok(())
    }

    /// Unpublishes a bundle: its replicas are forgotten and nodes told to delete it.
    pub fn retire_bundle(&mut self, id: BundleId) -> anyhow::Result<()> {
        self.kv.delete(BUNDLES, id.hash().as_bytes())?;
        self.bundles.remove(&id);
        self.refresh_plan_view(id);
        let nodes: Vec<NodeId> = self
            .replicas
            .get(&id)
            .map(|r| r.keys().copied().collect())
            .unwrap_or_default();
        for n in nodes {
            self.set_replica(id, n, None)?;
        }
        self.put(RETIRED, id.hash().as_bytes(), &true)?;
        self.retired.insert(id);
        self.needs_plan = true;
        Ok(())
    }

    /// Sets (or, with `None`, forgets) one replica's state.
    pub fn set_replica(
        &mut self,
        bundle: BundleId,
        node: NodeId,
        state: Option<ReplicaState>,
    ) -> anyhow::Result<()> {
        let key = replica_bytes(&bundle, &node);
        // A copy made again, or gone, must prove itself again.
        if matches!(state, None | Some(ReplicaState::Copying))
            && self.proven.remove(&(bundle, node))
        {
            self.kv.delete(PROVEN, &key)?;
        }
        match state {
            Some(s) => {
                self.put(REPLICAS, &key, &ReplicaRow::from(s))?;
                self.replicas.entry(bundle).or_default().insert(node, s);
                self.by_node.entry(node).or_default().insert(bundle);
            }
            None => {
                self.kv.delete(REPLICAS, &key)?;
                if let Some(held) = self.by_node.get_mut(&node) {
                    held.remove(&bundle);
                    if held.is_empty() {
                        self.by_node.remove(&node);
                    }
                }
                if let Some(r) = self.replicas.get_mut(&bundle) {
                    r.remove(&node);
                    if r.is_empty() {
                        self.replicas.remove(&bundle);
                    }
                }
            }
        }
        let any_releasing = self
            .replicas
            .get(&bundle)
            .is_some_and(|r| r.values().any(|s| *s == ReplicaState::Releasing));
        if any_releasing {
            self.releasing.insert(bundle);
        } else {
            self.releasing.remove(&bundle);
        }
        self.refresh_plan_view(bundle);
        Ok(())
    }

    /// The bundles with a copy being released.
    pub fn releasing(&self) -> &BTreeSet<BundleId> {
        &self.releasing
    }

    /// Records that a complete copy passed a check under load.
    pub fn set_proven(&mut self, bundle: BundleId, node: NodeId) -> anyhow::Result<()> {
        self.put(PROVEN, &replica_bytes(&bundle, &node), &true)?;
        self.proven.insert((bundle, node));
        Ok(())
    }

    /// The replicas placed on `node` and their states.
    pub fn placed_on<'a>(
        &'a self,
        node: &'a NodeId,
    ) -> impl Iterator<Item = (BundleId, ReplicaState)> + 'a {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(move |b| {
                self.replicas
                    .get(b)
                    .and_then(|r| r.get(node))
                    .map(|s| (*b, *s))
            })
    }

    /// Whether the by-node index lists exactly the replicas, and the releasing
    /// set and the plan's view agree with them (checked by tests).
    #[cfg(test)]
    pub(crate) fn index_is_consistent(&self) -> bool {
        let from_replicas: BTreeSet<(NodeId, BundleId)> = self
            .replicas
            .iter()
            .flat_map(|(b, r)| r.keys().map(move |n| (*n, *b)))
            .collect();
        let from_index: BTreeSet<(NodeId, BundleId)> = self
            .by_node
            .iter()
            .flat_map(|(n, bs)| bs.iter().map(move |b| (*n, *b)))
            .collect();
        let releasing: BTreeSet<BundleId> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.values().any(|s| *s == ReplicaState::Releasing))
            .map(|(b, _)| *b)
            .collect();
        from_replicas == from_index
            && releasing == self.releasing
            && self.built_plan_view() == self.plan_view
    }

    /// Points `name` at `bundle`, keeping the history.
    pub fn set_name(&mut self, name: &str, bundle: BundleId) -> anyhow::Result<()> {
        let mut record = self.names.get(name).cloned().unwrap_or(NameRecord {
            history: Vec::new(),
        });
        if record.current() == Some(bundle) {
            return Ok(());
        }
        record.history.push(NameChange {
            at: unix_now(),
            bundle,
        });
        self.put(NAMES, name.as_bytes(), &NameRow::from(&record))?;
        self.names.insert(name.to_owned(), record);
        self.names_version += 1;
        self.put(META, b"names_version", &self.names_version.to_string())?;
        Ok(())
    }

    /// Whether `node` is heard from within `down_after`.
    pub fn is_up(&self, node: &NodeId, now: Instant, down_after: Duration) -> bool {
        self.live
            .get(node)
            .is_some_and(|l| now.saturating_duration_since(l.last_seen) < down_after)
    }

    /// Whether `node` is up and not marked unreliable: its copies count.
    pub fn is_trusted(&self, node: &NodeId, now: Instant, down_after: Duration) -> bool {
        self.nodes.get(node).is_some_and(|n| !n.trust.unreliable)
            && self.is_up(node, now, down_after)
    }

    /// Nodes holding a complete copy of `bundle` (releasing ones count: they
    /// are whole until deleted) that are up and trusted.
    pub fn live_holders<'a>(
        &'a self,
        bundle: &BundleId,
        now: Instant,
        down_after: Duration,
    ) -> impl Iterator<Item = NodeId> + 'a {
        self.replicas
            .get(bundle)
            .into_iter()
            .flatten()
            .filter(move |(n, s)| s.is_whole() && self.is_trusted(n, now, down_after))
            .map(|(n, _)| *n)
    }

    /// Complete copies of `bundle` on trusted nodes that are up: what
    /// browsers and copies can use.
    pub fn live_complete(&self, bundle: &BundleId, now: Instant, down_after: Duration) -> usize {
        self.live_holders(bundle, now, down_after).count()
    }

    /// The copies of `bundle` a release may rely on: complete, proven under
    /// load, on trusted nodes that are up and heard from since the start.
    pub fn counted_copies(&self, bundle: &BundleId, now: Instant, down_after: Duration) -> usize {
        self.live_holders(bundle, now, down_after)
            .filter(|n| self.proven.contains(&(*bundle, *n)) && self.reported(n))
            .count()
    }

    /// Whether `node` was heard from since the coordinator started.
    pub fn reported(&self, node: &NodeId) -> bool {
        self.live.get(node).is_some_and(|l| !l.assumed)
    }

    /// Whether `bundle` is published and has fewer counted copies than it wants.
    pub fn short_of_copies(&self, bundle: &BundleId, now: Instant, down_after: Duration) -> bool {
        self.bundles
            .get(bundle)
            .is_some_and(|b| self.counted_copies(bundle, now, down_after) < usize::from(b.replicas))
    }

    /// Distinct sites among nodes not draining.
    pub fn site_count(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| !n.draining)
            .map(|n| (&n.region, &n.site))
            .collect::<BTreeSet<_>>()
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeRecord {
        let contact = Contact {
            https_url: "https://127.0.0.1:1".into(),
            quic: "127.0.0.1:2".parse().unwrap(),
            https_cert_sha256: String::new(),
        };
        NodeRecord::joined(
            NodeId::from_bytes([n; 32]),
            "r",
            &format!("s{n}"),
            1 << 30,
            contact,
        )
    }

    fn record() -> BundleRecord {
        BundleRecord {
            size: 5,
            files: 1,
            replicas: 2,
            ..BundleRecord::default()
        }
    }

    #[test]
    fn state_survives_a_reload_from_the_same_tables() -> anyhow::Result<()> {
        let tables = std::sync::Arc::new(MemoryKv::default());
        let now = Instant::now();
        let bundle = BundleId::of_manifest(b"m");
        {
            let mut c = Cluster::load(Box::new(tables.clone()), now)?;
            c.save_node(node(1))?;
            c.save_node(node(2))?;
            c.save_bundle(bundle, record())?;
            c.set_replica(bundle, node(1).id, Some(ReplicaState::Complete))?;
            c.set_replica(bundle, node(2).id, Some(ReplicaState::Copying))?;
            c.set_name("maths/6e", bundle)?;
            c.set_admin_hash(secret_hash(b"t"))?;
            c.remove_node(&node(2).id)?;
            c.flush()?;
        }
        let c = Cluster::load(Box::new(tables), now)?;
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(
            c.replicas[&bundle].len(),
            1,
            "the removed node's replica is gone"
        );
        assert_eq!(c.replicas[&bundle][&node(1).id], ReplicaState::Complete);
        assert!(
            c.index_is_consistent(),
            "the by-node index is rebuilt at load"
        );
        assert_eq!(c.placed_on(&node(1).id).count(), 1);
        assert_eq!(c.names["maths/6e"].current(), Some(bundle));
        assert!(
            c.names_version > 1,
            "a reload moves past the versions handed out (1): {}",
            c.names_version
        );
        assert_eq!(c.admin_hash, Some(secret_hash(b"t")));
        assert!(
            c.is_up(&node(1).id, now, Duration::from_secs(1)),
            "up until proven down"
        );
        Ok(())
    }

    #[test]
    fn retiring_a_bundle_forgets_its_replicas() -> anyhow::Result<()> {
        let mut c = Cluster::load(Box::new(MemoryKv::default()), Instant::now())?;
        let bundle = BundleId::of_manifest(b"m");
        c.save_bundle(bundle, record())?;
        c.set_replica(bundle, node(1).id, Some(ReplicaState::Complete))?;
        c.retire_bundle(bundle)?;
        assert!(c.replicas.is_empty() && c.bundles.is_empty());
        assert!(c.retired.contains(&bundle));
        c.save_bundle(bundle, record())?;
        assert!(!c.retired.contains(&bundle), "publishing again un-retires");
        Ok(())
    }
}
