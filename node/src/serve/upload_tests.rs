//! The upload routes through [`respond`], on a real store: a full upload, then
//! every refusal, each leaving the store as it was.

use std::collections::HashSet;
use std::fs;
use std::sync::Arc;

use bytes::Bytes;
use cartable_proto::fuzzing::crafted_manifest;
use cartable_proto::join::UploadGrant;
use cartable_proto::{BlobHash, BundleId, BundlePath, Manifest, ManifestEntry, NodeId};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::body::Body;
use super::{ServeContext, UploadLimits, Uploads, respond};
use crate::store::Store;
use crate::store::tests::tmp_count_settled;
use cartable_net::identity::Identity;

/// Over two of the batches a received body is written in.
const BIG: usize = (2 << 20) + 200_000;
const SMALL: &[u8] = b"a small lesson file";
/// Limits no test upload reaches.
const ROOMY: UploadLimits = UploadLimits {
    capacity: u64::MAX,
    disk_margin: 0,
};

/// A store and the upload routes of node `node`, whose coordinator is
/// `coordinator`, and a bundle to upload: a big file, a small one and a copy of it.
struct Fixture {
    ctx: Arc<ServeContext>,
    store: Arc<Store>,
    coordinator: Identity,
    node: NodeId,
    manifest: Vec<u8>,
    id: BundleId,
    big: Vec<u8>,
    /// The data folder, then the coordinator's.
    dirs: [tempfile::TempDir; 2],
}

fn entry(path: &str, bytes: &[u8]) -> anyhow::Result<ManifestEntry> {
    Ok(ManifestEntry {
        path: BundlePath::new(path)?,
        hash: BlobHash::of(bytes),
        size: bytes.len() as u64,
        content_type: "application/octet-stream".to_owned(),
    })
}

impl Fixture {
    fn new() -> anyhow::Result<Self> {
        Self::with_limits(ROOMY)
    }

    fn with_limits(limits: UploadLimits) -> anyhow::Result<Self> {
        let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
        let store = Arc::new(Store::open(dirs[0].path())?);
        let coordinator = Identity::load_or_create(dirs[1].path())?;
        let node = NodeId::from_bytes([7; 32]);
        let big: Vec<u8> = (0..BIG).map(|i| (i * 7 + i / 997) as u8).collect();
        let manifest = Manifest::new(vec![
            entry("big.bin", &big)?,
            entry("small.txt", SMALL)?,
            entry("copy/small.txt", SMALL)?,
        ])?;
        let uploads = Uploads::new(store.clone(), node, coordinator.id(), limits);
        let ctx = Arc::new(ServeContext {
            uploads: Some(Arc::new(uploads)),
            ..ServeContext::new(store.clone())
        });
        Ok(Self {
            ctx,
            store,
            coordinator,
            node,
            id: manifest.id(),
            manifest: manifest.encode(),
            big,
            dirs,
        })
    }

    fn grant_for(&self, bundle: BundleId, node: NodeId, expires: u64) -> anyhow::Result<String> {
        let signed = UploadGrant::signed_bytes(&bundle, &node, expires);
        let grant = UploadGrant {
            bundle,
            node,
            expires,
            signature: self.coordinator.sign(&signed)?,
        };
        Ok(grant.to_string())
    }

    fn grant(&self) -> anyhow::Result<String> {
        self.grant_for(self.id, self.node, u64::MAX)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        grant: Option<&str>,
        body: &[u8],
    ) -> Response<Body> {
        self.send_body(method, path, grant, Full::new(Bytes::copy_from_slice(body)))
            .await
    }

    async fn send_body<B>(
        &self,
        method: Method,
        path: &str,
        grant: Option<&str>,
        body: B,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(grant) = grant {
            req = req.header(header::AUTHORIZATION, format!("Bearer {grant}"));
        }
        respond(self.ctx.clone(), req.body(body).unwrap()).await
    }

