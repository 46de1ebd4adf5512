//! The commands: each is one or a few admin API calls, printed as a table (see
//! [`super::views`]) or as the API's JSON with `--json`.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use http::Method;

use super::client::ApiClient;
use super::drill::DrillCommand;
use super::plan::PlanArgs;
use super::publish::{self, PublishArgs};
use super::{ids, views};
use cartable_net::client::{encode_component, encode_path};
use cartable_proto::api::{self, CreateToken, CreatedToken};
use cartable_proto::units;

/// `--json` for listings and show commands.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Output {
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// A `cartable` command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the nodes.
    Nodes(Output),
    /// Show, drain or remove a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// List the bundles.
    Bundles(Output),
    /// Show one bundle and every replica.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Remove a bundle from the cluster.
    Rm {
        /// The bundle (id or prefix).
        bundle: String,
    },
    /// Change how many copies of a bundle are kept.
    #[command(subcommand)]
    Replicas(ReplicasCommand),
    /// Publish a lesson folder as a bundle and upload it.
    Publish(PublishArgs),
    /// Human names for bundles.
    #[command(subcommand)]
    Name(NameCommand),
    /// One-time tokens for nodes to join.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Down and draining nodes, bundles short of copies, the repair queue.
    Status(Output),
    /// Preview what a topology change would move (changes nothing).
    Plan(PlanArgs),
    /// Preview what losing a site or a region would cost (changes nothing).
    #[command(subcommand)]
    Drill(DrillCommand),
    /// Save the whole coordinator (key, certificate, admin token, members,
    /// tokens, bundles, names) to FILE, mode 0600; `cartable-coordinator
    /// restore FILE` brings it back.
    Backup {
        /// The backup file; replaced whole if it exists.
        file: std::path::PathBuf,
    },
}

/// `cartable node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Show one node.
    Show {
        /// The node (id or prefix).
        id: String,
        #[command(flatten)]
        out: Output,
    },
    /// Stop placing copies on the node and move its copies away.
    Drain {
        /// The node (id or prefix).
        id: String,
    },
    /// Send browsers and peers to the address the node now reports (shown
    /// by `node show`): a node's address is fixed at join until approved.
    ApproveContact {
        /// The node (id or prefix).
        id: String,
    },
    /// Forget the node. Refused while it holds complete copies (drain it
    /// first) unless it is down past the repair delay, or with --force.
    Remove {
        /// The node (id or prefix).
        id: String,
        /// Forget its copies at once, even if they are the last ones.
        #[arg(long)]
        force: bool,
    },
    /// Clear the node's unreliable mark and failed checks (once its disk is
    /// fixed): its copies count again once they pass their checks.
    Trust {
        /// The node (id or prefix).
        id: String,
    },
    /// Set the most the node may offer (its join token set the first bound):
    /// a lower bound applies at once, a higher one from its next heartbeat,
    /// up to what the node declares.
    Capacity {
        /// The node (id or prefix).
        id: String,
        /// 500GB, 2TiB.
        #[arg(value_parser = units::parse_size)]
        size: u64,
    },
}

/// `cartable bundle ...`.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Show one bundle and every replica: node, region, site, state, up.
    Show {
        /// The bundle (id or prefix).
        id: String,
        #[command(flatten)]
        out: Output,
    },
}

/// `cartable replicas ...`.
#[derive(Debug, Subcommand)]
pub enum ReplicasCommand {
    /// Set the number of copies kept.
    Set {
        /// The bundle (id or prefix).
        bundle: String,
        /// Copies to keep.
        replicas: u8,
    },
}

/// `cartable name ...`.
#[derive(Debug, Subcommand)]
pub enum NameCommand {
    /// Point a name at a bundle.
    Set {
        /// The name, e.g. maths/6e/fractions.
        name: String,
        /// The bundle (id or prefix).
        bundle: String,
    },
    /// List the names.
    Ls(Output),
    /// Every bundle a name pointed to.
    History {
        /// The name.
        name: String,
        #[command(flatten)]
        out: Output,
    },
}

