//! A peer's stream handed to a decoding thread in batches. The decoder
//! verifies and writes on a blocking thread; read through a bridge, it woke
//! up, polled the stream and went back to sleep for nearly every 16 KiB
//! group it read: 37,000 context switches and a sixth of the receiver's CPU
//! for a GiB, on one core (`benches/README.md`, "The receiver reads in
//! batches").
//! A [`Pump`] on the runtime takes the stream's chunks as they come (no copy)
//! and hands them on about every 128 KiB; the [`BatchReader`] reads
//! them on the decoding thread.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// About how much the pump gathers before handing it on: 8 groups.
const BATCH_BYTES: usize = 128 * 1024;

/// The most chunks in one batch. A chunk is what one datagram carried of the
/// stream (about 1.2 KiB from an honest peer) and keeps that datagram's
/// buffer alive: a peer sending a byte at a time fills batches by count, not
/// by size, and cannot make the pump hold more buffers than this.
const CHUNKS_PER_BATCH: usize = 128;

/// How long the first byte gathered waits for more before the batch goes on
/// anyway, so that a slow link's groups reach the decoder (and a browser
/// fetching through) without waiting for a whole batch.
const HOLD_LIMIT: Duration = Duration::from_millis(2);

/// Batches handed on and not yet read: with the one being gathered and the
/// one being decoded, at most 4 batches held per stream, beyond what QUIC's
/// flow control lets the peer send.
const BATCHES_WAITING: usize = 2;

/// Chunks taken from the stream at once.
const CHUNKS_PER_READ: usize = 32;

/// What the pump hands on.
#[derive(Debug)]
enum Handed {
    Chunks(Vec<Bytes>),
    /// The peer finished the stream: all was handed on.
    End,
    /// The stream failed, was reset or stalled.
    Failed(io::Error),
}

/// Splits `recv` into a pump, to be run on the runtime, and the reader it
/// feeds. A stream silent for `stall_limit` fails the reader with `TimedOut`;
/// a pump dropped before the stream's end (its request given up) fails the
/// reader's next read, whatever it was handed and has not read yet.
pub fn batched(recv: quinn::RecvStream, stall_limit: Duration) -> (Pump, BatchReader) {
    let (tx, rx) = mpsc::channel(BATCHES_WAITING);
    let given_up = Arc::new(AtomicBool::new(false));
    let reader = BatchReader {
        rx,
        chunks: VecDeque::new(),
        given_up: given_up.clone(),
        ended: None,
    };
    let pump = Pump {
        recv,
        tx,
        stall_limit,
        given_up,
        done: false,
    };
    (pump, reader)
}

/// Reads a stream and hands its chunks on in batches.
#[derive(Debug)]
pub struct Pump {
    recv: quinn::RecvStream,
    tx: mpsc::Sender<Handed>,
    stall_limit: Duration,
    given_up: Arc<AtomicBool>,
    /// Set once the stream's end or failure was handed on.
    done: bool,
}

impl Pump {
    /// Runs until the stream ends, fails or stalls (which the reader is
    /// told), or the reader is dropped.
    pub async fn run(mut self) {
        let mut chunks: [Bytes; CHUNKS_PER_READ] = std::array::from_fn(|_| Bytes::new());
        let mut gathered = Gathered::default();
        loop {
            let deadline = gathered.hand_on_by(Instant::now() + self.stall_limit);
            let read = tokio::time::timeout_at(deadline, self.recv.read_chunks(&mut chunks)).await;
            let end = match read {
                Ok(Ok(Some(n))) => {
                    let now = Instant::now();
                    for chunk in &mut chunks[..n] {
                        gathered.add(std::mem::take(chunk), now);
                    }
                    if !gathered.full() {
                        continue;
                    }
                    None
                }
                Err(_) if !gathered.is_empty() => None,
                Ok(Ok(None)) => Some(Handed::End),
                Ok(Err(e)) => Some(Handed::Failed(io::Error::from(e))),
                Err(_) => Some(Handed::Failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer stalled",
                ))),
            };
            if !gathered.is_empty() && self.tx.send(gathered.take()).await.is_err() {
                return;
            }
            if let Some(end) = end {
                self.done = true;
                let _ = self.tx.send(end).await;
                return;
            }
        }
    }
}

/// What the pump holds until it hands it on.
#[derive(Debug, Default)]
struct Gathered {
    chunks: Vec<Bytes>,
    bytes: usize,
    /// Set by the first byte held: a trickle cannot hold a batch back.
    due: Option<Instant>,
}

