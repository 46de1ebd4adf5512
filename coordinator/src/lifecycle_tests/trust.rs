//! What members' claims are worth: copies count for releases only when
//! checked, proven under load, on live nodes heard from since the start.

use super::*;

#[test]
fn a_live_copy_is_not_released_while_the_recorded_ones_are_down() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let placed = sim.holders(&b, Complete);
    let upload = sim.left_out(&b)?;
    sim.grant(b, upload)?;
    for n in &placed[1..] {
        sim.node(*n).silent = true;
    }
    // Two of the three recorded copies have gone silent past the grace
    // period; before a tick notices, the upload reports its copy.
    sim.now += sim.policy.down_after + SECOND;
    let orders = sim.fetch(b, upload)?;
    assert!(
        !orders.release.contains(&b),
        "one live copy counted: the upload must not be released"
    );
    assert_eq!(
        sim.states(&b).get(&upload),
        Some(&Releasing),
        "kept as a source"
    );
    assert!(sim.nodes[&upload].store.contains(&b));
    Ok(())
}

#[test]
fn a_new_copy_counts_for_a_release_only_once_proven_under_load() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let drained = sim.drain_a_holder(&b)?;
    let new = sim.holders(&b, Copying)[0];
    sim.fetch(b, new)?;
    assert_eq!(sim.states(&b)[&new], Complete, "the claim check passed");
    release_replaced(&mut sim.c, &sim.policy, sim.now)?;
    assert_eq!(
        sim.states(&b).get(&drained),
        Some(&Releasing),
        "not proven under load yet: the old copy stays"
    );
    sim.tick()?;
    assert!(sim.c.proven.contains(&(b, new)));
    assert!(
        !sim.states(&b).contains_key(&drained),
        "released once proven"
    );
    // A copy made again must prove itself again.
    sim.node(new).store.remove(&b);
    sim.beat(new)?;
    assert!(!sim.c.proven.contains(&(b, new)));
    Ok(())
}

#[test]
fn a_member_claiming_copies_it_lacks_is_marked_and_releases_nothing() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX[..4])?;
    let liar = NodeId::from_bytes([4; 32]);
    sim.node(liar).lies = true;
    let mut bundles = Vec::new();
    for i in 0..6 {
        let b = sim.publish(&format!("lesson {i}"), 3)?;
        for n in sim.holders(&b, Copying).into_iter().filter(|n| *n != liar) {
            sim.fetch(b, n)?;
        }
        bundles.push(b);
    }
    // An honest node drained: its copies are wanted on the liar and the others.
    let drained = NodeId::from_bytes([1; 32]);
    sim.drain(drained)?;
    let honest: Vec<usize> = bundles.iter().map(|b| sim.whole(b)).collect();
    sim.follow_orders = true;
    for _ in 0..20 {
        sim.next()?;
        for (b, before) in bundles.iter().zip(&honest) {
            let on_liar = sim.states(b).get(&liar).copied();
            assert!(matches!(on_liar, None | Some(Copying)), "{b}: {on_liar:?}");
            assert!(
                sim.whole(b) >= *before,
                "{b}: an honest copy released: {:?}",
                sim.states(b)
            );
        }
    }
    for b in bundles
        .iter()
        .filter(|b| sim.nodes[&drained].store.contains(b))
    {
        assert_eq!(
            sim.states(b).get(&drained),
            Some(&Releasing),
            "{b}: kept, no other site"
        );
    }
    let record = &sim.c.nodes[&liar];
    assert!(record.trust.unreliable, "{record:?}");
    assert!(record.trust.failed_checks >= crate::trust::UNRELIABLE_AFTER);
    let status = crate::views::status(&sim.c, &sim.policy);
    assert_eq!(status.nodes_unreliable, vec![liar]);
    assert!(
        sim.c.placed_on(&liar).next().is_none(),
        "an unreliable node is given nothing"
    );
    // A claim of a bundle it was never given is not even checked.
    let beat = heartbeat(bundles.clone());
    assert!(apply_heartbeat(&mut sim.c, liar, &beat, &sim.policy, sim.now)?.is_empty());
    assert!(crate::trust::clear(&mut sim.c, &liar)?);
    assert_eq!(sim.c.nodes[&liar].trust, Default::default());
    Ok(())
}

#[test]
fn claims_count_only_for_bundles_placed_or_uploaded_there() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish("lesson", 3)?;
    let stranger = sim.left_out(&b)?;
    let beat = |sim: &mut Sim| {
        apply_heartbeat(
            &mut sim.c,
            stranger,
            &heartbeat(vec![b]),
            &sim.policy,
            sim.now,
        )
    };
    assert_eq!(beat(&mut sim)?, vec![], "never given: not checked");
    sim.grant(b, stranger)?;
    assert_eq!(beat(&mut sim)?, vec![b], "uploaded there: checked");
    Ok(())
}

