//! The admin API's operations but publishing ([`super::publish`]): reading the
//! state as the API shows it, and every change an operator makes to nodes,
//! bundles, names and join tokens. Each takes the lock once, checks before it
//! changes anything, and saves before it answers.

use std::collections::BTreeSet;

use cartable_proto::api::{
    BundleView, CreateToken, CreatedToken, NameChange, NameView, NodeView, PlanChange, PlanPreview,
    Status, TokenView,
};
use cartable_proto::join::JoinToken;
use cartable_proto::{BundleId, BundlePath, NodeId};
use ring::rand::SecureRandom;

use super::{Coordinator, OpError};
use crate::contact::{self, ApproveError};
use crate::state::{Cluster, TokenRecord, secret_hash, unix_now};
use crate::{trust, views};

impl Coordinator {
    /// Whether `token` is the admin token.
    pub fn is_admin(&self, token: &str) -> bool {
        // Hashes are compared, not tokens: timing reveals only how much of a hash
        // of the attacker's own guess matches, which says nothing about the token.
        let given = secret_hash(token.trim().as_bytes());
        self.lock().admin_hash.as_deref() == Some(given.as_str())
    }

    /// What is wrong with the cluster, and the repair queue.
    pub fn status(&self) -> Status {
        views::status(&self.lock(), &self.policy)
    }

    /// Every member.
    pub fn nodes(&self) -> Vec<NodeView> {
        views::nodes(&self.lock(), &self.policy)
    }

    /// One member.
    pub fn node(&self, id: &NodeId) -> Result<NodeView, OpError> {
        views::node(&self.lock(), &self.policy, id)
    }

    /// Every bundle.
    pub fn bundles(&self) -> Vec<BundleView> {
        views::bundles(&self.lock(), &self.policy)
    }

    /// One bundle, with its replicas.
    pub fn bundle(&self, id: &BundleId) -> Result<BundleView, OpError> {
        views::bundle(&self.lock(), &self.policy, id, true)
    }

    /// Every name and the bundle it points to.
    pub fn names(&self) -> Vec<NameView> {
        views::names(&self.lock())
    }

    /// The bundles a name pointed to, oldest first.
    pub fn name_history(&self, name: &str) -> Result<Vec<NameChange>, OpError> {
        let c = self.lock();
        let record = c.names.get(name).ok_or(OpError::NoSuchName)?;
        Ok(record.history.clone())
    }

    /// Every join token.
    pub fn tokens(&self) -> Vec<TokenView> {
        views::tokens(&self.lock())
    }

    /// What a change of members would move; changes nothing. The plan runs
    /// with the state's lock released, as the lifecycle's do.
    pub fn plan(&self, change: &PlanChange) -> PlanPreview {
        let inputs = views::preview_inputs(&mut self.lock(), &self.policy, change);
        inputs.preview(&self.policy)
    }

    /// Marks a node draining: its copies are placed elsewhere.
    pub fn drain(&self, id: &NodeId) -> Result<NodeView, OpError> {
        let view = self.commit(|c| {
            let mut record = c.nodes.get(id).cloned().ok_or(OpError::NoSuchNode)?;
            record.draining = true;
            c.save_node(record)?;
            views::node(c, &self.policy, id)
        })?;
        tracing::info!(node = %id, "draining");
        Ok(view)
    }

    /// Forgets a node's failed checks and clears its unreliable mark.
    pub fn restore_trust(&self, id: &NodeId) -> Result<NodeView, OpError> {
        self.commit(|c| {
            if !trust::clear(c, id)? {
                return Err(OpError::NoSuchNode);
            }
            views::node(c, &self.policy, id)
        })
    }

    /// Sets the most a node may offer (the operator's bound, first set by its
    /// join token): a lower bound applies at once, and a higher one from the
    /// node's next heartbeat, up to what the node itself declares.
    pub fn set_capacity(&self, id: &NodeId, limit: u64) -> Result<NodeView, OpError> {
        let view = self.commit(|c| {
            let mut record = c.nodes.get(id).cloned().ok_or(OpError::NoSuchNode)?;
            record.capacity_limit = Some(limit);
            record.capacity = record.capacity.min(limit);
            c.save_node(record)?;
            views::node(c, &self.policy, id)
        })?;
        tracing::info!(node = %id, capacity = limit, "capacity bound set");
        Ok(view)
    }

    /// Makes the address a node reports the one browsers and peers use.
    pub fn approve_contact(&self, id: &NodeId) -> Result<NodeView, OpError> {
        self.commit(|c| {
            match contact::approve(c, id) {
                Ok(_) => {}
                Err(ApproveError::NoSuchNode) => return Err(OpError::NoSuchNode),
                Err(e @ ApproveError::NothingProposed) => {
                    return Err(OpError::Conflict(e.to_string()));
                }
                Err(ApproveError::Store(e)) => return Err(OpError::Save(e)),
            }
            views::node(c, &self.policy, id)
        })
    }

