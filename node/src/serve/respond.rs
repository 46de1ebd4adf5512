//! Answering one request: route it, apply the conditional headers, and stream
//! the file verified. Errors are values here and become responses in `error`.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use cartable_proto::id::HEX_LEN;
use cartable_proto::{BlobHash, BundleId, Manifest, ManifestEntry};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use tokio::sync::mpsc;

use super::ServeContext;
use super::body::Body;
use super::conditional::{self, RangeRequest};
use super::error::{HttpError, text};
use super::listing;
use super::policy;
use super::target::{self, Target};
use super::upload;
use crate::peer::through::{FetchThrough, LookupError};
use crate::store::verify::VerifyError;
use crate::store::{BlobFiles, HOT_FILE_MAX, HOT_PIECE, ReadFault, Store, StoreError};
use cartable_proto::wire::GROUP_BYTES;

/// Browsers may cache bundle content forever: it never changes under its URL.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Verified pieces buffered between the disk reader and the connection: one,
/// read only once the connection took the one before, so a client that does
/// not read holds at most this piece and the one hyper holds. Files are read
/// a [`HOT_PIECE`] at a time, aligned: one verified block, as the store keeps
/// them in memory.
const PIECES_IN_FLIGHT: usize = 1;
/// Headers a file's answer may carry: policy, validator, caching, sniffing,
/// range, type, length, CORS's two and hyper's date.
const FILE_HEADERS: usize = 12;
/// Fetch-through fetches this much at a time: 64 chunk groups.
const SEGMENT: u64 = 1 << 20;

/// Answers a request; never fails (failures are error responses).
pub async fn respond<B>(ctx: Arc<ServeContext>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    if upload::is_upload(&req) {
        return upload::route(ctx.uploads.as_ref(), req)
            .await
            .unwrap_or_else(HttpError::into_response);
    }
    let mut response = route(&ctx, &req)
        .await
        .unwrap_or_else(HttpError::into_response);
    // Every answer about bundle content, errors and redirects included, is
    // readable by the sandboxed (so cross-origin) lesson that asked; the
    // node's own status page is not.
    if req.uri().path() != "/" {
        policy::allow_any_origin(response.headers_mut());
    }
    response
}

async fn route<B>(ctx: &ServeContext, req: &Request<B>) -> Result<Response<Body>, HttpError> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        Method::OPTIONS => return Ok(policy::preflight()),
        _ => return Err(HttpError::MethodNotAllowed),
    };
    let (id, (manifest, held), path) = match target::parse(req.uri().path())? {
        Target::Status => return super::status_page::answer(ctx, head).await,
        Target::Health => {
            let mut response = text(StatusCode::OK, "ok\n");
            policy::node_page(response.headers_mut());
            return Ok(response);
        }
        Target::Name(rest) => {
            let names = ctx
                .names
                .as_ref()
                .ok_or(HttpError::NotFound("no such name"))?;
            let names = names.lock().unwrap_or_else(|e| e.into_inner());
            let (id, tail) = names
                .resolve(&rest)
                .ok_or(HttpError::NotFound("no such name"))?;
            return Ok(redirect_for_now(&format!("/b/{id}/{tail}")));
        }
        Target::BundleRoot(id) => return Ok(redirect(&format!("/b/{id}/"))),
        Target::Folder(id, folder) => {
            let manifest = manifest(ctx, &id).await?;
            let index = if folder.is_empty() {
                "index.html".to_owned()
            } else {
                format!("{folder}/index.html")
            };
            if manifest.0.entry(&index).is_none() {
                if !folder.is_empty() && !manifest.0.is_folder(&folder) {
                    return Err(HttpError::NotFound("no such folder in this bundle"));
                }
                return Ok(listing_page(&manifest.0, &folder, head));
            }
            (id, manifest, index)
        }
        Target::File(id, path) => (id, manifest(ctx, &id).await?, path.to_string()),
    };
    let Some(entry) = manifest.entry(&path) else {
        if manifest.is_folder(&path) {
            return Ok(redirect(&format!("{}/", req.uri().path())));
        }
        return Err(HttpError::NotFound("no such file in this bundle"));
    };
    tracing::trace!(bundle = %id, path, "serving");
    if !held && !head {
        // A bundle held elsewhere: its file is in the fetch-through cache or
        // not; a miss under pressure is shed below, fetching nothing.
        let cache = &ctx.cache;
        if ctx.store.blob_size(&entry.hash).is_some() {
            cache.hits.inc();
        } else if !ctx.sheds_fetch_through() {
            cache.misses.inc();
        }
    }
    serve_file(ctx, entry, req.headers(), head).await
}

