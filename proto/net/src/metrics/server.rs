//! The `/metrics` server: plain HTTP/1.1 on an address of its own, answering
//! `GET /metrics` with the registry encoded at that moment, and 404 to
//! anything else. It is meant for one monitoring system, so it is small and
//! hardened like the rest ([`Limits`]): a few connections at once (others are
//! closed as they arrive), a deadline on request heads and idleness, and a
//! bound on a connection's whole life, so a client that stops reading frees
//! its place.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The caps of a metrics server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed as they arrive.
    pub max_connections: usize,
    /// Connections served at once from one address: one client cannot take
    /// every place and starve the monitoring system.
    pub per_address: usize,
    /// A request head must arrive within this; between two requests, a
    /// connection stays open this long (hyper counts the head's deadline from
    /// the end of the previous response).
    pub header_read: Duration,
    /// A connection's whole life, whatever it does.
    pub life: Duration,
}

impl Default for Limits {
    /// Room for a monitoring system or two, and an operator's curl.
    fn default() -> Self {
        Self {
            max_connections: 16,
            per_address: 4,
            header_read: Duration::from_secs(3),
            life: Duration::from_secs(60),
        }
    }
}
/// Request heads larger than this are refused (hyper's floor is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// What Prometheus expects of OpenMetrics text.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A bound, not yet running, metrics server.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    limits: Limits,
}

impl MetricsServer {
    /// Binds the listening socket.
    pub async fn bind(listen: SocketAddr) -> std::io::Result<Self> {
        Self::bind_with(listen, Limits::default()).await
    }

    /// Binds the listening socket, with other caps.
    pub async fn bind_with(listen: SocketAddr, limits: Limits) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(listen).await?,
            limits,
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Binds `listen` when metrics are configured.
    pub async fn bind_configured(listen: Option<SocketAddr>) -> anyhow::Result<Option<Self>> {
        let Some(addr) = listen else { return Ok(None) };
        let server = Self::bind(addr).await;
        Ok(Some(
            server.with_context(|| format!("binding metrics on {addr}"))?,
        ))
    }

    /// ` metrics=http://ADDR`, as the daemons' listening lines end.
    pub fn listening_word(server: Option<&Self>) -> std::io::Result<String> {
        server.map_or(Ok(String::new()), |s| {
            Ok(format!(" metrics=http://{}", s.local_addr()?))
        })
    }

    /// Serves `registry` in a task of its own until the task is aborted.
    pub fn spawn(self, registry: Registry) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.serve(Arc::new(registry), std::future::pending()))
    }

    /// Answers scrapes of `registry` until `shutdown` completes; open
    /// connections are dropped then (a scrape is short and can be retried).
    pub async fn serve(self, registry: Arc<Registry>, shutdown: impl Future<Output = ()>) {
        let limits = self.limits;
        let places = Arc::new(Semaphore::new(limits.max_connections));
        let mut per_address: HashMap<IpAddr, usize> = HashMap::new();
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let (tcp, from) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, from)) => (tcp, from.ip()),
                    Err(e) => {
                        // Out of file descriptors, usually: back off instead of spinning.
                        tracing::warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                Some(ended) = connections.join_next() => {
                    if let Ok(ip) = ended
                        && let Some(n) = per_address.get_mut(&ip)
                    {
                        *n -= 1;
                        if *n == 0 {
                            per_address.remove(&ip);
                        }
                    }
                    continue;
                }
                () = &mut shutdown => break,
            };
            // No place: the socket is dropped, which closes it.
            let held = per_address.entry(from).or_default();
            if *held >= limits.per_address {
                continue;
            }
            let Ok(place) = places.clone().try_acquire_owned() else {
                continue;
            };
            *held += 1;
            let registry = registry.clone();
            connections.spawn(async move {
                let served = connection(tcp, registry, limits.header_read);
                let _ = tokio::time::timeout(limits.life, served).await;
                drop(place);
                from
            });
        }
    }
}

