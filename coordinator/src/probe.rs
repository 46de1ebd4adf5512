//! Checking that a node still answers before browsers are sent to it.
//!
//! Heartbeats come every few seconds and a node is only called down after
//! several are missed; a burned site is silent (no reset, no ICMP), and a
//! frozen machine still accepts TCP. So a redirect does not trust an old sign
//! of life: when a candidate was last heard from (heartbeat or check) more than
//! [`RouteTimes::fresh`] ago, its HTTPS side is asked `GET /healthz` (pinned to
//! its certificate) before anyone is sent there, and the next candidate is
//! tried when it does not answer within [`RouteTimes::probe_timeout`].
//!
//! A flood of redirects does not multiply checks: a node has at most one check
//! in flight, every redirect waiting for it shares its answer, and an answer
//! stands for `fresh`. A node that failed its check is skipped, by every
//! redirect, until a later check succeeds (a heartbeat alone does not clear
//! it: the QUIC side may live while HTTPS does not); such a check is started at
//! most once per `fresh`, in the background, while redirects would pick that
//! node. The checks' connections are kept open between checks, and there is at
//! most one per member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cartable_proto::NodeId;
use http::{Method, StatusCode};
use tokio::sync::watch;

use cartable_net::client::{HttpsClient, full};
use cartable_net::pin::Pin;

/// How old a sign of life may be, and how long a check may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTimes {
    /// A node heard from within this is sent browsers without a check.
    pub fresh: Duration,
    /// A check not answered within this counts as failed.
    pub probe_timeout: Duration,
}

impl Default for RouteTimes {
    fn default() -> Self {
        Self {
            fresh: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
        }
    }
}

/// A node browsers might be sent to, as the state knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub id: NodeId,
    /// Its HTTPS origin.
    pub https_url: String,
    /// Its certificate's SHA-256 (hex).
    pub cert_sha256: String,
    /// Its last heartbeat, when that proves its HTTPS origin lives: `None`
    /// for a node reporting another address than the recorded one (its
    /// heartbeats say nothing of the origin browsers would be sent to).
    pub heard: Option<Instant>,
}

/// What a redirect does with one candidate.
#[derive(Debug)]
enum Verdict {
    /// Heard from recently enough: send the browser.
    Send,
    /// It failed its last check: try the next one.
    Skip,
    /// Wait for the check under way.
    Wait(watch::Receiver<Option<bool>>),
}

/// What is known of one node's HTTPS side.
#[derive(Debug, Default)]
struct Signs {
    /// When a check last succeeded.
    ok: Option<Instant>,
    /// When a check last failed.
    failed: Option<Instant>,
    /// The check in flight, if any.
    running: Option<watch::Receiver<Option<bool>>>,
    /// The connection checks reuse, for the origin and pin it was made for.
    client: Option<(String, String, HttpsClient)>,
}

impl Signs {
    fn failed_since_ok(&self) -> bool {
        self.failed.is_some_and(|f| self.ok.is_none_or(|ok| f > ok))
    }
}

/// The checks of every member, shared by all redirects.
#[derive(Debug, Default)]
pub struct Prober {
    times: RouteTimes,
    nodes: Mutex<HashMap<NodeId, Signs>>,
    checks: AtomicU64,
}

impl Prober {
    /// Checks with these times.
    pub fn new(times: RouteTimes) -> Self {
        Self {
            times,
            nodes: Mutex::default(),
            checks: AtomicU64::new(0),
        }
    }