/// The bundle's manifest and whether this node holds the bundle: held here,
/// or else from a peer through fetch-through.
async fn manifest(ctx: &ServeContext, id: &BundleId) -> Result<(Arc<Manifest>, bool), HttpError> {
    match held_manifest(&ctx.store, id).await {
        Ok(Some(m)) => Ok((m, true)),
        Ok(None) => {
            let Some(through) = &ctx.through else {
                return Err(HttpError::NotFound("no such bundle here"));
            };
            // A manifest fetched before is answered whatever the pressure:
            // the blobs it names may be in the cache, served as held ones are.
            if let Some(cached) = through.cached_manifest(id) {
                return Ok((cached, false));
            }
            // Held bundles first: asking peers waits for a quieter moment.
            if ctx.sheds_fetch_through() {
                return Err(HttpError::Unavailable("busy, retry shortly"));
            }
            let manifest = through.lookup(id).await.map_err(|e| match e {
                LookupError::Unknown => HttpError::NotFound("no such bundle here"),
                LookupError::Unavailable => {
                    HttpError::Unavailable("peers cannot be asked right now")
                }
            })?;
            Ok((manifest, false))
        }
        Err(e) => {
            tracing::error!(bundle = %id, error = %e, "reading manifest");
            Err(HttpError::Internal)
        }
    }
}

