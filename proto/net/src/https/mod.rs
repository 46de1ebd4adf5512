//! The HTTPS server shell both daemons run: hyper 1 over rustls, with admission
//! before work, a deadline on every phase of a connection, and shedding.
//!
//! For each accepted TCP connection, in order:
//! 1. [`admission`]: the client's network must have a connection place and rate
//!    left, else the socket is closed before any TLS work.
//! 2. The TLS handshake within `handshake_timeout`.
//! 3. HTTP/2 or HTTP/1.1 by the negotiated ALPN, never by guessing from the first
//!    bytes (a guess waits for bytes with no deadline). An HTTP/2 connection
//!    moves to one of the [`shards`]' threads once its first bytes came.
//! 4. [`watch`]: the first request within `first_bytes_timeout`, then idle,
//!    header and progress deadlines until the connection ends.
//! 5. Per request: its cookies dropped and the rest of its [`head`] capped
//!    (431), the network's rate (429 past it), then [`shed`]ding past
//!    `max_pending` waiting requests (503 with `Retry-After`), then the handler.
//!
//! Limits come from the `[connections]` table ([`limits`]).

pub mod admission;
mod head;
pub mod limits;
pub mod refusals;
mod shards;
pub mod shed;
pub mod watch;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch as signal;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use admission::{Admission, Refusal, Ticket};
use limits::ConnectionLimits;
use refusals::{Refusals, Shed};
use shards::{MovableTcp, Shards, Threads};
use shed::{Pending, Pressure, shed_response};
use watch::{Activity, Ended, InFlight, Watched};

/// How long open connections get to finish when the server stops.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses up to this size give their admission place back as soon as their
/// head is ready: what they buffer is bounded by the connection's own limits.
const SMALL_RESPONSE: u64 = 64 * 1024;
/// HTTP/2 data buffered per stream ahead of the client's window: one verified piece.
const H2_SEND_BUFFER: usize = 256 * 1024;

/// The request body handlers get: the client's upload, watched for progress.
pub type RequestBody = Watched<Incoming>;
/// The response body the shell sends: the handler's, or its own refusal.
pub type ResponseBody<B> = Watched<Either<B, Full<Bytes>>>;

/// A bound, not yet running, HTTPS server.
pub struct HttpsServer {
    listener: TcpListener,
    tls: TlsAcceptor,
    limits: ConnectionLimits,
    admission: Arc<Admission>,
    pressure: Arc<Pressure>,
    refusals: Arc<Refusals>,
    shards: Shards,
    threads: Threads,
}

impl std::fmt::Debug for HttpsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsServer")
            .field("listener", &self.listener)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// How loaded a server is: the connections it has open (what a node reports)
/// and how pressed it is (what its background work yields to).
#[derive(Debug, Clone)]
pub struct Load {
    admission: Arc<Admission>,
    pressure: Arc<Pressure>,
    refusals: Arc<Refusals>,
}

impl Load {
    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.admission.open()
    }

    /// How pressed the server is.
    pub fn pressure(&self) -> &Arc<Pressure> {
        &self.pressure
    }

    /// Connections refused and requests shed so far, by reason.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }
}

