//! Publishing: a bundle's manifest registered, the bundle placed, and its
//! upload granted to a node. The plan is made from inputs taken under the
//! state's lock, with the lock released; then, under it again, every refusal
//! comes before any change: the plan says first where the bundle would go,
//! and the change is made only if that gives it a node that is up.

use std::time::Instant;

use cartable_proto::api::Published;
use cartable_proto::join::UploadGrant;
use cartable_proto::{BundleId, Manifest, NodeId};

use super::admin::{check_name, check_replicas};
use super::{Coordinator, OpError};
use crate::config::Policy;
use crate::lifecycle;
use crate::state::{BundleRecord, Cluster, NodeRecord, unix_now};
use cartable_placement::BundleSpec;

/// How long an upload grant is good for.
const GRANT_SECS: u64 = 24 * 3600;

impl Coordinator {
    /// Registers and places a bundle, and grants its upload to the first node
    /// it is placed on; the name moves once a copy is verified. The plan is
    /// made with the state's lock released: seconds at national scale, while
    /// redirects and heartbeats wait on that lock.
    pub fn publish(&self, request: &PublishRequest<'_>) -> Result<Published, OpError> {
        if let Some(name) = &request.name {
            check_name(name)?;
        }
        let _planning = self.planning();
        let now = Instant::now();
        let (record, inputs) = prepare_publish(&mut self.lock(), &self.policy, now, request)?;
        let plans = inputs.plan();
        let (upload, contact) = self.commit(|c| {
            let upload = record_publish(c, &self.policy, now, request, record, plans)?;
            Ok::<_, OpError>((upload, c.nodes[&upload].contact.clone()))
        })?;
        let id = request.id;
        let expires = unix_now() + GRANT_SECS;
        let signature = self
            .identity
            .sign(&UploadGrant::signed_bytes(&id, &upload, expires))?;
        let grant = UploadGrant {
            bundle: id,
            node: upload,
            expires,
            signature,
        };
        let mut urls = vec![format!("{}/b/{id}/", self.https_url)];
        urls.extend(
            request
                .name
                .iter()
                .map(|n| format!("{}/n/{n}/", self.https_url)),
        );
        tracing::info!(bundle = %id, upload = %upload, "bundle published");
        Ok(Published {
            bundle: id,
            upload_node: upload,
            upload_url: contact.https_url,
            upload_cert_sha256: contact.https_cert_sha256,
            grant: grant.to_string(),
            urls,
        })
    }
}

/// A publish call, its manifest decoded and its name checked.
#[derive(Debug)]
pub struct PublishRequest<'a> {
    /// The bundle: the manifest's id.
    pub id: BundleId,
    /// The manifest.
    pub manifest: &'a Manifest,
    /// The name to move to it once a copy is verified.
    pub name: Option<String>,
    /// Copies asked for; `None` keeps the bundle's or takes the default.
    pub replicas: Option<u8>,
}

/// The checks a publish can fail before any plan, and the inputs of the plan
/// with the bundle in it.
fn prepare_publish(
    c: &mut Cluster,
    policy: &Policy,
    now: Instant,
    request: &PublishRequest<'_>,
) -> Result<(BundleRecord, lifecycle::PlanInputs), OpError> {
    let id = request.id;
    let replicas = request.replicas.unwrap_or_else(|| {
        c.bundles.get(&id).map_or(
            policy.default_replicas.min(c.site_count().max(1) as u8),
            |b| b.replicas,
        )
    });
    check_replicas(c, replicas)?;
    let eligible = lifecycle::eligibility(c, policy, now);
    if eligible.urgent.is_empty() {
        return Err(OpError::Unavailable(
            "no node is up to take the upload (see `cartable nodes`); nothing was changed".into(),
        ));
    }
    let record = BundleRecord {
        size: request.manifest.total_size(),
        files: request.manifest.entries().len(),
        replicas,
        pending_name: None,
        uploads: c
            .bundles
            .get(&id)
            .map(|b| b.uploads.clone())
            .unwrap_or_default(),
    };
    let spec = BundleSpec {
        id,
        size: record.size,
        replicas,
    };
    let inputs = lifecycle::PlanInputs::take(c, policy, now, &eligible).with_bundle(spec);
    Ok((record, inputs))
}

