//! The admin API: HTTPS + JSON with a bearer token, so that `curl` works too. The
//! `cartable` CLI is a client of these routes and nothing more.
//!
//! Every `/api/` route needs `Authorization: Bearer <admin token>` (401 without or
//! with a wrong one). Errors are `{"error": "<one line>"}` with a 4xx/5xx status;
//! a refused call changes nothing.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /api/status` | | [`Status`] |
//! | `GET /api/nodes` | | `[NodeView]` |
//! | `GET /api/nodes/{id}` | | [`NodeView`] |
//! | `POST /api/nodes/{id}/drain` | | [`NodeView`] |
//! | `POST /api/nodes/{id}/trust` | | [`NodeView`]: its failed checks forgotten and its unreliable mark cleared (after the operator fixed its disk) |
//! | `POST /api/nodes/{id}/approve-contact` | | [`NodeView`]: the address the node reports (see [`NodeView::proposed_contact`]) becomes the one browsers and peers use; 409 when it proposes none |
//! | `DELETE /api/nodes/{id}[?force=true]` | | [`NodeView`]; 409 while it holds complete copies (drain first), unless down past the repair delay or forced |
//! | `GET /api/bundles` | | `[BundleView]` |
//! | `GET /api/bundles/{id}` | | [`BundleView`] with `replicas` filled |
//! | `POST /api/bundles?replicas=N&name=NAME` | manifest bytes (`application/octet-stream`) | [`Published`]; the name moves once a copy is verified; 400 for a manifest breaking its rules (one size per blob, size caps), 503 when no node is up, 507 when no node that is up has room |
//! | `DELETE /api/bundles/{id}` | | [`BundleView`] |
//! | `PUT /api/bundles/{id}/replicas` | [`SetReplicas`] | [`BundleView`] |
//! | `PUT /api/nodes/{id}/capacity` | [`SetCapacity`] | [`NodeView`]; the new bound applies at once, a raise from the node's next heartbeat |
//! | `GET /api/names` | | `[NameView]` |
//! | `PUT /api/names/{name}` | [`SetName`] | [`NameView`] |
//! | `GET /api/names/{name}/history` | | `[NameChange]` |
//! | `POST /api/tokens` | [`CreateToken`] | [`CreatedToken`] |
//! | `GET /api/tokens` | | `[TokenView]` |
//! | `DELETE /api/tokens/{id}` | | [`TokenView`] |
//! | `POST /api/plan` | [`PlanChange`] | [`PlanPreview`] (nothing is changed) |
//! | `POST /api/backup` | | the whole state as one backup file (`application/octet-stream`, [`crate::backup`]: secrets included); 503 while another backup is taken, 507 when the state exceeds the backup size limit |
//!
//! Public routes (no token): `GET /b/{bundle}/{path}` answers 302 to a healthy node
//! holding a complete copy, near the client; `GET /n/{name}/{path}` answers 302 to
//! `/b/{bundle}/{path}`; `GET /healthz`.
//!
//! # Uploading to a node
//!
//! [`Published`] names the node to upload to, the SHA-256 of its HTTPS certificate
//! (pin it: nodes use self-signed certificates) and a signed grant. The node's
//! routes, both with `Authorization: Bearer <grant>`:
//!
//! - `POST /upload/{bundle}` with the manifest bytes → [`UploadState`]: the blobs the
//!   node still lacks. The node reserves room for them first: 507 (nothing kept)
//!   when the bundle exceeds its declared capacity left or its free disk space,
//!   uploads in progress counted; 503 when too many uploads are in progress.
//! - `PUT /upload/{bundle}/{blob}` with the blob's bytes → [`UploadState`]. The node
//!   hashes what it receives and keeps it only when it matches `{blob}`; the bundle
//!   becomes held (and is reported to the coordinator) once nothing is missing.
//!   One body per blob at a time: a second `PUT` of a blob whose body is being
//!   received answers 503 (`Retry-After`). Re-running a publish skips what the
//!   node already has.

use crate::{BlobHash, BundleId, NodeId};
use serde::{Deserialize, Serialize};

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// One line saying what was wrong.
    pub error: String,
}

/// How a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Heartbeats arrive; the node takes new replicas.
    Up,
    /// No heartbeat within the grace period.
    Down,
    /// Being emptied before it leaves: no new replicas, its copies move away.
    Draining,
}

