//! How far the coordinator believes a member, with no IO (the checks
//! themselves are in [`crate::spotcheck`], run by the daemon).
//!
//! A member's word is checked before it counts, and again later:
//!
//! 1. **A claim** (a bundle the heartbeat lists as held) is checked only when
//!    the plan placed the bundle on that node, or the node was given an upload
//!    grant for it while the bundle is short of copies
//!    ([`crate::lifecycle::apply_heartbeat`]). Any other claim is ignored: a
//!    member cannot make itself a holder of what it was never given.
//! 2. **The claim check** ([`Sample::CLAIM`](crate::spotcheck::Sample)) asks
//!    random groups across the bundle's files. Passed, the copy is *complete*:
//!    browsers may be sent to it and other nodes copy from it.
//! 3. **The proof**: a complete copy counts for releasing another copy (make
//!    before break, the release list of the orders, an upload kept as a source)
//!    only once it also passed a later *check under load*
//!    ([`Sample::UNDER_LOAD`](crate::spotcheck::Sample)): a megabyte of random
//!    groups asked at once. Copying again, or losing the copy, needs a new proof.
//! 4. **Re-checks**: the daemon re-checks one random complete copy per
//!    [`RECHECK_EVERY`], so a copy deleted after it was counted is found.
//! 5. **Failures**: a refuted check (missing data, a wrong byte; not a timeout
//!    or a busy node, which an honest node may give) is counted in the node's
//!    record (one strike per heartbeat at most: a damaged file that several
//!    bundles share is one fault), and the copy stops counting at once
//!    (complete → copying, a releasing one is forgotten). After [`UNRELIABLE_AFTER`] failures the
//!    node is *unreliable*: none of its claims is checked or counted, it takes
//!    no new copies and its copies are placed elsewhere (its own kept until
//!    replaced, as for a draining node), `cartable status` names it, and only
//!    an admin clears the mark (`cartable node trust`), e.g. once the disk is
//!    fixed.
//!
//! What this costs a liar: every check it answers without the bytes is paid
//! with bytes fetched from an honest copy, again at every re-check, and it
//! fails the first check that no honest copy answers for it in time; three
//! failures and it is out. A release never relies on it before a check under
//! load. Two colluding liars relaying each other still need an honest copy
//! somewhere; that one is never released on their word alone, as every copy a
//! release relies on was itself checked by the coordinator.

use std::time::{Duration, Instant};

use cartable_proto::{BundleId, NodeId};

use crate::state::Cluster;
use cartable_proto::api::ReplicaState;

/// Refuted checks after which a node is marked unreliable.
pub const UNRELIABLE_AFTER: u64 = 3;
/// How often the daemon re-checks a random complete copy.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// Records a refuted check of `node`'s copy of `bundle`: the copy stops
/// counting; when the node still claims it, the failure is counted, and
/// repeated failures mark the node. The
/// daemon calls it for a re-check only while the copy is still recorded (a
/// copy released meanwhile may be deleted by now).
pub fn refuted(c: &mut Cluster, node: NodeId, bundle: BundleId) -> anyhow::Result<()> {
    let Some(mut record) = c.nodes.get(&node).cloned() else {
        return Ok(());
    };
    match c.replicas.get(&bundle).and_then(|r| r.get(&node)) {
        Some(ReplicaState::Complete) => {
            c.set_replica(bundle, node, Some(ReplicaState::Copying))?;
            c.needs_plan = true;
        }
        Some(ReplicaState::Releasing) => c.set_replica(bundle, node, None)?,
        Some(ReplicaState::Copying) | None => {}
    }
    // "I do not have it" from a node that no longer claims the copy is the
    // truth, not a lie: it released it on orders the coordinator lost in a
    // crash, or lost it and said so. Only a copy claimed in its last
    // heartbeat costs it a strike, and one heartbeat's claims one strike at
    // most: a damaged file shared by several bundles is one fault.
    let Some(live) = c.live.get_mut(&node) else {
        return Ok(());
    };
    if !live.held.contains(&bundle) || live.struck {
        return Ok(());
    }
    live.struck = true;
    record.trust.failed_checks = record.trust.failed_checks.saturating_add(1);
    if record.trust.failed_checks >= UNRELIABLE_AFTER && !record.trust.unreliable {
        tracing::warn!(node = %node, failures = record.trust.failed_checks, "node marked unreliable: its claims no longer count");
        record.trust.unreliable = true;
    }
    c.save_node(record)
}

/// Records that `node`'s copy of `bundle` passed a check under load, if it is
/// still a complete copy.
pub fn proven(c: &mut Cluster, node: NodeId, bundle: BundleId) -> anyhow::Result<()> {
    let whole = c
        .replicas
        .get(&bundle)
        .and_then(|r| r.get(&node))
        .is_some_and(|s| s.is_whole());
    if whole && !c.proven.contains(&(bundle, node)) {
        tracing::info!(bundle = %bundle, node = %node, "copy proven under load: it counts for releases");
        c.set_proven(bundle, node)?;
    }
    Ok(())
}

/// Clears a node's failures and its unreliable mark (an admin's decision).
pub fn clear(c: &mut Cluster, node: &NodeId) -> anyhow::Result<bool> {
    let Some(mut record) = c.nodes.get(node).cloned() else {
        return Ok(false);
    };
    record.trust = Default::default();
    c.save_node(record)?;
    tracing::info!(node = %node, "trust restored by an admin");
    Ok(true)
}

/// Complete copies on trusted nodes that have not passed a check under load.
pub fn awaiting_proof(
    c: &Cluster,
    now: Instant,
    down_after: Duration,
) -> impl Iterator<Item = (BundleId, NodeId)> + '_ {
    c.replicas.keys().flat_map(move |b| {
        c.live_holders(b, now, down_after)
            .filter(move |n| !c.proven.contains(&(*b, *n)))
            .map(move |n| (*b, n))
    })
}

/// The `pick`-th complete copy on a trusted node, counting around: the daemon
/// passes a random number to re-check a random copy.
pub fn nth_complete(
    c: &Cluster,
    pick: u64,
    now: Instant,
    down_after: Duration,
) -> Option<(BundleId, NodeId)> {
    let bundles = c.replicas.len();
    let start = (pick % bundles.max(1) as u64) as usize;
    let turn = (pick / bundles.max(1) as u64) as usize;
    c.replicas
        .keys()
        .cycle()
        .skip(start)
        .take(bundles)
        .find_map(|b| {
            let holders: Vec<NodeId> = c.live_holders(b, now, down_after).collect();
            Some((*b, *holders.get(turn % holders.len().max(1))?))
        })
}
