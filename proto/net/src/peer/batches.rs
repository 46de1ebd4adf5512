//! A peer's stream handed to a decoding thread in batches. The decoder
//! verifies and writes on a blocking thread; read through a bridge, it woke
//! up, polled the stream and went back to sleep for every 16 KiB group: two
//! context switches a group, a fifth of a fetch's CPU on a one-core receiver.
//! A [`Pump`] on the runtime takes the stream's chunks as they come (no copy)
//! and hands them on about every [`BATCH_BYTES`]; the [`BatchReader`] reads
//! them on the decoding thread.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

/// About how much the pump gathers before handing it on: 8 groups.
pub const BATCH_BYTES: usize = 128 * 1024;

/// How long gathered bytes wait for more before going on anyway, so that a
/// slow link's groups reach the decoder (and a browser fetching through)
/// without waiting for a whole batch.
const HOLD_LIMIT: Duration = Duration::from_millis(2);

/// Batches handed on and not yet read: with the one being gathered and the
/// one being decoded, at most 4 × [`BATCH_BYTES`] held per stream, beyond
/// what QUIC's flow control lets the peer send.
const BATCHES_WAITING: usize = 2;

/// Chunks taken from the stream at once (quinn's chunks are one packet's
/// data each, about 1.2 KiB).
const CHUNKS_PER_READ: usize = 32;

type Batch = io::Result<Vec<Bytes>>;

/// Splits `recv` into a pump, to be run on the runtime, and the reader it
/// feeds. A stream silent for `stall_limit` fails the reader with `TimedOut`;
/// a pump dropped (its request given up) ends the reader's stream.
pub fn batched(recv: quinn::RecvStream, stall_limit: Duration) -> (Pump, BatchReader) {
    let (tx, rx) = mpsc::channel(BATCHES_WAITING);
    let reader = BatchReader {
        rx,
        chunks: VecDeque::new(),
    };
    let pump = Pump {
        recv,
        tx,
        stall_limit,
    };
    (pump, reader)
}

/// Reads a stream and hands its chunks on in batches.
#[derive(Debug)]
pub struct Pump {
    recv: quinn::RecvStream,
    tx: mpsc::Sender<Batch>,
    stall_limit: Duration,
}

impl Pump {
    /// Runs until the stream ends, fails or stalls (which the reader is
    /// told), or the reader is dropped.
    pub async fn run(mut self) {
        let mut chunks: [Bytes; CHUNKS_PER_READ] = std::array::from_fn(|_| Bytes::new());
        let mut held = Vec::new();
        let mut held_bytes = 0;
        loop {
            let wait = if held.is_empty() {
                self.stall_limit
            } else {
                HOLD_LIMIT
            };
            let read = tokio::time::timeout(wait, self.recv.read_chunks(&mut chunks)).await;
            let end = match read {
                Ok(Ok(Some(n))) => {
                    for chunk in chunks[..n].iter_mut().filter(|c| !c.is_empty()) {
                        held_bytes += chunk.len();
                        held.push(std::mem::take(chunk));
                    }
                    if held_bytes < BATCH_BYTES {
                        continue;
                    }
                    None
                }
                Err(_) if !held.is_empty() => None,
                Ok(Ok(None)) => Some(Ok(())),
                Ok(Err(e)) => Some(Err(io::Error::from(e))),
                Err(_) => Some(Err(io::Error::new(io::ErrorKind::TimedOut, "peer stalled"))),
            };
            held_bytes = 0;
            let batch = std::mem::take(&mut held);
            if !batch.is_empty() && self.tx.send(Ok(batch)).await.is_err() {
                return;
            }
            match end {
                None => {}
                // Dropping the sender is the stream's end.
                Some(Ok(())) => return,
                Some(Err(e)) => {
                    let _ = self.tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }
}

/// The stream's bytes on the decoding thread, in order.
#[derive(Debug)]
pub struct BatchReader {
    rx: mpsc::Receiver<Batch>,
    chunks: VecDeque<Bytes>,
}

impl Read for BatchReader {
    /// Blocks while nothing was handed on: not to be called on the runtime.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.chunks.is_empty() {
            match self.rx.blocking_recv() {
                Some(batch) => self.chunks.extend(batch?),
                None => return Ok(0),
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

    #[tokio::test]
    async fn every_byte_comes_in_order_across_batches() -> anyhow::Result<()> {
        let stream = stream(Duration::from_secs(30)).await?;
        let Stream {
            mut send, reader, ..
        } = stream;
        let data: Vec<u8> = (0..3 * BATCH_BYTES + 777)
            .map(|i| (i % 251) as u8)
            .collect();
        let sent = data.clone();
        let writing = tokio::spawn(async move {
            for piece in sent.chunks(5000) {
                send.write_all(piece).await?;
            }
            send.finish()?;
            anyhow::Ok(send)
        });
        let (read, ended) = read_to_end(reader).await;
        let _send = writing.await??;
        ended?;
        assert!(read == data, "the bytes read are the bytes sent");
        Ok(())
    }

    #[tokio::test]
    async fn a_trickle_is_handed_on_without_waiting_for_a_batch() -> anyhow::Result<()> {
        let stream = stream(Duration::from_secs(30)).await?;
        let Stream {
            mut send, reader, ..
        } = stream;
        send.write_all(b"a little").await?;
        let started = std::time::Instant::now();
        let read = on_a_thread(reader, |r| {
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
        let stream = stream(Duration::from_millis(300)).await?;
        let Stream {
            mut send, reader, ..
        } = stream;
        send.write_all(b"then nothing").await?;
        let (read, ended) = read_to_end(reader).await;
        let err = ended.expect_err("stalled");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert_eq!(read, b"then nothing");
        Ok(())
    }

    #[tokio::test]
    async fn a_stream_reset_by_the_peer_is_an_error_not_its_end() -> anyhow::Result<()> {
        let stream = stream(Duration::from_secs(30)).await?;
        let Stream {
            mut send, reader, ..
        } = stream;
        send.write_all(b"cut short").await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        send.reset(7u32.into())?;
        let (read, ended) = read_to_end(reader).await;
        assert!(ended.is_err(), "{ended:?}");
        assert_eq!(read, b"cut short");
        Ok(())
    }

    #[tokio::test]
    async fn a_request_given_up_ends_the_read_of_a_silent_stream() -> anyhow::Result<()> {
        let stream = stream(Duration::from_secs(30)).await?;
        let Stream {
            mut send,
            reader,
            pump,
            ..
        } = stream;
        send.write_all(b"then nothing").await?;
        let reading = tokio::spawn(read_to_end(reader));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!reading.is_finished(), "the stream is still open");
        pump.abort();
        let (read, ended) = reading.await?;
        assert_eq!(read, b"then nothing");
        assert_eq!(ended?, read.len(), "a request given up ends the stream");
        Ok(())
    }
}
