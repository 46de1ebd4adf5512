//! The replica lifecycle driven the way the daemon drives it: nodes send
//! heartbeats listing what they hold, their claims are checked (a check passes
//! when the simulated node really holds the bundle) and confirmed, and a tick
//! notices down nodes, re-plans when something changed, runs the checks under
//! load and releases replaced copies. Time is passed in; nothing sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cartable_proto::control::{Contact, Heartbeat, Orders};

use super::*;
use crate::state::{BundleRecord, Kv, MemoryKv, NodeRecord};
use ReplicaState::{Complete, Copying, Releasing};

const SECOND: Duration = Duration::from_secs(1);
const CAPACITY: u64 = 1 << 40;

/// Six nodes, each on its own site, three sites in each of two regions.
const SIX: [(&str, &str); 6] = [
    ("est", "strasbourg"),
    ("est", "metz"),
    ("est", "nancy"),
    ("ouest", "rennes"),
    ("ouest", "nantes"),
    ("ouest", "brest"),
];

/// What one simulated node holds and says.
#[derive(Debug, Default)]
struct SimNode {
    store: BTreeSet<BundleId>,
    load: u32,
    names_version: u64,
    silent: bool,
    /// Claims to hold every bundle its orders name, holding none of them.
    lies: bool,
    /// What a lying node claims.
    claimed: BTreeSet<BundleId>,
}

/// A coordinator and its nodes, on a clock moved by hand.
struct Sim {
    c: Cluster,
    policy: Policy,
    now: Instant,
    last: Eligibility,
    nodes: BTreeMap<NodeId, SimNode>,
    /// Whether nodes fetch (one bundle per heartbeat) what their orders say.
    follow_orders: bool,
}

/// A heartbeat from an idle node holding `held`.
fn heartbeat(held: Vec<BundleId>) -> Heartbeat {
    Heartbeat {
        contact: contact(),
        capacity: CAPACITY,
        used: 0,
        load: 0,
        held,
        failures: Vec::new(),
        damaged: 0,
        names_version: 0,
    }
}

fn contact() -> Contact {
    Contact {
        https_url: "https://127.0.0.1:1".into(),
        quic: "127.0.0.1:2".parse().expect("a socket address"),
        https_cert_sha256: String::new(),
    }
}

impl Sim {
    fn new(places: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::with_kv(Box::new(MemoryKv::default()), places)
    }

    /// Joins one node per place and hears from each once.
    fn with_kv(kv: Box<dyn Kv>, places: &[(&str, &str)]) -> anyhow::Result<Self> {
        let now = Instant::now();
        let mut c = Cluster::load(kv, now)?;
        let mut nodes = BTreeMap::new();
        for (i, (region, site)) in (1u8..).zip(places) {
            let id = NodeId::from_bytes([i; 32]);
            c.save_node(NodeRecord::joined(id, region, site, CAPACITY, contact()))?;
            nodes.insert(id, SimNode::default());
        }
        let mut sim = Self {
            c,
            policy: Policy::default(),
            now,
            last: Eligibility::default(),
            nodes,
            follow_orders: false,
        };
        sim.step(Duration::ZERO)?;
        Ok(sim)
    }

    /// One heartbeat from `id`, answered as the daemon answers it; the node then
    /// applies its orders.
    fn beat(&mut self, id: NodeId) -> anyhow::Result<Orders> {
        let node = &self.nodes[&id];
        let beat = Heartbeat {
            load: node.load,
            names_version: node.names_version,
            ..heartbeat(node.store.union(&node.claimed).copied().collect())
        };
        let claims = apply_heartbeat(&mut self.c, id, &beat, &self.policy, self.now)?;
        let orders = orders_for(&self.c, &id, &self.policy, self.now);
        for bundle in claims {
            if self.nodes[&id].store.contains(&bundle) {
                confirm_copy(&mut self.c, bundle, id, &self.policy, self.now)?;
            } else {
                crate::trust::refuted(&mut self.c, id, bundle)?;
            }
        }
        let node = self.nodes.get_mut(&id).context("unknown node")?;
        if node.lies {
            node.claimed = orders.hold.iter().map(|h| h.bundle).collect();
        }
        let kept: BTreeSet<BundleId> = orders.hold.iter().map(|h| h.bundle).collect();
        node.store
            .retain(|b| kept.contains(b) || !orders.release.contains(b));
        if let Some(names) = &orders.names {
            node.names_version = names.version;
        }
        if self.follow_orders
            && !node.lies
            && let Some(order) = orders
                .hold
                .iter()
                .find(|h| !h.sources.is_empty() && !node.store.contains(&h.bundle))
        {
            node.store.insert(order.bundle);
        }
        Ok(orders)
    }

