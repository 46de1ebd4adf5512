//! The node ↔ node wire protocol, version 1: how nodes copy bundles from each
//! other over QUIC.
//!
//! # Goals
//!
//! - A node can fetch a bundle's manifest, any chunk-group ranges of any blob
//!   with the data to verify them against the blob's hash as they arrive, and
//!   ask which of many blobs a peer holds, in one round trip each.
//! - Every message is bounded: a peer can never make the other side allocate or
//!   read more than the caps below before the frame is refused.
//! - Failures are typed ([`ErrorKind`]), so a fetcher knows whether to retry
//!   later (busy), elsewhere (not found) or never (refused).
//!
//! # Non-goals
//!
//! - Authentication and encryption: QUIC and TLS 1.3 with both sides' node keys
//!   (ALPN [`ALPN`]) do that; who may connect is decided at the handshake.
//! - Pushing data: a node only ever pulls.
//! - Partial chunk groups: ranges are whole 16 KiB groups, the unit of
//!   verification and of resuming.
//!
//! # Streams and frames
//!
//! One request per bidirectional stream. The requester writes one request frame
//! and finishes its side; the responder writes one response frame, then for a
//! blob the verified-streaming body, then finishes. A frame is a `u32`
//! little-endian length followed by that many bytes. Caps: a request frame is at
//! most [`MAX_REQUEST_BYTES`]; a response frame at most [`MAX_RESPONSE_BYTES`]
//! (a manifest, the largest response, is at most [`MAX_MANIFEST_BYTES`]).
//!
//! # Requests (all integers little-endian)
//!
//! ```text
//! tag u8 = 1  Manifest   bundle id [32]
//! tag u8 = 2  Blob       hash [32], count u16 (1..=MAX_RANGES),
//!                        count × (first group u64, end group u64)  [first, end)
//!                        non-empty, increasing, not touching
//! tag u8 = 3  Has        count u16 (1..=MAX_HAS), count × hash [32]
//! ```
//!
//! # Responses
//!
//! ```text
//! tag u8 = 1  Manifest   the encoded manifest (rest of the frame)
//! tag u8 = 2  Blob       size u64; after the frame: the bao-tree pre-order
//!                        encoding (16 KiB groups) of the requested ranges,
//!                        clamped to the blob, verifiable with the hash and size
//! tag u8 = 3  Has        count u16, then ceil(count/8) bytes of bits,
//!                        bit i (LSB first) set when hash i is held
//! tag u8 = 4  Error      kind u8, retry_after_ms u32, len u16, UTF-8 message
//! ```
//!
//! The blob's size comes from the responder and is not trusted: a wrong size
//! changes the BLAKE3 tree, so the first hash check fails. A blob of at most
//! one group has no parent hashes: its encoding is its bytes, and its hash
//! their BLAKE3 hash (a fetcher may read it whole and check it at once).

use std::ops::Range;

use crate::decode::{DecodeError, Reader, check_limit};
use crate::id::{BlobHash, BundleId};

/// The ALPN protocol name of this version.
pub const ALPN: &[u8] = b"cartable/1";
/// Bytes in one chunk group (16 BLAKE3 chunks): the unit of [`GroupRanges`],
/// of verification and of resuming.
pub const GROUP_BYTES: u64 = 16 * 1024;
/// Largest request frame.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Largest manifest carried in a response.
pub const MAX_MANIFEST_BYTES: usize = 32 << 20;
/// Largest response frame.
pub const MAX_RESPONSE_BYTES: usize = MAX_MANIFEST_BYTES + 1;
/// Most ranges in one blob request.
pub const MAX_RANGES: usize = 1024;
/// Most hashes in one presence query.
pub const MAX_HAS: usize = 2048;
/// Longest error message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

const TAG_MANIFEST: u8 = 1;
const TAG_BLOB: u8 = 2;
const TAG_HAS: u8 = 3;
const TAG_ERROR: u8 = 4;

/// Chunk-group ranges of a blob: non-empty, increasing, not touching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRanges(Vec<Range<u64>>);

impl GroupRanges {
    /// Merges and sorts `ranges`; `None` when nothing is left or too many remain.
    pub fn new(mut ranges: Vec<Range<u64>>) -> Option<Self> {
        ranges.retain(|r| r.start < r.end);
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        (!merged.is_empty() && merged.len() <= MAX_RANGES).then_some(Self(merged))
    }

    /// The ranges.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.0
    }
}

/// A request, the first and only frame a requester sends on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// The encoded manifest of a bundle.
    Manifest(BundleId),
    /// Chunk-group ranges of a blob, with their verification data.
    Blob {
        /// The blob.
        hash: BlobHash,
        /// The groups wanted.
        groups: GroupRanges,
    },
    /// Which of these blobs the responder holds whole.
    Has(Vec<BlobHash>),
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The responder does not hold it: ask another peer.
    NotFound,
    /// The request or its answer is over a limit.
    TooLarge,
    /// The responder is overloaded: retry after the given delay.
    Busy,
    /// The requester may not ask this.
    Refused,
    /// The request did not decode.
    BadRequest,
}

