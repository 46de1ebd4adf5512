//! Reading a lesson folder into the list of files to import, refusing the whole
//! folder, before anything is imported, when one entry breaks the rules.

use std::fs;
use std::path::{Path, PathBuf};

use cartable_proto::path::check_segment;
use cartable_proto::{BundlePath, PathError};

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

/// Lists every file under `root`, or the first reason the folder is refused.
pub fn walk(root: &Path) -> Result<Vec<FoundFile>, WalkError> {
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