    /// The daemon's lifecycle tick.
    fn tick(&mut self) -> anyhow::Result<()> {
        let eligible = eligibility(&mut self.c, &self.policy, self.now);
        if self.c.needs_plan || eligible != self.last {
            replan(&mut self.c, &self.policy, self.now, &eligible)?;
            self.last = eligible;
        }
        self.check_under_load()?;
        release_replaced(&mut self.c, &self.policy, self.now)
    }

    /// The checks under load the daemon starts: passed by copies really held.
    fn check_under_load(&mut self) -> anyhow::Result<()> {
        let due: Vec<(BundleId, NodeId)> =
            crate::trust::awaiting_proof(&self.c, self.now, self.policy.down_after).collect();
        for (bundle, node) in due {
            if self.nodes[&node].store.contains(&bundle) {
                crate::trust::proven(&mut self.c, node, bundle)?;
            } else {
                crate::trust::refuted(&mut self.c, node, bundle)?;
            }
        }
        Ok(())
    }

    /// Moves the clock, hears from every node not silent, then ticks.
    fn step(&mut self, elapsed: Duration) -> anyhow::Result<BTreeMap<NodeId, Orders>> {
        self.now += elapsed;
        let mut orders = BTreeMap::new();
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            if !self.nodes[&id].silent {
                orders.insert(id, self.beat(id)?);
            }
        }
        self.tick()?;
        assert!(self.c.index_is_consistent(), "the by-node index drifted");
        Ok(orders)
    }

    /// Steps one heartbeat at a time until `span` has passed.
    fn run_for(&mut self, span: Duration) -> anyhow::Result<()> {
        let end = self.now + span;
        while self.now < end {
            let elapsed = self.policy.heartbeat.min(end - self.now);
            self.step(elapsed)?;
        }
        Ok(())
    }

    /// Publishes a bundle; the next tick places it.
    fn publish(&mut self, tag: &str, replicas: u8) -> anyhow::Result<BundleId> {
        let id = BundleId::of_manifest(tag.as_bytes());
        let record = BundleRecord {
            size: 1000,
            files: 1,
            replicas,
            ..BundleRecord::default()
        };
        self.c.save_bundle(id, record)?;
        self.tick()?;
        Ok(id)
    }

    /// `node` now holds `bundle` (uploaded or fetched) and says so.
    fn fetch(&mut self, bundle: BundleId, node: NodeId) -> anyhow::Result<Orders> {
        self.node(node).store.insert(bundle);
        self.beat(node)
    }

    /// Publishes and gets every placed copy complete.
    fn publish_complete(&mut self, tag: &str, replicas: u8) -> anyhow::Result<BundleId> {
        let id = self.publish(tag, replicas)?;
        for node in self.holders(&id, Copying) {
            self.fetch(id, node)?;
        }
        Ok(id)
    }

    fn states(&self, bundle: &BundleId) -> BTreeMap<NodeId, ReplicaState> {
        self.c.replicas.get(bundle).cloned().unwrap_or_default()
    }

    fn holders(&self, bundle: &BundleId, state: ReplicaState) -> Vec<NodeId> {
        self.states(bundle)
            .into_iter()
            .filter(|(_, s)| *s == state)
            .map(|(n, _)| n)
            .collect()
    }

    /// Copies that are Complete or Releasing: whole, whatever the plan says.
    fn whole(&self, bundle: &BundleId) -> usize {
        self.holders(bundle, Complete).len() + self.holders(bundle, Releasing).len()
    }

    fn node(&mut self, id: NodeId) -> &mut SimNode {
        self.nodes.entry(id).or_default()
    }

    /// One heartbeat interval.
    fn next(&mut self) -> anyhow::Result<BTreeMap<NodeId, Orders>> {
        self.step(self.policy.heartbeat)
    }

    /// A node the plan did not give `bundle`.
    fn left_out(&self, bundle: &BundleId) -> anyhow::Result<NodeId> {
        let placed = self.states(bundle);
        let outside = self.nodes.keys().find(|n| !placed.contains_key(n));
        outside.copied().context("a node the plan left out")
    }

    /// The publisher is given an upload grant naming `node`.
    fn grant(&mut self, bundle: BundleId, node: NodeId) -> anyhow::Result<()> {
        let mut record = self.c.bundles[&bundle].clone();
        record.granted(node);
        self.c.save_bundle(bundle, record)
    }

    /// Drains a node holding a complete copy of `bundle`; the tick re-plans.
    fn drain_a_holder(&mut self, bundle: &BundleId) -> anyhow::Result<NodeId> {
        let holder = self.holders(bundle, Complete)[0];
        self.drain(holder)?;
        self.tick()?;
        Ok(holder)
    }

    fn drain(&mut self, node: NodeId) -> anyhow::Result<()> {
        let mut record = self.c.nodes[&node].clone();
        record.draining = true;
        self.c.save_node(record)
    }
}

