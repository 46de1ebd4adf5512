//! The path rules every file of a bundle obeys, on import, in manifests and in URLs.
//!
//! A path is UTF-8, relative and `/`-separated; it has no empty, `.` or `..`
//! segment, no backslash, no NUL or other control character, and is bounded in
//! length. These rules make a path safe to join under a folder and to put in a
//! URL, whatever the operating system, so that no spelling reaches outside a bundle.

use std::fmt;

/// Longest path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest segment, in bytes (the common filesystem limit).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Why a path breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty.
    #[error("empty path")]
    Empty,
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("path is {len} bytes, more than {max}")]
    TooLong {
        /// Bytes in the path.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Starts with `/`.
    #[error("absolute path")]
    Absolute,
    /// Has an empty segment (`a//b`, or a trailing `/`).
    #[error("empty segment")]
    EmptySegment,
    /// Has a `.` or `..` segment.
    #[error("'.' or '..' segment")]
    DotSegment,
    /// A segment longer than [`MAX_SEGMENT_BYTES`].
    #[error("segment of {len} bytes, more than {max}")]
    SegmentTooLong {
        /// Bytes in the segment.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A backslash, which some systems read as a separator.
    #[error("backslash in path")]
    Backslash,
    /// NUL or another control character.
    #[error("control character {0:?} in path")]
    Control(char),
}

/// A path that obeys the rules. The only way to make one is [`BundlePath::new`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BundlePath(String);

impl BundlePath {
    /// Checks `path` against the rules.
    pub fn new(path: impl Into<String>) -> Result<Self, PathError> {
        let path = path.into();
        check(&path)?;
        Ok(Self(path))
    }

    /// The path text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// Checks one segment (a file or folder name) against the rules.
pub fn check_segment(segment: &str) -> Result<(), PathError> {
    if segment.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(PathError::DotSegment);
    }
    if segment.len() > MAX_SEGMENT_BYTES {
        return Err(PathError::SegmentTooLong {
            len: segment.len(),
            max: MAX_SEGMENT_BYTES,
        });
    }
    if let Some(c) = segment.chars().find(|c| c.is_control()) {
        return Err(PathError::Control(c));
    }
    if segment.contains('\\') {
        return Err(PathError::Backslash);
    }
    Ok(())
}

fn check(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong {
            len: path.len(),
            max: MAX_PATH_BYTES,
        });
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    path.split('/').try_for_each(check_segment)
}

impl fmt::Display for BundlePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BundlePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for BundlePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "index.html",
            "media/video.mp4",
            "a/b/c.d",
            "été/leçon 1.pdf",
            "..a",
            "a..",
        ] {
            assert!(BundlePath::new(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn every_bad_spelling_is_refused() {
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("a//b", PathError::EmptySegment),
            ("a/", PathError::EmptySegment),
            ("..", PathError::DotSegment),
            ("a/../../b", PathError::DotSegment),
            ("./a", PathError::DotSegment),
            ("a\\..\\b", PathError::Backslash),
            ("a\0b", PathError::Control('\0')),
            ("a\nb", PathError::Control('\n')),
        ];
        for (path, want) in cases {
            assert_eq!(BundlePath::new(path), Err(want), "{path:?}");
        }
        let long = "a/".repeat(600) + "a";
        assert!(matches!(
            BundlePath::new(long),
            Err(PathError::TooLong { .. })
        ));
        let seg = "x".repeat(256);
        assert!(matches!(
            BundlePath::new(seg),
            Err(PathError::SegmentTooLong { len: 256, .. })
        ));
    }

    proptest! {
        #[test]
        fn accepted_paths_have_only_safe_segments(path in "[a./\\\\\0]{0,12}") {
            if let Ok(p) = BundlePath::new(path) {
                for seg in p.segments() {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != "..");
                    prop_assert!(!seg.contains('\\') && !seg.contains('\0'));
                }
                prop_assert!(!p.as_str().starts_with('/'));
            }
        }
    }
}
