//! Starting and stopping `cartable-node` processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};

/// The `cartable-node` binary, built once per test process with the same profile.
pub fn node_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| binary("cartable-node"))
}

/// The workspace binary `name`, with the test's profile. Every binary is built
/// at once, the way `scripts/test.sh` builds them: building one package alone
/// would resolve features differently and rebuild shared dependencies.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = crate::workspace_root();
            let release = !cfg!(debug_assertions);
            let mut build = Command::new(env!("CARGO"));
            build
                .current_dir(&root)
                .args(["build", "-q", "--workspace", "--bins"]);
            without_cargo_env(&mut build);
            if release {
                build.arg("--release");
            }
            let status = build.status().expect("running cargo build");
            assert!(status.success(), "building the binaries failed");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| root.join("target"), PathBuf::from);
            target.join(if release { "release" } else { "debug" })
        })
        .join(name)
}

/// Removes the variables cargo set for this test process from `command`, which
/// runs cargo again: build scripts that watch them (ring's) would run again and
/// rebuild half the tree. `CARGO_HOME` and `CARGO_TARGET_DIR` stay.
pub fn without_cargo_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let ours = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&name.as_ref());
        if name.starts_with("CARGO_") && !ours {
            command.env_remove(name.as_ref());
        }
    }
}

/// Runs `cartable-node ARGS` to completion.
pub fn cli(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(node_binary())
        .args(args)
        .env("CARTABLE_LOG", "warn")
        .output()
        .context("running cartable-node")
}

/// Runs `cartable-node --data-dir DATA_DIR ARGS` to completion: the CLI against a
/// node's folder whether or not that node is running.
pub fn cli_in(data_dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let dir = data_dir.to_str().context("data dir not UTF-8")?;
    let mut all = vec!["--data-dir", dir];
    all.extend_from_slice(args);
    cli(&all)
}

