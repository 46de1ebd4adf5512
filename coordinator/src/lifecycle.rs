//! The replica lifecycle, with no IO: time comes in as `now`, so that the same
//! code runs in the daemon and in tests (and later in a simulation).
//!
//! A replica is `Copying` when placed, `Complete` once the node reported it and
//! the coordinator checked random ranges, `Releasing` when the plan moved it
//! away. Make before break: a releasing copy is forgotten — and the node told to
//! delete it — only when the plan keeps as many copies as the bundle wants and
//! every one is complete, proven under load, on a trusted node that is up
//! ([`crate::trust`] says what the coordinator believes). A down node keeps its place for
//! `repair_delay`, unless one of its bundles has fewer complete copies than
//! `min_replicas` on nodes that are up: those are re-placed at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use cartable_placement::{BundleSpec, NodeSpec, Topology};
use cartable_proto::control::{Heartbeat, HoldOrder, Member, NameTable, Orders};
use cartable_proto::{BundleId, NodeId};

use crate::config::Policy;
use crate::state::{Cluster, Liveness, PlanView};
use cartable_proto::api::{QueuedCopy, ReplicaState};

/// Which nodes may take replicas: for the normal plan and for urgent repairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Eligibility {
    /// Not draining, and up or down for less than the repair delay.
    pub normal: BTreeSet<NodeId>,
    /// Not draining and up.
    pub urgent: BTreeSet<NodeId>,
}

impl Eligibility {
    /// Whether some eligible nodes are down while others are up. With no node
    /// up (a restarted coordinator before the first heartbeats, or a network
    /// cut from every node) a re-placement would place nothing and only mark
    /// every copy releasing: there is no urgent plan then.
    fn some_down(&self) -> bool {
        self.normal != self.urgent && !self.urgent.is_empty()
    }
}

/// Notes which nodes are down since when, and which may take replicas.
pub fn eligibility(c: &mut Cluster, policy: &Policy, now: Instant) -> Eligibility {
    let mut e = Eligibility::default();
    let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
    for id in ids {
        let up = c.is_up(&id, now, policy.down_after);
        if up {
            if c.down_since.remove(&id).is_some() {
                tracing::info!(node = %id, "node is back up");
            }
        } else {
            c.down_since.entry(id).or_insert_with(|| {
                tracing::warn!(node = %id, "node is down: no heartbeat within the grace period");
                now
            });
        }
        if !c.nodes[&id].takes_copies() {
            continue;
        }
        let within_delay = c
            .down_since
            .get(&id)
            .is_none_or(|since| now.saturating_duration_since(*since) < policy.repair_delay);
        if within_delay {
            e.normal.insert(id);
        }
        if up {
            e.urgent.insert(id);
        }
    }
    e
}

/// The planner's view of `nodes`.
pub fn topology<'a>(c: &Cluster, nodes: impl IntoIterator<Item = &'a NodeId>) -> Topology {
    Topology {
        nodes: nodes
            .into_iter()
            .map(|id| {
                let n = &c.nodes[id];
                NodeSpec {
                    id: *id,
                    region: n.region.clone(),
                    site: n.site.clone(),
                    capacity: n.capacity,
                }
            })
            .collect(),
    }
}

/// What a plan is made from, taken from the state so that the plan itself,
/// seconds of work at national scale (`benches/README.md`, "Placement at
/// national scale"), can run with the state's lock released.
#[derive(Debug)]
pub struct PlanInputs {
    eligible: Eligibility,
    view: PlanView,
    normal: Topology,
    /// When some eligible nodes are down: the up nodes, where urgent bundles
    /// go at once, and what decides which bundles are urgent.
    urgent: Option<(Topology, DownCopies)>,
}

/// The copies on down nodes that decide, once the plan is made, whether an
/// urgent plan is needed (see [`Plans::apply`]).
#[derive(Debug, Default)]
struct DownCopies {
    /// Complete (or releasing) copies held by down nodes.
    held: BTreeSet<(BundleId, NodeId)>,
    /// Bundles with a copy on a down node and fewer complete copies on up
    /// nodes than they want.
    short: BTreeSet<BundleId>,
}

