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
//!    networks at 0.2× capacity alone, then beside a flood from one /24 at
//!    0.5× capacity (`--flood`; open loop over 64 connections); the pupils'
//!    successes (goal ≥ 0.95 of alone) and p99 (goal ≤ 2× alone).
//!
//! `cargo run --release -p cartable-benches --bin surge [-- --rounds N --secs S --node-cpu F --flood F]`
//! (as root, for the quota)

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use cartable_benches::browsers::{
    Endpoint, Http, Sample, closed_loop, count, h1_loop, ok_rate, open_loop, p99, pin_self_to_core,
    sources, summary, tls_from,
};
use cartable_benches::process::Server;
use cartable_benches::quota::CpuQuota;

/// HTTP/1.1 connections of the overload phase: `oha`'s default.
const OHA_CONNECTIONS: u8 = 50;
/// The flood from one /24, as a multiple of the node's capacity (`--flood`):
/// two and a half times all the pupils' requests. The generator's one core
/// sends both, and a request costs it about what it costs the node: a closed
/// loop (refused at ~95k requests/s on a 50k node) or a flood at the node's
/// whole capacity saturate it, and the pupils' latency measured then is the
/// generator's own queue.
const FLOOD: f64 = 0.5;
/// The flood's HTTP/2 connections, all from one /24.
const FLOOD_CONNECTIONS: usize = 64;
/// The share of its core the node gets in the overload phase, so that the
/// generator's one core can offer three times what the node serves.
const NODE_CPU: f64 = 0.25;

fn main() -> Result<()> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let args: Vec<String> = std::env::args().collect();
    let (rounds, secs) = (flag(&args, "--rounds", 3)?, flag(&args, "--secs", 5)?);
    let node_cpu = flag(&args, "--node-cpu", NODE_CPU)?;
    let flood = flag(&args, "--flood", FLOOD)?;
    pin_self_to_core(1)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let secs = Duration::from_secs(secs);
    runtime.block_on(run(rounds as usize, secs, node_cpu, flood))
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

async fn run(rounds: usize, secs: Duration, node_cpu: f64, flood: f64) -> Result<()> {
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
            let from = sources(1, 1).repeat(FLOOD_CONNECTIONS);
            async move { open_loop(&target, &from, cap_rate * flood, secs).await }
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
    let endpoint = Endpoint::new(addr, &data, format!("/b/{id}/small.bin"))?;
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