/// Records a published bundle and applies `plans`, made from
/// [`prepare_publish`]'s inputs (the caller syncs it); returns the node the
/// publisher uploads to. Every refusal comes before any change: the plans
/// say first where the bundle would go, the state being what it is now.
fn record_publish(
    c: &mut Cluster,
    policy: &Policy,
    now: Instant,
    request: &PublishRequest<'_>,
    mut record: BundleRecord,
    plans: lifecycle::Plans,
) -> Result<NodeId, OpError> {
    let id = request.id;
    // What changed while the plan was made stands: the bundle's uploads, and
    // its copies if set meanwhile and not asked for now; sites may have gone.
    if let Some(current) = c.bundles.get(&id) {
        record.uploads = current.uploads.clone();
        record.replicas = request.replicas.unwrap_or(current.replicas);
    }
    check_replicas(c, record.replicas)?;
    let (after, why) = plans.prospect(c, policy, now, (&id, record.replicas));
    let Some(upload) = upload_among(c, &id, after.iter(), policy, now) else {
        return Err(match why {
            Some(why) => OpError::NoRoom(format!(
                "no node that is up has room for the bundle ({why}; see `cartable status`); \
                 nothing was changed"
            )),
            None => OpError::Unavailable(
                "no node that is up could be given the bundle (see `cartable status`); \
                 nothing was changed"
                    .into(),
            ),
        });
    };
    // The name moves at once only if a copy already exists, otherwise when
    // the first copy is verified, so that the link never breaks.
    let whole = c.live_complete(&id, now, policy.down_after) > 0;
    record.pending_name = request.name.clone().filter(|_| !whole);
    c.save_bundle(id, record)?;
    plans.apply(c, policy, now)?;
    if let Some(name) = request.name.as_ref().filter(|_| whole) {
        c.set_name(name, id)?;
    }
    if upload_among(
        c,
        &id,
        c.replicas.get(&id).into_iter().flatten().map(|(n, _)| n),
        policy,
        now,
    ) != Some(upload)
    {
        return Err(OpError::Save(anyhow::anyhow!(
            "publish placed {id} unlike its plan"
        )));
    }
    // The grant names the node: its claim counts even if the plan moves on.
    let mut granted = c.bundles[&id].clone();
    granted.granted(upload);
    c.save_bundle(id, granted)?;
    Ok(upload)
}

