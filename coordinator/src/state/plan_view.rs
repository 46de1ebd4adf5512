//! What a plan, or an operator's preview, reads of every bundle, kept as
//! bundles and replicas change. Copied out of the state for each plan, it cost
//! a walk of every bundle and its replicas under the state's lock (0.1 s at
//! 300,000 bundles), which every redirect and heartbeat waits on. Kept in a
//! persistent map, it is taken by a pointer copy; the walk happens once the
//! lock is released.

use std::sync::Arc;

use cartable_placement::{Assignment, BundleSpec};
use cartable_proto::api::ReplicaState;
use cartable_proto::{BundleId, NodeId};

use super::Cluster;

/// A bundle as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Its size and replicas wanted.
    pub spec: BundleSpec,
    /// Every replica of it, in node order. Shared: an entry copied because a
    /// plan holds the view costs no allocation.
    pub replicas: Arc<[(NodeId, ReplicaState)]>,
}

/// Every published bundle as the planner sees it, in bundle order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanView(imbl::OrdMap<BundleId, Placed>);

impl PlanView {
    /// The planner's inputs: where every bundle is placed, and every
    /// bundle's spec. A walk of every bundle: not under the state's lock.
    pub fn split(&self) -> (Assignment, Vec<BundleSpec>) {
        // Two walks: collected whole, a BTreeMap is built in one go from
        // sorted keys; extended (as `unzip` does) it takes them one by one,
        // 100 ms more at 300,000 bundles.
        let previous = self
            .0
            .iter()
            .map(|(b, p)| {
                let kept = p
                    .replicas
                    .iter()
                    .filter(|(_, s)| *s != ReplicaState::Releasing);
                (*b, kept.map(|(n, _)| *n).collect())
            })
            .collect();
        let specs = self.0.values().map(|p| p.spec).collect();
        (previous, specs)
    }

    /// The size of `bundle`, if it is in the view.
    pub fn size_of(&self, bundle: &BundleId) -> Option<u64> {
        self.0.get(bundle).map(|p| p.spec.size)
    }

    /// Every bundle's spec and the nodes with a whole copy of it: complete,
    /// or being released (whole until deleted).
    pub fn whole_copies(
        &self,
    ) -> impl Iterator<Item = (&BundleSpec, impl Iterator<Item = &NodeId>)> {
        self.0.values().map(|p| {
            let whole = p.replicas.iter().filter(|(_, s)| s.is_whole());
            (&p.spec, whole.map(|(n, _)| n))
        })
    }

    /// With `spec` added, or replacing the bundle's, where it is placed kept:
    /// the view a publish plans with.
    pub fn with_spec(mut self, spec: BundleSpec) -> Self {
        let replicas = self
            .0
            .get(&spec.id)
            .map_or_else(|| Arc::from([]), |p| p.replicas.clone());
        self.0.insert(spec.id, Placed { spec, replicas });
        self
    }
}

impl Cluster {
    /// The view a plan reads, as of now: a pointer copy.
    pub fn plan_view(&self) -> PlanView {
        self.plan_view.clone()
    }

    /// `bundle` as the planner sees it, from the bundles and replicas.
    fn placed(&self, bundle: &BundleId) -> Option<Placed> {
        let record = self.bundles.get(bundle)?;
        let replicas = self.replicas.get(bundle).map_or_else(
            || Arc::from([]),
            |r| r.iter().map(|(n, s)| (*n, *s)).collect(),
        );
        Some(Placed {
            spec: BundleSpec {
                id: *bundle,
                size: record.size,
                replicas: record.replicas,
            },
            replicas,
        })
    }

    /// Brings `bundle`'s entry in the view in line with the state, after a
    /// change to it. An entry left as it was (a bundle saved again with its
    /// size and copies unchanged) is not written: a write copies its path in
    /// the map while a plan holds the view.
    pub(super) fn refresh_plan_view(&mut self, bundle: BundleId) {
        match self.placed(&bundle) {
            Some(now) if self.plan_view.0.get(&bundle) != Some(&now) => {
                self.plan_view.0.insert(bundle, now);
            }
            // imbl's `remove` copies the path even for a key it lacks.
            None if self.plan_view.0.contains_key(&bundle) => {
                self.plan_view.0.remove(&bundle);
            }
            Some(_) | None => {}
        }
    }

    /// The view built from the bundles and replicas, at load (and by tests,
    /// to check the kept one).
    pub(super) fn built_plan_view(&self) -> PlanView {
        PlanView(
            self.bundles
                .keys()
                .filter_map(|b| Some((*b, self.placed(b)?)))
                .collect(),
        )
    }
}
