//! Child processes of the benchmarks: their wall-clock and CPU time, and servers
//! that announce themselves with one line on stdout.
//!
//! CPU times come from `/proc` (clock ticks, 10 ms on Linux), so that no unsafe
//! `getrusage` is needed: a running process's own `utime` and `stime`, and, for
//! a child that has exited, the growth of this process's `cutime` and `cstime`
//! across the `wait` that reaps it.

use std::io::{BufRead, BufReader, Read};
use std::ops::Add;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`; 100 on
/// every Linux this runs on, which is also the fallback).
fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// CPU time, split as the kernel accounts it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cpu {
    /// In user space.
    pub user: Duration,
    /// In the kernel.
    pub system: Duration,
}

impl Cpu {
    /// User + system.
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// The growth from `earlier` to `self`, never negative.
    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

impl Add for Cpu {
    type Output = Cpu;
    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / ticks_per_second() as f64)
}

/// Two consecutive tick counters of `/proc/{who}/stat`, user time at field
/// `field` (1-based, as in proc(5)) and system time right after it.
fn stat_time(who: &str, field: usize) -> Result<Cpu> {
    let path = format!("/proc/{who}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces; the fields after it do not.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (the state).
    let tick = |i: usize| -> Result<Duration> {
        let value = fields
            .get(i - 3)
            .with_context(|| format!("{path}: no field {i}"))?;
        Ok(ticks_to_duration(
            value
                .parse()
                .with_context(|| format!("{path}: field {i}"))?,
        ))
    };
    Ok(Cpu {
        user: tick(field)?,
        system: tick(field + 1)?,
    })
}

/// CPU time so far of the running process `pid`.
pub fn process_cpu(pid: u32) -> Result<Cpu> {
    stat_time(&pid.to_string(), 14)
}

/// CPU time of every child this process has reaped so far.
pub fn reaped_children_cpu() -> Result<Cpu> {
    stat_time("self", 16)
}

/// What one run of a command to completion took.
#[derive(Debug)]
pub struct Timed {
    /// Its exit status and what it printed.
    pub output: Output,
    /// From spawn to exit.
    pub wall: Duration,
    /// Its CPU time (with any children it reaped).
    pub cpu: Cpu,
}

/// Runs `cmd` to completion, capturing its output; fails if it fails. Nothing
/// else may be reaped meanwhile, or its CPU time would be counted here.
pub fn run_timed(cmd: &mut Command, what: &str) -> Result<Timed> {
    let before = reaped_children_cpu()?;
    let start = Instant::now();
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    let wall = start.elapsed();
    let cpu = reaped_children_cpu()?.since(before);
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(Timed { output, wall, cpu })
}

/// `cartable-node --data-dir DIR`, logging warnings only.
pub fn node_command(node: &Path, data_dir: &Path) -> Command {
    let mut cmd = Command::new(node);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .env("CARTABLE_LOG", "warn");
    cmd
}

/// The first line `cmd` printed, once it succeeded.
pub fn printed_first(cmd: &mut Command, what: &str) -> Result<String> {
    let out = run_timed(cmd, what)?.output;
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .next()
        .with_context(|| format!("{what} printed nothing"))?
        .to_owned())
}

/// A long-running child that printed one line when ready; killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// The line it printed.
    pub line: String,
}

impl Server {
    /// Spawns `cmd` and waits up to `limit` for a first line on stdout that
    /// starts with `prefix`. The rest of its stdout is drained in the background
    /// so that it never blocks on a full pipe; stderr is inherited.
    pub fn spawn(cmd: &mut Command, prefix: &str, limit: Duration) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut server = Self {
            child,
            line: String::new(),
        };
        match first_line(stdout, limit) {
            Some(line) if line.starts_with(prefix) => server.line = line,
            Some(line) => bail!("expected a line starting with {prefix:?}, got {line:?}"),
            None => bail!("{cmd:?} printed no line within {limit:?}"),
        }
        Ok(server)
    }

    /// The value of `name=VALUE` in its line.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    }

    /// `ID@ADDR` of a node (or ceiling) that printed `id=` and `quic=`.
    pub fn peer_addr(&self) -> Result<String> {
        Ok(format!(
            "{}@{}",
            self.field("id").context("no id=")?,
            self.field("quic").context("no quic=")?
        ))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its CPU time so far.
    pub fn cpu(&self) -> Result<Cpu> {
        process_cpu(self.child.id())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first line of `stream` (without its newline), or `None` if none comes
/// within `limit`; then keeps reading the stream to its end on that thread.
fn first_line(stream: impl Read + Send + 'static, limit: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        let _ = tx.send(
            read.ok()
                .filter(|n| *n > 0)
                .map(|_| line.trim_end().to_owned()),
        );
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    rx.recv_timeout(limit).ok().flatten()
}

/// CPU time the whole machine has spent busy so far, all cores together, from
/// `/proc/stat`: user and nice as user time; system, irq, softirq and steal as
/// system time. Across a measurement, this minus the measured processes' CPU
/// time is what everything else on the machine took meanwhile: other processes
/// (mostly user time) and kernel threads such as writeback and the journal,
/// which may be working for the measured processes (system time only).
pub fn machine_busy() -> Result<Cpu> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().context("/proc/stat: a field is not a number"))
        .collect::<Result<_>>()?;
    ensure!(ticks.len() >= 8, "/proc/stat: expected 8 cpu fields");
    // user nice system idle iowait irq softirq steal
    Ok(Cpu {
        user: ticks_to_duration(ticks[0] + ticks[1]),
        system: ticks_to_duration(ticks[2] + ticks[5] + ticks[6] + ticks[7]),
    })
}