/// Adds `folder` to the node on `data_dir` through the CLI and returns the
/// bundle id: through the daemon if the node runs, straight into its store if
/// not (so a node can be stocked before it starts).
pub fn add_in(data_dir: &Path, folder: &Path) -> anyhow::Result<String> {
    let out = cli_in(
        data_dir,
        &["add", folder.to_str().context("path not UTF-8")?],
    )?;
    anyhow::ensure!(
        out.status.success(),
        "add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)?;
    Ok(stdout
        .lines()
        .next()
        .context("add printed nothing")?
        .to_owned())
}

/// A running `cartable-node serve`.
#[derive(Debug)]
pub struct Node {
    child: Child,
    data_dir: PathBuf,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// The node id it printed.
    pub id: String,
    /// `IP:PORT` of its QUIC endpoint.
    pub quic: String,
    /// `http://IP:PORT` of its metrics, when started with `--metrics` or `[metrics]`.
    pub metrics: Option<String>,
    /// The extra `serve` arguments it was started with, given again at a restart.
    extra: Vec<String>,
    _temp: Option<tempfile::TempDir>,
}

impl Node {
    /// Starts a node on a fresh data folder.
    pub fn start() -> anyhow::Result<Self> {
        let temp = tempfile::tempdir()?;
        let mut node = Self::start_in(temp.path(), &[])?;
        node._temp = Some(temp);
        Ok(node)
    }

    /// Starts a node on `data_dir` with extra `serve` arguments, and waits for
    /// its listening line.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(Command::new(node_binary()), data_dir, extra)
    }

    /// Like [`Node::start_in`], its logs (standard error) written to `log`.
    pub fn start_logging_to(data_dir: &Path, extra: &[&str], log: &Path) -> anyhow::Result<Self> {
        let mut command = Command::new(node_binary());
        command.stderr(std::fs::File::create(log)?);
        Self::spawn(command, data_dir, extra)
    }

    /// Starts it again on the same folder and addresses, after a stop or a
    /// kill: a machine coming back (a node's address is fixed at join).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let mut again = Self::spawn_at(
            Command::new(node_binary()),
            &self.data_dir,
            [self.addr(), &self.quic],
            &extra,
        )?;
        again._temp = self._temp.take();
        *self = again;
        Ok(())
    }

    /// Freezes the process (SIGSTOP): the kernel still accepts its TCP
    /// connections, but nothing answers — a hung machine.
    pub fn freeze(&self) -> anyhow::Result<()> {
        signal(&self.child, libc::SIGSTOP)
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) -> anyhow::Result<()> {
        signal(&self.child, libc::SIGCONT)
    }

    /// Like [`Node::start_in`], under a limit of `open_files` descriptors
    /// (`prlimit` from util-linux, which runs the node in its own process).
    pub fn start_with_open_files_in(
        data_dir: &Path,
        open_files: u64,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={open_files}:{open_files}"))
            .arg(node_binary());
        Self::spawn(command, data_dir, extra)
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn(command: Command, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_at(command, data_dir, ["127.0.0.1:0"; 2], extra)
    }

    fn spawn_at(
        mut command: Command,
        data_dir: &Path,
        [https, quic]: [&str; 2],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["serve", "--https", https, "--quic", quic])
            .args(extra)
            // TEST_NODE_LOG (a tracing filter) shows a node's logs in a failing test.
            .env(
                "CARTABLE_LOG",
                std::env::var("TEST_NODE_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .context("starting cartable-node")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let line = read_line_within(stdout, Duration::from_secs(30));
        let Some(line) = line else {
            let _ = child.kill();
            bail!("cartable-node printed no listening line");
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_owned)
        };
        match (field("https="), field("quic="), field("id=")) {
            (Some(url), Some(quic), Some(id)) if line.starts_with("cartable-node listening ") => {
                Ok(Self {
                    child,
                    data_dir: data_dir.to_owned(),
                    url,
                    quic,
                    id,
                    metrics: field("metrics="),
                    extra: extra.iter().map(|a| a.to_string()).collect(),
                    _temp: None,
                })
            }
            _ => {
                let _ = child.kill();
                bail!("unexpected listening line: {line:?}")
            }
        }
    }

    /// The data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `NODEID@IP:PORT`, as `--peer` and `--from` take it.
    pub fn peer_addr(&self) -> String {
        format!("{}@{}", self.id, self.quic)
    }

    /// `IP:PORT` of its HTTPS side.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("https://")
    }

    /// The node's self-signed certificate (PEM).
    pub fn cert_pem(&self) -> anyhow::Result<Vec<u8>> {
        Ok(std::fs::read(self.data_dir.join("tls/cert.pem"))?)
    }

    /// Runs a CLI command against this node's data folder.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        cli_in(&self.data_dir, args)
    }

    /// Adds a folder through the CLI (so through the daemon) and returns the id.
    pub fn add(&self, folder: &Path) -> anyhow::Result<String> {
        add_in(&self.data_dir, folder)
    }

    /// Stops the node with SIGTERM and waits for it.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.terminate()
    }

    /// Stops the node with SIGTERM and waits for it, keeping its folder and
    /// addresses for [`Node::restart`].
    pub fn shut_down(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.terminate()
    }

    /// Kills the node with SIGKILL and waits for it: a crash, with no chance to
    /// drain or release its store, for tests of what peers and restarts survive.
    /// Dropping it afterwards does nothing more.
    pub fn kill(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        // `Child::kill` sends SIGKILL on Unix; `wait` reaps the process, so the
        // later `terminate` in `drop` sees it exited and signals nothing.
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        terminate_child(&mut self.child)
    }

    /// Sends SIGTERM and waits at most `limit` for the node to exit; keeps its
    /// folder and addresses for [`Node::restart`].
    pub fn stop_timed(&mut self, limit: Duration) -> anyhow::Result<StopTime> {
        stop_timed(&mut self.child, limit)
    }
}

/// How a daemon stopped after SIGTERM.
#[derive(Debug)]
pub struct StopTime {
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// From SIGTERM to its exit.
    pub took: Duration,
}

/// Sends SIGTERM to `child` and reaps it, failing (after a SIGKILL) if it
/// is still running `limit` later.
pub fn stop_timed(child: &mut Child, limit: Duration) -> anyhow::Result<StopTime> {
    let start = std::time::Instant::now();
    signal(child, libc::SIGTERM)?;
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait()? {
            return Ok(StopTime {
                status,
                took: start.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill()?;
    child.wait()?;
    bail!("still running {limit:?} after SIGTERM")
}

/// Stops a daemon with SIGTERM (it drains and releases its store), with SIGKILL
/// after 5 s, and reaps it.
pub(crate) fn terminate_child(child: &mut Child) -> anyhow::Result<std::process::ExitStatus> {
    if !matches!(child.try_wait(), Ok(Some(_))) {
        // A frozen process would only see SIGTERM once running again.
        signal(child, libc::SIGCONT)?;
        signal(child, libc::SIGTERM)?;
    }
    for _ in 0..100 {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill()?;
    Ok(child.wait()?)
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

#[allow(unsafe_code)]
fn signal(child: &Child, signal: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: kill has no memory effects; pid is our own child, which callers
    // signal only while it runs (not reaped, so the pid is not reused).
    unsafe {
        libc::kill(pid, signal);
    }
    Ok(())
}

/// The first line of `stream`, or `None` if none arrives within `limit`.
pub(crate) fn read_line_within(
    stream: impl std::io::Read + Send + 'static,
    limit: Duration,
) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the node never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    rx.recv_timeout(limit)
        .ok()
        .filter(|l| !l.is_empty())
        .map(|l| l.trim_end().to_owned())
}