    /// Removes a member: refused while it holds complete copies, unless it
    /// has been down past the repair delay or `force` says so.
    pub fn remove_node(&self, id: &NodeId, force: bool) -> Result<NodeView, OpError> {
        let view = self.commit(|c| {
            let view = views::node(c, &self.policy, id)?;
            let gone_for_good = c
                .down_since
                .get(id)
                .is_some_and(|since| since.elapsed() >= self.policy.repair_delay);
            if view.complete > 0 && !gone_for_good && !force {
                return Err(OpError::Conflict(format!(
                    "the node still holds {} complete copies: drain it first, or remove it with \
                     --force to forget them at once",
                    view.complete
                )));
            }
            c.remove_node(id)?;
            Ok(view)
        })?;
        // A removed key is a stranger now: its open connections go with its membership.
        self.endpoint.close_peer(id);
        self.prober.forget(id);
        tracing::info!(node = %id, "removed");
        Ok(view)
    }

    /// Retires a bundle no name points to.
    pub fn unpublish(&self, id: &BundleId) -> Result<BundleView, OpError> {
        let view = self.commit(|c| {
            let view = views::bundle(c, &self.policy, id, true)?;
            let pointing: Vec<String> = c
                .names
                .iter()
                .filter(|(_, r)| r.current() == Some(*id))
                .map(|(n, _)| n.clone())
                .collect();
            if !pointing.is_empty() {
                return Err(OpError::Conflict(format!(
                    "names point to this bundle: {}; point them elsewhere first",
                    pointing.join(", ")
                )));
            }
            c.retire_bundle(*id)?;
            Ok(view)
        })?;
        tracing::info!(bundle = %id, "bundle unpublished");
        Ok(view)
    }

    /// Sets how many copies a bundle keeps.
    pub fn set_replicas(&self, id: &BundleId, replicas: u8) -> Result<BundleView, OpError> {
        self.commit(|c| {
            let mut record = c.bundles.get(id).cloned().ok_or(OpError::NoSuchBundle)?;
            check_replicas(c, replicas)?;
            record.replicas = replicas;
            c.save_bundle(*id, record)?;
            views::bundle(c, &self.policy, id, false)
        })
    }

    /// Points `name` at `bundle` now.
    pub fn set_name(&self, name: &str, bundle: BundleId) -> Result<NameView, OpError> {
        check_name(name)?;
        self.commit(|c| {
            if !c.bundles.contains_key(&bundle) {
                return Err(OpError::NoSuchBundle);
            }
            Ok(c.set_name(name, bundle)?)
        })?;
        Ok(NameView {
            name: name.to_owned(),
            bundle,
        })
    }

    /// Makes a one-time join token for a place.
    pub fn create_token(&self, create: CreateToken) -> Result<CreatedToken, OpError> {
        for (what, value) in [("region", &create.region), ("site", &create.site)] {
            if value.is_empty()
                || value.len() > 64
                || value.chars().any(|ch| ch.is_control() || ch == '/')
            {
                return Err(OpError::Invalid(format!(
                    "{what} must be 1 to 64 characters, no '/'"
                )));
            }
        }
        if create.expires_secs == 0 {
            return Err(OpError::Invalid("expires_secs must be positive".into()));
        }
        let mut secret = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| OpError::NoRandomness)?;
        let token = JoinToken {
            secret,
            coordinator: self.identity.id(),
            quic: self.quic_addr,
        };
        let hash = secret_hash(token.secret_text().as_bytes());
        let record = TokenRecord {
            region: create.region,
            site: create.site,
            expires: unix_now().saturating_add(create.expires_secs),
            used_by: None,
            capacity: create.capacity,
        };
        self.commit(|c| c.save_token(hash.clone(), record.clone()))?;
        Ok(CreatedToken {
            token: token.to_string(),
            view: views::token(&hash, &record),
        })
    }

    /// Revokes the one token whose id starts with `id` (8 hex digits at least).
    pub fn revoke_token(&self, id: &str) -> Result<TokenView, OpError> {
        self.commit(|c| {
            let matching: BTreeSet<String> = c
                .tokens
                .keys()
                .filter(|h| h.starts_with(id) && id.len() >= 8)
                .cloned()
                .collect();
            let [hash] = matching.iter().collect::<Vec<_>>()[..] else {
                return Err(OpError::NoSuchToken);
            };
            let view = views::token(hash, &c.tokens[hash]);
            c.delete_token(hash)?;
            Ok(view)
        })
    }
}

/// A bundle's copies: at least one, at most one per site.
pub(super) fn check_replicas(c: &Cluster, replicas: u8) -> Result<(), OpError> {
    let sites = c.site_count();
    if replicas == 0 {
        return Err(OpError::Invalid("replicas must be at least 1".into()));
    }
    if usize::from(replicas) > sites {
        return Err(OpError::Invalid(format!(
            "{replicas} replicas wanted but the cluster has {sites} sites"
        )));
    }
    Ok(())
}

/// A name: a relative path of URL-safe characters.
pub(super) fn check_name(name: &str) -> Result<(), OpError> {
    // URL-safe characters only: a name is matched against request paths as sent.
    let safe = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~/".contains(&b));
    if name.len() > 256 || !safe || BundlePath::new(name.to_owned()).is_err() {
        return Err(OpError::Invalid(
            "a name is a relative path such as maths/6e/fractions: letters, digits, - _ . ~ and /, \
             no empty, . or .. part, at most 256 bytes"
                .into(),
        ));
    }
    Ok(())
}
