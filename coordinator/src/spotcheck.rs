//! Checking a copy a node claims: the coordinator asks the node, over the node
//! ↔ node protocol, for the bundle's manifest (checked against the id) and for
//! random chunk groups drawn across the bundle's files, each checked against
//! its file's hash. A node cannot answer without those bytes at hand.
//!
//! One check cannot prove possession: a member could fetch the few groups asked
//! from an honest peer and relay them. So the checks are many, random and
//! repeated ([`crate::trust`] says when each kind runs): a relaying liar pays
//! for every check with bytes fetched elsewhere, a check under load
//! ([`Sample::UNDER_LOAD`]) asks for a megabyte at once within a deadline, and
//! a liar fails the first time no honest copy answers it in time.

use std::collections::BTreeMap;
use std::time::Duration;

use cartable_net::peer::PeerAddr;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_net::peer::exchange::{PeerFailure, ask_manifest, verify_groups};
use cartable_proto::wire::GROUP_BYTES;
use cartable_proto::wire::GroupRanges;
use cartable_proto::{BundleId, ManifestEntry};
use ring::rand::SecureRandom;

/// How many random chunk groups a check asks for, and how long it may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Groups drawn, each from a file picked at random (by size: every byte
    /// is as likely to be asked as any other).
    pub groups: u64,
    /// The whole check, manifest included, must end within this.
    pub deadline: Duration,
}

impl Sample {
    /// The check of a new claim, and the background re-check of a counted copy:
    /// 8 groups (128 KiB at most).
    pub const CLAIM: Self = Self {
        groups: 8,
        deadline: Duration::from_secs(10),
    };
    /// The check that lets a complete copy count for releasing another: 64
    /// groups (1 MiB at most) asked at once.
    pub const UNDER_LOAD: Self = Self {
        groups: 64,
        deadline: Duration::from_secs(10),
    };
}

/// Why a claimed copy was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The node could not be reached, was busy, or did not answer in time.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The node does not hold what it claimed, or sent bytes that failed verification.
    #[error("claim refuted: {0}")]
    Refuted(String),
}

/// A random number below `n` (0 without system randomness).
pub fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0;
    }
    u64::from_le_bytes(bytes) % n.max(1)
}

fn failure(e: PeerFailure) -> CheckError {
    match e {
        PeerFailure::Gone(why) | PeerFailure::Local(why) => CheckError::Unreachable(why),
        PeerFailure::Busy(_) => CheckError::Unreachable("busy".into()),
        PeerFailure::Missing => CheckError::Refuted("it does not hold the bundle".into()),
        PeerFailure::Lied(why) => CheckError::Refuted(why),
    }
}

/// `count` random groups of `files`, by file index: a random byte of the
/// bundle is drawn for each, so that large files are checked in proportion.
fn draw(files: &[&ManifestEntry], count: u64) -> BTreeMap<usize, Vec<std::ops::Range<u64>>> {
    let total: u64 = files.iter().map(|f| f.size).sum();
    let mut drawn: BTreeMap<usize, Vec<_>> = BTreeMap::new();
    for _ in 0..count {
        let mut at = random_below(total);
        for (i, f) in files.iter().enumerate() {
            if at < f.size {
                let group = at / GROUP_BYTES;
                drawn.entry(i).or_default().push(group..group + 1);
                break;
            }
            at -= f.size;
        }
    }
    drawn
}

/// Checks that `node` holds `bundle` with a sample of `sample.groups` groups;
/// returns the bytes verified.
pub async fn check_copy(
    endpoint: &PeerEndpoint,
    node: PeerAddr,
    bundle: BundleId,
    sample: Sample,
) -> Result<u64, CheckError> {
    tokio::time::timeout(
        sample.deadline,
        check_within(endpoint, node, bundle, sample),
    )
    .await
    .unwrap_or_else(|_| {
        Err(CheckError::Unreachable(format!(
            "no answer within {:?}",
            sample.deadline
        )))
    })
}

async fn check_within(
    endpoint: &PeerEndpoint,
    node: PeerAddr,
    bundle: BundleId,
    sample: Sample,
) -> Result<u64, CheckError> {
    let conn = endpoint
        .connect(node)
        .await
        .map_err(|e| CheckError::Unreachable(format!("{e:#}")))?;
    let manifest = ask_manifest(&conn, bundle).await.map_err(failure)?;
    let files: Vec<_> = manifest.entries().iter().filter(|e| e.size > 0).collect();
    let mut verified = 0;
    for (i, groups) in draw(&files, sample.groups) {
        let file = files[i];
        let groups = GroupRanges::new(groups)
            .ok_or_else(|| CheckError::Refuted("no range to ask for".into()))?;
        verified += verify_groups(&conn, file.hash, file.size, groups)
            .await
            .map_err(failure)?;
    }
    conn.close(0u32.into(), b"checked");
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use cartable_proto::{BlobHash, BundlePath};

    use super::*;

    fn entry(path: &str, size: u64) -> ManifestEntry {
        ManifestEntry {
            path: BundlePath::new(path).expect("a valid path"),
            hash: BlobHash::of(path.as_bytes()),
            size,
            content_type: "text/html".into(),
        }
    }

    #[test]
    fn a_sample_spreads_over_the_files_in_proportion_to_their_size() {
        let (small, large) = (
            entry("a.html", GROUP_BYTES),
            entry("b.mp4", 99 * GROUP_BYTES),
        );
        let files = [&small, &large];
        let drawn = draw(&files, 2000);
        let asked = |i: usize| drawn.get(&i).map_or(0, Vec::len);
        assert_eq!(asked(0) + asked(1), 2000, "every group drawn");
        assert!(
            asked(0) < 100,
            "the small file is 1% of the bytes: {}",
            asked(0)
        );
        let groups: std::collections::BTreeSet<u64> = drawn[&1].iter().map(|g| g.start).collect();
        assert!(groups.len() > 50, "groups all over the large file");
        assert!(groups.iter().all(|g| *g < 99));
        assert!(draw(&[], 8).is_empty(), "an empty bundle asks for nothing");
    }
}