fn held(orders: &Orders, bundle: &BundleId) -> Option<Vec<NodeId>> {
    let order = orders.hold.iter().find(|h| h.bundle == *bundle);
    order.map(|h| h.sources.clone())
}

#[test]
fn a_new_bundle_is_placed_on_distinct_sites_and_copied_from_its_upload() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish("lesson", 3)?;
    let placed = sim.holders(&b, Copying);
    let sites: BTreeSet<&str> = placed.iter().map(|n| &*sim.c.nodes[n].site).collect();
    assert_eq!((placed.len(), sites.len()), (3, 3), "one copy per site");

    sim.fetch(b, placed[0])?;
    assert_eq!(sim.states(&b)[&placed[0]], Complete);
    let orders = sim.next()?;
    for n in &placed[1..] {
        assert_eq!(held(&orders[n], &b), Some(vec![placed[0]]), "upload");
        sim.fetch(b, *n)?;
    }
    let orders = sim.next()?;
    assert_eq!(sim.holders(&b, Complete), placed);
    assert!(orders.values().all(|o| o.release.is_empty()));
    Ok(())
}

#[test]
fn a_drained_copy_is_held_until_its_replacement_is_verified() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let drained = sim.drain_a_holder(&b)?;
    let orders = sim.next()?;
    assert_eq!(sim.states(&b)[&drained], Releasing);
    let new = sim.holders(&b, Copying);
    assert_eq!(new.len(), 1, "{:?}", sim.states(&b));
    assert!(held(&orders[&drained], &b).is_some() && orders[&drained].release.is_empty());
    let sources = held(&orders[&new[0]], &b).context("the new node copies")?;
    assert!(sources.contains(&drained), "a releasing copy is a source");

    sim.fetch(b, new[0])?;
    assert!(held(&sim.beat(drained)?, &b).is_some(), "until the tick");
    sim.tick()?;
    assert!(!sim.states(&b).contains_key(&drained), "forgotten");
    assert!(sim.nodes[&drained].store.contains(&b), "still reported");
    let orders = sim.beat(drained)?;
    assert_eq!((held(&orders, &b), orders.release), (None, vec![b]));
    assert_eq!(sim.holders(&b, Complete).len(), 3);
    Ok(())
}

#[test]
fn a_down_node_keeps_its_copies_until_the_repair_delay() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let before = sim.states(&b);
    let down = sim.holders(&b, Complete)[0];
    sim.node(down).silent = true;
    sim.run_for(sim.policy.down_after + SECOND)?;
    assert!(sim.c.down_since.contains_key(&down));
    assert_eq!(sim.states(&b), before, "two live copies: wait for the node");

    sim.run_for(sim.policy.repair_delay)?;
    assert_eq!(sim.states(&b)[&down], Releasing);
    let new = sim.holders(&b, Copying);
    assert_eq!(new.len(), 1);
    let sources = held(&sim.beat(new[0])?, &b).context("the new node copies")?;
    let up: Vec<NodeId> = before.into_keys().filter(|n| *n != down).collect();
    assert_eq!(sources, up, "up sources only");
    sim.fetch(b, new[0])?;
    sim.tick()?;
    assert!(!sim.states(&b).contains_key(&down));
    assert_eq!(sim.holders(&b, Complete).len(), 3);
    Ok(())
}

