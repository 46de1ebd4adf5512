//! Mutual authentication between nodes: each side presents a self-signed
//! certificate made from its ed25519 node key, and each checks the other's key
//! during the handshake — the server against the allowed members, the client
//! against the node it meant to reach. A stranger never gets a connection.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use cartable_proto::NodeId;
use cartable_proto::cert::node_id_of_cert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The node ids allowed to connect, shared with whatever updates them.
#[derive(Debug, Clone, Default)]
pub struct Members {
    ids: Arc<RwLock<HashSet<NodeId>>>,
    /// Any key may connect (the coordinator, which nodes dial to join): the
    /// application decides what each key may do.
    anyone: bool,
}

impl Members {
    /// A list holding `ids`.
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> Self {
        Self {
            ids: Arc::new(RwLock::new(ids.into_iter().collect())),
            anyone: false,
        }
    }

    /// Every key may connect; the handshake still proves the key.
    pub fn anyone() -> Self {
        Self {
            anyone: true,
            ..Self::default()
        }
    }

    /// Whether `id` may connect.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.anyone
            || self
                .ids
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(id)
    }

    /// Replaces the list (a new member list from the coordinator). Connections
    /// already open are not touched here: the endpoint's `close_unlisted` closes
    /// those of keys no longer listed.
    pub fn replace(&self, ids: impl IntoIterator<Item = NodeId>) {
        *self.ids.write().unwrap_or_else(|e| e.into_inner()) = ids.into_iter().collect();
    }
}

/// The node id a connection's peer proved in the handshake.
pub fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    node_id_of_cert(certs.first()?).ok()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The id in a presented certificate, as a TLS error when it has none.
fn peer_id(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    node_id_of_cert(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))
}

/// TLS for the server side: client certificates required, checked against `members`.
pub fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    members: Members,
    alpn: &[u8],
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = provider();
    let verifier = Arc::new(MemberVerifier {
        members,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// TLS for dialing `expected`: its certificate must carry that node id.
pub fn client_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    expected: NodeId,
    alpn: &[u8],
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(ExpectedPeer {
        expected,
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], key)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// The handshake-signature half of both verifiers: TLS 1.3 only, ed25519 only,
/// checked against the key in the presented certificate.
macro_rules! ed25519_tls13_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

/// Accepts client certificates whose key is a member.
#[derive(Debug)]
struct MemberVerifier {
    members: Members,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for MemberVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = peer_id(end_entity)?;
        if self.members.contains(&id) {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(peer = %id, "refused a node that is not a member");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    ed25519_tls13_signatures!();
}

/// Accepts exactly one server key.
#[derive(Debug)]
struct ExpectedPeer {
    expected: NodeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = peer_id(end_entity)?;
        if id == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(peer = %id, expected = %self.expected, "peer presented another key");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    ed25519_tls13_signatures!();
}
