//! Headless Chromium (Debian's `chromium`), driven by its command line: load a
//! page, let it run, and read back the DOM it built.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

/// Where Debian installs Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";

/// The Chromium binary, or an error saying how to install it.
pub fn chromium() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from);
    anyhow::ensure!(
        path.exists(),
        "{} not found: install Debian's chromium (apt-get install -y chromium), or set CHROMIUM",
        path.display()
    );
    Ok(path)
}

/// Loads `url` in a fresh headless Chromium that accepts the test's self-signed
/// certificate, gives the page `budget` of virtual time, and returns the DOM.
pub fn dump_dom(url: &str, budget: Duration) -> anyhow::Result<String> {
    Profile::new()?.dump_dom(url, budget, &[])
}

/// One pupil's browser: a Chromium profile kept across page loads, so cookies
/// and storage a page leaves are there for the next.
#[derive(Debug)]
pub struct Profile {
    dir: tempfile::TempDir,
}

impl Profile {
    /// A new, empty profile.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
        })
    }

    /// Loads `url` in headless Chromium on this profile, with extra command-line
    /// `flags` (e.g. `--disable-http2`), gives the page `budget` of virtual time,
    /// and returns the DOM.
    pub fn dump_dom(&self, url: &str, budget: Duration, flags: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(chromium()?)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--ignore-certificate-errors",
            ])
            .args(flags)
            .arg(format!("--user-data-dir={}", self.dir.path().display()))
            .arg(format!("--virtual-time-budget={}", budget.as_millis()))
            .arg("--dump-dom")
            .arg(url)
            .output()
            .context("running chromium")?;
        anyhow::ensure!(
            output.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    }
}
