//! Placement, repair, release, names and routing, driven through [`super::Sim`].

use super::*;

#[test]
fn a_new_bundle_is_placed_on_distinct_sites_and_copied_from_its_upload() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish("lesson", 3)?;
    let placed = sim.holders(&b, Copying);
    let sites: BTreeSet<&str> = placed.iter().map(|n| &*sim.c.nodes[n].site).collect();
    assert_eq!((placed.len(), sites.len()), (3, 3), "one copy per site");

    sim.fetch(b, placed[0])?;
    assert_eq!(sim.states(&b)[&placed[0]], Complete);
    let orders = sim.next()?;
    for n in &placed[1..] {
        assert_eq!(held(&orders[n], &b), Some(vec![placed[0]]), "upload");
        sim.fetch(b, *n)?;
    }
    let orders = sim.next()?;
    assert_eq!(sim.holders(&b, Complete), placed);
    assert!(orders.values().all(|o| o.release.is_empty()));
    Ok(())
}

#[test]
fn a_drained_copy_is_held_until_its_replacement_is_verified() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let drained = sim.drain_a_holder(&b)?;
    let orders = sim.next()?;
    assert_eq!(sim.states(&b)[&drained], Releasing);
    let new = sim.holders(&b, Copying);
    assert_eq!(new.len(), 1, "{:?}", sim.states(&b));
    assert!(held(&orders[&drained], &b).is_some() && orders[&drained].release.is_empty());
    let sources = held(&orders[&new[0]], &b).context("the new node copies")?;
    assert!(sources.contains(&drained), "a releasing copy is a source");

    sim.fetch(b, new[0])?;
    assert!(held(&sim.beat(drained)?, &b).is_some(), "until the tick");
    sim.tick()?;
    assert!(!sim.states(&b).contains_key(&drained), "forgotten");
    assert!(sim.nodes[&drained].store.contains(&b), "still reported");
    let orders = sim.beat(drained)?;
    assert_eq!((held(&orders, &b), orders.release), (None, vec![b]));
    assert_eq!(sim.holders(&b, Complete).len(), 3);
    Ok(())
}

#[test]
fn a_down_node_keeps_its_copies_until_the_repair_delay() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let before = sim.states(&b);
    let down = sim.holders(&b, Complete)[0];
    sim.node(down).silent = true;
    sim.run_for(sim.policy.down_after + SECOND)?;
    assert!(sim.c.down_since.contains_key(&down));
    assert_eq!(sim.states(&b), before, "two live copies: wait for the node");

    sim.run_for(sim.policy.repair_delay)?;
    assert_eq!(sim.states(&b)[&down], Releasing);
    let new = sim.holders(&b, Copying);
    assert_eq!(new.len(), 1);
    let sources = held(&sim.beat(new[0])?, &b).context("the new node copies")?;
    let up: Vec<NodeId> = before.into_keys().filter(|n| *n != down).collect();
    assert_eq!(sources, up, "up sources only");
    sim.fetch(b, new[0])?;
    sim.tick()?;
    assert!(!sim.states(&b).contains_key(&down));
    assert_eq!(sim.holders(&b, Complete).len(), 3);
    Ok(())
}