async fn connection(tcp: TcpStream, registry: Arc<Registry>, header_read: Duration) {
    let service = service_fn(move |req: Request<Incoming>| {
        let wanted = req.method() == Method::GET && req.uri().path() == "/metrics";
        let registry = registry.clone();
        async move { Ok::<_, Infallible>(answer(registry, wanted).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .max_buf_size(MAX_HEAD_BYTES);
    if let Err(e) = builder.serve_connection(TokioIo::new(tcp), service).await {
        tracing::debug!(error = %e, "metrics connection ended");
    }
}

/// `GET /metrics` (`wanted`): the registry as it is now; anything else: 404.
async fn answer(registry: Arc<Registry>, wanted: bool) -> Response<Full<Bytes>> {
    if !wanted {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at GET /metrics\n",
        );
    }
    // Collectors read the daemon's state, which may mean the disk: on a
    // blocking thread, at most one per connection place.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).map(|()| text)
    })
    .await;
    let text = match encoded {
        Ok(Ok(text)) => text,
        failed => {
            tracing::error!(?failed, "encoding metrics failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn ask(addr: SocketAddr, request: &str) -> std::io::Result<String> {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer)).await??;
        Ok(answer)
    }

    const SMALL: Limits = Limits {
        max_connections: 4,
        per_address: 2,
        header_read: Duration::from_secs(3),
        life: Duration::from_secs(3),
    };

    async fn server() -> anyhow::Result<(SocketAddr, Counter, tokio::sync::oneshot::Sender<()>)> {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("cartable_test_things", "Things", counter.clone());
        let server = MetricsServer::bind_with("127.0.0.1:0".parse()?, SMALL).await?;
        let addr = server.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(server.serve(Arc::new(registry), async {
            let _ = stopped.await;
        }));
        Ok((addr, counter, stop))
    }

    #[tokio::test]
    async fn metrics_are_answered_at_get_metrics_only() -> anyhow::Result<()> {
        let (addr, counter, _stop) = server().await?;
        counter.inc_by(7);
        let close = "Host: x\r\nConnection: close\r\n\r\n";
        let ok = ask(addr, &format!("GET /metrics HTTP/1.1\r\n{close}")).await?;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("cartable_test_things_total 7"), "{ok}");
        assert!(ok.trim_end().ends_with("# EOF"), "{ok}");
        for other in [
            "GET / HTTP/1.1",
            "POST /metrics HTTP/1.1",
            "GET /metrics/x HTTP/1.1",
        ] {
            let answer = ask(addr, &format!("{other}\r\n{close}")).await?;
            assert!(answer.starts_with("HTTP/1.1 404"), "{other}: {answer}");
            assert!(
                !answer.contains("cartable_test_things"),
                "{other}: {answer}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn silent_connections_are_closed_and_places_are_capped() -> anyhow::Result<()> {
        let (addr, _, _stop) = server().await?;
        let from = |last: u8| async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from(([127, 0, 0, last], 0)))?;
            socket.connect(addr).await
        };
        let mut byte = [0u8; 1];
        let mut silent = Vec::new();
        for (i, last) in [1, 1, 1, 2, 2, 3].into_iter().enumerate() {
            let mut tcp = from(last).await?;
            // Let the server take it before the next one knocks.
            tokio::time::sleep(Duration::from_millis(50)).await;
            // The third from one address, and any past the total, close at once.
            let kept = i != 2 && i != 5;
            let read = tokio::time::timeout(Duration::from_millis(150), tcp.read(&mut byte)).await;
            let closed = matches!(read, Ok(Ok(0)) | Ok(Err(_)));
            assert_eq!(
                closed, !kept,
                "connection {i} from 127.0.0.{last}: {read:?}"
            );
            silent.push(tcp);
        }
        let closed = tokio::time::timeout(SMALL.header_read * 4, silent[0].read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "header deadline: {closed:?}"
        );
        drop(silent);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ok = ask(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await?;
        assert!(ok.starts_with("HTTP/1.1 200"), "places came back: {ok}");
        Ok(())
    }
}
