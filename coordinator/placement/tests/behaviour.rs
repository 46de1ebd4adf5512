//! Scenarios named after what an operator would see.

mod common;

use std::collections::BTreeMap;

use cartable_placement::{Assignment, Topology, Unplaced, UnplacedReason, movement, plan};
use common::{bundles, places, spread, topology};

/// 4 regions of 3 sites of 4 nodes, all of capacity `capacity`.
fn country(capacity: u64) -> Topology {
    let nodes: Vec<(u8, u8, u64)> = (0..48)
        .map(|i| ((i / 12) as u8, (i / 4 % 3) as u8, capacity))
        .collect();
    topology(7, &nodes)
}

#[test]
fn losing_a_site_keeps_three_sites_and_moves_only_its_replicas() {
    let full = country(1 << 50);
    let bundles = bundles(1, 3000, |i| (1 + i % 500, 3));
    let before = plan(&full, &bundles, &Assignment::new()).assignment;
    let lost = (&full.nodes[0].region, &full.nodes[0].site);
    let rest = Topology {
        nodes: full
            .nodes
            .iter()
            .filter(|n| (&n.region, &n.site) != lost)
            .cloned()
            .collect(),
    };
    let after = plan(&rest, &bundles, &before);
    assert!(after.unplaced.is_empty());
    let places = places(&rest);
    for nodes in after.assignment.values() {
        let (sites, regions) = spread(&places, nodes);
        assert_eq!(sites, 3);
        assert!(regions >= 2);
    }
    let on_lost_site = before
        .values()
        .flatten()
        .filter(|n| !places.contains_key(n))
        .count();
    let m = movement(&before, &after.assignment);
    assert_eq!((m.added, m.removed), (on_lost_site, on_lost_site));
}

#[test]
fn a_full_node_keeps_the_bundles_it_holds_before_newcomers() {
    // Three single-node sites that hold exactly ten bundles of size 1 each.
    let small = topology(3, &[(0, 0, 10), (0, 1, 10), (1, 0, 10)]);
    let all = bundles(2, 15, |_| (1, 3));
    let first = plan(&small, &all[..10], &Assignment::new());
    assert!(first.unplaced.is_empty());
    let second = plan(&small, &all, &first.assignment);
    for b in &all[..10] {
        assert_eq!(
            second.assignment[&b.id], first.assignment[&b.id],
            "an incumbent moved"
        );
    }
    let mut newcomers: Vec<Unplaced> = all[10..]
        .iter()
        .map(|b| Unplaced {
            bundle: b.id,
            wanted: 3,
            placed: 0,
            reason: UnplacedReason::NoCapacity,
        })
        .collect();
    newcomers.sort_by_key(|u| u.bundle);
    assert_eq!(second.unplaced, newcomers);
}

#[test]
fn a_bundle_larger_than_most_nodes_is_placed_where_it_fits_and_reported() {
    let t = topology(4, &[(0, 0, 100), (0, 1, 1000), (1, 0, 100), (1, 1, 100)]);
    let big = bundles(5, 1, |_| (500, 3));
    let p = plan(&t, &big, &Assignment::new());
    assert_eq!(p.assignment[&big[0].id], vec![t.nodes[1].id]);
    let u = p.unplaced[0];
    assert_eq!(
        (u.wanted, u.placed, u.reason),
        (3, 1, UnplacedReason::TooLarge)
    );
}

#[test]
fn three_replicas_on_two_nodes_are_reported_as_too_few_nodes() {
    let t = topology(4, &[(0, 0, 100), (1, 0, 100)]);
    let b = bundles(6, 1, |_| (1, 3));
    let p = plan(&t, &b, &Assignment::new());
    assert_eq!(p.assignment[&b[0].id].len(), 2);
    assert_eq!(p.unplaced[0].reason, UnplacedReason::TooFewNodes);
}

#[test]
fn nodes_receive_replicas_in_proportion_to_their_capacity() {
    // 30 nodes of 1 to 4 units in 10 sites; 20,000 bundles of one size.
    let nodes: Vec<(u8, u8, u64)> = (0..30)
        .map(|i| ((i % 3) as u8, (i % 10) as u8, (1 + i % 4) << 40))
        .collect();
    let t = topology(8, &nodes);
    let bundles = bundles(9, 20_000, |_| (1, 3));
    let p = plan(&t, &bundles, &Assignment::new());
    let mut count: BTreeMap<_, usize> = BTreeMap::new();
    for n in p.assignment.values().flatten() {
        *count.entry(*n).or_default() += 1;
    }
    let total_capacity: u64 = t.nodes.iter().map(|n| n.capacity).sum();
    for n in &t.nodes {
        let fair = 60_000.0 * n.capacity as f64 / total_capacity as f64;
        let ratio = count[&n.id] as f64 / fair;
        assert!(
            (0.85..=1.15).contains(&ratio),
            "{} units: {ratio:.3} of its share",
            n.capacity >> 40
        );
    }
}

#[test]
fn an_empty_topology_places_nothing_and_says_why() {
    let b = bundles(1, 2, |_| (1, 2));
    let p = plan(&Topology::default(), &b, &Assignment::new());
    assert!(p.assignment.values().all(Vec::is_empty));
    assert!(
        p.unplaced
            .iter()
            .all(|u| u.reason == UnplacedReason::TooFewNodes)
    );
}