/// A node, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Its key.
    pub id: NodeId,
    /// Its region.
    pub region: String,
    /// Its site.
    pub site: String,
    /// How it stands.
    pub state: NodeState,
    /// Its HTTPS base URL.
    pub https_url: String,
    /// Bytes it offers.
    pub capacity: u64,
    /// Bytes its held bundles use, as last reported.
    pub used: u64,
    /// Browser connections open, as last reported.
    pub load: u32,
    /// Seconds since its last heartbeat (`None`: never heard from since the coordinator started).
    pub last_seen_secs: Option<u64>,
    /// Replicas placed on it.
    pub replicas: usize,
    /// Of which complete and verified.
    pub complete: usize,
    /// Verification failures peers reported against it.
    pub reported_failures: u64,
    /// The most capacity it may claim, set by its join token (`None`: unbounded).
    #[serde(default)]
    pub capacity_limit: Option<u64>,
    /// The coordinator's checks of its copies it failed since its mark was last cleared.
    #[serde(default)]
    pub failed_checks: u64,
    /// Marked after repeated failed checks: its copies do not count, it takes no new ones.
    #[serde(default)]
    pub unreliable: bool,
    /// How many members reported them (one member's reports may be lies).
    #[serde(default)]
    pub failure_reporters: usize,
    /// The address the node now reports, when it differs from the recorded
    /// one: used only once an admin approves it.
    #[serde(default)]
    pub proposed_contact: Option<ContactChange>,
}

/// A node's new address, waiting for an admin's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactChange {
    /// Its HTTPS base URL for browsers.
    pub https_url: String,
    /// Its QUIC address for peers.
    pub quic: std::net::SocketAddr,
}

/// A replica's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaState {
    /// Assigned and being copied (or waiting for the upload, or queued by repair).
    Copying,
    /// Held complete, and random ranges checked against the hashes by the coordinator.
    Complete,
    /// Complete, but no longer wanted there: deleted once its replacement is complete.
    Releasing,
}

impl ReplicaState {
    /// Whether the copy is whole: complete, or being released (whole until
    /// deleted).
    pub fn is_whole(self) -> bool {
        matches!(self, Self::Complete | Self::Releasing)
    }
}

/// One replica of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaView {
    /// The node.
    pub node: NodeId,
    /// Its region.
    pub region: String,
    /// Its site.
    pub site: String,
    /// The replica's state.
    pub state: ReplicaState,
    /// Whether the node is up.
    pub node_up: bool,
}

/// A bundle, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleView {
    /// Its id.
    pub id: BundleId,
    /// Bytes of its files.
    pub size: u64,
    /// Number of files.
    pub files: usize,
    /// Target number of copies.
    pub replicas_wanted: u8,
    /// Copies complete on nodes that are up.
    pub complete: usize,
    /// Names pointing at it.
    pub names: Vec<String>,
    /// Why the plan could not place all its copies, if so.
    pub unplaced: Option<String>,
    /// Every replica (filled by `GET /api/bundles/{id}` only).
    pub replicas: Vec<ReplicaView>,
}

/// The answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The bundle registered.
    pub bundle: BundleId,
    /// The node to upload to.
    pub upload_node: NodeId,
    /// Its HTTPS base URL.
    pub upload_url: String,
    /// Lowercase hex SHA-256 of its HTTPS certificate (DER).
    pub upload_cert_sha256: String,
    /// The signed grant, for `Authorization: Bearer`.
    pub grant: String,
    /// URLs that serve the bundle once copies exist (coordinator redirect, then name).
    pub urls: Vec<String>,
}

/// A node's answer on the upload routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// Blobs the node still lacks; empty once the bundle is held.
    pub missing: Vec<BlobHash>,
}

/// Body of `PUT /api/nodes/{id}/capacity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetCapacity {
    /// The most the node may offer, in bytes: its claims are cut down to it.
    pub capacity: u64,
}

/// Body of `PUT /api/bundles/{id}/replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReplicas {
    /// The new target; refused above the number of sites.
    pub replicas: u8,
}

/// A name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameView {
    /// The name, e.g. `maths/6e/fractions`.
    pub name: String,
    /// The bundle it points to.
    pub bundle: BundleId,
}

/// Body of `PUT /api/names/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetName {
    /// The bundle the name will point to (must be published).
    pub bundle: BundleId,
}

/// One past value of a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameChange {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The bundle it pointed to from then on.
    pub bundle: BundleId,
}

