//! Where the verified groups a peer sends go on a node: the blob's partial
//! files, checkpointed in the store, counted, and paced for background copies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cartable_net::peer::exchange::VerifiedSink;
use cartable_proto::wire::GroupRanges;

use super::rate::RateLimit;
use crate::store::{PartialBlob, Store};

/// Where verified groups go.
#[derive(Debug, Clone)]
pub struct GroupSink {
    /// The blob's partial files; `None` once committed.
    pub partial: Arc<Mutex<Option<PartialBlob>>>,
    /// The store, for checkpoints.
    pub store: Arc<Store>,
    /// Counts verified bytes received.
    pub received: Arc<AtomicU64>,
    /// A daemon-wide count the same bytes go to as well, when one is kept.
    pub also_counted: Option<Arc<AtomicU64>>,
    /// A bandwidth cap, for background copies.
    pub rate: Option<Arc<RateLimit>>,
}

impl GroupSink {
    fn with_partial(
        &self,
        f: &mut dyn FnMut(&mut PartialBlob) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut guard = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_mut().map_or(Ok(()), &mut *f)
    }
}

impl VerifiedSink for GroupSink {
    fn save_pair(
        &self,
        node: bao_tree::TreeNode,
        pair: &(blake3::Hash, blake3::Hash),
    ) -> std::io::Result<()> {
        self.with_partial(&mut |b| b.save_pair(node, pair))
    }

    fn write_group(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if let Some(rate) = &self.rate {
            rate.take(data.len() as u64);
        }
        self.with_partial(&mut |b| b.write_group(offset, data))?;
        for count in std::iter::once(&self.received).chain(&self.also_counted) {
            count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn finish(&self, groups: &GroupRanges) -> std::io::Result<()> {
        let mut due = None;
        self.with_partial(&mut |b| {
            if groups.ranges().iter().any(|g| b.missing_in(g)) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "stream ended early",
                ));
            }
            due = b.checkpoint_if_due()?;
            Ok(())
        })?;
        // Synced outside the blob's lock: its other units go on meanwhile.
        due.map_or(Ok(()), |checkpoint| checkpoint.write(&self.store))
    }
}
