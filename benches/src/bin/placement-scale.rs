//! `placement-scale`: `cartable_placement::plan` at national scale, on one thread.
//!
//! 60,000 nodes in 100 sites over 13 regions (capacities from 250 GB to 8 TB),
//! 1,000,000 bundles (1 MB to 2 GB, r = 3). Times a full plan from empty, reads
//! peak memory (VmHWM), then re-plans with the first plan as `previous` after one
//! node joins and after one node leaves, and reports the replicas moved against
//! the joining or leaving node's fair share, `1/N` of the replicas (`r/N` per
//! bundle). Goal: full plan within 10 s and 2 GiB. Results go to stdout.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use cartable_placement::{Assignment, BundleSpec, NodeSpec, Plan, Topology, movement, plan};
use cartable_proto::{BlobHash, BundleId, NodeId};

const NODES: usize = 60_000;
const SITES: usize = 100;
const REGIONS: usize = 13;
const BUNDLES: usize = 1_000_000;
const REPLICAS: u8 = 3;

/// SplitMix64: a fixed stream, so every run builds the same inputs.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn id(&mut self) -> [u8; 32] {
        let mut bytes = [0; 32];
        for chunk in bytes.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        bytes
    }

    /// Log-uniform in `[low, high)`: many small, few large.
    fn log_uniform(&mut self, low: f64, high: f64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (low * (high / low).powf(u)) as u64
    }
}

fn node(s: &mut Stream, site: usize) -> NodeSpec {
    // Regions of unequal size: site k is in region k mod 13, so regions hold 7 or
    // 8 sites; sites hold 300 to 900 nodes (see `site_of`).
    NodeSpec {
        id: NodeId::from_bytes(s.id()),
        region: format!("region-{:02}", site % REGIONS),
        site: format!("site-{site:03}"),
        capacity: s.log_uniform(250e9, 8e12),
    }
}

/// Site of the i-th node: weights 1 to 3 by site number, so sites differ in size.
fn site_of(i: usize) -> usize {
    let weights = |k: usize| 1 + k % 3;
    let total: usize = (0..SITES).map(weights).sum();
    let mut slot = i * total / NODES;
    (0..SITES)
        .find(|&k| {
            let w = weights(k);
            let here = slot < w;
            slot = slot.saturating_sub(w);
            here
        })
        .unwrap_or(SITES - 1)
}

fn peak_rss_mib() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("empty VmHWM")?
        .parse()?;
    Ok(kib / 1024)
}

fn timed(label: &str, f: impl FnOnce() -> Plan) -> Plan {
    let start = Instant::now();
    let p = f();
    println!("{label:<28} {:>8.2} s", start.elapsed().as_secs_f64());
    p
}

/// `share`: the joining or leaving node's capacity over the total, its fair share
/// of the replicas.
fn report_movement(label: &str, previous: &Assignment, next: &Assignment, n: usize, share: f64) {
    let m = movement(previous, next);
    let fraction = m.added as f64 / m.total as f64;
    println!(
        "{label:<28} {:.3} x the node's capacity share ({:.3e}), {:.3} x 1/N",
        fraction / share,
        share,
        fraction * n as f64,
    );
    let per_bundle = m.added as f64 / next.len() as f64;
    let r = f64::from(REPLICAS);
    println!(
        "{label:<28} added {} removed {} of {} replicas, {:.3e} of them; \
         {:.3e} per bundle (r/N = {:.3e}, 1.2 r/N = {:.3e})",
        m.added,
        m.removed,
        m.total,
        fraction,
        per_bundle,
        r / n as f64,
        1.2 * r / n as f64,
    );
}

fn main() -> Result<()> {
    let mut s = Stream(0x0ca7_7ab1e);
    let topology = Topology {
        nodes: (0..NODES).map(|i| node(&mut s, site_of(i))).collect(),
    };
    let bundles: Vec<BundleSpec> = (0..BUNDLES)
        .map(|_| BundleSpec {
            id: BundleId::from_hash(BlobHash::from_bytes(s.id())),
            size: s.log_uniform(1e6, 2e9),
            replicas: REPLICAS,
        })
        .collect();
    let capacity: u64 = topology.nodes.iter().map(|n| n.capacity).sum();
    let stored: u64 = bundles.iter().map(|b| b.size * u64::from(REPLICAS)).sum();
    println!(
        "{NODES} nodes, {SITES} sites, {REGIONS} regions, {BUNDLES} bundles x {REPLICAS}: \
         {:.1} TB of replicas on {:.1} PB ({:.2}% full); inputs {} MiB",
        stored as f64 / 1e12,
        capacity as f64 / 1e15,
        100.0 * stored as f64 / capacity as f64,
        peak_rss_mib()?,
    );

    let first = timed("full plan from empty", || {
        plan(&topology, &bundles, &Assignment::new())
    });
    ensure!(
        first.unplaced.is_empty(),
        "{} bundles unplaced",
        first.unplaced.len()
    );
    println!("{:<28} {:>8} MiB", "peak memory (VmHWM)", peak_rss_mib()?);

    let again = timed("re-plan, nothing changed", || {
        plan(&topology, &bundles, &first.assignment)
    });
    ensure!(
        again == first,
        "re-planning an unchanged topology changed the plan"
    );
    drop(again);

    // The node that joins and the one that leaves have the mean capacity, so
    // that their fair share is 1/N and the movement compares with r/N directly.
    let mean = capacity / NODES as u64;
    let mut joined = topology.clone();
    joined.nodes.push(NodeSpec {
        id: NodeId::from_bytes(s.id()),
        capacity: mean,
        ..topology.nodes[NODES / 2].clone()
    });
    let after_join = timed("re-plan, one node joined", || {
        plan(&joined, &bundles, &first.assignment)
    });
    let share = |node: &NodeSpec, total: u64| node.capacity as f64 / total as f64;
    let newcomer = &joined.nodes[NODES];
    let join_share = share(newcomer, capacity + newcomer.capacity);
    report_movement(
        "  one node joined",
        &first.assignment,
        &after_join.assignment,
        NODES + 1,
        join_share,
    );
    drop(after_join);

    let leaving = (0..NODES)
        .min_by_key(|i| topology.nodes[*i].capacity.abs_diff(mean))
        .expect("nodes");
    let mut left = topology.clone();
    left.nodes.swap_remove(leaving);
    let after_leave = timed("re-plan, one node left", || {
        plan(&left, &bundles, &first.assignment)
    });
    let leave_share = share(&topology.nodes[leaving], capacity);
    report_movement(
        "  one node left",
        &first.assignment,
        &after_leave.assignment,
        NODES,
        leave_share,
    );
    println!(
        "{:<28} {:>8} MiB",
        "peak memory at the end",
        peak_rss_mib()?
    );
    Ok(())
}
