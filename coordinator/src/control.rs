//! The coordinator's side of the node protocol ([`cartable_proto::control`]):
//! joins and heartbeats over QUIC, one request per stream, each handed to
//! [`crate::ops::members`] and its refusal sent back as its text. Any key may
//! connect; a join needs a valid token, a heartbeat a registered key.
//!
//! Each request is answered in its own protocol version
//! ([`cartable_proto::control::version`]): a node not yet upgraded reads its
//! answers as before. A request of a version this build does not speak, or
//! one that cannot be read, is refused at [`Protocol::CURRENT`].
//!
//! A connection from a key that is not a member (a stranger) keeps the small
//! limits every connection starts with (`cartable_net::peer::admission`) and
//! must join within [`STRANGER_DEADLINE`]; a member's connection gets a
//! member's limits. The endpoint's caps bound how many connections strangers
//! hold at all; a removed member's connections are closed by the admin API.

use std::sync::Arc;
use std::time::Duration;

use cartable_net::peer::endpoint::{Arriving, PeerConnection};
use cartable_net::peer::frame::{self, FrameError};
use cartable_proto::control::{
    self, ControlRequest, ControlResponse, Heartbeat, JoinRequest, MAX_FRAME_BYTES, Protocol,
};
use cartable_proto::{DecodeError, NodeId};

use crate::Coordinator;

/// A request must arrive this soon after its stream opens.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request from a key that is not a member yet: a join is under
/// 1 KiB (token, contact, capacity). With `admission::STRANGER_STREAMS`
/// streams, a stranger's connection makes the coordinator hold at most twice
/// this in request buffers, whatever it sends.
const MAX_STRANGER_FRAME: usize = 16 * 1024;
/// A key that is not a member must become one (join) this soon after its
/// handshake, or its connection is closed: a stranger cannot keep a connection
/// by keeping it busy, and a join takes one round trip.
pub const STRANGER_DEADLINE: Duration = Duration::from_secs(10);
/// The application close code sent to a stranger past its deadline.
const CLOSED_NOT_JOINED: u32 = 3;

/// Answers nodes until the endpoint closes.
pub async fn serve_nodes(coord: Arc<Coordinator>) {
    while let Some(arriving) = coord.endpoint.accept().await {
        tokio::spawn(serve_connection(coord.clone(), arriving));
    }
}

/// One connection: its requests answered, each on a task of its own, until it
/// closes, or until a stranger's deadline passes.
async fn serve_connection(coord: Arc<Coordinator>, arriving: Arriving) {
    let remote = arriving.remote_address();
    let peer = match arriving.handshake().await {
        Ok(peer) => Arc::new(peer),
        Err(e) => {
            return tracing::debug!(%remote, error = format!("{e:#}"), "node handshake failed");
        }
    };
    let mut deadline = if is_member(&coord, &peer.peer) {
        peer.trust();
        None
    } else {
        Some(tokio::time::Instant::now() + STRANGER_DEADLINE)
    };
    loop {
        let accepted = match deadline {
            None => peer.conn.accept_bi().await,
            Some(at) => match tokio::time::timeout_at(at, peer.conn.accept_bi()).await {
                Ok(accepted) => accepted,
                Err(_) if is_member(&coord, &peer.peer) => {
                    deadline = None;
                    continue;
                }
                Err(_) => return close_stranger(&peer),
            },
        };
        let Ok((send, recv)) = accepted else { return };
        tokio::spawn(answer(coord.clone(), peer.clone(), send, recv));
    }
}

fn is_member(coord: &Coordinator, node: &NodeId) -> bool {
    coord.lock().nodes.contains_key(node)
}

fn close_stranger(peer: &PeerConnection) {
    tracing::debug!(node = %peer.peer, "closing a connection that did not join in time");
    peer.conn
        .close(CLOSED_NOT_JOINED.into(), b"join within 10 s of connecting");
}

async fn answer(
    coord: Arc<Coordinator>,
    peer: Arc<PeerConnection>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let node = peer.peer;
    let member = is_member(&coord, &node);
    let max = if member {
        MAX_FRAME_BYTES
    } else {
        MAX_STRANGER_FRAME
    };
    let unread = |reason: &str| (Protocol::CURRENT, refused(reason));
    let (version, response) =
        match tokio::time::timeout(REQUEST_TIMEOUT, frame::read_body(&mut recv, max)).await {
            Err(_) => unread("no request within 10 s"),
            Ok(Err(FrameError::Decode(DecodeError::TooLarge { .. }))) if !member => {
                unread("unknown node: join with a token first (a join is small)")
            }
            Ok(Err(e)) => unread(&format!("bad frame: {e}")),
            Ok(Ok(body)) => match control::decode_versioned::<ControlRequest>(&body) {
                Err(e) => unread(&e.to_string()),
                Ok((version, ControlRequest::Join(join))) => {
                    (version, handle_join(&coord, node, &join))
                }
                Ok((version, ControlRequest::Heartbeat(beat))) => {
                    (version, handle_heartbeat(&coord, node, &beat))
                }
            },
        };
    after_answer(&peer, member, &response);
    if frame::write_frame(&mut send, &control::encode_versioned(version, &response))
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}

/// Logs a refusal; gives a member's limits to a connection that just joined.
fn after_answer(peer: &PeerConnection, member: bool, response: &ControlResponse) {
    let node = peer.peer;
    match response {
        ControlResponse::Refused { reason } if member => {
            tracing::warn!(node = %node, reason, "refused a member's request")
        }
        // Strangers are refused at debug level: at warn, a flood of garbage
        // would become a flood of log lines. The joining node logs its refusal.
        ControlResponse::Refused { reason } => {
            tracing::debug!(node = %node, reason, "refused a stranger's request")
        }
        ControlResponse::Joined { .. } => peer.trust(),
        ControlResponse::Orders(_) => {}
    }
}

fn refused(reason: &str) -> ControlResponse {
    ControlResponse::Refused {
        reason: reason.to_owned(),
    }
}

fn handle_join(coord: &Coordinator, node: NodeId, join: &JoinRequest) -> ControlResponse {
    match coord.join(node, join) {
        Ok(place) => ControlResponse::Joined {
            region: place.region,
            site: place.site,
        },
        Err(e) => refused(&e.to_string()),
    }
}

fn handle_heartbeat(coord: &Arc<Coordinator>, node: NodeId, beat: &Heartbeat) -> ControlResponse {
    match coord.heartbeat(node, beat) {
        Ok(orders) => ControlResponse::Orders(orders),
        Err(e) => refused(&e.to_string()),
    }
}
