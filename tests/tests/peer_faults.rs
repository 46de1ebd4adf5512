//! Peers that fail during a fetch, as real processes on loopback: a serving
//! node killed mid-transfer, a peer that truncates its stream or lies about a
//! blob's size, and a peer that accepts a request and never answers. In each
//! case the fetch must complete byte-exact from the other peer.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cartable_tests::peers::{
    GROUP, Lie, has_checkpoint, lesson_of_sizes, pattern, serving, start_liar, stored_blob,
};
use cartable_tests::{add_in, cli_in, node_binary};

/// Runs `cartable-node --data-dir DATA ARGS` and insists it succeeds.
fn run_ok(data: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = cli_in(data, args)?;
    anyhow::ensure!(
        out.status.success(),
        "cartable-node --data-dir {data:?} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A lesson of several non-empty files, so that whichever peer a blob starts
/// at, the first peer is asked for at least one blob.
fn several_files(dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let sizes = [1, GROUP - 1, GROUP + 1, 2 * GROUP + 1, 1 << 20, 3 << 20];
    lesson_of_sizes(dir, &sizes)
}

/// Every file is stored byte-exact in `b`, and `check` agrees.
fn assert_copied(b: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    for (name, data) in files {
        let stored = stored_blob(b, data).with_context(|| format!("{name} not stored"))?;
        anyhow::ensure!(stored == *data, "{name}: stored bytes differ");
    }
    run_ok(b, &["check"])?;
    Ok(())
}

/// A `cartable-node fetch --json` child; its stderr lines are kept with the
/// time they came, its stdout whole. Killed on drop.
struct Fetch {
    child: Child,
    started: Instant,
    log: Arc<Mutex<Vec<(Duration, String)>>>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

/// How a fetch ended: `status` is `None` if it was killed at the time limit.
struct Finished {
    status: Option<ExitStatus>,
    elapsed: Duration,
    stdout: String,
    log: Vec<(Duration, String)>,
}

impl Fetch {
    fn start(b: &Path, bundle: &str, from: &[String]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(node_binary());
        cmd.arg("--data-dir")
            .arg(b)
            .args(["fetch", bundle, "--json"]);
        for peer in from {
            cmd.args(["--from", peer]);
        }
        let mut child = cmd
            .env("CARTABLE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let started = Instant::now();
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err.expect("piped"))
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push((started.elapsed(), line));
            }
        });
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.expect("piped").read_to_string(&mut s);
            s
        });
        Ok(Self {
            child,
            started,
            log,
            stdout: Some(stdout),
        })
    }

    /// Waits up to `limit` from the start; kills the fetch past it.
    fn finish(mut self, limit: Duration) -> anyhow::Result<Finished> {
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break Some(status);
            }
            if self.started.elapsed() > limit {
                self.child.kill()?;
                self.child.wait()?;
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        let stdout = self.stdout.take().map(|h| h.join().unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100)); // let the stderr thread catch up
        let log = self.log.lock().unwrap().clone();
        Ok(Finished {
            status,
            elapsed,
            stdout: stdout.unwrap_or_default(),
            log,
        })
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Finished {
    /// When the first stderr line containing `needle` came.
    fn logged(&self, needle: &str) -> Option<Duration> {
        self.log
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }

    fn log_text(&self) -> String {
        let lines = self
            .log
            .iter()
            .map(|(t, l)| format!("  [{:>6.2}s] {l}", t.as_secs_f64()));
        lines.collect::<Vec<_>>().join("\n")
    }

    /// The JSON report of a successful fetch, or an error telling what happened.
    fn report(&self) -> anyhow::Result<serde_json::Value> {
        match self.status {
            Some(s) if s.success() => Ok(serde_json::from_str(&self.stdout)?),
            Some(s) => anyhow::bail!(
                "fetch failed ({s}) after {:?}:\n{}",
                self.elapsed,
                self.log_text()
            ),
            None => anyhow::bail!(
                "fetch still running after {:?}: killed. Its log:\n{}",
                self.elapsed,
                self.log_text()
            ),
        }
    }
}

