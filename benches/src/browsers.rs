//! The browsers' side of the load benchmarks: TLS connections from many
//! 127.x client networks to a node, HTTP/1.1 and HTTP/2 requests in open or
//! closed loop, and what their answers show (successes, p99).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cartable_net::pin::Pin;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

/// One answer: its status (0: no answer, [`NOT_SENT`]) and its latency.
pub type Sample = (u16, Duration);
/// The status of a request the generator was too late to send.
pub const NOT_SENT: u16 = 1;
/// How late the generator may be with a request and still send it.
pub const GENERATOR_SLACK: Duration = Duration::from_millis(5);
/// Requests of the generator's own in flight beyond which it sends no more.
pub const GENERATOR_OUTSTANDING: usize = 4096;

/// Which HTTP a connection speaks (negotiated by ALPN).
#[derive(Debug, Clone, Copy)]
pub enum Http {
    H1,
    H2,
}

/// How to reach the node under test.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    tls: TlsConnector,
    tls_h1: TlsConnector,
    pub path: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}{}", self.addr, self.path)
    }
}

impl Endpoint {
    /// A node's HTTPS address, pinned to the certificate in its data folder,
    /// asking for `path`.
    pub fn new(addr: SocketAddr, data_dir: &Path, path: String) -> Result<Self> {
        let cert = CertificateDer::from_pem_file(data_dir.join("tls/cert.pem"))?;
        let mut config = (*Pin::Der(cert).client_config()?).clone();
        let mut h1 = config.clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            addr,
            tls: TlsConnector::from(Arc::new(config)),
            tls_h1: TlsConnector::from(Arc::new(h1)),
            path,
        })
    }
}

/// Addresses 127.0.(first+i).1: each its own client network.
pub fn sources(first: u8, n: u8) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, first.wrapping_add(i), 1)))
        .collect()
}

pub async fn tls_from(
    target: &Endpoint,
    source: IpAddr,
    http: Http,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(target.addr).await?;
    // As browsers do: with Nagle on, a small request written while an earlier
    // one is unacknowledged waits for the node's delayed ACK (tens of ms).
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = match http {
        Http::H1 => &target.tls_h1,
        Http::H2 => &target.tls,
    };
    Ok(tls.connect(name, tcp).await?)
}

