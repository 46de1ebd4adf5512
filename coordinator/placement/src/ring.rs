//! Ranking all nodes for one bundle without scoring every node.
//!
//! Each node with capacity puts [`POINTS`] pseudo-random points on a 64-bit ring;
//! each bundle puts [`PROBES`] probes. The *score* of node `n` for bundle `b` is
//!
//! ```text
//! score(b, n) = min over probes q of b, points p of n, of  dist(q -> p) / capacity(n)
//! ```
//!
//! where `dist` is the clockwise distance. A node's score depends only on the
//! bundle, the node's own id and its capacity, never on the other nodes: that is
//! the property that bounds movement (a new node can only win places, a removed
//! node only frees its own), exactly as in rendezvous hashing. Since the distance
//! from a probe to a node's nearest point is close to exponential with rate
//! `POINTS`, the score is close to exponential with rate proportional to capacity,
//! so the best-scoring node is drawn in proportion to capacity, as with weighted
//! rendezvous hashing.
//!
//! Unlike rendezvous hashing, the nodes can be visited in score order by walking
//! clockwise from each probe: a point at distance `d` scores at least
//! `d / max_capacity`, so once every probe's walk has passed `s * max_capacity`,
//! no unseen node can score below `s`. Picking 3 replicas visits a few dozen
//! points, not 60,000 nodes.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::hash::{point, probe};

/// Points per node. More points make each node's share closer to proportional
/// (the spread of shares falls as `1/sqrt(POINTS * PROBES)`), at 12 bytes each.
pub(crate) const POINTS: u64 = 64;
/// Probes per bundle. Each costs one index lookup; more of them smooth out the
/// unevenness of the arcs between points.
pub(crate) const PROBES: u64 = 8;
/// The lookup table has at most 2^MAX_INDEX_BITS entries (64 MiB of `u32`).
const MAX_INDEX_BITS: u32 = 24;

/// All points of all nodes with capacity, sorted, with a table to find the first
/// point at or after any position in O(1).
#[derive(Debug)]
pub(crate) struct Ring {
    /// Point positions, sorted.
    pos: Vec<u64>,
    /// The node owning each point.
    owner: Vec<u32>,
    /// `start[k]`: index of the first point whose top `bits` bits are `>= k`.
    start: Vec<u32>,
    /// `64 - bits`.
    shift: u32,
    /// Node capacities as floats (0 for nodes without points).
    weight: Vec<f64>,
    /// The largest weight: the bound that lets the walk stop early.
    max_weight: f64,
}

impl Ring {
    /// Builds the ring of the nodes with keys `keys` and capacities `capacity`.
    pub(crate) fn new(keys: &[u64], capacity: &[u64]) -> Self {
        let mut points: Vec<(u64, u32)> = Vec::new();
        for (n, (&key, &cap)) in keys.iter().zip(capacity).enumerate() {
            if cap > 0 {
                points.extend((0..POINTS).map(|i| (point(key, i), n as u32)));
            }
        }
        points.sort_unstable();
        let bits = (usize::BITS - points.len().leading_zeros()).clamp(1, MAX_INDEX_BITS);
        let shift = 64 - bits;
        let mut start = Vec::with_capacity((1 << bits) + 1);
        for (i, &(p, _)) in points.iter().enumerate() {
            let bucket = (p >> shift) as usize;
            start.resize(start.len().max(bucket + 1), i as u32);
        }
        start.resize((1 << bits) + 1, points.len() as u32);
        let weight: Vec<f64> = capacity.iter().map(|&c| c as f64).collect();
        Ring {
            pos: points.iter().map(|p| p.0).collect(),
            owner: points.iter().map(|p| p.1).collect(),
            start,
            shift,
            max_weight: weight.iter().copied().fold(0.0, f64::max),
            weight,
        }
    }

    /// Index of the first point at or after `q`, wrapping to 0 past the end.
    fn first_at_or_after(&self, q: u64) -> usize {
        let bucket = (q >> self.shift) as usize;
        let (mut i, end) = (self.start[bucket] as usize, self.start[bucket + 1] as usize);
        while i < end && self.pos[i] < q {
            i += 1;
        }
        if i == self.pos.len() { 0 } else { i }
    }
}

/// One probe's clockwise walk.
#[derive(Debug, Clone, Copy)]
struct Walk {
    at: u64,
    next: usize,
    /// Points not yet visited; the walk ends after one full turn.
    left: usize,
}

/// A node seen on some walk, with the best score seen for it so far.
#[derive(Debug, Clone, Copy)]
struct Seen {
    score: f64,
    node: u32,
}

impl PartialEq for Seen {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Seen {}
impl PartialOrd for Seen {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Seen {
    /// Reversed, so that `BinaryHeap` pops the lowest score; ties go to the lower
    /// node index, i.e. the lower node id.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(other.node.cmp(&self.node))
    }
}

/// The nodes in increasing score order for one bundle at a time, produced lazily
/// and remembered, so the selection rules can go over the order several times.
///
/// Call [`Ranker::start`] for each bundle, then [`Ranker::nth`]. The buffers are
/// reused from bundle to bundle.
#[derive(Debug)]
pub(crate) struct Ranker {
    walks: Vec<Walk>,
    heap: BinaryHeap<Seen>,
    /// `stamp[n] == epoch` when node `n` was already ranked for this bundle.
    stamp: Vec<u32>,
    epoch: u32,
    ranked: Vec<u32>,
}

impl Ranker {
    /// A ranker for rings of `nodes` nodes.
    pub(crate) fn new(nodes: usize) -> Self {
        Ranker {
            walks: Vec::with_capacity(PROBES as usize),
            heap: BinaryHeap::new(),
            stamp: vec![0; nodes],
            epoch: 0,
            ranked: Vec::new(),
        }
    }

