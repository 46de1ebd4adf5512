//! Both daemons' logs: `--log-format json` writes one JSON object per line,
//! `--log-level` wins over `CARTABLE_LOG`, a bad level is refused up front.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use cartable_tests::node::binary;

/// Each line of `stderr` as JSON, failing on a line that is not.
fn json_lines(stderr: &str) -> anyhow::Result<Vec<Value>> {
    stderr
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}")))
        .collect()
}

#[test]
fn a_node_started_with_json_logs_writes_one_object_per_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(binary("cartable-node"))
        .args(["--log-format", "json", "--data-dir"])
        .arg(dir.path())
        .args(["serve", "--https", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
        .args(["--log-level", "debug"])
        .env("CARTABLE_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut first = [0u8; 32];
    stdout.read_exact(&mut first)?;
    assert!(first.starts_with(b"cartable-node listening"));
    let mut stderr = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).map(|_| text)
    });
    let stopped = cartable_tests::node::stop_timed(&mut child, Duration::from_secs(20))?;
    assert!(stopped.status.success(), "{stopped:?}");
    let text = reader.join().map_err(|_| anyhow::anyhow!("reader"))??;
    let lines = json_lines(&text)?;
    assert!(lines.len() >= 2, "{text}");
    for line in &lines {
        assert!(line["level"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
    }
    let messages: Vec<&str> = lines.iter().filter_map(|l| l["message"].as_str()).collect();
    assert!(messages.contains(&"serving"), "{messages:?}");
    assert!(messages.contains(&"stopped"), "{messages:?}");
    // --log-level debug won over CARTABLE_LOG=error: info lines are there.
    assert!(lines.iter().any(|l| l["level"] == "INFO"), "{text}");
    Ok(())
}

#[test]
fn a_coordinator_logs_json_and_a_bad_level_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(binary("cartable-coordinator"))
        .args(["--log-format", "json", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("init")
        .arg(dir.path().join("coordinator.toml"))
        .env_remove("CARTABLE_LOG")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&String::from_utf8(out.stderr)?)?;
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["message"].is_string()),
        "{lines:?}"
    );

    for daemon in ["cartable-coordinator", "cartable-node"] {
        let out = Command::new(binary(daemon))
            .args(["--log-level", "verbose", "--data-dir"])
            .arg(dir.path().join("unused"))
            .arg("init")
            .arg(dir.path().join("unused.toml"))
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{daemon}: {err}");
        assert!(
            err.contains("invalid value 'verbose' for '--log-level <LEVEL>'")
                && err.contains("possible values: off, error, warn, info, debug, trace"),
            "{daemon}: {err}"
        );
        assert!(!dir.path().join("unused").exists() && !dir.path().join("unused.toml").exists());
    }
    Ok(())
}

#[test]
fn text_logs_carry_no_colours_off_a_terminal_and_priorities_without_timestamps_in_the_journal()
-> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir()?;
    let init = |data: &str, log: &std::path::Path, journal: Option<String>| {
        let mut command = Command::new(binary("cartable-coordinator"));
        command
            .arg("--data-dir")
            .arg(dir.path().join(data))
            .arg("init")
            .arg(dir.path().join(format!("{data}.toml")))
            .env_remove("CARTABLE_LOG")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?);
        if let Some(stream) = journal {
            command.env("JOURNAL_STREAM", stream);
        }
        let status = command.status()?;
        anyhow::ensure!(status.success(), "init failed");
        anyhow::Ok(std::fs::read_to_string(log)?)
    };
    // stderr is a file: plain text, stamped.
    let plain = init("a", &dir.path().join("a.log"), None)?;
    assert!(
        plain.contains("INFO") && !plain.contains('\x1b'),
        "{plain:?}"
    );
    let year = |line: &str| line.starts_with("20") && line.as_bytes().get(4) == Some(&b'-');
    assert!(plain.lines().all(year), "{plain}");
    // stderr is the stream JOURNAL_STREAM names: the journal stamps it.
    let log = dir.path().join("b.log");
    std::fs::File::create(&log)?;
    let meta = std::fs::metadata(&log)?;
    let journal = init("b", &log, Some(format!("{}:{}", meta.dev(), meta.ino())))?;
    assert!(
        !journal.is_empty() && !journal.lines().any(year),
        "{journal}"
    );
    // Each line tells the journal its priority (6: info).
    assert!(
        journal
            .lines()
            .all(|l| l.starts_with("<6>") && l.contains("INFO")),
        "{journal}"
    );
    Ok(())
}