#[test]
fn a_bundle_left_with_one_live_copy_is_repaired_at_once_through_later_plans() -> anyhow::Result<()>
{
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let placed = sim.holders(&b, Complete);
    sim.node(placed[1]).silent = true;
    sim.node(placed[2]).silent = true;
    sim.run_for(sim.policy.down_after + SECOND)?;
    assert!(sim.now < sim.c.down_since[&placed[1]] + sim.policy.repair_delay);
    assert_eq!(sim.holders(&b, Releasing), placed[1..]);
    let new = sim.holders(&b, Copying);
    assert_eq!(new.len(), 2, "{:?}", sim.states(&b));

    let repairing = sim.states(&b);
    sim.publish("another lesson", 3)?;
    assert_eq!(sim.states(&b), repairing, "a later plan keeps the repair");
    for n in &new {
        assert_eq!(held(&sim.beat(*n)?, &b), Some(vec![placed[0]]));
    }
    for n in new {
        sim.fetch(b, n)?;
    }
    sim.tick()?;
    assert_eq!(sim.states(&b).len(), 3, "the down copies are forgotten");
    assert_eq!(sim.holders(&b, Complete).len(), 3);

    // Within the delay, later plans neither undo the repair nor give the
    // down nodes new copies to wait for.
    let repaired = sim.states(&b);
    let third = sim.publish("a third lesson", 3)?;
    sim.run_for(sim.policy.heartbeat * 5)?;
    assert_eq!(sim.states(&b), repaired, "the finished repair stays");
    for lesson in [BundleId::of_manifest(b"another lesson"), third] {
        assert!(
            sim.states(&lesson).keys().all(|n| !placed[1..].contains(n)),
            "a new copy placed on a down node"
        );
    }
    Ok(())
}

#[test]
fn losing_a_copy_beside_a_down_node_starts_an_urgent_repair() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let placed = sim.holders(&b, Complete);
    sim.node(placed[0]).silent = true;
    sim.run_for(sim.policy.down_after + SECOND)?;
    assert_eq!(sim.holders(&b, Complete), placed, "two live copies: wait");

    sim.node(placed[1]).store.remove(&b);
    sim.next()?;
    assert_eq!(sim.c.live_complete(&b, sim.now, sim.policy.down_after), 1);
    assert_eq!(sim.states(&b)[&placed[0]], Releasing);
    assert_eq!(sim.states(&b)[&placed[1]], Copying);
    assert_eq!(sim.holders(&b, Copying).len(), 2, "re-placed now");
    Ok(())
}

#[test]
fn down_copies_with_nowhere_to_go_are_kept_for_their_return() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX[..3])?;
    let b = sim.publish_complete("lesson", 3)?;
    let placed = sim.holders(&b, Complete);
    for n in &placed[1..] {
        sim.node(*n).silent = true;
    }
    sim.run_for(sim.policy.repair_delay + sim.policy.down_after)?;
    assert_eq!(sim.c.unplaced.len(), 1, "nowhere to repair");
    // What `cartable bundles` shows in its PROBLEM column, in words.
    assert_eq!(
        sim.c.unplaced[&b],
        "1 of 3 copies placed: fewer nodes can take a copy than copies wanted"
    );
    assert_eq!(sim.whole(&b), 3, "{:?}", sim.states(&b));

    for n in &placed[1..] {
        sim.node(*n).silent = false;
    }
    let orders = sim.next()?;
    assert!(orders.values().all(|o| o.release.is_empty()), "{orders:?}");
    sim.next()?;
    assert_eq!(sim.holders(&b, Complete), placed);
    Ok(())
}

#[test]
fn whole_copies_never_drop_while_replacements_copy() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let bundles: Vec<BundleId> = (0..4)
        .map(|i| sim.publish_complete(&format!("lesson {i}"), 3))
        .collect::<anyhow::Result<_>>()?;
    sim.follow_orders = true;
    let first = sim.holders(&bundles[0], Complete);
    sim.drain(first[0])?;
    sim.node(first[1]).silent = true;
    for _ in 0..200 {
        sim.next()?;
        for b in &bundles {
            assert!(sim.whole(b) >= 3, "{b}: {:?}", sim.states(b));
        }
    }
    for b in &bundles {
        assert_eq!(sim.holders(b, Complete).len(), 3, "{b}");
        assert_eq!(sim.states(b).len(), 3, "{b}: old copies released");
        assert!(!sim.states(b).contains_key(&first[0]), "{b}: drained");
    }
    Ok(())
}

