//! Where a member answers, fixed at join: the coordinator sends browsers to a
//! node's HTTPS origin and every node dials its QUIC address, so a member must
//! not be able to move either by saying so. A heartbeat naming another origin
//! or address is recorded as a proposal and changes nothing until an admin
//! approves it (`cartable node approve-contact`). The certificate fingerprint
//! follows heartbeats freely: the heartbeat is signed by the node's key (what
//! is pinned), and a certificate renewal must not need an operator.

use cartable_proto::NodeId;
use cartable_proto::control::Contact;

use crate::state::Cluster;

/// A node's contact must be usable as is: the HTTPS URL goes into browsers'
/// `Location` headers, the fingerprint into the CLI's pin.
pub fn check(contact: &Contact) -> Result<(), String> {
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

fn same_place(a: &Contact, b: &Contact) -> bool {
    a.https_url == b.https_url && a.quic == b.quic
}

/// Records the contact a member reported: a new fingerprint is taken, a new
/// origin or address is only proposed.
pub fn reported(c: &mut Cluster, node: NodeId, contact: &Contact) -> anyhow::Result<()> {
    // Every heartbeat passes here: the record is cloned only to change it.
    let Some(known) = c.nodes.get(&node) else {
        return Ok(());
    };
    let proposed = (!same_place(&known.contact, contact)).then(|| contact.clone());
    let fingerprint = &contact.https_cert_sha256;
    if known.proposed_contact == proposed && known.contact.https_cert_sha256 == *fingerprint {
        return Ok(());
    }
    if proposed.is_some() && known.proposed_contact != proposed {
        tracing::warn!(
            node = %node,
            recorded = known.contact.https_url,
            reported = contact.https_url,
            "a node reports a new address: browsers and peers keep using the recorded one until \
             an admin approves it (cartable node approve-contact)"
        );
    }
    let mut record = known.clone();
    record.contact.https_cert_sha256.clone_from(fingerprint);
    record.proposed_contact = proposed;
    c.save_node(record)
}

/// Makes the node's proposed contact its contact.
pub fn approve(c: &mut Cluster, node: &NodeId) -> Result<Contact, ApproveError> {
    let mut record = c.nodes.get(node).cloned().ok_or(ApproveError::NoSuchNode)?;
    let contact = record
        .proposed_contact
        .take()
        .ok_or(ApproveError::NothingProposed)?;
    record.contact = contact.clone();
    c.save_node(record).map_err(ApproveError::Store)?;
    tracing::info!(node = %node, https = contact.https_url, quic = %contact.quic, "new contact approved");
    Ok(contact)
}

/// Why an approval was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    /// The node is not a member.
    #[error("no such node")]
    NoSuchNode,
    /// The node reports the contact it has.
    #[error("the node proposes no new contact: it reports the one recorded")]
    NothingProposed,
    /// The state could not be written.
    #[error("{0:#}")]
    Store(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::state::{MemoryKv, NodeRecord};

    fn contact(url: &str, port: u16, fingerprint: &str) -> Contact {
        Contact {
            https_url: url.into(),
            quic: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            https_cert_sha256: fingerprint.repeat(32),
        }
    }

    /// A cluster with one member, joined at https://ecole.example.
    fn joined() -> anyhow::Result<(Cluster, NodeId, Contact)> {
        let mut c = Cluster::load(Box::new(MemoryKv::default()), Instant::now())?;
        let id = NodeId::from_bytes([7; 32]);
        let at = contact("https://ecole.example", 4433, "aa");
        c.save_node(NodeRecord::joined(id, "r", "s", 1 << 30, at.clone()))?;
        Ok((c, id, at))
    }

    #[test]
    fn a_node_contact_must_be_a_bare_https_origin_with_a_fingerprint() {
        let good = contact("https://ecole-12.example:8443", 1, "ab");
        assert_eq!(check(&good), Ok(()));
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
            assert!(check(&bad).is_err(), "{url}");
        }
        assert!(check(&contact("https://x", 1, "AB")).is_err(), "uppercase");
    }

    #[test]
    fn a_new_origin_waits_for_approval_and_a_new_certificate_does_not() -> anyhow::Result<()> {
        let (mut c, id, _) = joined()?;
        c.needs_plan = false;

        let renewed = contact("https://ecole.example", 4433, "bb");
        reported(&mut c, id, &renewed)?;
        assert_eq!(c.nodes[&id].contact, renewed, "a renewal is taken at once");
        assert_eq!(c.nodes[&id].proposed_contact, None);

        let moved = contact("https://evil.example", 4433, "bb");
        reported(&mut c, id, &moved)?;
        assert_eq!(
            c.nodes[&id].contact, renewed,
            "browsers still go to the origin of the join"
        );
        assert_eq!(c.nodes[&id].proposed_contact, Some(moved.clone()));
        let elsewhere = contact("https://ecole.example", 9, "bb");
        reported(&mut c, id, &elsewhere)?;
        assert_eq!(c.nodes[&id].contact.quic, renewed.quic, "peers too");
        assert!(!c.needs_plan, "a contact never costs a plan");

        reported(&mut c, id, &moved)?;
        assert_eq!(approve(&mut c, &id)?, moved);
        assert_eq!(c.nodes[&id].contact, moved);
        assert!(matches!(
            approve(&mut c, &id),
            Err(ApproveError::NothingProposed)
        ));
        reported(&mut c, id, &moved)?;
        assert_eq!(c.nodes[&id].proposed_contact, None);
        Ok(())
    }

    #[test]
    fn going_back_to_the_recorded_contact_withdraws_the_proposal() -> anyhow::Result<()> {
        let (mut c, id, joined) = joined()?;
        reported(&mut c, id, &contact("https://ailleurs.example", 4433, "aa"))?;
        reported(&mut c, id, &joined)?;
        assert_eq!(c.nodes[&id].proposed_contact, None);
        assert!(matches!(
            approve(&mut c, &NodeId::from_bytes([8; 32])),
            Err(ApproveError::NoSuchNode)
        ));
        Ok(())
    }
}
