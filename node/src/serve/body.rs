//! Response bodies: small ones whole, files as a stream of verified pieces fed by
//! a blocking reader, so no file is ever buffered whole.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// Why a streamed body stopped early: the client then sees a cut response.
pub type BodyError = std::io::Error;

/// A response body.
#[derive(Debug)]
pub enum Body {
    /// Bytes in memory (maybe empty).
    Full(Option<Bytes>),
    /// Pieces from a reader task, `remaining` bytes still expected.
    Stream {
        /// The first piece, read before the response head was sent.
        first: Option<Bytes>,
        /// Verified pieces, or the error that cut the stream.
        pieces: mpsc::Receiver<Result<Bytes, BodyError>>,
        /// Bytes not yet delivered.
        remaining: u64,
    },
}

impl Body {
    /// A body of these bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        Self::Full(None)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream {
                first, remaining, ..
            } if first.is_some() => {
                let piece = first.take().unwrap_or_default();
                *remaining = remaining.saturating_sub(piece.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            Body::Stream {
                pieces, remaining, ..
            } => match pieces.poll_recv(cx) {
                Poll::Ready(Some(Ok(piece))) => {
                    *remaining = remaining.saturating_sub(piece.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(piece))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) if *remaining > 0 => Poll::Ready(Some(Err(BodyError::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "reader stopped early",
                )))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Body::Stream { remaining, .. } => *remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}