impl PlanInputs {
    /// The inputs of a plan over the `eligible` nodes.
    pub fn take(c: &Cluster, policy: &Policy, now: Instant, eligible: &Eligibility) -> Self {
        let urgent = eligible.some_down().then(|| {
            let mut down = DownCopies::default();
            for n in eligible.normal.difference(&eligible.urgent) {
                for (b, state) in c.placed_on(n) {
                    if state.is_whole() {
                        down.held.insert((b, *n));
                    }
                    let Some(record) = c.bundles.get(&b) else {
                        continue;
                    };
                    let wanted = usize::from(policy.min_replicas.min(record.replicas));
                    if c.live_complete(&b, now, policy.down_after) < wanted {
                        down.short.insert(b);
                    }
                }
            }
            (topology(c, &eligible.urgent), down)
        });
        Self {
            eligible: eligible.clone(),
            view: c.plan_view(),
            normal: topology(c, &eligible.normal),
            urgent,
        }
    }

    /// Adds `spec` to what is planned (or replaces the bundle's spec), as if
    /// it were published: the plan a publish applies once it is checked.
    pub fn with_bundle(mut self, spec: BundleSpec) -> Self {
        self.view = self.view.with_spec(spec);
        self
    }

    /// Plans: no state, no lock. The plan over up nodes only is made only
    /// when the first puts a bundle on a down node that lacks its copy, or
    /// that holds one of a bundle short of copies.
    pub fn plan(self) -> Plans {
        let (previous, specs) = self.view.split();
        let mut normal = cartable_placement::plan(&self.normal, &specs, &previous);
        let urgent = self.urgent.and_then(|(up, down)| {
            let needed = normal.assignment.iter().any(|(b, nodes)| {
                nodes.iter().any(|n| {
                    !self.eligible.urgent.contains(n)
                        && (!down.held.contains(&(*b, *n)) || down.short.contains(b))
                })
            });
            needed.then(|| cartable_placement::plan(&up, &specs, &previous))
        });
        // Only the bundles the plan moves, or puts on a node that is down, can
        // change a replica's state. At national scale the others are nearly
        // all of them: dropped here, they cost nothing under the state's lock.
        let eligible = &self.eligible;
        let previous = &previous;
        let on_down = |nodes: &Vec<NodeId>| nodes.iter().any(|n| !eligible.urgent.contains(n));
        normal
            .assignment
            .retain(|b, nodes| previous.get(b) != Some(nodes) || on_down(nodes));
        // Of the plan over up nodes, only bundles planned on a down node are used.
        let urgent = urgent.map(|mut up| {
            let used = |b: &BundleId| normal.assignment.get(b).is_some_and(on_down);
            up.assignment.retain(|b, _| used(b));
            up.unplaced.retain(|u| used(&u.bundle));
            Placement::of(up)
        });
        Plans {
            eligible: self.eligible,
            normal: Placement::of(normal),
            urgent,
        }
    }
}

/// A plan as it is applied: where bundles go, and why some are placed on
/// fewer nodes than they want, by bundle (looked up under the state's lock
/// for each bundle placed at once, so not searched there).
#[derive(Debug)]
struct Placement {
    assignment: cartable_placement::Assignment,
    short: BTreeMap<BundleId, String>,
}

impl Placement {
    fn of(plan: cartable_placement::Plan) -> Self {
        let short = plan
            .unplaced
            .iter()
            .map(|u| (u.bundle, describe(u)))
            .collect();
        Self {
            assignment: plan.assignment,
            short,
        }
    }
}

/// Plans made from [`PlanInputs`], to be applied to the state they came from,
/// which may have moved on meanwhile.
#[derive(Debug)]
pub struct Plans {
    eligible: Eligibility,
    normal: Placement,
    urgent: Option<Placement>,
}

impl Plans {
    /// The nodes planned over.
    pub fn eligible(&self) -> &Eligibility {
        &self.eligible
    }

