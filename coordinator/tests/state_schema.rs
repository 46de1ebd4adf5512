//! A data folder written by the schema-0 build (`fixtures/state-v0/`, made at
//! commit e6935bc) opens with this build, is migrated, and reads back the same.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cartable_coordinator::state::records::SCHEMA;
use cartable_coordinator::state::{
    BundleRecord, Cluster, Kv, MemoryKv, NodeRecord, SledKv, TokenRecord, Trust,
};
use cartable_proto::api::ReplicaState;
use cartable_proto::control::Contact;
use cartable_proto::{BundleId, NodeId};

fn node(n: u8) -> NodeRecord {
    let contact = Contact {
        https_url: format!("https://10.0.0.{n}:8443"),
        quic: format!("10.0.0.{n}:4433").parse().unwrap(),
        https_cert_sha256: format!("{n:02x}").repeat(32),
    };
    NodeRecord::joined(
        NodeId::from_bytes([n; 32]),
        "north",
        &format!("school-{n}"),
        1 << 30,
        contact,
    )
}

fn bundle(n: u8) -> BundleId {
    BundleId::of_manifest(&[n])
}

/// Everything the fixture holds, written through the state's own calls: this
/// made the fixture (schema 0), and makes what it must read back as.
fn fixture_contents(c: &mut Cluster) -> anyhow::Result<()> {
    let mut one = node(1);
    one.failure_reports = BTreeMap::from([(NodeId::from_bytes([2; 32]), 3)]);
    one.capacity_limit = Some(2 << 30);
    c.save_node(one)?;
    let mut two = node(2);
    two.draining = true;
    two.proposed_contact = Some(node(9).contact);
    two.trust = Trust {
        failed_checks: 4,
        unreliable: true,
    };
    c.save_node(two)?;
    c.save_node(node(3))?;
    c.save_token(
        "a".repeat(64),
        TokenRecord {
            region: "north".into(),
            site: "school-1".into(),
            expires: 1_900_000_000,
            used_by: Some(NodeId::from_bytes([1; 32])),
            capacity: Some(2 << 30),
        },
    )?;
    c.save_token(
        "b".repeat(64),
        TokenRecord {
            region: "south".into(),
            site: "school-4".into(),
            expires: 1_800_000_000,
            used_by: None,
            capacity: None,
        },
    )?;
    let mut first = BundleRecord {
        size: 12_345,
        files: 7,
        replicas: 3,
        ..BundleRecord::default()
    };
    first.granted(NodeId::from_bytes([1; 32]));
    first.granted(NodeId::from_bytes([3; 32]));
    c.save_bundle(bundle(1), first)?;
    c.save_bundle(
        bundle(2),
        BundleRecord {
            size: 99,
            files: 1,
            replicas: 2,
            pending_name: Some("maths/6e/fractions".into()),
            uploads: vec![],
        },
    )?;
    c.save_bundle(
        bundle(3),
        BundleRecord {
            size: 1,
            files: 1,
            replicas: 1,
            ..BundleRecord::default()
        },
    )?;
    c.retire_bundle(bundle(3))?;
    c.set_replica(bundle(1), node(1).id, Some(ReplicaState::Complete))?;
    c.set_replica(bundle(1), node(2).id, Some(ReplicaState::Releasing))?;
    c.set_replica(bundle(1), node(3).id, Some(ReplicaState::Copying))?;
    c.set_replica(bundle(2), node(3).id, Some(ReplicaState::Complete))?;
    c.set_proven(bundle(1), node(1).id)?;
    c.set_proven(bundle(2), node(3).id)?;
    c.set_name("maths/6e", bundle(1))?;
    c.set_name("maths/6e", bundle(2))?;
    c.set_name("français/5e", bundle(1))?;
    c.set_admin_hash(cartable_coordinator::state::secret_hash(b"admin"))?;
    c.flush()
}

/// When the fixture was made: the time its name changes carry.
const MADE_AT: u64 = 1_796_529_789;

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()))?;
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn assert_same_state(found: &Cluster, expected: &Cluster) {
    assert_eq!(found.nodes, expected.nodes, "nodes");
    assert_eq!(found.tokens, expected.tokens, "tokens");
    assert_eq!(found.bundles, expected.bundles, "bundles");
    assert_eq!(found.replicas, expected.replicas, "replicas");
    assert_eq!(found.names, expected.names, "names");
    assert_eq!(found.retired, expected.retired, "retired");
    assert_eq!(found.proven, expected.proven, "proven");
    // Not the names version: each load moves past every one handed out
    // before, so two loads of the same tables differ there.
    assert_eq!(found.admin_hash, expected.admin_hash, "admin hash");
}

#[test]
fn a_schema_0_folder_opens_migrated_with_everything_it_held() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v0");
    copy_dir(&fixture, dir.path())?;
    let mut expected = Cluster::load(Box::new(MemoryKv::default()), Instant::now())?;
    fixture_contents(&mut expected)?;
    for record in expected.names.values_mut() {
        record
            .history
            .iter_mut()
            .for_each(|change| change.at = MADE_AT);
    }
    let kv = Arc::new(SledKv::open(dir.path())?);
    let schema = |kv: &SledKv| -> anyhow::Result<Option<Vec<u8>>> {
        Ok(kv
            .scan("meta")?
            .into_iter()
            .find(|(k, _)| k == b"schema")
            .map(|(_, v)| v))
    };
    assert_eq!(schema(&kv)?, None, "the fixture predates the schema row");
    let migrated = Cluster::load(Box::new(kv.clone()), Instant::now())?;
    assert_same_state(&migrated, &expected);
    assert_eq!(
        schema(&kv)?,
        Some(format!("\"{SCHEMA}\"").into_bytes()),
        "the folder is stamped"
    );
    let reopened = Cluster::load(Box::new(kv.clone()), Instant::now())?;
    assert_same_state(&reopened, &expected);
    Ok(())
}