/// What every connection task shares.
struct Shared<H> {
    tls: TlsAcceptor,
    limits: ConnectionLimits,
    admission: Arc<Admission>,
    pressure: Arc<Pressure>,
    refusals: Arc<Refusals>,
    shards: Shards,
    handler: H,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl HttpsServer {
    /// Binds the listening socket and starts the HTTP/2 connections' threads.
    pub async fn bind(
        listen: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        limits: ConnectionLimits,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let (shards, threads) = shards::start().await?;
        Ok(Self {
            listener,
            tls: TlsAcceptor::from(tls),
            admission: Admission::new(limits.clone()),
            pressure: Pressure::new(limits.max_pending),
            refusals: Arc::default(),
            shards,
            threads,
            limits,
        })
    }

    /// A gauge of this server's load.
    pub fn load(&self) -> Load {
        Load {
            admission: self.admission.clone(),
            pressure: self.pressure.clone(),
            refusals: self.refusals.clone(),
        }
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves requests with `handler` (given each request and the client's address)
    /// until `shutdown` completes, then lets open connections finish for a while.
    pub async fn serve<H, F, B>(self, handler: H, shutdown: impl Future<Output = ()>)
    where
        H: Fn(Request<RequestBody>, SocketAddr) -> F + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let shared = Arc::new(Shared {
            h1: h1_builder(&self.limits),
            h2: h2_builder(&self.limits),
            tls: self.tls,
            limits: self.limits,
            admission: self.admission,
            pressure: self.pressure,
            refusals: self.refusals,
            shards: self.shards,
            handler,
        });
        let (stop, stopping) = signal::channel(false);
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
            match shared.admission.admit(peer.ip(), Instant::now()) {
                Ok(ticket) => {
                    let (shared, stopping) = (shared.clone(), stopping.clone());
                    tokio::spawn(connection(shared, tcp, peer, ticket, stopping));
                }
                Err(why) => shared.refusals.connection(why),
            }
        }
        let open = shared.admission.open();
        tracing::info!(open, "stopping: letting open connections finish");
        let _ = stop.send(true);
        drop(stopping);
        if tokio::time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), stop.closed())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the drain timeout");
        }
        drop(self.threads);
    }
}

/// One connection, from the TLS handshake to its end; its place is given back
/// when the ticket drops.
async fn connection<H, F, B>(
    shared: Arc<Shared<H>>,
    tcp: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    mut stopping: signal::Receiver<bool>,
) where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = tcp.set_nodelay(true);
    let deadlines = shared.limits.deadlines;
    let tcp = MovableTcp::new(tcp);
    let mut stream = match tokio::time::timeout(deadlines.handshake, shared.tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
    };
    // The first-bytes deadline counts from the handshake, for the wait below
    // and for the watchdog after it alike.
    let activity = Activity::new();
    let started = tokio::select! {
        started = first_bytes(&mut stream, deadlines.first_bytes) => started,
        _ = stopping.wait_for(|stop| *stop) => false,
    };
    if !started {
        return tracing::debug!(%peer, "no request before the first-bytes deadline");
    }
    let is_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    if is_h2 {
        let shards = shared.clone();
        shards.shards.spawn(async move {
            match stream.get_mut().0.move_here() {
                Ok(()) => {
                    serve_requests(shared, stream, is_h2, peer, ticket, stopping, activity).await
                }
                Err(e) => tracing::warn!(%peer, error = %e, "could not move a connection"),
            }
        });
    } else {
        // Boxed: held inline, the serving state (hyper's connection) would
        // size the future of every connection, silent ones included.
        Box::pin(serve_requests(
            shared, stream, is_h2, peer, ticket, stopping, activity,
        ))
        .await;
    }
}

