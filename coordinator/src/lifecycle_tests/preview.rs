//! What an operator's preview says taking nodes out would cost at once.

use cartable_proto::api::{PlanChange, PlanPreview};

use super::*;
use crate::views;

/// The preview of taking `without` out, as `cartable plan --without` asks it.
fn without(sim: &mut Sim, without: &[NodeId]) -> PlanPreview {
    let change = PlanChange {
        without: without.to_vec(),
        with: Vec::new(),
    };
    views::preview_inputs(&mut sim.c, &sim.policy, &change).preview(&sim.policy)
}

/// (bundles lost, bundles left below the minimum, bytes on the nodes taken out)
fn losses(p: &PlanPreview) -> (Vec<BundleId>, usize, u64) {
    (p.lost.clone(), p.urgent, p.bytes_on_removed)
}

/// Six nodes, and a lesson of 3 copies of 1000 bytes made: its holders.
fn one_lesson() -> anyhow::Result<(Sim, BundleId, Vec<NodeId>)> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let holders = sim.holders(&b, Complete);
    assert_eq!(holders.len(), 3);
    Ok((sim, b, holders))
}

#[test]
fn a_preview_counts_the_whole_copies_taken_out() -> anyhow::Result<()> {
    let (mut sim, b, holders) = one_lesson()?;
    assert_eq!(losses(&without(&mut sim, &[])), (vec![], 0, 0));
    assert_eq!(losses(&without(&mut sim, &holders[..1])), (vec![], 0, 1000));
    // One whole copy left, of the two the policy asks at least.
    assert_eq!(losses(&without(&mut sim, &holders[..2])), (vec![], 1, 2000));
    assert_eq!(losses(&without(&mut sim, &holders)), (vec![b], 0, 3000));
    Ok(())
}

#[test]
fn a_copy_being_released_counts_and_one_being_made_does_not() -> anyhow::Result<()> {
    let (mut sim, b, holders) = one_lesson()?;
    sim.c.set_replica(b, holders[0], Some(Releasing))?;
    sim.c.set_replica(b, holders[1], Some(Copying))?;
    // Whole: the releasing copy and the complete one.
    assert_eq!(losses(&without(&mut sim, &[])), (vec![], 0, 0));
    assert_eq!(losses(&without(&mut sim, &holders[..1])), (vec![], 1, 1000));
    assert_eq!(losses(&without(&mut sim, &holders[1..2])), (vec![], 0, 0));
    assert_eq!(
        losses(&without(&mut sim, &[holders[0], holders[2]])),
        (vec![b], 0, 2000)
    );
    Ok(())
}

#[test]
fn an_unreliable_nodes_copy_does_not_count() -> anyhow::Result<()> {
    let (mut sim, b, holders) = one_lesson()?;
    let mut record = sim.c.nodes[&holders[0]].clone();
    record.trust.unreliable = true;
    sim.c.save_node(record)?;
    assert_eq!(losses(&without(&mut sim, &[])), (vec![], 0, 0));
    // Its copy is neither kept nor lost by taking it out.
    assert_eq!(losses(&without(&mut sim, &holders[..1])), (vec![], 0, 0));
    assert_eq!(
        losses(&without(&mut sim, &holders[1..])),
        (vec![b], 0, 2000)
    );
    Ok(())
}
