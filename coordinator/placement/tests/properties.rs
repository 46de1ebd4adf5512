//! Property tests of the placement rules on random topologies.

mod common;

use std::collections::BTreeSet;

use cartable_placement::{Assignment, BundleSpec, Topology, UnplacedReason, movement, plan};
use cartable_proto::NodeId;
use common::{bundles, check_plan, free_space, places, shuffle, spread, topology};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Node descriptions `(region, site, capacity)` in up to `regions` regions.
fn nodes(
    regions: u8,
    sites: u8,
    count: usize,
    capacity: impl Strategy<Value = u64>,
) -> impl Strategy<Value = Vec<(u8, u8, u64)>> {
    prop::collection::vec((0..regions, 0..sites, capacity), 1..=count)
}

/// Capacity no set of test bundles can fill.
const AMPLE: u64 = 1 << 50;

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_bundle_gets_min_r_sites_and_two_regions_when_room_allows(
        seed: u64,
        nodes in nodes(4, 4, 12, Just(AMPLE)),
        count in 1..60usize,
    ) {
        let topology = topology(seed, &nodes);
        let bundles = bundles(seed, count, |i| (1 + i * 7919 % 1000, (1 + i % 5) as u8));
        let p = plan(&topology, &bundles, &Assignment::new());
        check_plan(&topology, &bundles, &p).map_err(fail)?;
        let places = places(&topology);
        let all: Vec<_> = places.keys().copied().collect();
        let (sites, regions) = spread(&places, &all);
        for b in &bundles {
            let r = usize::from(b.replicas);
            let placed = &p.assignment[&b.id];
            prop_assert_eq!(placed.len(), r.min(all.len()));
            let (s, g) = spread(&places, placed);
            prop_assert_eq!(s, r.min(sites), "sites of {:?}", placed);
            prop_assert!(g >= r.min(regions).min(2), "regions of {:?}", placed);
        }
        for u in &p.unplaced {
            prop_assert_eq!(u.reason, UnplacedReason::TooFewNodes);
        }
    }

    #[test]
    fn no_node_holds_more_than_its_capacity_and_short_bundles_had_no_room(
        seed: u64,
        nodes in nodes(3, 3, 10, 0..4000u64),
        count in 1..40usize,
    ) {
        let topology = topology(seed, &nodes);
        let bundles = bundles(seed, count, |i| (1 + i * 7919 % 1200, (1 + i % 4) as u8));
        let p = plan(&topology, &bundles, &Assignment::new());
        check_plan(&topology, &bundles, &p).map_err(fail)?;
        let free = free_space(&topology, &bundles, &p.assignment);
        for u in &p.unplaced {
            let size = bundles.iter().find(|b| b.id == u.bundle).unwrap().size;
            let held = &p.assignment[&u.bundle];
            let room = free.iter().find(|(n, left)| !held.contains(n) && **left >= i128::from(size));
            prop_assert!(room.is_none(), "{:?} short while {:?} has room", u.bundle, room);
        }
    }

    #[test]
    fn the_plan_does_not_depend_on_input_order(
        seed: u64,
        nodes in nodes(3, 3, 10, 0..4000u64),
        count in 1..40usize,
        dropped in 0..10usize,
        order: u64,
    ) {
        let topology = topology(seed, &nodes);
        let bundles = bundles(seed, count, |i| (1 + i * 7919 % 1200, (1 + i % 4) as u8));
        // A previous plan made without one node, so all three phases have work.
        let mut smaller = topology.clone();
        smaller.nodes.remove(dropped % smaller.nodes.len());
        let previous = plan(&smaller, &bundles, &Assignment::new()).assignment;
        let expected = plan(&topology, &bundles, &previous);

        let mut shuffled = topology.clone();
        shuffle(&mut shuffled.nodes, order);
        let mut reordered: Vec<BundleSpec> = bundles.clone();
        shuffle(&mut reordered, order ^ 1);
        let mut previous = previous;
        for (i, nodes) in previous.values_mut().enumerate() {
            shuffle(nodes, order ^ (i as u64 + 2));
        }
        prop_assert_eq!(plan(&shuffled, &reordered, &previous), expected);
    }

    #[test]
    fn replanning_an_unchanged_topology_moves_nothing(
        seed: u64,
        nodes in nodes(3, 3, 10, 0..4000u64),
        count in 1..40usize,
        dropped in 0..10usize,
    ) {
        let topology = topology(seed, &nodes);
        let bundles = bundles(seed, count, |i| (1 + i * 7919 % 1200, (1 + i % 4) as u8));
        let mut smaller = topology.clone();
        smaller.nodes.remove(dropped % smaller.nodes.len());
        let before = plan(&smaller, &bundles, &Assignment::new());
        let once = plan(&topology, &bundles, &before.assignment);
        let twice = plan(&topology, &bundles, &once.assignment);
        prop_assert_eq!(movement(&once.assignment, &twice.assignment).added, 0);
        prop_assert_eq!(twice, once);
    }
}

