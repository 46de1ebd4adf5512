//! The uploads in progress and the room each has claimed, with no IO: the
//! caller passes what the node has left and the time. An upload claims its room
//! when its manifest is posted, before any byte is received, so that two uploads
//! cannot together overrun the node's declared capacity or its disk.
//!
//! A claim counts two things:
//! - capacity: the bundle's total size, which is what holding it adds to the
//!   usage the node reports and the coordinator places by (0 for a bundle held
//!   already);
//! - disk: the bytes still to be written, the blobs missing here and their
//!   outboards. It shrinks as blobs arrive, since the disk then shows them.
//!
//! A claim is released when its bundle is held, when its grant expires (the
//! upload was abandoned), or at a restart, which forgets uploads in progress.
//! The table is bounded by [`MAX_UPLOADS`].

use std::collections::HashMap;
use std::sync::Arc;

use cartable_proto::{BundleId, Manifest};

use super::error::HttpError;

/// Uploads in progress at once; more are refused (503) until one ends.
pub const MAX_UPLOADS: usize = 64;

/// The room one upload needs or holds, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claim {
    /// Added to the node's usage once the bundle is held.
    pub capacity: u64,
    /// Still to be written to disk.
    pub disk: u64,
}

impl Claim {
    fn plus(self, other: Claim) -> Claim {
        Claim {
            capacity: self.capacity.saturating_add(other.capacity),
            disk: self.disk.saturating_add(other.disk),
        }
    }
}

/// What the node has left, uploads in progress not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Declared capacity minus the bytes of the bundles held.
    pub capacity: u64,
    /// Free disk space minus the margin kept free.
    pub disk: u64,
}

/// One upload in progress.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// Unix seconds after which it is abandoned: the latest expiry of its grants.
    pub until: u64,
    /// The room it holds.
    pub claim: Claim,
}

/// Why an upload was refused; nothing was claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The bundle needs more capacity than is left.
    Capacity {
        /// Bytes needed.
        need: u64,
        /// Bytes left, after the other uploads' claims.
        left: u64,
    },
    /// The blobs need more disk than is free.
    Disk {
        /// Bytes needed.
        need: u64,
        /// Bytes free, after the other uploads' claims.
        left: u64,
    },
    /// [`MAX_UPLOADS`] uploads are in progress.
    Busy,
}

impl From<Refusal> for HttpError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Capacity { .. } => HttpError::InsufficientStorage(
                "the bundle needs more capacity than this node has left",
            ),
            Refusal::Disk { .. } => HttpError::InsufficientStorage(
                "the bundle needs more disk space than this node has free",
            ),
            Refusal::Busy => HttpError::Unavailable("too many uploads in progress: retry later"),
        }
    }
}

/// The uploads in progress, by bundle.
#[derive(Debug, Default)]
pub struct Reservations {
    uploads: HashMap<BundleId, Upload>,
}

impl Reservations {
    /// The upload of `bundle` in progress, if any.
    pub fn get(&self, bundle: &BundleId) -> Option<&Upload> {
        self.uploads.get(bundle)
    }

    /// Claims `claim` for an upload of `bundle` until `until`, replacing the
    /// claim of an earlier post of the same bundle. Refuses, changing nothing
    /// but forgetting abandoned uploads, when the room left after the other
    /// uploads' claims is too small or the table is full.
    pub fn reserve(
        &mut self,
        bundle: BundleId,
        manifest: Arc<Manifest>,
        until: u64,
        claim: Claim,
        room: Room,
        now: u64,
    ) -> Result<(), Refusal> {
        self.uploads.retain(|_, u| u.until > now);
        let previous = self.uploads.get(&bundle);
        if previous.is_none() && self.uploads.len() >= MAX_UPLOADS {
            return Err(Refusal::Busy);
        }
        let until = previous.map_or(until, |p| p.until.max(until));
        let others = self.claimed_except(Some(&bundle));
        let left = Claim {
            capacity: room.capacity.saturating_sub(others.capacity),
            disk: room.disk.saturating_sub(others.disk),
        };
        if claim.capacity > left.capacity {
            return Err(Refusal::Capacity {
                need: claim.capacity,
                left: left.capacity,
            });
        }
        if claim.disk > left.disk {
            return Err(Refusal::Disk {
                need: claim.disk,
                left: left.disk,
            });
        }
        let upload = Upload {
            manifest,
            until,
            claim,
        };
        self.uploads.insert(bundle, upload);
        Ok(())
    }

    /// Checks that `disk` more bytes fit beside every claim, for a blob sent
    /// again for a bundle held already (no upload in progress claims it).
    pub fn check_disk(&self, disk: u64, free: u64) -> Result<(), Refusal> {
        let left = free.saturating_sub(self.claimed_except(None).disk);
        if disk > left {
            return Err(Refusal::Disk { need: disk, left });
        }
        Ok(())
    }