/// `cartable token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a join token; prints only the token.
    Create {
        /// The region of the node that will join.
        #[arg(long)]
        region: String,
        /// Its site.
        #[arg(long)]
        site: String,
        /// Lifetime: 30s, 15m, 24h, 7d.
        #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = units::parse_duration)]
        expires: u64,
        /// The most the node may offer (500GB, 2TiB): a larger claim at join
        /// or in heartbeats is cut down to it. Without it, what the node declares.
        #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
        capacity: Option<u64>,
    },
    /// List the join tokens.
    Ls(Output),
    /// Revoke a join token.
    Revoke {
        /// The token id, as `token ls` shows it.
        id: String,
    },
}

impl Command {
    /// Checks what needs no coordinator, so a wrong invocation fails first.
    pub fn check_offline(&self) -> anyhow::Result<()> {
        match self {
            Self::Plan(plan) => plan.check(),
            _ => Ok(()),
        }
    }

    /// Runs the command against the coordinator.
    pub async fn run(self, api: &mut ApiClient) -> anyhow::Result<()> {
        match self {
            Self::Nodes(out) => list(api, "/api/nodes", out, views::nodes).await,
            Self::Node(command) => command.run(api).await,
            Self::Bundles(out) => list(api, "/api/bundles", out, views::bundles).await,
            Self::Bundle(BundleCommand::Show { id, out }) => {
                let id = ids::bundle(api, &id).await?;
                show(
                    out,
                    &api.get(&format!("/api/bundles/{id}")).await?,
                    views::bundle,
                )
            }
            Self::Rm { bundle } => {
                let id = ids::bundle(api, &bundle).await?;
                let _: api::BundleView = api.delete(&format!("/api/bundles/{id}")).await?;
                cartable_net::say!("removed bundle {id}")?;
                Ok(())
            }
            Self::Replicas(ReplicasCommand::Set { bundle, replicas }) => {
                let id = ids::bundle(api, &bundle).await?;
                let body = api::SetReplicas { replicas };
                let path = format!("/api/bundles/{id}/replicas");
                let view: api::BundleView = api.send_json(Method::PUT, &path, &body).await?;
                cartable_net::say!(
                    "bundle {id}: {} copies wanted, {} complete",
                    view.replicas_wanted,
                    view.complete
                )?;
                Ok(())
            }
            Self::Publish(args) => publish::publish(api, args).await,
            Self::Name(command) => command.run(api).await,
            Self::Token(command) => command.run(api).await,
            Self::Status(out) => show(out, &api.get("/api/status").await?, views::status),
            Self::Plan(args) => args.run(api).await,
            Self::Drill(command) => command.run(api).await,
            Self::Backup { file } => backup(api, &file).await,
        }
    }
}

impl NodeCommand {
    async fn run(self, api: &mut ApiClient) -> anyhow::Result<()> {
        let (id, suffix, done) = match self {
            Self::Show { id, out } => {
                let id = ids::node(api, &id).await?;
                return show(
                    out,
                    &api.get(&format!("/api/nodes/{id}")).await?,
                    views::node,
                );
            }
            Self::ApproveContact { id } => {
                let id = ids::node(api, &id).await?;
                let view: api::NodeView = api
                    .post(&format!("/api/nodes/{id}/approve-contact"))
                    .await?;
                cartable_net::say!("node {id} now answers at {}", view.https_url)?;
                return Ok(());
            }
            Self::Capacity { id, size } => {
                let id = ids::node(api, &id).await?;
                let path = format!("/api/nodes/{id}/capacity");
                let body = api::SetCapacity { capacity: size };
                let view: api::NodeView = api.send_json(Method::PUT, &path, &body).await?;
                cartable_net::say!(
                    "node {id} may offer at most {} (counted now: {})",
                    units::human_bytes(size),
                    units::human_bytes(view.capacity)
                )?;
                return Ok(());
            }
            Self::Drain { id } => (id, "/drain", "draining"),
            Self::Trust { id } => (id, "/trust", "trusted again"),
            Self::Remove { id, force } => (id, if force { "?force=true" } else { "" }, "removed"),
        };
        let id = ids::node(api, &id).await?;
        let path = format!("/api/nodes/{id}{suffix}");
        let view: api::NodeView = if done == "removed" {
            api.delete(&path).await?
        } else {
            api.post(&path).await?
        };
        cartable_net::say!("node {id} ({} / {}) {done}", view.region, view.site)?;
        Ok(())
    }
}

