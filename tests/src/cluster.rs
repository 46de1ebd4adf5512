//! A coordinator process, the `cartable` CLI pointed at it, and member nodes
//! joined through the CLI: the cluster an operator would set up, on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use cartable_net::identity::Identity;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_proto::control::{self, Contact, ControlRequest, ControlResponse, JoinRequest};
use cartable_proto::join::JoinToken;
use serde_json::Value;

use crate::node::{Node, StopTime, binary, cli_in, read_line_within, stop_timed, terminate_child};
use crate::{HttpsClient, sample_lesson};

/// Timings short enough for tests: heartbeats every 200 ms, down after 1.5 s,
/// a down node's copies re-placed after 2 s.
pub const FAST_POLICY: &str = "heartbeat_ms = 200\ndown_after_ms = 1500\nrepair_delay_secs = 2\n";

fn coordinator_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| binary("cartable-coordinator"))
}

fn admin_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| binary("cartable"))
}

/// A running `cartable-coordinator serve`.
#[derive(Debug)]
pub struct Coordinator {
    child: Child,
    data_dir: PathBuf,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    /// `IP:PORT` of its QUIC endpoint.
    pub quic: String,
    /// `http://IP:PORT` of its metrics, when its config has `[metrics] listen`.
    pub metrics: Option<String>,
}

impl Coordinator {
    /// Starts a coordinator on `data_dir` with `config` (TOML), on free ports.
    pub fn start_in(data_dir: &Path, config: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let config_path = data_dir.join("test-config.toml");
        std::fs::write(&config_path, config)?;
        Self::spawn(data_dir, &config_path, "127.0.0.1:0", "127.0.0.1:0")
    }

    /// Starts it again on the same folder and addresses (after a stop or a kill).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let https = self.url.trim_start_matches("https://").to_owned();
        let again = Self::spawn(
            &self.data_dir,
            &self.data_dir.join("test-config.toml"),
            &https,
            &self.quic.clone(),
        )?;
        *self = again;
        Ok(())
    }

    fn spawn(data_dir: &Path, config: &Path, https: &str, quic: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(coordinator_binary())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--config")
            .arg(config)
            .args(["serve", "--https", https, "--quic", quic])
            .env("CARTABLE_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .context("starting cartable-coordinator")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let Some(line) = read_line_within(stdout, Duration::from_secs(30)) else {
            let _ = child.kill();
            bail!("cartable-coordinator printed no listening line");
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_owned)
        };
        match (field("https="), field("quic=")) {
            (Some(url), Some(quic)) if line.starts_with("cartable-coordinator listening ") => {
                Ok(Self {
                    child,
                    data_dir: data_dir.to_owned(),
                    url,
                    quic,
                    metrics: field("metrics="),
                })
            }
            _ => {
                let _ = child.kill();
                bail!("unexpected listening line: {line:?}")
            }
        }
    }

    /// The process id, to read its use of memory and descriptors in /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin token `init` wrote.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.data_dir.join("admin-token"))?
            .trim()
            .to_owned())
    }

    /// Its HTTPS certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.data_dir.join("tls/cert.pem")
    }

    /// Runs `cartable ARGS` against this coordinator with the real admin token.
    pub fn cartable(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.cartable_with_token(&self.admin_token()?, args)
    }

    /// Runs `cartable ARGS` with the admin token given.
    pub fn cartable_with_token(&self, token: &str, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(admin_binary())
            .args(args)
            .env("CARTABLE_COORDINATOR", &self.url)
            .env("CARTABLE_TOKEN", token)
            .env("CARTABLE_CA_CERT", self.cert_path())
            .env("XDG_CONFIG_HOME", &self.data_dir)
            .output()
            .context("running cartable")
    }

    /// Runs `cartable ARGS --json` and parses what it printed; fails if it failed.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cartable(&all)?;
        ensure_success(&out, &format!("cartable {}", args.join(" ")))?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Makes a join token with the CLI.
    pub fn token(&self, region: &str, site: &str) -> anyhow::Result<String> {
        let out = self.cartable(&["token", "create", "--region", region, "--site", site])?;
        ensure_success(&out, "cartable token create")?;
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// Joins a fresh node at `region/site` and starts it.
    pub fn join_node(&self, dir: &Path, region: &str, site: &str) -> anyhow::Result<Node> {
        self.join_node_with(dir, region, site, &[])
    }

    /// Joins a fresh node at `region/site` and starts it with `extra` `serve` arguments.
    pub fn join_node_with(
        &self,
        dir: &Path,
        region: &str,
        site: &str,
        extra: &[&str],
    ) -> anyhow::Result<Node> {
        let token = self.token(region, site)?;
        let out = cli_in(dir, &["join", &token, "--capacity", "1GB"])?;
        ensure_success(&out, "cartable-node join")?;
        Node::start_in(dir, extra)
    }

    /// The data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Runs `cartable-coordinator ARGS` on this coordinator's data folder and
    /// configuration (`backup`, `restore`), running or not.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(coordinator_binary())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env("CARTABLE_LOG", "warn")
            .output()
            .context("running cartable-coordinator")
    }

    /// Sends SIGTERM and waits at most `limit` for the exit; keeps the folder
    /// and addresses for [`Coordinator::restart`].
    pub fn stop_timed(&mut self, limit: Duration) -> anyhow::Result<StopTime> {
        stop_timed(&mut self.child, limit)
    }

    /// Kills the process with SIGKILL.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = terminate_child(&mut self.child);
    }
}

