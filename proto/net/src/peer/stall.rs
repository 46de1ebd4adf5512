//! A reader that fails when its peer stops sending: QUIC keep-alives hold a
//! connection open even when the application on the other side has stalled,
//! so each stream gets its own limit on silence. And one that fails once the
//! request it serves was given up.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

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

/// Wraps `inner`; reads fail once `token` is cancelled, even one waiting.
#[derive(Debug)]
pub struct UntilCancelled<R> {
    inner: R,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<R> UntilCancelled<R> {
    /// Reads `inner` until `token` is cancelled.
    pub fn new(inner: R, token: CancellationToken) -> Self {
        Self {
            inner,
            cancelled: Box::pin(token.cancelled_owned()),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for UntilCancelled<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::other("request given up")));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_read_waiting_on_a_silent_peer_fails_once_given_up() {
        // The writing end stays open and silent: the read would wait for ever.
        let (_writer, reader) = tokio::io::duplex(64);
        let token = CancellationToken::new();
        let mut reader = UntilCancelled::new(reader, token.clone());
        let read = tokio::spawn(async move { reader.read_u8().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!read.is_finished());
        token.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), read).await;
        let err = result.expect("ended at once").unwrap().unwrap_err();
        assert_eq!(err.to_string(), "request given up");
    }

    #[tokio::test]
    async fn bytes_already_sent_are_read_until_given_up() {
        let (mut writer, reader) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut writer, b"ab")
            .await
            .unwrap();
        let token = CancellationToken::new();
        let mut reader = UntilCancelled::new(reader, token.clone());
        assert_eq!(reader.read_u8().await.unwrap(), b'a');
        token.cancel();
        assert!(reader.read_u8().await.is_err());
    }
}
