//! The admin API routes (contract in [`cartable_proto::api`]): each request
//! mapped to one operation of [`crate::ops`], its answer to JSON and its
//! [`OpError`] to a status, in [`status_of`]. Every call checks the bearer
//! token first; a refused call changes nothing.

use std::sync::Arc;

use bytes::Bytes;
use cartable_net::https::RequestBody;
use cartable_proto::api::{CreateToken, PlanChange, SetCapacity, SetName, SetReplicas};
use cartable_proto::{BundleId, Manifest, NodeId};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

use super::{Reply, error, json};
use crate::Coordinator;
use crate::ops::OpError;
use crate::ops::publish::PublishRequest;

/// Largest JSON body accepted.
const MAX_JSON: usize = 64 * 1024;

/// A refusal before any operation: the request itself is malformed.
type Failure = (StatusCode, String);

fn fail(status: StatusCode, message: impl Into<String>) -> Failure {
    (status, message.into())
}

/// The status an operation's refusal is answered with; the one place where
/// they are mapped.
fn status_of(e: &OpError) -> StatusCode {
    match e {
        OpError::NoSuchNode
        | OpError::NoSuchBundle
        | OpError::NoSuchName
        | OpError::NoSuchToken => StatusCode::NOT_FOUND,
        OpError::Invalid(_) => StatusCode::BAD_REQUEST,
        OpError::Conflict(_) => StatusCode::CONFLICT,
        OpError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        OpError::NoRoom(_) => StatusCode::INSUFFICIENT_STORAGE,
        OpError::Save(_) | OpError::NoRandomness => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<OpError> for Failure {
    fn from(e: OpError) -> Self {
        if let OpError::Save(cause) = &e {
            tracing::error!(error = format!("{cause:#}"), "admin call failed");
        }
        (status_of(&e), e.to_string())
    }
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
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| coord.is_admin(token))
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

fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes).map_err(|e| fail(StatusCode::BAD_REQUEST, format!("body: {e}")))
}

fn node_id(text: &str) -> Result<NodeId, Failure> {
    text.parse()
        .map_err(|_| fail(StatusCode::BAD_REQUEST, "malformed node id"))
}

fn bundle_id(text: &str) -> Result<BundleId, Failure> {
    text.parse()
        .map_err(|_| fail(StatusCode::BAD_REQUEST, "malformed bundle id"))
}

/// Reads the request's body on the connection's thread, then runs its
/// operation on a blocking thread: an operation takes the state's lock and
/// syncs the disk, and an HTTP/2 connection's thread serves other
/// connections, browsers' redirects among them, that must not wait on either.
async fn route(coord: &Arc<Coordinator>, req: Request<RequestBody>) -> Result<Reply, Failure> {
    let path = req.uri().path().trim_start_matches("/api/").to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let method = req.method().clone();
    if (&method, path.as_str()) == (&Method::POST, "backup") {
        return Ok(super::backup::reply(coord.clone()).await);
    }
    let bytes = match (&method, path.as_str()) {
        (&Method::POST, "bundles") => body(req, cartable_proto::wire::MAX_MANIFEST_BYTES).await?,
        (&Method::POST | &Method::PUT, _) => body(req, MAX_JSON).await?,
        _ => Bytes::new(),
    };
    let coord = coord.clone();
    tokio::task::spawn_blocking(move || dispatch(&coord, &method, &path, &query, &bytes))
        .await
        .map_err(|e| {
            fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the operation failed: {e}"),
            )
        })?
}

