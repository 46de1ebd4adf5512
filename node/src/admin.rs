//! The local admin socket (`DATA/admin.sock`, mode 0600): how `cartable-node add`,
//! `bundles`, `rm` and `check` reach a running daemon, which owns the store.
//!
//! One JSON request per line, one JSON response per line. Without a daemon the
//! CLI runs the very same [`execute`] on a store it opens itself, so both paths
//! behave alike.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use cartable_proto::{BundleId, NodeId};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::peer::fetch::{FetchOptions, fetch_bundle};
use crate::peer::reputation::Reputation;
use crate::peer::through::FetchThrough;
use crate::store::Store;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::endpoint::PeerEndpoint;

/// The socket's file name in the data folder.
pub const SOCKET_FILE: &str = "admin.sock";
/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// A command for the store's owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Import a folder (an absolute path the daemon can read).
    Add {
        /// The folder.
        dir: PathBuf,
    },
    /// List bundles.
    Bundles,
    /// Remove a bundle.
    Rm {
        /// The bundle.
        bundle: BundleId,
    },
    /// Re-verify every blob.
    Check,
    /// Copy a bundle from peers.
    Fetch {
        /// The bundle.
        bundle: BundleId,
        /// Peers to copy from.
        from: Vec<PeerAddr>,
        /// Bandwidth cap in bytes per second.
        rate: Option<u64>,
    },
    /// Where the daemon serves.
    Info,
    /// The daemon's counters.
    Stats,
}

/// The daemon's counters, answered to [`Request::Stats`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Verified bytes fetched through from peers for browsers.
    pub through_bytes_received: u64,
    /// Data that failed verification, by the peer that sent it.
    pub verification_failures: std::collections::BTreeMap<NodeId, u64>,
}

/// The daemon's addresses, answered to [`Request::Info`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    /// Base URL of the HTTPS server, e.g. `https://127.0.0.1:8443`.
    pub https: String,
    /// The QUIC address peers connect to.
    pub quic: std::net::SocketAddr,
    /// The node id.
    pub id: NodeId,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Response {
    Ok(serde_json::Value),
    Error(String),
}

/// Runs a request against a store; `info` is `None` outside a daemon.
pub fn execute(
    store: &Store,
    info: Option<&Info>,
    request: Request,
) -> anyhow::Result<serde_json::Value> {
    let value = match request {
        Request::Add { dir } => serde_json::to_value(store.add_folder(&dir)?)?,
        Request::Bundles => serde_json::to_value(store.bundles()?)?,
        Request::Rm { bundle } => serde_json::to_value(store.remove(&bundle)?)?,
        Request::Check => serde_json::to_value(store.check()?)?,
        Request::Info => serde_json::to_value(info.context("no daemon running")?)?,
        // Copying needs the QUIC endpoint: the daemon runs it in `answer`, the
        // CLI with an endpoint of its own.
        Request::Fetch { .. } | Request::Stats => {
            anyhow::bail!("only a running daemon answers this")
        }
    };
    Ok(value)
}

/// The daemon's side of the socket.
#[derive(Debug)]
pub struct AdminServer {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminServer {
    /// Binds `DATA/admin.sock`, replacing a stale socket left by a crash (the
    /// caller already holds the store, so no other daemon is using it).
    pub fn bind(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(SOCKET_FILE);
        crate::store::layout::remove_if_present(&path)
            .with_context(|| format!("removing stale {}", path.display()))?;
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self { listener, path })
    }

    /// Answers requests until the task is dropped.
    pub async fn run(self, ctx: Arc<AdminContext>) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, ctx).await {
                    tracing::warn!(error = %e, "admin connection failed");
                }
            });
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a daemon's admin socket answers from.
#[derive(Debug)]
pub struct AdminContext {
    /// The store the daemon owns.
    pub store: Arc<Store>,
    /// Where it serves.
    pub info: Info,
    /// Its QUIC endpoint, for fetches.
    pub peers: PeerEndpoint,
    /// Its fetch-through, for counters.
    pub through: Option<Arc<FetchThrough>>,
    /// Peers caught lying, counted.
    pub reputation: Arc<Reputation>,
    /// Verified bytes copied from peers, for monitoring.
    pub copied: Arc<std::sync::atomic::AtomicU64>,
}

async fn answer(stream: tokio::net::UnixStream, ctx: Arc<AdminContext>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    if line.is_empty() {
        // A client checking that the daemon is up.
        return Ok(());
    }
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error(format!("bad request: {e}")),
        Ok(Request::Fetch { bundle, from, rate }) => {
            tracing::info!(%bundle, "admin request: fetch");
            let options = FetchOptions {
                rate,
                reputation: ctx.reputation.clone(),
                copied: Some(ctx.copied.clone()),
                ..FetchOptions::default()
            };
            match fetch_bundle(&ctx.peers, ctx.store.clone(), bundle, &from, options).await {
                Ok(report) => Response::Ok(serde_json::to_value(report)?),
                Err(e) => Response::Error(format!("{e:#}")),
            }
        }
        Ok(Request::Stats) => Response::Ok(serde_json::to_value(Stats {
            through_bytes_received: ctx.through.as_ref().map_or(0, |t| t.bytes_received()),
            verification_failures: ctx.reputation.failures(),
        })?),
        Ok(request) => {
            tracing::info!(?request, "admin request");
            let done =
                tokio::task::spawn_blocking(move || execute(&ctx.store, Some(&ctx.info), request))
                    .await?;
            match done {
                Ok(value) => Response::Ok(value),
                Err(e) => Response::Error(format!("{e:#}")),
            }
        }
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// The CLI's side: a connection to a running daemon.
#[derive(Debug)]
pub struct AdminClient {
    path: PathBuf,
}

impl AdminClient {
    /// The daemon's socket in `data_dir`, if a daemon answers on it.
    pub fn connect(data_dir: &Path) -> Option<Self> {
        let path = data_dir.join(SOCKET_FILE);
        UnixStream::connect(&path).ok().map(|_| Self { path })
    }

    /// Sends one request and waits for its answer.
    pub fn call(&self, request: &Request) -> anyhow::Result<serde_json::Value> {
        let mut stream = UnixStream::connect(&self.path)
            .with_context(|| format!("connecting to {}", self.path.display()))?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer)?;
        match serde_json::from_str(&answer).context("daemon's answer")? {
            Response::Ok(value) => Ok(value),
            Response::Error(e) => Err(anyhow::anyhow!(e)),
        }
    }
}
