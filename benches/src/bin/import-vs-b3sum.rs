//! `import-vs-b3sum`: import throughput of the node's store against a plain
//! durable copy and against `b3sum` on the same large file, and an upload's
//! storing against a plain write of the same bytes from memory, as ratios
//! measured in one run (goal: both at least 0.9× their reference).
//!
//! The file sits in a temporary folder on the same filesystem as the stores. After
//! one read to warm the page cache, each round times, in an order that reverses
//! from round to round: `b3sum` (its default: mmap and one thread per core),
//! `b3sum --num-threads 1`, a single-threaded in-process `blake3` pass,
//! `Store::open` + `add_folder` into a fresh store (copy, hash, outboard, fsync),
//! and a copy as `cp` makes it (`copy_file_range`) followed by `fsync`. Then,
//! in rounds of their own, the file's bytes held in memory are written and
//! synced, and stored as a node stores an upload. One untimed run starts each
//! group. All must agree on the hash (the copy's is computed untimed).
//! Results go to stdout.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cartable_benches::{BigFile, FileArgs, median, mib_per_s, only_blob};
use cartable_node::store::Store;
use tempfile::TempDir;

/// One thing timed on the file; each returns the hash it computed, in hex.
#[derive(Debug, Clone, Copy)]
enum Tool {
    B3sum,
    B3sumOneThread,
    Blake3Reader,
    CartableImport,
    CopyFsync,
    CartableUpload,
    WriteFsync,
}

const TOOLS: [Tool; 7] = [
    Tool::B3sum,
    Tool::B3sumOneThread,
    Tool::Blake3Reader,
    Tool::CartableImport,
    Tool::CopyFsync,
    Tool::CartableUpload,
    Tool::WriteFsync,
];
/// Where the import, the plain copy, the upload and the plain write are in
/// [`TOOLS`].
const IMPORT: usize = 3;
const COPY: usize = 4;
const UPLOAD: usize = 5;
const WRITE: usize = 6;
/// The pieces an upload's body arrives in: an HTTP/2 DATA frame's default
/// size, a TLS record's.
const PIECE: usize = 16 << 10;

impl Tool {
    fn label(self, cores: usize) -> String {
        match self {
            Tool::B3sum => format!("b3sum (mmap, {cores} threads)"),
            Tool::B3sumOneThread => "b3sum --num-threads 1".into(),
            Tool::Blake3Reader => "blake3 update_reader, 1 thread".into(),
            Tool::CartableImport => "cartable open+add_folder+fsync".into(),
            Tool::CopyFsync => "cp + fsync (copy_file_range)".into(),
            Tool::CartableUpload => "cartable upload received".into(),
            Tool::WriteFsync => "write from memory + fsync".into(),
        }
    }

    fn run(self, big: &BigFile, last_store: &mut Option<TempDir>) -> Result<(Duration, String)> {
        let file = &big.path;
        match self {
            Tool::B3sum => time_b3sum(file, &[]),
            Tool::B3sumOneThread => time_b3sum(file, &["--num-threads", "1"]),
            Tool::Blake3Reader => {
                let start = Instant::now();
                let mut hasher = blake3::Hasher::new();
                hasher.update_reader(fs::File::open(file)?)?;
                let hash = hasher.finalize();
                Ok((start.elapsed(), hash.to_hex().to_string()))
            }
            Tool::CartableImport => time_import(big, last_store),
            Tool::CopyFsync => time_copy(big, last_store),
            Tool::CartableUpload => time_upload(big, last_store),
            Tool::WriteFsync => time_write(big, last_store),
        }
    }
}

fn main() -> Result<()> {
    let args = FileArgs::parse("import-vs-b3sum")?;
    let version = b3sum_version()?;
    let big = BigFile::prepare(&args)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (file, size) = (&big.path, big.size);
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "import-vs-b3sum: {} ({size} bytes), {cores} cores, {version}, load {}",
        file.display(),
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    let times = measure(args.rounds, cores, &big)?;
    report(&times, size, cores);
    Ok(())
}

/// The tools from a file on disk, then the two writing bytes held in memory:
/// each group in rounds of its own, after one untimed run of its first tool.
/// Deleting a file `cp` made slows the next write from memory up to 3× on
/// this VM (`dd` shows it too; see the README), so the upload and the plain
/// write never follow the copy, and each follows the other as often.
const GROUPS: [&[usize]; 2] = [&[0, 1, 2, IMPORT, COPY], &[WRITE, UPLOAD]];