    /// Starts ranking for the bundle with key `bundle_key`.
    pub(crate) fn start(&mut self, ring: &Ring, bundle_key: u64) {
        self.heap.clear();
        self.ranked.clear();
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // After 2^32 bundles, old stamps could equal the new epoch.
            self.stamp.fill(0);
            self.epoch = 1;
        }
        self.walks.clear();
        if !ring.pos.is_empty() {
            self.walks.extend((0..PROBES).map(|j| {
                let at = probe(bundle_key, j);
                Walk {
                    at,
                    next: ring.first_at_or_after(at),
                    left: ring.pos.len(),
                }
            }));
        }
    }

    /// The node of rank `i` (0 is the best), or `None` past the last node with
    /// capacity.
    pub(crate) fn nth(&mut self, ring: &Ring, i: usize) -> Option<u32> {
        while self.ranked.len() <= i {
            let node = self.next_node(ring)?;
            self.ranked.push(node);
        }
        Some(self.ranked[i])
    }

    /// Walks until the best seen node is certainly the best unranked one.
    fn next_node(&mut self, ring: &Ring) -> Option<u32> {
        loop {
            // The walk closest to its probe: every unvisited point is at least
            // this far from every probe.
            let frontier = self
                .walks
                .iter()
                .enumerate()
                .filter(|(_, w)| w.left > 0)
                .map(|(j, w)| (ring.pos[w.next].wrapping_sub(w.at), j))
                .min();
            if let Some(best) = self.heap.peek() {
                let safe = frontier.is_none_or(|(d, _)| best.score * ring.max_weight <= d as f64);
                if safe {
                    let node = self.heap.pop()?.node;
                    if self.stamp[node as usize] != self.epoch {
                        self.stamp[node as usize] = self.epoch;
                        return Some(node);
                    }
                    continue;
                }
            }
            let (d, j) = frontier?;
            let walk = &mut self.walks[j];
            let node = ring.owner[walk.next];
            walk.next = if walk.next + 1 == ring.pos.len() {
                0
            } else {
                walk.next + 1
            };
            walk.left -= 1;
            if self.stamp[node as usize] != self.epoch {
                let score = d as f64 / ring.weight[node as usize];
                self.heap.push(Seen { score, node });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::mix64;

    /// The score of every node computed from its definition, by brute force.
    fn brute_force_order(keys: &[u64], capacity: &[u64], bundle_key: u64) -> Vec<u32> {
        let mut scored: Vec<(f64, u32)> = Vec::new();
        for (n, (&key, &cap)) in keys.iter().zip(capacity).enumerate() {
            if cap == 0 {
                continue;
            }
            let best = (0..PROBES)
                .flat_map(|j| {
                    (0..POINTS).map(move |i| point(key, i).wrapping_sub(probe(bundle_key, j)))
                })
                .min()
                .unwrap();
            scored.push((best as f64 / cap as f64, n as u32));
        }
        scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        scored.into_iter().map(|(_, n)| n).collect()
    }

    fn lazy_order(ring: &Ring, ranker: &mut Ranker, bundle_key: u64) -> Vec<u32> {
        ranker.start(ring, bundle_key);
        (0..).map_while(|i| ranker.nth(ring, i)).collect()
    }

    #[test]
    fn walking_the_ring_ranks_nodes_by_their_score() {
        let keys: Vec<u64> = (0..40).map(|i| mix64(i + 1000)).collect();
        let capacity: Vec<u64> = (0..40).map(|i| [0, 1, 3, 10, 7][i % 5]).collect();
        let ring = Ring::new(&keys, &capacity);
        let mut ranker = Ranker::new(keys.len());
        for b in 0..200 {
            let bundle_key = mix64(b);
            assert_eq!(
                lazy_order(&ring, &mut ranker, bundle_key),
                brute_force_order(&keys, &capacity, bundle_key)
            );
        }
    }

    #[test]
    fn the_lookup_table_finds_the_first_point_at_or_after_any_position() {
        let keys: Vec<u64> = (0..5).map(mix64).collect();
        let ring = Ring::new(&keys, &[1; 5]);
        for q in (0..1000)
            .map(|i| mix64(i + 77))
            .chain([0, u64::MAX, ring.pos[3], ring.pos[3] + 1])
        {
            let expected = ring.pos.iter().position(|&p| p >= q).unwrap_or(0);
            assert_eq!(ring.first_at_or_after(q), expected);
        }
    }

    #[test]
    fn a_ring_without_capacity_ranks_nothing() {
        let ring = Ring::new(&[1, 2], &[0, 0]);
        let mut ranker = Ranker::new(2);
        assert!(lazy_order(&ring, &mut ranker, 5).is_empty());
    }
}
