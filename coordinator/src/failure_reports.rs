//! Members' reports of peers that sent bytes failing verification. A report
//! is a claim by one member about another, so it is kept per reporter: a
//! member forging reports only grows its own line, and `cartable node show`
//! says how many members complained, not just how often. Reports change no
//! placement (a forged one must not cost a plan), and each member's are
//! counted at most once per heartbeat interval, each count capped, for at most
//! [`MAX_PEERS_PER_REPORT`] peers: a member cannot make the coordinator write
//! more than a few records per interval, whatever it sends.

use std::time::{Duration, Instant};

use cartable_proto::NodeId;
use cartable_proto::control::FailureReport;

use crate::state::Cluster;

/// Peers counted from one member's report; the rest of the report is dropped.
pub const MAX_PEERS_PER_REPORT: usize = 8;
/// The most failures one report counts against one peer.
pub const MAX_COUNT_PER_REPORT: u64 = 1_000;

/// Counts `reporter`'s reports, unless it reported less than `interval` ago.
pub fn count(
    c: &mut Cluster,
    reporter: NodeId,
    reports: &[FailureReport],
    interval: Duration,
    now: Instant,
) -> anyhow::Result<()> {
    if reports.is_empty() {
        return Ok(());
    }
    let last = c.live.get(&reporter).and_then(|l| l.reports_counted);
    if last.is_some_and(|at| now.saturating_duration_since(at) < interval) {
        tracing::debug!(reporter = %reporter, "failure reports sooner than a heartbeat: dropped");
        return Ok(());
    }
    if let Some(live) = c.live.get_mut(&reporter) {
        live.reports_counted = Some(now);
    }
    let mut peers: Vec<&FailureReport> = reports.iter().filter(|r| r.peer != reporter).collect();
    peers.sort_by_key(|r| r.peer);
    peers.dedup_by_key(|r| r.peer);
    for report in peers.into_iter().take(MAX_PEERS_PER_REPORT) {
        let Some(mut peer) = c.nodes.get(&report.peer).cloned() else {
            continue;
        };
        let counted = report.count.min(MAX_COUNT_PER_REPORT);
        // Warned once per reporter and peer: a liar must not flood the log.
        if !peer.failure_reports.contains_key(&reporter) {
            tracing::warn!(reporter = %reporter, peer = %report.peer, "a member reports a peer that sent bytes failing verification (cartable node show)");
        }
        let line = peer.failure_reports.entry(reporter).or_default();
        *line = line.saturating_add(counted);
        c.save_node(peer)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Liveness, MemoryKv, NodeRecord};
    use cartable_proto::control::Contact;

    fn cluster(now: Instant) -> anyhow::Result<Cluster> {
        let mut c = Cluster::load(Box::new(MemoryKv::default()), now)?;
        for i in 1..=20u8 {
            let contact = Contact {
                https_url: format!("https://127.0.0.{i}"),
                quic: "127.0.0.1:9".parse()?,
                https_cert_sha256: "ab".repeat(32),
            };
            let id = NodeId::from_bytes([i; 32]);
            c.save_node(NodeRecord::joined(id, "r", "s", 1 << 30, contact))?;
            c.live.insert(id, Liveness::heard(now));
        }
        c.needs_plan = false;
        Ok(c)
    }

    fn report(peer: u8, count: u64) -> FailureReport {
        FailureReport {
            peer: NodeId::from_bytes([peer; 32]),
            count,
        }
    }

    #[test]
    fn reports_are_kept_per_reporter_rate_limited_and_never_replan() -> anyhow::Result<()> {
        let now = Instant::now();
        let mut c = cluster(now)?;
        let liar = NodeId::from_bytes([1; 32]);
        let honest = NodeId::from_bytes([2; 32]);
        let victim = NodeId::from_bytes([3; 32]);
        let beat = Duration::from_secs(5);
        count(&mut c, liar, &[report(3, u64::MAX)], beat, now)?;
        count(&mut c, liar, &[report(3, 5)], beat, now + beat / 2)?;
        count(&mut c, honest, &[report(3, 2)], beat, now)?;
        let lines = &c.nodes[&victim].failure_reports;
        assert_eq!(
            lines[&liar], MAX_COUNT_PER_REPORT,
            "capped, and the second dropped"
        );
        assert_eq!(lines[&honest], 2);
        assert!(!c.needs_plan, "a report never costs a plan");

        count(&mut c, liar, &[report(3, 5)], beat, now + beat)?;
        assert_eq!(
            c.nodes[&victim].failure_reports[&liar],
            MAX_COUNT_PER_REPORT + 5
        );
        Ok(())
    }

    #[test]
    fn one_report_touches_a_bounded_number_of_peers() -> anyhow::Result<()> {
        let now = Instant::now();
        let mut c = cluster(now)?;
        let liar = NodeId::from_bytes([1; 32]);
        let many: Vec<FailureReport> = (1..=20).chain(1..=20).map(|p| report(p, 1)).collect();
        count(&mut c, liar, &many, Duration::from_secs(5), now)?;
        let accused = c
            .nodes
            .values()
            .filter(|n| !n.failure_reports.is_empty())
            .count();
        assert_eq!(accused, MAX_PEERS_PER_REPORT);
        assert!(
            c.nodes[&liar].failure_reports.is_empty(),
            "no report against oneself"
        );
        Ok(())
    }
}
