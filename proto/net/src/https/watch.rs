//! The deadlines of an established connection, which hyper does not give in full:
//! the first request's first bytes, idleness between requests (HTTP/2 pings do
//! not count as use), and the progress of every response and upload body.
//!
//! Each connection has an [`Activity`]: its requests in flight, each with when
//! its own body last moved a byte, and when the last one ended. Request and
//! response bodies are [`Watched`]; a watchdog beside the connection compares
//! the activity with the deadlines. Progress is counted per request: a client
//! cannot keep a stalled stream alive by moving another. An idle connection is shut down gracefully (HTTP/2 GOAWAY, or a
//! close between HTTP/1.1 requests) and dropped if it lingers; a connection whose
//! bodies stopped moving is dropped at once, which frees what they held.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::Notify;

use super::admission::Ticket;
use super::limits::Deadlines;

/// How often the server's own long work counts as progress of its request.
const WORK_TOUCH: Duration = Duration::from_secs(1);
/// How long a connection told to shut down may take before it is dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The use of one connection.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    /// Requests in flight, by number: milliseconds since `opened` when each
    /// started or last moved a byte of its bodies.
    in_flight: Mutex<HashMap<u64, Arc<AtomicU64>>>,
    next_request: AtomicU64,
    any_request: AtomicBool,
    /// Milliseconds since `opened` when the last request in flight ended.
    touched_ms: AtomicU64,
    /// Told when the last request in flight ends: the deadline may then be
    /// shorter than the one the watchdog sleeps for.
    settled: Notify,
}

impl Activity {
    /// A connection opened now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: Mutex::default(),
            next_request: AtomicU64::new(0),
            any_request: AtomicBool::new(false),
            touched_ms: AtomicU64::new(0),
            settled: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn requests(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicU64>>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request started: it is in flight until the returned guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.any_request.store(true, Ordering::Relaxed);
        let number = self.next_request.fetch_add(1, Ordering::Relaxed);
        let moved = Arc::new(AtomicU64::new(self.now_ms()));
        self.requests().insert(number, moved.clone());
        InFlight {
            activity: self.clone(),
            number,
            moved,
        }
    }

    /// When the connection passes its deadline if nothing happens before: the
    /// request that moved least recently plus the progress deadline, or, with
    /// none in flight, the idle (or first-bytes) deadline.
    fn deadline(&self, d: &Deadlines) -> Instant {
        let oldest = self
            .requests()
            .values()
            .map(|moved| moved.load(Ordering::Relaxed))
            .min();
        let (since_ms, allowed) = match oldest {
            Some(moved) => (moved, d.progress),
            None if self.any_request.load(Ordering::Relaxed) => {
                (self.touched_ms.load(Ordering::Relaxed), d.idle)
            }
            None => (0, d.first_bytes),
        };
        self.opened + Duration::from_millis(since_ms) + allowed
    }

    fn is_busy(&self) -> bool {
        !self.requests().is_empty()
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
    number: u64,
    moved: Arc<AtomicU64>,
}

impl InFlight {
    /// What the request's bodies stamp when they move a byte.
    pub fn progress(&self) -> Progress {
        Progress {
            activity: self.activity.clone(),
            moved: self.moved.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.activity;
        // The idle clock starts when the last request ends.
        a.touched_ms.fetch_max(a.now_ms(), Ordering::Relaxed);
        let mut requests = a.requests();
        requests.remove(&self.number);
        if requests.is_empty() {
            a.settled.notify_one();
        }
    }
}

/// Where one request's bodies record that they moved a byte.
#[derive(Debug, Clone)]
pub struct Progress {
    activity: Arc<Activity>,
    moved: Arc<AtomicU64>,
}

impl Progress {
    fn touch(&self) {
        self.moved
            .fetch_max(self.activity.now_ms(), Ordering::Relaxed);
    }

    /// Runs `work`, the server's own (hashing, syncing), counting it as
    /// progress of the request while it runs, so a long import is not taken
    /// for a stalled client. Handlers find their request's `Progress` in its
    /// extensions.
    pub async fn while_working<T>(progress: Option<Self>, work: impl Future<Output = T>) -> T {
        let Some(progress) = progress else {
            return work.await;
        };
        tokio::pin!(work);
        loop {
            progress.touch();
            tokio::select! {
                done = &mut work => return done,
                () = tokio::time::sleep(WORK_TOUCH) => {}
            }
        }
    }
}

/// A body whose every frame counts as progress of its request; a response
/// body also carries its request's [`InFlight`].
#[derive(Debug)]
pub struct Watched<B> {
    inner: B,
    progress: Progress,
    _in_flight: Option<InFlight>,
    _place: Option<Ticket>,
}

impl<B> Watched<B> {
    /// A request body.
    pub fn request(inner: B, progress: Progress) -> Self {
        Self {
            inner,
            progress,
            _in_flight: None,
            _place: None,
        }
    }