impl Gathered {
    fn add(&mut self, chunk: Bytes, now: Instant) {
        if chunk.is_empty() {
            return;
        }
        self.bytes += chunk.len();
        self.chunks.push(chunk);
        self.due.get_or_insert(now + HOLD_LIMIT);
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    fn full(&self) -> bool {
        self.bytes >= BATCH_BYTES || self.chunks.len() >= CHUNKS_PER_BATCH
    }

    /// When to hand on what is held; `otherwise` when nothing is.
    fn hand_on_by(&self, otherwise: Instant) -> Instant {
        self.due.unwrap_or(otherwise)
    }

    fn take(&mut self) -> Handed {
        let capacity = CHUNKS_PER_BATCH + CHUNKS_PER_READ;
        let chunks = std::mem::replace(&mut self.chunks, Vec::with_capacity(capacity));
        (self.bytes, self.due) = (0, None);
        Handed::Chunks(chunks)
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        if !self.done {
            self.given_up.store(true, Ordering::Relaxed);
        }
    }
}

/// The stream's bytes on the decoding thread, in order.
#[derive(Debug)]
pub struct BatchReader {
    rx: mpsc::Receiver<Handed>,
    chunks: VecDeque<Bytes>,
    given_up: Arc<AtomicBool>,
    /// How the stream ended, once it did: every later read says the same.
    ended: Option<Result<(), (io::ErrorKind, String)>>,
}

/// What the decoder reads once its request was given up.
fn request_given_up() -> io::Error {
    io::Error::other("request given up")
}

impl Read for BatchReader {
    /// Blocks while nothing was handed on: not to be called on the runtime.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.given_up.load(Ordering::Relaxed) {
            return Err(request_given_up());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        while self.chunks.is_empty() {
            match &self.ended {
                Some(Ok(())) => return Ok(0),
                Some(Err((kind, message))) => return Err(io::Error::new(*kind, message.clone())),
                None => {}
            }
            match self.rx.blocking_recv() {
                Some(Handed::Chunks(batch)) => self.chunks.extend(batch),
                Some(Handed::End) => self.ended = Some(Ok(())),
                Some(Handed::Failed(e)) => self.ended = Some(Err((e.kind(), e.to_string()))),
                // The pump was dropped between sends.
                None => return Err(request_given_up()),
            }
        }
        let mut filled = 0;
        while let Some(chunk) = self.chunks.front_mut() {
            let n = chunk.len().min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&chunk[..n]);
            chunk.advance(n);
            filled += n;
            if !chunk.is_empty() {
                break;
            }
            self.chunks.pop_front();
        }
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::connected::{Connected, connected};

    /// A stream between two real endpoints: its sending end, and a reader
    /// fed by a pump running on the runtime, stalling after `stall_limit`.
    struct Stream {
        send: quinn::SendStream,
        reader: BatchReader,
        pump: tokio::task::JoinHandle<()>,
        _keep: Connected,
    }

    async fn stream(stall_limit: Duration) -> anyhow::Result<Stream> {
        let both = connected().await?;
        let (mut send, _) = both.dialed.open_bi().await?;
        // A stream is seen by its receiver once something is sent on it.
        send.write_all(b"<").await?;
        let (_, mut recv) = both.accepted.conn.accept_bi().await?;
        let mut first = [0; 1];
        recv.read_exact(&mut first).await?;
        let (pump, reader) = batched(recv, stall_limit);
        Ok(Stream {
            send,
            reader,
            pump: tokio::spawn(pump.run()),
            _keep: both,
        })
    }