#[test]
fn a_bundle_left_with_one_live_copy_is_repaired_at_once_through_later_plans() -> anyhow::Result<()>
{
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let placed = sim.holders(&b, Complete);
    sim.node(placed[1]).silent = true;
    sim.node(placed[2]).silent = true;
    sim.run_for(sim.policy.down_after + SECOND)?;
    assert!(sim.now < sim.c.down_since[&placed[1]] + sim.policy.repair_delay);
    assert_eq!(sim.holders(&b, Releasing), placed[1..]);
    let new = sim.holders(&b, Copying);
    assert_eq!(new.len(), 2, "{:?}", sim.states(&b));

    let repairing = sim.states(&b);
    sim.publish("another lesson", 3)?;
    assert_eq!(sim.states(&b), repairing, "a later plan keeps the repair");
    for n in &new {
        assert_eq!(held(&sim.beat(*n)?, &b), Some(vec![placed[0]]));
    }
    for n in new {
        sim.fetch(b, n)?;
    }
    sim.tick()?;
    assert_eq!(sim.states(&b).len(), 3, "the down copies are forgotten");
    assert_eq!(sim.holders(&b, Complete).len(), 3);

    // Within the delay, later plans neither undo the repair nor give the
    // down nodes new copies to wait for.
    let repaired = sim.states(&b);
    let third = sim.publish("a third lesson", 3)?;
    sim.run_for(sim.policy.heartbeat * 5)?;
    assert_eq!(sim.states(&b), repaired, "the finished repair stays");
    for lesson in [BundleId::of_manifest(b"another lesson"), third] {
        assert!(
            sim.states(&lesson).keys().all(|n| !placed[1..].contains(n)),
            "a new copy placed on a down node"
        );
    }
    Ok(())
}

#[test]
fn losing_a_copy_beside_a_down_node_starts_an_urgent_repair() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let placed = sim.holders(&b, Complete);
    sim.node(placed[0]).silent = true;
    sim.run_for(sim.policy.down_after + SECOND)?;
    assert_eq!(sim.holders(&b, Complete), placed, "two live copies: wait");

    sim.node(placed[1]).store.remove(&b);
    sim.next()?;
    assert_eq!(sim.c.live_complete(&b, sim.now, sim.policy.down_after), 1);
    assert_eq!(sim.states(&b)[&placed[0]], Releasing);
    assert_eq!(sim.states(&b)[&placed[1]], Copying);
    assert_eq!(sim.holders(&b, Copying).len(), 2, "re-placed now");
    Ok(())
}

#[test]
fn down_copies_with_nowhere_to_go_are_kept_for_their_return() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX[..3])?;
    let b = sim.publish_complete("lesson", 3)?;
    let placed = sim.holders(&b, Complete);
    for n in &placed[1..] {
        sim.node(*n).silent = true;
    }
    sim.run_for(sim.policy.repair_delay + sim.policy.down_after)?;
    assert_eq!(sim.c.unplaced.len(), 1, "nowhere to repair");
    assert_eq!(sim.whole(&b), 3, "{:?}", sim.states(&b));

    for n in &placed[1..] {
        sim.node(*n).silent = false;
    }
    let orders = sim.next()?;
    assert!(orders.values().all(|o| o.release.is_empty()), "{orders:?}");
    sim.next()?;
    assert_eq!(sim.holders(&b, Complete), placed);
    Ok(())
}

