//! Shedding instead of queueing: past `max_pending` requests waiting for their
//! answer, new ones get 503 at once with `Retry-After`; a page navigation gets a
//! tiny page that retries by itself (browsers ignore `Retry-After` there).
//!
//! [`Pressure`] is also what lower priorities look at: from half the threshold a
//! node sheds fetch-through, and background copies and the scrub pause until
//! browsers are served again (see [`Level`]). Waiting requests, not their
//! latency, are the signal: a fetch-through answer is slow by nature (it waits
//! on peers) without the server being pressed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// How pressed a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Background work may run.
    Calm,
    /// Browsers wait: fetch-through is shed, background work pauses.
    Busy,
    /// Every new request is shed.
    Overloaded,
}

/// Requests waiting for their answer, and when the last one came.
#[derive(Debug)]
pub struct Pressure {
    pending: AtomicUsize,
    max_pending: usize,
    /// When this was made, and the last request after it, in nanoseconds.
    born: Instant,
    last_request: AtomicU64,
}

/// A request waiting for its answer.
#[derive(Debug)]
pub struct Pending(Arc<Pressure>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pressure {
    /// Nothing pending; shedding beyond `max_pending`.
    pub fn new(max_pending: usize) -> Arc<Self> {
        Arc::new(Self {
            pending: AtomicUsize::new(0),
            max_pending,
            born: Instant::now(),
            last_request: AtomicU64::new(0),
        })
    }

    /// How long ago the last request came (since this was made, if none did).
    pub fn since_last_request(&self) -> Duration {
        let last = Duration::from_nanos(self.last_request.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    /// Requests waiting for their answer now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The level now.
    pub fn level(&self) -> Level {
        let pending = self.pending.load(Ordering::Relaxed);
        if pending >= self.max_pending {
            Level::Overloaded
        } else if pending >= (self.max_pending / 2).max(1) {
            Level::Busy
        } else {
            Level::Calm
        }
    }

    /// A request starts waiting, unless the server is overloaded.
    pub fn enter(self: &Arc<Self>) -> Option<Pending> {
        // A plain store: two workers racing leave one of two nearly equal
        // times, and a read-modify-write would cost every request more.
        let now = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_request.store(now, Ordering::Relaxed);
        if self.pending.fetch_add(1, Ordering::Relaxed) >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Pending(self.clone()))
    }

    /// Waits while the server is busier than `Calm`, checking now and then, so
    /// background work yields to browsers and resumes after.
    pub async fn wait_calm(&self) {
        while self.level() > Level::Calm {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The answer to a request shed for `why`, asking to come back after `retry`.
pub fn shed_response(
    status: StatusCode,
    why: &str,
    retry: Duration,
    request: &HeaderMap,
) -> Response<Full<Bytes>> {
    let secs = retry.as_secs().max(1);
    let (content_type, body) = if is_navigation(request) {
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><meta charset=utf-8>\
                 <meta http-equiv=refresh content={secs}>\
                 <title>One moment</title>\
                 <p>Many pupils are connecting at once. This page retries by itself \
                 in {secs} s.</p>\n"
            ),
        )
    } else {
        (
            "text/plain; charset=utf-8",
            format!("{why}, retry in {secs} s\n"),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A sandboxed lesson's fetch() is cross-origin: without this it would see
    // a network error instead of the 503 and its Retry-After.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// Whether a request is a browser loading a page (not a script, image or API call).
fn is_navigation(headers: &HeaderMap) -> bool {
    let value = |name| headers.get(name).and_then(|v| v.to_str().ok());
    match value("sec-fetch-mode") {
        Some(mode) => mode == "navigate",
        None => value(header::ACCEPT.as_str()).is_some_and(|a| a.contains("text/html")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_threshold_requests_are_shed() {
        let p = Pressure::new(4);
        let held: Vec<_> = (0..4).map(|_| p.enter().unwrap()).collect();
        assert_eq!(p.level(), Level::Overloaded);
        assert!(p.enter().is_none());
        drop(held);
        assert!(p.enter().is_some());
    }

    #[test]
    fn half_way_is_busy() {
        let p = Pressure::new(4);
        let _a = p.enter().unwrap();
        assert_eq!(p.level(), Level::Calm);
        let _b = p.enter().unwrap();
        assert_eq!(p.level(), Level::Busy);
    }

    #[test]
    fn navigations_get_a_page_that_retries_and_others_text() {
        let mut nav = HeaderMap::new();
        nav.insert("sec-fetch-mode", HeaderValue::from_static("navigate"));
        let page = shed_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            Duration::from_secs(3),
            &nav,
        );
        assert_eq!(page.headers()[header::RETRY_AFTER], "3");
        assert!(
            page.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let mut script = HeaderMap::new();
        script.insert("sec-fetch-mode", HeaderValue::from_static("cors"));
        script.insert(header::ACCEPT, HeaderValue::from_static("text/html"));
        let text = shed_response(
            StatusCode::TOO_MANY_REQUESTS,
            "slow down",
            Duration::ZERO,
            &script,
        );
        assert_eq!(text.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(text.headers()[header::RETRY_AFTER], "1");
        assert_eq!(
            text.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "*",
            "a sandboxed lesson's fetch() reads the 429"
        );
        assert!(
            text.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
    }
}