/// Serves the requests of a connection whose first bytes came, until it ends.
async fn serve_requests<H, F, B>(
    shared: Arc<Shared<H>>,
    stream: TlsStream<MovableTcp>,
    is_h2: bool,
    peer: SocketAddr,
    _ticket: Ticket,
    mut stopping: signal::Receiver<bool>,
    activity: Arc<Activity>,
) where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let deadlines = shared.limits.deadlines;
    let service_activity = activity.clone();
    let service_shared = shared.clone();
    let service = service_fn(move |req| {
        let answer = answer(&service_shared, &service_activity, req, peer);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let stop = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let io = TokioIo::new(stream);
    let ended = if is_h2 {
        let conn = shared.h2.serve_connection(io, service);
        watch::drive(conn, &activity, &deadlines, stop).await
    } else {
        let conn = shared.h1.serve_connection(io, service);
        watch::drive(conn, &activity, &deadlines, stop).await
    };
    if matches!(ended, Ended::Stalled | Ended::Idle) {
        tracing::debug!(%peer, ?ended, "connection closed by its deadline");
    }
}

/// Waits, within `deadline`, until the client has sent something after the
/// handshake: a silent connection costs its TLS state and no HTTP buffers.
/// Bytes that came with the handshake are already inside rustls, where the
/// socket would never signal them again.
async fn first_bytes(stream: &mut TlsStream<MovableTcp>, deadline: Duration) -> bool {
    let (tcp, tls) = stream.get_mut();
    if tls
        .process_new_packets()
        .is_ok_and(|state| state.plaintext_bytes_to_read() > 0 || state.peer_has_closed())
    {
        return true;
    }
    matches!(
        tokio::time::timeout(deadline, tcp.readable()).await,
        Ok(Ok(()))
    )
}

/// Admits one request and runs the handler, or answers a refusal at once.
fn answer<H, F, B>(
    shared: &Shared<H>,
    activity: &Arc<Activity>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> impl Future<Output = Response<ResponseBody<B>>> + use<H, F, B>
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F,
    F: Future<Output = Response<B>>,
    B: hyper::body::Body,
{
    let in_flight = activity.start();
    let uri = req.uri().clone();
    let work = if head::forget_cookies(&uri, req.headers_mut(), shared.limits.max_header_bytes) {
        admit(shared, req, peer, &in_flight)
    } else {
        shared.refusals.request(Shed::HeadTooLarge);
        Err(Box::new(head::too_large()))
    };
    async move {
        match work {
            Ok((answer, pending, place)) => {
                let response = answer.await;
                drop(pending);
                // A small answer buffers nothing worth counting: its place goes
                // back now; a large one keeps it until its body ends.
                let large = hyper::body::Body::size_hint(response.body())
                    .upper()
                    .is_none_or(|len| len > SMALL_RESPONSE);
                let place = large.then_some(place);
                response.map(|body| Watched::response(Either::Left(body), in_flight).holding(place))
            }
            Err(refusal) => {
                (*refusal).map(|body| Watched::response(Either::Right(body), in_flight))
            }
        }
    }
}

/// An answer given at once, without the handler (boxed: it is large).
type Refused = Box<Response<Full<Bytes>>>;

/// Takes the request's places (its network's rate and share, the server's
/// pending count) and starts the handler, or answers why not.
fn admit<H, F>(
    shared: &Shared<H>,
    req: Request<Incoming>,
    peer: SocketAddr,
    in_flight: &InFlight,
) -> Result<(Pin<Box<F>>, Pending, Ticket), Refused>
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F,
{
    let place = shared.admission.request(peer.ip(), Instant::now());
    let pending = place.as_ref().ok().and_then(|_| shared.pressure.enter());
    match (place, pending) {
        (Ok(place), Some(pending)) => {
            let mut req = req.map(|body| Watched::request(body, in_flight.progress()));
            req.extensions_mut().insert(in_flight.progress());
            // Boxed once here: every layer above (this answer, hyper's
            // service, the task of an HTTP/2 stream) holds the handler's
            // future by value and would copy all of it at each move; a
            // handler's future easily takes kilobytes.
            Ok((Box::pin((shared.handler)(req, peer)), pending, place))
        }
        (refused, _) => {
            shared.refusals.request(
                refused
                    .as_ref()
                    .map_or_else(|e| Shed::of(*e), |_| Shed::Overloaded),
            );
            let (status, why, wait) = match refused {
                Err(Refusal::TooFast(wait)) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many requests from your network",
                    wait,
                ),
                Err(Refusal::NetworkBusy) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many requests from your network at once",
                    shared.limits.retry_after,
                ),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many requests at once",
                    shared.limits.retry_after,
                ),
            };
            Err(Box::new(shed_response(status, why, wait, req.headers())))
        }
    }
}

fn h1_builder(limits: &ConnectionLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.deadlines.header_read)
        .max_buf_size(head::h1_buffer(limits));
    builder
}

fn h2_builder(limits: &ConnectionLimits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams)
        .max_send_buf_size(H2_SEND_BUFFER)
        // Pings find peers that vanished without closing the connection; they
        // do not keep an idle one open (the watchdog counts requests, not pings).
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_header_list_size(head::h2_header_list(limits));
    builder
}