#[test]
fn whole_copies_never_drop_while_replacements_copy() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let bundles: Vec<BundleId> = (0..4)
        .map(|i| sim.publish_complete(&format!("lesson {i}"), 3))
        .collect::<anyhow::Result<_>>()?;
    sim.follow_orders = true;
    let first = sim.holders(&bundles[0], Complete);
    sim.drain(first[0])?;
    sim.node(first[1]).silent = true;
    for _ in 0..200 {
        sim.next()?;
        for b in &bundles {
            assert!(sim.whole(b) >= 3, "{b}: {:?}", sim.states(b));
        }
    }
    for b in &bundles {
        assert_eq!(sim.holders(b, Complete).len(), 3, "{b}");
        assert_eq!(sim.states(b).len(), 3, "{b}: old copies released");
        assert!(!sim.states(b).contains_key(&first[0]), "{b}: drained");
    }
    Ok(())
}

#[test]
fn a_lost_complete_copy_is_copied_again_and_a_lost_releasing_one_forgotten() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let placed = sim.holders(&b, Complete);
    sim.node(placed[0]).store.remove(&b);
    let orders = sim.beat(placed[0])?;
    assert_eq!(sim.states(&b)[&placed[0]], Copying);
    assert_eq!(held(&orders, &b), Some(placed[1..].to_vec()));

    sim.drain(placed[1])?;
    sim.tick()?;
    assert_eq!(sim.states(&b)[&placed[1]], Releasing);
    sim.node(placed[1]).store.remove(&b);
    sim.beat(placed[1])?;
    assert!(!sim.states(&b).contains_key(&placed[1]));
    Ok(())
}

#[test]
fn storm_control_runs_the_most_endangered_copy_first() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX[..3])?;
    sim.policy.copies_per_node = 1;
    let [x, y, z] = [
        sim.publish("x", 3)?,
        sim.publish("y", 3)?,
        sim.publish("z", 3)?,
    ];
    let [a, b, c]: [NodeId; 3] = sim.holders(&x, Copying).try_into().expect("3 nodes");
    for (bundle, node) in [(x, a), (z, a), (y, a), (y, b)] {
        sim.fetch(bundle, node)?;
    }
    let orders = sim.beat(c)?;
    assert_eq!(orders.hold.len(), 1, "one at a time: {:?}", orders.hold);
    let active = orders.hold[0].bundle;
    assert!(active == x || active == z, "one copy left: first");
    let (_, queue) = repair_queue(&sim.c, &sim.policy, sim.now);
    let waiting: Vec<(BundleId, usize)> = queue
        .iter()
        .filter(|q| q.node == c)
        .map(|q| (q.bundle, q.complete))
        .collect();
    let other = if active == x { z } else { x };
    assert_eq!(waiting, vec![(other, 1), (y, 2)]);
    assert!(queue.is_sorted_by_key(|q| q.complete));
    Ok(())
}

#[test]
fn unpublished_bundles_are_released_but_foreign_ones_never() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let node = sim.holders(&b, Complete)[0];
    let foreign = BundleId::of_manifest(b"added on the node itself");
    sim.node(node).store.insert(foreign);
    sim.c.retire_bundle(b)?;
    let orders = sim.beat(node)?;
    assert_eq!((held(&orders, &b), orders.release), (None, vec![b]));
    sim.run_for(sim.policy.repair_delay)?;
    assert!(sim.nodes[&node].store.contains(&foreign), "never released");
    assert!(!sim.c.replicas.contains_key(&foreign));
    Ok(())
}

#[test]
fn the_name_table_goes_only_to_stale_nodes() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish("lesson", 3)?;
    let node = NodeId::from_bytes([1; 32]);
    assert_eq!(sim.beat(node)?.names, None);
    sim.c.set_name("maths/6e", b)?;
    let table = sim.beat(node)?.names.context("stale: sent")?;
    assert_eq!(table.version, sim.c.names_version);
    assert_eq!(table.names, vec![("maths/6e".to_owned(), b)]);
    assert_eq!(sim.beat(node)?.names, None, "up to date: not sent");
    Ok(())
}

#[test]
fn a_name_given_at_publish_moves_only_once_a_copy_is_verified() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let old = sim.publish_complete("lesson v1", 3)?;
    sim.c.set_name("maths/6e", old)?;
    let new = BundleId::of_manifest(b"lesson v2");
    let record = BundleRecord {
        size: 1000,
        files: 1,
        replicas: 3,
        pending_name: Some("maths/6e".into()),
        ..BundleRecord::default()
    };
    sim.c.save_bundle(new, record)?;
    sim.tick()?;
    assert_eq!(
        sim.c.names["maths/6e"].current(),
        Some(old),
        "still uploading"
    );
    let upload = sim.holders(&new, Copying)[0];
    sim.fetch(new, upload)?;
    assert_eq!(sim.c.names["maths/6e"].current(), Some(new));
    assert_eq!(sim.c.bundles[&new].pending_name, None);
    Ok(())
}

