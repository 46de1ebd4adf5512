//! What the fire scenarios share: a mix of lessons published through the CLI,
//! and readers that follow every lesson's links every 200 ms, the way pupils'
//! browsers would through a fire, checking every byte they get.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;

use crate::cluster::{Coordinator, publish_dir, wait_for};
use crate::peers::pattern;
use crate::{HttpsClient, Node};

/// Time between two rounds of follows.
pub const ROUND: Duration = Duration::from_millis(200);
/// A follow not answered within this counts as failed: a pupil gives up.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a large file read per follow, at an offset that moves each round.
const WINDOW: usize = 64 * 1024;
/// Rounds a reader makes at most, whatever the test does (5 minutes).
const MAX_ROUNDS: u32 = 1500;

/// A published lesson and the bytes of its files.
#[derive(Debug)]
pub struct Lesson {
    /// The bundle id.
    pub id: String,
    /// Paths and bytes.
    pub files: Vec<(String, Vec<u8>)>,
}

impl Lesson {
    /// Bytes of its files, as the coordinator counts a copy.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

/// Publishes, with `--replicas 3`, six small HTML lessons sharing a style
/// sheet and a logo, and one lesson with a `video_len`-byte video; returns
/// once every copy is complete.
pub fn publish_mix(c: &Coordinator, root: &Path, video_len: usize) -> anyhow::Result<Vec<Lesson>> {
    let style = pattern(20_000, 1);
    let logo = pattern(8_000, 2);
    let mut lessons = Vec::new();
    for i in 0..7u8 {
        let page = format!(
            "<!doctype html><title>Leçon {i}</title><p>{}</p>",
            "x".repeat(500 * usize::from(i))
        );
        let mut files = vec![("index.html".to_owned(), page.into_bytes())];
        if i < 6 {
            files.push(("style.css".to_owned(), style.clone()));
            files.push(("img/logo.svg".to_owned(), logo.clone()));
        } else {
            files.push(("film.mp4".to_owned(), pattern(video_len, 3)));
        }
        let dir = root.join(format!("lesson{i}"));
        for (path, bytes) in &files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().context("a file in a folder")?)?;
            std::fs::write(file, bytes)?;
        }
        let id = publish_dir(c, &dir, &["--replicas", "3"])?;
        lessons.push(Lesson { id, files });
    }
    // Copies of all lessons are made side by side, not one lesson after the other.
    wait_for(
        Duration::from_secs(60),
        "three copies of every lesson",
        || {
            let bundles = c.json(&["bundles"])?;
            let list = bundles.as_array().context("a list of bundles")?;
            Ok(list.iter().all(|b| b["complete"] == 3).then_some(()))
        },
    )?;
    Ok(lessons)
}

/// Where a follow went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Through {
    /// The coordinator's `/b/...` link, then the node it redirected to.
    Coordinator,
    /// Straight to a node (its URL).
    Node(String),
}

/// One link followed.
#[derive(Debug, Clone)]
pub struct Follow {
    /// The round it belongs to.
    pub round: u32,
    /// When it started, after the readers started.
    pub at: Duration,
    /// The lesson, by index.
    pub lesson: usize,
    /// Where it went.
    pub through: Through,
    /// How long it took.
    pub took: Duration,
    /// What went wrong, if anything: every byte is checked.
    pub error: Option<String>,
}

/// Readers following every lesson's links every [`ROUND`]: through the
/// coordinator, and straight to one of `nodes` (a different one each round).
#[derive(Debug)]
pub struct Readers {
    /// When the first round started: [`Follow::at`] counts from here.
    pub started: Instant,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<Follow>>>,
}

impl Readers {
    /// Starts reading `lessons`; `all` are every node a redirect may name.
    pub fn start(
        coordinator: &Coordinator,
        all: &[&Node],
        nodes: &[&Node],
        lessons: Arc<Vec<Lesson>>,
    ) -> anyhow::Result<Self> {
        let coordinator = HttpsClient::new(
            coordinator.url.trim_start_matches("https://"),
            &std::fs::read(coordinator.cert_path())?,
            &[b"http/1.1"],
        )?;
        let mut clients = BTreeMap::new();
        for n in all {
            clients.insert(n.url.clone(), HttpsClient::for_node(n)?);
        }
        let direct = nodes.iter().map(|n| n.url.clone()).collect();
        let reader = Reader {
            coordinator,
            clients: Arc::new(clients),
            direct,
            lessons,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()?.block_on(reader.run(started, &stopped))
        });
        Ok(Self {
            started,
            stop,
            thread,
        })
    }

    /// Stops reading and returns every follow, in the order they ended.
    pub fn stop(self) -> anyhow::Result<Vec<Follow>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("a reader panicked"))?
    }
}

struct Reader {
    coordinator: HttpsClient,
    clients: Arc<BTreeMap<String, HttpsClient>>,
    direct: Vec<String>,
    lessons: Arc<Vec<Lesson>>,
}

impl Reader {
    async fn run(self, start: Instant, stop: &AtomicBool) -> anyhow::Result<Vec<Follow>> {
        let mut tick = tokio::time::interval(ROUND);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut follows = JoinSet::new();
        for round in 0..MAX_ROUNDS {
            tick.tick().await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for lesson in 0..self.lessons.len() {
                let node = &self.direct[(round as usize + lesson) % self.direct.len()];
                for through in [Through::Coordinator, Through::Node(node.clone())] {
                    let follow = self.follow(round, start.elapsed(), lesson, through);
                    follows.spawn(follow);
                }
            }
        }
        Ok(follows.join_all().await)
    }

