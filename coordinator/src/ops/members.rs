//! A node's membership: its join with a one-time token, and its heartbeats,
//! which update what the coordinator knows of it and answer its orders.
//! Each refusal's text is what the node is told, and changes nothing.

use std::sync::Arc;
use std::time::Instant;

use cartable_proto::NodeId;
use cartable_proto::control::{Heartbeat, JoinRequest, Orders};

use super::{Check, Coordinator};
use crate::lifecycle;
use crate::state::{Cluster, Liveness, NodeRecord, TokenRecord, secret_hash, unix_now};

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No token has this secret.
    #[error("unknown join token (never made, or revoked)")]
    UnknownToken,
    /// The token was this node's, and the node was removed since.
    #[error("this node was removed from the cluster: ask for a new join token")]
    Removed,
    /// Another node joined with the token.
    #[error("join token already used by another node")]
    TokenUsed,
    /// The addresses the node gives are not ones browsers and peers could use.
    #[error("{0}")]
    BadContact(String),
    /// The token is past its date.
    #[error("join token expired")]
    Expired,
    /// The key is a member already.
    #[error("this node is already a member")]
    AlreadyMember,
    /// The join could not be saved; the cause is logged.
    #[error("the coordinator could not record the join; try again")]
    Save(#[source] anyhow::Error),
}

impl From<anyhow::Error> for JoinError {
    fn from(e: anyhow::Error) -> Self {
        Self::Save(e)
    }
}

/// Why a heartbeat was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The addresses the node gives are not ones browsers and peers could use.
    #[error("{0}")]
    BadContact(String),
    /// The key has not joined (or was removed).
    #[error("unknown node: join with a token first")]
    UnknownNode,
    /// The heartbeat could not be saved; the cause is logged.
    #[error("the coordinator could not record the heartbeat")]
    Save(#[source] anyhow::Error),
}

/// Where a joined node stands: the place its token named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// Its region.
    pub region: String,
    /// Its site.
    pub site: String,
}

impl Coordinator {
    /// Makes `node` a member with the token `join` carries. A node whose
    /// first answer was lost asks again and is answered the same.
    pub fn join(&self, node: NodeId, join: &JoinRequest) -> Result<Place, JoinError> {
        // A node asking again is answered once its first join is synced too:
        // `commit` syncs after every change that succeeds, made now or before.
        let (place, joined) = self
            .commit(|c| record_join(c, node, join))
            .inspect_err(|e| {
                if let JoinError::Save(e) = e {
                    tracing::error!(error = format!("{e:#}"), "could not record a join");
                }
            })?;
        if joined {
            // Counted up only once its membership is on disk.
            self.lock()
                .live
                .insert(node, Liveness::heard(Instant::now()));
            tracing::info!(node = %node, region = place.region, site = place.site, "node joined");
        }
        Ok(place)
    }

    /// Records a member's heartbeat and answers its orders; the copies it
    /// claims are checked in the background.
    pub fn heartbeat(
        self: &Arc<Self>,
        node: NodeId,
        beat: &Heartbeat,
    ) -> Result<Orders, HeartbeatError> {
        self.metrics.heartbeats.inc();
        crate::contact::check(&beat.contact).map_err(HeartbeatError::BadContact)?;
        let now = Instant::now();
        let (orders, claims) = {
            let mut c = self.lock();
            if !c.nodes.contains_key(&node) {
                return Err(HeartbeatError::UnknownNode);
            }
            let claims = lifecycle::apply_heartbeat(&mut c, node, beat, &self.policy, now)
                .map_err(|e| {
                    tracing::error!(error = format!("{e:#}"), "could not record a heartbeat");
                    HeartbeatError::Save(e)
                })?;
            (lifecycle::orders_for(&c, &node, &self.policy, now), claims)
        };
        for bundle in claims {
            self.check(node, bundle, Check::Claim);
        }
        Ok(orders)
    }
}

/// Records `node` as a member with the token `join` carries; `true` if it
/// joined now, `false` if it had joined with it before (its answer was lost).
fn record_join(
    c: &mut Cluster,
    node: NodeId,
    join: &JoinRequest,
) -> Result<(Place, bool), JoinError> {
    let hash = secret_hash(join.secret.as_bytes());
    let token = c
        .tokens
        .get(&hash)
        .cloned()
        .ok_or(JoinError::UnknownToken)?;
    let place = Place {
        region: token.region.clone(),
        site: token.site.clone(),
    };
    match token.used_by {
        // The node's first answer was lost: it asks again.
        Some(user) if user == node && c.nodes.contains_key(&node) => return Ok((place, false)),
        Some(user) if user == node => return Err(JoinError::Removed),
        Some(_) => return Err(JoinError::TokenUsed),
        None => {}
    }
    crate::contact::check(&join.contact).map_err(JoinError::BadContact)?;
    if token.expires <= unix_now() {
        return Err(JoinError::Expired);
    }
    if c.nodes.contains_key(&node) {
        return Err(JoinError::AlreadyMember);
    }
    let record = NodeRecord {
        // The operator's bound, not the node's word, limits what it is given.
        capacity: token
            .capacity
            .map_or(join.capacity, |cap| join.capacity.min(cap)),
        capacity_limit: token.capacity,
        ..NodeRecord::joined(
            node,
            &token.region,
            &token.site,
            join.capacity,
            join.contact.clone(),
        )
    };
    c.save_node(record).and_then(|()| {
        c.save_token(
            hash,
            TokenRecord {
                used_by: Some(node),
                ..token.clone()
            },
        )
    })?;
    Ok((place, true))
}
