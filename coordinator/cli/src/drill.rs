//! `cartable drill lose-site SITE` and `lose-region REGION`: what a fire would
//! cost, before it happens. The drill is the plan preview of `cartable plan
//! --dry-run --without` with every node of the site or region taken out, read
//! as an operator reads a fire: bundles lost for good, bytes to copy back to
//! `r`, whether the nodes receiving them have the room, and how long the repair
//! takes at the coordinator's timings. Nothing is changed.

use std::collections::BTreeMap;

use http::Method;
use serde::Serialize;

use super::client::ApiClient;
use super::commands::{Output, show};
use super::table::{Align, Table, short};
use cartable_proto::api::{NodeView, PlanChange, PlanPreview, RepairTimings};
use cartable_proto::units::{self, human_bytes};
use cartable_proto::{BundleId, NodeId};

/// `cartable drill ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DrillCommand {
    /// Preview losing every node of a site (REGION/SITE when two regions share the name).
    LoseSite {
        /// The site, e.g. lille or nord/lille.
        site: String,
        #[command(flatten)]
        args: DrillArgs,
    },
    /// Preview losing every node of a region.
    LoseRegion {
        /// The region, e.g. nord.
        region: String,
        #[command(flatten)]
        args: DrillArgs,
    },
}

/// What every drill takes.
#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Bytes per second one copy runs at, e.g. 20MiB: the nodes'
    /// `quic.fetch_rate_mib_s`, or a rate measured on a real copy. Without it
    /// the time left out is the transfer's.
    #[arg(long, value_name = "SIZE", value_parser = parse_rate)]
    copy_rate: Option<u64>,
    #[command(flatten)]
    out: Output,
}

/// What a drill answers (`--json` prints it as is).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillReport {
    /// What is lost, e.g. `site nord/lille`.
    pub lose: String,
    /// The nodes taken out.
    pub nodes: Vec<NodeId>,
    /// Bundles that would lose every complete copy.
    pub bundles_lost: Vec<BundleId>,
    /// Bundles that would gain copies.
    pub bundles_to_repair: usize,
    /// Copies to make to get back to `r`.
    pub copies_to_make: usize,
    /// Bytes those copies add up to.
    pub bytes_to_copy: u64,
    /// Bytes of the complete copies the lost nodes hold.
    pub bytes_lost: u64,
    /// Bundles the survivors could not place fully (too few sites or too little room).
    pub unplaced: usize,
    /// Bundles left below `min_replicas`, copied without waiting for the repair delay.
    pub urgent: usize,
    /// Each node that would receive copies: what it receives and the room it has.
    pub receivers: Vec<Receiver>,
    /// Whether every receiving node has the room.
    pub disk_ok: bool,
    /// How long the repair takes.
    pub estimate: Estimate,
}

/// A node that would receive copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receiver {
    /// The node.
    pub node: NodeId,
    /// Copies it would make.
    pub copies: usize,
    /// Bytes they add up to.
    pub bytes: u64,
    /// Its declared capacity less what it uses now.
    pub room: u64,
}

/// The repair's timeline, in seconds after the fire.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// When the lost nodes are seen down (`down_after_ms`).
    pub detect_secs: f64,
    /// When the copies start (plus `repair_delay_secs` unless every bundle is urgent).
    pub start_secs: f64,
    /// When the last copy is verified.
    pub done_secs: f64,
    /// The rate of one copy assumed, bytes per second; `None`: transfer left out.
    pub copy_rate: Option<u64>,
    /// The model, in words.
    pub assumes: String,
}

/// A copy rate, a size with its unit (20MiB). A bare number is refused: the
/// nodes' `fetch_rate_mib_s` is a bare number of MiB, and the same number
/// read as bytes would estimate a repair of months.
fn parse_rate(text: &str) -> Result<u64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} has no unit: give {text}MiB for the nodes' fetch_rate_mib_s = {text}"
        ));
    }
    units::parse_size(text)
}