    /// One follow of one file of `lesson`, bounded by [`FOLLOW_TIMEOUT`].
    fn follow(
        &self,
        round: u32,
        at: Duration,
        lesson: usize,
        through: Through,
    ) -> impl Future<Output = Follow> + Send + 'static {
        let (coordinator, clients, lessons) = (
            self.coordinator.clone(),
            self.clients.clone(),
            self.lessons.clone(),
        );
        async move {
            let l = &lessons[lesson];
            let (path, bytes) = &l.files[round as usize % l.files.len()];
            let read = read(&coordinator, &clients, &through, &l.id, path, bytes, round);
            let began = Instant::now();
            let error = match tokio::time::timeout(FOLLOW_TIMEOUT, read).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(_) => Some(format!("no answer within {FOLLOW_TIMEOUT:?}")),
            };
            Follow {
                round,
                at,
                lesson,
                through,
                took: began.elapsed(),
                error,
            }
        }
    }
}

/// Reads `path` of bundle `id` and checks it against `expected`: whole, or a
/// window that moves with `round` when the file is large.
async fn read(
    coordinator: &HttpsClient,
    clients: &BTreeMap<String, HttpsClient>,
    through: &Through,
    id: &str,
    path: &str,
    expected: &[u8],
    round: u32,
) -> anyhow::Result<()> {
    let link = format!("/b/{id}/{path}");
    let (client, target) = match through {
        Through::Node(url) => (&clients[url], link),
        Through::Coordinator => {
            let reply = coordinator.get(&link, &[]).await?;
            anyhow::ensure!(reply.status == 302, "coordinator answered {}", reply.status);
            let location = reply.header("location");
            let (base, target) = clients
                .iter()
                .find_map(|(url, c)| location.strip_prefix(url.as_str()).map(|t| (c, t)))
                .with_context(|| format!("redirected to an unknown node: {location}"))?;
            (base, target.to_owned())
        }
    };
    let (range, want) = if expected.len() > WINDOW {
        let start = (round as usize * 7919 * 1024) % (expected.len() - WINDOW);
        let header = format!("bytes={start}-{}", start + WINDOW - 1);
        (Some(header), &expected[start..start + WINDOW])
    } else {
        (None, expected)
    };
    let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", r.as_str())).collect();
    let reply = client.get(&target, &headers).await?;
    let ok_status = if range.is_some() { 206 } else { 200 };
    anyhow::ensure!(
        reply.status == ok_status,
        "{target}: status {} ({})",
        reply.status,
        String::from_utf8_lossy(&reply.body).trim()
    );
    anyhow::ensure!(reply.body == want, "{target}: wrong bytes");
    Ok(())
}

/// What the follows add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Follows made through the coordinator, and through nodes.
    pub follows: (usize, usize),
    /// Of which failed.
    pub failed: (usize, usize),
    /// Failed through the coordinator, started later than the bound after the fire.
    pub failed_late: usize,
    /// The slowest follow that succeeded, through the coordinator and through nodes.
    pub slowest: (Duration, Duration),
    /// The most lessons whose coordinator link failed in one round.
    pub most_unreachable: usize,
    /// A few failures, for the log.
    pub examples: Vec<String>,
}

fn slowest(list: &[&Follow]) -> Duration {
    list.iter()
        .filter(|f| f.error.is_none())
        .map(|f| f.took)
        .max()
        .unwrap_or_default()
}

/// Adds up `follows`, the fire having started `fire` after the readers.
pub fn tally(follows: &[Follow], fire: Duration, bound: Duration) -> Tally {
    let (coordinator, direct): (Vec<&Follow>, Vec<&Follow>) = follows
        .iter()
        .partition(|f| f.through == Through::Coordinator);
    let failed = |list: &[&Follow]| list.iter().filter(|f| f.error.is_some()).count();
    let failed_coordinator: Vec<&&Follow> =
        coordinator.iter().filter(|f| f.error.is_some()).collect();
    let mut per_round: BTreeMap<u32, BTreeSet<usize>> = BTreeMap::new();
    for f in &failed_coordinator {
        per_round.entry(f.round).or_default().insert(f.lesson);
    }
    Tally {
        follows: (coordinator.len(), direct.len()),
        failed: (failed(&coordinator), failed(&direct)),
        failed_late: failed_coordinator
            .iter()
            .filter(|f| f.at > fire + bound)
            .count(),
        slowest: (slowest(&coordinator), slowest(&direct)),
        most_unreachable: per_round.values().map(BTreeSet::len).max().unwrap_or(0),
        examples: [&coordinator, &direct]
            .into_iter()
            .flat_map(|list| list.iter().filter(|f| f.error.is_some()).take(4))
            .map(|f| {
                let at = f.at.as_secs_f64() - fire.as_secs_f64();
                format!(
                    "{:?} at {at:+.1}s: {}",
                    f.through,
                    f.error.as_deref().unwrap_or("")
                )
            })
            .collect(),
    }
}
