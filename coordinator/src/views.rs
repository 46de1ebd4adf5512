//! The state as the admin API shows it (types in [`cartable_proto::api`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use cartable_placement::{NodeSpec, Topology};
use cartable_proto::{BundleId, NodeId};

use crate::config::Policy;
use crate::lifecycle;
use crate::ops::OpError;
use crate::state::{Cluster, PlanView, TokenRecord};
use cartable_proto::api::*;

/// A node's state as the admin API and monitoring show it.
pub fn state_of(c: &Cluster, id: &NodeId, policy: &Policy, now: Instant) -> NodeState {
    if c.nodes[id].draining {
        NodeState::Draining
    } else if c.is_up(id, now, policy.down_after) {
        NodeState::Up
    } else {
        NodeState::Down
    }
}

/// One node.
pub fn node(c: &Cluster, policy: &Policy, id: &NodeId) -> Result<NodeView, OpError> {
    let n = c.nodes.get(id).ok_or(OpError::NoSuchNode)?;
    let now = Instant::now();
    let live = c.live.get(id);
    let (replicas, complete) = c.placed_on(id).fold((0, 0), |(all, done), (_, s)| {
        (all + 1, done + usize::from(s != ReplicaState::Copying))
    });
    Ok(NodeView {
        id: *id,
        region: n.region.clone(),
        site: n.site.clone(),
        state: state_of(c, id, policy, now),
        https_url: n.contact.https_url.clone(),
        capacity: n.capacity,
        used: live.map_or(0, |l| l.used),
        load: live.map_or(0, |l| l.load),
        last_seen_secs: live.map(|l| now.saturating_duration_since(l.last_seen).as_secs()),
        replicas,
        complete,
        reported_failures: n.failure_reports.values().sum(),
        failure_reporters: n.failure_reports.len(),
        proposed_contact: n.proposed_contact.as_ref().map(|p| ContactChange {
            https_url: p.https_url.clone(),
            quic: p.quic,
        }),
        capacity_limit: n.capacity_limit,
        failed_checks: n.trust.failed_checks,
        unreliable: n.trust.unreliable,
    })
}

/// Every node.
pub fn nodes(c: &Cluster, policy: &Policy) -> Vec<NodeView> {
    c.nodes
        .keys()
        .filter_map(|id| node(c, policy, id).ok())
        .collect()
}

/// One bundle, with its replicas when `detail`.
pub fn bundle(
    c: &Cluster,
    policy: &Policy,
    id: &BundleId,
    detail: bool,
) -> Result<BundleView, OpError> {
    let b = c.bundles.get(id).ok_or(OpError::NoSuchBundle)?;
    let now = Instant::now();
    let replicas = if detail {
        c.replicas.get(id).map_or_else(Vec::new, |r| {
            r.iter()
                .filter_map(|(n, s)| {
                    let node = c.nodes.get(n)?;
                    Some(ReplicaView {
                        node: *n,
                        region: node.region.clone(),
                        site: node.site.clone(),
                        state: *s,
                        node_up: c.is_up(n, now, policy.down_after),
                    })
                })
                .collect()
        })
    } else {
        Vec::new()
    };
    Ok(BundleView {
        id: *id,
        size: b.size,
        files: b.files,
        replicas_wanted: b.replicas,
        complete: c.live_complete(id, now, policy.down_after),
        names: c
            .names
            .iter()
            .filter(|(_, r)| r.current() == Some(*id))
            .map(|(n, _)| n.clone())
            .collect(),
        unplaced: c.unplaced.get(id).cloned(),
        replicas,
    })
}

/// Every bundle.
pub fn bundles(c: &Cluster, policy: &Policy) -> Vec<BundleView> {
    c.bundles
        .keys()
        .filter_map(|id| bundle(c, policy, id, false).ok())
        .collect()
}

/// Every name.
pub fn names(c: &Cluster) -> Vec<NameView> {
    c.names
        .iter()
        .filter_map(|(name, r)| {
            r.current().map(|bundle| NameView {
                name: name.clone(),
                bundle,
            })
        })
        .collect()
}

/// One token, by the hash of its secret.
pub fn token(hash: &str, t: &TokenRecord) -> TokenView {
    TokenView {
        id: hash[..16.min(hash.len())].to_owned(),
        region: t.region.clone(),
        site: t.site.clone(),
        expires: t.expires,
        used_by: t.used_by,
        capacity: t.capacity,
    }
}

/// Every token.
pub fn tokens(c: &Cluster) -> Vec<TokenView> {
    c.tokens.iter().map(|(h, t)| token(h, t)).collect()
}

/// The cluster at a glance.
pub fn status(c: &Cluster, policy: &Policy) -> Status {
    let now = Instant::now();
    let states: Vec<(NodeId, NodeState)> = c
        .nodes
        .keys()
        .map(|id| (*id, state_of(c, id, policy, now)))
        .collect();
    let with = |wanted: NodeState| -> Vec<NodeId> {
        states
            .iter()
            .filter(|(_, s)| *s == wanted)
            .map(|(id, _)| *id)
            .collect()
    };
    let (_, repair_queue) = lifecycle::repair_queue(c, policy, now);
    Status {
        nodes_up: with(NodeState::Up).len(),
        nodes_down: with(NodeState::Down),
        nodes_draining: with(NodeState::Draining),
        nodes_unreliable: c
            .nodes
            .values()
            .filter(|n| n.trust.unreliable)
            .map(|n| n.id)
            .collect(),
        bundles: c.bundles.len(),
        under_replicated: c
            .bundles
            .iter()
            .filter(|(id, b)| c.live_complete(id, now, policy.down_after) < usize::from(b.replicas))
            .map(|(id, _)| *id)
            .collect(),
        unplaceable: c.unplaced.keys().copied().collect(),
        repair_queue,
        contact_changes: c
            .nodes
            .values()
            .filter(|n| n.proposed_contact.is_some())
            .map(|n| n.id)
            .collect(),
        reported: c
            .nodes
            .values()
            .filter(|n| !n.failure_reports.is_empty())
            .map(|n| n.id)
            .collect(),
    }
}