#[test]
fn a_lost_complete_copy_is_copied_again_and_a_lost_releasing_one_forgotten() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let placed = sim.holders(&b, Complete);
    sim.node(placed[0]).store.remove(&b);
    let orders = sim.beat(placed[0])?;
    assert_eq!(sim.states(&b)[&placed[0]], Copying);
    assert_eq!(held(&orders, &b), Some(placed[1..].to_vec()));

    sim.drain(placed[1])?;
    sim.tick()?;
    assert_eq!(sim.states(&b)[&placed[1]], Releasing);
    sim.node(placed[1]).store.remove(&b);
    sim.beat(placed[1])?;
    assert!(!sim.states(&b).contains_key(&placed[1]));
    Ok(())
}

#[test]
fn storm_control_runs_the_most_endangered_copy_first() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX[..3])?;
    sim.policy.copies_per_node = 1;
    let [x, y, z] = [
        sim.publish("x", 3)?,
        sim.publish("y", 3)?,
        sim.publish("z", 3)?,
    ];
    let [a, b, c]: [NodeId; 3] = sim.holders(&x, Copying).try_into().expect("3 nodes");
    for (bundle, node) in [(x, a), (z, a), (y, a), (y, b)] {
        sim.fetch(bundle, node)?;
    }
    let orders = sim.beat(c)?;
    assert_eq!(orders.hold.len(), 1, "one at a time: {:?}", orders.hold);
    let active = orders.hold[0].bundle;
    assert!(active == x || active == z, "one copy left: first");
    let (_, queue) = repair_queue(&sim.c, &sim.policy, sim.now);
    let waiting: Vec<(BundleId, usize)> = queue
        .iter()
        .filter(|q| q.node == c)
        .map(|q| (q.bundle, q.complete))
        .collect();
    let other = if active == x { z } else { x };
    assert_eq!(waiting, vec![(other, 1), (y, 2)]);
    assert!(queue.is_sorted_by_key(|q| q.complete));
    Ok(())
}

#[test]
fn unpublished_bundles_are_released_but_foreign_ones_never() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let node = sim.holders(&b, Complete)[0];
    let foreign = BundleId::of_manifest(b"added on the node itself");
    sim.node(node).store.insert(foreign);
    sim.c.retire_bundle(b)?;
    let orders = sim.beat(node)?;
    assert_eq!((held(&orders, &b), orders.release), (None, vec![b]));
    sim.run_for(sim.policy.repair_delay)?;
    assert!(sim.nodes[&node].store.contains(&foreign), "never released");
    assert!(!sim.c.replicas.contains_key(&foreign));
    Ok(())
}

#[test]
fn the_name_table_goes_only_to_stale_nodes() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish("lesson", 3)?;
    let node = NodeId::from_bytes([1; 32]);
    assert_eq!(sim.beat(node)?.names, None);
    sim.c.set_name("maths/6e", b)?;
    let table = sim.beat(node)?.names.context("stale: sent")?;
    assert_eq!(table.version, sim.c.names_version);
    assert_eq!(table.names, vec![("maths/6e".to_owned(), b)]);
    assert_eq!(sim.beat(node)?.names, None, "up to date: not sent");
    Ok(())
}

#[test]
fn a_name_given_at_publish_moves_only_once_a_copy_is_verified() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let old = sim.publish_complete("lesson v1", 3)?;
    sim.c.set_name("maths/6e", old)?;
    let new = BundleId::of_manifest(b"lesson v2");
    let record = BundleRecord {
        pending_name: Some("maths/6e".into()),
        ..record(3)
    };
    sim.c.save_bundle(new, record)?;
    sim.tick()?;
    assert_eq!(
        sim.c.names["maths/6e"].current(),
        Some(old),
        "still uploading"
    );
    let upload = sim.holders(&new, Copying)[0];
    sim.fetch(new, upload)?;
    assert_eq!(sim.c.names["maths/6e"].current(), Some(new));
    assert_eq!(sim.c.bundles[&new].pending_name, None);
    Ok(())
}