impl DrillCommand {
    /// Asks the coordinator for the preview and prints the drill.
    pub async fn run(self, api: &mut ApiClient) -> anyhow::Result<()> {
        let (lose, args) = match self {
            Self::LoseSite { site, args } => (Lose::Site(site), args),
            Self::LoseRegion { region, args } => (Lose::Region(region), args),
        };
        let nodes: Vec<NodeView> = api.get("/api/nodes").await?;
        let (label, lost) = lose.nodes(&nodes)?;
        let change = PlanChange {
            without: lost.clone(),
            with: Vec::new(),
        };
        let preview: PlanPreview = api.send_json(Method::POST, "/api/plan", &change).await?;
        let report = report(label, lost, &preview, &nodes, args.copy_rate)?;
        show(args.out, &report, text)
    }
}

/// The place a drill burns.
enum Lose {
    Site(String),
    Region(String),
}

impl Lose {
    /// A label and the nodes of the place; refused when no node is there, or
    /// when a site name is in two regions and no region was given.
    fn nodes(&self, nodes: &[NodeView]) -> anyhow::Result<(String, Vec<NodeId>)> {
        let (label, matching): (String, Vec<&NodeView>) = match self {
            Self::Region(region) => (
                format!("region {region}"),
                nodes.iter().filter(|n| n.region == *region).collect(),
            ),
            Self::Site(site) => {
                let (region, site) = match site.split_once('/') {
                    Some((r, s)) => (Some(r), s),
                    None => (None, site.as_str()),
                };
                let matching: Vec<&NodeView> = nodes
                    .iter()
                    .filter(|n| n.site == site && region.is_none_or(|r| n.region == r))
                    .collect();
                let regions: Vec<&str> = matching.iter().map(|n| n.region.as_str()).collect();
                if let Some(other) = regions.iter().find(|r| **r != regions[0]) {
                    anyhow::bail!(
                        "site {site} is in regions {} and {other}: say which, as REGION/{site}",
                        regions[0]
                    );
                }
                let label = match regions.first() {
                    Some(region) => format!("site {region}/{site}"),
                    None => format!("site {site}"),
                };
                (label, matching)
            }
        };
        anyhow::ensure!(
            !matching.is_empty(),
            "no node in {label}: `cartable nodes` lists regions and sites"
        );
        Ok((label, matching.iter().map(|n| n.id).collect()))
    }
}

/// The drill, from the preview without the lost nodes and the node list.
fn report(
    lose: String,
    lost: Vec<NodeId>,
    preview: &PlanPreview,
    nodes: &[NodeView],
    copy_rate: Option<u64>,
) -> anyhow::Result<DrillReport> {
    let mut incoming: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
    for m in &preview.moves {
        for to in &m.to {
            let node: NodeId = to.parse().map_err(|_| {
                anyhow::anyhow!("the coordinator named {to:?} in a drill: not a node id")
            })?;
            incoming.entry(node).or_default().push(m.size);
        }
    }
    let receivers: Vec<Receiver> = incoming
        .iter()
        .map(|(node, sizes)| Receiver {
            node: *node,
            copies: sizes.len(),
            bytes: sizes.iter().sum(),
            room: nodes
                .iter()
                .find(|n| n.id == *node)
                .map_or(0, |n| n.capacity.saturating_sub(n.used)),
        })
        .collect();
    let bundles_to_repair = preview.moves.iter().filter(|m| !m.to.is_empty()).count();
    Ok(DrillReport {
        lose,
        nodes: lost,
        bundles_lost: preview.lost.clone(),
        bundles_to_repair,
        copies_to_make: receivers.iter().map(|r| r.copies).sum(),
        bytes_to_copy: receivers.iter().map(|r| r.bytes).sum(),
        bytes_lost: preview.bytes_on_removed,
        unplaced: preview.unplaced,
        urgent: preview.urgent,
        disk_ok: receivers.iter().all(|r| r.bytes <= r.room),
        estimate: estimate(
            &preview.timings,
            incoming.values(),
            preview.urgent < bundles_to_repair,
            copy_rate,
        ),
        receivers,
    })
}

