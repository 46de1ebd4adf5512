//! The upload routes, by which `cartable publish` puts a bundle on the node the
//! coordinator chose (the admin API's "Uploading to a node"):
//!
//! - `POST /upload/{bundle}`, body the encoded manifest, answers
//!   `{"missing": [<blob hash>...]}`: the blobs this node lacks. The manifest is
//!   kept pending in memory until the bundle is complete or its grant expires,
//!   and room is reserved for it first ([`reserve`](super::reserve)): an upload
//!   that would overrun the node's declared capacity or its free disk space
//!   (less [`UploadLimits::disk_margin`]), beside the uploads in progress, is
//!   refused with 507 before any byte is received.
//! - `PUT /upload/{bundle}/{blob}`, body the blob's bytes, answers the same. The
//!   body streams to files in `tmp/` while its outboard is built
//!   ([`Incoming`](crate::store::Incoming)); only when it hashes to `{blob}`
//!   are they synced and renamed into place (the bytes are written once and
//!   never read back); otherwise nothing is kept.
//!
//! Once nothing is missing the bundle is committed as held. Received blobs are
//! stored at once, so after a restart (which forgets pending manifests) a new
//! POST answers only what is still missing. Every request carries
//! `Authorization: Bearer <grant>`: an [`UploadGrant`] for this bundle and this
//! node, unexpired, signed by the coordinator. A node without a coordinator
//! takes no uploads.

use std::collections::HashSet;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cartable_proto::join::UploadGrant;
use cartable_proto::wire::MAX_MANIFEST_BYTES;
use cartable_proto::{BlobHash, BundleId, Manifest, NodeId};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;

use super::body::Body;
use super::error::{HttpError, text};
use super::reserve::{Claim, Reservations, Room};
use crate::store::{ReceiveError, Received, Store, disk_bytes};
use cartable_net::https::watch::Progress;
use cartable_net::identity::signed_by;

/// Disk space uploads leave free by default: room for the index, manifests and
/// logs to go on growing when uploads have taken the rest.
pub const DEFAULT_DISK_MARGIN: u64 = 256 << 20;

/// What uploads may take on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// The capacity declared at join: bytes of the bundles held, uploads included.
    pub capacity: u64,
    /// Bytes of the data folder's filesystem that uploads leave free.
    pub disk_margin: u64,
}

/// What the upload routes need: the store, this node's id, the key of the
/// coordinator that signs grants, and the limits uploads reserve room within.
#[derive(Debug)]
pub struct Uploads {
    store: Arc<Store>,
    node: NodeId,
    coordinator: NodeId,
    limits: UploadLimits,
    /// Manifests posted and not yet complete, and the room each has reserved.
    pending: Mutex<Reservations>,
    /// Blobs of a bundle whose body is being received. One body per blob
    /// and bundle at a time: the room a bundle reserved counts each of its
    /// blobs once, and bodies of one blob sent many times at once would each
    /// write a copy past it before any is checked. Per bundle, so that the
    /// holder of one bundle's grant cannot hold up another's upload of a
    /// blob both have.
    receiving: Mutex<HashSet<(BundleId, BlobHash)>>,
}