/// What a preview of a topology change is made from, taken under the
/// state's lock; the plan itself ([`PreviewInputs::preview`]) runs without it.
#[derive(Debug)]
pub struct PreviewInputs {
    topology: Topology,
    /// The hypothetical nodes' labels.
    names: BTreeMap<NodeId, String>,
    view: PlanView,
    /// The nodes taken out.
    without: BTreeSet<NodeId>,
    /// The nodes whose copies count, as of the preview: up and trusted.
    trusted: BTreeSet<NodeId>,
}

/// The inputs of a preview of `change`; changes nothing but the state's
/// notes of which nodes are down.
pub fn preview_inputs(c: &mut Cluster, policy: &Policy, change: &PlanChange) -> PreviewInputs {
    let now = Instant::now();
    let eligible = lifecycle::eligibility(c, policy, now);
    let without: BTreeSet<NodeId> = change.without.iter().copied().collect();
    let mut nodes =
        lifecycle::topology(c, eligible.normal.iter().filter(|id| !without.contains(id))).nodes;
    let mut names = BTreeMap::new();
    for (i, h) in change.with.iter().enumerate() {
        let id = NodeId::from_bytes(
            *blake3::hash(format!("hypothetical node {i}").as_bytes()).as_bytes(),
        );
        names.insert(id, format!("new-{}", i + 1));
        nodes.push(NodeSpec {
            id,
            region: h.region.clone(),
            site: h.site.clone(),
            capacity: h.capacity,
        });
    }
    let trusted = c
        .nodes
        .keys()
        .filter(|n| c.is_trusted(n, now, policy.down_after))
        .copied()
        .collect();
    PreviewInputs {
        topology: Topology { nodes },
        names,
        view: c.plan_view(),
        without,
        trusted,
    }
}

impl PreviewInputs {
    /// What the change would move: a plan, with no state and no lock.
    pub fn preview(self, policy: &Policy) -> PlanPreview {
        let Self {
            topology,
            names,
            view,
            without,
            trusted,
        } = self;
        let losses = losses(&view, policy, &without, &trusted);
        let (previous, specs) = view.split();
        let plan = cartable_placement::plan(&topology, &specs, &previous);
        let movement = cartable_placement::movement(&previous, &plan.assignment);
        let label = |n: &NodeId| names.get(n).cloned().unwrap_or_else(|| n.to_string());
        let moves = plan
            .assignment
            .iter()
            .filter_map(|(b, next)| {
                let before = previous.get(b).cloned().unwrap_or_default();
                let to: Vec<String> = next
                    .iter()
                    .filter(|n| !before.contains(n))
                    .map(label)
                    .collect();
                let from: Vec<String> = before
                    .iter()
                    .filter(|n| !next.contains(n))
                    .map(label)
                    .collect();
                (!to.is_empty() || !from.is_empty()).then_some(BundleMove {
                    bundle: *b,
                    size: view.size_of(b).unwrap_or(0),
                    to,
                    from,
                })
            })
            .collect();
        PlanPreview {
            replicas: movement.total,
            added: movement.added,
            removed: movement.removed,
            unplaced: plan.unplaced.len(),
            lost: losses.lost,
            urgent: losses.urgent,
            bytes_on_removed: losses.bytes_on_removed,
            moves,
            timings: RepairTimings {
                heartbeat_ms: policy.heartbeat.as_millis() as u64,
                down_after_ms: policy.down_after.as_millis() as u64,
                repair_delay_secs: policy.repair_delay.as_secs(),
                min_replicas: policy.min_replicas,
                copies_per_node: policy.copies_per_node,
            },
        }
    }
}

/// What taking `without` out costs at once, before any copy is made.
#[derive(Debug)]
struct Losses {
    lost: Vec<BundleId>,
    urgent: usize,
    bytes_on_removed: u64,
}

fn losses(
    view: &PlanView,
    policy: &Policy,
    without: &BTreeSet<NodeId>,
    trusted: &BTreeSet<NodeId>,
) -> Losses {
    let mut losses = Losses {
        lost: Vec::new(),
        urgent: 0,
        bytes_on_removed: 0,
    };
    for (spec, whole) in view.whole_copies() {
        let (mut kept, mut gone) = (0, 0);
        for n in whole.filter(|n| trusted.contains(n)) {
            if without.contains(n) {
                gone += 1;
            } else {
                kept += 1;
            }
        }
        losses.bytes_on_removed += spec.size * gone;
        if kept == 0 {
            losses.lost.push(spec.id);
        } else if kept < u64::from(policy.min_replicas.min(spec.replicas)) {
            losses.urgent += 1;
        }
    }
    losses
}
