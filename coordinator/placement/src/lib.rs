//! Placement of bundle replicas over nodes, sites and regions: a pure function
//! from the topology, the bundles and the previous assignment to a new
//! assignment. No IO, no clock, no randomness; the coordinator, the simulator and
//! `cartable plan --dry-run` all call [`plan`].
//!
//! # Map
//!
//! - [`plan`]: the entry point; `plan.rs` holds its three phases.
//! - [`movement`]: what going from one assignment to another copies and deletes.
//! - `cluster.rs`: the topology sorted and numbered; `ring.rs`: ranking nodes
//!   per bundle; `select.rs`: the spread rules; `hash.rs`: the fixed hashes.
//!
//! # Design note
//!
//! **Objective.** Each bundle gets `r` replicas, spread as widely as the nodes
//! with room allow, each node loaded in proportion to its capacity, and a change
//! of topology moves as few replicas as possible.
//!
//! **Invariants** (checked by the property tests in `tests/`):
//!
//! 1. Never two replicas of a bundle on one node.
//! 2. `min(r, sites with room)` distinct sites; two replicas share a site only
//!    when fewer than `r` sites have room for the bundle. At least 2 regions when
//!    `r >= 2` and 2 regions have room. A brute-force oracle on small clusters
//!    checks that no choice of nodes does better.
//! 3. The bundles on a node fit in its capacity. What cannot be placed is placed
//!    as far as it can be and reported in [`Plan::unplaced`], never forced.
//! 4. The result does not depend on the order of the nodes or the bundles (both
//!    are sorted by id first; duplicates are merged the same way whatever their
//!    order) and uses no hash map iteration order.
//! 5. Re-planning with the previous plan as `previous` and nothing changed
//!    returns the same plan.
//! 6. When capacity does not bind, adding or removing one of `N` equal nodes
//!    moves about `1/N` of the replicas (`r/N` per bundle): the new node's share,
//!    or the lost node's.
//!
//! **Algorithm.** Per bundle, the nodes are ranked by a score that depends only
//! on the bundle, the node's id and the node's capacity (see `ring.rs`): the
//! clockwise distance from one of the bundle's 8 probes to one of the node's 64
//! points on a 64-bit ring, divided by the capacity. This is weighted
//! rendezvous hashing with a structured hash: the best node is drawn in
//! proportion to capacity, and since no node's score depends on another node, a
//! new node can only take places (moving `~1/N` of the replicas) and a removed
//! node only frees its own. Unlike plain rendezvous it needs no score for each
//! of the 60,000 nodes: walking clockwise from the probes visits nodes in score
//! order and stops after a few dozen points. A hierarchy (rendezvous over regions,
//! then sites, then nodes) would be as cheap but moves about twice as much: a
//! node joining raises its site's weight, pulling bundles into the site that then
//! land on its old nodes too.
//!
//! The plan has three phases. (1) Each bundle takes, in rank order, the nodes
//! the spread rules allow (`select.rs`), counting only nodes large enough to hold
//! it alone: its *target*, a function of the topology and the bundle only.
//! (2) Each node admits its targets first-fit within its capacity, replicas it
//! already holds in `previous` first, then newcomers by bundle id: a full node
//! keeps what it has, so capacity pressure does not cascade. (3) Bundles short of
//! replicas go through the rules again with the room left, trying the nodes that
//! held them in `previous` before the rest of the ranking.
//!
//! **Weights.** The ranking weight is the node's *declared* capacity, and free
//! space only acts as a hard limit. Weights that followed free space would change
//! every time a disk fills, re-ranking bundles all over the cluster; with
//! declared capacities, placement only changes when the topology does, and the
//! proportional weighting fills nodes at about the same rate anyway.
//!
//! **Not guaranteed.** The plan is not an optimal packing: a bundle refused by a
//! full node takes the next one with room, and a full cluster can report as
//! unplaced a bundle that a global solver would fit by moving others. Shares are
//! proportional to capacity only up to the ring's unevenness (a few percent, from
//! 64 points per node). Movement is bounded only while capacity does not bind;
//! when it does, replicas refused in phase 2 can go elsewhere. Movement counts
//! replicas, not bytes. A single node much larger than the rest makes ranking
//! slower (the walk's stopping bound uses the largest capacity).

mod cluster;
mod hash;
mod movement;
mod plan;
mod ring;
mod select;

use cartable_proto::{BundleId, NodeId};

pub use movement::{Movement, movement};

/// One node eligible to receive replicas (the caller leaves out down, draining and
/// removed nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's id.
    pub id: NodeId,
    /// Its region's name.
    pub region: String,
    /// Its site's name, unique within the region.
    pub site: String,
    /// Bytes it offers for replicas; 0 takes none.
    pub capacity: u64,
}

/// The nodes that may receive replicas.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    /// In any order; a node listed twice counts once.
    pub nodes: Vec<NodeSpec>,
}

/// A bundle to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleSpec {
    /// The bundle's id.
    pub id: BundleId,
    /// Its size in bytes, counted against each node holding a replica.
    pub size: u64,
    /// Replicas wanted, `r`; 0 places none.
    pub replicas: u8,
}

/// Which nodes hold (or are to hold) each bundle; a bundle's nodes are in
/// increasing id order.
pub type Assignment = std::collections::BTreeMap<BundleId, Vec<NodeId>>;

/// The result of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Every bundle given, with the nodes it is placed on (possibly fewer than
    /// wanted, possibly none).
    pub assignment: Assignment,
    /// The bundles with fewer replicas than wanted, in bundle id order.
    pub unplaced: Vec<Unplaced>,
}

/// A bundle placed on fewer nodes than it wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unplaced {
    /// The bundle.
    pub bundle: BundleId,
    /// Replicas wanted.
    pub wanted: u8,
    /// Replicas placed.
    pub placed: u8,
    /// Why the rest were not.
    pub reason: UnplacedReason,
}

/// Why a bundle is short of replicas, the first that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnplacedReason {
    /// The topology has fewer nodes than the replicas wanted.
    TooFewNodes,
    /// Fewer nodes than the replicas wanted have a capacity of at least the
    /// bundle's size, even empty.
    TooLarge,
    /// Enough nodes are large enough, but the other bundles leave too little room.
    NoCapacity,
}

/// In words, as an operator reads it in `cartable bundles`.
impl std::fmt::Display for UnplacedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::TooFewNodes => "fewer nodes can take a copy than copies wanted",
            Self::TooLarge => "too few nodes are large enough for it, even empty",
            Self::NoCapacity => "the nodes large enough are too full",
        })
    }
}

/// Places `bundles` on the nodes of `topology`, keeping what `previous` already
/// placed where the rules allow. Bundles in `previous` but not in `bundles` are
/// dropped; nodes in `previous` but not in `topology` lose their replicas. See the
/// crate's design note for the rules and guarantees.
pub fn plan(topology: &Topology, bundles: &[BundleSpec], previous: &Assignment) -> Plan {
    plan::plan(topology, bundles, previous)
}