/// A body's entry in [`Uploads::receiving`], removed when dropped.
struct Receiving {
    uploads: Arc<Uploads>,
    key: (BundleId, BlobHash),
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.uploads.receiving().remove(&self.key);
    }
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
    let working = req.extensions().get::<Progress>().cloned();
    let body = req.into_body();
    let state = match (method, blob) {
        (Method::POST, None) => uploads.clone().post(bundle, expires, body).await?,
        (Method::PUT, Some(blob)) => uploads.clone().put(bundle, blob, body, working).await?,
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
    pub fn new(store: Arc<Store>, node: NodeId, coordinator: NodeId, limits: UploadLimits) -> Self {
        Self {
            store,
            node,
            coordinator,
            limits,
            pending: Mutex::new(Reservations::default()),
            receiving: Mutex::new(HashSet::new()),
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
        let manifest = Manifest::decode(&bytes).map_err(|e| {
            tracing::debug!(bundle = %bundle, error = %e, "refused an upload's manifest");
            HttpError::BadRequest("the body is not a valid manifest")
        })?;
        let manifest = Arc::new(manifest);
        blocking(move || self.begin(bundle, expires, manifest)).await
    }

    /// Commits the bundle if nothing is missing; otherwise reserves room for
    /// what is, refusing (and keeping nothing) when there is too little.
    fn begin(
        &self,
        bundle: BundleId,
        expires: u64,
        manifest: Arc<Manifest>,
    ) -> Result<UploadState, HttpError> {
        let missing = self.missing(&manifest);
        if missing.is_empty() {
            return self.settle(bundle, &manifest);
        }
        let held = self.store.manifest(&bundle).map_err(|e| {
            tracing::error!(bundle = %bundle, error = %e, "reading manifest");
            HttpError::Internal
        })?;
        let claim = Claim {
            capacity: if held.is_some() {
                0
            } else {
                manifest.total_size()
            },
            disk: missing
                .iter()
                .fold(0u64, |sum, (_, size)| sum.saturating_add(disk_bytes(*size))),
        };
        // Room is measured under the table's lock, so that what two posts see
        // and claim cannot interleave.
        let mut pending = self.pending();
        let room = self.room()?;
        pending
            .reserve(bundle, manifest, expires, claim, room, unix_now())
            .map_err(|refusal| {
                tracing::warn!(bundle = %bundle, ?refusal, "upload refused for room");
                HttpError::from(refusal)
            })?;
        Ok(UploadState {
            missing: missing.into_iter().map(|(hash, _)| hash).collect(),
        })
    }

    /// The capacity and disk space left, uploads in progress not counted.
    fn room(&self) -> Result<Room, HttpError> {
        let bundles = self.store.bundles().map_err(|e| {
            tracing::error!(error = %e, "listing bundles");
            HttpError::Internal
        })?;
        let used = bundles
            .iter()
            .fold(0u64, |sum, b| sum.saturating_add(b.bytes));
        let free = self.store.layout().free_bytes().map_err(|e| {
            tracing::error!(error = %e, "reading the free disk space");
            HttpError::Internal
        })?;
        Ok(Room {
            capacity: self.limits.capacity.saturating_sub(used),
            disk: free.saturating_sub(self.limits.disk_margin),
        })
    }

    async fn put<B>(
        self: Arc<Self>,
        bundle: BundleId,
        blob: BlobHash,
        body: B,
        working: Option<Progress>,
    ) -> Result<UploadState, HttpError>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let (manifest, pending) = self.manifest(&bundle)?;
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
        let receiving = self.clone().start_receiving(bundle, blob)?;
        if !pending {
            // A blob sent again for a bundle held here: no reservation covers it.
            let this = self.clone();
            blocking(move || this.check_disk(&blob, size)).await?;
        }
        let received = receive(&self.store, body, size, working.clone()).await?;
        if received.hash() != blob {
            return Err(HttpError::BadRequest(
                "the body does not hash to the blob's hash: nothing kept",
            ));
        }
        // Syncing a large file is our work, not a stalled client.
        Progress::while_working(working, blocking(move || {
            let _receiving = receiving;
            let new = self.store.place_received(received).map_err(|e| {
                tracing::error!(bundle = %bundle, blob = %blob, error = %e, "storing an uploaded blob");
                HttpError::Internal
            })?;
            // Only bytes new on disk leave the claim: a blob sent again must
            // not wear down the room reserved for the blobs still to come.
            if new {
                self.pending().written(&bundle, disk_bytes(size));
            }
            self.settle(bundle, &manifest)
        }))
        .await
    }

    /// Refuses a blob that would not fit on disk beside the uploads' claims.
    fn check_disk(&self, blob: &BlobHash, size: u64) -> Result<(), HttpError> {
        if self.store.has_blob_file(blob, size) {
            return Ok(());
        }
        let pending = self.pending();
        let room = self.room()?;
        pending
            .check_disk(disk_bytes(size), room.disk)
            .map_err(HttpError::from)
    }

    /// The manifest of a bundle being uploaded (true), or held here already (false).
    fn manifest(&self, bundle: &BundleId) -> Result<(Arc<Manifest>, bool), HttpError> {
        if let Some(upload) = self.pending().get(bundle) {
            return Ok((upload.manifest.clone(), true));
        }
        match self.store.manifest(bundle) {
            Ok(Some(manifest)) => Ok((manifest, false)),
            Ok(None) => Err(HttpError::NotFound(
                "no upload of this bundle in progress: POST its manifest first",
            )),
            Err(e) => {
                tracing::error!(bundle = %bundle, error = %e, "reading manifest");
                Err(HttpError::Internal)
            }
        }
    }

    /// The blobs of `manifest` not stored here, once each, with their sizes.
    fn missing(&self, manifest: &Manifest) -> Vec<(BlobHash, u64)> {
        let mut seen = HashSet::new();
        manifest
            .entries()
            .iter()
            .filter(|e| seen.insert(e.hash) && !self.store.rely_on_blob(&e.hash, e.size))
            .map(|e| (e.hash, e.size))
            .collect()
    }

    /// What is still missing; when nothing is, commits the bundle as held and
    /// releases its reservation (after the commit, so that the room it takes
    /// is counted at every moment, by the claim or by the bundles held).
    fn settle(&self, bundle: BundleId, manifest: &Manifest) -> Result<UploadState, HttpError> {
        let missing: Vec<BlobHash> = self
            .missing(manifest)
            .into_iter()
            .map(|(hash, _)| hash)
            .collect();
        if missing.is_empty() {
            self.store.add_fetched_bundle(manifest).map_err(|e| {
                tracing::error!(bundle = %bundle, error = %e, "committing an uploaded bundle");
                HttpError::Internal
            })?;
            self.pending().release(&bundle);
            tracing::info!(bundle = %bundle, "uploaded bundle held");
        }
        Ok(UploadState { missing })
    }

    fn pending(&self) -> MutexGuard<'_, Reservations> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn receiving(&self) -> MutexGuard<'_, HashSet<(BundleId, BlobHash)>> {
        self.receiving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `blob`'s body as being received for `bundle`, or refuses a
    /// second at once.
    fn start_receiving(
        self: Arc<Self>,
        bundle: BundleId,
        blob: BlobHash,
    ) -> Result<Receiving, HttpError> {
        let key = (bundle, blob);
        if !self.receiving().insert(key) {
            return Err(HttpError::Unavailable(
                "this blob's body is being received by another request: retry later",
            ));
        }
        Ok(Receiving { uploads: self, key })
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

/// Stores a blob's body as it arrives ([`Incoming`]); refuses a body of
/// another length. The caller checks the hash before placing it.
async fn receive<B>(
    store: &Arc<Store>,
    body: B,
    size: u64,
    working: Option<Progress>,
) -> Result<Received, HttpError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let answer = |e: ReceiveError| match e {
        ReceiveError::Longer => HttpError::BadRequest("the body is longer than the blob"),
        ReceiveError::Shorter => HttpError::BadRequest("the body is shorter than the blob"),
        ReceiveError::Disk(e) => {
            tracing::error!(error = %e, "writing an uploaded blob");
            HttpError::Internal
        }
    };
    let opening = store.clone();
    let mut incoming =
        blocking(move || opening.incoming(size).map_err(|e| answer(e.into()))).await?;
    let mut body = pin!(body);
    while let Some(data) = next_data(body.as_mut()).await? {
        // Waiting for the disk to take a batch is our work too.
        Progress::while_working(working.clone(), incoming.push(&data))
            .await
            .map_err(answer)?;
    }
    Progress::while_working(working, incoming.finish())
        .await
        .map_err(answer)
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