/// Nodes of equal capacity in `sites` sites spread over `regions` regions.
fn equal_nodes(count: usize, sites: u8, regions: u8) -> Vec<(u8, u8, u64)> {
    (0..count)
        .map(|i| ((i as u8 % sites) % regions, i as u8 % sites, AMPLE))
        .collect()
}

/// The movement bound asserted when one node joins or leaves `n` equal nodes
/// (`n` counts the joining or leaving node): at most 1.2 times that node's share
/// of the replicas, `total / n` — that is, `1.2 * r / n` replicas per bundle.
fn movement_bound(total: usize, n: usize) -> usize {
    total * 12 / (10 * n)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn a_joining_node_receives_about_its_share_and_nothing_else_moves(
        seed: u64,
        count in 8..=24usize,
        sites in 3..=8u8,
        regions in 2..=3u8,
    ) {
        let nodes = equal_nodes(count + 1, sites, regions);
        let before = topology(seed, &nodes[..count]);
        let after = topology(seed, &nodes);
        let joined = after.nodes[count].id;
        let bundles = bundles(seed, 6000, |i| (1 + i % 1000, 3));
        let old = plan(&before, &bundles, &Assignment::new()).assignment;
        let new = plan(&after, &bundles, &old).assignment;
        let m = movement(&old, &new);
        prop_assert!(m.added <= movement_bound(m.total, count + 1), "{m:?} with {} nodes", count + 1);
        prop_assert_eq!(m.added, m.removed);
        let received = new.values().filter(|nodes| nodes.contains(&joined)).count();
        prop_assert_eq!(received, m.added, "copies go only to the new node");
    }

    #[test]
    fn a_leaving_node_frees_its_share_and_nothing_else_moves(
        seed: u64,
        count in 8..=24usize,
        sites in 3..=8u8,
        regions in 2..=3u8,
        leaving in 0..24usize,
    ) {
        let mut nodes = equal_nodes(count, sites, regions);
        let before = topology(seed, &nodes);
        let left = before.nodes[leaving % count].id;
        nodes.remove(leaving % count);
        let after = Topology { nodes: before.nodes.iter().filter(|n| n.id != left).cloned().collect() };
        let bundles = bundles(seed, 6000, |i| (1 + i % 1000, 3));
        let old = plan(&before, &bundles, &Assignment::new()).assignment;
        let new = plan(&after, &bundles, &old).assignment;
        let m = movement(&old, &new);
        // Its share is its site's replicas over its site's nodes: with `r`
        // copies on `r` sites of unequal sizes, a node on a small site holds
        // more than `total / count`.
        let place = |id: &NodeId| before.nodes.iter().find(|n| n.id == *id).map(|n| (n.region.clone(), n.site.clone()));
        let site = place(&left);
        let site_nodes = before.nodes.iter().filter(|n| place(&n.id) == site).count();
        let site_replicas = old.values().flatten().filter(|id| place(id) == site).count();
        prop_assert!(m.added <= movement_bound(site_replicas, site_nodes), "{m:?} with {count} nodes");
        let held = old.values().filter(|nodes| nodes.contains(&left)).count();
        prop_assert_eq!(m.removed, held, "only the leaving node's replicas go");
        prop_assert_eq!(m.added, held);
        let placed: BTreeSet<usize> = new.values().map(Vec::len).collect();
        prop_assert_eq!(placed, BTreeSet::from([3]));
    }
}