impl NameCommand {
    async fn run(self, api: &mut ApiClient) -> anyhow::Result<()> {
        match self {
            Self::Set { name, bundle } => {
                let bundle = ids::bundle(api, &bundle).await?;
                let path = format!("/api/names/{}", encode_path(&name));
                let view: api::NameView = api
                    .send_json(Method::PUT, &path, &api::SetName { bundle })
                    .await?;
                cartable_net::say!("{} -> {}", view.name, view.bundle)?;
                Ok(())
            }
            Self::Ls(out) => list(api, "/api/names", out, views::names).await,
            Self::History { name, out } => {
                let path = format!("/api/names/{}/history", encode_path(&name));
                list(api, &path, out, views::history).await
            }
        }
    }
}

impl TokenCommand {
    async fn run(self, api: &mut ApiClient) -> anyhow::Result<()> {
        match self {
            Self::Create {
                region,
                site,
                expires,
                capacity,
            } => {
                let body = CreateToken {
                    region,
                    site,
                    expires_secs: expires,
                    capacity,
                };
                let created: CreatedToken =
                    api.send_json(Method::POST, "/api/tokens", &body).await?;
                // Only the token on stdout, so that scripts can capture it.
                cartable_net::say!("{}", created.token)?;
                Ok(())
            }
            Self::Ls(out) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
                list(api, "/api/tokens", out, |list| views::tokens(list, now)).await
            }
            Self::Revoke { id } => {
                let path = format!("/api/tokens/{}", encode_component(&id));
                let view: api::TokenView = api.delete(&path).await?;
                cartable_net::say!(
                    "revoked token {} ({} / {})",
                    view.id,
                    view.region,
                    view.site
                )?;
                Ok(())
            }
        }
    }
}

/// `cartable backup FILE`: the backup is checked whole before it is kept.
async fn backup(api: &mut ApiClient, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = api.post_for_bytes("/api/backup").await?;
    let snapshot = cartable_proto::backup::decode(&bytes)
        .map_err(|e| anyhow::anyhow!("the coordinator sent a bad backup: {e}"))?;
    cartable_net::secret_file::replace(file, &bytes)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
    cartable_net::say!(
        "wrote {} (mode 0600, holds secrets): coordinator {}, {}",
        file.display(),
        snapshot.coordinator,
        snapshot.summary()
    )?;
    Ok(())
}

/// Lists `path` as pretty JSON or through `view`.
pub(super) async fn list<T: serde::de::DeserializeOwned + serde::Serialize>(
    api: &mut ApiClient,
    path: &str,
    out: Output,
    view: impl FnOnce(&[T]) -> String,
) -> anyhow::Result<()> {
    let items: Vec<T> = api.get(path).await?;
    show(out, &items, |items| view(items))
}

/// Prints `value` as pretty JSON or through `view`.
pub(super) fn show<T: serde::Serialize>(
    out: Output,
    value: &T,
    view: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if out.json {
        cartable_net::say!("{}", serde_json::to_string_pretty(value)?)?;
    } else {
        cartable_net::output::print(format_args!("{}", view(value)))?;
    }
    Ok(())
}
