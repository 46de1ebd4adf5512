//! Builders and checks shared by the integration tests.

// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use cartable_placement::{Assignment, BundleSpec, NodeSpec, Plan, Topology};
use cartable_proto::{BlobHash, BundleId, NodeId};

/// SplitMix64, to make ids from small numbers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn id_bytes(seed: u64, i: u64) -> [u8; 32] {
    let mut bytes = [0; 32];
    for (w, chunk) in bytes.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&mix(mix(seed) ^ mix(i) ^ w as u64).to_le_bytes());
    }
    bytes
}

pub fn node_id(seed: u64, i: u64) -> NodeId {
    NodeId::from_bytes(id_bytes(seed, i))
}

pub fn bundle_id(seed: u64, i: u64) -> BundleId {
    BundleId::from_hash(BlobHash::from_bytes(id_bytes(seed ^ 0xb0b, i)))
}

/// Shuffles `items` in an order given by `seed` (Fisher-Yates).
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    for i in (1..items.len()).rev() {
        let j = mix(seed ^ mix(i as u64)) % (i as u64 + 1);
        items.swap(i, j as usize);
    }
}

/// A topology of `(region, site, capacity)` nodes; site numbers are per region.
pub fn topology(seed: u64, nodes: &[(u8, u8, u64)]) -> Topology {
    let nodes = nodes
        .iter()
        .enumerate()
        .map(|(i, &(region, site, capacity))| NodeSpec {
            id: node_id(seed, i as u64),
            region: format!("region-{region}"),
            site: format!("site-{site}"),
            capacity,
        })
        .collect();
    Topology { nodes }
}

/// `count` bundles with sizes and replica counts from `shape(i)`.
pub fn bundles(seed: u64, count: usize, shape: impl Fn(u64) -> (u64, u8)) -> Vec<BundleSpec> {
    (0..count as u64)
        .map(|i| {
            let (size, replicas) = shape(i);
            BundleSpec {
                id: bundle_id(seed, i),
                size,
                replicas,
            }
        })
        .collect()
}

/// A node's place, by id.
pub fn places(topology: &Topology) -> BTreeMap<NodeId, &NodeSpec> {
    topology.nodes.iter().map(|n| (n.id, n)).collect()
}

/// Distinct (sites, regions) of a set of nodes.
pub fn spread(places: &BTreeMap<NodeId, &NodeSpec>, nodes: &[NodeId]) -> (usize, usize) {
    let sites: BTreeSet<_> = nodes
        .iter()
        .map(|n| (&places[n].region, &places[n].site))
        .collect();
    let regions: BTreeSet<_> = nodes.iter().map(|n| &places[n].region).collect();
    (sites.len(), regions.len())
}

/// Bytes left on each node after `assignment`.
pub fn free_space(
    topology: &Topology,
    bundles: &[BundleSpec],
    assignment: &Assignment,
) -> BTreeMap<NodeId, i128> {
    let mut free: BTreeMap<NodeId, i128> = topology
        .nodes
        .iter()
        .map(|n| (n.id, i128::from(n.capacity)))
        .collect();
    for b in bundles {
        for n in &assignment[&b.id] {
            *free.get_mut(n).unwrap() -= i128::from(b.size);
        }
    }
    free
}

/// Checks the invariants every plan keeps, whatever the capacities: each bundle
/// is in the assignment on distinct nodes of the topology, in id order; no node is
/// over capacity; `unplaced` lists exactly the bundles short of replicas.
pub fn check_plan(topology: &Topology, bundles: &[BundleSpec], plan: &Plan) -> Result<(), String> {
    let places = places(topology);
    let free = free_space(topology, bundles, &plan.assignment);
    if let Some((node, left)) = free.iter().find(|(_, left)| **left < 0) {
        return Err(format!("{node} is {} bytes over capacity", -left));
    }
    let mut short = Vec::new();
    for b in bundles {
        let nodes = &plan.assignment[&b.id];
        if !nodes.windows(2).all(|w| w[0] < w[1]) {
            return Err(format!(
                "{:?}: nodes not distinct and sorted: {nodes:?}",
                b.id
            ));
        }
        if nodes.iter().any(|n| !places.contains_key(n)) {
            return Err(format!("{:?}: placed on a node outside the topology", b.id));
        }
        if nodes.len() < usize::from(b.replicas) {
            short.push((b.id, b.replicas, nodes.len() as u8));
        }
    }
    short.sort();
    let reported: Vec<_> = plan
        .unplaced
        .iter()
        .map(|u| (u.bundle, u.wanted, u.placed))
        .collect();
    if reported != short {
        return Err(format!("unplaced {reported:?}, short {short:?}"));
    }
    Ok(())
}