async fn serve_file(
    ctx: &ServeContext,
    entry: &ManifestEntry,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response<Body>, HttpError> {
    let etag_value = etag_of(&entry.hash);
    let etag = etag_value.to_str().unwrap_or_default();
    let len = entry.size;
    let mut response = Response::new(Body::empty());
    // Sized once for every header a file's answer may carry, CORS's and
    // hyper's date included, rather than grown twice on each request.
    *response.headers_mut() = HeaderMap::with_capacity(FILE_HEADERS);
    let h = response.headers_mut();
    // Before any early answer: a 304 refreshes the cached headers with its own.
    ctx.lessons.apply(h, &entry.content_type);
    h.insert(header::ETAG, etag_value.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if header_str(headers, header::IF_NONE_MATCH).is_some_and(|v| conditional::none_match(v, etag))
    {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(response);
    }
    let wanted = match header_str(headers, header::RANGE) {
        Some(_)
            if header_str(headers, header::IF_RANGE)
                .is_some_and(|v| !conditional::if_range_holds(v, etag)) =>
        {
            RangeRequest::Full
        }
        Some(v) => conditional::parse_range(v, len)
            .map_err(|_| HttpError::BadRequest("malformed Range header"))?,
        None => RangeRequest::Full,
    };
    let range = match wanted {
        RangeRequest::Full => 0..len,
        RangeRequest::Unsatisfiable => return Err(HttpError::RangeNotSatisfiable { len }),
        RangeRequest::Partial(r) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let content_range = format!("bytes {}-{}/{len}", r.start, r.end - 1);
            response
                .headers_mut()
                .insert(header::CONTENT_RANGE, value(&content_range));
            r
        }
    };
    let store = &ctx.store;
    if store.is_damaged(&entry.hash) {
        return Err(HttpError::Unavailable(
            "file damaged on this node, repair pending",
        ));
    }
    // A small file kept in memory was verified under this hash and size: it
    // is held as the manifest says, without asking the index. Looked up only
    // when its bytes are sent, so a HEAD is no read from memory.
    let sends = !head && !range.is_empty();
    let hot = sends
        .then(|| store.hot_file(&entry.hash, entry.size))
        .flatten();
    let held = match &hot {
        Some(_) => Some(entry.size),
        None => store.blob_size(&entry.hash),
    };
    if held.is_some_and(|size| size != entry.size) {
        // The hash fixes the size: a manifest (a peer's, seen through
        // fetch-through) giving a held blob another one is wrong, not the blob.
        return Err(HttpError::BadGateway(
            "this bundle's manifest contradicts a file verified here",
        ));
    }
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, value(&entry.content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(range.end - range.start),
    );
    if sends {
        *response.body_mut() = match (&ctx.through, hot) {
            // The range lies inside the file, whole in memory.
            (_, Some(whole)) => Body::full(whole.slice(range.start as usize..range.end as usize)),
            (Some(through), None) if held.is_none() => {
                if ctx.sheds_fetch_through() {
                    // Held bundles first: fetch-through waits for a quieter moment.
                    return Err(HttpError::Unavailable("busy, retry shortly"));
                }
                through_body(ctx, through, entry, range).await?
            }
            _ => verified_body(ctx, entry, range).await?,
        };
    }
    Ok(response)
}

/// Starts a verified read and waits for its first piece, so a file found corrupt
/// at its start gets a 503 rather than a cut 200.
async fn verified_body(
    ctx: &ServeContext,
    entry: &ManifestEntry,
    range: Range<u64>,
) -> Result<Body, HttpError> {
    let store = &ctx.store;
    if entry.size <= HOT_FILE_MAX {
        // Not in memory (the caller looked): read from disk, and kept. One
        // chunk group in the kernel's caches is cheaper to verify in place
        // than to hand to a thread; anything that would wait on the disk goes
        // to one.
        let cached = (entry.size <= GROUP_BYTES)
            .then(|| store.read_small_cached(&entry.hash, entry.size))
            .flatten();
        let whole = match cached {
            Some(read) => read,
            None => {
                let (store, hash, size) = (store.clone(), entry.hash, entry.size);
                blocking(move || store.read_small(&hash, size)).await
            }
        }
        .map_err(|e| failed(store, &entry.hash, &e))?;
        // The range lies inside the file, which is under 64 KiB.
        return Ok(Body::full(
            whole.slice(range.start as usize..range.end as usize),
        ));
    }
    let files = match store.open_blob_cached(&entry.hash, entry.size) {
        Some(files) => Ok(files),
        None => {
            let (store, hash, size) = (store.clone(), entry.hash, entry.size);
            blocking(move || store.open_blob(&hash, size).map_err(VerifyError::Io)).await
        }
    }
    .map_err(|e| failed(store, &entry.hash, &e))?;
    let len = range.end - range.start;
    let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
    let (store, files, progress) = (store.clone(), Arc::new(files), ctx.progress_timeout);
    tokio::spawn(async move {
        let sent = send_range(&store, files.clone(), range, &tx, progress).await;
        if let Err(Stopped::Failed(e)) = sent {
            failed(&store, &files.hash, &e);
            let _ = tx.try_send(Err(std::io::Error::other("blob failed verification")));
        }
    });
    first_piece(rx, len, "file damaged on this node, repair pending").await
}

/// A held bundle's manifest: from memory, else (the first time since the
/// start) read from the disk on a blocking thread. Ids of bundles not held,
/// made up or not, are told from the index in place.
async fn held_manifest(
    store: &Arc<Store>,
    id: &BundleId,
) -> Result<Option<Arc<Manifest>>, StoreError> {
    if let Some(manifest) = store.manifest_in_memory(id) {
        return Ok(Some(manifest));
    }
    if !store.holds(id)? {
        return Ok(None);
    }
    let (reader, id) = (store.clone(), *id);
    tokio::task::spawn_blocking(move || reader.manifest(&id))
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Io {
                path: store.layout().bundle(&id),
                source: std::io::Error::other(e),
            })
        })
}