    /// Reads on a blocking thread, as the decoder does.
    async fn on_a_thread<T: Send + 'static>(
        mut reader: BatchReader,
        f: impl FnOnce(&mut BatchReader) -> T + Send + 'static,
    ) -> T {
        let read = tokio::task::spawn_blocking(move || f(&mut reader));
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("the read ends")
            .expect("the thread ends")
    }

    /// Reads to the end or the first error: what was read, and how it ended.
    async fn read_to_end(reader: BatchReader) -> (Vec<u8>, io::Result<usize>) {
        on_a_thread(reader, |r| {
            let mut all = Vec::new();
            let ended = r.read_to_end(&mut all);
            (all, ended)
        })
        .await
    }

    #[test]
    fn a_batch_is_due_a_hold_limit_after_its_first_byte_however_often_more_come() {
        let start = Instant::now();
        let stalled = start + Duration::from_secs(5);
        let mut gathered = Gathered::default();
        assert_eq!(gathered.hand_on_by(stalled), stalled);
        gathered.add(Bytes::new(), start);
        assert!(gathered.is_empty(), "nothing to hand on");
        for i in 0..100 {
            let now = start + Duration::from_micros(50 * i);
            gathered.add(Bytes::from_static(b"x"), now);
            assert_eq!(gathered.hand_on_by(stalled), start + HOLD_LIMIT);
        }
        assert!(!gathered.full());
        let Handed::Chunks(batch) = gathered.take() else {
            panic!("chunks")
        };
        assert_eq!(batch.len(), 100);
        let later = start + Duration::from_secs(1);
        assert_eq!(
            gathered.hand_on_by(later),
            later,
            "a new batch, a new clock"
        );
    }

    #[test]
    fn a_batch_is_full_at_its_size_or_its_count_of_chunks() {
        let now = Instant::now();
        let mut by_size = Gathered::default();
        by_size.add(Bytes::from(vec![0; BATCH_BYTES - 1]), now);
        assert!(!by_size.full());
        by_size.add(Bytes::from_static(b"x"), now);
        assert!(by_size.full());
        let mut by_count = Gathered::default();
        for _ in 0..CHUNKS_PER_BATCH - 1 {
            by_count.add(Bytes::from_static(b"x"), now);
        }
        assert!(!by_count.full());
        by_count.add(Bytes::from_static(b"x"), now);
        assert!(by_count.full(), "a byte at a time is full by count");
    }

    #[tokio::test]
    async fn every_byte_comes_in_order_across_batches() -> anyhow::Result<()> {
        let s = stream(Duration::from_secs(30)).await?;
        let data: Vec<u8> = (0..3 * BATCH_BYTES + 777)
            .map(|i| (i % 251) as u8)
            .collect();
        let (sent, mut send) = (data.clone(), s.send);
        let writing = tokio::spawn(async move {
            for piece in sent.chunks(5000) {
                send.write_all(piece).await?;
            }
            send.finish()?;
            anyhow::Ok(send)
        });
        let (read, ended) = read_to_end(s.reader).await;
        let _send = writing.await??;
        ended?;
        assert!(read == data, "the bytes read are the bytes sent");
        Ok(())
    }

    #[tokio::test]
    async fn a_trickle_is_handed_on_without_waiting_for_a_batch() -> anyhow::Result<()> {
        let mut s = stream(Duration::from_secs(30)).await?;
        s.send.write_all(b"a little").await?;
        let started = std::time::Instant::now();
        let read = on_a_thread(s.reader, |r| {
            let mut some = [0; 8];
            r.read_exact(&mut some).map(|()| some)
        })
        .await;
        assert_eq!(&read?, b"a little");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_silent_peer_fails_the_read_at_the_stall_limit() -> anyhow::Result<()> {
        let mut s = stream(Duration::from_millis(300)).await?;
        s.send.write_all(b"then nothing").await?;
        let (read, ended) = read_to_end(s.reader).await;
        let err = ended.expect_err("stalled");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert_eq!(read, b"then nothing");
        Ok(())
    }

    #[tokio::test]
    async fn a_stream_reset_by_the_peer_is_an_error_not_its_end() -> anyhow::Result<()> {
        let mut s = stream(Duration::from_secs(30)).await?;
        s.send.write_all(b"cut short").await?;
        s.send.reset(7u32.into())?;
        let (read, ended) = read_to_end(s.reader).await;
        // An end would have the decoder call the peer a liar: the stream's
        // failure comes through as it is.
        let err = ended.expect_err("reset");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        // Bytes not yet read when the reset came are dropped by QUIC.
        assert!(b"cut short".starts_with(&read), "{read:?}");
        Ok(())
    }

    #[tokio::test]
    async fn a_request_given_up_fails_the_read_of_a_silent_stream() -> anyhow::Result<()> {
        let mut s = stream(Duration::from_secs(30)).await?;
        s.send.write_all(b"then nothing").await?;
        let reading = tokio::spawn(read_to_end(s.reader));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!reading.is_finished(), "the stream is still open");
        s.pump.abort();
        let (read, ended) = reading.await?;
        assert_eq!(read, b"then nothing");
        let err = ended.expect_err("given up, not ended");
        assert_eq!(err.to_string(), "request given up");
        Ok(())
    }

    #[tokio::test]
    async fn a_request_given_up_reads_nothing_more_of_what_came() -> anyhow::Result<()> {
        let mut s = stream(Duration::from_secs(30)).await?;
        s.send.write_all(&[1; 3 * BATCH_BYTES]).await?;
        // Batches waiting for the reader, which has not read yet.
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.pump.abort();
        let _ = (&mut s.pump).await;
        let read = on_a_thread(s.reader, |r| r.read(&mut [0; 16])).await;
        assert_eq!(read.expect_err("given up").to_string(), "request given up");
        Ok(())
    }

    #[tokio::test]
    async fn a_slow_steady_peer_is_not_taken_for_a_stalled_one() -> anyhow::Result<()> {
        let s = stream(Duration::from_millis(300)).await?;
        let mut send = s.send;
        let writing = tokio::spawn(async move {
            for byte in 0..10u8 {
                send.write_all(&[byte]).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            send.finish()?;
            anyhow::Ok(send)
        });
        let (read, ended) = read_to_end(s.reader).await;
        let _send = writing.await??;
        ended?;
        assert_eq!(read, (0..10).collect::<Vec<u8>>());
        Ok(())
    }
}
