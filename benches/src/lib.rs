//! Benchmarks of the Cartable node, and the helpers they share.
//!
//! - `src/bin/import-vs-b3sum.rs`: import throughput against `b3sum` on one large
//!   file, as a ratio measured in one run.
//! - `benches/verify.rs` (criterion): a verified read of a stored blob against a
//!   plain read of the same file.
//! - `src/bin/quic-copy.rs`: copying a bundle between two nodes over QUIC against
//!   a minimal quinn sender/receiver, as a ratio measured in one run.
//! - `src/bin/surge.rs`: idle connections, overload and a flood against one node.
//! - `src/bin/repair-while-serving.rs`: browsers' p99 on a node that is the
//!   source of copies, against the same load without them.
//! - `load/`: the HTTPS load harness against nginx.
//!
//! The helpers here parse the import benchmarks' options, make test data and read
//! the single blob of a one-file bundle; [`process`] times child processes,
//! [`ceiling`] is the minimal QUIC sender and receiver `quic-copy` compares with,
//! [`browsers`] the HTTPS clients of `surge` and `repair-while-serving`, and
//! [`journal`] tells a journal-less ext4, where small files measure the
//! filesystem.

pub mod browsers;
pub mod ceiling;
pub mod journal;
pub mod process;
pub mod quota;

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cartable_node::store::{AddReport, Store};
use cartable_proto::BlobHash;
use tempfile::TempDir;

/// The usage text of [`FileArgs`].
pub const FILE_ARGS_USAGE: &str =
    "  --file PATH   reuse this file (hard-linked, so it must be on the filesystem of --dir)
  --size-mib N  size of the generated file (default 1024)
  --dir DIR     where the file and the stores go (default: the workspace's target/)
  --rounds N    rounds of measurement (default 3)";

/// The options of the import benchmarks.
#[derive(Debug)]
pub struct FileArgs {
    /// A file to use rather than generating one.
    pub file: Option<PathBuf>,
    /// Size of the generated file in MiB.
    pub size_mib: u64,
    /// Where the file and everything written go: one filesystem for all.
    pub dir: PathBuf,
    /// Rounds of measurement.
    pub rounds: usize,
}

impl FileArgs {
    /// Parses the command line; `--help` prints the usage of `program` and exits.
    pub fn parse(program: &str) -> Result<Self> {
        let usage = format!("usage: {program} [OPTIONS]\n{FILE_ARGS_USAGE}");
        let mut args = Self {
            file: None,
            size_mib: 1024,
            dir: target_dir(),
            rounds: 3,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--file" => args.file = Some(value()?.into()),
                "--size-mib" => args.size_mib = value()?.parse().context("--size-mib")?,
                "--dir" => args.dir = value()?.into(),
                "--rounds" => args.rounds = value()?.parse().context("--rounds")?,
                "-h" | "--help" => {
                    println!("{usage}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}\n{usage}"),
            }
        }
        ensure!(
            args.rounds > 0 && args.size_mib > 0,
            "--rounds and --size-mib must be positive"
        );
        Ok(args)
    }
}

/// The workspace's `target/` folder, or `$CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// The file under test, alone in its folder, inside a temporary folder that also
/// takes whatever the benchmark writes; all of it is removed on drop.
#[derive(Debug)]
pub struct BigFile {
    /// The temporary folder.
    pub work: TempDir,
    /// The folder holding only the file.
    pub lesson: PathBuf,
    /// The file.
    pub path: PathBuf,
    /// Its length.
    pub size: u64,
}

impl BigFile {
    /// Links `--file` or generates the file, then reads it once into the page cache.
    pub fn prepare(args: &FileArgs) -> Result<Self> {
        Self::prepare_named(args, "import-bench-")
    }

    /// [`BigFile::prepare`] in a temporary folder whose name starts with `prefix`.
    pub fn prepare_named(args: &FileArgs, prefix: &str) -> Result<Self> {
        let dir =
            fs::canonicalize(&args.dir).with_context(|| format!("--dir {}", args.dir.display()))?;
        let work = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&dir)
            .with_context(|| format!("creating a folder in {}", dir.display()))?;
        let lesson = work.path().join("lesson");
        fs::create_dir(&lesson)?;
        let path = lesson.join("big.bin");
        match &args.file {
            Some(source) => fs::hard_link(source, &path).with_context(|| {
                format!("linking {} (use --dir on its filesystem)", source.display())
            })?,
            None => write_random_file(&path, args.size_mib << 20, b"import bench")?,
        }
        let size = read_through(&path)?;
        Ok(Self {
            work,
            lesson,
            path,
            size,
        })
    }
}

/// Bytes generated per write when making a random file.
const WRITE_PIECE: usize = 1 << 20;

/// Writes `bytes` pseudo-random bytes (the BLAKE3 output stream of `seed`) to
/// `path` and syncs them, so that writing them back does not compete with what
/// is measured next.
pub fn write_random_file(path: &Path, bytes: u64, seed: &[u8]) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(WRITE_PIECE, &file);
    let mut stream = blake3::Hasher::new().update(seed).finalize_xof();
    let mut piece = vec![0u8; WRITE_PIECE];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(WRITE_PIECE as u64) as usize;
        stream.fill(&mut piece[..n]);
        out.write_all(&piece[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    drop(out);
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

/// Reads the whole file once and returns its length: brings it into the page
/// cache so that every tool measured afterwards starts from the same state.
pub fn read_through(path: &Path) -> io::Result<u64> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; WRITE_PIECE];
    let mut total = 0;
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

/// The hash and size of the only file of a bundle just added to `store`.
pub fn only_blob(store: &Store, report: &AddReport) -> Result<(BlobHash, u64)> {
    let manifest = store
        .manifest(&report.summary.id)?
        .context("the bundle just added is missing")?;
    ensure!(
        manifest.entries().len() == 1,
        "expected a bundle of one file, got {}",
        manifest.entries().len()
    );
    let entry = &manifest.entries()[0];
    Ok((entry.hash, entry.size))
}

/// The median of `samples` (the upper one of the middle two for an even count).
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// Mebibytes per second for `bytes` processed in `time`.
pub fn mib_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / time.as_secs_f64()
}
