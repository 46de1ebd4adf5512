//! The upload against a fake node speaking the node's upload routes over real
//! HTTPS: pinned certificate, bearer grant, one connection for the whole
//! upload, each blob once, nothing sent twice.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cartable_proto::{BlobHash, BundleId, Manifest, NodeId};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::publish::pack;
use super::upload::{Uploaded, upload};
use cartable_proto::api::{Published, UploadState};

const GRANT: &str = "grant-for-test";

/// What the fake node received.
#[derive(Debug, Default)]
struct Received {
    manifest: Option<Manifest>,
    blobs: HashMap<BlobHash, Bytes>,
    puts: usize,
    connections: usize,
}

impl Received {
    fn missing(&self) -> Vec<BlobHash> {
        let mut missing: Vec<BlobHash> = self
            .manifest
            .iter()
            .flat_map(|m| m.entries())
            .map(|e| e.hash)
            .collect();
        missing.sort();
        missing.dedup();
        missing.retain(|h| !self.blobs.contains_key(h));
        missing
    }
}

/// Starts the fake node; returns its URL, its certificate's SHA-256 and its log.
async fn fake_node() -> anyhow::Result<(String, String, Arc<Mutex<Received>>)> {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let cert = CertificateDer::from(key.cert.der().to_vec());
    let sha =
        cartable_proto::hex::encode(ring::digest::digest(&ring::digest::SHA256, &cert).as_ref());
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let received = Arc::new(Mutex::new(Received::default()));
    let state = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                state.lock().unwrap().connections += 1;
                let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok((format!("https://{addr}"), sha, received))
}

/// The node's upload routes, as `cartable_proto::api` specifies them.
async fn answer(
    state: Arc<Mutex<Received>>,
    req: Request<Incoming>,
) -> anyhow::Result<Response<Full<Bytes>>> {
    let reply = |status: StatusCode, body: String| {
        Ok(Response::builder().status(status).body(Full::from(body))?)
    };
    if req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {GRANT}"))
    {
        return reply(StatusCode::UNAUTHORIZED, r#"{"error":"bad grant"}"#.into());
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let body = req.into_body().collect().await?.to_bytes();
    let parts: Vec<&str> = path.trim_start_matches("/upload/").split('/').collect();
    let mut state = state.lock().unwrap();
    match (method, parts.as_slice()) {
        (Method::POST, [_bundle]) => state.manifest = Some(Manifest::decode(&body)?),
        (Method::PUT, [_bundle, blob]) => {
            let blob: BlobHash = BlobHash::from_hex(blob)?;
            if BlobHash::of(&body) != blob {
                return reply(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"hash mismatch"}"#.into(),
                );
            }
            state.puts += 1;
            state.blobs.insert(blob, body);
        }
        _ => return reply(StatusCode::NOT_FOUND, r#"{"error":"no such route"}"#.into()),
    }
    let missing = UploadState {
        missing: state.missing(),
    };
    reply(StatusCode::OK, serde_json::to_string(&missing)?)
}

fn published(bundle: BundleId, url: String, sha: String) -> Published {
    Published {
        bundle,
        upload_node: NodeId::from_bytes([7; 32]),
        upload_url: url,
        upload_cert_sha256: sha,
        grant: GRANT.into(),
        urls: Vec::new(),
    }
}

#[tokio::test]
async fn each_blob_is_uploaded_once_over_one_connection_and_never_twice() -> anyhow::Result<()> {
    let lesson = tempfile::tempdir()?;
    fs::create_dir_all(lesson.path().join("img"))?;
    fs::write(lesson.path().join("index.html"), "<h1>Hi</h1>")?;
    fs::write(lesson.path().join("a.css"), "p {}")?;
    fs::write(lesson.path().join("img/same.css"), "p {}")?;
    let video: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(lesson.path().join("img/clip.mp4"), &video)?;
    let packed = pack(lesson.path(), None)?;
    let (url, sha, received) = fake_node().await?;
    let publish = published(packed.manifest.id(), url, sha);

    let first = upload(&publish, packed.manifest.encode(), &packed.sources).await?;
    assert_eq!(
        first,
        Uploaded {
            blobs: 3,
            bytes: 11 + 4 + video.len() as u64
        }
    );
    {
        let got = received.lock().unwrap();
        assert_eq!((got.puts, got.connections), (3, 1));
        assert_eq!(got.blobs[&BlobHash::of(&video)].as_ref(), video.as_slice());
    }
    let again = upload(&publish, packed.manifest.encode(), &packed.sources).await?;
    assert_eq!(again, Uploaded { blobs: 0, bytes: 0 });
    assert_eq!(received.lock().unwrap().puts, 3, "nothing sent twice");
    Ok(())
}

#[tokio::test]
async fn a_node_with_another_certificate_or_grant_gets_nothing() -> anyhow::Result<()> {
    let lesson = tempfile::tempdir()?;
    fs::write(lesson.path().join("index.html"), "x")?;
    let packed = pack(lesson.path(), None)?;
    let (url, _, received) = fake_node().await?;
    let impostor = published(packed.manifest.id(), url.clone(), "ab".repeat(32));
    let err = upload(&impostor, packed.manifest.encode(), &packed.sources)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("does not match the SHA-256"),
        "{err:#}"
    );
    assert!(received.lock().unwrap().manifest.is_none());

    let (url, sha, _) = fake_node().await?;
    let mut wrong_grant = published(packed.manifest.id(), url, sha);
    wrong_grant.grant = "forged".into();
    let err = upload(&wrong_grant, packed.manifest.encode(), &packed.sources)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").ends_with(": 401 bad grant"), "{err:#}");
    Ok(())
}
