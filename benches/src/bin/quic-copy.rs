//! `quic-copy`: copying a bundle from one `cartable-node` to another over QUIC on
//! loopback, against the ceiling of this stack on this machine, as a ratio
//! measured in one run (goal: at least 0.8); with `--files`, a bundle of many
//! small files, in files per second. `benches/README.md` has the results.
//!
//! - **ceiling** ([`cartable_benches::ceiling`]): this binary re-executed as
//!   `ceiling-server` and `ceiling-client`, one bidirectional stream on the
//!   node's own QUIC endpoint, the client discarding what it reads: no
//!   framing, no verification, no disk write. **ceiling + store**: the same,
//!   the client writing to a file and syncing it once at the end.
//! - **cartable**: node A `add`s the folder and `serve`s; each round, a fresh
//!   data folder for node B (the same key, so A lets it in) and
//!   `cartable-node fetch BUNDLE --from A --json`, which verifies every 16 KiB
//!   group and stores the bundle durably; with `--eatmydata`, the same fetch
//!   again with every fsync a no-op.
//!
//! Senders run on core 0 and receivers on core 1, as on two machines.
//!
//! Each round runs every copy, in an order that reverses from round to round,
//! after one untimed warm-up round; a round during which other processes were
//! busy is run again. Wall time is the receiving process's, from spawn to exit
//! (so all include start-up and the handshake). CPU time is the receiver's
//! (reaped child) and the long-running sender's (`/proc/PID/stat` across the
//! copy). Results go to stdout.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cartable_benches::ceiling;
use cartable_benches::process::{
    Cpu, Server, machine_busy, node_command, printed_first, run_timed,
};
use cartable_benches::{BigFile, FileArgs, median, mib_per_s, target_dir, write_random_file};
use cartable_net::identity::{Identity, KEY_FILE};
use cartable_proto::NodeId;
use tempfile::TempDir;

const USAGE: &str = "usage: quic-copy [OPTIONS]
  --node PATH    the cartable-node binary (default: target/release/cartable-node)
  --size-mib N   size of the generated file (default 1024)
  --file PATH    reuse this file (hard-linked, so it must be on the filesystem of --dir)
  --dir DIR      where the file and the data folders go (default: the workspace's target/)
  --rounds N     rounds of measurement (default 3)
  --files N      instead: a bundle of N small files (e.g. 10000)
  --file-kib K   size of each of those files (default 4)
  --eatmydata    also time the fetch with every fsync a no-op (apt-get install -y eatmydata),
                 to see what durability costs
  --noise-limit C  run a round again when other processes used more than C cores in user
                 space during one of its copies (default 0.15; at most 3x the rounds in all)";

/// Where every sender runs, and every receiver: one core each, as on two
/// machines. Unpinned, a receiver would take the sending node's cores from its
/// copies' threads, which yield to anything else (`SCHED_IDLE`).
const SENDER_CORE: &str = "0";
const RECEIVER_CORE: &str = "1";

/// `program` under `taskset -c core` (which execs it: the same process).
fn on_core(core: &str, program: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", core]).arg(program);
    cmd
}

/// How long a server may take to print its ready line.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Small files per folder of the generated lesson.
const FILES_PER_FOLDER: u64 = 100;
const GIB: f64 = (1u64 << 30) as f64;

/// The benchmark's options.
#[derive(Debug)]
struct Args {
    node: PathBuf,
    /// `--size-mib`, `--file`, `--dir`, `--rounds`.
    common: FileArgs,
    /// `Some(count)` for the many-small-files case.
    files: Option<u64>,
    file_kib: u64,
    /// Also time the fetch with fsync disabled.
    eatmydata: bool,
    /// Cores the rest of the machine may use before a round is run again.
    noise_limit: f64,
}

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.first().map(String::as_str) {
        Some("ceiling-server") => runtime()?.block_on(ceiling::server(&argv[1..])),
        Some("ceiling-client") => runtime()?.block_on(ceiling::client(&argv[1..])),
        _ => {
            let args = parse_args(argv)?;
            match args.files {
                Some(count) => small_files(&args, count),
                None => one_big_file(&args),
            }
        }
    }
}