    /// Moves replica states toward the plans. Changes made since the inputs
    /// were taken stand: a bundle unpublished meanwhile is left out, and so
    /// is a node removed; a bundle published meanwhile, or any other change
    /// that asks for a plan, is planned by the next one (`needs_plan`).
    pub fn apply(self, c: &mut Cluster, policy: &Policy, now: Instant) -> anyhow::Result<()> {
        let mut unplaced: BTreeMap<BundleId, String> = self
            .normal
            .short
            .iter()
            .filter(|(b, _)| c.bundles.contains_key(b))
            .map(|(b, why)| (*b, why.clone()))
            .collect();
        let mut targets = Vec::new();
        let mut waiting = false;
        for (b, nodes) in &self.normal.assignment {
            let Some(record) = c.bundles.get(b) else {
                continue;
            };
            let Some(placing) = self.placing(c, policy, now, (b, record.replicas), nodes) else {
                waiting = true;
                continue;
            };
            if let Some(urgency) = placing.at_once {
                if urgency == Urgency::Endangered {
                    tracing::warn!(bundle = %b, "too few complete copies: re-placing without down nodes");
                }
                unplaced.remove(b);
                if let Some(why) = placing.short {
                    unplaced.insert(*b, why.clone());
                }
            }
            targets.push((*b, placing.nodes));
        }
        c.needs_plan |= waiting;
        for (bundle, target) in targets {
            apply_target(c, bundle, &target)?;
        }
        c.unplaced = unplaced;
        Ok(())
    }

    /// What applying the plans would leave `bundle` of `replicas` copies on,
    /// the state being `c`: its nodes in id order (the planned ones, and the
    /// complete copies kept until replaced), and, when it is placed on fewer
    /// nodes than it wants, why.
    pub fn prospect(
        &self,
        c: &Cluster,
        policy: &Policy,
        now: Instant,
        (bundle, replicas): (&BundleId, u8),
    ) -> (Vec<NodeId>, Option<String>) {
        let current = c.replicas.get(bundle).into_iter().flatten();
        let placing = self
            .normal
            .assignment
            .get(bundle)
            .and_then(|nodes| self.placing(c, policy, now, (bundle, replicas), nodes));
        let Some(placing) = placing else {
            let nodes = current.map(|(n, _)| *n).collect();
            return (nodes, self.normal.short.get(bundle).cloned());
        };
        // What `apply_target` keeps besides the planned nodes.
        let kept = current.filter(|(_, s)| **s != ReplicaState::Copying);
        let nodes: BTreeSet<NodeId> = kept.map(|(n, _)| *n).chain(placing.nodes).collect();
        (nodes.into_iter().collect(), placing.short.cloned())
    }

    /// Where the plans put `bundle` of `replicas` copies, planned on `nodes`
    /// by the normal plan, the state being `c`; `None` when it stays as it is
    /// until the next plan.
    fn placing<'a>(
        &'a self,
        c: &Cluster,
        policy: &Policy,
        now: Instant,
        (bundle, replicas): (&BundleId, u8),
        nodes: &'a [NodeId],
    ) -> Option<Placing<'a>> {
        let urgency = urgency(c, policy, now, &self.eligible, (bundle, replicas), nodes);
        let (nodes, placement, at_once) = match (urgency, &self.urgent) {
            (Some(urgency), Some(up)) => {
                let nodes = up.assignment.get(bundle).map_or(nodes, Vec::as_slice);
                (nodes, up, Some(urgency))
            }
            // Copies on down nodes changed since the inputs were taken: the
            // next plan places it at once.
            (Some(_), None) if self.eligible.some_down() => return None,
            _ => (nodes, &self.normal, None),
        };
        Some(Placing {
            nodes: nodes
                .iter()
                .filter(|n| c.nodes.contains_key(n))
                .copied()
                .collect(),
            short: placement.short.get(bundle),
            at_once,
        })
    }
}

/// Where the plans put one bundle.
struct Placing<'a> {
    /// Its nodes, in id order, every one still a member.
    nodes: Vec<NodeId>,
    /// Why the plan they come from places it on fewer nodes than it wants.
    short: Option<&'a String>,
    /// Why, when placed at once by the plan over up nodes.
    at_once: Option<Urgency>,
}

/// Why a bundle is re-placed at once without its down nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Urgency {
    /// Fewer complete copies on up nodes than it wants.
    Endangered,
    /// A down node it is planned on lacks a complete copy.
    Lacking,
}

