//! A peer holding bundles and fetch-through towards it, for tests here and of
//! what browsers are answered.

use std::sync::Arc;

use super::FetchThrough;
use crate::peer::testing::Answering;
use crate::store::Store;

/// A node with an empty store answering peers, and fetch-through towards it.
pub(crate) struct Setup {
    pub(crate) _dirs: tempfile::TempDir,
    pub(crate) peer: Answering,
    pub(crate) peer_store: Arc<Store>,
    /// The store fetch-through fills.
    pub(crate) store: Arc<Store>,
    pub(crate) through: FetchThrough,
}

/// Both on loopback, with a cache of 1 MiB; must run inside a Tokio runtime.
pub(crate) fn setup() -> anyhow::Result<Setup> {
    let dirs = tempfile::tempdir()?;
    let peer_store = Arc::new(Store::open(dirs.path().join("peer"))?);
    let peer = Answering::start(peer_store.clone(), &tokio::runtime::Handle::current())?;
    let store = Arc::new(Store::open(dirs.path().join("us"))?);
    let through = FetchThrough::new(
        peer.client.clone(),
        vec![peer.peer],
        store.clone(),
        Arc::default(),
        1 << 20,
    );
    Ok(Setup {
        _dirs: dirs,
        peer,
        peer_store,
        store,
        through,
    })
}
