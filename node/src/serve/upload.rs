//! The upload routes, by which `cartable publish` puts a bundle on the node the
//! coordinator chose (the admin API's "Uploading to a node"):
//!
//! - `POST /upload/{bundle}`, body the encoded manifest, answers
//!   `{"missing": [<blob hash>...]}`: the blobs this node lacks. The manifest is
//!   kept pending in memory until the bundle is complete or its grant expires.
//! - `PUT /upload/{bundle}/{blob}`, body the blob's bytes, answers the same. The
//!   body streams to a file in `tmp/` while it is hashed and is imported (with
//!   its outboard) only when it hashes to `{blob}`; otherwise nothing is kept.
//!
//! Once nothing is missing the bundle is committed as held. Received blobs are
//! stored at once, so after a restart (which forgets pending manifests) a new
//! POST answers only what is still missing. Every request carries
//! `Authorization: Bearer <grant>`: an [`UploadGrant`] for this bundle and this
//! node, unexpired, signed by the coordinator. A node without a coordinator
//! takes no uploads.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cartable_proto::join::UploadGrant;
use cartable_proto::wire::MAX_MANIFEST_BYTES;
use cartable_proto::{BlobHash, BundleId, Manifest, NodeId};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::body::Body;
use super::error::{HttpError, text};
use crate::identity::signed_by;
use crate::store::{Store, layout};

/// Bytes of a received blob buffered before each write to its temporary file.
const WRITE_BUFFER: usize = 1 << 20;

/// What the upload routes need: the store, this node's id and the key of the
/// coordinator that signs grants.
#[derive(Debug)]
pub struct Uploads {
    store: Arc<Store>,
    node: NodeId,
    coordinator: NodeId,
    /// Manifests posted and not yet complete, with the latest expiry of their grants.
    pending: Mutex<HashMap<BundleId, (Arc<Manifest>, u64)>>,
}

/// The answer of both routes (the admin API's `UploadState`).
#[derive(Debug, serde::Serialize)]
struct UploadState {
    /// Blobs this node still lacks; empty once the bundle is held.
    missing: Vec<BlobHash>,
}

/// Whether a request is for the upload routes.
pub fn is_upload<B>(req: &Request<B>) -> bool {
    matches!(*req.method(), Method::POST | Method::PUT) && req.uri().path().starts_with("/upload/")
}

/// Answers a request for the upload routes; `uploads` is `None` on a node
/// without a coordinator.
pub async fn route<B>(
    uploads: Option<&Arc<Uploads>>,
    req: Request<B>,
) -> Result<Response<Body>, HttpError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let uploads = uploads.ok_or(HttpError::NotFound(
        "this node takes uploads only as a member of a coordinator",
    ))?;
    let (bundle, blob) = parse_path(req.uri().path())?;
    let expires = uploads.check_grant(req.headers(), &bundle, unix_now())?;
    let method = req.method().clone();
    let body = req.into_body();
    let state = match (method, blob) {
        (Method::POST, None) => uploads.clone().post(bundle, expires, body).await?,
        (Method::PUT, Some(blob)) => uploads.clone().put(bundle, blob, body).await?,
        _ => return Err(HttpError::NotFound("no such upload route")),
    };
    let mut response = text(
        StatusCode::OK,
        serde_json::to_vec(&state).map_err(|_| HttpError::Internal)?,
    );
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

impl Uploads {
    /// Upload routes for the node `node`, taking grants signed by `coordinator`.
    pub fn new(store: Arc<Store>, node: NodeId, coordinator: NodeId) -> Self {
        Self {
            store,
            node,
            coordinator,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the bearer grant against this request; returns its expiry.
    fn check_grant(
        &self,
        headers: &HeaderMap,
        bundle: &BundleId,
        now: u64,
    ) -> Result<u64, HttpError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(HttpError::Unauthorized(
                "an upload grant is required: Authorization: Bearer <grant>",
            ))?;
        let grant: UploadGrant = bearer
            .parse()
            .map_err(|_| HttpError::Unauthorized("malformed upload grant"))?;
        let signed = UploadGrant::signed_bytes(&grant.bundle, &grant.node, grant.expires);
        if !signed_by(&self.coordinator, &signed, &grant.signature) {
            return Err(HttpError::Forbidden(
                "the grant is not signed by this node's coordinator",
            ));
        }
        if grant.bundle != *bundle {
            return Err(HttpError::Forbidden("the grant is for another bundle"));
        }
        if grant.node != self.node {
            return Err(HttpError::Forbidden("the grant is for another node"));
        }
        if grant.expires <= now {
            return Err(HttpError::Forbidden("grant expired"));
        }
        Ok(grant.expires)
    }

    async fn post<B>(
        self: Arc<Self>,
        bundle: BundleId,
        expires: u64,
        body: B,
    ) -> Result<UploadState, HttpError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let bytes = read_manifest(body).await?;
        if BundleId::of_manifest(&bytes) != bundle {
            return Err(HttpError::BadRequest(
                "the manifest does not hash to the bundle id",
            ));
        }
        let manifest = Manifest::decode(&bytes)
            .map_err(|_| HttpError::BadRequest("the body is not a valid manifest"))?;
        let manifest = Arc::new(manifest);
        blocking(move || {
            let state = self.settle(bundle, &manifest)?;
            let mut pending = self.pending();
            // Grants of abandoned uploads expire: forget their manifests.
            let now = unix_now();
            pending.retain(|_, (_, until)| *until > now);
            if !state.missing.is_empty() {
                let until = pending.get(&bundle).map_or(expires, |p| p.1.max(expires));
                pending.insert(bundle, (manifest, until));
            }
            Ok(state)
        })
        .await
    }