/// Whether `bundle` of `replicas` copies, planned on `nodes`, is re-placed at once without the
/// down ones: a down node keeps the copies it has until the repair delay, but
/// takes no new ones (they would only wait, and a repair would be undone).
/// Asking the plan, not the previous placement, keeps a repair under way: its
/// down copies are releasing, so the previous placement no longer shows them,
/// but the plan puts them back.
fn urgency(
    c: &Cluster,
    policy: &Policy,
    now: Instant,
    eligible: &Eligibility,
    (bundle, replicas): (&BundleId, u8),
    nodes: &[NodeId],
) -> Option<Urgency> {
    let mut down = nodes
        .iter()
        .filter(|n| !eligible.urgent.contains(n))
        .peekable();
    down.peek()?;
    let wanted = usize::from(policy.min_replicas.min(replicas));
    if c.live_complete(bundle, now, policy.down_after) < wanted {
        return Some(Urgency::Endangered);
    }
    let holds = |n: &NodeId| {
        c.replicas
            .get(bundle)
            .and_then(|r| r.get(n))
            .is_some_and(|s| s.is_whole())
    };
    down.any(|n| !holds(n)).then_some(Urgency::Lacking)
}

fn describe(u: &cartable_placement::Unplaced) -> String {
    format!("{} of {} copies placed: {}", u.placed, u.wanted, u.reason)
}

fn apply_target(c: &mut Cluster, bundle: BundleId, target: &[NodeId]) -> anyhow::Result<()> {
    let current = c.replicas.get(&bundle).cloned().unwrap_or_default();
    for n in target {
        match current.get(n) {
            None => c.set_replica(bundle, *n, Some(ReplicaState::Copying))?,
            Some(ReplicaState::Releasing) => {
                c.set_replica(bundle, *n, Some(ReplicaState::Complete))?
            }
            Some(_) => {}
        }
    }
    for (n, state) in current.iter().filter(|(n, _)| !target.contains(n)) {
        match state {
            ReplicaState::Copying => c.set_replica(bundle, *n, None)?,
            ReplicaState::Complete => c.set_replica(bundle, *n, Some(ReplicaState::Releasing))?,
            ReplicaState::Releasing => {}
        }
    }
    Ok(())
}

/// Forgets releasing copies once the bundle's wanted copies are all placed,
/// complete and proven on trusted nodes that are up.
pub fn release_replaced(c: &mut Cluster, policy: &Policy, now: Instant) -> anyhow::Result<()> {
    let mut done = Vec::new();
    let releasing = c.releasing().iter();
    for (bundle, replicas) in releasing.filter_map(|b| Some((b, c.replicas.get(b)?))) {
        let (releasing, kept): (Vec<_>, Vec<_>) = replicas
            .iter()
            .partition(|(_, s)| **s == ReplicaState::Releasing);
        // A plan short of nodes keeps fewer copies than wanted: the old ones stay.
        let wanted = c.bundles.get(bundle).map_or(0, |b| usize::from(b.replicas));
        let replaced = !kept.is_empty()
            && kept.len() >= wanted
            && kept.iter().all(|(n, s)| {
                **s == ReplicaState::Complete
                    && c.is_trusted(n, now, policy.down_after)
                    && c.reported(n)
                    && c.proven.contains(&(*bundle, **n))
            });
        if replaced {
            done.extend(releasing.iter().map(|(n, _)| (*bundle, **n)));
        }
    }
    for (bundle, node) in done {
        tracing::info!(bundle = %bundle, node = %node, "replacement complete: releasing the old copy");
        c.set_replica(bundle, node, None)?;
    }
    Ok(())
}