    async fn post(&self, grant: &str) -> Response<Body> {
        let path = format!("/upload/{}", self.id);
        self.send(Method::POST, &path, Some(grant), &self.manifest)
            .await
    }

    /// Posts another bundle's manifest with a grant for it.
    async fn post_manifest(&self, m: &Manifest) -> anyhow::Result<Response<Body>> {
        let grant = self.grant_for(m.id(), self.node, u64::MAX)?;
        let path = format!("/upload/{}", m.id());
        Ok(self
            .send(Method::POST, &path, Some(&grant), &m.encode())
            .await)
    }

    async fn put(&self, grant: &str, blob: &BlobHash, body: &[u8]) -> Response<Body> {
        let path = format!("/upload/{}/{blob}", self.id);
        self.send(Method::PUT, &path, Some(grant), body).await
    }

    /// Files in the data folder's `blobs/` and `tmp/`, once the temporary
    /// files of refused bodies are removed (on a blocking thread, so shortly
    /// after the answer), or after 5 s.
    async fn files_kept(&self) -> anyhow::Result<usize> {
        let blobs = fs::read_dir(self.store.layout().blobs_dir())?.count();
        Ok(blobs + tmp_count_settled(&self.store).await?)
    }
}

/// The answer of the upload routes.
#[derive(serde::Deserialize)]
struct UploadState {
    missing: Vec<BlobHash>,
}

/// The `missing` list of a 200 answer, checked free of duplicates.
async fn missing(response: Response<Body>) -> anyhow::Result<HashSet<BlobHash>> {
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status == StatusCode::OK, "status {status}: {body:?}");
    let state: UploadState = serde_json::from_slice(&body)?;
    let set: HashSet<BlobHash> = state.missing.iter().copied().collect();
    anyhow::ensure!(set.len() == state.missing.len(), "duplicates in {body:?}");
    Ok(set)
}