    /// Checks started since the coordinator started.
    pub fn checks_made(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// The first of `candidates` (best first) that answers, checking those
    /// not heard from recently; the checks of the first few run at once, so a
    /// redirect waits at most one check's timeout.
    pub async fn pick(self: &Arc<Self>, candidates: &[Candidate]) -> Option<NodeId> {
        /// Candidates looked at by one redirect: each may cost a check.
        const AT_MOST: usize = 3;
        let now = Instant::now();
        let verdicts: Vec<(NodeId, Verdict)> = candidates
            .iter()
            .take(AT_MOST)
            .map(|c| (c.id, self.verdict(c, now)))
            .collect();
        let deadline = tokio::time::Instant::now() + self.times.probe_timeout;
        for (id, verdict) in verdicts {
            let answered = match verdict {
                Verdict::Send => true,
                Verdict::Skip => false,
                Verdict::Wait(mut answer) => {
                    let waited =
                        tokio::time::timeout_at(deadline, answer.wait_for(Option::is_some));
                    matches!(waited.await, Ok(Ok(ok)) if *ok == Some(true))
                }
            };
            if answered {
                return Some(id);
            }
        }
        None
    }

    /// Forgets a node that is no longer a member, and closes its connection.
    pub fn forget(&self, node: &NodeId) {
        self.lock().remove(node);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Signs>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn verdict(self: &Arc<Self>, candidate: &Candidate, now: Instant) -> Verdict {
        let fresh = self.times.fresh;
        let mut nodes = self.lock();
        let signs = nodes.entry(candidate.id).or_default();
        if signs.failed_since_ok() {
            let due = signs
                .failed
                .is_some_and(|f| now.saturating_duration_since(f) >= fresh);
            if due && signs.running.is_none() {
                signs.running = Some(self.start(candidate, signs));
            }
            return Verdict::Skip;
        }
        let last = signs.ok.max(candidate.heard);
        if last.is_some_and(|last| now.saturating_duration_since(last) < fresh) {
            return Verdict::Send;
        }
        let running = match &signs.running {
            Some(running) => running.clone(),
            None => {
                let running = self.start(candidate, signs);
                signs.running = Some(running.clone());
                running
            }
        };
        Verdict::Wait(running)
    }

    /// Starts a check of `candidate`; its answer reaches every receiver.
    fn start(
        self: &Arc<Self>,
        candidate: &Candidate,
        signs: &mut Signs,
    ) -> watch::Receiver<Option<bool>> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(None);
        let reusable = signs
            .client
            .take()
            .filter(|(url, pin, _)| *url == candidate.https_url && *pin == candidate.cert_sha256);
        let prober = self.clone();
        let candidate = candidate.clone();
        tokio::spawn(async move {
            let (client, ok) = prober.check(&candidate, reusable).await;
            let mut nodes = prober.lock();
            if let Some(signs) = nodes.get_mut(&candidate.id) {
                let at = Instant::now();
                if ok {
                    signs.ok = Some(at);
                } else {
                    tracing::info!(node = %candidate.id, url = candidate.https_url, "a node did not answer its check: browsers go to another copy");
                    signs.failed = Some(at);
                }
                signs.running = None;
                signs.client = client;
            }
            let _ = tx.send(Some(ok));
        });
        rx
    }

    async fn check(
        &self,
        candidate: &Candidate,
        reusable: Option<(String, String, HttpsClient)>,
    ) -> (Option<(String, String, HttpsClient)>, bool) {
        let made = match reusable {
            Some(kept) => Ok(kept),
            None => Pin::from_sha256_hex(&candidate.cert_sha256)
                .and_then(|pin| HttpsClient::new(&candidate.https_url, pin))
                .map(|client| {
                    let url = candidate.https_url.clone();
                    (url, candidate.cert_sha256.clone(), client)
                }),
        };
        let Ok((url, pin, mut client)) = made else {
            return (None, false);
        };
        let asked = client.send(Method::GET, "/healthz", &[], full(Vec::new()));
        match tokio::time::timeout(self.times.probe_timeout, asked).await {
            Ok(Ok((StatusCode::OK, _))) => (Some((url, pin, client)), true),
            // A node that shed the check (503) is not sent browsers either;
            // a connection that timed out is not reused.
            Ok(Ok(_)) => (Some((url, pin, client)), false),
            _ => (None, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(heard: Instant) -> Candidate {
        let heard = Some(heard);
        Candidate {
            id: NodeId::from_bytes([1; 32]),
            // Nothing listens on port 1: a check fails at once.
            https_url: "https://127.0.0.1:1".into(),
            cert_sha256: "ab".repeat(32),
            heard,
        }
    }

    #[tokio::test]
    async fn a_node_heard_from_just_now_is_sent_browsers_without_a_check() {
        let prober = Arc::new(Prober::default());
        let c = candidate(Instant::now());
        assert_eq!(prober.pick(std::slice::from_ref(&c)).await, Some(c.id));
        assert!(prober.lock()[&c.id].running.is_none(), "no check made");
    }

    #[tokio::test]
    async fn a_silent_node_is_checked_once_skipped_by_every_redirect_and_rechecked_later() {
        let times = RouteTimes {
            fresh: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(500),
        };
        let prober = Arc::new(Prober::new(times));
        let c = candidate(Instant::now() - Duration::from_secs(2));
        let picks = futures_join(&prober, &c, 20).await;
        assert!(picks.iter().all(Option::is_none), "{picks:?}");
        assert_eq!(prober.checks_made(), 1, "twenty redirects, one check");
        let failed_at = prober.lock()[&c.id].failed.expect("checked");

        // Even a fresh heartbeat does not clear a failed check.
        let heard_now = candidate(Instant::now());
        assert_eq!(prober.pick(std::slice::from_ref(&heard_now)).await, None);
        assert_eq!(
            prober.lock()[&c.id].failed,
            Some(failed_at),
            "no new check before `fresh`"
        );

        tokio::time::sleep(times.fresh).await;
        assert_eq!(prober.pick(std::slice::from_ref(&heard_now)).await, None);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            prober.lock()[&c.id].failed > Some(failed_at),
            "checked again in the background"
        );
    }

    /// `n` redirects at once for the same candidate.
    async fn futures_join(prober: &Arc<Prober>, c: &Candidate, n: usize) -> Vec<Option<NodeId>> {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let (p, c) = (prober.clone(), c.clone());
            tasks.spawn(async move { p.pick(&[c]).await });
        }
        tasks.join_all().await
    }

    #[tokio::test]
    async fn the_next_candidate_is_taken_when_the_first_fails_its_check() {
        let prober = Arc::new(Prober::default());
        let dead = candidate(Instant::now() - Duration::from_secs(2));
        let alive = Candidate {
            id: NodeId::from_bytes([2; 32]),
            heard: Some(Instant::now()),
            ..dead.clone()
        };
        assert_eq!(prober.pick(&[dead, alive.clone()]).await, Some(alive.id));
    }
}
