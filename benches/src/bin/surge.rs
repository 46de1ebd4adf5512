//! The 8:00 surge and the flood from abroad, against a release `cartable-node`
//! pinned to core 0 while this generator runs pinned to core 1.
//!
//! Phases, each reported on its own line and summed up at the end:
//! 1. `idle`: 10,000 silent TLS connections from ten permitted /24s; the node's
//!    resident memory with them (goal ≤ 256 MiB).
//! 2. `capacity`: closed loop, 64 streams over 200 HTTP/2 connections from 200
//!    networks, on a 16 KiB lesson file: the node's requests per second.
//! 3. `overload`, with the node held to a quarter of its core (`--node-cpu`, a
//!    cgroup quota of 1 ms per 4 ms): a request costs this generator about
//!    what it costs the node, so one generator core can offer 3× only a node
//!    with less than a core. Over HTTP/1.1 as `oha -q` sends it (50
//!    connections, each one request at a time), then over HTTP/2 (200
//!    connections, any number of streams): the capacity (closed loop), then
//!    rounds of open loop at 3× it (`overload`) interleaved with 0.3×
//!    (`unloaded`); the node stays up, p99 of admitted requests against
//!    `unloaded` (goal ≤ 2×), p99 of shed answers (goal ≤ 5 ms), peak memory.
//! 4. `flood` (rounds, interleaved with `pupils`): pupils from their own
//!    networks at 0.2× capacity alone, then with a closed-loop flood from one
//!    /24 at the generator's maximum; the pupils' successes (goal ≥ 0.95 of
//!    alone) and p99 (goal ≤ 2× alone).
//!
//! `cargo run --release -p cartable-benches --bin surge [-- --rounds N --secs S --node-cpu F]`
//! (as root, for the quota)

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cartable_benches::process::Server;
use cartable_benches::quota::CpuQuota;
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
type Sample = (u16, Duration);
/// The status of a request the generator was too late to send.
const NOT_SENT: u16 = 1;
/// How late the generator may be with a request and still send it.
const GENERATOR_SLACK: Duration = Duration::from_millis(5);
/// Requests of the generator's own in flight beyond which it sends no more.
const GENERATOR_OUTSTANDING: usize = 4096;
/// HTTP/1.1 connections of the overload phase: `oha`'s default.
const OHA_CONNECTIONS: u8 = 50;
/// The share of its core the node gets in the overload phase, so that the
/// generator's one core can offer three times what the node serves.
const NODE_CPU: f64 = 0.25;

/// Which HTTP a connection speaks (negotiated by ALPN).
#[derive(Debug, Clone, Copy)]
enum Http {
    H1,
    H2,
}

/// How to reach the node under test.
#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    tls: TlsConnector,
    tls_h1: TlsConnector,
    path: String,
}

fn main() -> Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let args: Vec<String> = std::env::args().collect();
    let (rounds, secs) = (flag(&args, "--rounds", 3)?, flag(&args, "--secs", 5)?);
    let node_cpu = flag(&args, "--node-cpu", NODE_CPU)?;
    pin_self_to_core(1)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(run(rounds as usize, Duration::from_secs(secs), node_cpu))
}

/// The value after `name` on the command line, or `default`.
fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(args.get(i + 1).context("a value")?.parse()?),
        None => Ok(default),
    }
}

async fn run(rounds: usize, secs: Duration, node_cpu: f64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (node, target) = start_node(dir.path())?;
    let base = rss_kib(node.pid())?;
    let held = idle_phase(&target, 10_000).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle, idle_rss) = (held.len(), rss_kib(node.pid())?);
    drop(held);
    println!(
        "idle: {} connections open, node RSS {} MiB ({} MiB before)",
        idle,
        idle_rss / 1024,
        base / 1024
    );
    let capacity = closed_loop(&target, &sources(20, 200), 64, secs).await?;
    let cap_rate = ok_rate(&capacity, secs);
    println!("capacity: {cap_rate:.0} req/s (closed loop, 64 streams)");
    let overloads = {
        let _held = CpuQuota::hold(node.pid(), node_cpu)?;
        println!("overload: the node held to {node_cpu} of its core");
        let mut overloads = Vec::new();
        for http in [Http::H1, Http::H2] {
            overloads.push(overload_rounds(&target, http, rounds, secs, node.pid()).await?);
        }
        overloads
    };
    let alive = closed_loop(&target, &sources(240, 1), 1, Duration::from_secs(1)).await?;
    let (mut alone, mut flooded) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let pupils = sources(2, 16);
        let quiet = open_loop(&target, &pupils, cap_rate * 0.2, secs).await?;
        let flood = tokio::spawn({
            let target = target.clone();
            async move { closed_loop(&target, &sources(1, 1).repeat(64), 256, secs).await }
        });
        let busy = open_loop(&target, &pupils, cap_rate * 0.2, secs).await?;
        let flood = flood.await??;
        println!(
            "round {round}: pupils alone {} | pupils with flood {} | flood {}",
            summary(&quiet, secs),
            summary(&busy, secs),
            summary(&flood, secs)
        );
        alone.push(quiet);
        flooded.push(busy);
    }
    report(&overloads, &alone, &flooded, &alive);
    drop(node);
    Ok(())
}