#[test]
fn an_upload_finished_after_the_plan_moved_on_is_kept_until_replaced() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish("lesson", 2)?;
    let outside = sim.left_out(&b)?;
    // The upload lands on a node the plan no longer wants: the only copy.
    sim.grant(b, outside)?;
    let orders = sim.fetch(b, outside)?;
    assert!(
        !orders.release.contains(&b),
        "the only copy is not released"
    );
    assert_eq!(sim.states(&b).get(&outside), Some(&Releasing));
    sim.follow_orders = true;
    for _ in 0..5 {
        sim.next()?;
    }
    assert_eq!(sim.holders(&b, Complete).len(), 2, "{:?}", sim.states(&b));
    assert!(
        !sim.states(&b).contains_key(&outside),
        "released once replaced"
    );
    assert!(!sim.nodes[&outside].store.contains(&b));
    Ok(())
}

#[test]
fn routing_prefers_a_near_then_idle_node_with_a_complete_copy() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let uploading = sim.publish("being uploaded", 3)?;
    let to = |sim: &Sim, bundle, region| {
        route(&sim.c, bundle, region, &sim.policy, sim.now)
            .first()
            .copied()
    };
    let placed = sim.holders(&b, Complete);
    let region = sim.c.nodes[&placed[0]].region.clone();
    let (near, far): (Vec<NodeId>, Vec<NodeId>) = placed
        .iter()
        .partition(|n| sim.c.nodes[*n].region == region);
    for (load, n) in (10..).zip(&near) {
        sim.node(*n).load = load;
    }
    sim.next()?;
    assert_eq!(to(&sim, &b, Some(&region)), Some(near[0]), "near first");
    assert_eq!(to(&sim, &b, None), Some(far[0]), "no region: least loaded");
    assert_eq!(
        route(&sim.c, &b, Some(&region), &sim.policy, sim.now).len(),
        3,
        "every copy, for the redirect to fall back on"
    );
    assert_eq!(to(&sim, &uploading, None), None, "no complete copy");

    sim.node(near[0]).silent = true;
    sim.run_for(sim.policy.heartbeat * 3 + SECOND)?;
    assert!(sim.c.is_up(&near[0], sim.now, sim.policy.down_after));
    let next = *near.get(1).unwrap_or(&far[0]);
    assert_eq!(to(&sim, &b, Some(&region)), Some(next), "silent too long");
    for n in &placed {
        sim.node(*n).silent = true;
    }
    sim.run_for(sim.policy.heartbeat * 3 + SECOND)?;
    assert_eq!(to(&sim, &b, None), None, "no complete copy up");
    Ok(())
}

#[test]
fn a_restart_keeps_replica_states_and_counts_nodes_up() -> anyhow::Result<()> {
    let kv = Arc::new(MemoryKv::default());
    let mut sim = Sim::with_kv(Box::new(kv.clone()), &SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    sim.drain(sim.holders(&b, Complete)[0])?;
    sim.tick()?;
    let before = sim.c.replicas.clone();
    assert_eq!(sim.states(&b).len(), 4, "complete, copying and releasing");
    let (policy, restart) = (sim.policy.clone(), sim.now + Duration::from_secs(3600));
    drop(sim);

    let mut c = Cluster::load(Box::new(kv), restart)?;
    assert_eq!(c.replicas, before, "every replica state kept");
    let up_at = |c: &Cluster, at| c.nodes.keys().all(|n| c.is_up(n, at, policy.down_after));
    let down = restart + policy.down_after;
    assert!(up_at(&c, down - SECOND) && !up_at(&c, down), "up at first");
    let eligible = eligibility(&mut c, &policy, restart);
    replan(&mut c, &policy, restart, &eligible)?;
    assert_eq!(c.replicas, before, "a restart moves nothing");
    Ok(())
}

#[test]
fn with_no_node_up_nothing_is_re_placed() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let before = sim.states(&b);
    // Every node silent past the grace period (a coordinator restarted
    // before the nodes found it again): nothing to re-place onto.
    for n in sim.nodes.keys().copied().collect::<Vec<_>>() {
        sim.node(n).silent = true;
    }
    sim.run_for(sim.policy.down_after + SECOND)?;
    assert_eq!(sim.states(&b), before, "no copy marked releasing");
    Ok(())
}

