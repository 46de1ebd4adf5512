//! Counting what a change of plan would copy and delete.

use crate::Assignment;

/// What going from one assignment to another costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Movement {
    /// Replicas in `next` that are not in `previous`: the copies the change starts.
    pub added: usize,
    /// Replicas in `previous` that are not in `next`: the copies it deletes, once
    /// their replacements are verified (make before break).
    pub removed: usize,
    /// Replicas in `next`.
    pub total: usize,
}

/// The replicas `next` adds to and removes from `previous`, per (bundle, node).
pub fn movement(previous: &Assignment, next: &Assignment) -> Movement {
    let missing = |from: &Assignment, to: &Assignment| -> usize {
        from.iter()
            .map(|(bundle, nodes)| {
                let other = to.get(bundle).map_or(&[][..], Vec::as_slice);
                nodes.iter().filter(|n| !other.contains(n)).count()
            })
            .sum()
    };
    Movement {
        added: missing(next, previous),
        removed: missing(previous, next),
        total: next.values().map(Vec::len).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartable_proto::{BlobHash, BundleId, NodeId};

    fn bundle(b: u8) -> BundleId {
        BundleId::from_hash(BlobHash::from_bytes([b; 32]))
    }

    fn node(n: u8) -> NodeId {
        NodeId::from_bytes([n; 32])
    }

    #[test]
    fn a_swapped_replica_counts_once_each_way() {
        let previous = Assignment::from([
            (bundle(1), vec![node(1), node(2)]),
            (bundle(2), vec![node(3)]),
        ]);
        let next = Assignment::from([
            (bundle(1), vec![node(2), node(4)]),
            (bundle(3), vec![node(5)]),
        ]);
        let m = movement(&previous, &next);
        assert_eq!(
            m,
            Movement {
                added: 2,
                removed: 2,
                total: 3
            }
        );
        assert_eq!(
            movement(&next, &next),
            Movement {
                added: 0,
                removed: 0,
                total: 3
            }
        );
    }
}