/// The timeline: the nodes are seen down after `down_after`; the copies start
/// then, or after the repair delay too when some bundle is not urgent; each
/// receiving node runs `copies_per_node` copies at once, in the plan's order,
/// each taking its bytes at `copy_rate` plus two heartbeats (one brings the
/// order, the next reports the copy for its check). Sources are assumed not to
/// be the bottleneck.
fn estimate<'a>(
    t: &RepairTimings,
    incoming: impl Iterator<Item = &'a Vec<u64>>,
    waits_for_delay: bool,
    copy_rate: Option<u64>,
) -> Estimate {
    let heartbeat = t.heartbeat_ms as f64 / 1000.0;
    let detect = t.down_after_ms as f64 / 1000.0;
    let start = detect
        + if waits_for_delay {
            t.repair_delay_secs as f64
        } else {
            0.0
        };
    let slots = t.copies_per_node.max(1);
    let copying = incoming
        .map(|sizes| {
            let mut free_at = vec![0.0_f64; slots];
            for size in sizes {
                let bytes = copy_rate.map_or(0.0, |rate| *size as f64 / rate.max(1) as f64);
                let slot = free_at.iter_mut().min_by(|a, b| a.total_cmp(b));
                if let Some(slot) = slot {
                    *slot += bytes + 2.0 * heartbeat;
                }
            }
            free_at.into_iter().fold(0.0, f64::max)
        })
        .fold(0.0, f64::max);
    let rate = copy_rate.map_or_else(
        || "transfer time left out (no --copy-rate)".to_owned(),
        |r| format!("each copy at {}/s (--copy-rate)", human_bytes(r)),
    );
    Estimate {
        detect_secs: detect,
        start_secs: start,
        done_secs: start + copying,
        copy_rate,
        assumes: format!(
            "{rate}, {slots} copies at once per node, two heartbeats ({}) per copy to order \
             and verify it, sources not the bottleneck",
            seconds(2.0 * heartbeat)
        ),
    }
}

fn seconds(s: f64) -> String {
    format!("{s:.1}s")
}

/// How a drill reads in a terminal.
pub fn text(r: &DrillReport) -> String {
    let e = &r.estimate;
    let nodes: Vec<String> = r.nodes.iter().map(short).collect();
    let lost = match r.bundles_lost.len() {
        0 => "0".to_owned(),
        n => format!(
            "{n}: {}",
            r.bundles_lost
                .iter()
                .map(short)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let done = if e.copy_rate.is_some() {
        ""
    } else {
        "at least "
    };
    let mut out = format!(
        "drill: losing {} ({} nodes: {}); nothing was changed\n\
         bundles that would lose every copy: {lost}\n\
         to copy back: {} copies of {} bundles, {} (the lost nodes hold {} of complete copies)\n\
         not placeable on the survivors: {} bundles; below min_replicas, copied at once: {}\n\
         disk: {}\n\
         time: seen down after {}, copies start at {}, all verified {done}{} after the fire\n\
         assumes: {}\n",
        r.lose,
        r.nodes.len(),
        nodes.join(", "),
        r.copies_to_make,
        r.bundles_to_repair,
        human_bytes(r.bytes_to_copy),
        human_bytes(r.bytes_lost),
        r.unplaced,
        r.urgent,
        if r.disk_ok {
            "every receiving node has the room"
        } else {
            "SHORT: some receiving nodes lack the room (below)"
        },
        seconds(e.detect_secs),
        seconds(e.start_secs),
        seconds(e.done_secs),
        e.assumes,
    );
    let mut t = Table::new(&[
        ("RECEIVER", Align::Left),
        ("COPIES", Align::Right),
        ("BYTES", Align::Right),
        ("ROOM", Align::Right),
    ]);
    for rc in &r.receivers {
        t.row(vec![
            short(rc.node),
            rc.copies.to_string(),
            human_bytes(rc.bytes),
            human_bytes(rc.room),
        ]);
    }
    out.push_str(&t.render_or("no copy to make"));
    out
}

#[cfg(test)]
#[path = "drill_tests.rs"]
mod tests;
