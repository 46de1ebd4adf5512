//! `cartable-coordinator backup FILE`: the backup of the coordinator whose
//! data folder this is. sled keeps its folder locked while a coordinator
//! runs, so a running one is asked for it (`POST /api/backup`, at the address
//! it wrote in [`ADMIN_URL_FILE`], with the folder's admin token, its
//! certificate pinned); a stopped one's folder is read directly.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use cartable_net::client::{HttpsClient, full, parse_answer};
use cartable_net::pin::Pin;
use cartable_proto::backup::Snapshot;
use http::{Method, header};

use crate::daemon::{ADMIN_TOKEN_FILE, ADMIN_URL_FILE};
use crate::state::SledKv;

/// A running coordinator silent this long while taking a backup is stuck.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// Where a backup came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The running coordinator's admin API.
    Running,
    /// The data folder of a stopped coordinator.
    Folder,
}

/// Writes the backup of the coordinator in `data_dir` to `file` (mode 0600,
/// whole or not at all); `cert` is its HTTPS certificate.
pub async fn backup_to(
    file: &Path,
    data_dir: &Path,
    cert: &Path,
) -> anyhow::Result<(Snapshot, Source)> {
    let state = data_dir.join("state");
    let running = SledKv::is_open_elsewhere(&state)
        .with_context(|| format!("checking {}", state.display()))?;
    let (bytes, source) = if running {
        (ask_running(data_dir, cert).await?, Source::Running)
    } else {
        let snapshot = super::offline(data_dir)?;
        (cartable_proto::backup::encode(&snapshot)?, Source::Folder)
    };
    let snapshot = keep(file, &bytes)?;
    Ok((snapshot, source))
}

/// Checks `bytes` as a backup, then writes them to `file`: what is kept is
/// known to restore.
pub fn keep(file: &Path, bytes: &[u8]) -> anyhow::Result<Snapshot> {
    let snapshot =
        cartable_proto::backup::decode(bytes).context("the coordinator sent a bad backup")?;
    cartable_net::secret_file::replace(file, bytes)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(snapshot)
}

async fn ask_running(data_dir: &Path, cert: &Path) -> anyhow::Result<Vec<u8>> {
    let url_file = data_dir.join(ADMIN_URL_FILE);
    let url = std::fs::read_to_string(&url_file).with_context(|| {
        format!(
            "a coordinator runs on {} but {} is unreadable (is it still starting? try again once it listens)",
            data_dir.display(),
            url_file.display()
        )
    })?;
    let token = cartable_net::secret_file::read(&data_dir.join(ADMIN_TOKEN_FILE))
        .context("reading the admin token")?;
    let mut client = HttpsClient::new(url.trim(), Pin::from_pem_file(cert)?)?;
    let auth = vec![(header::AUTHORIZATION, format!("Bearer {}", token.trim()))];
    let sent = client.send(Method::POST, "/api/backup", &auth, full(Vec::new()));
    let (status, body) = tokio::time::timeout(ANSWER_WITHIN, sent)
        .await
        .map_err(|_| anyhow::anyhow!("{}: no backup within {ANSWER_WITHIN:?}", url.trim()))??;
    if !status.is_success() {
        let refusal = parse_answer::<serde_json::Value>(status, &body)
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("status {status}"));
        return Err(refusal.context("the running coordinator refused the backup"));
    }
    Ok(body.to_vec())
}
