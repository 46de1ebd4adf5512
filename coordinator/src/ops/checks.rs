//! The spot checks of the copies nodes claim ([`crate::trust`] gives the
//! rules), run in the background: at most [`CHECKS_AT_ONCE`] at once, one per
//! copy, each recorded in the state when it ends.

use std::sync::Arc;
use std::time::Instant;

use cartable_net::peer::PeerAddr;
use cartable_proto::api::ReplicaState;
use cartable_proto::{BundleId, NodeId};

use super::Coordinator;
use crate::{lifecycle, spotcheck, trust};

/// Checks of copies running at once: each holds a connection to a node and up
/// to a megabyte in flight.
const CHECKS_AT_ONCE: usize = 16;

/// Why a copy is checked ([`crate::trust`] gives the rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A node claims a copy: passed, it is complete.
    Claim,
    /// A complete copy must pass this to count for releases.
    UnderLoad,
    /// A complete copy checked again, at random.
    Again,
}

impl Check {
    fn sample(self) -> spotcheck::Sample {
        match self {
            Self::Claim | Self::Again => spotcheck::Sample::CLAIM,
            Self::UnderLoad => spotcheck::Sample::UNDER_LOAD,
        }
    }
}

impl Coordinator {
    /// Checks `node`'s copy of `bundle` in the background, then records what
    /// came of it. At most `CHECKS_AT_ONCE` (16) run at once, one per copy: a
    /// check refused for want of a slot comes again (a claim with the next
    /// heartbeat, a proof or re-check with a later tick).
    pub fn check(self: &Arc<Self>, node: NodeId, bundle: BundleId, kind: Check) {
        let addr = {
            let c = self.lock();
            match c.nodes.get(&node) {
                Some(n) => PeerAddr {
                    id: node,
                    addr: n.contact.quic,
                },
                None => return,
            }
        };
        {
            let mut checking = self.checking.lock().unwrap_or_else(|e| e.into_inner());
            if checking.len() >= CHECKS_AT_ONCE || !checking.insert((bundle, node)) {
                return;
            }
        }
        let coord = self.clone();
        tokio::spawn(async move {
            let result = spotcheck::check_copy(&coord.endpoint, addr, bundle, kind.sample()).await;
            let failed = result.is_err();
            if let Err(e) = coord.record_check(node, bundle, kind, result) {
                tracing::error!(error = format!("{e:#}"), "could not record a check");
            }
            if failed {
                // Do not ask again before the next heartbeats have passed.
                tokio::time::sleep(coord.policy.heartbeat * 2).await;
            }
            coord
                .checking
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(bundle, node));
        });
    }

    fn record_check(
        &self,
        node: NodeId,
        bundle: BundleId,
        kind: Check,
        result: Result<u64, spotcheck::CheckError>,
    ) -> anyhow::Result<()> {
        self.commit(|c| {
            let recorded = c
                .replicas
                .get(&bundle)
                .is_some_and(|r| r.contains_key(&node));
            match result {
                Ok(bytes) => {
                    tracing::debug!(bundle = %bundle, node = %node, bytes, ?kind, "check passed");
                    match kind {
                        Check::Claim => {
                            let copying = |c: &crate::state::Cluster| {
                                c.replicas.get(&bundle).and_then(|r| r.get(&node))
                                    == Some(&ReplicaState::Copying)
                            };
                            let was_copying = copying(c);
                            lifecycle::confirm_copy(
                                c,
                                bundle,
                                node,
                                &self.policy,
                                Instant::now(),
                            )?;
                            if was_copying && !copying(c) {
                                self.metrics.copies_completed.inc();
                            }
                        }
                        Check::UnderLoad => trust::proven(c, node, bundle)?,
                        Check::Again => {}
                    }
                }
                Err(spotcheck::CheckError::Unreachable(why)) => {
                    tracing::info!(bundle = %bundle, node = %node, error = why, ?kind, "could not check a copy");
                }
                // A copy released while it was checked may be deleted by now.
                Err(spotcheck::CheckError::Refuted(_)) if kind != Check::Claim && !recorded => {}
                Err(e) => {
                    tracing::warn!(bundle = %bundle, node = %node, error = %e, ?kind, "a copy failed its check");
                    trust::refuted(c, node, bundle)?;
                }
            }
            Ok(())
        })
    }

    /// Starts the background checks due: a check under load for copies not
    /// proven yet, and a re-check of a random complete copy every
    /// [`trust::RECHECK_EVERY`].
    pub fn start_checks(self: &Arc<Self>, last_recheck: &mut Instant) {
        let now = Instant::now();
        let (proofs, again) = {
            let c = self.lock();
            let busy = self
                .checking
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let proofs: Vec<(BundleId, NodeId)> =
                trust::awaiting_proof(&c, now, self.policy.down_after)
                    .filter(|copy| !busy.contains(copy))
                    .take(CHECKS_AT_ONCE.saturating_sub(busy.len()))
                    .collect();
            let due = now.saturating_duration_since(*last_recheck) >= trust::RECHECK_EVERY;
            let again = due
                .then(|| {
                    trust::nth_complete(
                        &c,
                        spotcheck::random_below(u64::MAX),
                        now,
                        self.policy.down_after,
                    )
                })
                .flatten();
            (proofs, again)
        };
        for (bundle, node) in proofs {
            self.check(node, bundle, Check::UnderLoad);
        }
        if let Some((bundle, node)) = again {
            *last_recheck = now;
            self.check(node, bundle, Check::Again);
        }
    }
}
