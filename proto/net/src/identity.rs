//! The node's identity: an ed25519 key made on first run. Its public key is the
//! node id, which peers will check during the QUIC handshake.

use std::path::Path;

use anyhow::Context;
use cartable_proto::NodeId;
use rcgen::{KeyPair, PKCS_ED25519, PublicKeyData};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::secret_file;

/// File name of the key under the data folder.
pub const KEY_FILE: &str = "node-key.pem";

/// The node's key pair.
#[derive(Debug)]
pub struct Identity {
    key: KeyPair,
}

impl Identity {
    /// Loads the key from `data_dir`, making it on first run.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let key = KeyPair::generate_for(&PKCS_ED25519).context("generating node key")?;
            secret_file::create(&path, &key.serialize_pem())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "made a new node key");
        }
        Self::load(data_dir)
    }

    /// Loads the key from `data_dir`; fails if there is none.
    pub fn load(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let pem =
            secret_file::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("parsing {}", path.display()))
    }

    /// The key in PEM text.
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(pem)?;
        anyhow::ensure!(key.algorithm() == &PKCS_ED25519, "not an ed25519 key");
        Ok(Self { key })
    }

    /// A self-signed certificate made from the node key, and the key, for QUIC.
    pub fn certificate(&self) -> anyhow::Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let cert = rcgen::CertificateParams::new(vec!["cartable-node".to_owned()])?
            .self_signed(&self.key)
            .context("making the node certificate")?;
        let key = PrivatePkcs8KeyDer::from(self.key.serialize_der());
        Ok((cert.der().clone(), key.into()))
    }

    /// An ed25519 signature of `message` by the node key.
    pub fn sign(&self, message: &[u8]) -> anyhow::Result<[u8; 64]> {
        let signature = rcgen::SigningKey::sign(&self.key, message).context("signing")?;
        signature
            .try_into()
            .map_err(|_| anyhow::anyhow!("an ed25519 signature is 64 bytes"))
    }

    /// The node id: the raw public key.
    pub fn id(&self) -> NodeId {
        let raw: [u8; 32] = self
            .key
            .der_bytes()
            .try_into()
            .expect("an ed25519 public key is 32 bytes");
        NodeId::from_bytes(raw)
    }
}

/// Whether `signature` is `signer`'s ed25519 signature of `message`.
pub fn signed_by(signer: &NodeId, message: &[u8], signature: &[u8; 64]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, signer.as_bytes())
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_carries_the_node_id() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let identity = Identity::load_or_create(dir.path())?;
        let (cert, _) = identity.certificate()?;
        assert_eq!(cartable_proto::cert::node_id_of_cert(&cert)?, identity.id());
        let again = Identity::load_or_create(dir.path())?;
        assert_eq!(again.id(), identity.id(), "the key is kept");
        Ok(())
    }

    #[test]
    fn signatures_verify_only_for_their_key_and_message() -> anyhow::Result<()> {
        let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let (a, b) = (
            Identity::load_or_create(a.path())?,
            Identity::load_or_create(b.path())?,
        );
        let signature = a.sign(b"grant")?;
        assert!(signed_by(&a.id(), b"grant", &signature));
        assert!(!signed_by(&a.id(), b"grant!", &signature));
        assert!(!signed_by(&b.id(), b"grant", &signature));
        Ok(())
    }
}