#[test]
fn an_upload_finished_after_the_plan_moved_on_is_kept_until_replaced() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish("lesson", 2)?;
    let outside = sim.left_out(&b)?;
    // The upload lands on a node the plan no longer wants: the only copy.
    sim.grant(b, outside)?;
    let orders = sim.fetch(b, outside)?;
    assert!(
        !orders.release.contains(&b),
        "the only copy is not released"
    );
    assert_eq!(sim.states(&b).get(&outside), Some(&Releasing));
    sim.follow_orders = true;
    for _ in 0..5 {
        sim.next()?;
    }
    assert_eq!(sim.holders(&b, Complete).len(), 2, "{:?}", sim.states(&b));
    assert!(
        !sim.states(&b).contains_key(&outside),
        "released once replaced"
    );
    assert!(!sim.nodes[&outside].store.contains(&b));
    Ok(())
}

#[test]
fn routing_prefers_a_near_then_idle_node_with_a_complete_copy() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let uploading = sim.publish("being uploaded", 3)?;
    let to = |sim: &Sim, bundle, region| {
        route(&sim.c, bundle, region, &sim.policy, sim.now)
            .first()
            .copied()
    };
    let placed = sim.holders(&b, Complete);
    let region = sim.c.nodes[&placed[0]].region.clone();
    let (near, far): (Vec<NodeId>, Vec<NodeId>) = placed
        .iter()
        .partition(|n| sim.c.nodes[*n].region == region);
    for (load, n) in (10..).zip(&near) {
        sim.node(*n).load = load;
    }
    sim.next()?;
    assert_eq!(to(&sim, &b, Some(&region)), Some(near[0]), "near first");
    assert_eq!(to(&sim, &b, None), Some(far[0]), "no region: least loaded");
    assert_eq!(
        route(&sim.c, &b, Some(&region), &sim.policy, sim.now).len(),
        3,
        "every copy, for the redirect to fall back on"
    );
    assert_eq!(to(&sim, &uploading, None), None, "no complete copy");

    sim.node(near[0]).silent = true;
    sim.run_for(sim.policy.heartbeat * 3 + SECOND)?;
    assert!(sim.c.is_up(&near[0], sim.now, sim.policy.down_after));
    let next = *near.get(1).unwrap_or(&far[0]);
    assert_eq!(to(&sim, &b, Some(&region)), Some(next), "silent too long");
    for n in &placed {
        sim.node(*n).silent = true;
    }
    sim.run_for(sim.policy.heartbeat * 3 + SECOND)?;
    assert_eq!(to(&sim, &b, None), None, "no complete copy up");
    Ok(())
}

#[test]
fn a_restart_keeps_replica_states_and_counts_nodes_up() -> anyhow::Result<()> {
    let kv = Arc::new(MemoryKv::default());
    let mut sim = Sim::with_kv(Box::new(kv.clone()), &SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    sim.drain(sim.holders(&b, Complete)[0])?;
    sim.tick()?;
    let before = sim.c.replicas.clone();
    assert_eq!(sim.states(&b).len(), 4, "complete, copying and releasing");
    let (policy, restart) = (sim.policy.clone(), sim.now + Duration::from_secs(3600));
    drop(sim);

    let mut c = Cluster::load(Box::new(kv), restart)?;
    assert_eq!(c.replicas, before, "every replica state kept");
    let up_at = |c: &Cluster, at| c.nodes.keys().all(|n| c.is_up(n, at, policy.down_after));
    let down = restart + policy.down_after;
    assert!(up_at(&c, down - SECOND) && !up_at(&c, down), "up at first");
    let eligible = eligibility(&mut c, &policy, restart);
    replan(&mut c, &policy, restart, &eligible)?;
    assert_eq!(c.replicas, before, "a restart moves nothing");
    Ok(())
}

#[test]
fn a_live_copy_is_not_released_while_the_recorded_ones_are_down() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let placed = sim.holders(&b, Complete);
    let upload = sim.left_out(&b)?;
    sim.grant(b, upload)?;
    for n in &placed[1..] {
        sim.node(*n).silent = true;
    }
    // Two of the three recorded copies have gone silent past the grace
    // period; before a tick notices, the upload reports its copy.
    sim.now += sim.policy.down_after + SECOND;
    let orders = sim.fetch(b, upload)?;
    assert!(
        !orders.release.contains(&b),
        "one live copy counted: the upload must not be released"
    );
    assert_eq!(
        sim.states(&b).get(&upload),
        Some(&Releasing),
        "kept as a source"
    );
    assert!(sim.nodes[&upload].store.contains(&b));
    Ok(())
}