fn dispatch(
    coord: &Coordinator,
    method: &Method,
    path: &str,
    query: &str,
    bytes: &[u8],
) -> Result<Reply, Failure> {
    let parts: Vec<&str> = path.split('/').collect();
    let ok = |v: &dyn erased::Json| Ok(v.reply());
    match (method.clone(), parts.as_slice()) {
        (Method::GET, ["status"]) => ok(&coord.status()),
        (Method::GET, ["nodes"]) => ok(&coord.nodes()),
        (Method::GET, ["nodes", id]) => ok(&coord.node(&node_id(id)?)?),
        (Method::POST, ["nodes", id, "drain"]) => ok(&coord.drain(&node_id(id)?)?),
        (Method::POST, ["nodes", id, "trust"]) => ok(&coord.restore_trust(&node_id(id)?)?),
        (Method::POST, ["nodes", id, "approve-contact"]) => {
            ok(&coord.approve_contact(&node_id(id)?)?)
        }
        (Method::PUT, ["nodes", id, "capacity"]) => {
            let id = node_id(id)?;
            let set: SetCapacity = json_body(bytes)?;
            ok(&coord.set_capacity(&id, set.capacity)?)
        }
        (Method::DELETE, ["nodes", id]) => {
            let force = query_value(query, "force") == Some("true");
            ok(&coord.remove_node(&node_id(id)?, force)?)
        }
        (Method::GET, ["bundles"]) => ok(&coord.bundles()),
        (Method::GET, ["bundles", id]) => ok(&coord.bundle(&bundle_id(id)?)?),
        (Method::POST, ["bundles"]) => publish(coord, query, bytes),
        (Method::DELETE, ["bundles", id]) => ok(&coord.unpublish(&bundle_id(id)?)?),
        (Method::PUT, ["bundles", id, "replicas"]) => {
            let id = bundle_id(id)?;
            let set: SetReplicas = json_body(bytes)?;
            ok(&coord.set_replicas(&id, set.replicas)?)
        }
        (Method::GET, ["names"]) => ok(&coord.names()),
        (Method::GET, [.., "history"]) if parts[0] == "names" && parts.len() > 2 => {
            let name = parts[1..parts.len() - 1].join("/");
            ok(&coord.name_history(&name)?)
        }
        (Method::PUT, ["names", ..]) if parts.len() > 1 => {
            let name = parts[1..].join("/");
            let set: SetName = json_body(bytes)?;
            ok(&coord.set_name(&name, set.bundle)?)
        }
        (Method::POST, ["tokens"]) => {
            let create: CreateToken = json_body(bytes)?;
            ok(&coord.create_token(create)?)
        }
        (Method::GET, ["tokens"]) => ok(&coord.tokens()),
        (Method::DELETE, ["tokens", id]) => ok(&coord.revoke_token(id)?),
        (Method::POST, ["plan"]) => {
            let change: PlanChange = json_body(bytes)?;
            ok(&coord.plan(&change))
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

/// `POST /api/bundles?replicas=N&name=NAME` with the manifest's bytes.
fn publish(coord: &Coordinator, query: &str, bytes: &[u8]) -> Result<Reply, Failure> {
    let manifest = Manifest::decode(bytes)
        .map_err(|e| fail(StatusCode::BAD_REQUEST, format!("manifest: {e}")))?;
    let name = query_value(query, "name").map(percent_decode).transpose()?;
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
    let published = coord.publish(&PublishRequest {
        id: BundleId::of_manifest(bytes),
        manifest: &manifest,
        name,
        replicas,
    })?;
    Ok(json(StatusCode::OK, &published))
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// A query value as forms encode it: `+` is a space, `%2B` a plus.
fn percent_decode(text: &str) -> Result<String, Failure> {
    cartable_proto::hex::percent_decode(&text.replace('+', "%20"))
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            fail(
                StatusCode::BAD_REQUEST,
                "malformed percent-encoding in the query",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::{percent_decode, query_value};

    #[test]
    fn query_values_decode_as_forms_send_them_and_signs_are_not_hex() {
        let query = "replicas=3&name=maths%2F6e+%C3%A9t%C3%A9%2B";
        let name = query_value(query, "name").unwrap();
        assert_eq!(percent_decode(name).unwrap(), "maths/6e été+");
        assert_eq!(query_value(query, "replicas"), Some("3"));
        for bad in ["%+a", "%-1", "%4", "%ff"] {
            assert!(percent_decode(bad).is_err(), "{bad}");
        }
    }
}
