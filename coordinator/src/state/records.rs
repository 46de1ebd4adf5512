//! The stored schema: the shape of every row the coordinator keeps, versioned
//! on its own. The admin API's and the control protocol's types may change
//! shape freely; what is on disk changes only with [`SCHEMA`], and a folder is
//! migrated forward when it opens.
//!
//! # Schemas
//!
//! - **0**: the rows of the first builds, with no schema row. Values are JSON;
//!   fields added over time (`failure_reports`, `proposed_contact`,
//!   `capacity_limit`, `trust` on nodes; `capacity` on tokens; `pending_name`,
//!   `uploads` on bundles) may be missing from rows older than the field.
//! - **1**: the same tables, keys and JSON, with every field present and no
//!   field unknown; the version is the `schema` row of the `meta` table, a JSON
//!   string like every `meta` value (`names_version`, `admin_hash`).
//!
//! Tables (keys; values):
//!
//! | table | key | value |
//! |---|---|---|
//! | `nodes` | node id, 32 bytes | [`NodeRow`] |
//! | `tokens` | hex BLAKE3 of the secret | [`TokenRow`] |
//! | `bundles` | bundle id, 32 bytes | [`BundleRow`] |
//! | `replicas` | bundle id ‖ node id | [`ReplicaRow`] |
//! | `names` | the name, UTF-8 | [`NameRow`] |
//! | `retired`, `proven` | bundle id / bundle id ‖ node id | `true` |
//! | `meta` | `schema`, `names_version`, `admin_hash` | a JSON string |
//!
//! Ids are stored in their lowercase hex text form, the one every part of
//! Cartable shows (`DESIGN.md`, "Text form of ids").
//!
//! # Migration
//!
//! [`open`] reads the schema row. None: schema 0, migrated in place: every row
//! rewritten with its missing fields given their defaults, flushed, then the
//! schema row written and flushed. Each rewrite gives a schema-1 row back
//! unchanged, so a crash mid-way leaves a folder that opens again (still
//! without a schema row) and migrates again to the same rows. A schema newer
//! than [`SCHEMA`] is refused, naming both: downgrades are not supported.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use cartable_proto::api::{NameChange, ReplicaState};
use cartable_proto::control::Contact;
use cartable_proto::{BundleId, NodeId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{BUNDLES, Kv, META, NODES, TOKENS};
use super::{BundleRecord, NameRecord, NodeRecord, TokenRecord, Trust};

/// The schema this build reads and writes.
pub const SCHEMA: u32 = 1;

/// The `meta` row holding the schema version.
const SCHEMA_KEY: &[u8] = b"schema";

/// Why a data folder was not opened.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Written by a newer build: its rows may mean what this build cannot know.
    #[error(
        "the data folder has state schema {found}, newer than schema {known} this coordinator \
         knows: run a coordinator that knows schema {found} (downgrades are not supported)"
    )]
    Newer {
        /// The folder's schema.
        found: u32,
        /// This build's.
        known: u32,
    },
    /// The schema row is not a version number.
    #[error("the data folder's state schema row is unreadable: {0:?}")]
    Unreadable(String),
}

/// Brings the tables in `kv` to [`SCHEMA`], migrating an older folder (see the
/// module doc); an empty store is stamped with [`SCHEMA`].
pub fn open(kv: &dyn Kv) -> anyhow::Result<()> {
    let found = match kv.scan(META)?.into_iter().find(|(k, _)| k == SCHEMA_KEY) {
        None => 0,
        Some((_, v)) => serde_json::from_slice::<String>(&v)
            .ok()
            .and_then(|text| text.parse::<u32>().ok())
            .ok_or_else(|| SchemaError::Unreadable(String::from_utf8_lossy(&v).into_owned()))?,
    };
    if found > SCHEMA {
        return Err(SchemaError::Newer {
            found,
            known: SCHEMA,
        }
        .into());
    }
    if found == SCHEMA {
        return Ok(());
    }
    for (table, fill) in [
        (NODES, NODE_DEFAULTS),
        (TOKENS, TOKEN_DEFAULTS),
        (BUNDLES, BUNDLE_DEFAULTS),
    ] {
        fill_missing_fields(kv, table, fill)?;
    }
    kv.flush()?;
    kv.put(META, SCHEMA_KEY, &serde_json::to_vec(&SCHEMA.to_string())?)?;
    kv.flush()?;
    tracing::info!(from = found, to = SCHEMA, "state schema migrated");
    Ok(())
}

/// A schema-0 field that older rows may lack, and its value for them.
type Fill = &'static [(&'static str, fn() -> Value)];

const NODE_DEFAULTS: Fill = &[
    ("failure_reports", || json!({})),
    ("proposed_contact", || Value::Null),
    ("capacity_limit", || Value::Null),
    ("trust", || json!({"failed_checks": 0, "unreliable": false})),
];
const TOKEN_DEFAULTS: Fill = &[("capacity", || Value::Null)];
const BUNDLE_DEFAULTS: Fill = &[("pending_name", || Value::Null), ("uploads", || json!([]))];

