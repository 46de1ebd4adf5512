//! The request headers that choose what part of a file to send: `Range`,
//! `If-Range` and `If-None-Match`. Pure functions, tested on their own.

use std::ops::Range;

/// What a `Range` header asks for, once checked against the file's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// The whole file (no header, another unit, or several ranges, which are
    /// answered whole rather than as multipart).
    Full,
    /// One range of bytes, end exclusive, within the file.
    Partial(Range<u64>),
    /// A range that does not overlap the file: 416.
    Unsatisfiable,
}

/// A `Range` header that does not parse: 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Range header")]
pub struct MalformedRange;

/// Interprets a `Range` header value for a file of `len` bytes.
pub fn parse_range(value: &str, len: u64) -> Result<RangeRequest, MalformedRange> {
    let (unit, spec) = value.split_once('=').ok_or(MalformedRange)?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ok(RangeRequest::Full);
    }
    if spec.contains(',') {
        return Ok(RangeRequest::Full);
    }
    let (first, last) = spec.trim().split_once('-').ok_or(MalformedRange)?;
    let range = match (first, last) {
        ("", "") => return Err(MalformedRange),
        ("", suffix) => {
            let n = number(suffix)?;
            if n == 0 || len == 0 {
                return Ok(RangeRequest::Unsatisfiable);
            }
            len - n.min(len)..len
        }
        (first, last) => {
            let start = number(first)?;
            let end = if last.is_empty() {
                u64::MAX
            } else {
                number(last)?
            };
            if end < start {
                return Err(MalformedRange);
            }
            if start >= len {
                return Ok(RangeRequest::Unsatisfiable);
            }
            start..end.min(len - 1) + 1
        }
    };
    Ok(RangeRequest::Partial(range))
}

/// A decimal byte position; values past u64 mean "beyond any file".
fn number(text: &str) -> Result<u64, MalformedRange> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MalformedRange);
    }
    Ok(text.parse().unwrap_or(u64::MAX))
}

/// Whether an `If-None-Match` value matches `etag` (weak comparison, `*` included).
pub fn none_match(value: &str, etag: &str) -> bool {
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// Whether an `If-Range` value lets a `Range` apply: only our strong etag does
/// (we send no `Last-Modified`, so a date never matches).
pub fn if_range_holds(value: &str, etag: &str) -> bool {
    value.trim() == etag
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn every_range_form() {
        assert_eq!(parse_range("bytes=0-0", 10), Ok(Partial(0..1)));
        assert_eq!(parse_range("bytes=9-9", 10), Ok(Partial(9..10)));
        assert_eq!(parse_range("bytes=5-", 10), Ok(Partial(5..10)));
        assert_eq!(parse_range("bytes=-3", 10), Ok(Partial(7..10)));
        assert_eq!(parse_range("bytes=-30", 10), Ok(Partial(0..10)));
        assert_eq!(
            parse_range("bytes=2-99999999999999999999999", 10),
            Ok(Partial(2..10))
        );
        assert_eq!(parse_range("Bytes= 1-2", 10), Ok(Partial(1..3)));
    }

    #[test]
    fn edges_outside_the_file_are_unsatisfiable() {
        assert_eq!(parse_range("bytes=10-", 10), Ok(Unsatisfiable));
        assert_eq!(parse_range("bytes=10-20", 10), Ok(Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 10), Ok(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-", 0), Ok(Unsatisfiable));
        assert_eq!(parse_range("bytes=-5", 0), Ok(Unsatisfiable));
    }

    #[test]
    fn malformed_ranges_are_errors_and_others_are_ignored() {
        for bad in [
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-2",
            "bytes=+1-2",
            "bytes=1",
            "0-1",
        ] {
            assert_eq!(parse_range(bad, 10), Err(MalformedRange), "{bad}");
        }
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Ok(Full));
        assert_eq!(parse_range("items=0-1", 10), Ok(Full));
    }

    #[test]
    fn conditional_headers() {
        let tag = "\"abc\"";
        assert!(none_match("\"abc\"", tag));
        assert!(none_match("\"x\", W/\"abc\"", tag));
        assert!(none_match("*", tag));
        assert!(!none_match("\"abd\"", tag));
        assert!(if_range_holds("\"abc\"", tag));
        assert!(!if_range_holds("W/\"abc\"", tag));
        assert!(!if_range_holds("Sat, 28 Nov 2026 10:00:00 GMT", tag));
    }
}
