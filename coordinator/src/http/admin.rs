//! The admin API routes (contract in [`cartable_proto::api`]). Every call checks the
//! bearer token first; a refused call changes nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cartable_net::https::RequestBody;
use cartable_proto::join::{JoinToken, UploadGrant};
use cartable_proto::{BundleId, BundlePath, Manifest, NodeId};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use ring::rand::SecureRandom;
use serde::de::DeserializeOwned;

use super::{Reply, error, json};
use crate::Coordinator;
use crate::config::Policy;
use crate::state::{BundleRecord, Cluster, TokenRecord, secret_hash, unix_now};
use crate::{lifecycle, views};
use cartable_proto::api::*;

/// Largest JSON body accepted.
const MAX_JSON: usize = 64 * 1024;
/// How long an upload grant is good for.
const GRANT_SECS: u64 = 24 * 3600;

type Failure = (StatusCode, String);

fn fail(status: StatusCode, message: impl Into<String>) -> Failure {
    (status, message.into())
}

fn internal(e: anyhow::Error) -> Failure {
    tracing::error!(error = format!("{e:#}"), "admin call failed");
    fail(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the coordinator could not save the change",
    )
}

/// Answers one `/api/` request.
pub async fn respond(coord: Arc<Coordinator>, req: Request<RequestBody>) -> Reply {
    if !authorized(&coord, &req) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    }
    match route(&coord, req).await {
        Ok(reply) => reply,
        Err((status, message)) => error(status, &message),
    }
}

fn authorized(coord: &Coordinator, req: &Request<RequestBody>) -> bool {
    let Some(token) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Hashes are compared, not tokens: timing reveals only how much of a hash
    // of the attacker's own guess matches, which says nothing about the token.
    let given = secret_hash(token.trim().as_bytes());
    coord.lock().admin_hash.as_deref() == Some(given.as_str())
}

async fn body(req: Request<RequestBody>, max: usize) -> Result<Bytes, Failure> {
    Limited::new(req.into_body(), max)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| {
            fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {max} bytes or cut"),
            )
        })
}

async fn json_body<T: DeserializeOwned>(req: Request<RequestBody>) -> Result<T, Failure> {
    let bytes = body(req, MAX_JSON).await?;
    serde_json::from_slice(&bytes).map_err(|e| fail(StatusCode::BAD_REQUEST, format!("body: {e}")))
}

fn node_id(text: &str) -> Result<NodeId, Failure> {
    text.parse()
        .map_err(|_| fail(StatusCode::BAD_REQUEST, "malformed node id"))
}

fn bundle_id(text: &str) -> Result<BundleId, Failure> {
    text.parse()
        .map_err(|_| fail(StatusCode::BAD_REQUEST, "malformed bundle id"))
}

