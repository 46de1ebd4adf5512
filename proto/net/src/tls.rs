//! The HTTPS certificate: PEM files named in the configuration, or a self-signed
//! one made on first run under `DATA/tls/`, so a first run needs no setup.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::secret_file;

/// Names the self-signed certificate is valid for.
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Where the certificate chain and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// A configured pair: both paths or neither (`None`: self-signed).
    pub fn configured(cert: Option<PathBuf>, key: Option<PathBuf>) -> anyhow::Result<Option<Self>> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self { cert, key })),
            (None, None) => Ok(None),
            _ => anyhow::bail!("tls_cert and tls_key go together: give both or neither"),
        }
    }

    /// The self-signed pair's location under a data folder.
    pub fn self_signed_in(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// Makes a self-signed pair at these paths unless the certificate exists.
    pub fn create_self_signed_if_missing(&self) -> anyhow::Result<()> {
        if self.cert.exists() {
            return Ok(());
        }
        if let Some(dir) = self.cert.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|s| s.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names).context("making certificate")?;
        // Key first: a certificate on disk always has its key.
        secret_file::create(&self.key, &made.signing_key.serialize_pem())
            .with_context(|| format!("writing {}", self.key.display()))?;
        std::fs::write(&self.cert, made.cert.pem())
            .with_context(|| format!("writing {}", self.cert.display()))?;
        tracing::info!(cert = %self.cert.display(), "made a self-signed HTTPS certificate");
        Ok(())
    }

    /// Lowercase hex SHA-256 of the leaf certificate (DER), for clients to pin.
    pub fn cert_sha256(&self) -> anyhow::Result<String> {
        let leaf = CertificateDer::pem_file_iter(&self.cert)
            .with_context(|| format!("reading certificate {}", self.cert.display()))?
            .next()
            .with_context(|| format!("no certificate in {}", self.cert.display()))?
            .with_context(|| format!("reading certificate {}", self.cert.display()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &leaf);
        Ok(cartable_proto::hex::encode(digest.as_ref()))
    }

    /// A rustls server configuration offering HTTP/2 and HTTP/1.1 by ALPN.
    pub fn server_config(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading certificate {}", self.cert.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "no certificate in {}",
            self.cert.display()
        );
        let key_pem = secret_file::read(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .with_context(|| format!("reading private key {}", self.key.display()))?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .context("certificate and key do not match")?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
