//! The three phases of a plan: ideal targets, room for incumbents first, then
//! fallbacks for what did not fit.

use std::collections::btree_map;
use std::iter::Peekable;

use crate::cluster::Cluster;
use crate::hash::key_of;
use crate::ring::Ranker;
use crate::select::fill;
use crate::{Assignment, BundleSpec, Plan, Topology, Unplaced, UnplacedReason};

/// Lists of node indices, one per bundle, stored end to end.
#[derive(Debug, Default)]
struct Lists {
    ends: Vec<usize>,
    items: Vec<u32>,
}

impl Lists {
    fn push(&mut self, list: impl IntoIterator<Item = u32>) {
        self.items.extend(list);
        self.ends.push(self.items.len());
    }

    fn range(&self, i: usize) -> std::ops::Range<usize> {
        (if i == 0 { 0 } else { self.ends[i - 1] })..self.ends[i]
    }

    fn get(&self, i: usize) -> &[u32] {
        &self.items[self.range(i)]
    }
}

/// See [`crate::plan`].
pub(crate) fn plan(topology: &Topology, bundles: &[BundleSpec], previous: &Assignment) -> Plan {
    let cluster = Cluster::new(topology);
    let bundles = sorted_bundles(bundles);
    let held = previous_holders(&cluster, &bundles, previous);
    let mut ranker = Ranker::new(cluster.len());

    // Phase 1: where each bundle would go if it were alone. Depends on nothing but
    // the topology and the bundle, so it is what makes placement converge and move
    // little.
    let mut targets = Lists::default();
    let mut chosen = Vec::new();
    for b in &bundles {
        chosen.clear();
        ranker.start(&cluster.ring, key_of(b.id.hash().as_bytes()));
        let fits = |n: u32| cluster.capacity[n as usize] >= b.size;
        fill(
            &cluster,
            &mut ranker,
            &mut chosen,
            usize::from(b.replicas),
            &[],
            fits,
        );
        targets.push(chosen.iter().copied());
    }

    // Phase 2: each node admits its targets within its capacity, those it already
    // holds first, so a newcomer never pushes out a replica in place.
    let (accepted, mut free) = admit(&cluster, &bundles, &targets, &held);

    // Phase 3: bundles short of replicas take the best nodes with room left,
    // trying first the nodes that already hold them.
    let mut assignment = Assignment::new();
    let mut unplaced = Vec::new();
    let mut capacities = cluster.capacity.clone();
    capacities.sort_unstable();
    for (i, b) in bundles.iter().enumerate() {
        let range = targets.range(i);
        chosen.clear();
        chosen.extend(
            range
                .clone()
                .filter(|&k| accepted[k])
                .map(|k| targets.items[k]),
        );
        let wanted = usize::from(b.replicas);
        if chosen.len() < wanted {
            let settled = chosen.len();
            ranker.start(&cluster.ring, key_of(b.id.hash().as_bytes()));
            let fits = |n: u32| free[n as usize] >= b.size;
            fill(
                &cluster,
                &mut ranker,
                &mut chosen,
                wanted,
                held.get(i),
                fits,
            );
            for &n in &chosen[settled..] {
                free[n as usize] -= b.size;
            }
        }
        if chosen.len() < wanted {
            unplaced.push(Unplaced {
                bundle: b.id,
                wanted: b.replicas,
                placed: chosen.len() as u8,
                reason: reason(&capacities, b),
            });
        }
        let mut nodes: Vec<_> = chosen.iter().map(|&n| cluster.ids[n as usize]).collect();
        nodes.sort_unstable();
        assignment.insert(b.id, nodes);
    }
    Plan {
        assignment,
        unplaced,
    }
}

/// Bundles sorted by id; a bundle listed twice counts once, with the largest size
/// and replica count given, so input order cannot matter.
fn sorted_bundles(bundles: &[BundleSpec]) -> Vec<BundleSpec> {
    let mut sorted = bundles.to_vec();
    sorted.sort_unstable_by_key(|b| b.id);
    sorted.dedup_by(|later, kept| {
        if later.id != kept.id {
            return false;
        }
        kept.size = kept.size.max(later.size);
        kept.replicas = kept.replicas.max(later.replicas);
        true
    });
    sorted
}

/// The nodes of the topology that hold each bundle in `previous`, in node order.
fn previous_holders(cluster: &Cluster, bundles: &[BundleSpec], previous: &Assignment) -> Lists {
    let mut held = Lists::default();
    let mut prev: Peekable<btree_map::Iter<'_, _, Vec<_>>> = previous.iter().peekable();
    for b in bundles {
        // Both are sorted by bundle id: a merge, not a lookup per bundle.
        while prev.next_if(|(id, _)| **id < b.id).is_some() {}
        let mut nodes: Vec<u32> = match prev.next_if(|(id, _)| **id == b.id) {
            Some((_, ids)) => ids.iter().filter_map(|id| cluster.index_of(id)).collect(),
            None => Vec::new(),
        };
        nodes.sort_unstable();
        nodes.dedup();
        held.push(nodes);
    }
    held
}

/// Phase 2. Returns which target entries are admitted, and each node's room left.
fn admit(
    cluster: &Cluster,
    bundles: &[BundleSpec],
    targets: &Lists,
    held: &Lists,
) -> (Vec<bool>, Vec<u64>) {
    // (node, newcomer?, entry): sorting groups by node, incumbents first, each
    // group in bundle order.
    let mut queue: Vec<(u32, bool, u32)> = Vec::with_capacity(targets.items.len());
    let mut bundle_of = Vec::with_capacity(targets.items.len());
    for i in 0..bundles.len() {
        for k in targets.range(i) {
            let node = targets.items[k];
            queue.push((node, !held.get(i).contains(&node), k as u32));
            bundle_of.push(i as u32);
        }
    }
    queue.sort_unstable();
    let mut free = cluster.capacity.clone();
    let mut accepted = vec![false; targets.items.len()];
    for (node, _, k) in queue {
        let size = bundles[bundle_of[k as usize] as usize].size;
        let room = &mut free[node as usize];
        // First fit: a large bundle that does not fit lets smaller ones behind it in.
        if size <= *room {
            *room -= size;
            accepted[k as usize] = true;
        }
    }
    (accepted, free)
}

/// Why `b` is short of replicas; `capacities` are all the nodes', sorted.
fn reason(capacities: &[u64], b: &BundleSpec) -> UnplacedReason {
    let wanted = usize::from(b.replicas);
    let large_enough = capacities.len() - capacities.partition_point(|&c| c < b.size);
    if capacities.len() < wanted {
        UnplacedReason::TooFewNodes
    } else if large_enough < wanted {
        UnplacedReason::TooLarge
    } else {
        UnplacedReason::NoCapacity
    }
}
