//! Ids as operators type them: the full 64 hex digits, or a prefix copied from a
//! table (which shows 12), resolved against the coordinator's listing. A prefix
//! that fits several ids is refused rather than guessed.

use std::fmt::Display;
use std::str::FromStr;

use cartable_proto::{BundleId, NodeId};

use super::client::ApiClient;
use cartable_proto::api::{BundleView, NodeView};

/// Shortest prefix accepted: shorter ones would often fit several ids.
const MIN_PREFIX: usize = 4;

/// The node named by `text`; asks for the node list only for a prefix.
pub async fn node(api: &mut ApiClient, text: &str) -> anyhow::Result<NodeId> {
    if let Some(id) = full(text)? {
        return Ok(id);
    }
    let nodes: Vec<NodeView> = api.get("/api/nodes").await?;
    unique(nodes.iter().map(|n| n.id), text, "node")
}

/// The bundle named by `text`; asks for the bundle list only for a prefix.
pub async fn bundle(api: &mut ApiClient, text: &str) -> anyhow::Result<BundleId> {
    if let Some(id) = full(text)? {
        return Ok(id);
    }
    let bundles: Vec<BundleView> = api.get("/api/bundles").await?;
    unique(bundles.iter().map(|b| b.id), text, "bundle")
}

/// The id if `text` is a whole one, `None` if it is a plausible prefix.
fn full<T: FromStr>(text: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    if text.len() == 64 {
        let id = text.parse().map_err(|e| anyhow::anyhow!("{text:?}: {e}"))?;
        return Ok(Some(id));
    }
    anyhow::ensure!(
        text.len() >= MIN_PREFIX && text.len() < 64 && text.bytes().all(|b| b.is_ascii_hexdigit()),
        "{text:?} is not an id: give 64 hex digits or at least the first {MIN_PREFIX}"
    );
    Ok(None)
}

/// The one candidate whose hex form starts with `prefix`.
fn unique<T: Display>(
    candidates: impl Iterator<Item = T>,
    prefix: &str,
    kind: &str,
) -> anyhow::Result<T> {
    let prefix = prefix.to_ascii_lowercase();
    let mut found = candidates.filter(|c| c.to_string().starts_with(&prefix));
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => anyhow::bail!("no {kind} id starts with {prefix}"),
        (Some(_), Some(_)) => {
            anyhow::bail!("several {kind} ids start with {prefix}: give more digits")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartable_proto::BlobHash;

    #[test]
    fn prefixes_resolve_to_one_id_or_fail() -> anyhow::Result<()> {
        let ids: Vec<BundleId> = (0u8..3)
            .map(|i| BundleId::from_hash(BlobHash::of(&[i])))
            .collect();
        let text = ids[1].to_hex();
        assert_eq!(
            unique(ids.iter().copied(), &text[..12].to_uppercase(), "bundle")?,
            ids[1]
        );
        assert!(
            unique(ids.iter().copied(), "", "bundle").is_err(),
            "fits all"
        );
        let err = unique(ids.iter().copied(), "zzzz", "bundle").unwrap_err();
        assert!(err.to_string().starts_with("no bundle id"), "{err}");
        Ok(())
    }

    #[test]
    fn whole_ids_need_no_listing_and_junk_is_refused() -> anyhow::Result<()> {
        let id = BundleId::from_hash(BlobHash::of(b"x"));
        assert_eq!(full::<BundleId>(&id.to_hex())?, Some(id));
        assert_eq!(full::<BundleId>("abcd")?, None);
        for bad in ["abc", "maths/6e", &"g".repeat(64), &"a".repeat(65)] {
            assert!(full::<BundleId>(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