/// The same runtime as `cartable-node`'s: multi-threaded, one worker per core.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

impl Default for Args {
    fn default() -> Self {
        Self {
            node: target_dir().join("release/cartable-node"),
            common: FileArgs {
                file: None,
                size_mib: 1024,
                dir: target_dir(),
                rounds: 3,
            },
            files: None,
            file_kib: 4,
            eatmydata: false,
            noise_limit: 0.15,
        }
    }
}

fn parse_args(argv: Vec<String>) -> Result<Args> {
    let mut args = Args::default();
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--node" => args.node = value()?.into(),
            "--size-mib" => args.common.size_mib = value()?.parse().context("--size-mib")?,
            "--file" => args.common.file = Some(value()?.into()),
            "--dir" => args.common.dir = value()?.into(),
            "--rounds" => args.common.rounds = value()?.parse().context("--rounds")?,
            "--files" => args.files = Some(value()?.parse().context("--files")?),
            "--file-kib" => args.file_kib = value()?.parse().context("--file-kib")?,
            "--eatmydata" => args.eatmydata = true,
            "--noise-limit" => args.noise_limit = value()?.parse().context("--noise-limit")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let c = &args.common;
    ensure!(
        c.rounds > 0 && c.size_mib > 0 && args.file_kib > 0 && args.files != Some(0),
        "--rounds, --size-mib, --files and --file-kib must be positive"
    );
    ensure!(
        args.node.is_file(),
        "{} is missing: build it with `cargo build --release -p cartable-node`, or pass --node",
        args.node.display()
    );
    Ok(args)
}

// ---------------------------------------------------------------------------
// The two cases.

/// One large file: the ceiling on one stream against a fetch.
fn one_big_file(args: &Args) -> Result<()> {
    let big = BigFile::prepare_named(&args.common, "quic-copy-")?;
    print_header(
        &format!("1 file of {} bytes", big.size),
        &args.node,
        &args.common.dir,
    );
    let work = big.work.path();
    let ceiling = Ceiling::start(&big.path, work)?;
    let cartable = Cartable::start(&args.node, work, &big.lesson, OldB::Remove)?;
    let one_stream = CeilingCopy::one_stream(&ceiling, big.size, 1);
    let stored = CeilingCopy {
        sink: Some(work.join("ceiling-store.bin")),
        ..CeilingCopy::one_stream(&ceiling, big.size, 1)
    };
    let verified = CeilingCopy {
        sink: Some(work.join("ceiling-verified.bin")),
        hashed: true,
        ..CeilingCopy::one_stream(&ceiling, big.size, 1)
    };
    let (synced, unsynced) = (fetch(&cartable, false), fetch(&cartable, true));
    let mut copiers: Vec<&dyn Copier> = vec![&one_stream, &synced, &stored, &verified];
    if args.eatmydata {
        copiers.push(&unsynced);
    }
    let samples = measure(args.common.rounds, args.noise_limit, &copiers)?;
    let rows = report(&copiers, &samples, Per::GiB);
    let ratio = rows[1].mib_s / rows[0].mib_s;
    let verdict = if ratio >= 0.8 { "met" } else { "NOT met" };
    println!("\ncartable / ceiling = {ratio:.2}x (goal >= 0.8x: {verdict})");
    println!(
        "cartable / (ceiling + store) = {:.2}x",
        rows[1].mib_s / rows[2].mib_s
    );
    let (speed, cpu) = (rows[1].mib_s / rows[3].mib_s, rows[1].cpu / rows[3].cpu);
    let verdict = if speed >= 0.95 && cpu <= 1.25 {
        "met"
    } else {
        "NOT met"
    };
    println!(
        "cartable / (ceiling + store + BLAKE3) = {speed:.2}x in speed, {cpu:.2}x in CPU \
         (goal >= 0.95x and <= 1.25x: {verdict})"
    );
    Ok(())
}

