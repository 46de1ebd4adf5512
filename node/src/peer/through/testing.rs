//! A peer holding bundles and fetch-through towards it, for tests here and of
//! what browsers are answered.

use std::sync::Arc;

use cartable_net::identity::Identity;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;

use super::FetchThrough;
use crate::peer::asks::StoreAsks;
use crate::peer::respond::serve_peers;
use crate::store::Store;

/// A node with an empty store answering peers, and fetch-through towards it.
pub(crate) struct Setup {
    pub(crate) _dirs: tempfile::TempDir,
    pub(crate) peer_endpoint: PeerEndpoint,
    pub(crate) peer_store: Arc<Store>,
    /// The store fetch-through fills.
    pub(crate) store: Arc<Store>,
    pub(crate) through: FetchThrough,
}

/// Both on loopback, with a cache of 1 MiB; must run inside a Tokio runtime.
pub(crate) fn setup() -> anyhow::Result<Setup> {
    let dirs = tempfile::tempdir()?;
    let loopback = "127.0.0.1:0".parse()?;
    let peer_key = Identity::load_or_create(&dirs.path().join("peer"))?;
    let peer_endpoint = PeerEndpoint::bind(loopback, &peer_key, Members::anyone())?;
    let peer_store = Arc::new(Store::open(dirs.path().join("peer"))?);
    tokio::spawn(serve_peers(
        peer_endpoint.clone(),
        peer_store.clone(),
        StoreAsks::start(peer_store.clone())?,
        None,
    ));
    let our_key = Identity::load_or_create(&dirs.path().join("us"))?;
    let ours = PeerEndpoint::bind(loopback, &our_key, Members::anyone())?;
    let peer = PeerAddr {
        id: peer_key.id(),
        addr: peer_endpoint.local_addr()?,
    };
    let store = Arc::new(Store::open(dirs.path().join("us"))?);
    let through = FetchThrough::new(ours, vec![peer], store.clone(), Arc::default(), 1 << 20);
    Ok(Setup {
        _dirs: dirs,
        peer_endpoint,
        peer_store,
        store,
        through,
    })
}