impl ErrorKind {
    fn code(self) -> u8 {
        match self {
            Self::NotFound => 1,
            Self::TooLarge => 2,
            Self::Busy => 3,
            Self::Refused => 4,
            Self::BadRequest => 5,
        }
    }

    fn from_code(code: u8) -> Result<Self, DecodeError> {
        Ok(match code {
            1 => Self::NotFound,
            2 => Self::TooLarge,
            3 => Self::Busy,
            4 => Self::Refused,
            5 => Self::BadRequest,
            other => return Err(DecodeError::Invalid(format!("unknown error kind {other}"))),
        })
    }
}

/// A typed failure sent instead of an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct WireError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// For [`ErrorKind::Busy`]: when to retry, in milliseconds.
    pub retry_after_ms: u32,
    /// A short reason for the logs.
    pub message: String,
}

impl WireError {
    /// An error with a message cut to [`MAX_MESSAGE_BYTES`].
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self {
            kind,
            retry_after_ms: 0,
            message,
        }
    }
}

/// A response frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// An encoded manifest (decode it with [`crate::Manifest::decode`] and check
    /// its hash against the id asked for).
    Manifest(Vec<u8>),
    /// The blob's size; its encoded ranges follow the frame.
    Blob {
        /// The size the responder claims.
        size: u64,
    },
    /// One flag per hash asked about, in order.
    Has(Vec<bool>),
    /// The request failed.
    Error(WireError),
}

/// The 4-byte length prefix of a frame of `len` bytes.
pub fn frame_prefix(len: usize) -> [u8; 4] {
    (len as u32).to_le_bytes()
}

/// The length announced by a frame prefix, refused above `max`.
pub fn frame_len(prefix: [u8; 4], max: usize) -> Result<usize, DecodeError> {
    let len = u32::from_le_bytes(prefix) as usize;
    check_limit("frame length", len as u64, max as u64)?;
    Ok(len)
}

impl Request {
    /// The frame body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Manifest(id) => {
                out.push(TAG_MANIFEST);
                out.extend_from_slice(id.hash().as_bytes());
            }
            Self::Blob { hash, groups } => {
                out.push(TAG_BLOB);
                out.extend_from_slice(hash.as_bytes());
                out.extend_from_slice(&(groups.0.len() as u16).to_le_bytes());
                for r in &groups.0 {
                    out.extend_from_slice(&r.start.to_le_bytes());
                    out.extend_from_slice(&r.end.to_le_bytes());
                }
            }
            Self::Has(hashes) => {
                out.push(TAG_HAS);
                out.extend_from_slice(&(hashes.len() as u16).to_le_bytes());
                for h in hashes {
                    out.extend_from_slice(h.as_bytes());
                }
            }
        }
        out
    }

    /// Decodes an untrusted frame body.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_limit("request", bytes.len() as u64, MAX_REQUEST_BYTES as u64)?;
        let mut r = Reader::new(bytes);
        let request = match r.u8()? {
            TAG_MANIFEST => Self::Manifest(BundleId::from_hash(BlobHash::from_bytes(r.array()?))),
            TAG_BLOB => {
                let hash = BlobHash::from_bytes(r.array()?);
                let count = counted(&mut r, "range count", MAX_RANGES, 16)?;
                let mut ranges: Vec<Range<u64>> = Vec::with_capacity(count);
                for _ in 0..count {
                    ranges.push(r.u64()?..r.u64()?);
                }
                let canonical = ranges.iter().all(|g| g.start < g.end)
                    && ranges.windows(2).all(|w| w[0].end < w[1].start);
                if !canonical {
                    return Err(DecodeError::Invalid("ranges not canonical".into()));
                }
                Self::Blob {
                    hash,
                    groups: GroupRanges(ranges),
                }
            }
            TAG_HAS => {
                let count = counted(&mut r, "hash count", MAX_HAS, 32)?;
                let mut hashes = Vec::with_capacity(count);
                for _ in 0..count {
                    hashes.push(BlobHash::from_bytes(r.array()?));
                }
                Self::Has(hashes)
            }
            tag => return Err(DecodeError::Invalid(format!("unknown request tag {tag}"))),
        };
        r.finish()?;
        Ok(request)
    }
}

/// Reads a u16 count in `1..=max` whose items of `item_bytes` fit the input.
fn counted(
    r: &mut Reader<'_>,
    what: &'static str,
    max: usize,
    item_bytes: usize,
) -> Result<usize, DecodeError> {
    let count = usize::from(r.u16()?);
    if count == 0 {
        return Err(DecodeError::Invalid(format!("{what} is zero")));
    }
    check_limit(what, count as u64, max as u64)?;
    check_limit(what, count as u64, (r.remaining() / item_bytes) as u64)?;
    Ok(count)
}