/// Many small files: the ceiling on one stream and on one stream per file, for
/// context, against a fetch.
fn small_files(args: &Args, count: u64) -> Result<()> {
    let work = work_dir(&args.common.dir)?;
    let lesson = work.path().join("lesson");
    let file_bytes = args.file_kib * 1024;
    make_small_files(&lesson, count, file_bytes)?;
    // The ceiling's sender reads one file holding the same number of bytes.
    let all = work.path().join("ceiling.bin");
    write_random_file(&all, count * file_bytes, b"quic-copy ceiling")?;
    cartable_benches::read_through(&all)?;
    print_header(
        &format!("{count} files of {} KiB", args.file_kib),
        &args.node,
        work.path(),
    );
    let ceiling = Ceiling::start(&all, work.path())?;
    let cartable = Cartable::start(&args.node, work.path(), &lesson, OldB::SetAside)?;
    let per_file = CeilingCopy {
        streams: count,
        stream_bytes: file_bytes,
        ..CeilingCopy::one_stream(&ceiling, count * file_bytes, count)
    };
    let one_stream = CeilingCopy::one_stream(&ceiling, count * file_bytes, count);
    let (synced, unsynced) = (fetch(&cartable, false), fetch(&cartable, true));
    let mut copiers: Vec<&dyn Copier> = vec![&one_stream, &per_file, &synced];
    if args.eatmydata {
        copiers.push(&unsynced);
    }
    let samples = measure(args.common.rounds, args.noise_limit, &copiers)?;
    let rows = report(&copiers, &samples, Per::ThousandFiles);
    println!(
        "\ncartable / ceiling (one stream per file) = {:.2}x in files/s",
        rows[2].files_s / rows[1].files_s
    );
    Ok(())
}

fn work_dir(dir: &Path) -> Result<TempDir> {
    let dir = fs::canonicalize(dir).with_context(|| format!("--dir {}", dir.display()))?;
    tempfile::Builder::new()
        .prefix("quic-copy-")
        .tempdir_in(&dir)
        .with_context(|| format!("creating a folder in {}", dir.display()))
}

/// `count` distinct pseudo-random files of `bytes` each, [`FILES_PER_FOLDER`]
/// per folder, then one `sync` so that their write-back does not overlap the
/// measurement.
fn make_small_files(lesson: &Path, count: u64, bytes: u64) -> Result<()> {
    let mut data = vec![0u8; bytes as usize];
    for i in 0..count {
        let folder = lesson.join(format!("d{:04}", i / FILES_PER_FOLDER));
        if i.is_multiple_of(FILES_PER_FOLDER) {
            fs::create_dir_all(&folder)?;
        }
        let mut stream = blake3::Hasher::new()
            .update(b"quic-copy small file")
            .update(&i.to_le_bytes())
            .finalize_xof();
        stream.fill(&mut data);
        let path = folder.join(format!("f{i:06}.bin"));
        fs::write(&path, &data).with_context(|| format!("writing {}", path.display()))?;
    }
    let synced = Command::new("sync").status().context("running sync")?;
    ensure!(synced.success(), "sync failed: {synced}");
    Ok(())
}

fn print_header(what: &str, node: &Path, dir: &Path) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "quic-copy: {what}, nproc {cores}, load {}, node {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" "),
        node.display()
    );
    if let Some(device) = cartable_benches::journal::ext4_without_journal(dir) {
        println!(
            "WARNING: {} is on ext4 without a journal ({device}). There, every new file \
             checks the inodes freed in the last 60-360 s one by one: after many files \
             were deleted (an earlier run's work folder, for one), small files measure \
             that walk, not the node; wait 6 minutes. Rounds here set their copies \
             aside rather than delete them. A journaled filesystem (ext4's default) \
             skips the check; see benches/README.md.",
            dir.display()
        );
    }
}

// ---------------------------------------------------------------------------
// Measuring and reporting.

/// One timed copy.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The receiving process, from spawn to exit.
    wall: Duration,
    /// The sender's CPU time during the copy.
    sender_cpu: Cpu,
    /// The receiver's CPU time.
    receiver_cpu: Cpu,
    /// Payload bytes received.
    bytes: u64,
    /// Files received (for the ceiling: files whose bytes it carried).
    files: u64,
    /// CPU time the rest of the machine used meanwhile.
    others_cpu: Cpu,
}