async fn route(coord: &Arc<Coordinator>, req: Request<RequestBody>) -> Result<Reply, Failure> {
    let path = req.uri().path().trim_start_matches("/api/").to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let parts: Vec<&str> = path.split('/').collect();
    let ok = |v: &dyn erased::Json| Ok(v.reply());
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["status"]) => ok(&views::status(&coord.lock(), &coord.policy)),
        (Method::GET, ["nodes"]) => ok(&views::nodes(&coord.lock(), &coord.policy)),
        (Method::GET, ["nodes", id]) => {
            ok(&views::node(&coord.lock(), &coord.policy, &node_id(id)?)?)
        }
        (Method::POST, ["nodes", id, "drain"]) => ok(&drain(coord, &node_id(id)?)?),
        (Method::POST, ["nodes", id, "trust"]) => ok(&restore_trust(coord, &node_id(id)?)?),
        (Method::POST, ["nodes", id, "approve-contact"]) => {
            ok(&approve_contact(coord, &node_id(id)?)?)
        }
        (Method::DELETE, ["nodes", id]) => {
            let force = query_value(&query, "force") == Some("true");
            ok(&remove_node(coord, &node_id(id)?, force)?)
        }
        (Method::GET, ["bundles"]) => ok(&views::bundles(&coord.lock(), &coord.policy)),
        (Method::GET, ["bundles", id]) => ok(&views::bundle(
            &coord.lock(),
            &coord.policy,
            &bundle_id(id)?,
            true,
        )?),
        (Method::POST, ["bundles"]) => {
            let bytes = body(req, cartable_proto::wire::MAX_MANIFEST_BYTES).await?;
            ok(&publish(coord, &query, &bytes)?)
        }
        (Method::DELETE, ["bundles", id]) => ok(&unpublish(coord, &bundle_id(id)?)?),
        (Method::PUT, ["bundles", id, "replicas"]) => {
            let id = bundle_id(id)?;
            let set: SetReplicas = json_body(req).await?;
            ok(&set_replicas(coord, &id, set.replicas)?)
        }
        (Method::GET, ["names"]) => ok(&views::names(&coord.lock())),
        (Method::GET, [.., "history"]) if parts[0] == "names" && parts.len() > 2 => {
            let name = parts[1..parts.len() - 1].join("/");
            let c = coord.lock();
            let record = c
                .names
                .get(&name)
                .ok_or(fail(StatusCode::NOT_FOUND, "no such name"))?;
            ok(&record.history)
        }
        (Method::PUT, ["names", ..]) if parts.len() > 1 => {
            let name = parts[1..].join("/");
            let set: SetName = json_body(req).await?;
            ok(&set_name(coord, &name, set.bundle)?)
        }
        (Method::POST, ["tokens"]) => {
            let create: CreateToken = json_body(req).await?;
            ok(&create_token(coord, create)?)
        }
        (Method::GET, ["tokens"]) => ok(&views::tokens(&coord.lock())),
        (Method::DELETE, ["tokens", id]) => ok(&revoke_token(coord, id)?),
        (Method::POST, ["plan"]) => {
            let change: PlanChange = json_body(req).await?;
            ok(&views::preview(&mut coord.lock(), &coord.policy, &change))
        }
        _ => Err(fail(StatusCode::NOT_FOUND, "no such API route")),
    }
}

/// Lets the router return any serializable view.
mod erased {
    pub trait Json {
        fn reply(&self) -> super::Reply;
    }
    impl<T: serde::Serialize> Json for T {
        fn reply(&self) -> super::Reply {
            super::json(http::StatusCode::OK, self)
        }
    }
}

fn drain(coord: &Coordinator, id: &NodeId) -> Result<NodeView, Failure> {
    let mut c = coord.lock();
    let mut record = c
        .nodes
        .get(id)
        .cloned()
        .ok_or(fail(StatusCode::NOT_FOUND, "no such node"))?;
    record.draining = true;
    c.save_node(record)
        .and_then(|()| c.flush())
        .map_err(internal)?;
    tracing::info!(node = %id, "draining");
    views::node(&c, &coord.policy, id)
}

fn restore_trust(coord: &Coordinator, id: &NodeId) -> Result<NodeView, Failure> {
    let mut c = coord.lock();
    if !crate::trust::clear(&mut c, id).map_err(internal)? {
        return Err(fail(StatusCode::NOT_FOUND, "no such node"));
    }
    c.flush().map_err(internal)?;
    views::node(&c, &coord.policy, id)
}

fn approve_contact(coord: &Coordinator, id: &NodeId) -> Result<NodeView, Failure> {
    use crate::contact::{ApproveError, approve};
    let mut c = coord.lock();
    match approve(&mut c, id) {
        Ok(_) => c.flush().map_err(internal)?,
        Err(ApproveError::NoSuchNode) => return Err(fail(StatusCode::NOT_FOUND, "no such node")),
        Err(e @ ApproveError::NothingProposed) => {
            return Err(fail(StatusCode::CONFLICT, e.to_string()));
        }
        Err(ApproveError::Store(e)) => return Err(internal(e)),
    }
    views::node(&c, &coord.policy, id)
}

fn remove_node(coord: &Coordinator, id: &NodeId, force: bool) -> Result<NodeView, Failure> {
    let mut c = coord.lock();
    let view = views::node(&c, &coord.policy, id)?;
    let gone_for_good = c
        .down_since
        .get(id)
        .is_some_and(|since| since.elapsed() >= coord.policy.repair_delay);
    if view.complete > 0 && !gone_for_good && !force {
        return Err(fail(
            StatusCode::CONFLICT,
            format!(
                "the node still holds {} complete copies: drain it first, or remove it with \
                 --force to forget them at once",
                view.complete
            ),
        ));
    }
    c.remove_node(id)
        .and_then(|()| c.flush())
        .map_err(internal)?;
    drop(c);
    // A removed key is a stranger now: its open connections go with its membership.
    coord.endpoint.close_peer(id);
    coord.prober.forget(id);
    tracing::info!(node = %id, "removed");
    Ok(view)
}

