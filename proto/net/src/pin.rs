//! Trusting one certificate. Coordinators and nodes use self-signed certificates,
//! so their clients (the CLI, the coordinator probing nodes) pin the exact one
//! instead of asking a CA: the coordinator's from
//! the PEM file the operator gives, a node's by the SHA-256 the coordinator
//! announces. Handshake signatures are still checked against the pinned key.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// The one certificate a server may present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Exactly this certificate.
    Der(CertificateDer<'static>),
    /// The certificate whose DER has this SHA-256.
    Sha256([u8; 32]),
}

impl Pin {
    /// The first certificate of a PEM file.
    pub fn from_pem_file(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let cert = CertificateDer::from_pem_slice(&pem)
            .with_context(|| format!("{}: no PEM certificate", path.display()))?;
        Ok(Self::Der(cert))
    }

    /// A SHA-256 given as 64 hex digits.
    pub fn from_sha256_hex(hex: &str) -> anyhow::Result<Self> {
        let bad = || anyhow::anyhow!("certificate pin {hex:?} is not 64 hex digits");
        cartable_proto::hex::decode_lower(&hex.to_ascii_lowercase())
            .map(Self::Sha256)
            .ok_or_else(bad)
    }

    /// What a server presenting another certificate is told it failed.
    pub fn mismatch(&self) -> &'static str {
        match self {
            Self::Der(_) => "its certificate is not the one given with --ca-cert",
            Self::Sha256(_) => "its certificate does not match the SHA-256 the coordinator gave",
        }
    }

    fn matches(&self, cert: &[u8]) -> bool {
        match self {
            Self::Der(pinned) => pinned.as_ref() == cert,
            Self::Sha256(pinned) => {
                ring::digest::digest(&ring::digest::SHA256, cert).as_ref() == pinned.as_slice()
            }
        }
    }

    /// A client configuration (HTTP/1.1 over TLS) that trusts this pin only.
    pub fn client_config(self) -> anyhow::Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                pin: self,
                provider,
            }))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

#[derive(Debug)]
struct PinnedCert {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name and dates are not checked: the pin is the whole trust, as
        // with an SSH host key.
        if self.pin.matches(end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            // The client turns this into a message naming where the pin came from.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_matches_its_certificate_only() -> anyhow::Result<()> {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?.cert;
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()])?.cert;
        let dir = tempfile::tempdir()?;
        let pem = dir.path().join("cert.pem");
        std::fs::write(&pem, cert.pem())?;
        let by_der = Pin::from_pem_file(&pem)?;
        let hex = cartable_proto::hex::encode(
            ring::digest::digest(&ring::digest::SHA256, cert.der()).as_ref(),
        );
        let by_hash = Pin::from_sha256_hex(&hex)?;
        for pin in [by_der, by_hash] {
            assert!(pin.matches(cert.der()));
            assert!(!pin.matches(other.der()));
        }
        assert!(Pin::from_sha256_hex("abc").is_err());
        assert!(Pin::from_sha256_hex(&"zz".repeat(32)).is_err());
        Ok(())
    }
}
