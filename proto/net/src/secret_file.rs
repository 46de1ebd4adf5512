//! Files holding secrets (private keys): created readable by their owner only,
//! and refused when other users can read them.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Reads a secret file, refusing it if group or others may read it.
pub fn read(path: &Path) -> io::Result<String> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is readable by other users (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            ),
        ));
    }
    fs::read_to_string(path)
}

/// Creates a secret file with mode 0600; fails if it exists.
pub fn create(path: &Path, contents: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_readable_secrets_are_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key.pem");
        create(&path, "secret")?;
        assert_eq!(read(&path)?, "secret");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        let err = read(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        Ok(())
    }
}