/// Rewrites each row of `table` lacking a field of `fill` with it, after
/// checking the result reads as a schema-1 row.
fn fill_missing_fields(kv: &dyn Kv, table: &str, fill: Fill) -> anyhow::Result<()> {
    for (key, bytes) in kv.scan(table)? {
        let mut row: Value = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("state table {table}: {e}"))?;
        let Some(fields) = row.as_object_mut() else {
            anyhow::bail!("state table {table}: a row is not a JSON object");
        };
        let missing: Vec<_> = fill
            .iter()
            .filter(|(f, _)| !fields.contains_key(*f))
            .collect();
        if missing.is_empty() {
            continue;
        }
        for (field, value) in missing {
            fields.insert((*field).to_owned(), value());
        }
        let bytes = serde_json::to_vec(&row)?;
        match table {
            NODES => decode::<NodeRow>(table, &bytes).map(drop)?,
            TOKENS => decode::<TokenRow>(table, &bytes).map(drop)?,
            _ => decode::<BundleRow>(table, &bytes).map(drop)?,
        }
        kv.put(table, &key, &bytes)?;
    }
    Ok(())
}

/// One row's value, read as its schema-1 shape.
pub(super) fn decode<R: serde::de::DeserializeOwned>(
    table: &str,
    bytes: &[u8],
) -> anyhow::Result<R> {
    serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("state table {table}: {e}"))
}

/// Where a member answers, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactRow {
    /// HTTPS base URL.
    pub https_url: String,
    /// QUIC address.
    pub quic: SocketAddr,
    /// Lowercase hex SHA-256 of its HTTPS certificate.
    pub https_cert_sha256: String,
}

/// A member, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRow {
    /// Its key.
    pub id: NodeId,
    /// Its region.
    pub region: String,
    /// Its site.
    pub site: String,
    /// Bytes it offers.
    pub capacity: u64,
    /// Where it answers.
    pub contact: ContactRow,
    /// Being emptied.
    pub draining: bool,
    /// Failed verifications reported against it, by reporter.
    pub failure_reports: BTreeMap<NodeId, u64>,
    /// Where it says it answers, awaiting approval.
    pub proposed_contact: Option<ContactRow>,
    /// Its token's bound on capacity.
    pub capacity_limit: Option<u64>,
    /// Its failed checks.
    pub trust: TrustRow,
}

/// A member's failed checks, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRow {
    /// Checks failed since the mark was cleared.
    pub failed_checks: u64,
    /// Marked unreliable.
    pub unreliable: bool,
}

/// A join token, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRow {
    /// Region given.
    pub region: String,
    /// Site given.
    pub site: String,
    /// Unix seconds after which it is void.
    pub expires: u64,
    /// The node that used it.
    pub used_by: Option<NodeId>,
    /// Capacity bound.
    pub capacity: Option<u64>,
}

/// A published bundle, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRow {
    /// Bytes of its files.
    pub size: u64,
    /// Number of files.
    pub files: usize,
    /// Target number of copies.
    pub replicas: u8,
    /// The name to point at it once a copy is verified.
    pub pending_name: Option<String>,
    /// Nodes given an upload grant, latest last.
    pub uploads: Vec<NodeId>,
}

/// A replica's state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaRow {
    /// Being copied.
    Copying,
    /// Held complete.
    Complete,
    /// Complete, to be deleted once replaced.
    Releasing,
}

/// A name's past, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameRow {
    /// Every value, oldest first.
    pub history: Vec<NameChangeRow>,
}

/// One value of a name, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameChangeRow {
    /// Unix seconds.
    pub at: u64,
    /// The bundle.
    pub bundle: BundleId,
}

impl From<&Contact> for ContactRow {
    fn from(c: &Contact) -> Self {
        Self {
            https_url: c.https_url.clone(),
            quic: c.quic,
            https_cert_sha256: c.https_cert_sha256.clone(),
        }
    }
}

impl From<ContactRow> for Contact {
    fn from(c: ContactRow) -> Self {
        Self {
            https_url: c.https_url,
            quic: c.quic,
            https_cert_sha256: c.https_cert_sha256,
        }
    }
}

impl From<&NodeRecord> for NodeRow {
    fn from(n: &NodeRecord) -> Self {
        Self {
            id: n.id,
            region: n.region.clone(),
            site: n.site.clone(),
            capacity: n.capacity,
            contact: (&n.contact).into(),
            draining: n.draining,
            failure_reports: n.failure_reports.clone(),
            proposed_contact: n.proposed_contact.as_ref().map(Into::into),
            capacity_limit: n.capacity_limit,
            trust: TrustRow {
                failed_checks: n.trust.failed_checks,
                unreliable: n.trust.unreliable,
            },
        }
    }
}

impl From<NodeRow> for NodeRecord {
    fn from(n: NodeRow) -> Self {
        Self {
            id: n.id,
            region: n.region,
            site: n.site,
            capacity: n.capacity,
            contact: n.contact.into(),
            draining: n.draining,
            failure_reports: n.failure_reports,
            proposed_contact: n.proposed_contact.map(Into::into),
            capacity_limit: n.capacity_limit,
            trust: Trust {
                failed_checks: n.trust.failed_checks,
                unreliable: n.trust.unreliable,
            },
        }
    }
}