/// Runs `read` on a blocking thread; a thread lost (a panic) is an I/O error.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, VerifyError> + Send + 'static,
) -> Result<T, VerifyError> {
    tokio::task::spawn_blocking(read)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e).into()))
}

/// Why a streamed response stopped early.
#[derive(Debug)]
enum Stopped {
    /// The client went away.
    Gone,
    /// The client took no piece for the progress deadline.
    Stalled,
    /// Reading or verifying failed.
    Failed(VerifyError),
}

/// Sends `range` verified, piece by piece: a piece kept in memory at once,
/// else read (on a blocking thread, held only while it reads) once the
/// connection has room for it. A client that does not read holds a task and
/// one piece, and only until the progress deadline.
async fn send_range(
    store: &Arc<Store>,
    files: Arc<BlobFiles>,
    range: Range<u64>,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    progress: Duration,
) -> Result<(), Stopped> {
    for piece in cut(range, HOT_PIECE) {
        let room = match tokio::time::timeout(progress, tx.reserve()).await {
            Ok(Ok(room)) => room,
            Ok(Err(_)) => return Err(Stopped::Gone),
            Err(_) => return Err(Stopped::Stalled),
        };
        if let Some(bytes) = store.hot_piece(&files.hash, files.size, &piece) {
            room.send(Ok(bytes));
            continue;
        }
        let (store, files) = (store.clone(), files.clone());
        match blocking(move || store.read_piece(&files, piece)).await {
            Ok(bytes) => room.send(Ok(bytes)),
            Err(e) => return Err(Stopped::Failed(e)),
        }
    }
    Ok(())
}

/// Waits for a reader's first piece before the response head goes out, so a
/// failure at the start gets an error status rather than a cut 200.
async fn first_piece(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    len: u64,
    failure: &'static str,
) -> Result<Body, HttpError> {
    match rx.recv().await {
        Some(Ok(first)) => Ok(Body::Stream {
            remaining: len,
            first: Some(first),
            pieces: rx,
        }),
        _ => Err(HttpError::Unavailable(failure)),
    }
}

/// Streams a range of a blob only peers hold: segment by segment, each fetched
/// (verified) from a peer when missing, then read back verified.
async fn through_body(
    ctx: &ServeContext,
    through: &Arc<FetchThrough>,
    entry: &ManifestEntry,
    range: Range<u64>,
) -> Result<Body, HttpError> {
    let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
    let len = range.end - range.start;
    let (fetcher, hash, size) = (through.clone(), entry.hash, entry.size);
    let (store, progress) = (ctx.store.clone(), ctx.progress_timeout);
    through.spawn(async move {
        for segment in cut(range, SEGMENT) {
            let files = fetcher.open(hash, size, segment.clone()).await;
            let sent = match files {
                Ok(files) => send_range(&store, Arc::new(files), segment, &tx, progress).await,
                Err(e) => Err(Stopped::Failed(e.into())),
            };
            if let Err(stop) = sent {
                if let Stopped::Failed(e) = stop {
                    tracing::debug!(blob = %hash, error = %e, "fetch-through failed");
                    let _ = tx.try_send(Err(std::io::Error::other("fetch-through failed")));
                }
                return;
            }
        }
    });
    first_piece(rx, len, "not available from any peer right now").await
}

/// Cuts a range at multiples of `unit`: pieces read, or segments fetched.
fn cut(range: Range<u64>, unit: u64) -> impl Iterator<Item = Range<u64>> {
    let mut start = range.start;
    std::iter::from_fn(move || {
        if start >= range.end {
            return None;
        }
        let end = ((start / unit + 1) * unit).min(range.end);
        let segment = start..end;
        start = end;
        Some(segment)
    })
}

