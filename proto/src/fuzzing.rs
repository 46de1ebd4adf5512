//! The properties every fuzz target checks, shared by `proto/fuzz` and by the
//! test that replays the fuzz corpus in CI: a decoder never panics on any
//! input, and what it accepts re-encodes to exactly the same bytes (one value,
//! one encoding). Text and JSON forms, which admit several spellings of one
//! value, check the weaker property that matters: what was accepted writes
//! out in a form that reads back as the same value, and that form is stable.

use std::fmt::Debug;
use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Manifest;
use crate::api::{CreateToken, PlanChange, SetCapacity, SetName, SetReplicas};
use crate::control::{self, ControlRequest, ControlResponse};
use crate::join::{JoinToken, UploadGrant};
use crate::wire::{Request, Response};

/// A check run on one input.
pub type Check = fn(&[u8]);

/// The decoder targets, by the name of their corpus folder.
pub const TARGETS: [(&str, Check); 8] = [
    ("decode_manifest", decode_manifest),
    ("decode_request", decode_request),
    ("decode_response", decode_response),
    ("control_request", control_request),
    ("control_response", control_response),
    ("join_token", join_token),
    ("upload_grant", upload_grant),
    ("admin_body", admin_body),
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

/// What a coordinator reads from a node, in any protocol version it speaks:
/// never panics, and what it accepts it writes back, in the same version, as
/// bytes that read as the same message and re-encode to themselves.
pub fn control_request(data: &[u8]) {
    control_round_trip::<ControlRequest>(data);
}

/// What a node reads from its coordinator: as [`control_request`].
pub fn control_response(data: &[u8]) {
    control_round_trip::<ControlResponse>(data);
}

fn control_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(data: &[u8]) {
    let Ok((version, message)) = control::decode_versioned::<T>(data) else {
        return;
    };
    let written = control::encode_versioned(version, &message);
    let again = control::decode_versioned::<T>(&written);
    assert_eq!(again.as_ref().ok(), Some(&(version, message)), "{again:?}");
    let (_, message) = again.unwrap();
    assert_eq!(control::encode_versioned(version, &message), written);
}

/// A join token as pasted by an operator: never panics; an accepted token
/// prints as text that parses back to it.
pub fn join_token(data: &[u8]) {
    text_round_trip::<JoinToken>(data);
}

/// An upload grant as sent by a publisher: never panics; an accepted grant
/// has exactly one spelling, so it prints as the text it was read from.
pub fn upload_grant(data: &[u8]) {
    if let Some(grant) = text_round_trip::<UploadGrant>(data) {
        let text = std::str::from_utf8(data).expect("accepted, so UTF-8");
        assert_eq!(grant.to_string(), text.trim(), "a second spelling");
    }
}

fn text_round_trip<T: FromStr + ToString + PartialEq + Debug>(data: &[u8]) -> Option<T>
where
    T::Err: Debug,
{
    let value: T = std::str::from_utf8(data).ok()?.parse().ok()?;
    let text = value.to_string();
    let again: T = text.parse().expect("a printed credential parses");
    assert_eq!(again, value);
    assert_eq!(again.to_string(), text);
    Some(value)
}

/// The JSON bodies of the admin API's routes: the first byte picks the
/// route, the rest is the body. Never panics; an accepted body writes out as
/// JSON that reads back as the same value.
pub fn admin_body(data: &[u8]) {
    let Some((route, body)) = data.split_first() else {
        return;
    };
    match route % 5 {
        0 => json_round_trip::<SetCapacity>(body),
        1 => json_round_trip::<SetReplicas>(body),
        2 => json_round_trip::<SetName>(body),
        3 => json_round_trip::<CreateToken>(body),
        _ => json_round_trip::<PlanChange>(body),
    }
}

fn json_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(body) else {
        return;
    };
    let written = serde_json::to_vec(&value).expect("API types serialize");
    let again: T = serde_json::from_slice(&written).expect("written JSON reads back");
    assert_eq!(again, value);
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