fn check_replicas(c: &Cluster, replicas: u8) -> Result<(), Failure> {
    let sites = c.site_count();
    if replicas == 0 {
        return Err(fail(StatusCode::BAD_REQUEST, "replicas must be at least 1"));
    }
    if usize::from(replicas) > sites {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("{replicas} replicas wanted but the cluster has {sites} sites"),
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Failure> {
    // URL-safe characters only: a name is matched against request paths as sent.
    let safe = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~/".contains(&b));
    if name.len() > 256 || !safe || BundlePath::new(name.to_owned()).is_err() {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "a name is a relative path such as maths/6e/fractions: letters, digits, - _ . ~ and /, \
             no empty, . or .. part, at most 256 bytes",
        ));
    }
    Ok(())
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn publish(coord: &Coordinator, query: &str, bytes: &[u8]) -> Result<Published, Failure> {
    let manifest = Manifest::decode(bytes)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("manifest: {e}")))?;
    let name = query_value(query, "name").map(percent_decode).transpose()?;
    if let Some(name) = &name {
        check_name(name)?;
    }
    let replicas = query_value(query, "replicas")
        .map(|r| {
            r.parse().map_err(|_| {
                fail(
                    StatusCode::BAD_REQUEST,
                    "replicas must be a number from 1 to 255",
                )
            })
        })
        .transpose()?;
    let request = PublishRequest {
        id: BundleId::of_manifest(bytes),
        manifest: &manifest,
        name,
        replicas,
    };
    let mut c = coord.lock();
    let upload = record_publish(&mut c, &coord.policy, Instant::now(), &request)?;
    let id = request.id;
    let node = &c.nodes[&upload];
    let expires = unix_now() + GRANT_SECS;
    let signature = coord
        .identity
        .sign(&UploadGrant::signed_bytes(&id, &upload, expires))
        .map_err(internal)?;
    let grant = UploadGrant {
        bundle: id,
        node: upload,
        expires,
        signature,
    };
    let mut urls = vec![format!("{}/b/{id}/", coord.https_url)];
    urls.extend(
        request
            .name
            .iter()
            .map(|n| format!("{}/n/{n}/", coord.https_url)),
    );
    tracing::info!(bundle = %id, upload = %upload, "bundle published");
    Ok(Published {
        bundle: id,
        upload_node: upload,
        upload_url: node.contact.https_url.clone(),
        upload_cert_sha256: node.contact.https_cert_sha256.clone(),
        grant: grant.to_string(),
        urls,
    })
}

/// A publish call, its manifest decoded and its name checked.
#[derive(Debug)]
struct PublishRequest<'a> {
    id: BundleId,
    manifest: &'a Manifest,
    name: Option<String>,
    /// Copies asked for; `None` keeps the bundle's or takes the default.
    replicas: Option<u8>,
}

/// Records and places a published bundle; returns the node the publisher
/// uploads to. Every refusal comes before any change: the change is made
/// first on a scratch copy of the state, and for real only if that copy gives
/// the bundle a node that is up.
fn record_publish(
    c: &mut Cluster,
    policy: &Policy,
    now: Instant,
    request: &PublishRequest<'_>,
) -> Result<NodeId, Failure> {
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
        return Err(fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "no node is up to take the upload (see `cartable nodes`); nothing was changed",
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
    let apply = |c: &mut Cluster| {
        apply_publish(c, policy, now, &eligible, id, record.clone(), &request.name)
    };
    let mut trial = c.scratch();
    apply(&mut trial).map_err(internal)?;
    if upload_node(&trial, &id, policy, now).is_none() {
        return Err(match trial.unplaced.get(&id) {
            Some(why) => fail(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "no node that is up has room for the bundle ({why}; see `cartable status`); \
                     nothing was changed"
                ),
            ),
            None => fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "no node that is up could be given the bundle (see `cartable status`); \
                 nothing was changed",
            ),
        });
    }
    apply(c).map_err(internal)?;
    // The plan is deterministic: the real change gives what the trial gave.
    let upload = upload_node(c, &id, policy, now)
        .ok_or_else(|| internal(anyhow::anyhow!("publish placed {id} unlike its trial")))?;
    // The grant names the node: its claim counts even if the plan moves on.
    let mut granted = c.bundles[&id].clone();
    granted.granted(upload);
    c.save_bundle(id, granted)
        .and_then(|()| c.flush())
        .map_err(internal)?;
    Ok(upload)
}