/// A failed open or verified read: the blob is marked damaged when its files
/// are wrong or gone, not when the node is short of something.
fn failed(store: &Store, hash: &BlobHash, e: &VerifyError) -> HttpError {
    match store.read_failed(hash, e) {
        ReadFault::Damaged => HttpError::Unavailable("file damaged on this node, repair pending"),
        ReadFault::Transient => HttpError::Unavailable("busy, retry shortly"),
    }
}

fn listing_page(manifest: &Manifest, folder: &str, head: bool) -> Response<Body> {
    // A listing never changes under its URL: the bundle is immutable.
    html_page(listing::render(manifest, folder), head, IMMUTABLE)
}

/// One of the node's own HTML pages (a listing, the status page), its body
/// left out for HEAD.
pub(super) fn html_page(html: String, head: bool, cache_control: &'static str) -> Response<Body> {
    let len = html.len();
    let mut response = Response::new(if head {
        Body::empty()
    } else {
        Body::full(html)
    });
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, value(&len.to_string()));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    policy::node_page(h);
    response
}

fn redirect(location: &str) -> Response<Body> {
    let mut response = text(StatusCode::MOVED_PERMANENTLY, "moved\n");
    response
        .headers_mut()
        .insert(header::LOCATION, value(location));
    response
}

/// A redirect that must not be cached: a name points to a new bundle when the
/// lesson gets a new version.
fn redirect_for_now(location: &str) -> Response<Body> {
    let mut response = text(StatusCode::FOUND, "found\n");
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, value(location));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The strong validator of a blob: its hash in hex, quoted. Built without
/// `format!`, as every answer about a file carries one.
fn etag_of(hash: &BlobHash) -> HeaderValue {
    let mut quoted = [b'"'; HEX_LEN + 2];
    quoted[1..=HEX_LEN].copy_from_slice(&hash.hex_digits());
    HeaderValue::from_bytes(&quoted).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A header value from text already known to be visible ASCII (ids, digits,
/// content types checked when the manifest was decoded, request paths).
fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cut_at_multiples_of_the_unit() {
        let mib = SEGMENT;
        let pieces: Vec<_> = cut(10..2 * mib + 5, SEGMENT).collect();
        assert_eq!(pieces, [10..mib, mib..2 * mib, 2 * mib..2 * mib + 5]);
        assert_eq!(cut(5..5, HOT_PIECE).count(), 0);
    }

    /// Under pressure, a bundle fetched through before is served from what
    /// this node keeps of it; one never looked up is shed, peers unasked.
    #[tokio::test]
    async fn a_bundle_fetched_through_before_is_served_under_pressure() -> anyhow::Result<()> {
        use cartable_net::https::shed::Level;
        use http_body_util::BodyExt;
        let s = crate::peer::through::testing::setup()?;
        let [seen, unseen] = [b"<h1>Les fractions</h1>", b"<h1>Les volcans !</h1>"].map(|page| {
            let lesson = tempfile::tempdir().unwrap();
            std::fs::write(lesson.path().join("index.html"), page).unwrap();
            s.peer_store.add_folder(lesson.path()).unwrap().summary.id
        });
        let ctx = ServeContext {
            through: Some(Arc::new(s.through)),
            pressure: cartable_net::https::shed::Pressure::new(2),
            ..ServeContext::new(s.store.clone())
        };
        let get = |id: BundleId| {
            let ctx = &ctx;
            async move {
                let req = Request::get(format!("/b/{id}/index.html"))
                    .body(())
                    .unwrap();
                let response = route(ctx, &req)
                    .await
                    .unwrap_or_else(HttpError::into_response);
                let status = response.status();
                (
                    status,
                    response.into_body().collect().await.unwrap().to_bytes(),
                )
            }
        };
        assert_eq!(
            get(seen).await,
            (StatusCode::OK, "<h1>Les fractions</h1>".into())
        );
        let _busy = ctx.pressure.enter().expect("room for one request");
        assert_eq!(ctx.pressure.level(), Level::Busy);
        assert_eq!(
            get(seen).await,
            (StatusCode::OK, "<h1>Les fractions</h1>".into())
        );
        assert_eq!(get(unseen).await.0, StatusCode::SERVICE_UNAVAILABLE);
        Ok(())
    }

    /// A peer's manifest may name a blob this node holds with another size:
    /// the lie is refused, before and after the file is kept in memory, and
    /// the good blob is neither marked damaged nor cut.
    #[tokio::test]
    async fn a_manifest_giving_a_held_file_another_size_is_refused_and_marks_nothing()
    -> anyhow::Result<()> {
        let (data, lesson) = (tempfile::tempdir()?, tempfile::tempdir()?);
        std::fs::write(lesson.path().join("a.txt"), vec![7u8; 30_000])?;
        let store = Arc::new(Store::open(data.path())?);
        let id = store.add_folder(lesson.path())?.summary.id;
        let held = store
            .manifest(&id)?
            .unwrap()
            .entry("a.txt")
            .unwrap()
            .clone();
        let ctx = ServeContext::new(store.clone());
        let none = HeaderMap::new();
        for warm in [false, true] {
            if warm {
                let served = serve_file(&ctx, &held, &none, false).await.unwrap();
                assert_eq!(served.status(), StatusCode::OK);
                assert!(store.hot_file(&held.hash, held.size).is_some());
            }
            for size in [held.size + 30_000, held.size - 1] {
                let liar = ManifestEntry {
                    size,
                    ..held.clone()
                };
                let refused = serve_file(&ctx, &liar, &none, false).await.unwrap_err();
                assert!(matches!(refused, HttpError::BadGateway(_)), "{refused:?}");
            }
            assert!(!store.is_damaged(&held.hash));
        }
        Ok(())
    }

    /// A large file read twice is served from memory, whole, by range within
    /// a piece, and by its short last piece, even once the disk copy rots; a
    /// manifest giving it another size finds nothing kept.
    #[tokio::test]
    async fn a_large_file_read_twice_is_served_from_memory() -> anyhow::Result<()> {
        use http_body_util::BodyExt;
        let (data, lesson) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let bytes: Vec<u8> = (0..2 * HOT_PIECE as usize + 5000)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(lesson.path().join("film.bin"), &bytes)?;
        let store = Arc::new(Store::open(data.path())?);
        let id = store.add_folder(lesson.path())?.summary.id;
        let held = store
            .manifest(&id)?
            .unwrap()
            .entry("film.bin")
            .unwrap()
            .clone();
        let ctx = ServeContext::new(store.clone());
        let get = |range: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(r) = range {
                headers.insert(header::RANGE, HeaderValue::from_str(r).unwrap());
            }
            let (ctx, held) = (&ctx, &held);
            async move {
                let served = serve_file(ctx, held, &headers, false).await.unwrap();
                served.into_body().collect().await.unwrap().to_bytes()
            }
        };
        for _ in 0..2 {
            assert_eq!(get(None).await, bytes);
        }
        let blob = store.layout().blob(&held.hash);
        std::fs::write(&blob, vec![0u8; bytes.len()])?;
        assert_eq!(get(None).await, bytes);
        let (a, b) = (HOT_PIECE as usize + 7, HOT_PIECE as usize + 900);
        assert_eq!(get(Some(&format!("bytes={a}-{b}"))).await, bytes[a..=b]);
        let last = 2 * HOT_PIECE as usize + 10;
        assert_eq!(get(Some(&format!("bytes={last}-"))).await, bytes[last..]);
        assert!(
            store
                .hot_piece(&held.hash, held.size - 1, &(0..10))
                .is_none()
        );
        Ok(())
    }
}