    async fn put<B>(
        self: Arc<Self>,
        bundle: BundleId,
        blob: BlobHash,
        body: B,
    ) -> Result<UploadState, HttpError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let manifest = self.manifest(&bundle)?;
        let size = manifest
            .entries()
            .iter()
            .find(|e| e.hash == blob)
            .map(|e| e.size)
            .ok_or(HttpError::NotFound("no such blob in this bundle"))?;
        match body.size_hint().exact() {
            None => return Err(HttpError::LengthRequired),
            Some(len) if len != size => {
                return Err(HttpError::BadRequest(
                    "the body's length is not the blob's size in the manifest",
                ));
            }
            Some(_) => {}
        }
        let received = receive(&self.store, body, &blob, size).await?;
        blocking(move || {
            self.store
                .import_blob(&received.0, &blob, size)
                .map_err(|e| {
                    tracing::error!(bundle = %bundle, blob = %blob, error = %e, "importing an uploaded blob");
                    HttpError::Internal
                })?;
            drop(received);
            self.settle(bundle, &manifest)
        })
        .await
    }

    /// The manifest of a bundle being uploaded, or held here already.
    fn manifest(&self, bundle: &BundleId) -> Result<Arc<Manifest>, HttpError> {
        if let Some((manifest, _)) = self.pending().get(bundle) {
            return Ok(manifest.clone());
        }
        match self.store.manifest(bundle) {
            Ok(Some(manifest)) => Ok(manifest),
            Ok(None) => Err(HttpError::NotFound(
                "no upload of this bundle in progress: POST its manifest first",
            )),
            Err(e) => {
                tracing::error!(bundle = %bundle, error = %e, "reading manifest");
                Err(HttpError::Internal)
            }
        }
    }

    /// What is still missing; when nothing is, commits the bundle as held.
    fn settle(&self, bundle: BundleId, manifest: &Manifest) -> Result<UploadState, HttpError> {
        let mut seen = HashSet::new();
        let missing: Vec<BlobHash> = manifest
            .entries()
            .iter()
            .filter(|e| seen.insert(e.hash) && !self.store.has_blob_file(&e.hash, e.size))
            .map(|e| e.hash)
            .collect();
        if missing.is_empty() {
            self.store.add_fetched_bundle(manifest).map_err(|e| {
                tracing::error!(bundle = %bundle, error = %e, "committing an uploaded bundle");
                HttpError::Internal
            })?;
            self.pending().remove(&bundle);
            tracing::info!(bundle = %bundle, "uploaded bundle held");
        }
        Ok(UploadState { missing })
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<BundleId, (Arc<Manifest>, u64)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `/upload/{bundle}` or `/upload/{bundle}/{blob}`.
fn parse_path(path: &str) -> Result<(BundleId, Option<BlobHash>), HttpError> {
    let rest = path
        .strip_prefix("/upload/")
        .ok_or(HttpError::NotFound("not found"))?;
    let (bundle, blob) = match rest.split_once('/') {
        Some((bundle, blob)) => (bundle, Some(blob)),
        None => (rest, None),
    };
    let bundle = bundle
        .parse()
        .map_err(|_| HttpError::BadRequest("malformed bundle id"))?;
    let blob = blob
        .map(|b| b.parse())
        .transpose()
        .map_err(|_| HttpError::BadRequest("malformed blob hash"))?;
    Ok((bundle, blob))
}

/// A file in `tmp/`, removed when dropped: whatever goes wrong, or when the
/// client goes away mid-body, nothing received is left behind.
#[derive(Debug)]
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = layout::remove_if_present(&self.0);
    }
}

/// Streams a blob's body to a temporary file while hashing it; refuses a body
/// of another length or hash.
async fn receive<B>(
    store: &Store,
    body: B,
    blob: &BlobHash,
    size: u64,
) -> Result<TempFile, HttpError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let temp = TempFile(store.layout().temp_path("upload"));
    let disk = |e: std::io::Error| {
        tracing::error!(path = %temp.0.display(), error = %e, "writing an uploaded blob");
        HttpError::Internal
    };
    let file = tokio::fs::File::create(&temp.0).await.map_err(disk)?;
    let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut hasher = blake3::Hasher::new();
    let mut received = 0;
    let mut body = pin!(body);
    while let Some(data) = next_data(body.as_mut()).await? {
        received += data.len() as u64;
        if received > size {
            return Err(HttpError::BadRequest("the body is longer than the blob"));
        }
        hasher.update(&data);
        out.write_all(&data).await.map_err(disk)?;
    }
    if received != size {
        return Err(HttpError::BadRequest("the body is shorter than the blob"));
    }
    if BlobHash::from(hasher.finalize()) != *blob {
        return Err(HttpError::BadRequest(
            "the body does not hash to the blob's hash: nothing kept",
        ));
    }
    out.flush().await.map_err(disk)?;
    drop(out);
    Ok(temp)
}

/// Reads a manifest body, refusing one over [`MAX_MANIFEST_BYTES`].
async fn read_manifest<B>(body: B) -> Result<Vec<u8>, HttpError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let too_large = HttpError::TooLarge("the manifest is over its size limit");
    if body.size_hint().lower() > MAX_MANIFEST_BYTES as u64 {
        return Err(too_large);
    }
    let mut body = pin!(body);
    let mut bytes = Vec::new();
    while let Some(data) = next_data(body.as_mut()).await? {
        if bytes.len() + data.len() > MAX_MANIFEST_BYTES {
            return Err(too_large);
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}

/// The next data frame of a request body, skipping trailers.
async fn next_data<B>(mut body: Pin<&mut B>) -> Result<Option<Bytes>, HttpError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "upload body failed");
                return Err(HttpError::BadRequest("the body was cut short"));
            }
        }
    }
}

/// Runs store work (file syncs, renames) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HttpError> + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| HttpError::Internal)?
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