impl From<&TokenRecord> for TokenRow {
    fn from(t: &TokenRecord) -> Self {
        Self {
            region: t.region.clone(),
            site: t.site.clone(),
            expires: t.expires,
            used_by: t.used_by,
            capacity: t.capacity,
        }
    }
}

impl From<TokenRow> for TokenRecord {
    fn from(t: TokenRow) -> Self {
        Self {
            region: t.region,
            site: t.site,
            expires: t.expires,
            used_by: t.used_by,
            capacity: t.capacity,
        }
    }
}

impl From<&BundleRecord> for BundleRow {
    fn from(b: &BundleRecord) -> Self {
        Self {
            size: b.size,
            files: b.files,
            replicas: b.replicas,
            pending_name: b.pending_name.clone(),
            uploads: b.uploads.clone(),
        }
    }
}

impl From<BundleRow> for BundleRecord {
    fn from(b: BundleRow) -> Self {
        Self {
            size: b.size,
            files: b.files,
            replicas: b.replicas,
            pending_name: b.pending_name,
            uploads: b.uploads,
        }
    }
}

impl From<ReplicaState> for ReplicaRow {
    fn from(s: ReplicaState) -> Self {
        match s {
            ReplicaState::Copying => Self::Copying,
            ReplicaState::Complete => Self::Complete,
            ReplicaState::Releasing => Self::Releasing,
        }
    }
}

impl From<ReplicaRow> for ReplicaState {
    fn from(s: ReplicaRow) -> Self {
        match s {
            ReplicaRow::Copying => Self::Copying,
            ReplicaRow::Complete => Self::Complete,
            ReplicaRow::Releasing => Self::Releasing,
        }
    }
}

impl From<&NameRecord> for NameRow {
    fn from(n: &NameRecord) -> Self {
        let history = n
            .history
            .iter()
            .map(|c| NameChangeRow {
                at: c.at,
                bundle: c.bundle,
            })
            .collect();
        Self { history }
    }
}

impl From<NameRow> for NameRecord {
    fn from(n: NameRow) -> Self {
        let history = n
            .history
            .into_iter()
            .map(|c| NameChange {
                at: c.at,
                bundle: c.bundle,
            })
            .collect();
        Self { history }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryKv;

    #[test]
    fn rows_from_before_a_field_existed_get_its_default() -> anyhow::Result<()> {
        let kv = MemoryKv::default();
        let id = NodeId::from_bytes([1; 32]);
        let old_node = json!({
            "id": id, "region": "r", "site": "s", "capacity": 5, "draining": false,
            "contact": {"https_url": "https://a:1", "quic": "127.0.0.1:2", "https_cert_sha256": ""},
        });
        kv.put(NODES, id.as_bytes(), &serde_json::to_vec(&old_node)?)?;
        kv.put(
            TOKENS,
            b"t",
            br#"{"region":"r","site":"s","expires":9,"used_by":null}"#,
        )?;
        kv.put(BUNDLES, &[2; 32], br#"{"size":1,"files":1,"replicas":3}"#)?;
        open(&kv)?;
        let node: NodeRow = decode(NODES, &kv.scan(NODES)?[0].1)?;
        assert_eq!((node.trust.failed_checks, node.capacity_limit), (0, None));
        let bundle: BundleRow = decode(BUNDLES, &kv.scan(BUNDLES)?[0].1)?;
        assert!(bundle.uploads.is_empty() && bundle.pending_name.is_none());
        let token: TokenRow = decode(TOKENS, &kv.scan(TOKENS)?[0].1)?;
        assert_eq!(token.capacity, None);
        // A crash before the schema row: some rows rewritten, some not.
        let migrated = (kv.scan(NODES)?, kv.scan(BUNDLES)?);
        kv.delete(META, SCHEMA_KEY)?;
        kv.put(NODES, id.as_bytes(), &serde_json::to_vec(&old_node)?)?;
        open(&kv)?;
        assert_eq!(
            (kv.scan(NODES)?, kv.scan(BUNDLES)?),
            migrated,
            "migrated again alike"
        );
        Ok(())
    }

    #[test]
    fn a_newer_schema_is_refused_naming_both_versions() -> anyhow::Result<()> {
        let kv = MemoryKv::default();
        kv.put(META, SCHEMA_KEY, br#""7""#)?;
        let refused = open(&kv)
            .expect_err("schema 7 is from the future")
            .to_string();
        assert!(
            refused.contains("schema 7") && refused.contains(&format!("schema {SCHEMA}")),
            "{refused}"
        );
        kv.put(META, SCHEMA_KEY, br#""lots""#)?;
        assert!(open(&kv).unwrap_err().to_string().contains("unreadable"));
        Ok(())
    }

    #[test]
    fn a_new_store_is_stamped_with_this_schema() -> anyhow::Result<()> {
        let kv = MemoryKv::default();
        open(&kv)?;
        assert_eq!(
            kv.scan(META)?,
            vec![(SCHEMA_KEY.to_vec(), br#""1""#.to_vec())]
        );
        Ok(())
    }
}