impl Sample {
    /// How many cores the rest of the machine kept busy meanwhile.
    fn others_cores(&self) -> f64 {
        self.others_cpu.total().as_secs_f64() / self.wall.as_secs_f64()
    }

    /// How many cores other processes kept busy in user space meanwhile: the
    /// noise. Kernel threads working for the copy (writeback, the journal) are
    /// system time, so they do not count here.
    fn noise_cores(&self) -> f64 {
        self.others_cpu.user.as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// Something that copies the same bytes from a running sender, once per call.
trait Copier {
    fn label(&self) -> String;
    /// Untimed: clears what the previous copy left.
    fn prepare(&self) -> Result<()>;
    /// Timed: one copy.
    fn copy(&self) -> Result<Sample>;
}

/// Runs every copier once per round after one untimed warm-up round; the order
/// reverses from one round to the next, so neither side always runs on a
/// machine the other has just warmed or loaded. A round during which the rest
/// of the machine used more than `noise_limit` cores in user space (see
/// [`Sample::noise_cores`]) in any copy is run again,
/// up to three times the rounds asked for in all; then the least noisy rounds
/// count, and the summary line says how busy the machine was.
fn measure(rounds: usize, noise_limit: f64, copiers: &[&dyn Copier]) -> Result<Vec<Vec<Sample>>> {
    run_round("warm-up", false, copiers)?;
    let mut done: Vec<(f64, Vec<(usize, Sample)>)> = Vec::new();
    let quiet = |done: &[(f64, _)]| done.iter().filter(|(n, _)| *n <= noise_limit).count();
    while quiet(&done) < rounds && done.len() < 3 * rounds {
        let name = format!("round {}", done.len() + 1);
        let round = run_round(&name, done.len().is_multiple_of(2), copiers)?;
        let noise = round
            .iter()
            .map(|(_, s)| s.noise_cores())
            .fold(0.0, f64::max);
        if noise > noise_limit {
            println!("   {name}: other processes used up to {noise:.2} cores, noisy");
        }
        done.push((noise, round));
    }
    // Least noisy first; the sort is stable, so quiet rounds keep their order.
    done.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut samples = vec![Vec::new(); copiers.len()];
    for (_, round) in done.into_iter().take(rounds) {
        for (i, sample) in round {
            samples[i].push(sample);
        }
    }
    Ok(samples)
}

/// Runs each copier once, in reverse order if `reverse`; prints each copy.
fn run_round(name: &str, reverse: bool, copiers: &[&dyn Copier]) -> Result<Vec<(usize, Sample)>> {
    let mut order: Vec<usize> = (0..copiers.len()).collect();
    if reverse {
        order.reverse();
    }
    let mut round = Vec::new();
    for i in order {
        copiers[i].prepare()?;
        let busy_before = machine_busy()?;
        let mut s = copiers[i].copy()?;
        let ours = s.sender_cpu + s.receiver_cpu;
        s.others_cpu = machine_busy()?.since(busy_before + ours);
        println!(
            "{name:>8}: {:<44} {:>7.3} s {:>6.0} MiB/s  CPU send {:.2} s recv {:.2} s, others {:.2} cores ({:.2} user)",
            copiers[i].label(),
            s.wall.as_secs_f64(),
            mib_per_s(s.bytes, s.wall),
            s.sender_cpu.total().as_secs_f64(),
            s.receiver_cpu.total().as_secs_f64(),
            s.others_cores(),
            s.noise_cores(),
        );
        round.push((i, s));
    }
    Ok(round)
}

/// The medians of one copier's samples.
#[derive(Debug)]
struct Row {
    mib_s: f64,
    files_s: f64,
    /// CPU seconds, sender and receiver together, per GiB (or 1000 files).
    cpu: f64,
}

/// What CPU time is counted per in the table.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Per {
    GiB,
    ThousandFiles,
}

fn report(copiers: &[&dyn Copier], samples: &[Vec<Sample>], per: Per) -> Vec<Row> {
    let unit = match per {
        Per::GiB => "CPU s/GiB send+recv",
        Per::ThousandFiles => "CPU s/1000 files s+r",
    };
    println!(
        "\n{:<44} {:>15} {:>7} {:>6} {:>8} {:>21}",
        "copy", "s (min-max)", "median", "MiB/s", "files/s", unit
    );
    let rows = copiers
        .iter()
        .zip(samples)
        .map(|(copier, runs)| report_row(copier.label(), runs, per))
        .collect();
    report_noise(samples);
    rows
}

/// Prints one copier's line of the table.
fn report_row(label: String, runs: &[Sample], per: Per) -> Row {
    let walls: Vec<Duration> = runs.iter().map(|s| s.wall).collect();
    let wall = median(&walls);
    let (bytes, files) = (runs[0].bytes, runs[0].files);
    let scale = match per {
        Per::GiB => GIB / bytes as f64,
        Per::ThousandFiles => 1000.0 / files as f64,
    };
    let cpu = |f: fn(&Sample) -> Duration| {
        median(&runs.iter().map(f).collect::<Vec<_>>()).as_secs_f64() * scale
    };
    let (send, recv) = (
        cpu(|s| s.sender_cpu.total()),
        cpu(|s| s.receiver_cpu.total()),
    );
    let row = Row {
        mib_s: mib_per_s(bytes, wall),
        files_s: files as f64 / wall.as_secs_f64(),
        cpu: send + recv,
    };
    println!(
        "{:<44} {:>7.3}-{:<7.3} {:>7.3} {:>6.0} {:>8} {:>5.2} + {:>5.2} = {:>5.2}",
        label,
        walls.iter().min().map_or(0.0, Duration::as_secs_f64),
        walls.iter().max().map_or(0.0, Duration::as_secs_f64),
        wall.as_secs_f64(),
        row.mib_s,
        match per {
            Per::GiB => "-".to_owned(),
            Per::ThousandFiles => format!("{:.0}", row.files_s),
        },
        send,
        recv,
        send + recv,
    );
    row
}

/// How busy the rest of the machine was: the ratios hold only if it was quiet.
fn report_noise(samples: &[Vec<Sample>]) {
    let mean = |f: fn(&Sample) -> f64| {
        let all: Vec<&Sample> = samples.iter().flatten().collect();
        let wall: f64 = all.iter().map(|s| s.wall.as_secs_f64()).sum();
        all.iter().map(|s| f(s) * s.wall.as_secs_f64()).sum::<f64>() / wall
    };
    let worst = samples
        .iter()
        .flatten()
        .map(Sample::noise_cores)
        .fold(0.0, f64::max);
    println!(
        "the rest of the machine used {:.2} cores on average during the counted copies \
         (kernel writeback and journal included); other processes {:.2} cores in user \
         space, {worst:.2} at most",
        mean(Sample::others_cores),
        mean(Sample::noise_cores),
    );
}

// ---------------------------------------------------------------------------
// The ceiling, driven from the harness.

/// A running `quic-copy ceiling-server`, and the client key it admits.
struct Ceiling {
    server: Server,
    peer: String,
    client_key: PathBuf,
}

impl Ceiling {
    fn start(file: &Path, work: &Path) -> Result<Self> {
        let client_key = work.join("ceiling-client");
        let client = Identity::load_or_create(&client_key)?.id();
        let server = Server::spawn(
            on_core(SENDER_CORE, &std::env::current_exe()?)
                .arg("ceiling-server")
                .arg(file)
                .arg(work.join("ceiling-server"))
                .arg(client.to_string()),
            "ceiling listening ",
            START_LIMIT,
        )?;
        let peer = server.peer_addr()?;
        Ok(Self {
            server,
            peer,
            client_key,
        })
    }
}

/// `streams` streams, one after the other, of `stream_bytes` each.
struct CeilingCopy<'a> {
    ceiling: &'a Ceiling,
    streams: u64,
    stream_bytes: u64,
    /// The files these bytes stand for, for files per second.
    files: u64,
    /// `Some(file)` to store what arrives there (one fsync at the end).
    sink: Option<PathBuf>,
    /// Whether the stored bytes are also hashed with BLAKE3, every one of them.
    hashed: bool,
}

