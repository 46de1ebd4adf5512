//! A brute-force oracle on small clusters: no choice of nodes spreads a bundle
//! better than the plan does, given the room the other bundles leave.

mod common;

use cartable_placement::{Assignment, BundleSpec, NodeSpec, Plan, Topology, plan};
use cartable_proto::NodeId;
use common::{bundles, check_plan, free_space, places, spread, topology};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// How good a bundle's placement is, compared lexicographically: replicas, then
/// distinct sites, then regions up to the 2 the rules ask for.
fn score(
    places: &std::collections::BTreeMap<NodeId, &NodeSpec>,
    nodes: &[NodeId],
) -> (usize, usize, usize) {
    let (sites, regions) = spread(places, nodes);
    (nodes.len(), sites, regions.min(2))
}

/// The best score over every subset of at most `r` nodes with room for `b`.
/// A node has room if it holds `b` already or has `b.size` bytes free.
fn best_possible(
    topology: &Topology,
    b: &BundleSpec,
    p: &Plan,
    free: &std::collections::BTreeMap<NodeId, i128>,
) -> (usize, usize, usize) {
    let places = places(topology);
    let held = &p.assignment[&b.id];
    let roomy: Vec<NodeId> = topology
        .nodes
        .iter()
        .filter(|n| n.capacity > 0)
        .map(|n| n.id)
        .filter(|n| held.contains(n) || free[n] >= i128::from(b.size))
        .collect();
    let mut best = (0, 0, 0);
    for mask in 0u32..1 << roomy.len() {
        if mask.count_ones() as usize > usize::from(b.replicas) {
            continue;
        }
        let subset: Vec<NodeId> = (0..roomy.len())
            .filter(|i| mask >> i & 1 == 1)
            .map(|i| roomy[i])
            .collect();
        best = best.max(score(&places, &subset));
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_subset_of_nodes_spreads_a_bundle_better_than_the_plan(
        seed: u64,
        nodes in prop::collection::vec((0..3u8, 0..3u8, prop_oneof![Just(0u64), 1..3000u64, Just(1u64 << 40)]), 1..=8),
        count in 1..=8usize,
    ) {
        let topology = topology(seed, &nodes);
        let bundles = bundles(seed, count, |i| (1 + (seed ^ i.wrapping_mul(7919)) % 1000, (1 + (seed >> 8 ^ i) % 4) as u8));
        let p = plan(&topology, &bundles, &Assignment::new());
        check_plan(&topology, &bundles, &p).map_err(TestCaseError::fail)?;
        let places = places(&topology);
        let free = free_space(&topology, &bundles, &p.assignment);
        for b in &bundles {
            let got = score(&places, &p.assignment[&b.id]);
            prop_assert_eq!(got, best_possible(&topology, b, &p, &free), "bundle {:?}", b);
        }
    }
}