/// Where the publisher uploads: a node already holding it, else the first of
/// `placed` that is up and may take copies (a node drained or found
/// unreliable while the plan was made may still be in it).
fn upload_among<'a>(
    c: &Cluster,
    id: &BundleId,
    mut placed: impl Iterator<Item = &'a NodeId>,
    policy: &Policy,
    now: Instant,
) -> Option<NodeId> {
    if let Some(n) = lifecycle::sources(c, id, None, policy, now).first() {
        return Some(*n);
    }
    placed
        .find(|n| {
            c.nodes.get(n).is_some_and(NodeRecord::takes_copies)
                && c.is_up(n, now, policy.down_after)
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cartable_proto::control::Contact;
    use cartable_proto::{BlobHash, ManifestEntry};

    use super::*;
    use crate::state::{Liveness, MemoryKv, NodeRecord};
    use crate::views;
    use anyhow::Context;
    use cartable_proto::BundlePath;

    /// An empty store, the time and the default policy.
    fn fresh() -> (Arc<MemoryKv>, Instant, Policy) {
        (
            Arc::new(MemoryKv::default()),
            Instant::now(),
            Policy::default(),
        )
    }

    /// Two up nodes on two sites, each offering `capacity` bytes, over `kv`.
    fn cluster(kv: &Arc<MemoryKv>, capacity: u64, now: Instant) -> anyhow::Result<Cluster> {
        let mut c = Cluster::load(Box::new(kv.clone()), now)?;
        for (i, site) in (1u8..).zip(["metz", "nancy"]) {
            let id = NodeId::from_bytes([i; 32]);
            let contact = Contact {
                https_url: format!("https://127.0.0.1:{i}"),
                quic: "127.0.0.1:9".parse()?,
                https_cert_sha256: String::new(),
            };
            c.save_node(NodeRecord::joined(id, "est", site, capacity, contact))?;
            c.live.insert(id, Liveness::heard(now));
        }
        c.flush()?;
        Ok(c)
    }

    fn manifest(file: &str, size: u64) -> anyhow::Result<Manifest> {
        Ok(Manifest::new(vec![ManifestEntry {
            path: BundlePath::new(file)?,
            hash: BlobHash::of(file.as_bytes()),
            size,
            content_type: "text/html".into(),
        }])?)
    }

    fn request<'a>(
        m: &'a Manifest,
        name: Option<&str>,
        replicas: Option<u8>,
    ) -> PublishRequest<'a> {
        PublishRequest {
            id: m.id(),
            manifest: m,
            name: name.map(str::to_owned),
            replicas,
        }
    }

    /// Publishes, turning a refusal into a test failure with its message.
    fn publish_ok(
        c: &mut Cluster,
        policy: &Policy,
        now: Instant,
        request: &PublishRequest<'_>,
    ) -> anyhow::Result<NodeId> {
        publish_at_once(c, policy, now, request).map_err(|e| anyhow::anyhow!("refused: {e}"))
    }

    /// A publish with nothing between its steps.
    fn publish_at_once(
        c: &mut Cluster,
        policy: &Policy,
        now: Instant,
        request: &PublishRequest<'_>,
    ) -> Result<NodeId, OpError> {
        let (record, inputs) = prepare_publish(c, policy, now, request)?;
        record_publish(c, policy, now, request, record, inputs.plan())
    }

    /// What `cartable bundles` and `cartable names` would show.
    fn listing(c: &Cluster, policy: &Policy) -> anyhow::Result<String> {
        Ok(serde_json::to_string(&(
            views::bundles(c, policy),
            views::names(c),
            &c.replicas,
        ))?)
    }

    #[test]
    fn a_publish_that_fits_is_recorded_placed_and_named() -> anyhow::Result<()> {
        let (kv, now, policy) = fresh();
        let mut c = cluster(&kv, 1000, now)?;
        let m = manifest("index.html", 600)?;
        let upload = publish_ok(&mut c, &policy, now, &request(&m, Some("maths/6e"), None))?;
        assert!(c.nodes.contains_key(&upload));
        let reloaded = Cluster::load(Box::new(kv), now)?;
        assert_eq!(reloaded.bundles[&m.id()].size, 600);
        assert_eq!(reloaded.bundles[&m.id()].replicas, 2);
        assert_eq!(
            reloaded.bundles[&m.id()].pending_name.as_deref(),
            Some("maths/6e"),
            "the name waits for a verified copy"
        );
        Ok(())
    }

    #[test]
    fn a_publish_refused_for_room_leaves_nothing_behind() -> anyhow::Result<()> {
        let (kv, now, policy) = fresh();
        let mut c = cluster(&kv, 1000, now)?;
        let fits = manifest("index.html", 600)?;
        publish_ok(&mut c, &policy, now, &request(&fits, None, None))?;
        let before = listing(&c, &policy)?;

        let big = manifest("video.mp4", 5000)?;
        let refused =
            publish_at_once(&mut c, &policy, now, &request(&big, Some("big"), None)).unwrap_err();
        let OpError::NoRoom(message) = refused else {
            panic!("{refused}")
        };
        assert!(message.contains("no node that is up has room"), "{message}");
        assert!(message.contains("nothing was changed"), "{message}");
        // Room left by the first bundle, but not enough for a second copy of it.
        let second = manifest("more.html", 600)?;
        let refused = publish_at_once(&mut c, &policy, now, &request(&second, None, Some(2)));
        assert!(matches!(refused, Err(OpError::NoRoom(_))), "{refused:?}");
        assert_eq!(listing(&c, &policy)?, before, "in memory");
        let reloaded = Cluster::load(Box::new(kv), now)?;
        assert_eq!(listing(&reloaded, &policy)?, before, "on disk");
        Ok(())
    }

    #[test]
    fn a_publish_refused_for_replicas_or_no_node_up_leaves_nothing_behind() -> anyhow::Result<()> {
        let (kv, now, policy) = fresh();
        let mut c = cluster(&kv, 1000, now)?;
        let m = manifest("index.html", 100)?;
        publish_ok(&mut c, &policy, now, &request(&m, None, Some(1)))?;
        let before = listing(&c, &policy)?;

        // Publishing it again asking for more copies than there are sites.
        let refused =
            publish_at_once(&mut c, &policy, now, &request(&m, None, Some(3))).unwrap_err();
        let OpError::Invalid(message) = refused else {
            panic!("{refused}")
        };
        assert!(message.contains("2 sites"), "{message}");
        assert_eq!(c.bundles[&m.id()].replicas, 1);

        let later = now + policy.down_after * 2;
        let other = manifest("other.html", 100)?;
        let refused =
            publish_at_once(&mut c, &policy, later, &request(&other, None, None)).unwrap_err();
        let OpError::Unavailable(message) = refused else {
            panic!("{refused}")
        };
        assert!(message.contains("no node is up"), "{message}");
        assert_eq!(listing(&c, &policy)?, before);
        let reloaded = Cluster::load(Box::new(kv), now)?;
        assert_eq!(listing(&reloaded, &policy)?, before);
        Ok(())
    }

    #[test]
    fn a_publish_never_grants_a_node_drained_while_it_planned() -> anyhow::Result<()> {
        let (kv, now, policy) = fresh();
        let mut c = cluster(&kv, 1000, now)?;
        let m = manifest("index.html", 100)?;
        let one_copy = request(&m, None, Some(1));
        let (record, inputs) = prepare_publish(&mut c, &policy, now, &one_copy)?;
        let plans = inputs.plan();
        // The node the plan gives it is drained while the plan was made.
        let (planned, _) = plans.prospect(&c, &policy, now, (&m.id(), 1));
        let node = *planned.first().context("placed")?;
        let drained = NodeRecord {
            draining: true,
            ..c.nodes[&node].clone()
        };
        c.save_node(drained)?;
        let before = listing(&c, &policy)?;
        let refused = record_publish(&mut c, &policy, now, &one_copy, record, plans);
        assert!(
            matches!(refused, Err(OpError::Unavailable(_))),
            "{refused:?}"
        );
        assert_eq!(listing(&c, &policy)?, before, "nothing changed");
        // Planned again, it goes to the other node.
        let upload = publish_ok(&mut c, &policy, now, &one_copy)?;
        assert_ne!(upload, node);
        Ok(())
    }
}