impl<'a> CeilingCopy<'a> {
    fn one_stream(ceiling: &'a Ceiling, bytes: u64, files: u64) -> Self {
        Self {
            ceiling,
            streams: 1,
            stream_bytes: bytes,
            files,
            sink: None,
            hashed: false,
        }
    }
}

impl Copier for CeilingCopy<'_> {
    fn label(&self) -> String {
        match (self.streams, &self.sink) {
            (1, None) => "ceiling: quinn, 1 stream, no verify/store".into(),
            (1, Some(_)) if self.hashed => "ceiling + store + BLAKE3 of every byte".into(),
            (1, Some(_)) => "ceiling + store: pwrite, 1 fsync at the end".into(),
            (n, _) => format!("ceiling: quinn, {n} streams in turn"),
        }
    }

    /// Removes the previous copy's file, like node B's previous copy.
    fn prepare(&self) -> Result<()> {
        match &self.sink {
            Some(path) if path.exists() => Ok(fs::remove_file(path)?),
            _ => Ok(()),
        }
    }

    fn copy(&self) -> Result<Sample> {
        let sink = match &self.sink {
            None => "-".into(),
            Some(path) if self.hashed => format!("b3:{}", path.display()),
            Some(path) => path.display().to_string(),
        };
        let sender_before = self.ceiling.server.cpu()?;
        let run = run_timed(
            on_core(RECEIVER_CORE, &std::env::current_exe()?)
                .arg("ceiling-client")
                .arg(&self.ceiling.peer)
                .arg(&self.ceiling.client_key)
                .arg(self.streams.to_string())
                .arg(self.stream_bytes.to_string())
                .arg(sink),
            "ceiling client",
        )?;
        let sender_cpu = self.ceiling.server.cpu()?.since(sender_before);
        let received: u64 = String::from_utf8(run.output.stdout)?.trim().parse()?;
        ensure!(
            received == self.streams * self.stream_bytes,
            "ceiling client received {received} bytes"
        );
        Ok(Sample {
            wall: run.wall,
            sender_cpu,
            receiver_cpu: run.cpu,
            bytes: received,
            files: self.files,
            others_cpu: Cpu::default(),
        })
    }
}

