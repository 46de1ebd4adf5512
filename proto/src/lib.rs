//! Types and encodings every Cartable part shares. No IO, no async.
//!
//! - [`id`]: [`BlobHash`] and [`BundleId`], the BLAKE3 names of blobs and bundles,
//!   with their hex (URLs, CLI) and base32 (one DNS label) text forms; [`NodeId`].
//! - [`path`]: the path rules every file of a bundle obeys ([`BundlePath`]).
//! - [`manifest`]: the bundle manifest and its one canonical, versioned binary encoding.
//! - [`content_type`]: the `Content-Type` a file gets from its extension.
//! - [`decode`]: the bounded reader every decoder is built on, and [`DecodeError`].
//! - [`cert`]: the node id in a peer's certificate.
//! - [`cidr`]: client networks as operators write them in configuration.
//! - [`wire`]: the node ↔ node protocol over QUIC, specified in its module docs.
//! - [`control`]: the node ↔ coordinator protocol, specified in its module docs.
//! - [`hex`]: hex and percent-encoding, read strictly.
//! - [`units`]: sizes, durations and dates as operators type and read them.
//! - [`join`]: join tokens and upload grants, the two credentials the coordinator hands out.
//! - [`api`]: the coordinator's admin API, its routes and JSON types (the CLI's contract).
//! - [`backup`]: the coordinator's backup file: one versioned, checksummed snapshot.

pub mod api;
pub mod backup;
pub mod cert;
pub mod cidr;
pub mod content_type;
pub mod control;
pub mod decode;
#[doc(hidden)]
pub mod fuzzing;
pub mod hex;
pub mod id;
pub mod join;
pub mod manifest;
pub mod path;
pub mod units;
pub mod wire;

pub use decode::DecodeError;
pub use id::{BlobHash, BundleId, IdParseError, NodeId};
pub use manifest::{Manifest, ManifestEntry, ManifestError};
pub use path::{BundlePath, PathError};
