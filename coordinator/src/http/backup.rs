//! `POST /api/backup` (admin token checked by the caller): the whole state as
//! one backup file ([`cartable_proto::backup`]), taken while the coordinator
//! runs.
//!
//! The rows are read with the state's lock held, so the snapshot is one
//! instant of the state; the lock is released before the file is encoded and
//! sent. Memory is bounded: one backup at a time, from its taking to the last
//! byte sent (a second request meanwhile gets 503, however slowly the first
//! one reads), each at most [`MAX_BACKUP_BYTES`], about the size of the state
//! the coordinator already holds in memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cartable_net::https::shed::shed_response;
use cartable_proto::backup::{BackupError, MAX_BACKUP_BYTES};
use http::{HeaderMap, StatusCode, header};
use http_body_util::Full;

use super::{Reply, error};
use crate::Coordinator;

/// When to ask again while another backup is being taken.
const BUSY_RETRY: Duration = Duration::from_secs(5);

/// The backup file, or why there is none.
pub async fn reply(coord: Arc<Coordinator>) -> Reply {
    let Ok(slot) = coord.backup_slot.clone().try_acquire_owned() else {
        return shed_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "another backup is being taken",
            BUSY_RETRY,
            &HeaderMap::new(),
        );
    };
    let taking = coord.clone();
    let taken = tokio::task::spawn_blocking(move || take(&taking)).await;
    match taken {
        Ok(Ok(bytes)) => {
            tracing::info!(bytes = bytes.len(), "backup taken");
            file(Bytes::from_owner(Sending { bytes, _slot: slot }))
        }
        Ok(Err(Refused::TooLarge(e))) => error(StatusCode::INSUFFICIENT_STORAGE, &e.to_string()),
        Ok(Err(Refused::Failed(e))) => {
            tracing::error!(error = format!("{e:#}"), "backup failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the backup could not be taken; the coordinator's log says why",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "backup task failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the backup could not be taken",
            )
        }
    }
}

/// Why no backup was sent.
enum Refused {
    /// The state is larger than a backup file may be.
    TooLarge(BackupError),
    /// Reading the state or a file failed.
    Failed(anyhow::Error),
}

fn take(coord: &Coordinator) -> Result<Vec<u8>, Refused> {
    let snapshot = crate::backup::take(coord).map_err(Refused::Failed)?;
    cartable_proto::backup::encode(&snapshot).map_err(|e| match e {
        BackupError::TooLarge { .. } => Refused::TooLarge(e),
        other => Refused::Failed(other.into()),
    })
}

/// A backup file on its way out: the slot is freed with its bytes, once the
/// body is sent or dropped.
struct Sending {
    bytes: Vec<u8>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Sending {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

fn file(bytes: Bytes) -> Reply {
    debug_assert!(bytes.len() as u64 <= MAX_BACKUP_BYTES);
    let name = format!(
        "attachment; filename=\"cartable-coordinator-{}.backup\"",
        crate::state::unix_now()
    );
    let mut reply = Reply::new(Full::new(bytes));
    let headers = reply.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    if let Ok(value) = header::HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_is_held_until_the_file_is_sent_or_dropped() {
        let slot = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = slot.clone().try_acquire_owned().unwrap();
        let sending = Sending {
            bytes: b"backup".to_vec(),
            _slot: permit,
        };
        let reply = file(Bytes::from_owner(sending));
        assert_eq!(slot.available_permits(), 0, "freed before the body went");
        let body = reply.into_body();
        assert_eq!(slot.available_permits(), 0);
        drop(body);
        assert_eq!(slot.available_permits(), 1);
    }
}