// ---------------------------------------------------------------------------
// Cartable, driven through its CLI.

/// Node A serving the bundle, and what node B needs to fetch it.
struct Cartable<'a> {
    node: &'a Path,
    a: Server,
    a_peer: String,
    bundle: String,
    /// B's key, made once: A admits only the ids it was started with.
    b_key: PathBuf,
    /// Where each round's fresh B goes.
    b_dir: PathBuf,
    /// What becomes of the previous round's B.
    old_b: OldB,
    /// How many Bs have been set aside (with [`OldB::SetAside`]).
    set_aside: Cell<u32>,
}

/// What `fresh_b` does with the previous round's B.
#[derive(Clone, Copy)]
enum OldB {
    /// Removed just before the copy, so that the page cache it frees is what
    /// this copy reuses (see the README on this VM's free page reporting).
    Remove,
    /// Moved aside and removed with the work folder at the end. On ext4
    /// without a journal, every new inode is checked against those freed in
    /// the last 60-360 s; removing 10,000 files just before a copy of 10,000
    /// would measure that walk, which a node receiving a lesson does not
    /// meet unless it has just deleted as many files itself.
    SetAside,
}

impl<'a> Cartable<'a> {
    fn start(node: &'a Path, work: &Path, lesson: &Path, old_b: OldB) -> Result<Self> {
        let b_key = work.join("b-key");
        let b_id: NodeId =
            printed_first(node_command(node, &b_key).arg("id"), "cartable-node id")?.parse()?;
        let a_dir = work.join("a");
        let bundle = add_bundle(node, &a_dir, lesson)?;
        // B never listens: only its id matters to A, the address is a placeholder.
        let a = Server::spawn(
            on_core(SENDER_CORE, node)
                .arg("--data-dir")
                .arg(&a_dir)
                .env("CARTABLE_LOG", "warn")
                .args([
                    "serve",
                    "--https",
                    "127.0.0.1:0",
                    "--quic",
                    "127.0.0.1:0",
                    "--peer",
                    &format!("{b_id}@127.0.0.1:9"),
                ]),
            "cartable-node listening ",
            START_LIMIT,
        )?;
        let a_peer = a.peer_addr()?;
        Ok(Self {
            node,
            a,
            a_peer,
            bundle,
            b_key,
            b_dir: work.join("b"),
            old_b,
            set_aside: Cell::new(0),
        })
    }

