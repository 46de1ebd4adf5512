//! The threads HTTP/2 connections run on: one single-threaded runtime per
//! worker of the daemon's runtime, each connection kept on one of them for the
//! rest of its life once its handshake chose HTTP/2, as nginx keeps a
//! connection in one worker process.
//!
//! An HTTP/2 connection is many tasks: the connection's own and one per
//! stream. On the daemon's shared, work-stealing runtime they ran wherever a
//! worker was free, so every response woke the connection from another
//! thread, and when the kernel took a core from a worker, the connections
//! queued on it waited together. Under h2load its p99 was 0.79-0.93× nginx's;
//! kept on one thread each, 1.24-1.41×, with a fifth less CPU per request
//! (`benches/README.md`, "HTTP/2: connections kept on one thread").
//!
//! An HTTP/1.1 connection is one task and stays on the daemon's runtime, where
//! an idle worker takes over the connections of one the kernel has paused:
//! kept on one thread, its p99 went from 5 ms to 8 ms under wrk.
//!
//! What an HTTP/2 connection gives up is that takeover, so what runs on these
//! threads must not wait long: a connection's TLS records, bytes kept in
//! memory, a small file missing from memory read and verified in place (one
//! group of 16 KiB); larger reads go to blocking threads, and the node runs
//! fetch-through's commits (which sync) and its peers' connections on the
//! daemon's runtime. Connections are dealt round-robin, so every thread has
//! as many. Admission, the TLS handshake and the wait for the first bytes stay
//! on the daemon's runtime.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Blocking threads (disk reads, hashing) of all the HTTP/2 threads together:
/// tokio's default for one runtime, shared out.
const BLOCKING_THREADS: usize = 512;

/// Where connections are dealt.
#[derive(Debug)]
pub(super) struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

/// Dropped to end the threads. Connections still open then (the drain is
/// over) are dropped; reads already on a blocking thread finish on their own.
#[derive(Debug)]
pub(super) struct Threads {
    _stops: Vec<oneshot::Sender<()>>,
}

/// Starts as many threads as the calling runtime has workers.
pub(super) async fn start() -> io::Result<(Shards, Threads)> {
    let count = Handle::current().metrics().num_workers();
    let mut handles = Vec::with_capacity(count);
    let mut stops = Vec::with_capacity(count);
    for index in 0..count {
        let (stop, stopped) = oneshot::channel::<()>();
        let (started, handle) = oneshot::channel();
        // The runtime is made on its own thread: one dropped here, in an
        // async context, would panic.
        std::thread::Builder::new()
            .name(format!("cartable-h2-{index}"))
            .spawn(move || {
                let runtime = Builder::new_current_thread()
                    .enable_all()
                    .thread_name("cartable-h2-io")
                    .max_blocking_threads((BLOCKING_THREADS / count).max(8))
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => return drop(started.send(Err(e))),
                };
                let _ = started.send(Ok(runtime.handle().clone()));
                // Spawned connections run while this thread waits here.
                let _ = runtime.block_on(stopped);
                runtime.shutdown_background();
            })?;
        let handle = handle
            .await
            .map_err(|_| io::Error::other("an HTTP/2 thread ended as it started"))??;
        handles.push(handle);
        stops.push(stop);
    }
    let shards = Shards {
        handles,
        next: AtomicUsize::new(0),
    };
    Ok((shards, Threads { _stops: stops }))
}

impl Shards {
    /// Runs `connection` on the next thread in turn. It starts by moving its
    /// socket there ([`MovableTcp::move_here`]).
    pub(super) fn spawn(&self, connection: impl Future<Output = ()> + Send + 'static) {
        let next = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[next].spawn(connection);
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
    use std::io::{Read, Write};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    async fn connections_are_dealt_in_turn_to_one_thread_per_worker() {
        let (shards, _threads) = start().await.unwrap();
        let (seen, mut names) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let seen = seen.clone();
            shards.spawn(async move {
                tokio::task::yield_now().await;
                seen.send(thread_name()).unwrap();
            });
        }
        let mut dealt = Vec::new();
        for _ in 0..4 {
            dealt.push(names.recv().await.unwrap());
        }
        dealt.sort();
        let expected = [
            "cartable-h2-0",
            "cartable-h2-0",
            "cartable-h2-1",
            "cartable-h2-1",
        ];
        assert_eq!(dealt, expected);
    }

    #[test]
    fn a_moved_socket_works_after_the_runtime_it_came_from_is_gone() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let origin = tokio::runtime::Runtime::new().unwrap();
        let (shards, _threads, tcp) = origin.block_on(async {
            let (shards, threads) = start().await.unwrap();
            (shards, threads, TcpStream::from_std(accepted).unwrap())
        });
        let mut tcp = MovableTcp::new(tcp);
        let (done, moved) = std::sync::mpsc::channel();
        shards.spawn(async move {
            tcp.move_here().unwrap();
            done.send(()).unwrap();
            let mut ping = [0; 4];
            tcp.read_exact(&mut ping).await.unwrap();
            assert_eq!(&ping, b"ping");
            tcp.write_all(b"pong").await.unwrap();
        });
        moved.recv().unwrap();
        // The socket's first event loop is gone: only the new one can wake it.
        origin.shutdown_background();
        client.write_all(b"ping").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut pong = [0; 4];
        client
            .read_exact(&mut pong)
            .expect("answered from the new event loop");
        assert_eq!(&pong, b"pong");
    }

    #[tokio::test]
    async fn ending_the_threads_drops_connections_left_open() {
        let (shards, threads) = start().await.unwrap();
        let (tcp, _client) = pair().await;
        let (dropped, was_dropped) = oneshot::channel::<()>();
        shards.spawn(async move {
            let _held = (tcp, dropped);
            std::future::pending::<()>().await;
        });
        drop(threads);
        let ended = tokio::time::timeout(Duration::from_secs(5), was_dropped).await;
        assert!(
            ended.expect("the thread ends").is_err(),
            "dropped, not completed"
        );
    }
}