/// Runs every tool once per round of its group; the order within a group
/// reverses on odd rounds.
fn measure(rounds: usize, cores: usize, big: &BigFile) -> Result<Vec<Vec<Duration>>> {
    let mut times = vec![Vec::new(); TOOLS.len()];
    let mut last_store = None;
    let mut expected = None;
    for group in GROUPS {
        // Warm-up, untimed: also gives the first timed run memory to reuse.
        let (_, hash) = TOOLS[group[0]].run(big, &mut last_store)?;
        expected.get_or_insert(hash);
        for round in 0..rounds {
            let mut order = group.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let (time, hash) = TOOLS[i].run(big, &mut last_store)?;
                let expected = expected.get_or_insert_with(|| hash.clone());
                ensure!(
                    *expected == hash,
                    "{:?} computed {hash}, not {expected}",
                    TOOLS[i]
                );
                println!(
                    "round {round}: {:<32} {:>8.3} s",
                    TOOLS[i].label(cores),
                    time.as_secs_f64()
                );
                times[i].push(time);
            }
        }
    }
    Ok(times)
}

fn time_b3sum(file: &Path, extra: &[&str]) -> Result<(Duration, String)> {
    let start = Instant::now();
    let out = Command::new("b3sum")
        .args(extra)
        .arg("--no-names")
        .arg(file)
        .stderr(Stdio::inherit())
        .output()
        .context("running b3sum")?;
    let elapsed = start.elapsed();
    ensure!(out.status.success(), "b3sum failed: {}", out.status);
    let hash = String::from_utf8(out.stdout)?.trim().to_owned();
    Ok((elapsed, hash))
}

/// Opens a fresh store beside the file and adds the folder. The previous store is
/// removed, untimed, just before: the page cache it frees is what the new copy
/// reuses, as on a machine whose free memory stays RAM. (A VM with free page
/// reporting hands memory freed for a few seconds back to its host, and writing
/// 1 GiB into the page cache then costs several times more; see the README.)
fn time_import(big: &BigFile, last_store: &mut Option<TempDir>) -> Result<(Duration, String)> {
    let store_dir = fresh_dir(big, last_store, "store-")?;
    let start = Instant::now();
    let store = Store::open(store_dir.path())?;
    let added = store.add_folder(&big.lesson)?;
    let elapsed = start.elapsed();
    let (hash, _) = only_blob(&store, &added)?;
    *last_store = Some(store_dir);
    Ok((elapsed, hash.to_hex()))
}

/// Copies the file beside it as `cp` does (`copy_file_range`) and syncs the
/// copy: the cheapest durable copy, which an import also makes. The copy is
/// hashed afterwards, untimed, to check it. Like the import, it first frees
/// the previous round's copy or store.
fn time_copy(big: &BigFile, last: &mut Option<TempDir>) -> Result<(Duration, String)> {
    let dir = fresh_dir(big, last, "copy-")?;
    let copy = dir.path().join("copy");
    let start = Instant::now();
    fs::copy(&big.path, &copy)?;
    fs::File::open(&copy)?.sync_all()?;
    let elapsed = start.elapsed();
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(fs::File::open(&copy)?)?;
    *last = Some(dir);
    Ok((elapsed, hasher.finalize().to_hex().to_string()))
}

/// Stores the file's bytes, held in memory as an upload's body arrives, as a
/// node stores a blob uploaded to it (`node/src/serve/upload.rs`, whose route
/// is async and needs a coordinator's grant, so its steps are taken here, on
/// a runtime of one thread): pieces of [`PIECE`] given to `Store::incoming`,
/// which builds the outboard as they come and writes them in batches on a
/// blocking thread, then the hash checked and `Store::place_received` (both
/// files synced and renamed), into a fresh store. Like the import, it first
/// frees the previous round's copy or store.
fn time_upload(big: &BigFile, last: &mut Option<TempDir>) -> Result<(Duration, String)> {
    let body = upload_body(big)?;
    let hash = cartable_proto::BlobHash::from(blake3::hash(body));
    let store_dir = fresh_dir(big, last, "upload-")?;
    let store = std::sync::Arc::new(Store::open(store_dir.path())?);
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let start = Instant::now();
    let new = runtime.block_on(async {
        let mut incoming = store.incoming(big.size)?;
        for piece in body.chunks(PIECE) {
            incoming.push(piece).await?;
        }
        let received = incoming.finish().await?;
        ensure!(received.hash() == hash, "the body hashes to its hash");
        let placing = store.clone();
        Ok(tokio::task::spawn_blocking(move || placing.place_received(received)).await??)
    })?;
    let elapsed = start.elapsed();
    ensure!(new, "the blob was new");
    *last = Some(store_dir);
    Ok((elapsed, hash.to_hex()))
}