    /// A fresh, empty B holding the key A admits; the previous one goes as
    /// `old_b` says, untimed.
    fn fresh_b(&self) -> Result<()> {
        if self.b_dir.exists() {
            match self.old_b {
                OldB::Remove => fs::remove_dir_all(&self.b_dir)?,
                OldB::SetAside => {
                    let n = self.set_aside.get() + 1;
                    self.set_aside.set(n);
                    fs::rename(&self.b_dir, self.b_dir.with_file_name(format!("b-old-{n}")))?;
                }
            }
        }
        fs::create_dir_all(&self.b_dir)?;
        // fs::copy keeps the 0600 mode the node insists on.
        fs::copy(self.b_key.join(KEY_FILE), self.b_dir.join(KEY_FILE))?;
        Ok(())
    }
}

/// A fetch into a fresh B, optionally with every fsync made a no-op.
struct FetchCopy<'a> {
    cartable: &'a Cartable<'a>,
    /// Run under `eatmydata`, to measure what the fsyncs cost.
    eatmydata: bool,
}

impl Copier for FetchCopy<'_> {
    fn label(&self) -> String {
        match self.eatmydata {
            false => "cartable: fetch (verify + store + fsync)".into(),
            true => "cartable: fetch under eatmydata (no fsync)".into(),
        }
    }

    fn prepare(&self) -> Result<()> {
        self.cartable.fresh_b()
    }

    fn copy(&self) -> Result<Sample> {
        let c = self.cartable;
        let sender_before = c.a.cpu()?;
        let mut fetch = match self.eatmydata {
            false => on_core(RECEIVER_CORE, c.node),
            true => {
                let mut cmd = on_core(RECEIVER_CORE, Path::new("eatmydata"));
                cmd.arg(c.node);
                cmd
            }
        };
        fetch
            .arg("--data-dir")
            .arg(&c.b_dir)
            .env("CARTABLE_LOG", "warn");
        fetch.args(["fetch", &c.bundle, "--from", &c.a_peer, "--json"]);
        let run = run_timed(&mut fetch, "cartable-node fetch")?;
        let sender_cpu = c.a.cpu()?.since(sender_before);
        let report: serde_json::Value =
            serde_json::from_slice(&run.output.stdout).context("fetch --json output")?;
        let field = |name: &str| report[name].as_u64().with_context(|| format!("no {name}"));
        let (bytes, received) = (field("bytes")?, field("bytes_received")?);
        ensure!(
            received == bytes,
            "fetch received {received} of {bytes} bytes"
        );
        Ok(Sample {
            wall: run.wall,
            sender_cpu,
            receiver_cpu: run.cpu,
            bytes,
            files: field("files")?,
            others_cpu: Cpu::default(),
        })
    }
}

fn fetch<'a>(cartable: &'a Cartable<'a>, eatmydata: bool) -> FetchCopy<'a> {
    FetchCopy {
        cartable,
        eatmydata,
    }
}

/// Adds `lesson` to the node in `data_dir`; returns the bundle id.
fn add_bundle(node: &Path, data_dir: &Path, lesson: &Path) -> Result<String> {
    let mut add = node_command(node, data_dir);
    let added = run_timed(add.arg("add").arg(lesson), "cartable-node add")?;
    println!(
        "node A: add took {:.3} s ({:.2} s CPU)",
        added.wall.as_secs_f64(),
        added.cpu.total().as_secs_f64()
    );
    let out = String::from_utf8(added.output.stdout)?;
    Ok(out
        .lines()
        .next()
        .context("add printed nothing")?
        .to_owned())
}
