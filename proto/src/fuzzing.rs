//! The properties every fuzz target checks, shared by `proto/fuzz` and by the
//! test that replays the fuzz corpus in CI: a decoder never panics on any
//! input, and what it accepts re-encodes to exactly the same bytes (one value,
//! one encoding).

use crate::Manifest;
use crate::wire::{Request, Response};

/// A check run on one input.
pub type Check = fn(&[u8]);

/// The decoder targets, by the name of their corpus folder.
pub const TARGETS: [(&str, Check); 3] = [
    ("decode_manifest", decode_manifest),
    ("decode_request", decode_request),
    ("decode_response", decode_response),
];

/// `Manifest::decode` never panics; accepted manifests are canonical.
pub fn decode_manifest(data: &[u8]) {
    if let Ok(m) = Manifest::decode(data) {
        assert_eq!(m.encode(), data, "accepted manifest is not canonical");
    }
}

/// `Request::decode` never panics; accepted requests are canonical.
pub fn decode_request(data: &[u8]) {
    if let Ok(r) = Request::decode(data) {
        assert_eq!(r.encode(), data, "accepted request is not canonical");
    }
}

/// `Response::decode` never panics; accepted responses are canonical.
pub fn decode_response(data: &[u8]) {
    if let Ok(r) = Response::decode(data) {
        assert_eq!(r.encode(), data, "accepted response is not canonical");
    }
}

/// A version 1 manifest encoded by hand, as an attacker would, skipping every
/// rule `Manifest::new` enforces: each entry is a path, the content its hash is
/// taken of, and the size claimed.
pub fn crafted_manifest(entries: &[(&str, &[u8], u64)]) -> Vec<u8> {
    let mut out = b"CRTM\x01".to_vec();
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (path, content, size) in entries {
        out.extend_from_slice(&(path.len() as u16).to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(crate::BlobHash::of(content).as_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.push(10);
        out.extend_from_slice(b"text/plain");
    }
    out
}