/// The overload phase's rounds over one protocol.
struct Overload {
    http: Http,
    unloaded: Vec<Vec<Sample>>,
    overload: Vec<Vec<Sample>>,
    peak_kib: u64,
}

/// The node's capacity over `http` (closed loop), then rounds of open-loop
/// traffic at 0.3× (`unloaded`) and 3× (`overload`) of it.
async fn overload_rounds(
    target: &Endpoint,
    http: Http,
    rounds: usize,
    secs: Duration,
    pid: u32,
) -> Result<Overload> {
    let from = match http {
        Http::H1 => sources(20, OHA_CONNECTIONS),
        Http::H2 => sources(20, 200),
    };
    let capacity = ok_rate(&load(target, http, &from, None, secs).await?, secs);
    println!("{http:?} capacity: {capacity:.0} req/s (closed loop)");
    let mut o = Overload {
        http,
        unloaded: Vec::new(),
        overload: Vec::new(),
        peak_kib: 0,
    };
    for round in 0..rounds {
        let calm = load(target, http, &from, Some(capacity * 0.3), secs).await?;
        let watch = watch_rss(pid);
        let over = load(target, http, &from, Some(capacity * 3.0), secs).await?;
        o.peak_kib = o.peak_kib.max(watch.stop());
        println!(
            "round {round} {http:?}: unloaded {} | overload {}",
            summary(&calm, secs),
            summary(&over, secs)
        );
        o.unloaded.push(calm);
        o.overload.push(over);
    }
    Ok(o)
}

/// Traffic over `http` from `from` for `secs`: open loop at `rate`, or closed
/// loop (64 streams over HTTP/2; one request at a time per HTTP/1.1 connection).
async fn load(
    target: &Endpoint,
    http: Http,
    from: &[IpAddr],
    rate: Option<f64>,
    secs: Duration,
) -> Result<Vec<Sample>> {
    match (http, rate) {
        (Http::H2, Some(rate)) => open_loop(target, from, rate, secs).await,
        (Http::H2, None) => closed_loop(target, from, 64, secs).await,
        (Http::H1, rate) => h1_loop(target, from, rate, secs).await,
    }
}

fn report(
    overloads: &[Overload],
    alone: &[Vec<Sample>],
    flooded: &[Vec<Sample>],
    alive: &[Sample],
) {
    let ratios = |a: &[Vec<Sample>], b: &[Vec<Sample>], f: &dyn Fn(&[Sample], &[Sample]) -> f64| {
        let mut r: Vec<f64> = a.iter().zip(b).map(|(a, b)| f(a, b)).collect();
        r.sort_by(f64::total_cmp);
        (r[r.len() / 2], r[0], r[r.len() - 1])
    };
    let p99_ratio = |base: &[Sample], loaded: &[Sample]| {
        p99(loaded, |s| s == 200).as_secs_f64() / p99(base, |s| s == 200).as_secs_f64()
    };
    let success = |base: &[Sample], loaded: &[Sample]| {
        count(loaded, |s| s == 200) as f64 / count(base, |s| s == 200).max(1) as f64
    };
    let show = |(m, lo, hi): (f64, f64, f64)| format!("{m:.2} (spread {lo:.2}–{hi:.2})");
    println!("\nmedian over rounds (spread):");
    for o in overloads {
        let shed_p99: Vec<f64> = o
            .overload
            .iter()
            .map(|o| p99(o, |s| s == 503 || s == 429).as_secs_f64() * 1000.0)
            .collect();
        println!(
            "  {:?} overload p99 of admitted / unloaded p99: {}",
            o.http,
            show(ratios(&o.unloaded, &o.overload, &p99_ratio))
        );
        println!(
            "  {:?} overload p99 of shed answers, ms: {shed_p99:.2?}",
            o.http
        );
        println!(
            "  {:?} node peak RSS under overload: {} MiB",
            o.http,
            o.peak_kib / 1024
        );
    }
    // Up is answering: a 503 while the last of the overload drains is an
    // answer, a dropped connection or a timeout is not.
    println!(
        "  node up after overload: {} ({} of {} answered 200)",
        alive.iter().all(|(s, _)| *s >= 200) && !alive.is_empty(),
        count(alive, |s| s == 200),
        alive.len()
    );
    println!(
        "  pupils' successes with flood / alone: {}",
        show(ratios(alone, flooded, &success))
    );
    println!(
        "  pupils' p99 with flood / alone: {}",
        show(ratios(alone, flooded, &p99_ratio))
    );
}