/// Writes the file's bytes, held in memory as for the upload, to a fresh
/// file beside it, then syncs it: the cheapest durable store of bytes that
/// come from the network, what an upload is held to. Like the others, it
/// first frees the previous round's copy or store.
fn time_write(big: &BigFile, last: &mut Option<TempDir>) -> Result<(Duration, String)> {
    use std::io::Write;
    let body = upload_body(big)?;
    let dir = fresh_dir(big, last, "write-")?;
    let start = Instant::now();
    let mut file = fs::File::create(dir.path().join("written"))?;
    for step in body.chunks(4 << 20) {
        file.write_all(step)?;
    }
    file.sync_all()?;
    let elapsed = start.elapsed();
    *last = Some(dir);
    Ok((elapsed, blake3::hash(body).to_hex().to_string()))
}

/// A new folder beside the file, for one timed run, once the previous run's
/// is removed (untimed): the page cache it frees is what the new run reuses.
fn fresh_dir(big: &BigFile, last: &mut Option<TempDir>, prefix: &str) -> Result<TempDir> {
    drop(last.take());
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(big.work.path())?;
    Ok(dir)
}

/// The file's bytes in memory, read once for the whole run: 1 GiB allocated
/// and freed every round would make the VM hand the memory back to its host
/// and slow every tool that writes the page cache after it.
fn upload_body(big: &BigFile) -> Result<&'static bytes::Bytes> {
    static BODY: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
    if BODY.get().is_none() {
        let _ = BODY.set(fs::read(&big.path)?.into());
    }
    BODY.get().context("the body was just read")
}

fn b3sum_version() -> Result<String> {
    match Command::new("b3sum").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8(out.stdout)?.trim().to_owned()),
        Ok(out) => bail!("`b3sum --version` failed: {}", out.status),
        Err(e) => bail!("cannot run b3sum ({e}); install it with `apt-get install -y b3sum`"),
    }
}

fn report(times: &[Vec<Duration>], size: u64, cores: usize) {
    let medians: Vec<Duration> = times.iter().map(|t| median(t)).collect();
    let speed = |i: usize| mib_per_s(size, medians[i]);
    println!();
    println!(
        "{:<32} {:>15} {:>7} {:>7} {:>9} {:>9}",
        "tool", "s (min-max)", "median", "MiB/s", "/b3sum", "/b3sum-1t"
    );
    for (i, tool) in TOOLS.iter().enumerate() {
        let (min, max) = (times[i].iter().min(), times[i].iter().max());
        println!(
            "{:<32} {:>7.3}-{:<7.3} {:>7.3} {:>7.0} {:>8.2}x {:>8.2}x",
            tool.label(cores),
            min.map_or(0.0, Duration::as_secs_f64),
            max.map_or(0.0, Duration::as_secs_f64),
            medians[i].as_secs_f64(),
            speed(i),
            speed(i) / speed(0),
            speed(i) / speed(1),
        );
    }
    let ratio = speed(IMPORT) / speed(COPY);
    let verdict = if ratio >= 0.9 { "met" } else { "NOT met" };
    println!("\nimport / (cp + fsync) = {ratio:.2}x (goal >= 0.9x: {verdict})");
    let ratio = speed(UPLOAD) / speed(WRITE);
    let verdict = if ratio >= 0.9 { "met" } else { "NOT met" };
    println!(
        "upload / (write + fsync) = {ratio:.2}x (goal >= 0.9x: {verdict}); / (cp + fsync) = {:.2}x",
        speed(UPLOAD) / speed(COPY)
    );
    println!(
        "import / b3sum = {:.2}x, / b3sum --num-threads 1 = {:.2}x",
        speed(IMPORT) / speed(0),
        speed(IMPORT) / speed(1)
    );
}
