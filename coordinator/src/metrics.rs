//! What the coordinator tells the operator's monitoring (names and alert
//! rules: `docs/monitoring.md`). Events are counted as they happen
//! ([`Counts`]); everything else is read from the state at each scrape
//! ([`StateCollector`]), so that no gauge can drift from the state it shows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cartable_net::https::Load;
use cartable_net::metrics::encode::{self, Scrape};
use cartable_net::metrics::https::HttpsCollector;
use cartable_proto::api::NodeState;
use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::{Coordinator, lifecycle, views};

/// Events counted as they happen.
#[derive(Debug, Clone)]
pub struct Counts {
    /// Heartbeats received from nodes (refused ones included).
    pub heartbeats: Counter,
    /// Copies (first placements and repairs) verified complete on a node.
    pub copies_completed: Counter,
    /// How long each placement run took.
    pub plan_seconds: Histogram,
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            heartbeats: Counter::default(),
            copies_completed: Counter::default(),
            // 100 µs to ~13 s: a few nodes to a national cluster.
            plan_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
        }
    }
}

/// The coordinator's registry: its counts, its state read at each scrape, and
/// its HTTPS server's load.
pub fn registry(coord: Arc<Coordinator>, https: Load) -> Registry {
    let mut registry = Registry::default();
    let counts = coord.metrics.clone();
    registry.register(
        "cartable_coordinator_heartbeats",
        "Heartbeats received from nodes (rate() gives heartbeats per second)",
        counts.heartbeats,
    );
    registry.register(
        "cartable_coordinator_copies_completed",
        "Copies verified complete on a node, first placements and repairs alike (rate() gives the repair rate)",
        counts.copies_completed,
    );
    registry.register(
        "cartable_coordinator_plan_duration_seconds",
        "How long each placement run took",
        counts.plan_seconds,
    );
    registry.register_collector(Box::new(StateCollector {
        coord,
        last: Mutex::default(),
    }));
    registry.register_collector(Box::new(HttpsCollector(https)));
    registry
}

/// How long one reading of the state answers scrapes: a reading walks every
/// node and bundle under the state's lock, so scrapes back to back on the
/// metrics port must not each take it.
const READING_LIFE: Duration = Duration::from_secs(1);

/// Reads nodes, bundles and the repair queue from the state, at most once per
/// [`READING_LIFE`].
#[derive(Debug)]
struct StateCollector {
    coord: Arc<Coordinator>,
    last: Mutex<Option<(Instant, Reading)>>,
}

/// What one scrape reads under the state's lock.
#[derive(Debug, Clone)]
struct Reading {
    nodes: [(&'static str, f64); 3],
    by_copies: BTreeMap<usize, u64>,
    under_target: u64,
    unplaced: u64,
    queued: u64,
    running: u64,
}

impl StateCollector {
    fn reading(&self) -> Reading {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((at, reading)) if at.elapsed() < READING_LIFE => reading.clone(),
            _ => {
                let reading = self.read();
                *last = Some((Instant::now(), reading.clone()));
                reading
            }
        }
    }

    fn read(&self) -> Reading {
        let coord = &self.coord;
        let policy = &coord.policy;
        let now = Instant::now();
        let c = coord.lock();
        let mut nodes = [("up", 0.0), ("down", 0.0), ("draining", 0.0)];
        for id in c.nodes.keys() {
            let i = match views::state_of(&c, id, policy, now) {
                NodeState::Up => 0,
                NodeState::Down => 1,
                NodeState::Draining => 2,
            };
            nodes[i].1 += 1.0;
        }
        let mut by_copies = BTreeMap::new();
        let mut under_target = 0;
        for (id, b) in &c.bundles {
            let complete = c.live_complete(id, now, policy.down_after);
            *by_copies.entry(complete).or_insert(0) += 1;
            under_target += u64::from(complete < usize::from(b.replicas));
        }
        let (running, queued) = lifecycle::repair_queue(&c, policy, now);
        Reading {
            nodes,
            by_copies,
            under_target,
            unplaced: c.unplaced.len() as u64,
            queued: queued.len() as u64,
            running: running.len() as u64,
        }
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut scrape: Scrape) -> std::fmt::Result {
        let r = self.reading();
        encode::gauges(
            &mut scrape,
            "cartable_coordinator_nodes",
            "Member nodes by state: up, down (no heartbeat within down_after_ms), draining",
            "state",
            r.nodes,
        )?;
        encode::gauges(
            &mut scrape,
            "cartable_coordinator_bundles",
            "Published bundles by their number of complete copies on nodes that are up",
            "copies",
            r.by_copies
                .iter()
                .map(|(copies, n)| (copies.to_string(), *n as f64)),
        )?;
        encode::gauge(
            &mut scrape,
            "cartable_coordinator_bundles_under_target",
            "Bundles with fewer complete copies on nodes that are up than their replication factor r",
            r.under_target as f64,
        )?;
        encode::gauge(
            &mut scrape,
            "cartable_coordinator_bundles_unplaceable",
            "Bundles the last plan could not place fully (too few sites or too little room)",
            r.unplaced as f64,
        )?;
        encode::gauge(
            &mut scrape,
            "cartable_coordinator_repair_queue",
            "Copies waiting for their turn (copies_per_node are running on their node)",
            r.queued as f64,
        )?;
        encode::gauge(
            &mut scrape,
            "cartable_coordinator_copies_running",
            "Copies nodes have been told to make now",
            r.running as f64,
        )
    }
}
