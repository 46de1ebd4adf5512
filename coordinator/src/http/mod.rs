//! The coordinator's HTTPS side: public redirects for browsers (`/b/…` to a
//! healthy copy near the client, `/n/{name}/…` to the current bundle) and the
//! admin API under `/api/` (see [`cartable_proto::api`]), the backup among it.

mod admin;
mod backup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cartable_net::https::RequestBody;
use cartable_net::https::shed::shed_response;
use cartable_proto::BundleId;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use crate::Coordinator;
use crate::lifecycle;
use crate::probe::Candidate;
use cartable_proto::api::ApiError;

/// When a browser that found no copy answering should try again.
const NO_COPY_RETRY: Duration = Duration::from_secs(5);

/// The response type of every route.
pub type Reply = Response<Full<Bytes>>;

/// Answers one request.
pub async fn respond(
    coord: Arc<Coordinator>,
    req: Request<RequestBody>,
    peer: SocketAddr,
) -> Reply {
    let path = req.uri().path().to_owned();
    if path.starts_with("/api/") {
        return admin::respond(coord, req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD here");
    }
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    if let Some(rest) = path.strip_prefix("/b/") {
        return redirect_to_copy(&coord, rest, &req, peer).await;
    }
    if let Some(rest) = path.strip_prefix("/n/") {
        return redirect_name(&coord, rest);
    }
    error(StatusCode::NOT_FOUND, "not found")
}

async fn redirect_to_copy(
    coord: &Arc<Coordinator>,
    rest: &str,
    req: &Request<RequestBody>,
    peer: SocketAddr,
) -> Reply {
    let id_text = rest.split('/').next().unwrap_or_default();
    let Ok(bundle) = id_text.parse::<BundleId>() else {
        return error(StatusCode::BAD_REQUEST, "malformed bundle id");
    };
    let candidates: Vec<Candidate> = {
        let c = coord.lock();
        if !c.bundles.contains_key(&bundle) {
            return error(StatusCode::NOT_FOUND, "no such bundle");
        }
        let region = coord.config.region_of(peer.ip());
        lifecycle::route(&c, &bundle, region, &coord.policy, Instant::now())
            .into_iter()
            .filter_map(|id| {
                let node = c.nodes.get(&id)?;
                let live = c.live.get(&id)?;
                // After a restart, "up" is an assumption, not a sign of life.
                let heard = (!live.assumed).then_some(live.last_seen);
                Some(Candidate {
                    id,
                    https_url: node.contact.https_url.clone(),
                    cert_sha256: node.contact.https_cert_sha256.clone(),
                    heard: heard.filter(|_| node.proposed_contact.is_none()),
                })
            })
            .collect()
    };
    let Some(node) = coord.prober.pick(&candidates).await else {
        // Browsers ignore Retry-After on a page: a navigation gets a page
        // that retries by itself.
        return shed_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no copy of this lesson answers right now",
            NO_COPY_RETRY,
            req.headers(),
        );
    };
    let origin = candidates
        .iter()
        .find(|c| c.id == node)
        .map(|c| c.https_url.as_str())
        .unwrap_or_default();
    let mut location = format!("{origin}/b/{rest}");
    if let Some(q) = req.uri().query() {
        location.push('?');
        location.push_str(q);
    }
    found(&location)
}

fn redirect_name(coord: &Coordinator, rest: &str) -> Reply {
    let c = coord.lock();
    let lookup = |name: &str| c.names.get(name).and_then(|r| r.current());
    match cartable_proto::control::resolve_name(rest, lookup) {
        Some((bundle, tail)) => found(&format!("/b/{bundle}/{tail}")),
        None => error(StatusCode::NOT_FOUND, "no such name"),
    }
}

fn found(location: &str) -> Reply {
    let Ok(value) = header::HeaderValue::from_str(location) else {
        return error(StatusCode::BAD_REQUEST, "path cannot be redirected");
    };
    let mut reply = text(StatusCode::FOUND, "");
    reply.headers_mut().insert(header::LOCATION, value);
    reply.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    // Lessons run sandboxed, so their fetch() of a lesson link through the
    // coordinator is cross-origin; the redirect carries no credentials.
    reply.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    reply
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    reply
}

/// A JSON error answer: `{"error": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Reply {
    json(
        status,
        &ApiError {
            error: message.to_owned(),
        },
    )
}
