//! The threads HTTP/2 connections run on: one single-threaded runtime per
//! worker of the daemon's runtime, each connection kept on one of them for the
//! rest of its life once its handshake chose HTTP/2, as nginx keeps a
//! connection in one worker process.
//!
//! An HTTP/2 connection is many tasks: the connection's own and one per
//! stream. On the daemon's shared, work-stealing runtime they ran wherever a
//! worker was free, so every response woke the connection from another
//! thread, and when the kernel took a core from a worker, the connections
//! queued on it waited together. Its p99 under h2load was 0.88-1.08× nginx's;
//! kept on one thread each, 1.27-1.56×, with 20-30% more requests per second
//! (`benches/README.md`, "HTTP/2: connections kept on one thread").
//!
//! An HTTP/1.1 connection is one task and stays on the daemon's runtime, where
//! an idle worker takes over the connections of one the kernel has paused:
//! kept on one thread, its p99 went from 5 ms to 8 ms under wrk.
//!
//! What an HTTP/2 connection gives up is that takeover. Connections are dealt
//! round-robin, so every thread has as many; the work they do on the thread
//! itself is short (TLS records, hot cached bytes), and disk reads and hashing
//! go to blocking threads as before. Admission, the TLS handshake and the wait
//! for the first bytes stay on the daemon's runtime.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// How long connections still open after the drain get before their thread ends.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);

/// Where connections are dealt.
#[derive(Debug)]
pub(super) struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

/// What ends the threads.
#[derive(Debug)]
pub(super) struct Threads {
    /// Dropped to end each thread.
    stops: Vec<oneshot::Sender<()>>,
    /// Complete when each thread has shut its runtime down.
    ended: Vec<oneshot::Receiver<()>>,
}

/// Starts as many threads as the calling runtime has workers (one within a
/// single-threaded runtime, as in tests).
pub(super) fn start() -> io::Result<(Shards, Threads)> {
    let count = Handle::try_current().map_or(1, |h| h.metrics().num_workers());
    let mut handles = Vec::new();
    let mut threads = Threads {
        stops: Vec::new(),
        ended: Vec::new(),
    };
    for index in 0..count.max(1) {
        let runtime = Builder::new_current_thread()
            .enable_all()
            .thread_name("cartable-h2-io")
            .build()?;
        handles.push(runtime.handle().clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let (end, ended) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("cartable-h2-{index}"))
            .spawn(move || {
                // Spawned connections run while this thread waits here.
                let _ = runtime.block_on(stopped);
                runtime.shutdown_timeout(LEFTOVER_GRACE);
                let _ = end.send(());
            })?;
        threads.stops.push(stop);
        threads.ended.push(ended);
    }
    let shards = Shards {
        handles,
        next: AtomicUsize::new(0),
    };
    Ok((shards, threads))
}

impl Shards {
    /// Runs `connection` on the next thread in turn. It starts by moving its
    /// socket there ([`MovableTcp::move_here`]).
    pub(super) fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        let next = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[next].spawn(connection);
    }
}

impl Threads {
    /// Ends every thread: connections still open are dropped after a grace.
    pub(super) async fn stop(self) {
        drop(self.stops);
        for ended in self.ended {
            let _ = ended.await;
        }
    }
}

/// A connection's socket, which can leave the event loop it was accepted on
/// for the one of the thread it is served on.
#[derive(Debug)]
pub(super) struct MovableTcp {
    /// Empty only if a move failed, after which the connection is dropped.
    tcp: Option<TcpStream>,
}

impl MovableTcp {
    pub(super) fn new(tcp: TcpStream) -> Self {
        Self { tcp: Some(tcp) }
    }

    /// Registers the socket with the calling runtime's event loop instead.
    /// Readiness is not lost: the new registration reports what is pending.
    pub(super) fn move_here(&mut self) -> io::Result<()> {
        let tcp = self.tcp.take().ok_or_else(gone)?.into_std()?;
        self.tcp = Some(TcpStream::from_std(tcp)?);
        Ok(())
    }

    /// Waits until the socket has bytes to read (or is closed).
    pub(super) async fn readable(&self) -> io::Result<()> {
        self.tcp.as_ref().ok_or_else(gone)?.readable().await
    }

    fn pinned(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.tcp.as_mut().map(Pin::new).ok_or_else(gone)
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the socket failed to move")
}

impl AsyncRead for MovableTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().pinned()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for MovableTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().pinned()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().pinned()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().pinned()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().pinned()?.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name of the thread running the caller.
    fn thread_name() -> String {
        std::thread::current().name().unwrap_or_default().to_owned()
    }

    /// A connected pair: what the server accepted, and the client's end.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (listener.accept().await.unwrap().0, client)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_dealt_in_turn_and_stay_on_their_thread() {
        let (shards, threads) = start().unwrap();
        assert_eq!(shards.handles.len(), 2);
        let (seen, mut names) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (tcp, mut client) = pair().await;
            // Sent before the move: the new event loop still reports it.
            tokio::io::AsyncWriteExt::write_all(&mut client, b"x")
                .await
                .unwrap();
            clients.push(client);
            let mut tcp = MovableTcp::new(tcp);
            let seen = seen.clone();
            shards.spawn(async move {
                let before = thread_name();
                tcp.move_here().unwrap();
                let mut byte = [0];
                tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut byte)
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
                seen.send((before, thread_name(), byte)).unwrap();
            });
        }
        let mut dealt = Vec::new();
        for _ in 0..4 {
            let (before, after, byte) = names.recv().await.unwrap();
            assert_eq!((before.as_str(), &byte), (after.as_str(), b"x"));
            dealt.push(before);
        }
        dealt.sort();
        assert_eq!(
            dealt,
            [
                "cartable-h2-0",
                "cartable-h2-0",
                "cartable-h2-1",
                "cartable-h2-1"
            ]
        );
        threads.stop().await;
    }

    #[tokio::test]
    async fn stopping_ends_connections_left_open() {
        let (shards, threads) = start().unwrap();
        let (tcp, _client) = pair().await;
        let (dropped, was_dropped) = oneshot::channel::<()>();
        shards.spawn(async move {
            let _held = (tcp, dropped);
            std::future::pending::<()>().await;
        });
        tokio::time::timeout(Duration::from_secs(5), threads.stop())
            .await
            .expect("the threads end");
        assert!(
            was_dropped.await.is_err(),
            "the connection's task was dropped"
        );
    }
}