async fn h2_from(target: &Endpoint, source: IpAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let tls = tls_from(target, source, Http::H2).await?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

async fn h1_from(target: &Endpoint, source: IpAddr) -> Result<http1::SendRequest<Empty<Bytes>>> {
    let tls = tls_from(target, source, Http::H1).await?;
    let (send, conn) = http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// A client connection, of either HTTP version.
enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(SendRequest<Empty<Bytes>>),
}

/// One GET; its latency counts from when our side could send it (an HTTP/2
/// stream open, an HTTP/1.1 connection free), so a generator short of streams
/// (or of CPU) does not charge its own queue to the node.
async fn get(send: &mut Sender, uri: &str) -> Sample {
    let Ok(request) = http::Request::get(uri).body(Empty::new()) else {
        return (0, Duration::ZERO);
    };
    let ready = match send {
        Sender::H1(s) => s.ready().await,
        Sender::H2(s) => s.ready().await,
    };
    if ready.is_err() {
        return (0, Duration::ZERO);
    }
    let sent = Instant::now();
    match send {
        Sender::H1(s) => answered(sent, s.send_request(request)).await,
        Sender::H2(s) => answered(sent, s.send_request(request)).await,
    }
}

/// The status of a response once its body is read (0 if none within 10 s),
/// and the time since `sent`.
async fn answered(
    sent: Instant,
    response: impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
) -> Sample {
    let answer = async {
        let response = response.await.ok()?;
        let status = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        Some(status)
    };
    let status = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    (status, sent.elapsed())
}

/// Requests at `rate` per second for `secs`, each started at its time whatever
/// the answers before it. A request the generator itself is too late for (over
/// 5 ms, or with 4,096 of its own outstanding) is not sent: it is counted as
/// status 1, so a generator short of CPU shows as a lower rate offered, not as
/// the node's latency.
pub async fn open_loop(
    target: &Endpoint,
    from: &[IpAddr],
    rate: f64,
    secs: Duration,
) -> Result<Vec<Sample>> {
    let mut conns = Vec::new();
    for source in from {
        conns.push(h2_from(target, *source).await?);
    }
    let uri = format!("https://{}{}", target.addr, target.path);
    let samples = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0.. {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if due >= started + secs {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        while tasks.try_join_next().is_some() {}
        if due.elapsed() > GENERATOR_SLACK || tasks.len() >= GENERATOR_OUTSTANDING {
            samples.lock().unwrap().push((NOT_SENT, Duration::ZERO));
            continue;
        }
        let (send, uri, samples) = (conns[i % conns.len()].clone(), uri.clone(), samples.clone());
        tasks.spawn(async move {
            let sample = get(&mut Sender::H2(send), &uri).await;
            samples.lock().unwrap().push(sample);
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(Arc::try_unwrap(samples)
        .map_err(|_| anyhow::anyhow!("samples shared"))?
        .into_inner()?)
}

/// HTTP/1.1 as `oha -q` sends it: each connection one request at a time, its
/// share of `rate` due at fixed times, the latency counted from the send. A
/// connection still busy with an earlier answer sends late, as oha does; a
/// request over 5 ms late is not sent (counted as status 1), so what the node
/// kept the client from sending shows as a lower rate sent. With no `rate`,
/// every connection sends again as soon as it is answered (closed loop).
pub async fn h1_loop(
    target: &Endpoint,
    from: &[IpAddr],
    rate: Option<f64>,
    secs: Duration,
) -> Result<Vec<Sample>> {
    let uri = format!("https://{}{}", target.addr, target.path);
    let mut conns = Vec::new();
    for source in from {
        conns.push(h1_from(target, *source).await?);
    }
    let n = conns.len() as f64;
    let started = Instant::now();
    let end = started + secs;
    let mut workers = tokio::task::JoinSet::new();
    for (k, send) in conns.into_iter().enumerate() {
        let (uri, mut send) = (uri.clone(), Sender::H1(send));
        workers.spawn(async move {
            let mut samples = Vec::new();
            for j in 0u64.. {
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64((k as f64 + j as f64 * n) / rate);
                    if due >= end {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    if due.elapsed() > GENERATOR_SLACK {
                        samples.push((NOT_SENT, Duration::ZERO));
                        continue;
                    }
                } else if Instant::now() >= end {
                    break;
                }
                samples.push(get(&mut send, &uri).await);
            }
            samples
        });
    }
    let mut all = Vec::new();
    while let Some(samples) = workers.join_next().await {
        all.extend(samples?);
    }
    Ok(all)
}

/// `streams` requests kept in flight over connections from `from` for `secs`.
pub async fn closed_loop(
    target: &Endpoint,
    from: &[IpAddr],
    streams: usize,
    secs: Duration,
) -> Result<Vec<Sample>> {
    let mut conns = Vec::new();
    for source in from {
        // A flood keeps what it gets: refused connections are part of the test.
        if let Ok(conn) = h2_from(target, *source).await {
            conns.push(conn);
        }
    }
    if conns.is_empty() {
        return Ok(vec![(0, Duration::ZERO)]);
    }
    let uri = format!("https://{}{}", target.addr, target.path);
    let end = Instant::now() + secs;
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..streams {
        let (send, uri) = (conns[i % conns.len()].clone(), uri.clone());
        workers.spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < end {
                samples.push(get(&mut Sender::H2(send.clone()), &uri).await);
            }
            samples
        });
    }
    let mut all = Vec::new();
    while let Some(samples) = workers.join_next().await {
        all.extend(samples?);
    }
    Ok(all)
}

pub fn count(samples: &[Sample], status: impl Fn(u16) -> bool) -> usize {
    samples.iter().filter(|(s, _)| status(*s)).count()
}

pub fn p99(samples: &[Sample], status: impl Fn(u16) -> bool) -> Duration {
    let mut times: Vec<Duration> = samples
        .iter()
        .filter(|(s, _)| status(*s))
        .map(|(_, t)| *t)
        .collect();
    if times.is_empty() {
        return Duration::ZERO;
    }
    times.sort();
    times[(times.len() * 99 / 100).min(times.len() - 1)]
}

pub fn ok_rate(samples: &[Sample], secs: Duration) -> f64 {
    count(samples, |s| s == 200) as f64 / secs.as_secs_f64()
}

pub fn summary(samples: &[Sample], secs: Duration) -> String {
    format!(
        "{:.0} sent/s, {:.0} ok/s, {} ok, {} shed, {} limited, {} failed, p99 ok {:.2} ms, p99 shed {:.2} ms",
        count(samples, |s| s != NOT_SENT) as f64 / secs.as_secs_f64(),
        ok_rate(samples, secs),
        count(samples, |s| s == 200),
        count(samples, |s| s == 503),
        count(samples, |s| s == 429),
        count(samples, |s| s == 0),
        p99(samples, |s| s == 200).as_secs_f64() * 1000.0,
        p99(samples, |s| s == 503 || s == 429).as_secs_f64() * 1000.0,
    )
}

/// Pins every thread of this process to `core`.
pub fn pin_self_to_core(core: u32) -> Result<()> {
    let pid = std::process::id().to_string();
    run_quietly("taskset", &["-a", "-p", "-c", &core.to_string(), &pid])
}

/// Runs `program` (of util-linux) with `args`, its output dropped; an error
/// unless it succeeds.
pub fn run_quietly(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("{program} (util-linux)"))?;
    if !status.success() {
        bail!("{program} {args:?} failed");
    }
    Ok(())
}