impl Response {
    /// The frame body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Manifest(bytes) => {
                out.push(TAG_MANIFEST);
                out.extend_from_slice(bytes);
            }
            Self::Blob { size } => {
                out.push(TAG_BLOB);
                out.extend_from_slice(&size.to_le_bytes());
            }
            Self::Has(flags) => {
                out.push(TAG_HAS);
                out.extend_from_slice(&(flags.len() as u16).to_le_bytes());
                let mut bits = vec![0u8; flags.len().div_ceil(8)];
                for (i, _) in flags.iter().enumerate().filter(|(_, held)| **held) {
                    bits[i / 8] |= 1 << (i % 8);
                }
                out.extend_from_slice(&bits);
            }
            Self::Error(e) => {
                out.push(TAG_ERROR);
                out.push(e.kind.code());
                out.extend_from_slice(&e.retry_after_ms.to_le_bytes());
                out.extend_from_slice(&(e.message.len() as u16).to_le_bytes());
                out.extend_from_slice(e.message.as_bytes());
            }
        }
        out
    }

    /// Decodes an untrusted frame body.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_limit("response", bytes.len() as u64, MAX_RESPONSE_BYTES as u64)?;
        let mut r = Reader::new(bytes);
        let response = match r.u8()? {
            TAG_MANIFEST => {
                let rest = r.bytes(r.remaining())?;
                check_limit("manifest", rest.len() as u64, MAX_MANIFEST_BYTES as u64)?;
                Self::Manifest(rest.to_vec())
            }
            TAG_BLOB => Self::Blob { size: r.u64()? },
            TAG_HAS => {
                let count = usize::from(r.u16()?);
                check_limit("hash count", count as u64, MAX_HAS as u64)?;
                let bits = r.bytes(count.div_ceil(8))?;
                if count % 8 != 0 && bits[count / 8] >> (count % 8) != 0 {
                    return Err(DecodeError::Invalid("bits set past the count".into()));
                }
                Self::Has(
                    (0..count)
                        .map(|i| bits[i / 8] & (1 << (i % 8)) != 0)
                        .collect(),
                )
            }
            TAG_ERROR => {
                let kind = ErrorKind::from_code(r.u8()?)?;
                let retry_after_ms = r.u32()?;
                let len = usize::from(r.u16()?);
                check_limit("error message", len as u64, MAX_MESSAGE_BYTES as u64)?;
                let message = r.str(len, "error message")?.to_owned();
                Self::Error(WireError {
                    kind,
                    retry_after_ms,
                    message,
                })
            }
            tag => return Err(DecodeError::Invalid(format!("unknown response tag {tag}"))),
        };
        r.finish()?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_hash() -> impl Strategy<Value = BlobHash> {
        any::<[u8; 32]>().prop_map(BlobHash::from_bytes)
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            arb_hash().prop_map(|h| Request::Manifest(BundleId::from_hash(h))),
            (
                arb_hash(),
                prop::collection::vec((0u64..1000, 1u64..50), 1..20)
            )
                .prop_map(|(hash, rs)| {
                    let ranges = rs.into_iter().map(|(s, l)| s..s + l).collect();
                    Request::Blob {
                        hash,
                        groups: GroupRanges::new(ranges).unwrap(),
                    }
                }),
            prop::collection::vec(arb_hash(), 1..40).prop_map(Request::Has),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Response::Manifest),
            any::<u64>().prop_map(|size| Response::Blob { size }),
            prop::collection::vec(any::<bool>(), 0..40).prop_map(Response::Has),
            (0u8..5, any::<u32>(), ".{0,40}").prop_map(|(k, retry, msg)| {
                let mut e = WireError::new(ErrorKind::from_code(k + 1).unwrap(), msg);
                e.retry_after_ms = retry;
                Response::Error(e)
            }),
        ]
    }

    #[test]
    fn ranges_are_merged_and_bounded() {
        let g = GroupRanges::new(vec![5..7, 0..2, 2..3, 6..9, 4..4]).unwrap();
        assert_eq!(g.ranges(), [0..3, 5..9]);
        assert!(GroupRanges::new(vec![3..3, 5..5]).is_none());
        let too_many = (0..2000u64).map(|i| i * 2..i * 2 + 1).collect();
        assert!(GroupRanges::new(too_many).is_none());
    }

    #[test]
    fn non_canonical_and_oversized_requests_are_refused() {
        let mut blob = vec![TAG_BLOB];
        blob.extend_from_slice(&[0; 32]);
        blob.extend_from_slice(&2u16.to_le_bytes());
        for (s, e) in [(5u64, 6u64), (1, 2)] {
            blob.extend_from_slice(&s.to_le_bytes());
            blob.extend_from_slice(&e.to_le_bytes());
        }
        assert!(matches!(
            Request::decode(&blob),
            Err(DecodeError::Invalid(_))
        ));
        let mut has = vec![TAG_HAS];
        has.extend_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            Request::decode(&has),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            frame_len([0xff; 4], MAX_REQUEST_BYTES),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(
            Request::decode(&[9]),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            Request::decode(&[]),
            Err(DecodeError::UnexpectedEnd { .. })
        ));
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in arb_request()) {
            prop_assert_eq!(Request::decode(&req.encode()), Ok(req));
        }

        #[test]
        fn responses_round_trip(resp in arb_response()) {
            prop_assert_eq!(Response::decode(&resp.encode()), Ok(resp));
        }

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }
    }
}
