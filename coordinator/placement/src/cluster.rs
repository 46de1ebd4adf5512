//! The topology in the dense, sorted form the algorithm works on.

use std::collections::BTreeMap;

use cartable_proto::NodeId;

use crate::Topology;
use crate::hash::key_of;
use crate::ring::Ring;

/// Nodes sorted by id, numbered `0..len`, with their failure domains numbered too.
///
/// Sorting first is what makes the plan independent of the order of
/// `Topology::nodes`: every later step only sees these indices, which follow the
/// order of the ids.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// Node ids, strictly increasing.
    pub(crate) ids: Vec<NodeId>,
    /// Site number of each node; a site is a `(region, site)` pair of names, so two
    /// regions may both name a site "main".
    pub(crate) site: Vec<u32>,
    /// Region number of each node.
    pub(crate) region: Vec<u32>,
    /// Declared capacity of each node, in bytes.
    pub(crate) capacity: Vec<u64>,
    /// Number of distinct regions.
    pub(crate) regions: usize,
    /// The nodes' points, for ranking them per bundle.
    pub(crate) ring: Ring,
}

impl Cluster {
    /// Sorts and numbers the topology. A node id listed twice keeps the description
    /// that sorts first by (region, site, capacity), so duplicates cannot make the
    /// result depend on input order.
    pub(crate) fn new(topology: &Topology) -> Self {
        let mut nodes: Vec<_> = topology.nodes.iter().collect();
        nodes.sort_by(|a, b| {
            (a.id, &a.region, &a.site, a.capacity).cmp(&(b.id, &b.region, &b.site, b.capacity))
        });
        nodes.dedup_by_key(|n| n.id);

        let regions: BTreeMap<&str, u32> = number(nodes.iter().map(|n| n.region.as_str()));
        let sites: BTreeMap<(&str, &str), u32> =
            number(nodes.iter().map(|n| (n.region.as_str(), n.site.as_str())));

        let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
        let capacity: Vec<u64> = nodes.iter().map(|n| n.capacity).collect();
        let keys: Vec<u64> = ids.iter().map(|id| key_of(id.as_bytes())).collect();
        Cluster {
            site: nodes
                .iter()
                .map(|n| sites[&(n.region.as_str(), n.site.as_str())])
                .collect(),
            region: nodes.iter().map(|n| regions[n.region.as_str()]).collect(),
            regions: regions.len(),
            ring: Ring::new(&keys, &capacity),
            ids,
            capacity,
        }
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The index of `id`, if it is in the topology.
    pub(crate) fn index_of(&self, id: &NodeId) -> Option<u32> {
        self.ids.binary_search(id).ok().map(|i| i as u32)
    }
}

/// Numbers the distinct values in sorted order.
fn number<K: Ord>(values: impl Iterator<Item = K>) -> BTreeMap<K, u32> {
    let mut map: BTreeMap<K, u32> = values.map(|v| (v, 0)).collect();
    for (i, n) in map.values_mut().enumerate() {
        *n = i as u32;
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeSpec;

    fn node(id: u8, region: &str, site: &str) -> NodeSpec {
        NodeSpec {
            id: NodeId::from_bytes([id; 32]),
            region: region.into(),
            site: site.into(),
            capacity: 100,
        }
    }

    #[test]
    fn same_site_name_in_two_regions_is_two_sites() {
        let topology = Topology {
            nodes: vec![
                node(3, "north", "main"),
                node(1, "south", "main"),
                node(2, "north", "main"),
            ],
        };
        let cluster = Cluster::new(&topology);
        assert_eq!(cluster.ids[0], NodeId::from_bytes([1; 32]));
        assert_eq!(cluster.site, vec![1, 0, 0]);
        assert_eq!(cluster.region, vec![1, 0, 0]);
        assert_eq!(cluster.regions, 2);
    }

    #[test]
    fn a_node_listed_twice_is_counted_once() {
        let topology = Topology {
            nodes: vec![node(1, "b", "x"), node(1, "a", "x")],
        };
        let cluster = Cluster::new(&topology);
        assert_eq!(cluster.len(), 1);
        assert_eq!(cluster.index_of(&NodeId::from_bytes([1; 32])), Some(0));
        assert_eq!(cluster.index_of(&NodeId::from_bytes([2; 32])), None);
    }
}
