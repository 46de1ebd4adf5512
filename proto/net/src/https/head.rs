//! Request heads and cookies. Cookies ignore ports: every application on the
//! node's host name (a school portal, a webmail on another port) adds its own
//! to each request a browser sends here. Nothing served depends on a cookie,
//! so they are accepted up to `max_cookie_bytes` and dropped before the
//! handler; the rest of the head stays capped by `max_header_bytes`. A
//! connection buffers at most the sum of the two for a head.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Uri, header};
use http_body_util::Full;

use super::limits::ConnectionLimits;

/// What HTTP/2 adds to each header field when it counts a header list: a
/// browser sends each cookie as a field of its own (RFC 9113, 8.2.3).
const H2_FIELD_OVERHEAD: usize = 32;
/// Cookies a browser keeps for one host name at most (Chromium: 180).
const COOKIES_PER_HOST: usize = 180;

/// The largest HTTP/1.1 head a connection reads, in bytes.
pub fn h1_buffer(limits: &ConnectionLimits) -> usize {
    limits.max_header_bytes + limits.max_cookie_bytes
}

/// The largest HTTP/2 header list a connection accepts, counted the HTTP/2 way.
pub fn h2_header_list(limits: &ConnectionLimits) -> u32 {
    let cookie_fields = COOKIES_PER_HOST * (H2_FIELD_OVERHEAD + "cookie".len());
    u32::try_from(h1_buffer(limits) + cookie_fields).unwrap_or(u32::MAX)
}

/// Drops the request's cookies, and says whether what remains of its head
/// fits in `max_header_bytes`.
pub fn forget_cookies(uri: &Uri, headers: &mut HeaderMap, max_header_bytes: usize) -> bool {
    headers.remove(header::COOKIE);
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum();
    let line = uri.path_and_query().map_or(0, |p| p.as_str().len());
    line + fields <= max_header_bytes
}

/// The answer to a head too large once its cookies are set aside.
pub fn too_large() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"request head too large\n")));
    *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_dropped_and_do_not_count() {
        let uri: Uri = "/b/x/index.html".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("localhost"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_str(&"a".repeat(20_000)).unwrap(),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("b=1"));
        assert!(forget_cookies(&uri, &mut headers, 8192));
        assert!(headers.get(header::COOKIE).is_none());
        assert_eq!(headers.len(), 1);
        headers.insert("x-big", HeaderValue::from_str(&"x".repeat(8192)).unwrap());
        assert!(!forget_cookies(&uri, &mut headers, 8192));
    }

    #[test]
    fn a_connection_buffers_the_head_and_the_cookies() {
        let limits = ConnectionLimits::default();
        assert_eq!(h1_buffer(&limits), 16 * 1024 + 32 * 1024);
        // 20 KB of cookies in 180 fields still fit HTTP/2's count.
        let twenty_kb_in_crumbs = 16 * 1024 + 20_000 + 180 * 38;
        assert!(h2_header_list(&limits) as usize >= twenty_kb_in_crumbs);
    }
}
