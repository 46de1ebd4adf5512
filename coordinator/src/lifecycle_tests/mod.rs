//! The replica lifecycle driven the way the daemon drives it: nodes send
//! heartbeats listing what they hold, their claims are checked (a check passes
//! when the simulated node really holds the bundle) and confirmed, and a tick
//! notices down nodes, re-plans when something changed, runs the checks under
//! load and releases replaced copies. Time is passed in; nothing sleeps.
//!
//! [`Sim`] is the harness; [`repair`] tests placement, repair, release, names
//! and routing; [`trust`] what members' claims are worth; [`preview`] what an
//! operator's preview says taking nodes out costs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cartable_proto::control::{Contact, Heartbeat, Orders};

use super::*;
use crate::state::{BundleRecord, Kv, MemoryKv, NodeRecord};
use ReplicaState::{Complete, Copying, Releasing};

mod preview;
mod repair;
mod trust;

/// Plans again and moves replica states toward the plan, all at once: the
/// daemon's tick with nothing happening between its steps.
fn replan(
    c: &mut Cluster,
    policy: &Policy,
    now: Instant,
    eligible: &Eligibility,
) -> anyhow::Result<()> {
    c.needs_plan = false;
    PlanInputs::take(c, policy, now, eligible)
        .plan()
        .apply(c, policy, now)?;
    // Only a change between the inputs and the application asks for another.
    anyhow::ensure!(
        !c.needs_plan,
        "a plan asked for another with nothing changed"
    );
    Ok(())
}

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

/// The record of a small bundle of `replicas` copies, as published.
fn record(replicas: u8) -> BundleRecord {
    BundleRecord {
        size: 1000,
        files: 1,
        replicas,
        ..BundleRecord::default()
    }
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
        self.c.save_bundle(id, record(replicas))?;
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