/// Addresses 127.0.(first+i).1: each its own client network.
fn sources(first: u8, n: u8) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, first.wrapping_add(i), 1)))
        .collect()
}

async fn tls_from(
    target: &Endpoint,
    source: IpAddr,
    http: Http,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(target.addr).await?;
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
async fn open_loop(
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
async fn h1_loop(
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
async fn closed_loop(
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

/// Silent TLS connections, held.
type Held = Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens `n` silent TLS connections from ten /24s, each under its share.
async fn idle_phase(target: &Endpoint, n: usize) -> Result<Held> {
    let from = sources(100, 10);
    let mut open = Vec::with_capacity(n);
    let mut tries = tokio::task::JoinSet::new();
    for i in 0..n {
        let (target, source) = (target.clone(), from[i % from.len()]);
        tries.spawn(async move { tls_from(&target, source, Http::H2).await });
        if tries.len() >= 64
            && let Some(Ok(Ok(conn))) = tries.join_next().await
        {
            open.push(conn);
        }
    }
    while let Some(done) = tries.join_next().await {
        if let Ok(Ok(conn)) = done {
            open.push(conn);
        }
    }
    Ok(open)
}

fn count(samples: &[Sample], status: impl Fn(u16) -> bool) -> usize {
    samples.iter().filter(|(s, _)| status(*s)).count()
}

fn p99(samples: &[Sample], status: impl Fn(u16) -> bool) -> Duration {
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

fn ok_rate(samples: &[Sample], secs: Duration) -> f64 {
    count(samples, |s| s == 200) as f64 / secs.as_secs_f64()
}

fn summary(samples: &[Sample], secs: Duration) -> String {
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

/// Samples a process's memory every 100 ms until stopped; gives the peak.
struct RssWatch {
    peak: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn stop(self) -> u64 {
        self.task.abort();
        *self.peak.lock().unwrap()
    }
}

fn watch_rss(pid: u32) -> RssWatch {
    let peak = Arc::new(Mutex::new(0));
    let seen = peak.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(rss) = rss_kib(pid) {
                let mut p = seen.lock().unwrap();
                *p = (*p).max(rss);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    RssWatch { peak, task }
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no value")?
        .parse()?)
}

fn pin_self_to_core(core: u32) -> Result<()> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset failed");
    }
    Ok(())
}

/// Builds nothing: expects `target/release/cartable-node` (cargo run --release
/// builds it with this binary's workspace). Starts it on core 0 with a 16 KiB
/// lesson file.
fn start_node(dir: &Path) -> Result<(Server, Endpoint)> {
    let binary = release_node()?;
    let lesson = dir.join("lesson");
    std::fs::create_dir_all(&lesson)?;
    let small: Vec<u8> = (0..16 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(lesson.join("small.bin"), small)?;
    let data = dir.join("data");
    // Idle connections are held for the measurement, not cut at 10 s.
    let config = dir.join("node.toml");
    std::fs::write(&config, "[connections]\nfirst_bytes_timeout_secs = 60\n")?;
    let add = Command::new(&binary)
        .arg("--data-dir")
        .arg(&data)
        .arg("add")
        .arg(&lesson)
        .output()?;
    anyhow::ensure!(
        add.status.success(),
        "add: {}",
        String::from_utf8_lossy(&add.stderr)
    );
    let id = String::from_utf8(add.stdout)?
        .lines()
        .next()
        .context("no id")?
        .to_owned();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"])
        .arg(&binary)
        .arg("--data-dir")
        .arg(&data)
        .arg("--config")
        .arg(&config)
        .args(["serve", "--https", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
        .env("CARTABLE_LOG", "error");
    let node = Server::spawn(&mut cmd, "cartable-node listening", Duration::from_secs(30))?;
    let https = node
        .field("https")
        .context("no https= in the listening line")?;
    let addr: SocketAddr = https.trim_start_matches("https://").parse()?;
    let cert = CertificateDer::from_pem_file(data.join("tls/cert.pem"))?;
    let mut config = (*Pin::Der(cert).client_config()?).clone();
    let mut h1 = config.clone();
    h1.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.alpn_protocols = vec![b"h2".to_vec()];
    let endpoint = Endpoint {
        addr,
        tls: TlsConnector::from(Arc::new(config)),
        tls_h1: TlsConnector::from(Arc::new(h1)),
        path: format!("/b/{id}/small.bin"),
    };
    Ok((node, endpoint))
}

fn release_node() -> Result<PathBuf> {
    let path = cartable_benches::target_dir().join("release/cartable-node");
    anyhow::ensure!(
        path.exists(),
        "{} missing: cargo build --release -p cartable-node first",
        path.display()
    );
    Ok(path)
}