/// Fails with the command's stderr unless it succeeded.
pub fn ensure_success(out: &Output, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Polls `check` every 100 ms until it gives `Some`, for at most `limit`.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `check` every 100 ms until it gives `Some`, for as long as
/// `progress` (a count that only grows, such as bytes copied) moved within the
/// last `stall`, and for at most `limit` in all. Work that yields to other
/// load (copies to browsers, idle-priority senders to busy cores) is held to
/// going on, not to a speed a loaded machine cannot promise.
pub fn wait_while_progressing<T>(
    stall: Duration,
    limit: Duration,
    what: &str,
    mut progress: impl FnMut() -> anyhow::Result<u64>,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let (mut last, mut moved) = (progress()?, Instant::now());
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        let now = progress()?;
        if now != last {
            (last, moved) = (now, Instant::now());
        }
        if moved.elapsed() > stall {
            bail!(
                "{what}: no progress for {stall:?} (at {last}, after {:?})",
                start.elapsed()
            );
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?} (progress at {last})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Four sites over two regions.
pub const PLACES: [(&str, &str); 4] = [
    ("nord", "lille"),
    ("nord", "amiens"),
    ("sud", "nice"),
    ("sud", "pau"),
];

/// A coordinator and one node per place, all up.
#[derive(Debug)]
pub struct Cluster {
    /// The coordinator.
    pub coordinator: Coordinator,
    /// The nodes, in the order of their places; `None` once killed by a test.
    pub nodes: Vec<Option<Node>>,
    _dirs: tempfile::TempDir,
}

/// Starts a cluster through the CLI (tokens, `join`, `serve`): one node per
/// place of [`PLACES`], with [`FAST_POLICY`].
pub fn cluster() -> anyhow::Result<Cluster> {
    cluster_of(&PLACES, FAST_POLICY, "")
}

/// Starts a cluster through the CLI: a coordinator configured with
/// `coordinator_config` (TOML), and one node per place, each started with
/// `node_config` (TOML) as its configuration file.
pub fn cluster_of(
    places: &[(&str, &str)],
    coordinator_config: &str,
    node_config: &str,
) -> anyhow::Result<Cluster> {
    let dirs = tempfile::tempdir()?;
    let coordinator = Coordinator::start_in(&dirs.path().join("coordinator"), coordinator_config)?;
    let config = dirs.path().join("node-config.toml");
    std::fs::write(&config, node_config)?;
    let extra = ["--config", config.to_str().context("path not UTF-8")?];
    let mut nodes = Vec::new();
    for (i, (region, site)) in places.iter().enumerate() {
        let dir = dirs.path().join(format!("node{i}"));
        nodes.push(Some(
            coordinator.join_node_with(&dir, region, site, &extra)?,
        ));
    }
    wait_for(Duration::from_secs(30), "every node up", || {
        let nodes = coordinator.json(&["nodes"])?;
        let up = nodes
            .as_array()
            .map_or(0, |a| a.iter().filter(|n| n["state"] == "up").count());
        Ok((up == places.len()).then_some(()))
    })?;
    Ok(Cluster {
        coordinator,
        nodes,
        _dirs: dirs,
    })
}

/// Publishes the sample lesson with `cartable publish`; returns its id.
pub fn publish(c: &Coordinator, args: &[&str]) -> anyhow::Result<String> {
    publish_dir(c, &sample_lesson(), args)
}

/// Publishes `dir` with `cartable publish`; returns its id.
pub fn publish_dir(c: &Coordinator, dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["publish", dir.to_str().context("path not UTF-8")?];
    all.extend_from_slice(args);
    let out = c.cartable(&all)?;
    ensure_success(&out, "cartable publish")?;
    let stdout = String::from_utf8(out.stdout)?;
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("bundle "))
        .ok_or_else(|| anyhow::anyhow!("publish printed no bundle line: {stdout}"))?;
    Ok(id.trim().to_owned())
}

/// Whether `cartable bundles` lists `bundle`.
pub fn lists_bundle(c: &Coordinator, bundle: &str) -> anyhow::Result<bool> {
    let bundles = c.json(&["bundles"])?;
    Ok(bundles
        .as_array()
        .into_iter()
        .flatten()
        .any(|b| b["id"] == bundle))
}

/// Complete replicas of `bundle` on nodes that are up: (node, region, site).
pub fn complete(c: &Coordinator, bundle: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let show = c.json(&["bundle", "show", bundle])?;
    Ok(show["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["state"] == "complete" && r["node_up"] == true)
        .map(|r: &Value| {
            let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (text("node"), text("region"), text("site"))
        })
        .collect())
}

/// The bundles a node's store holds, asked through its CLI (its daemon answers).
pub fn held(node: &Node) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let out = cli_in(node.data_dir(), &["bundles", "--json"])?;
    ensure_success(&out, "cartable-node bundles")?;
    let list: Value = serde_json::from_slice(&out.stdout)?;
    Ok(list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["id"].as_str().map(str::to_owned))
        .collect())
}

