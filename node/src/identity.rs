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
        let pem = secret_file::read(&path)?;
        let key = KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", path.display()))?;
        anyhow::ensure!(
            key.algorithm() == &PKCS_ED25519,
            "{} is not an ed25519 key",
            path.display()
        );
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
}