#[tokio::test]
async fn a_full_upload_makes_the_bundle_held_and_served_verified() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let grant = f.grant()?;
    let (big, small) = (BlobHash::of(&f.big), BlobHash::of(SMALL));
    assert_eq!(
        missing(f.post(&grant).await).await?,
        HashSet::from([big, small])
    );
    assert_eq!(
        missing(f.put(&grant, &small, SMALL).await).await?,
        HashSet::from([big])
    );
    assert!(
        f.store.bundles()?.is_empty(),
        "not held before it is complete"
    );
    assert!(missing(f.put(&grant, &big, &f.big).await).await?.is_empty());
    assert_eq!(
        f.store.bundles()?.iter().map(|b| b.id).collect::<Vec<_>>(),
        [f.id]
    );
    let got = f
        .send(Method::GET, &format!("/b/{}/big.bin", f.id), None, b"")
        .await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.into_body().collect().await?.to_bytes(), f.big);
    // Idempotent: posting again, or sending a blob again, changes nothing.
    assert!(missing(f.post(&grant).await).await?.is_empty());
    assert!(
        missing(f.put(&grant, &small, SMALL).await)
            .await?
            .is_empty()
    );
    assert_eq!(f.store.bundles()?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_upload_resumes_after_a_restart_and_takes_one_body_of_a_blob_at_a_time()
-> anyhow::Result<()> {
    let f = Fixture::new()?;
    let grant = f.grant()?;
    let (big, small) = (BlobHash::of(&f.big), BlobHash::of(SMALL));
    missing(f.post(&grant).await).await?;
    let (a, b) = tokio::join!(f.put(&grant, &small, SMALL), f.put(&grant, &small, SMALL));
    let (second, reason) = refusal(b).await?;
    assert_eq!(second, StatusCode::SERVICE_UNAVAILABLE, "{reason}");
    assert!(reason.contains("being received"), "{reason}");
    assert_eq!(missing(a).await?, HashSet::from([big]));
    assert_eq!(
        missing(f.put(&grant, &small, SMALL).await).await?,
        HashSet::from([big])
    );
    // A restart forgets the pending manifest but keeps what was received.
    let restarted = Fixture {
        ctx: Arc::new(ServeContext {
            uploads: Some(Arc::new(Uploads::new(
                f.store.clone(),
                f.node,
                f.coordinator.id(),
                ROOMY,
            ))),
            ..ServeContext::new(f.store.clone())
        }),
        ..f
    };
    let f = restarted;
    assert_eq!(
        f.put(&grant, &big, &f.big).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(missing(f.post(&grant).await).await?, HashSet::from([big]));
    assert!(missing(f.put(&grant, &big, &f.big).await).await?.is_empty());
    assert_eq!(f.store.bundles()?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_body_of_the_wrong_hash_or_length_is_refused_and_nothing_kept() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let grant = f.grant()?;
    let (big, small) = (BlobHash::of(&f.big), BlobHash::of(SMALL));
    missing(f.post(&grant).await).await?;
    let mut forged = f.big.clone();
    forged[BIG - 1] ^= 1;
    assert_eq!(
        f.put(&grant, &big, &forged).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        f.put(&grant, &big, &f.big[1..]).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        f.put(&grant, &small, b"x").await.status(),
        StatusCode::BAD_REQUEST
    );
    let stranger = BlobHash::of(b"not in this bundle");
    assert_eq!(
        f.put(&grant, &stranger, b"not in this bundle")
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(f.files_kept().await?, 0);
    assert_eq!(
        missing(f.post(&grant).await).await?,
        HashSet::from([big, small])
    );
    Ok(())
}

#[tokio::test]
async fn bad_grants_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let small = BlobHash::of(SMALL);
    let other_bundle = BundleId::of_manifest(b"another");
    let other_node = NodeId::from_bytes([8; 32]);
    let stranger = Identity::load_or_create(&f.dirs[1].path().join("stranger"))?;
    let signed = UploadGrant::signed_bytes(&f.id, &f.node, u64::MAX);
    let forged = UploadGrant {
        bundle: f.id,
        node: f.node,
        expires: u64::MAX,
        signature: stranger.sign(&signed)?,
    };
    let cases = [
        ("not a grant".to_owned(), StatusCode::UNAUTHORIZED),
        (f.grant_for(f.id, f.node, 1)?, StatusCode::FORBIDDEN),
        (
            f.grant_for(f.id, other_node, u64::MAX)?,
            StatusCode::FORBIDDEN,
        ),
        (
            f.grant_for(other_bundle, f.node, u64::MAX)?,
            StatusCode::FORBIDDEN,
        ),
        (forged.to_string(), StatusCode::FORBIDDEN),
    ];
    for (grant, status) in &cases {
        assert_eq!(f.post(grant).await.status(), *status, "POST with {grant}");
        assert_eq!(
            f.put(grant, &small, SMALL).await.status(),
            *status,
            "PUT with {grant}"
        );
    }
    let path = format!("/upload/{}", f.id);
    let bare = f.send(Method::POST, &path, None, &f.manifest).await;
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(f.files_kept().await?, 0);
    assert!(f.store.bundles()?.is_empty());
    // No refused POST left a pending upload behind.
    assert_eq!(
        f.put(&f.grant()?, &small, SMALL).await.status(),
        StatusCode::NOT_FOUND
    );
    Ok(())
}

#[tokio::test]
async fn a_manifest_must_match_the_bundle_id_and_decode() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    let other = BundleId::of_manifest(b"another");
    let grant = f.grant_for(other, f.node, u64::MAX)?;
    let path = format!("/upload/{other}");
    let answer = f.send(Method::POST, &path, Some(&grant), &f.manifest).await;
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let garbage = b"not a manifest";
    let id = BundleId::of_manifest(garbage);
    let grant = f.grant_for(id, f.node, u64::MAX)?;
    let answer = f
        .send(
            Method::POST,
            &format!("/upload/{id}"),
            Some(&grant),
            garbage,
        )
        .await;
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let answer = f
        .send(Method::POST, "/upload/nothex", Some(&grant), garbage)
        .await;
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    assert!(f.store.bundles()?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_node_without_a_coordinator_takes_no_uploads() -> anyhow::Result<()> {
    let mut f = Fixture::new()?;
    f.ctx = Arc::new(ServeContext::new(f.store.clone()));
    assert_eq!(f.post(&f.grant()?).await.status(), StatusCode::NOT_FOUND);
    assert!(f.store.bundles()?.is_empty());
    Ok(())
}

/// The status and one-line reason of an answer.
async fn refusal(response: Response<Body>) -> anyhow::Result<(StatusCode, String)> {
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

/// The bytes of the fixture's bundle, on disk once held.
fn bundle_bytes() -> u64 {
    (BIG + 2 * SMALL.len()) as u64
}

#[tokio::test]
async fn an_upload_over_the_capacity_left_is_refused_before_any_byte() -> anyhow::Result<()> {
    let f = Fixture::with_limits(UploadLimits {
        capacity: bundle_bytes() - 1,
        disk_margin: 0,
    })?;
    let grant = f.grant()?;
    let (status, reason) = refusal(f.post(&grant).await).await?;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    assert!(
        reason.contains("more capacity than this node has left"),
        "{reason}"
    );
    // Nothing reserved, nothing pending: a blob is refused as for an unknown upload.
    let small = BlobHash::of(SMALL);
    assert_eq!(
        f.put(&grant, &small, SMALL).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(f.files_kept().await?, 0);
    assert!(f.store.bundles()?.is_empty());
    Ok(())
}

#[tokio::test]
async fn an_upload_over_the_free_disk_space_is_refused() -> anyhow::Result<()> {
    // A margin larger than any disk: whatever is free, nothing is left for uploads.
    let f = Fixture::with_limits(UploadLimits {
        capacity: u64::MAX,
        disk_margin: u64::MAX / 2,
    })?;
    let (status, reason) = refusal(f.post(&f.grant()?).await).await?;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
    assert!(
        reason.contains("more disk space than this node has free"),
        "{reason}"
    );
    assert_eq!(f.files_kept().await?, 0);
    Ok(())
}

#[tokio::test]
async fn two_uploads_cannot_together_overrun_the_capacity() -> anyhow::Result<()> {
    // Room for the fixture's bundle and a little more, not for a second one.
    let f = Fixture::with_limits(UploadLimits {
        capacity: bundle_bytes() + 1000,
        disk_margin: 0,
    })?;
    let grant = f.grant()?;
    missing(f.post(&grant).await).await?;
    let other = Manifest::new(vec![entry("other.bin", &f.big[..BIG / 2])?])?;
    let second = f.post_manifest(&other).await?;
    assert_eq!(second.status(), StatusCode::INSUFFICIENT_STORAGE);
    // The first upload goes on and completes within its reservation.
    let (big, small) = (BlobHash::of(&f.big), BlobHash::of(SMALL));
    missing(f.put(&grant, &small, SMALL).await).await?;
    assert!(missing(f.put(&grant, &big, &f.big).await).await?.is_empty());
    assert_eq!(f.store.bundles()?.len(), 1);
    // Held now, it counts as used: the second still does not fit.
    let again = f.post_manifest(&other).await?;
    assert_eq!(again.status(), StatusCode::INSUFFICIENT_STORAGE);
    Ok(())
}

#[tokio::test]
async fn a_manifest_with_one_blob_at_two_sizes_is_refused() -> anyhow::Result<()> {
    let f = Fixture::new()?;
    // The measured attack: one hash twice, the second size near 2^64.
    let cases = [
        crafted_manifest(&[("a", SMALL, 19), ("b", SMALL, u64::MAX - 7)]),
        crafted_manifest(&[("a", SMALL, 19), ("b", SMALL, 20)]),
        crafted_manifest(&[("a", b"1", u64::MAX / 2 + 1), ("b", b"2", u64::MAX / 2 + 1)]),
    ];
    for bytes in &cases {
        let id = BundleId::of_manifest(bytes);
        let grant = f.grant_for(id, f.node, u64::MAX)?;
        let answer = f
            .send(Method::POST, &format!("/upload/{id}"), Some(&grant), bytes)
            .await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        let blob = BlobHash::of(SMALL);
        let put = f
            .send(
                Method::PUT,
                &format!("/upload/{id}/{blob}"),
                Some(&grant),
                SMALL,
            )
            .await;
        assert_eq!(put.status(), StatusCode::NOT_FOUND, "nothing pending");
    }
    assert_eq!(f.files_kept().await?, 0);
    Ok(())
}

#[tokio::test]
async fn of_two_uploads_posted_at_once_only_the_one_that_fits_starts() -> anyhow::Result<()> {
    // Room for one of two bundles of 60% of the capacity each, never both.
    let f = Fixture::with_limits(UploadLimits {
        capacity: 100_000,
        disk_margin: 0,
    })?;
    let bundles = [
        Manifest::new(vec![entry("a.bin", &f.big[..60_000])?])?,
        Manifest::new(vec![entry("b.bin", &f.big[60_000..120_000])?])?,
    ];
    let (a, b) = tokio::join!(f.post_manifest(&bundles[0]), f.post_manifest(&bundles[1]));
    let mut statuses = [a?.status(), b?.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::INSUFFICIENT_STORAGE]);
    Ok(())
}

/// A body that gives its first bytes, then nothing, as a sender gone quiet.
struct Stalling {
    first: Option<Bytes>,
    len: u64,
}

impl hyper::body::Body for Stalling {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        match self.first.take() {
            Some(first) => std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(first)))),
            None => std::task::Poll::Pending,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

#[tokio::test]
async fn a_second_body_of_a_blob_being_received_is_refused_until_the_first_ends()
-> anyhow::Result<()> {
    let f = Fixture::new()?;
    let grant = f.grant()?;
    let (big, small) = (BlobHash::of(&f.big), BlobHash::of(SMALL));
    missing(f.post(&grant).await).await?;
    let path = format!("/upload/{}/{big}", f.id);
    let stalled = Stalling {
        first: Some(Bytes::copy_from_slice(&f.big[..BIG / 2])),
        len: BIG as u64,
    };
    let mut first = Box::pin(f.send_body(Method::PUT, &path, Some(&grant), stalled));
    tokio::select! {
        _ = &mut first => anyhow::bail!("a body that stalls cannot be answered"),
        () = tokio::time::sleep(std::time::Duration::from_millis(300)) => {}
    }
    let (status, reason) = refusal(f.put(&grant, &big, &f.big).await).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reason}");
    // Another bundle's upload of the same blob is not held up by it.
    let other = Manifest::new(vec![entry("same.bin", &f.big)?])?;
    assert_eq!(
        missing(f.post_manifest(&other).await?).await?,
        HashSet::from([big])
    );
    let other_grant = f.grant_for(other.id(), f.node, u64::MAX)?;
    let other_path = format!("/upload/{}/{big}", other.id());
    let answer = f.send(Method::PUT, &other_path, Some(&other_grant), &f.big);
    assert!(
        missing(answer.await).await?.is_empty(),
        "the other bundle is held"
    );
    // Its sender gone, the first body lets the blob go and leaves nothing.
    drop(first);
    assert_eq!(
        f.files_kept().await?,
        2,
        "the other bundle's blob and outboard"
    );
    assert_eq!(
        missing(f.put(&grant, &big, &f.big).await).await?,
        HashSet::from([small])
    );
    Ok(())
}
