//! A real HTTPS client for tests: trusts exactly one certificate (the node's
//! self-signed one), speaks HTTP/2 or HTTP/1.1 as ALPN decides, and can send raw
//! request bytes that no client library would normalize.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use cartable_net::pin::Pin;

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Vec<u8>,
    /// HTTP version spoken.
    pub version: Version,
}

impl Reply {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// An HTTPS client bound to one server.
#[derive(Debug, Clone)]
pub struct HttpsClient {
    config: Arc<ClientConfig>,
    addr: String,
    /// The address connections come from; `None`: the system's choice.
    source: Option<IpAddr>,
}

impl HttpsClient {
    /// A client of `addr` (host:port) trusting only the PEM certificate given,
    /// offering the ALPN protocols given in order.
    pub fn new(addr: &str, cert_pem: &[u8], alpn: &[&[u8]]) -> anyhow::Result<Self> {
        let cert = CertificateDer::from_pem_slice(cert_pem).context("parsing certificate")?;
        let mut config: ClientConfig = (*Pin::Der(cert).client_config()?).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            config: Arc::new(config),
            addr: addr.to_owned(),
            source: None,
        })
    }

    /// A client of a running node, offering h2 then HTTP/1.1 like a browser.
    pub fn for_node(node: &crate::Node) -> anyhow::Result<Self> {
        Self::new(node.addr(), &node.cert_pem()?, &[b"h2", b"http/1.1"])
    }

    /// The same client offering only HTTP/1.1.
    pub fn http1_only(&self) -> Self {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            config: Arc::new(config),
            ..self.clone()
        }
    }

    /// The same client connecting from `source` (any 127.x address on loopback),
    /// so one test plays several client networks.
    pub fn from(&self, source: IpAddr) -> Self {
        Self {
            source: Some(source),
            ..self.clone()
        }
    }

    /// A TCP connection to the server, from the client's source address.
    pub async fn connect_tcp(&self) -> anyhow::Result<TcpStream> {
        let server: SocketAddr = self.addr.parse()?;
        let socket = TcpSocket::new_v4()?;
        if let Some(source) = self.source {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        Ok(socket.connect(server).await?)
    }

    /// A TLS connection to the server, handshake done, nothing sent.
    pub async fn connect(&self) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = self.connect_tcp().await?;
        let name = ServerName::try_from("localhost")?;
        Ok(TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await?)
    }

    /// `GET path` with extra headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
        self.request("GET", path, headers).await
    }

    /// One request without a body on a fresh connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        self.send(method, path, headers, Bytes::new()).await
    }

    /// One request with `body` on a fresh connection.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let tls = self.connect().await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let mut builder = Request::builder().method(method);
        builder = if h2 {
            builder.uri(format!("https://{}{path}", self.addr))
        } else {
            builder.uri(path).header("host", &self.addr)
        };
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder.body(Full::new(body))?;
        // Each request owns its connection, closed once the body is read, so a
        // stopping node never waits on an idle test connection.
        let (response, conn) = if h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            let conn = tokio::spawn(conn);
            (send.send_request(request).await?, conn)
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            let conn = tokio::spawn(conn);
            (send.send_request(request).await?, conn)
        };
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .context("reading body")?
            .to_bytes()
            .to_vec();
        // The sender is gone and the body read: the connection closes.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            version: parts.version,
        })
    }

    /// Sends `bytes` as they are over TLS (HTTP/1.1) and returns all the server
    /// sent back until it closed the connection or `limit` passed.
    pub async fn raw(&self, bytes: &[u8], limit: std::time::Duration) -> anyhow::Result<String> {
        let mut tls = self.http1_only().connect().await?;
        tls.write_all(bytes).await?;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(limit, tls.read_to_end(&mut out)).await;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
