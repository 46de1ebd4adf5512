//! A store answering peers on loopback as a node answers them, for tests of
//! what asks it: fetches, fetch-through, the scrub's repairs.

use std::sync::Arc;

use cartable_net::identity::Identity;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;
use tokio::runtime::Handle;

use super::asks::StoreAsks;
use super::respond::serve_peers;
use crate::store::Store;

/// The answering node's endpoint and another member's to ask it from; both
/// closed when dropped.
pub(crate) struct Answering {
    pub(crate) server: PeerEndpoint,
    pub(crate) client: PeerEndpoint,
    /// Where `client` finds `server`.
    pub(crate) peer: PeerAddr,
    _keys: tempfile::TempDir,
}

impl Answering {
    /// Answers from `store` on `copies` (in a node, its idle copies' runtime),
    /// asking the store from a thread started by the caller's, as the daemon's
    /// thread starts it.
    pub(crate) fn start(store: Arc<Store>, copies: &Handle) -> anyhow::Result<Self> {
        let keys = tempfile::tempdir()?;
        let server_key = Identity::load_or_create(&keys.path().join("server"))?;
        let client_key = Identity::load_or_create(&keys.path().join("client"))?;
        let loopback = "127.0.0.1:0".parse()?;
        let server = {
            let _copies = copies.enter();
            PeerEndpoint::bind(loopback, &server_key, Members::anyone())?
        };
        let peer = PeerAddr {
            id: server_key.id(),
            addr: server.local_addr()?,
        };
        let asks = StoreAsks::start(store.clone())?;
        copies.spawn(serve_peers(server.clone(), store, asks, None));
        let client = PeerEndpoint::bind(loopback, &client_key, Members::anyone())?;
        Ok(Self {
            server,
            client,
            peer,
            _keys: keys,
        })
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.server.close();
        self.client.close();
    }
}