    /// Notes that `bytes` of the upload of `bundle` are now on disk.
    pub fn written(&mut self, bundle: &BundleId, bytes: u64) {
        if let Some(u) = self.uploads.get_mut(bundle) {
            u.claim.disk = u.claim.disk.saturating_sub(bytes);
        }
    }

    /// Ends the upload of `bundle` and releases its claim.
    pub fn release(&mut self, bundle: &BundleId) {
        self.uploads.remove(bundle);
    }

    fn claimed_except(&self, bundle: Option<&BundleId>) -> Claim {
        self.uploads
            .iter()
            .filter(|(b, _)| Some(*b) != bundle)
            .fold(Claim::default(), |sum, (_, u)| sum.plus(u.claim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: Room = Room {
        capacity: 1000,
        disk: 2000,
    };

    fn bundle(n: u8) -> BundleId {
        BundleId::of_manifest(&[n])
    }

    fn manifest() -> Arc<Manifest> {
        Arc::new(Manifest::new(Vec::new()).expect("an empty manifest is valid"))
    }

    fn claim(capacity: u64, disk: u64) -> Claim {
        Claim { capacity, disk }
    }

    fn reserve(r: &mut Reservations, n: u8, c: Claim, until: u64, now: u64) -> Result<(), Refusal> {
        r.reserve(bundle(n), manifest(), until, c, ROOM, now)
    }

    #[test]
    fn two_uploads_cannot_together_overrun_capacity_or_disk() {
        let mut r = Reservations::default();
        assert_eq!(reserve(&mut r, 1, claim(600, 600), 100, 0), Ok(()));
        assert_eq!(
            reserve(&mut r, 2, claim(600, 600), 100, 0),
            Err(Refusal::Capacity {
                need: 600,
                left: 400
            })
        );
        assert!(r.get(&bundle(2)).is_none(), "a refusal claims nothing");
        assert_eq!(
            reserve(&mut r, 2, claim(400, 1500), 100, 0),
            Err(Refusal::Disk {
                need: 1500,
                left: 1400
            })
        );
        assert_eq!(reserve(&mut r, 2, claim(400, 1400), 100, 0), Ok(()));
    }

    #[test]
    fn a_post_again_replaces_its_own_claim() {
        let mut r = Reservations::default();
        reserve(&mut r, 1, claim(900, 900), 100, 0).unwrap();
        // The same bundle posted again does not count against itself.
        assert_eq!(reserve(&mut r, 1, claim(900, 300), 50, 0), Ok(()));
        let upload = r.get(&bundle(1)).unwrap();
        assert_eq!(upload.claim, claim(900, 300));
        assert_eq!(upload.until, 100, "the latest grant counts");
    }

    #[test]
    fn claims_are_released_when_held_or_abandoned() {
        let mut r = Reservations::default();
        reserve(&mut r, 1, claim(1000, 1000), 10, 0).unwrap();
        assert!(reserve(&mut r, 2, claim(1, 1), 100, 0).is_err());
        r.release(&bundle(1));
        assert_eq!(reserve(&mut r, 2, claim(1000, 1), 10, 0), Ok(()));
        // Bundle 2's grant expires at 10: abandoned, its room is free again.
        assert_eq!(reserve(&mut r, 3, claim(1000, 1), 100, 10), Ok(()));
        assert!(r.get(&bundle(2)).is_none());
    }

    #[test]
    fn blobs_written_free_their_disk_claim_only() {
        let mut r = Reservations::default();
        reserve(&mut r, 1, claim(500, 2000), 100, 0).unwrap();
        assert_eq!(
            r.check_disk(1, ROOM.disk),
            Err(Refusal::Disk { need: 1, left: 0 })
        );
        r.written(&bundle(1), 1500);
        assert_eq!(r.get(&bundle(1)).unwrap().claim, claim(500, 500));
        assert_eq!(r.check_disk(1500, ROOM.disk), Ok(()));
        assert!(reserve(&mut r, 2, claim(600, 1), 100, 0).is_err());
    }

    #[test]
    fn the_table_is_bounded() {
        let mut r = Reservations::default();
        for n in 0..MAX_UPLOADS as u8 {
            reserve(&mut r, n, claim(0, 0), 100, 0).unwrap();
        }
        assert_eq!(
            reserve(&mut r, 200, claim(0, 0), 100, 0),
            Err(Refusal::Busy)
        );
        // One already in progress may still post again.
        assert_eq!(reserve(&mut r, 0, claim(0, 0), 100, 0), Ok(()));
        assert_eq!(reserve(&mut r, 200, claim(0, 0), 100, 100), Ok(()));
    }
}