/// The `Location` of the coordinator's 302 answer to `path`.
pub fn redirect(c: &Coordinator, path: &str) -> anyhow::Result<String> {
    let client = HttpsClient::new(
        c.url.trim_start_matches("https://"),
        &std::fs::read(c.cert_path())?,
        &[b"http/1.1"],
    )?;
    let reply = tokio::runtime::Runtime::new()?.block_on(client.get(path, &[]))?;
    anyhow::ensure!(reply.status == 302, "{path}: status {}", reply.status);
    Ok(reply.header("location").to_owned())
}

/// A test member's QUIC side, as a real node would open it: an endpoint under
/// `identity`, a contact no browser reaches, and a control connection to the
/// coordinator `token` names (not joined yet).
pub async fn member_endpoint(
    identity: &Identity,
    token: &JoinToken,
) -> anyhow::Result<(PeerEndpoint, Contact, quinn::Connection)> {
    let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse()?, identity, Members::anyone())?;
    let contact = Contact {
        https_url: "https://127.0.0.1:9".into(),
        quic: endpoint.local_addr()?,
        https_cert_sha256: "00".repeat(32),
    };
    let coordinator = PeerAddr {
        id: token.coordinator,
        addr: token.quic,
    };
    let control = endpoint.connect_for(coordinator, control::ALPN).await?;
    Ok((endpoint, contact, control))
}

/// Joins a test member (its control connection `conn`, from
/// [`member_endpoint`]) with `token`, declaring `capacity`.
pub async fn join_member(
    conn: &quinn::Connection,
    token: &JoinToken,
    contact: &Contact,
    capacity: u64,
) -> anyhow::Result<()> {
    let join = ControlRequest::Join(JoinRequest {
        secret: token.secret_text(),
        contact: contact.clone(),
        capacity,
    });
    let joined = cartable_net::control::ask(conn, &join).await?;
    anyhow::ensure!(
        matches!(joined, ControlResponse::Joined { .. }),
        "{joined:?}"
    );
    Ok(())
}
