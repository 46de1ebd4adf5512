//! The spread rules: which ranked nodes one bundle takes.

use crate::cluster::Cluster;
use crate::ring::Ranker;

/// The rules of one pass over the candidates, from strictest to loosest. A later
/// pass only runs when the earlier ones left replicas unplaced, so each rule is
/// given up only when nothing with room satisfies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// A site not used yet; and the last replica leaves the region all the others
    /// are in, when there is another region.
    Spread,
    /// A site not used yet.
    Sites,
    /// Any node not used yet.
    Nodes,
}

/// Extends `chosen` (the replicas already settled, if any) to `wanted` nodes taken
/// from `preferred` first, then in rank order, among the nodes for which `fits`
/// holds. Stops short when the candidates run out.
///
/// Greedy in rank order gives the best spread there is: the `Spread` pass takes
/// one node per site until `wanted` sites are used or no site with room is left,
/// and picks the last of them outside the others' region if such a site exists,
/// so it reaches `min(wanted, sites with room)` sites and 2 regions whenever 2
/// regions have room. The brute-force oracle in the tests checks this.
pub(crate) fn fill(
    cluster: &Cluster,
    ranker: &mut Ranker,
    chosen: &mut Vec<u32>,
    wanted: usize,
    preferred: &[u32],
    fits: impl Fn(u32) -> bool,
) {
    for pass in [Pass::Spread, Pass::Sites, Pass::Nodes] {
        let mut rank = 0;
        let candidates = std::iter::from_fn(|| {
            rank += 1;
            match preferred.get(rank - 1) {
                Some(&n) => Some(n),
                None => ranker.nth(&cluster.ring, rank - 1 - preferred.len()),
            }
        });
        for node in candidates {
            if chosen.len() >= wanted {
                return;
            }
            if allowed(cluster, chosen, wanted, pass, node) && fits(node) {
                chosen.push(node);
            }
        }
    }
}

fn allowed(cluster: &Cluster, chosen: &[u32], wanted: usize, pass: Pass, node: u32) -> bool {
    let site = |n: u32| cluster.site[n as usize];
    let region = |n: u32| cluster.region[n as usize];
    if chosen.contains(&node) {
        return false;
    }
    if pass == Pass::Nodes {
        return true;
    }
    if chosen.iter().any(|&c| site(c) == site(node)) {
        return false;
    }
    let last = chosen.len() + 1 == wanted;
    let one_region_so_far = !chosen.is_empty() && chosen.iter().all(|&c| region(c) == region(node));
    pass == Pass::Sites || !(last && one_region_so_far && cluster.regions > 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::key_of;
    use crate::{NodeSpec, Topology};
    use cartable_proto::NodeId;

    /// A cluster of `(region, site, capacity)` nodes, with ids in list order.
    fn cluster(nodes: &[(&str, &str, u64)]) -> Cluster {
        let nodes = nodes
            .iter()
            .enumerate()
            .map(|(i, &(region, site, capacity))| NodeSpec {
                id: NodeId::from_bytes([i as u8; 32]),
                region: region.into(),
                site: site.into(),
                capacity,
            })
            .collect();
        Cluster::new(&Topology { nodes })
    }

    fn pick(cluster: &Cluster, bundle: u8, wanted: usize, fits: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut ranker = Ranker::new(cluster.len());
        let mut chosen = Vec::new();
        ranker.start(&cluster.ring, key_of(&[bundle; 32]));
        fill(cluster, &mut ranker, &mut chosen, wanted, &[], fits);
        chosen
    }

    #[test]
    fn the_last_replica_leaves_a_region_that_holds_the_others() {
        // Region "a" has most of the capacity, so it wins the first two places.
        let c = cluster(&[
            ("a", "x", 100),
            ("a", "y", 100),
            ("a", "z", 100),
            ("b", "w", 1),
        ]);
        for bundle in 0..50 {
            let chosen = pick(&c, bundle, 3, |_| true);
            assert!(chosen.contains(&3), "{chosen:?}");
        }
    }

    #[test]
    fn two_sites_for_three_replicas_share_a_site_only_for_the_third() {
        let c = cluster(&[("a", "x", 10), ("a", "x", 10), ("a", "y", 10)]);
        let chosen = pick(&c, 1, 3, |_| true);
        assert_eq!(chosen.len(), 3);
        let mut sites: Vec<u32> = chosen[..2].iter().map(|&n| c.site[n as usize]).collect();
        sites.sort();
        assert_eq!(sites, vec![0, 1], "the first two replicas take both sites");
    }

    #[test]
    fn a_full_site_is_passed_over() {
        let c = cluster(&[("a", "x", 10), ("a", "y", 10), ("b", "z", 10)]);
        let chosen = pick(&c, 1, 3, |n| n != 2);
        assert_eq!(chosen.len(), 2);
        assert!(!chosen.contains(&2));
    }
}
