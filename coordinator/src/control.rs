//! The coordinator's side of the node protocol ([`cartable_proto::control`]):
//! joins and heartbeats over QUIC, one request per stream. Any key may connect;
//! a join needs a valid token, a heartbeat a registered key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cartable_node::peer::auth::peer_node_id;
use cartable_node::peer::frame;
use cartable_proto::NodeId;
use cartable_proto::control::{
    self, Contact, ControlRequest, ControlResponse, Heartbeat, JoinRequest, MAX_FRAME_BYTES,
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
        // The node's first answer was lost: it asks again.
        Some(user) if user == node && c.nodes.contains_key(&node) => {
            return ControlResponse::Joined {
                region: token.region,
                site: token.site,
            };
        }
        Some(user) if user == node => {
            return refused("this node was removed from the cluster: ask for a new join token");
        }
        Some(_) => return refused("join token already used by another node"),
        None => {}
    }
    if let Err(why) = check_contact(&join.contact) {
        return refused(&why);
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

/// A node's contact must be usable as is: the HTTPS URL goes into browsers'
/// `Location` headers, the fingerprint into the CLI's pin.
fn check_contact(contact: &Contact) -> Result<(), String> {
    let authority = contact
        .https_url
        .strip_prefix("https://")
        .ok_or("the node's https_url must start with https://")?;
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b);
    if authority.is_empty() || authority.len() > 255 || !authority.bytes().all(allowed) {
        return Err("the node's https_url must be https://HOST[:PORT], nothing after".into());
    }
    let hex = &contact.https_cert_sha256;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("the node's certificate fingerprint must be 64 lowercase hex digits".into());
    }
    Ok(())
}

fn handle_heartbeat(coord: &Arc<Coordinator>, node: NodeId, beat: &Heartbeat) -> ControlResponse {
    if let Err(why) = check_contact(&beat.contact) {
        return refused(&why);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_contact_must_be_a_bare_https_origin_with_a_fingerprint() {
        let good = Contact {
            https_url: "https://ecole-12.example:8443".into(),
            quic: "127.0.0.1:1".parse().unwrap(),
            https_cert_sha256: "ab".repeat(32),
        };
        assert_eq!(check_contact(&good), Ok(()));
        for url in [
            "http://x",
            "https://",
            "https://evil.example/phish",
            "https://x?y",
            "https://a\r\nSet-Cookie: x",
            "https://x y",
        ] {
            let bad = Contact {
                https_url: url.into(),
                ..good.clone()
            };
            assert!(check_contact(&bad).is_err(), "{url}");
        }
        let unpinned = Contact {
            https_cert_sha256: "AB".repeat(32),
            ..good
        };
        assert!(check_contact(&unpinned).is_err());
    }
}
