//! HTTPS for browsers: hyper 1 over rustls, HTTP/2 and HTTP/1.1 by ALPN.
//!
//! Each accepted TCP connection takes a slot (beyond `max_connections` it is
//! closed at once), gets `handshake_timeout` to finish TLS and
//! `header_read_timeout` per request head; heads over `max_header_bytes` get 431.
//! Responses are built in [`respond`]; files stream from disk verified. Uploads
//! from `cartable publish` arrive through [`Uploads`].

mod body;
mod conditional;
mod error;
mod listing;
mod reserve;
mod respond;
mod target;
mod upload;
#[cfg(test)]
mod upload_tests;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

pub use respond::respond;
pub use upload::{DEFAULT_DISK_MARGIN, UploadLimits, Uploads};

use crate::config::HttpsConfig;
use crate::peer::through::FetchThrough;
use crate::store::Store;

/// How long open connections get to finish when the server stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per connection.
const H2_MAX_STREAMS: u32 = 128;

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
}

/// A bound, not yet running, HTTPS server.
pub struct HttpsServer {
    listener: TcpListener,
    tls: TlsAcceptor,
    config: HttpsConfig,
    slots: Arc<Semaphore>,
}

/// How many browser connections a server has open: the load a node reports.
#[derive(Debug, Clone)]
pub struct OpenConnections {
    slots: Arc<Semaphore>,
    max: usize,
}

impl OpenConnections {
    /// Connections open now.
    pub fn count(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }
}

impl std::fmt::Debug for HttpsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsServer")
            .field("listener", &self.listener)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HttpsServer {
    /// Binds the listening socket.
    pub async fn bind(
        config: HttpsConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            tls: TlsAcceptor::from(tls),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config,
        })
    }

    /// A gauge of the connections this server will have open.
    pub fn open_connections(&self) -> OpenConnections {
        OpenConnections {
            slots: self.slots.clone(),
            max: self.config.max_connections,
        }
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `store` until `shutdown` completes, then lets open connections
    /// finish for a while.
    pub async fn run(self, ctx: Arc<ServeContext>, shutdown: impl Future<Output = ()>) {
        let handler = move |req, _peer| respond(ctx.clone(), req);
        self.serve(handler, shutdown).await;
    }

    /// Serves requests with `handler` (given each request and the client's address)
    /// until `shutdown` completes, then lets open connections finish.
    pub async fn serve<H, F, B>(self, handler: H, shutdown: impl Future<Output = ()>)
    where
        H: Fn(hyper::Request<hyper::body::Incoming>, SocketAddr) -> F
            + Clone
            + Send
            + Sync
            + 'static,
        F: Future<Output = hyper::Response<B>> + Send + 'static,
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let builder = Arc::new(self.http_builder());
        let slots = self.slots.clone();
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors, usually: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection limit reached, closing");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (tls, handshake_timeout) = (self.tls.clone(), self.config.handshake_timeout);
            let (builder, handler, watcher) =
                (builder.clone(), handler.clone(), graceful.watcher());
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(handshake_timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
                let service = service_fn(move |req| {
                    let answer = handler(req, peer);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(slot);
            });
        }
        tracing::info!(
            open = graceful.count(),
            "stopping: letting open connections finish"
        );
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the drain timeout");
        }
    }

    fn http_builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.config.header_read_timeout)
            .max_buf_size(self.config.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            // Pings find peers that vanished without closing the connection.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .max_header_list_size(self.config.max_header_bytes as u32);
        builder
    }
}