/// The changes of a publish: the record, a new plan, and the name, which moves
/// at once only if a copy already exists, otherwise when the first copy is
/// verified, so that the link never breaks.
fn apply_publish(
    c: &mut Cluster,
    policy: &Policy,
    now: Instant,
    eligible: &lifecycle::Eligibility,
    id: BundleId,
    mut record: BundleRecord,
    name: &Option<String>,
) -> anyhow::Result<()> {
    let whole = c.live_complete(&id, now, policy.down_after) > 0;
    record.pending_name = name.clone().filter(|_| !whole);
    c.save_bundle(id, record)?;
    lifecycle::replan(c, policy, now, eligible)?;
    if let Some(name) = name.as_ref().filter(|_| whole) {
        c.set_name(name, id)?;
    }
    Ok(())
}

/// Where the publisher uploads: a node already holding it, else the first placed node that is up.
fn upload_node(c: &Cluster, id: &BundleId, policy: &Policy, now: Instant) -> Option<NodeId> {
    if let Some(n) = lifecycle::sources(c, id, None, policy, now).first() {
        return Some(*n);
    }
    c.replicas
        .get(id)?
        .keys()
        .find(|n| c.is_up(n, now, policy.down_after))
        .copied()
}

fn percent_decode(text: &str) -> Result<String, Failure> {
    let bad = || {
        fail(
            StatusCode::BAD_REQUEST,
            "malformed percent-encoding in the query",
        )
    };
    let bytes = text.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn unpublish(coord: &Coordinator, id: &BundleId) -> Result<BundleView, Failure> {
    let mut c = coord.lock();
    let view = views::bundle(&c, &coord.policy, id, true)?;
    let pointing: Vec<String> = c
        .names
        .iter()
        .filter(|(_, r)| r.current() == Some(*id))
        .map(|(n, _)| n.clone())
        .collect();
    if !pointing.is_empty() {
        return Err(fail(
            StatusCode::CONFLICT,
            format!(
                "names point to this bundle: {}; point them elsewhere first",
                pointing.join(", ")
            ),
        ));
    }
    c.retire_bundle(*id)
        .and_then(|()| c.flush())
        .map_err(internal)?;
    tracing::info!(bundle = %id, "bundle unpublished");
    Ok(view)
}

fn set_replicas(coord: &Coordinator, id: &BundleId, replicas: u8) -> Result<BundleView, Failure> {
    let mut c = coord.lock();
    let mut record = c
        .bundles
        .get(id)
        .cloned()
        .ok_or(fail(StatusCode::NOT_FOUND, "no such bundle"))?;
    check_replicas(&c, replicas)?;
    record.replicas = replicas;
    c.save_bundle(*id, record)
        .and_then(|()| c.flush())
        .map_err(internal)?;
    views::bundle(&c, &coord.policy, id, false)
}

fn set_name(coord: &Coordinator, name: &str, bundle: BundleId) -> Result<NameView, Failure> {
    check_name(name)?;
    let mut c = coord.lock();
    if !c.bundles.contains_key(&bundle) {
        return Err(fail(StatusCode::NOT_FOUND, "no such bundle"));
    }
    c.set_name(name, bundle)
        .and_then(|()| c.flush())
        .map_err(internal)?;
    Ok(NameView {
        name: name.to_owned(),
        bundle,
    })
}

fn create_token(coord: &Coordinator, create: CreateToken) -> Result<CreatedToken, Failure> {
    for (what, value) in [("region", &create.region), ("site", &create.site)] {
        if value.is_empty()
            || value.len() > 64
            || value.chars().any(|ch| ch.is_control() || ch == '/')
        {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!("{what} must be 1 to 64 characters, no '/'"),
            ));
        }
    }
    if create.expires_secs == 0 {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "expires_secs must be positive",
        ));
    }
    let mut secret = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| fail(StatusCode::INTERNAL_SERVER_ERROR, "no system randomness"))?;
    let token = JoinToken {
        secret,
        coordinator: coord.identity.id(),
        quic: coord.quic_addr,
    };
    let hash = secret_hash(token.secret_text().as_bytes());
    let record = TokenRecord {
        region: create.region,
        site: create.site,
        expires: unix_now().saturating_add(create.expires_secs),
        used_by: None,
        capacity: create.capacity,
    };
    let mut c = coord.lock();
    c.save_token(hash.clone(), record.clone())
        .and_then(|()| c.flush())
        .map_err(internal)?;
    Ok(CreatedToken {
        token: token.to_string(),
        view: views::token(&hash, &record),
    })
}

