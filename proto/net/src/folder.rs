//! A lesson folder read into a bundle manifest: the one way a node's `add` and
//! the CLI's `publish` do it, so the same folder gives the same bundle id from
//! either. The whole folder is refused, before a byte is hashed or imported,
//! when one entry breaks the path rules or the manifest's size caps; each file
//! is then hashed by the caller (the node imports it while hashing it, the CLI
//! only hashes it).

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cartable_proto::manifest::check_size_caps;
use cartable_proto::path::check_segment;
use cartable_proto::{
    BlobHash, BundlePath, Manifest, ManifestEntry, ManifestError, PathError, content_type,
};

/// Bytes hashed per read.
const READ_BUFFER: usize = 1 << 20;

/// A lesson folder listed and checked against the manifest's size caps.
#[derive(Debug)]
pub struct Folder {
    files: Vec<FoundFile>,
    total: u64,
}

/// Why a folder cannot become a bundle.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// An entry breaks a rule.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// The files cannot form a manifest (size caps, too many files).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

impl Folder {
    /// Lists every file under `root` and checks the manifest's size caps on the
    /// sizes listed (a file that grows meanwhile fails when it is read).
    pub fn read(root: &Path) -> Result<Self, FolderError> {
        let files = walk(root)?;
        let total = check_size_caps(files.iter().map(|f| (&f.path, f.size)))?;
        Ok(Self { files, total })
    }

    /// The files, in bundle path order within each folder.
    pub fn files(&self) -> &[FoundFile] {
        &self.files
    }

    /// The bytes of every file together.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The folder's manifest, `blob` giving each file's hash (by hashing it, or
    /// importing it as it hashes it).
    pub fn manifest<E: From<FolderError>>(
        self,
        mut blob: impl FnMut(&FoundFile) -> Result<BlobHash, E>,
    ) -> Result<Manifest, E> {
        let mut entries = Vec::with_capacity(self.files.len());
        for f in self.files {
            let hash = blob(&f)?;
            entries.push(ManifestEntry {
                content_type: content_type::for_path(f.path.as_str()).to_owned(),
                path: f.path,
                hash,
                size: f.size,
            });
        }
        Manifest::new(entries).map_err(|e| FolderError::Manifest(e).into())
    }
}

/// Why a folder cannot become a bundle. Each variant names the offending file.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The folder to add does not exist or is not a folder.
    #[error("{0}: not a folder")]
    NotAFolder(PathBuf),
    /// A symbolic link: refused, since it may point outside the lesson.
    #[error("{0}: symbolic links are not allowed in a lesson")]
    Symlink(PathBuf),
    /// A device, socket or pipe.
    #[error("{0}: not a regular file or folder")]
    SpecialFile(PathBuf),
    /// A name that is not UTF-8.
    #[error("{0}: file name is not UTF-8")]
    NotUtf8(PathBuf),
    /// A name or path that breaks the path rules.
    #[error("{path}: {error}")]
    BadName {
        /// The file.
        path: PathBuf,
        /// The rule it breaks.
        error: PathError,
    },
    /// The folder holds no file.
    #[error("{0}: the folder holds no file")]
    Empty(PathBuf),
    /// Reading the folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// One file to import.
#[derive(Debug, Clone)]
pub struct FoundFile {
    /// Its path in the bundle.
    pub path: BundlePath,
    /// Where it is on disk.
    pub source: PathBuf,
    /// Its length when listed.
    pub size: u64,
}

/// The BLAKE3 hash of the file, which must still be `size` bytes long.
pub fn hash_file(path: &Path, size: u64, hashed: &mut dyn FnMut(u64)) -> anyhow::Result<BlobHash> {
    let read = || format!("reading {}", path.display());
    let mut file = File::open(path).with_context(read)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0; READ_BUFFER];
    let mut len = 0;
    loop {
        let n = file.read(&mut buf).with_context(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
        hashed(n as u64);
    }
    anyhow::ensure!(len == size, "{} changed while being read", path.display());
    Ok(BlobHash::from_bytes(*hasher.finalize().as_bytes()))
}

/// Lists every file under `root`, or the first reason the folder is refused.
fn walk(root: &Path) -> Result<Vec<FoundFile>, WalkError> {
    let meta = fs::symlink_metadata(root).map_err(|source| WalkError::Io {
        path: root.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(WalkError::NotAFolder(root.to_owned()));
    }
    let mut files = Vec::new();
    walk_dir(root, "", &mut files)?;
    if files.is_empty() {
        return Err(WalkError::Empty(root.to_owned()));
    }
    Ok(files)
}

fn walk_dir(dir: &Path, prefix: &str, out: &mut Vec<FoundFile>) -> Result<(), WalkError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| WalkError::Io { path, source }
    };
    let mut entries = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(dir))?;
    // Sorted so that the first error reported does not depend on the filesystem.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let source = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| WalkError::NotUtf8(source.clone()))?;
        let bad_name = |error| WalkError::BadName {
            path: source.clone(),
            error,
        };
        check_segment(&name).map_err(bad_name)?;
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = entry.metadata().map_err(io_err(&source))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(WalkError::Symlink(source));
        } else if kind.is_dir() {
            walk_dir(&source, &rel, out)?;
        } else if kind.is_file() {
            let path = BundlePath::new(rel).map_err(bad_name)?;
            out.push(FoundFile {
                path,
                size: meta.len(),
                source,
            });
        } else {
            return Err(WalkError::SpecialFile(source));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_nested_files_with_bundle_paths() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::create_dir_all(dir.path().join("media/deep"))?;
        fs::write(dir.path().join("index.html"), "hi")?;
        fs::write(dir.path().join("media/deep/a.png"), "png")?;
        let mut paths: Vec<_> = walk(dir.path())?
            .into_iter()
            .map(|f| f.path.to_string())
            .collect();
        paths.sort();
        assert_eq!(paths, ["index.html", "media/deep/a.png"]);
        Ok(())
    }

    #[test]
    fn refuses_symlinks_special_files_and_bad_names_by_name() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("ok.txt"), "x")?;
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link"))?;
        let err = walk(dir.path()).unwrap_err();
        assert!(
            matches!(&err, WalkError::Symlink(p) if p.ends_with("link")),
            "{err}"
        );

        let dir = tempfile::tempdir()?;
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap())?;
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe_mkfifo(&c), 0);
        assert!(matches!(walk(dir.path()), Err(WalkError::SpecialFile(p)) if p == fifo));

        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("a\\b"), "x")?;
        let err = walk(dir.path()).unwrap_err();
        assert!(err.to_string().contains("a\\b"), "{err}");
        Ok(())
    }

    #[allow(unsafe_code)]
    fn unsafe_mkfifo(path: &std::ffi::CStr) -> i32 {
        // SAFETY: path is a valid C string; mkfifo only reads it.
        unsafe { libc::mkfifo(path.as_ptr(), 0o600) }
    }
}
