//! The coordinator's side of the node protocol ([`cartable_proto::control`]):
//! joins and heartbeats over QUIC, one request per stream. Any key may connect;
//! a join needs a valid token, a heartbeat a registered key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cartable_node::peer::auth::peer_node_id;
use cartable_node::peer::frame;
use cartable_proto::NodeId;
use cartable_proto::control::{
    self, ControlRequest, ControlResponse, Heartbeat, JoinRequest, MAX_FRAME_BYTES,
};

use crate::Coordinator;
use crate::lifecycle;
use crate::state::{NodeRecord, secret_hash, unix_now};

/// A request must arrive this soon after its stream opens.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request from a key that is not a member yet (a join is small):
/// strangers cannot make the coordinator buffer much.
const MAX_STRANGER_FRAME: usize = 64 * 1024;

/// Answers nodes until the endpoint closes.
pub async fn serve_nodes(coord: Arc<Coordinator>) {
    while let Some(incoming) = coord.endpoint.accept().await {
        let coord = coord.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => return tracing::debug!(error = %e, "node handshake failed"),
            };
            let Some(node) = peer_node_id(&conn) else {
                return;
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(answer(coord.clone(), node, send, recv));
            }
        });
    }
}

async fn answer(
    coord: Arc<Coordinator>,
    node: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = if coord.lock().nodes.contains_key(&node) {
        MAX_FRAME_BYTES
    } else {
        MAX_STRANGER_FRAME
    };
    let response =
        match tokio::time::timeout(REQUEST_TIMEOUT, frame::read_body(&mut recv, max)).await {
            Err(_) => refused("no request within 10 s"),
            Ok(Err(e)) => refused(&format!("bad frame: {e}")),
            Ok(Ok(body)) => match control::decode::<ControlRequest>(&body) {
                Err(e) => refused(&e.to_string()),
                Ok(ControlRequest::Join(join)) => handle_join(&coord, node, &join),
                Ok(ControlRequest::Heartbeat(beat)) => handle_heartbeat(&coord, node, &beat),
            },
        };
    if let ControlResponse::Refused { reason } = &response {
        tracing::warn!(node = %node, reason, "refused a node request");
    }
    if frame::write_frame(&mut send, &control::encode(&response))
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}

fn refused(reason: &str) -> ControlResponse {
    ControlResponse::Refused {
        reason: reason.to_owned(),
    }
}

fn handle_join(coord: &Coordinator, node: NodeId, join: &JoinRequest) -> ControlResponse {
    let mut c = coord.lock();
    let hash = secret_hash(join.secret.as_bytes());
    let Some(token) = c.tokens.get(&hash).cloned() else {
        return refused("unknown join token (never made, or revoked)");
    };
    match token.used_by {
        Some(user) if user == node => {
            return ControlResponse::Joined {
                region: token.region,
                site: token.site,
            };
        }
        Some(_) => return refused("join token already used by another node"),
        None => {}
    }
    if token.expires <= unix_now() {
        return refused("join token expired");
    }
    if c.nodes.contains_key(&node) {
        return refused("this node is already a member");
    }
    let record = NodeRecord {
        id: node,
        region: token.region.clone(),
        site: token.site.clone(),
        capacity: join.capacity,
        contact: join.contact.clone(),
        draining: false,
        reported_failures: 0,
    };
    let saved = c.save_node(record).and_then(|()| {
        c.save_token(
            hash,
            crate::state::TokenRecord {
                used_by: Some(node),
                ..token.clone()
            },
        )?;
        c.flush()
    });
    if let Err(e) = saved {
        tracing::error!(error = format!("{e:#}"), "could not record a join");
        return refused("the coordinator could not record the join; try again");
    }
    c.live.insert(
        node,
        crate::state::Liveness {
            last_seen: Instant::now(),
            used: 0,
            load: 0,
            held: Default::default(),
            names_version: 0,
        },
    );
    tracing::info!(node = %node, region = token.region, site = token.site, "node joined");
    ControlResponse::Joined {
        region: token.region,
        site: token.site,
    }
}

fn handle_heartbeat(coord: &Arc<Coordinator>, node: NodeId, beat: &Heartbeat) -> ControlResponse {
    let now = Instant::now();
    let (orders, claims) = {
        let mut c = coord.lock();
        if !c.nodes.contains_key(&node) {
            return refused("unknown node: join with a token first");
        }
        let claims = match lifecycle::apply_heartbeat(&mut c, node, beat, now) {
            Ok(claims) => claims,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "could not record a heartbeat");
                return refused("the coordinator could not record the heartbeat");
            }
        };
        (lifecycle::orders_for(&c, &node, &coord.policy, now), claims)
    };
    for bundle in claims {
        coord.spot_check(node, bundle);
    }
    ControlResponse::Orders(orders)
}