/// Waits until B's `partial/` holds a checkpoint (`*.groups`) of the fetch.
fn wait_for_checkpoint(partial: &Path, fetch: &mut Fetch, limit: Duration) -> anyhow::Result<()> {
    while !has_checkpoint(partial) {
        anyhow::ensure!(
            fetch.started.elapsed() < limit,
            "no checkpoint within {limit:?}"
        );
        anyhow::ensure!(
            fetch.child.try_wait()?.is_none(),
            "fetch ended before A was killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

#[test]
fn killing_the_serving_peer_mid_fetch_fails_over_to_the_second_peer() -> anyhow::Result<()> {
    let (t0, dir) = (Instant::now(), tempfile::tempdir()?);
    let [a, b, c, lesson] = ["a", "b", "c", "lesson"].map(|n| dir.path().join(n));
    std::fs::create_dir_all(&lesson)?;
    let video = lesson.join("video.mp4");
    std::fs::write(&video, pattern(256 << 20, 3))?;
    let bundle = add_in(&a, &lesson)?;
    anyhow::ensure!(add_in(&c, &lesson)? == bundle, "same folder, same bundle");
    let mut first = serving(&a, &b)?;
    let second = serving(&c, &b)?;
    // The blob's parts are asked of both peers in turn; A is sure to serve some.
    eprintln!("setup took {:.2?}", t0.elapsed());
    let from = [first.peer_addr(), second.peer_addr()];
    let mut fetch = Fetch::start(&b, &bundle, &from)?;
    wait_for_checkpoint(&b.join("partial"), &mut fetch, Duration::from_secs(60))?;
    first.kill()?;
    let killed = fetch.started.elapsed();
    let done = fetch.finish(Duration::from_secs(90))?;
    let lost = done.logged("peer lost");
    eprintln!(
        "A killed at {killed:.2?}; B logged 'peer lost' at {lost:.2?} (failover {:.2?} after the \
         kill); fetch done at {:.2?}\n{}",
        lost.map(|l| l.saturating_sub(killed)),
        done.elapsed,
        done.log_text()
    );
    let report = done.report()?;
    anyhow::ensure!(
        report["liars"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );
    let source = std::fs::read(&video)?;
    let stored = stored_blob(&b, &source)?;
    anyhow::ensure!(
        stored == source,
        "the blob stored in B differs from the source"
    );
    run_ok(&b, &["check"])?;
    eprintln!("whole test took {:.2?}", t0.elapsed());
    Ok(())
}

/// A fresh B fetches a lesson from a liar (first) and an honest node; returns
/// the liar's id, the files, B's data folder and how the fetch ended.
async fn fetch_past_a_liar(
    dir: &Path,
    lie: Lie,
    limit: Duration,
) -> anyhow::Result<(String, Vec<(String, Vec<u8>)>, Finished)> {
    let [a, b, liar_dir, lesson] = ["a", "b", "liar", "lesson"].map(|n| dir.join(n));
    let files = several_files(&lesson)?;
    let bundle = add_in(&a, &lesson)?;
    let honest = serving(&a, &b)?;
    let (liar_id, liar_addr) = start_liar(&liar_dir, &lesson, &b, lie)?;
    let from = [liar_addr, honest.peer_addr()];
    let fetch =
        tokio::task::spawn_blocking(move || Fetch::start(&b, &bundle, &from)?.finish(limit))
            .await??;
    drop(honest);
    Ok((liar_id, files, fetch))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_truncates_or_lies_about_size_is_dropped() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    for lie in [Lie::Truncate, Lie::WrongSize] {
        let dir = tempfile::tempdir()?;
        let (liar, files, done) =
            fetch_past_a_liar(dir.path(), lie, Duration::from_secs(60)).await?;
        eprintln!(
            "{lie:?}: fetch took {:.2?}\n{}",
            done.elapsed,
            done.log_text()
        );
        let report = done.report().with_context(|| format!("{lie:?}"))?;
        let liars = report["liars"].as_array().context("no liars list")?;
        anyhow::ensure!(
            liars.iter().any(|l| l[0] == liar.as_str()),
            "{lie:?}: the liar {liar} is not reported: {report}"
        );
        assert_copied(&dir.path().join("b"), &files).with_context(|| format!("{lie:?}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stalls_is_cut_and_the_fetch_completes_elsewhere() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let limit = Duration::from_secs(120);
    let (_, files, done) = fetch_past_a_liar(dir.path(), Lie::Stall, limit).await?;
    eprintln!(
        "stall: fetch ended after {:.2?}\n{}",
        done.elapsed,
        done.log_text()
    );
    done.report().context(
        "a peer that accepted a blob request and never answered held the fetch past the bound: \
         QUIC keep-alives keep its connection open, so only a limit on a silent stream cuts it",
    )?;
    assert_copied(&dir.path().join("b"), &files)?;
    Ok(())
}
