//! `scripts/dev-cluster.sh`, the README's first command, as a newcomer runs it:
//! started, the sample lesson answering, interrupted by Ctrl-C (SIGINT to its
//! process group, as a terminal sends it), then started again on the same
//! addresses. Nothing it started may outlive it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::{Pid, Signal, kill_process_group};

use cartable_tests::{HttpsClient, node::without_cargo_env, workspace_root};

/// The last line the script prints once the cluster is up and the lesson published.
const READY: &str = "Ctrl-C stops the cluster.";

/// A free TCP port on loopback (released for the script to take).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The running script, leader of its own process group like a terminal's job.
struct Script {
    child: Child,
    output: Vec<String>,
}

impl Script {
    fn start(data: &Path, https: &str) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new("bash");
        command
            .arg(workspace_root().join("scripts/dev-cluster.sh"))
            .env("DATA_DIR", data)
            .env("COORDINATOR_HTTPS", https)
            .env(
                "CARTABLE_PROFILE",
                if cfg!(debug_assertions) {
                    "dev"
                } else {
                    "release"
                },
            )
            .env("CARTABLE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        without_cargo_env(&mut command);
        let child = command.spawn().context("starting dev-cluster.sh")?;
        Ok(Self {
            child,
            output: Vec::new(),
        })
    }

    /// Reads the script's output until its ready line.
    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let stdout = self.child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + limit;
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            let ready = line.contains(READY);
            self.output.push(line);
            if ready {
                return Ok(());
            }
        }
        bail!(
            "no ready line within {limit:?}; output:\n{}",
            self.output.join("\n")
        )
    }

    fn pgid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pids fit in i32")
    }

    /// Ctrl-C: SIGINT to the whole process group, then the script's exit.
    fn interrupt(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        signal_group(self.pgid(), Signal::INT)?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the script still runs {limit:?} after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // A failed test must not leave a cluster behind.
        let _ = signal_group(self.pgid(), Signal::KILL);
        let _ = self.child.wait();
    }
}

/// Sends `signal` to every process of group `pgid`, as a terminal does.
fn signal_group(pgid: i32, signal: Signal) -> anyhow::Result<()> {
    let group = Pid::from_raw(pgid).context("no process group")?;
    kill_process_group(group, signal).context("signalling the script's process group")
}

/// The processes now in process group `pgid`, as `pid command` lines.
fn group_members(pgid: i32) -> anyhow::Result<Vec<String>> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        // A process that ended between the listing and the read is no member.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            let comm = head.split_once('(').map_or("", |(_, c)| c);
            members.push(format!("{pid} {comm}"));
        }
    }
    Ok(members)
}

/// The coordinator sends a browser asking for the lesson's name to its bundle.
fn lesson_answers(data: &Path, https: &str) -> anyhow::Result<()> {
    let cert = std::fs::read(data.join("coordinator/tls/cert.pem"))?;
    let client = HttpsClient::new(https, &cert, &[b"http/1.1"])?;
    let reply = tokio::runtime::Runtime::new()?.block_on(client.get("/n/fractions/", &[]))?;
    anyhow::ensure!(reply.status == 302, "status {}", reply.status);
    let location = reply.header("location");
    anyhow::ensure!(location.starts_with("/b/"), "location {location:?}");
    Ok(())
}

/// One run: up, lesson answering, Ctrl-C, nothing left.
fn run_and_interrupt(data: &Path, https: &str) -> anyhow::Result<()> {
    let mut script = Script::start(data, https)?;
    script.wait_ready(Duration::from_secs(240))?;
    lesson_answers(data, https)?;
    let members = group_members(script.pgid())?;
    let daemons = members.iter().filter(|m| m.contains(" cartable")).count();
    assert_eq!(daemons, 7, "a coordinator and six nodes: {members:?}");
    let status = script.interrupt(Duration::from_secs(30))?;
    assert_eq!(status.code(), Some(130), "exit status after Ctrl-C");
    let left = group_members(script.pgid())?;
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
    Ok(())
}

#[test]
fn ctrl_c_stops_the_whole_cluster_and_a_second_run_starts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("cluster");
    let https = format!("127.0.0.1:{}", free_port()?);
    run_and_interrupt(&data, &https).context("first run")?;
    // The same data folder and address: nothing of the first run may be in the way.
    run_and_interrupt(&data, &https).context("second run")?;
    Ok(())
}