/// Body of `POST /api/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateToken {
    /// The region the joining node will be in.
    pub region: String,
    /// Its site.
    pub site: String,
    /// Lifetime in seconds.
    pub expires_secs: u64,
    /// The most bytes the node may offer: a larger claim is cut down to this
    /// (`None`: what the node declares).
    #[serde(default)]
    pub capacity: Option<u64>,
}

/// A token just made: the only time its text is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The full token, for `cartable-node join`.
    pub token: String,
    /// What the listing shows.
    pub view: TokenView,
}

/// A join token as listed (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// Short id (first 16 hex digits of the secret's hash), for `token revoke`.
    pub id: String,
    /// Region given to the node.
    pub region: String,
    /// Site given to the node.
    pub site: String,
    /// Seconds since the Unix epoch when it expires.
    pub expires: u64,
    /// The node that used it, once used.
    pub used_by: Option<NodeId>,
    /// The most bytes the node may offer (`None`: what it declares).
    #[serde(default)]
    pub capacity: Option<u64>,
}

/// A topology change to preview with `POST /api/plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PlanChange {
    /// Nodes to take out (as if drained or lost).
    #[serde(default)]
    pub without: Vec<NodeId>,
    /// Hypothetical nodes to add.
    #[serde(default)]
    pub with: Vec<HypotheticalNode>,
}

/// A node that does not exist yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypotheticalNode {
    /// Its region.
    pub region: String,
    /// Its site.
    pub site: String,
    /// Bytes it would offer.
    pub capacity: u64,
}

/// What a topology change would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPreview {
    /// Replicas in the new plan.
    pub replicas: usize,
    /// Copies it would start.
    pub added: usize,
    /// Copies it would release (after their replacements complete).
    pub removed: usize,
    /// Bundles it could not place fully.
    pub unplaced: usize,
    /// Bundles left with no complete copy on a node that is up and kept: what
    /// losing the nodes taken out would lose for good.
    pub lost: Vec<BundleId>,
    /// Bundles left with fewer complete copies than `min_replicas`: copied
    /// as soon as the nodes are seen down, without the repair delay.
    pub urgent: usize,
    /// Bytes of the complete copies on the nodes taken out.
    pub bytes_on_removed: u64,
    /// Per bundle that changes: id, size, nodes gaining a copy, nodes losing one.
    pub moves: Vec<BundleMove>,
    /// The timings a repair of this change would run at.
    pub timings: RepairTimings,
}

/// The coordinator's repair settings (see `coordinator/src/config.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairTimings {
    /// Interval of node heartbeats: orders and verified copies move at this pace.
    pub heartbeat_ms: u64,
    /// Silence after which a node is down.
    pub down_after_ms: u64,
    /// Wait before a down node's copies are placed elsewhere.
    pub repair_delay_secs: u64,
    /// Below this many complete copies a bundle is repaired at once.
    pub min_replicas: u8,
    /// Copies one node makes at once.
    pub copies_per_node: usize,
}

/// The change of one bundle's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleMove {
    /// The bundle.
    pub bundle: BundleId,
    /// Bytes of its files: what each copy it gains costs.
    pub size: u64,
    /// Nodes that would gain a copy (hypothetical nodes show as `new-<n>`).
    pub to: Vec<String>,
    /// Nodes that would lose one.
    pub from: Vec<String>,
}

/// The cluster at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Nodes by state.
    pub nodes_up: usize,
    /// Nodes down.
    pub nodes_down: Vec<NodeId>,
    /// Nodes draining.
    pub nodes_draining: Vec<NodeId>,
    /// Nodes marked unreliable: they failed repeated checks of their copies.
    #[serde(default)]
    pub nodes_unreliable: Vec<NodeId>,
    /// Bundles published.
    pub bundles: usize,
    /// Bundles with fewer complete copies than wanted.
    pub under_replicated: Vec<BundleId>,
    /// Bundles the plan could not place fully.
    pub unplaceable: Vec<BundleId>,
    /// Copies waiting for their turn (storm control), most endangered first.
    pub repair_queue: Vec<QueuedCopy>,
    /// Nodes reporting a new address that waits for an admin's approval.
    #[serde(default)]
    pub contact_changes: Vec<NodeId>,
    /// Nodes peers reported for sending bytes that failed verification.
    #[serde(default)]
    pub reported: Vec<NodeId>,
}

/// A copy waiting in the repair queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedCopy {
    /// The bundle.
    pub bundle: BundleId,
    /// The node that will copy it.
    pub node: NodeId,
    /// Complete copies the bundle has on nodes that are up.
    pub complete: usize,
}
