//! Why a node's `SCHED_IDLE` threads never touch its sled index: a browser's
//! lookup beside another thread's lookups, while a writer commits.
//!
//! Core 0 holds a thread standing for browsers served from memory (busy, no
//! index), a thread standing for the copies' lookups (a loop of `get`s), and
//! the measuring thread: one `get` a millisecond, a browser's cold lookup.
//! Core 1 holds a writer standing for a fetch's commit: one `apply_batch`
//! every 10 ms. sled's reads and writes share one process-wide lock, and a
//! waiting writer makes new readers queue. Rounds alternate the copies' thread
//! under `SCHED_IDLE`, under the normal policy, and absent.
//!
//! `cargo run --release -p cartable-benches --bin idle-lock-inversion [-- --rounds N --secs S]`
//! (needs `taskset` and `chrt`, util-linux, and two cores)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cartable_benches::browsers::run_quietly;

const KEYS: u32 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Copies {
    Idle,
    Normal,
    Absent,
}

fn main() -> Result<()> {
    let (mut rounds, mut secs) = (3, 5);
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let value = argv.next().context("a flag without its value")?;
        match flag.as_str() {
            "--rounds" => rounds = value.parse()?,
            "--secs" => secs = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).open()?;
    let tree = db.open_tree("bundles")?;
    for key in 0..KEYS {
        tree.insert(key.to_be_bytes(), &[0u8; 24])?;
    }
    let modes = [Copies::Idle, Copies::Normal, Copies::Absent];
    let mut results: Vec<(Copies, Lookups)> = Vec::new();
    for round in 1..=rounds {
        for copies in modes {
            let lookups = run_round(&tree, copies, Duration::from_secs(secs))?;
            println!("round {round}: copies {copies:?}: {lookups}");
            results.push((copies, lookups));
        }
    }
    println!("\nmedian over rounds of a browser's lookup:");
    for copies in modes {
        let of = |f: fn(&Lookups) -> Duration| {
            let mut v: Vec<_> = results
                .iter()
                .filter(|r| r.0 == copies)
                .map(|r| f(&r.1))
                .collect();
            v.sort();
            v[v.len() / 2]
        };
        let done: Vec<_> = results
            .iter()
            .filter(|r| r.0 == copies)
            .map(|r| r.1.done)
            .collect();
        println!(
            "  copies {copies:?}: p99 {:?}, max {:?}; lookups done per round {done:?} (one a millisecond asked)",
            of(|l| l.p99),
            of(|l| l.max),
        );
    }
    Ok(())
}

/// A browser's lookups in one round.
struct Lookups {
    done: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl std::fmt::Display for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lookups, p50 {:?}, p99 {:?}, max {:?}",
            self.done, self.p50, self.p99, self.max
        )
    }
}

fn run_round(tree: &sled::Tree, copies: Copies, secs: Duration) -> Result<Lookups> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    if copies != Copies::Absent {
        threads.push(looping(&stop, 0, copies == Copies::Idle, {
            let (tree, mut key) = (tree.clone(), 0u32);
            move || {
                let _ = tree.get((key % KEYS).to_be_bytes());
                key = key.wrapping_add(7);
            }
        }));
    }
    threads.push(looping(&stop, 0, false, {
        let mut x = 1u64;
        move || {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }));
    threads.push(looping(&stop, 1, false, {
        let (tree, mut n) = (tree.clone(), 0u32);
        move || {
            let mut batch = sled::Batch::default();
            batch.insert(&(KEYS + n % 100).to_be_bytes()[..], &[1u8; 24][..]);
            let _ = tree.apply_batch(batch);
            n += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    }));
    let measured = std::thread::scope(|s| {
        s.spawn(|| {
            on_core(0, false)?;
            let mut took = Vec::new();
            let end = Instant::now() + secs;
            let mut key = 0u32;
            while Instant::now() < end {
                let start = Instant::now();
                let _ = tree.get((key % KEYS).to_be_bytes());
                took.push(start.elapsed());
                key = key.wrapping_add(13);
                std::thread::sleep(Duration::from_millis(1));
            }
            anyhow::Ok(took)
        })
        .join()
        .expect("the measuring thread")
    });
    stop.store(true, Relaxed);
    for thread in threads {
        thread.join().expect("a round's thread")?;
    }
    let mut took = measured?;
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    Ok(Lookups {
        done: took.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: took[took.len() - 1],
    })
}

/// A thread on `core` (under `SCHED_IDLE` if `idle`) calling `step` until `stop`.
fn looping(
    stop: &Arc<AtomicBool>,
    core: u32,
    idle: bool,
    mut step: impl FnMut() + Send + 'static,
) -> JoinHandle<Result<()>> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        on_core(core, idle)?;
        while !stop.load(Relaxed) {
            step();
        }
        Ok(())
    })
}

/// Pins the calling thread to `core`, and puts it under `SCHED_IDLE` if `idle`.
fn on_core(core: u32, idle: bool) -> Result<()> {
    let link = std::fs::read_link("/proc/thread-self")?;
    let tid = link
        .file_name()
        .and_then(|t| t.to_str())
        .context("/proc/thread-self")?
        .to_owned();
    run_quietly("taskset", &["-p", "-c", &core.to_string(), &tid])?;
    if idle {
        run_quietly("chrt", &["--idle", "-p", "0", &tid])?;
    }
    Ok(())
}