/// Records a heartbeat; returns the bundles the node claims that need a spot check.
pub fn apply_heartbeat(
    c: &mut Cluster,
    node: NodeId,
    beat: &Heartbeat,
    policy: &Policy,
    now: Instant,
) -> anyhow::Result<Vec<BundleId>> {
    let held: BTreeSet<BundleId> = beat.held.iter().copied().collect();
    if let Some(record) = c.nodes.get(&node).cloned()
        && record.capacity != record.allowed_capacity(beat.capacity)
    {
        c.save_node(crate::state::NodeRecord {
            capacity: record.allowed_capacity(beat.capacity),
            ..record
        })?;
    }
    crate::contact::reported(c, node, &beat.contact)?;
    crate::failure_reports::count(c, node, &beat.failures, policy.heartbeat, now)?;
    if beat.damaged > 0 {
        tracing::warn!(node = %node, blobs = beat.damaged, "node found damaged blobs while scrubbing");
    }
    let mine: Vec<(BundleId, ReplicaState)> = c.placed_on(&node).collect();
    for (bundle, state) in mine {
        if held.contains(&bundle) {
            continue;
        }
        match state {
            ReplicaState::Complete => {
                tracing::warn!(bundle = %bundle, node = %node, "node lost a complete copy: copying again");
                c.set_replica(bundle, node, Some(ReplicaState::Copying))?;
                // Fewer live copies may make the bundle urgent: only a plan acts on that.
                c.needs_plan = true;
            }
            ReplicaState::Releasing => c.set_replica(bundle, node, None)?,
            ReplicaState::Copying => {}
        }
    }
    // Copies the plan asked for are checked. So is an upload the plan no
    // longer asks for while the bundle is short of copies (it may be the only
    // one): it is kept as a source until replaced. Any other claim is ignored,
    // and any other published bundle the node holds is released by the orders.
    // An unreliable node's claims are not even checked.
    let unreliable = c.nodes.get(&node).is_none_or(|n| n.trust.unreliable);
    let claims = held
        .iter()
        .filter(|b| !unreliable && claim_counts(c, node, b, policy, now))
        .copied()
        .collect();
    let live = c.live.entry(node).or_insert_with(|| Liveness::heard(now));
    live.assumed = false;
    live.last_seen = now;
    live.used = beat.used;
    live.load = beat.load;
    live.held = held;
    live.struck = false;
    live.names_version = beat.names_version;
    Ok(claims)
}

/// Whether `node`'s claim to hold `bundle` may count, once checked: the plan
/// put it there, or it was given the upload and the bundle is short of copies.
fn claim_counts(
    c: &Cluster,
    node: NodeId,
    bundle: &BundleId,
    policy: &Policy,
    now: Instant,
) -> bool {
    match c.replicas.get(bundle).and_then(|r| r.get(&node)) {
        Some(state) => *state == ReplicaState::Copying,
        None => {
            c.bundles
                .get(bundle)
                .is_some_and(|b| b.uploads.contains(&node))
                && c.short_of_copies(bundle, now, policy.down_after)
        }
    }
}

/// Records a copy the coordinator verified on `node`.
pub fn confirm_copy(
    c: &mut Cluster,
    bundle: BundleId,
    node: NodeId,
    policy: &Policy,
    now: Instant,
) -> anyhow::Result<()> {
    if !c.nodes.contains_key(&node) {
        return Ok(());
    }
    // The plan may have moved on while the check ran.
    let state = match c.replicas.get(&bundle).and_then(|r| r.get(&node)) {
        Some(ReplicaState::Copying) => ReplicaState::Complete,
        None if claim_counts(c, node, &bundle, policy, now) => ReplicaState::Releasing,
        _ => return Ok(()),
    };
    tracing::info!(bundle = %bundle, node = %node, ?state, "copy verified");
    c.set_replica(bundle, node, Some(state))?;
    name_when_whole(c, bundle)
}

/// Points a name given at publish at the bundle once a copy of it is verified.
fn name_when_whole(c: &mut Cluster, bundle: BundleId) -> anyhow::Result<()> {
    let Some(mut record) = c.bundles.get(&bundle).cloned() else {
        return Ok(());
    };
    let Some(name) = record.pending_name.take() else {
        return Ok(());
    };
    c.set_name(&name, bundle)?;
    tracing::info!(bundle = %bundle, name, "name now points to the new bundle");
    c.save_bundle(bundle, record)
}

/// Trusted nodes holding a complete copy of `bundle` that are up, except `but`.
pub fn sources(
    c: &Cluster,
    bundle: &BundleId,
    but: Option<&NodeId>,
    policy: &Policy,
    now: Instant,
) -> Vec<NodeId> {
    c.live_holders(bundle, now, policy.down_after)
        .filter(|n| Some(n) != but)
        .collect()
}