#[test]
fn a_new_copy_counts_for_a_release_only_once_proven_under_load() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let drained = sim.drain_a_holder(&b)?;
    let new = sim.holders(&b, Copying)[0];
    sim.fetch(b, new)?;
    assert_eq!(sim.states(&b)[&new], Complete, "the claim check passed");
    release_replaced(&mut sim.c, &sim.policy, sim.now)?;
    assert_eq!(
        sim.states(&b).get(&drained),
        Some(&Releasing),
        "not proven under load yet: the old copy stays"
    );
    sim.tick()?;
    assert!(sim.c.proven.contains(&(b, new)));
    assert!(
        !sim.states(&b).contains_key(&drained),
        "released once proven"
    );
    // A copy made again must prove itself again.
    sim.node(new).store.remove(&b);
    sim.beat(new)?;
    assert!(!sim.c.proven.contains(&(b, new)));
    Ok(())
}

#[test]
fn a_member_claiming_copies_it_lacks_is_marked_and_releases_nothing() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX[..4])?;
    let liar = NodeId::from_bytes([4; 32]);
    sim.node(liar).lies = true;
    let mut bundles = Vec::new();
    for i in 0..6 {
        let b = sim.publish(&format!("lesson {i}"), 3)?;
        for n in sim.holders(&b, Copying).into_iter().filter(|n| *n != liar) {
            sim.fetch(b, n)?;
        }
        bundles.push(b);
    }
    // An honest node drained: its copies are wanted on the liar and the others.
    let drained = NodeId::from_bytes([1; 32]);
    sim.drain(drained)?;
    let honest: Vec<usize> = bundles.iter().map(|b| sim.whole(b)).collect();
    sim.follow_orders = true;
    for _ in 0..20 {
        sim.next()?;
        for (b, before) in bundles.iter().zip(&honest) {
            let on_liar = sim.states(b).get(&liar).copied();
            assert!(matches!(on_liar, None | Some(Copying)), "{b}: {on_liar:?}");
            assert!(
                sim.whole(b) >= *before,
                "{b}: an honest copy released: {:?}",
                sim.states(b)
            );
        }
    }
    for b in bundles
        .iter()
        .filter(|b| sim.nodes[&drained].store.contains(b))
    {
        assert_eq!(
            sim.states(b).get(&drained),
            Some(&Releasing),
            "{b}: kept, no other site"
        );
    }
    let record = &sim.c.nodes[&liar];
    assert!(record.trust.unreliable, "{record:?}");
    assert!(record.trust.failed_checks >= crate::trust::UNRELIABLE_AFTER);
    let status = crate::views::status(&sim.c, &sim.policy);
    assert_eq!(status.nodes_unreliable, vec![liar]);
    assert!(
        sim.c.placed_on(&liar).next().is_none(),
        "an unreliable node is given nothing"
    );
    // A claim of a bundle it was never given is not even checked.
    let beat = heartbeat(bundles.clone());
    assert!(apply_heartbeat(&mut sim.c, liar, &beat, &sim.policy, sim.now)?.is_empty());
    assert!(crate::trust::clear(&mut sim.c, &liar)?);
    assert_eq!(sim.c.nodes[&liar].trust, Default::default());
    Ok(())
}