#[test]
fn a_claimed_capacity_is_cut_down_to_the_tokens() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let id = NodeId::from_bytes([1; 32]);
    let mut record = sim.c.nodes[&id].clone();
    record.capacity_limit = Some(5000);
    sim.c.save_node(record)?;
    sim.next()?;
    assert_eq!(
        sim.c.nodes[&id].capacity, 5000,
        "heartbeats claim {CAPACITY}"
    );
    let bundles: Vec<BundleId> = (0..20)
        .map(|i| sim.publish(&format!("lesson {i}"), 3))
        .collect::<anyhow::Result<_>>()?;
    let given: usize = bundles
        .iter()
        .filter(|b| sim.states(b).contains_key(&id))
        .count();
    assert!(
        given * 1000 <= 5000,
        "{given} bundles of 1000 bytes placed on it"
    );
    Ok(())
}

#[test]
fn after_a_restart_copies_count_for_a_release_only_once_their_nodes_report() -> anyhow::Result<()> {
    let kv = Arc::new(MemoryKv::default());
    let mut sim = Sim::with_kv(Box::new(kv.clone()), &SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let drained = sim.drain_a_holder(&b)?;
    let new = sim.holders(&b, Copying)[0];
    sim.fetch(b, new)?;
    for node in sim.holders(&b, Complete) {
        crate::trust::proven(&mut sim.c, node, b)?;
    }
    sim.c.flush()?;
    let (policy, restart) = (sim.policy.clone(), sim.now + SECOND);
    drop(sim);

    // The coordinator restarts; the new copy's node died while it was away.
    let mut c = Cluster::load(Box::new(kv), restart)?;
    assert!(
        c.is_up(&new, restart, policy.down_after),
        "up until proven down"
    );
    release_replaced(&mut c, &policy, restart)?;
    assert_eq!(
        c.replicas[&b].get(&drained),
        Some(&Releasing),
        "an assumed copy does not replace a live one"
    );
    // Every holder reports again (the others did at once, the new one too).
    for live in c.live.values_mut() {
        live.assumed = false;
    }
    release_replaced(&mut c, &policy, restart)?;
    assert!(
        !c.replicas[&b].contains_key(&drained),
        "released once they report"
    );
    Ok(())
}

#[test]
fn a_check_finding_gone_a_copy_the_node_no_longer_claims_is_no_strike() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let holders = sim.holders(&b, Complete);
    // Released on orders a crashed coordinator forgot: its heartbeat says so.
    let honest = holders[0];
    if let Some(live) = sim.c.live.get_mut(&honest) {
        live.held.remove(&b);
    }
    crate::trust::refuted(&mut sim.c, honest, b)?;
    assert_eq!(sim.c.nodes[&honest].trust.failed_checks, 0);
    assert_eq!(sim.states(&b)[&honest], Copying, "the copy stops counting");
    // A copy still claimed and not there is a strike.
    let liar = holders[1];
    assert!(sim.c.live[&liar].held.contains(&b));
    crate::trust::refuted(&mut sim.c, liar, b)?;
    assert_eq!(sim.c.nodes[&liar].trust.failed_checks, 1);
    Ok(())
}

#[test]
fn one_damaged_file_shared_by_several_copies_is_one_strike() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let bundles = ["a", "b", "c"]
        .map(|name| sim.publish_complete(&format!("lesson {name}"), 3))
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Nine copies on six nodes: one holds at least two.
    let held_by = |n: NodeId| -> Vec<BundleId> {
        let held = &sim.c.live[&n].held;
        bundles
            .iter()
            .filter(|b| held.contains(b))
            .copied()
            .collect()
    };
    let node = *sim
        .c
        .live
        .keys()
        .max_by_key(|n| held_by(**n).len())
        .expect("nodes");
    let claimed = held_by(node);
    assert!(claimed.len() >= 2, "{claimed:?}");
    for b in &claimed {
        crate::trust::refuted(&mut sim.c, node, *b)?;
    }
    assert_eq!(
        sim.c.nodes[&node].trust.failed_checks, 1,
        "one heartbeat, one strike"
    );
    // A node that keeps claiming what it cannot show is out after a few heartbeats.
    for _ in 1..crate::trust::UNRELIABLE_AFTER {
        sim.beat(node)?;
        crate::trust::refuted(&mut sim.c, node, claimed[0])?;
    }
    assert!(sim.c.nodes[&node].trust.unreliable);
    Ok(())
}
