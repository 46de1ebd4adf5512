//! What a node answers browsers, behind the server shell of [`cartable_net::https`]:
//! responses are built in [`respond`]; files stream from disk verified, each
//! piece read on a blocking thread only while it is read, never while the
//! client is slow. Uploads from `cartable publish` arrive through [`Uploads`].
//! What browsers may do with each answer (sandbox, CORS, framing) is [`policy`].

mod body;
pub mod conditional;
mod error;
mod listing;
mod policy;
mod reserve;
mod respond;
mod status_page;
pub mod target;
mod upload;
#[cfg(test)]
mod upload_tests;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use listing::escape;
pub use policy::{FileLessons, LessonPolicy};
pub use respond::respond;
pub use upload::{DEFAULT_DISK_MARGIN, UploadLimits, Uploads};

use crate::peer::through::FetchThrough;
use crate::status::Sources;
use crate::store::Store;
use cartable_net::https::shed::{Level, Pressure};
use prometheus_client::metrics::counter::Counter;

/// Files of bundles this node does not hold, by where their bytes came from.
#[derive(Debug, Clone, Default)]
pub struct CacheCounts {
    /// Answered from the fetch-through cache on this node's disk.
    pub hits: Counter,
    /// Fetched from peers.
    pub misses: Counter,
}

/// What requests are answered from.
#[derive(Debug)]
pub struct ServeContext {
    /// The node's store.
    pub store: Arc<Store>,
    /// Fetch-through from peers, when the node has peers.
    pub through: Option<Arc<FetchThrough>>,
    /// The upload routes, when the node is a member of a coordinator.
    pub uploads: Option<Arc<Uploads>>,
    /// Names and their bundles from the coordinator, for `/n/{name}/{path}`.
    pub names: Option<Arc<std::sync::Mutex<cartable_proto::control::NameTable>>>,
    /// How pressed the server is: fetch-through is shed first.
    pub pressure: Arc<Pressure>,
    /// A response that moves no byte this long is given up, freeing its file.
    pub progress_timeout: Duration,
    /// The sandbox lesson documents run in.
    pub lessons: LessonPolicy,
    /// What the status page at `/` shows; `None`: no status page.
    pub status: Option<Arc<Sources>>,
    /// Fetch-through cache hits and misses, for monitoring.
    pub cache: CacheCounts,
}

impl ServeContext {
    /// Whether fetch-through (asking peers, for a manifest or bytes) waits
    /// for a quieter moment: held bundles are served first.
    fn sheds_fetch_through(&self) -> bool {
        self.pressure.level() > Level::Calm
    }

    /// Serving `store` alone: no peers, uploads or names, default limits.
    #[cfg(test)]
    pub fn new(store: Arc<Store>) -> Self {
        let limits = cartable_net::https::limits::ConnectionLimits::default();
        Self {
            store,
            through: None,
            uploads: None,
            names: None,
            pressure: Pressure::new(limits.max_pending),
            progress_timeout: limits.deadlines.progress,
            lessons: LessonPolicy::default(),
            status: None,
            cache: CacheCounts::default(),
        }
    }
}