#[test]
fn claims_count_only_for_bundles_placed_or_uploaded_there() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish("lesson", 3)?;
    let stranger = sim.left_out(&b)?;
    let beat = |sim: &mut Sim| {
        apply_heartbeat(
            &mut sim.c,
            stranger,
            &heartbeat(vec![b]),
            &sim.policy,
            sim.now,
        )
    };
    assert_eq!(beat(&mut sim)?, vec![], "never given: not checked");
    sim.grant(b, stranger)?;
    assert_eq!(beat(&mut sim)?, vec![b], "uploaded there: checked");
    Ok(())
}

#[test]
fn a_claimed_capacity_is_cut_down_to_the_tokens() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let id = NodeId::from_bytes([1; 32]);
    let mut record = sim.c.nodes[&id].clone();
    record.capacity_limit = Some(5000);
    sim.c.save_node(record)?;
    sim.next()?;
    assert_eq!(
        sim.c.nodes[&id].capacity, 5000,
        "heartbeats claim {CAPACITY}"
    );
    let bundles: Vec<BundleId> = (0..20)
        .map(|i| sim.publish(&format!("lesson {i}"), 3))
        .collect::<anyhow::Result<_>>()?;
    let given: usize = bundles
        .iter()
        .filter(|b| sim.states(b).contains_key(&id))
        .count();
    assert!(
        given * 1000 <= 5000,
        "{given} bundles of 1000 bytes placed on it"
    );
    Ok(())
}

#[test]
fn after_a_restart_copies_count_for_a_release_only_once_their_nodes_report() -> anyhow::Result<()> {
    let kv = Arc::new(MemoryKv::default());
    let mut sim = Sim::with_kv(Box::new(kv.clone()), &SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let drained = sim.drain_a_holder(&b)?;
    let new = sim.holders(&b, Copying)[0];
    sim.fetch(b, new)?;
    for node in sim.holders(&b, Complete) {
        crate::trust::proven(&mut sim.c, node, b)?;
    }
    sim.c.flush()?;
    let (policy, restart) = (sim.policy.clone(), sim.now + SECOND);
    drop(sim);

    // The coordinator restarts; the new copy's node died while it was away.
    let mut c = Cluster::load(Box::new(kv), restart)?;
    assert!(
        c.is_up(&new, restart, policy.down_after),
        "up until proven down"
    );
    release_replaced(&mut c, &policy, restart)?;
    assert_eq!(
        c.replicas[&b].get(&drained),
        Some(&Releasing),
        "an assumed copy does not replace a live one"
    );
    // Every holder reports again (the others did at once, the new one too).
    for live in c.live.values_mut() {
        live.assumed = false;
    }
    release_replaced(&mut c, &policy, restart)?;
    assert!(
        !c.replicas[&b].contains_key(&drained),
        "released once they report"
    );
    Ok(())
}

#[test]
fn a_check_finding_gone_a_copy_the_node_no_longer_claims_is_no_strike() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let holders = sim.holders(&b, Complete);
    // Released on orders a crashed coordinator forgot: its heartbeat says so.
    let honest = holders[0];
    if let Some(live) = sim.c.live.get_mut(&honest) {
        live.held.remove(&b);
    }
    crate::trust::refuted(&mut sim.c, honest, b)?;
    assert_eq!(sim.c.nodes[&honest].trust.failed_checks, 0);
    assert_eq!(sim.states(&b)[&honest], Copying, "the copy stops counting");
    // A copy still claimed and not there is a strike.
    let liar = holders[1];
    assert!(sim.c.live[&liar].held.contains(&b));
    crate::trust::refuted(&mut sim.c, liar, b)?;
    assert_eq!(sim.c.nodes[&liar].trust.failed_checks, 1);
    Ok(())
}

#[test]
fn with_no_node_up_nothing_is_re_placed() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let before = sim.states(&b);
    // Every node silent past the grace period (a coordinator restarted
    // before the nodes found it again): nothing to re-place onto.
    for n in sim.nodes.keys().copied().collect::<Vec<_>>() {
        sim.node(n).silent = true;
    }
    sim.run_for(sim.policy.down_after + SECOND)?;
    assert_eq!(sim.states(&b), before, "no copy marked releasing");
    Ok(())
}
