//! Uploading a bundle to the node the coordinator chose (see the admin API's
//! "Uploading to a node"): the manifest first, the node answers what it lacks,
//! then each missing blob streamed from its file. The node's certificate is
//! pinned by the SHA-256 the coordinator gave, so a stranger cannot take the
//! upload; the node hashes what it receives, so a file changed since it was
//! hashed is refused rather than stored.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::pin::Pin as StdPin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use cartable_net::progress::Progress;
use cartable_proto::BlobHash;
use http::{Method, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use cartable_net::client::{HttpsClient, full, parse_answer};
use cartable_net::pin::Pin;
use cartable_proto::api::{Published, UploadState};

/// Bytes read from a file per body frame.
const CHUNK: usize = 256 << 10;

/// Where each blob of a bundle is on disk: one file per blob, even when several
/// paths hold the same bytes, so each blob is sent once.
pub type Sources = HashMap<BlobHash, (PathBuf, u64)>;

/// What an upload sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// Blobs sent.
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Uploads the manifest `encoded` and whatever blobs the node lacks.
pub async fn upload(
    published: &Published,
    encoded: Vec<u8>,
    sources: &Sources,
) -> anyhow::Result<Uploaded> {
    let pin = Pin::from_sha256_hex(&published.upload_cert_sha256)
        .context("the coordinator's upload answer")?;
    let mut node = HttpsClient::new(&published.upload_url, pin)?;
    let auth = (header::AUTHORIZATION, format!("Bearer {}", published.grant));
    let bundle_path = format!("/upload/{}", published.bundle);
    let manifest_headers = [
        auth.clone(),
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
    ];
    let (status, answer) = node
        .send(Method::POST, &bundle_path, &manifest_headers, full(encoded))
        .await?;
    let mut state: UploadState = parse_answer(status, &answer)
        .with_context(|| format!("POST {}", node.url(&bundle_path)))?;
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    for blob in state.missing.iter().filter(|b| seen.insert(**b)) {
        let (path, size) = sources
            .get(blob)
            .with_context(|| format!("the node asks for blob {blob}, which this bundle lacks"))?;
        missing.push((*blob, path.clone(), *size));
    }
    let total = missing.iter().map(|(_, _, size)| size).sum();
    if !missing.is_empty() {
        eprintln!(
            "uploading {} blobs ({}) to {}",
            missing.len(),
            cartable_proto::units::human_bytes(total),
            published.upload_url
        );
    }
    let progress = Arc::new(Sent {
        progress: Some(Progress::new()),
        total,
        done: std::sync::atomic::AtomicU64::new(0),
    });
    for (blob, path, size) in &missing {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let body = FileBody {
            file,
            left: *size,
            sent: progress.clone(),
        };
        let headers = [
            auth.clone(),
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ];
        let blob_path = format!("{bundle_path}/{blob}");
        let (status, answer) = node
            .send(Method::PUT, &blob_path, &headers, body.boxed_unsync())
            .await
            .with_context(|| format!("uploading {}", path.display()))?;
        state = parse_answer(status, &answer)
            .with_context(|| format!("PUT {} ({})", node.url(&blob_path), path.display()))?;
    }
    anyhow::ensure!(
        state.missing.is_empty(),
        "the node still lacks {} blobs after the upload",
        state.missing.len()
    );
    Ok(Uploaded {
        blobs: missing.len(),
        bytes: total,
    })
}

/// Bytes sent so far, shared by the bodies of one upload.
#[derive(Debug)]
struct Sent {
    /// Shown on standard error; `None` in tests.
    progress: Option<Progress>,
    total: u64,
    done: std::sync::atomic::AtomicU64,
}

impl Sent {
    fn add(&self, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let done = self.done.fetch_add(n, Relaxed) + n;
        if let Some(progress) = &self.progress {
            progress.update(done, self.total);
        }
    }
}

/// A file streamed as a request body, `CHUNK` bytes at a time, so a 1 GiB video
/// never sits in memory.
#[derive(Debug)]
struct FileBody {
    file: tokio::fs::File,
    /// Bytes still to send; the file was this long when it was hashed.
    left: u64,
    sent: Arc<Sent>,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: StdPin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let want = CHUNK.min(usize::try_from(self.left).unwrap_or(CHUNK));
        let mut chunk = BytesMut::zeroed(want);
        let mut buf = ReadBuf::new(&mut chunk);
        ready!(StdPin::new(&mut self.file).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        if n == 0 {
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank since it was hashed",
            ))));
        }
        chunk.truncate(n);
        self.left -= n as u64;
        self.sent.add(n as u64);
        Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_body_streams_the_whole_file_in_chunks() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("video.mp4");
        let data: Vec<u8> = (0..CHUNK * 2 + 17).map(|i| i as u8).collect();
        std::fs::write(&path, &data)?;
        let sent = Arc::new(Sent {
            progress: None,
            total: data.len() as u64,
            done: 0.into(),
        });
        let body = FileBody {
            file: tokio::fs::File::open(&path).await?,
            left: data.len() as u64,
            sent: sent.clone(),
        };
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let got = body.collect().await?.to_bytes();
        assert_eq!(got.as_ref(), data.as_slice());
        assert_eq!(
            sent.done.load(std::sync::atomic::Ordering::Relaxed),
            data.len() as u64
        );

        let short = FileBody {
            file: tokio::fs::File::open(&path).await?,
            left: data.len() as u64 + 1,
            sent,
        };
        let err = short.collect().await.unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
        Ok(())
    }
}