fn revoke_token(coord: &Coordinator, id: &str) -> Result<TokenView, Failure> {
    let mut c = coord.lock();
    let matching: BTreeSet<String> = c
        .tokens
        .keys()
        .filter(|h| h.starts_with(id) && id.len() >= 8)
        .cloned()
        .collect();
    let [hash] = matching.iter().collect::<Vec<_>>()[..] else {
        return Err(fail(
            StatusCode::NOT_FOUND,
            "no token with that id (give at least 8 hex digits)",
        ));
    };
    let view = views::token(hash, &c.tokens[hash]);
    let hash = hash.clone();
    c.delete_token(&hash)
        .and_then(|()| c.flush())
        .map_err(internal)?;
    Ok(view)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cartable_proto::control::Contact;
    use cartable_proto::{BlobHash, ManifestEntry};

    use super::*;
    use crate::state::{Liveness, MemoryKv, NodeRecord};

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
        record_publish(c, policy, now, request)
            .map_err(|(status, message)| anyhow::anyhow!("refused ({status}): {message}"))
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
        let (kv, now, policy) = (
            Arc::new(MemoryKv::default()),
            Instant::now(),
            Policy::default(),
        );
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
        let (kv, now, policy) = (
            Arc::new(MemoryKv::default()),
            Instant::now(),
            Policy::default(),
        );
        let mut c = cluster(&kv, 1000, now)?;
        let fits = manifest("index.html", 600)?;
        publish_ok(&mut c, &policy, now, &request(&fits, None, None))?;
        let before = listing(&c, &policy)?;

        let big = manifest("video.mp4", 5000)?;
        let (status, message) =
            record_publish(&mut c, &policy, now, &request(&big, Some("big"), None)).unwrap_err();
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
        assert!(message.contains("no node that is up has room"), "{message}");
        assert!(message.contains("nothing was changed"), "{message}");
        // Room left by the first bundle, but not enough for a second copy of it.
        let second = manifest("more.html", 600)?;
        let refused = record_publish(&mut c, &policy, now, &request(&second, None, Some(2)));
        assert_eq!(refused.unwrap_err().0, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(listing(&c, &policy)?, before, "in memory");
        let reloaded = Cluster::load(Box::new(kv), now)?;
        assert_eq!(listing(&reloaded, &policy)?, before, "on disk");
        Ok(())
    }

    #[test]
    fn a_publish_refused_for_replicas_or_no_node_up_leaves_nothing_behind() -> anyhow::Result<()> {
        let (kv, now, policy) = (
            Arc::new(MemoryKv::default()),
            Instant::now(),
            Policy::default(),
        );
        let mut c = cluster(&kv, 1000, now)?;
        let m = manifest("index.html", 100)?;
        publish_ok(&mut c, &policy, now, &request(&m, None, Some(1)))?;
        let before = listing(&c, &policy)?;

        // Publishing it again asking for more copies than there are sites.
        let (status, message) =
            record_publish(&mut c, &policy, now, &request(&m, None, Some(3))).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("2 sites"), "{message}");
        assert_eq!(c.bundles[&m.id()].replicas, 1);

        let later = now + policy.down_after * 2;
        let other = manifest("other.html", 100)?;
        let (status, message) =
            record_publish(&mut c, &policy, later, &request(&other, None, None)).unwrap_err();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(message.contains("no node is up"), "{message}");
        assert_eq!(listing(&c, &policy)?, before);
        let reloaded = Cluster::load(Box::new(kv), now)?;
        assert_eq!(listing(&reloaded, &policy)?, before);
        Ok(())
    }
}
