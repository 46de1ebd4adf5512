//! The ceiling of the QUIC copy benchmark (`src/bin/quic-copy.rs`): a minimal
//! sender and receiver on the node's own QUIC endpoint (same quinn transport
//! settings, TLS 1.3 with ed25519 certificates and mutual authentication), with
//! no framing and no verification. Each runs in its own process, started by the
//! harness as `quic-copy ceiling-server …` and `quic-copy ceiling-client …`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use cartable_net::identity::Identity;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_proto::NodeId;

/// Bytes the sender reads from the file and hands to the stream at a time:
/// the node's own piece size when it serves a peer.
const PIECE_BYTES: usize = 256 * 1024;

/// `ceiling-server FILE KEY_DIR CLIENT_ID`: serves byte ranges of FILE to the
/// client, one range per stream, asked as (offset, length), two u64 LE.
pub async fn server(argv: &[String]) -> Result<()> {
    let [file, key_dir, client] = argv else {
        bail!("usage: quic-copy ceiling-server FILE KEY_DIR CLIENT_ID");
    };
    let file = Arc::new(File::open(file).with_context(|| format!("opening {file}"))?);
    let identity = Identity::load_or_create(Path::new(key_dir))?;
    let members = Members::new([client.parse::<NodeId>()?]);
    let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse()?, &identity, members)?;
    println!(
        "ceiling listening quic={} id={}",
        endpoint.local_addr()?,
        identity.id()
    );
    while let Some(arriving) = endpoint.accept().await {
        let file = file.clone();
        tokio::spawn(async move {
            let Ok(peer) = arriving.handshake().await else {
                return;
            };
            // The handshake checked the client's key: a member's limits.
            peer.trust();
            while let Ok((send, recv)) = peer.conn.accept_bi().await {
                let file = file.clone();
                tokio::spawn(async move {
                    if let Err(e) = send_range(send, recv, file).await {
                        eprintln!("ceiling-server: {e:#}");
                    }
                });
            }
        });
    }
    Ok(())
}

/// Answers one request: a blocking thread reads the range in pieces into a
/// bounded channel, as the node's peer server does, and the stream sends them.
async fn send_range(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    file: Arc<File>,
) -> Result<()> {
    let mut request = [0u8; 16];
    recv.read_exact(&mut request).await?;
    let [offset, len] =
        [&request[..8], &request[8..]].map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(PIECE_BYTES as u64) as usize;
            let mut piece = BytesMut::zeroed(n);
            file.read_exact_at(&mut piece, at)?;
            if tx.blocking_send(piece.freeze()).is_err() {
                break;
            }
            at += n as u64;
        }
        Ok(())
    });
    while let Some(piece) = rx.recv().await {
        send.write_chunk(piece).await?;
    }
    reader.await??;
    send.finish()?;
    Ok(())
}

/// `ceiling-client PEER KEY_DIR STREAMS STREAM_BYTES SINK`: asks for
/// consecutive ranges, one stream after the other, reads each to its end and
/// prints the bytes received. SINK `-` discards them without copying; a path
/// stores them there, in 256 KiB writes, with one fsync at the end; `b3:PATH`
/// also hashes every byte stored with BLAKE3 (one thread), as a verified copy
/// must at least.
pub async fn client(argv: &[String]) -> Result<()> {
    let [peer, key_dir, streams, stream_bytes, sink] = argv else {
        bail!("usage: quic-copy ceiling-client PEER KEY_DIR STREAMS STREAM_BYTES SINK");
    };
    let peer: PeerAddr = peer.parse().map_err(anyhow::Error::msg)?;
    let (streams, stream_bytes): (u64, u64) = (streams.parse()?, stream_bytes.parse()?);
    let (path, mut hasher) = match sink.strip_prefix("b3:") {
        Some(path) => (path, Some(blake3::Hasher::new())),
        None => (sink.as_str(), None),
    };
    let mut store = match path {
        "-" => None,
        path => Some(File::create(path).with_context(|| format!("creating {path}"))?),
    };
    let identity = Identity::load_or_create(Path::new(key_dir))?;
    let endpoint = PeerEndpoint::bind("127.0.0.1:0".parse()?, &identity, Members::default())?;
    let conn = endpoint.connect(peer).await?;
    let mut total = 0u64;
    for i in 0..streams {
        let (mut send, recv) = conn.open_bi().await?;
        let mut request = (i * stream_bytes).to_le_bytes().to_vec();
        request.extend_from_slice(&stream_bytes.to_le_bytes());
        send.write_all(&request).await?;
        send.finish()?;
        total += match &mut store {
            None => discard(recv).await?,
            Some(file) => store_at(recv, file, total, hasher.as_mut()).await?,
        };
    }
    if let Some(file) = store {
        file.sync_all()?;
    }
    if let Some(hasher) = hasher {
        std::hint::black_box(hasher.finalize());
    }
    conn.close(0u32.into(), b"done");
    endpoint.close();
    println!("{total}");
    Ok(())
}

/// Reads a stream to its end without copying; returns its length.
async fn discard(mut recv: quinn::RecvStream) -> Result<u64> {
    let mut n = 0;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
        n += chunk.bytes.len() as u64;
    }
    Ok(n)
}

/// Writes a stream to `file` from offset `at`, in [`PIECE_BYTES`] writes, and
/// hashes each piece first when asked; returns its length. The writes block
/// the task: they go to the page cache, and quinn's driver goes on receiving
/// on the other worker meanwhile.
async fn store_at(
    mut recv: quinn::RecvStream,
    file: &File,
    at: u64,
    mut hasher: Option<&mut blake3::Hasher>,
) -> Result<u64> {
    let mut buf = vec![0u8; PIECE_BYTES];
    let (mut filled, mut written) = (0, 0u64);
    loop {
        let n = recv.read(&mut buf[filled..]).await?.unwrap_or(0);
        filled += n;
        if filled == buf.len() || (n == 0 && filled > 0) {
            if let Some(hasher) = hasher.as_deref_mut() {
                hasher.update(&buf[..filled]);
            }
            file.write_all_at(&buf[..filled], at + written)?;
            written += filled as u64;
            filled = 0;
        }
        if n == 0 {
            return Ok(written);
        }
    }
}