#[test]
fn a_plan_made_while_the_state_moved_on_keeps_what_changed() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let kept = sim.publish_complete("kept", 3)?;
    let [late, moved, early] =
        [&b"unpublished"[..], b"placed", b"published"].map(BundleId::of_manifest);
    sim.c.save_bundle(late, record(3))?;
    sim.c.save_bundle(moved, record(3))?;
    // The daemon's tick: inputs taken under the lock, the plan made without it.
    let eligible = eligibility(&mut sim.c, &sim.policy, sim.now);
    sim.c.needs_plan = false;
    let inputs = PlanInputs::take(&sim.c, &sim.policy, sim.now, &eligible);
    let (previous, specs) = sim.c.plan_view().split();
    let normal = topology(&sim.c, &eligible.normal);
    let will = cartable_placement::plan(&normal, &specs, &previous);
    let plans = inputs.plan();
    // Meanwhile: `late` is unpublished, a node the plan gives `moved` is
    // removed, `early` is published.
    sim.c.retire_bundle(late)?;
    let gone = will.assignment[&moved][0];
    sim.c.remove_node(&gone)?;
    sim.nodes.remove(&gone);
    sim.c.save_bundle(early, record(3))?;
    plans.apply(&mut sim.c, &sim.policy, sim.now)?;
    assert_eq!(
        sim.states(&late),
        BTreeMap::new(),
        "an unpublished bundle came back"
    );
    let placed = sim.holders(&moved, Copying);
    assert_eq!(placed.len(), 2, "{placed:?}: the removed node is left out");
    assert!(!placed.contains(&gone));
    assert_eq!(
        sim.states(&early),
        BTreeMap::new(),
        "planned before it existed"
    );
    assert!(
        sim.c.needs_plan,
        "what changed meanwhile waits for the next plan"
    );
    assert!(sim.c.index_is_consistent());
    // Which places the new bundle, and the lost copies again.
    sim.tick()?;
    assert_eq!(sim.holders(&early, Copying).len(), 3);
    assert_eq!(sim.holders(&moved, Copying).len(), 3);
    assert_eq!(sim.states(&kept).len(), 3);
    assert!(!sim.c.replicas.contains_key(&late));
    Ok(())
}

#[test]
fn a_bundle_endangered_while_planned_waits_for_the_next_plan_untouched() -> anyhow::Result<()> {
    let mut sim = Sim::new(&SIX)?;
    let b = sim.publish_complete("lesson", 3)?;
    let [down, losing, _] = <[NodeId; 3]>::try_from(sim.holders(&b, Complete)).expect("three");
    sim.node(down).silent = true;
    sim.run_for(sim.policy.down_after + SECOND)?;
    // Two live copies: nothing urgent when the inputs are taken.
    let eligible = eligibility(&mut sim.c, &sim.policy, sim.now);
    sim.c.needs_plan = false;
    let plans = PlanInputs::take(&sim.c, &sim.policy, sim.now, &eligible).plan();
    // Meanwhile a node loses its copy: one live copy left, under the two wanted.
    sim.node(losing).store.remove(&b);
    sim.beat(losing)?;
    let before = sim.states(&b);
    assert_eq!(before[&losing], Copying);
    // The heartbeat asked for a plan; the application must notice on its own.
    sim.c.needs_plan = false;
    plans.apply(&mut sim.c, &sim.policy, sim.now)?;
    assert_eq!(sim.states(&b), before, "no plan for it: left as it is");
    assert!(sim.c.needs_plan);
    // The next plan re-places it at once on nodes that are up.
    sim.tick()?;
    let placed = sim.states(&b);
    assert_eq!(placed.get(&down), Some(&Releasing), "{placed:?}");
    let up = placed
        .iter()
        .filter(|(n, s)| **n != down && **s != Releasing);
    assert_eq!(up.count(), 3, "{placed:?}");
    Ok(())
}
