//! Checking a copy a node claims before counting it: the coordinator asks the
//! node, over the node ↔ node protocol, for the bundle's manifest (checked
//! against the id) and for one random chunk group of one random file, checked
//! against the file's hash. A node cannot answer without holding those bytes.

use cartable_node::peer::PeerAddr;
use cartable_node::peer::endpoint::PeerEndpoint;
use cartable_node::peer::exchange::{PeerFailure, ask_manifest, verify_groups};
use cartable_node::store::verify::GROUP_BYTES;
use cartable_proto::BundleId;
use cartable_proto::wire::GroupRanges;
use ring::rand::SecureRandom;

/// Why a claimed copy was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The node could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The node does not hold what it claimed, or sent bytes that failed verification.
    #[error("claim refuted: {0}")]
    Refuted(String),
}

fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0;
    }
    u64::from_le_bytes(bytes) % n.max(1)
}

fn failure(e: PeerFailure) -> CheckError {
    match e {
        PeerFailure::Gone(why) => CheckError::Unreachable(why),
        PeerFailure::Busy(_) => CheckError::Unreachable("busy".into()),
        PeerFailure::Missing => CheckError::Refuted("it does not hold the bundle".into()),
        PeerFailure::Lied(why) => CheckError::Refuted(why),
    }
}

/// Checks that `node` holds `bundle`; returns the bytes verified.
pub async fn check_copy(
    endpoint: &PeerEndpoint,
    node: PeerAddr,
    bundle: BundleId,
) -> Result<u64, CheckError> {
    let conn = endpoint
        .connect(node)
        .await
        .map_err(|e| CheckError::Unreachable(format!("{e:#}")))?;
    let manifest = ask_manifest(&conn, bundle).await.map_err(failure)?;
    let files: Vec<_> = manifest.entries().iter().filter(|e| e.size > 0).collect();
    if files.is_empty() {
        return Ok(0);
    }
    let file = files[random_below(files.len() as u64) as usize];
    let group = random_below(file.size.div_ceil(GROUP_BYTES));
    let one_group = std::iter::once(group..group + 1).collect();
    let groups = GroupRanges::new(one_group)
        .ok_or_else(|| CheckError::Refuted("no range to ask for".into()))?;
    let verified = verify_groups(&conn, file.hash, file.size, groups)
        .await
        .map_err(failure)?;
    conn.close(0u32.into(), b"checked");
    Ok(verified)
}
