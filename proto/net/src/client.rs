//! HTTPS requests to one server whose certificate is pinned: [`HttpsClient`]
//! speaks HTTP/1.1, keeping its connection between requests (a publish of
//! 10,000 files makes one TLS handshake, not 10,000). The CLI talks to the
//! coordinator and uploads to nodes with it; the coordinator probes nodes with it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::pin::Pin;

/// A request body: bytes in memory or a file streamed from disk.
pub type RequestBody = UnsyncBoxBody<Bytes, io::Error>;

/// Connecting and the TLS handshake together must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read; listings of many bundles stay far below.
const MAX_REPLY: usize = 256 << 20;

/// An error answer from the server: `error: <status> <message>`.
#[derive(Debug, thiserror::Error)]
#[error("{status} {message}")]
pub struct HttpError {
    /// The status code.
    pub status: u16,
    /// The `error` field of the JSON answer, a node's one-line text reason, or
    /// the reason phrase.
    pub message: String,
}

/// A body of bytes held in memory.
pub fn full(bytes: impl Into<Bytes>) -> RequestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An HTTP/1.1 client of one HTTPS server.
#[derive(Debug)]
pub struct HttpsClient {
    /// `https://host:port` plus any path prefix, for messages and URLs.
    base: String,
    authority: String,
    host: String,
    port: u16,
    prefix: String,
    config: Arc<ClientConfig>,
    /// Why a handshake failed on the certificate check.
    mismatch: &'static str,
    sender: Option<SendRequest<RequestBody>>,
}

impl HttpsClient {
    /// A client of `base_url` (`https://host[:port][/prefix]`) trusting `pin` only.
    pub fn new(base_url: &str, pin: Pin) -> anyhow::Result<Self> {
        let uri: Uri = base_url
            .parse()
            .with_context(|| format!("{base_url:?} is not a URL"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("https"),
            "{base_url:?}: the URL must start with https://"
        );
        anyhow::ensure!(
            uri.query().is_none(),
            "{base_url:?}: the URL must have no query"
        );
        let authority = uri.authority().context("the URL has no host")?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            authority: authority.as_str().to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            mismatch: pin.mismatch(),
            config: pin.client_config()?,
            sender: None,
        })
    }

    /// The full URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one request (`path` starts with `/`, may hold a query) and reads the
    /// whole answer. The answer's status is returned as is.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, String)],
        body: RequestBody,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let url = self.url(path);
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.authority);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(body)?;
        let sender = self.ready_sender().await?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("{method} {url}: reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// The open connection, or a new one if there is none or the server closed it.
    async fn ready_sender(&mut self) -> anyhow::Result<&mut SendRequest<RequestBody>> {
        if let Some(mut sender) = self.sender.take()
            && sender.ready().await.is_ok()
        {
            return Ok(self.sender.insert(sender));
        }
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| anyhow::anyhow!("cannot reach {}: timed out", self.base))?
            .with_context(|| format!("cannot reach {}", self.base))?;
        Ok(self.sender.insert(sender))
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<RequestBody>> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone())?;
        let tls = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| {
                let rejected = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|inner| matches!(inner, rustls::Error::InvalidCertificate(_)));
                if rejected {
                    anyhow::anyhow!(self.mismatch)
                } else {
                    e.into()
                }
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        // The connection task ends when the sender is dropped or the server closes.
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// The JSON of a success, or the [`HttpError`] of a failure.
pub fn parse_answer<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> anyhow::Result<T> {
    if !status.is_success() {
        let message = match serde_json::from_slice::<cartable_proto::api::ApiError>(body) {
            Ok(e) => e.error,
            Err(_) => one_line_reason(body)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned()),
        };
        return Err(HttpError {
            status: status.as_u16(),
            message,
        }
        .into());
    }
    serde_json::from_slice(body).context("the answer is not the expected JSON")
}

/// A node answers errors with a short plain-text reason ("the bundle needs more
/// capacity than this node has left"): worth showing, unlike markup or a page.
fn one_line_reason(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let plain = text.chars().all(|c| !c.is_control() && c != '<');
    (!text.is_empty() && text.len() <= 200 && plain).then(|| text.to_owned())
}

/// `text` percent-encoded for a query value or one path segment: everything but
/// RFC 3986's unreserved characters is escaped, `/` included.
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A name like `maths/6e/fractions` as the tail of a path: each segment
/// encoded, the `/` between them kept, as the admin API routes names.
pub fn encode_path(name: &str) -> String {
    let segments: Vec<String> = name.split('/').map(encode_component).collect();
    segments.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_become_status_and_message() {
        let err = parse_answer::<serde_json::Value>(
            StatusCode::NOT_FOUND,
            br#"{"error":"no bundle 12ab"}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "404 no bundle 12ab");
        let err =
            parse_answer::<serde_json::Value>(StatusCode::BAD_GATEWAY, b"<html>").unwrap_err();
        assert_eq!(err.to_string(), "502 Bad Gateway");
        let node = b"the bundle needs more capacity than this node has left\n";
        let err =
            parse_answer::<serde_json::Value>(StatusCode::INSUFFICIENT_STORAGE, node).unwrap_err();
        assert_eq!(
            err.to_string(),
            "507 the bundle needs more capacity than this node has left"
        );
        let long = "x".repeat(201);
        let err = parse_answer::<serde_json::Value>(StatusCode::BAD_REQUEST, long.as_bytes())
            .unwrap_err();
        assert_eq!(err.to_string(), "400 Bad Request");
    }

    #[test]
    fn query_values_and_name_paths_are_encoded() {
        assert_eq!(
            encode_component("maths/6e/fractions"),
            "maths%2F6e%2Ffractions"
        );
        assert_eq!(encode_path("maths/6e/fractions"), "maths/6e/fractions");
        assert_eq!(encode_path("a b/c?d"), "a%20b/c%3Fd");
        assert_eq!(encode_component("a b&c=é"), "a%20b%26c%3D%C3%A9");
        assert_eq!(encode_component("ok-1.2_~"), "ok-1.2_~");
    }

    #[test]
    fn only_https_urls_are_accepted() -> anyhow::Result<()> {
        let pin = Pin::Sha256([0; 32]);
        let c = HttpsClient::new("https://[::1]:8444/admin/", pin.clone())?;
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_str()),
            ("::1", 8444, "/admin")
        );
        assert_eq!(c.url("/api/status"), "https://[::1]:8444/admin/api/status");
        assert!(HttpsClient::new("http://localhost:80", pin.clone()).is_err());
        assert!(HttpsClient::new("localhost", pin).is_err());
        Ok(())
    }
}
