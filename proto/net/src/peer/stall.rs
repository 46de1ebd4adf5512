//! A reader that fails when its peer stops sending: QUIC keep-alives hold a
//! connection open even when the application on the other side has stalled,
//! so each stream gets its own limit on silence.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Wraps `inner`; a read that waits longer than `limit` fails with `TimedOut`.
#[derive(Debug)]
pub struct StallGuard<R> {
    inner: R,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<R> StallGuard<R> {
    /// Starts the clock now.
    pub fn new(inner: R, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for StallGuard<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.limit;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "peer stalled")))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