    /// A response body: the request is in flight until it is dropped.
    pub fn response(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            progress: in_flight.progress(),
            _in_flight: Some(in_flight),
            _place: None,
        }
    }

    /// The same body, holding the request's admission place (if any) until it ends.
    pub fn holding(mut self, place: Option<Ticket>) -> Self {
        self._place = place;
        self
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Watched<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.progress.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a connection was ended by its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It finished by itself (or with an error of its own).
    ByItself,
    /// No request came in time: shut down gracefully.
    Idle,
    /// A body stopped moving: dropped.
    Stalled,
    /// The server is stopping.
    Stopping,
}

/// Drives `conn` to its end under the deadlines, or until `stop` completes.
pub async fn drive<C, E>(
    conn: C,
    activity: &Activity,
    deadlines: &Deadlines,
    stop: impl Future<Output = ()>,
) -> Ended
where
    C: GracefulConnection<Error = E>,
    E: std::fmt::Display,
{
    tokio::pin!(conn, stop);
    let ended = loop {
        let deadline = activity.deadline(deadlines);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return Ended::ByItself;
            }
            () = &mut stop => break Ended::Stopping,
            () = activity.settled.notified() => continue,
            () = tokio::time::sleep_until(deadline.into()) => {
                if Instant::now() < activity.deadline(deadlines) {
                    continue;
                }
                if activity.is_busy() {
                    // A stalled body never completes a graceful shutdown.
                    return Ended::Stalled;
                }
                break Ended::Idle;
            }
        }
    };
    conn.as_mut().graceful_shutdown();
    let grace = if ended == Ended::Stopping {
        super::DRAIN_TIMEOUT
    } else {
        SHUTDOWN_GRACE
    };
    let _ = tokio::time::timeout(grace, conn).await;
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlines() -> Deadlines {
        let s = Duration::from_secs;
        Deadlines {
            handshake: s(1),
            first_bytes: s(2),
            header_read: s(3),
            idle: s(4),
            progress: s(5),
        }
    }

    #[test]
    fn each_phase_has_its_deadline() {
        let a = Activity::new();
        let d = deadlines();
        let since_open = |a: &Activity| a.deadline(&d) - a.opened;
        assert_eq!(since_open(&a), Duration::from_secs(2), "first bytes");
        let request = a.start();
        assert!(since_open(&a) >= Duration::from_secs(5), "progress");
        drop(request);
        let idle = since_open(&a);
        assert!(
            idle >= Duration::from_secs(4) && idle < Duration::from_secs(5),
            "{idle:?}"
        );
    }

    #[tokio::test]
    async fn body_frames_are_progress_and_the_request_ends_with_its_body() {
        let a = Activity::new();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let body = http_body_util::Full::new(Bytes::from_static(b"x"));
        let mut watched = Watched::response(body, a.start());
        assert!(a.is_busy());
        let d = deadlines();
        let before = a.deadline(&d);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let frame = std::future::poll_fn(|cx| Pin::new(&mut watched).poll_frame(cx)).await;
        assert!(frame.is_some());
        assert!(a.deadline(&d) > before, "a frame moves the deadline");
        drop(watched);
        assert!(!a.is_busy());
    }

    #[tokio::test]
    async fn the_servers_own_work_counts_as_progress() {
        let a = Activity::new();
        let d = deadlines();
        let request = a.start();
        let before = a.deadline(&d);
        let work = tokio::time::sleep(WORK_TOUCH + Duration::from_millis(200));
        Progress::while_working(Some(request.progress()), work).await;
        assert!(a.deadline(&d) >= before + WORK_TOUCH);
    }

    #[tokio::test]
    async fn a_stalled_request_is_not_kept_alive_by_another() {
        let a = Activity::new();
        let d = deadlines();
        let stalled = a.start();
        let stalled_deadline = a.deadline(&d);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let busy = a.start();
        busy.progress().touch();
        assert_eq!(a.deadline(&d), stalled_deadline, "the oldest stamp rules");
        drop(stalled);
        assert!(a.deadline(&d) > stalled_deadline);
        drop(busy);
    }
}