/// The copies `node` should make now and those that wait their turn: its
/// copies with a source, most endangered first (fewest complete copies), at most
/// `copies_per_node` running. Only this node's replicas are looked at, so a
/// heartbeat costs what the node holds, not what the cluster holds.
fn copies_of(
    c: &Cluster,
    node: &NodeId,
    policy: &Policy,
    now: Instant,
) -> (Vec<BundleId>, Vec<QueuedCopy>) {
    let mut copies: Vec<(usize, BundleId)> = c
        .placed_on(node)
        .filter(|(_, state)| *state == ReplicaState::Copying)
        .map(|(bundle, _)| (c.live_complete(&bundle, now, policy.down_after), bundle))
        .filter(|(complete, _)| *complete > 0)
        .collect();
    copies.sort();
    let waiting = copies.split_off(copies.len().min(policy.copies_per_node));
    let queued = waiting
        .into_iter()
        .map(|(complete, bundle)| QueuedCopy {
            bundle,
            node: *node,
            complete,
        })
        .collect();
    (copies.into_iter().map(|(_, b)| b).collect(), queued)
}

/// Copies that may run now on every node, and those that wait, most endangered first.
pub fn repair_queue(
    c: &Cluster,
    policy: &Policy,
    now: Instant,
) -> (BTreeSet<(BundleId, NodeId)>, Vec<QueuedCopy>) {
    let (mut active, mut queued) = (BTreeSet::new(), Vec::new());
    for node in c.nodes.keys() {
        let (running, waiting) = copies_of(c, node, policy, now);
        active.extend(running.into_iter().map(|b| (b, *node)));
        queued.extend(waiting);
    }
    queued.sort_by_key(|q| (q.complete, q.bundle, q.node));
    (active, queued)
}

/// What `node` is told in answer to its heartbeat.
pub fn orders_for(c: &Cluster, node: &NodeId, policy: &Policy, now: Instant) -> Orders {
    let (running, _) = copies_of(c, node, policy, now);
    let hold = c
        .placed_on(node)
        .filter(|(bundle, state)| *state != ReplicaState::Copying || running.contains(bundle))
        .map(|(bundle, _)| HoldOrder {
            bundle,
            sources: sources(c, &bundle, Some(node), policy, now),
        })
        .collect();
    let live = c.live.get(node);
    let release = live.map_or_else(Vec::new, |l| {
        l.held
            .iter()
            .filter(|b| {
                c.retired.contains(b)
                    || (c.bundles.contains_key(b)
                        && !c.short_of_copies(b, now, policy.down_after)
                        && !c.replicas.get(b).is_some_and(|r| r.contains_key(node)))
            })
            .copied()
            .collect()
    });
    let names = (live.map(|l| l.names_version) != Some(c.names_version)).then(|| NameTable {
        version: c.names_version,
        names: c
            .names
            .iter()
            .filter_map(|(n, r)| r.current().map(|b| (n.clone(), b)))
            .collect(),
    });
    Orders {
        heartbeat_ms: policy.heartbeat.as_millis() as u64,
        members: c
            .nodes
            .values()
            .map(|n| Member {
                id: n.id,
                contact: n.contact.clone(),
                region: n.region.clone(),
                site: n.site.clone(),
            })
            .collect(),
        hold,
        release,
        names,
    }
}

/// The nodes a browser asking for `bundle` may be sent to, best first:
/// holding a complete copy, heard from within three heartbeats (stricter than
/// "up": a browser should not wait out the grace period on a node that just
/// died), in the client's region when one is, then the least loaded. The
/// redirect checks the first ones still answer ([`crate::probe`]).
pub fn route(
    c: &Cluster,
    bundle: &BundleId,
    client_region: Option<&str>,
    policy: &Policy,
    now: Instant,
) -> Vec<NodeId> {
    let fresh = Policy {
        down_after: policy.down_after.min(policy.heartbeat * 3),
        ..policy.clone()
    };
    let mut candidates = sources(c, bundle, None, &fresh, now);
    candidates.sort_by_key(|n| {
        let far = client_region.is_some_and(|r| c.nodes[n].region != r);
        let load = c.live.get(n).map_or(0, |l| l.load);
        (far, load, *n)
    });
    candidates
}

#[cfg(test)]
#[path = "lifecycle_tests/mod.rs"]
mod tests;
