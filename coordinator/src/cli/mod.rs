//! The `cartable` admin CLI: a client of the admin API ([`crate::api`]) and
//! nothing more. Each command is one or a few API calls; listings print aligned
//! tables with short ids, or the API's JSON with `--json`.
//!
//! - [`config`]: where the coordinator URL, token and certificate come from.
//! - [`tls`], [`client`]: HTTPS to a server whose certificate is pinned.
//! - [`ids`]: full ids or prefixes copied from a table.
//! - [`publish`], [`upload`]: packing a lesson folder and uploading it.
//! - [`views`], [`table`], [`units`]: what people read and type.

pub mod client;
pub mod config;
pub mod ids;
pub mod publish;
pub mod table;
pub mod tls;
pub mod units;
pub mod upload;
pub mod views;

use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use http::Method;

use self::client::{ApiClient, encode_component};
use self::config::{ENV_CA_CERT, GlobalArgs, Settings};
use self::publish::PublishArgs;
use self::tls::Pin;
use crate::api::{self, CreateToken, CreatedToken, HypotheticalNode, PlanChange};

/// The Cartable admin CLI: manage nodes, bundles, names and join tokens.
#[derive(Debug, Parser)]
#[command(name = "cartable", version)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// `--json` for listings and show commands.
#[derive(Debug, Clone, Copy, clap::Args)]
struct Output {
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
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
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
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
    /// Forget the node at once, even if it still holds copies.
    Remove {
        /// The node (id or prefix).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Show one bundle and every replica: node, region, site, state, up.
    Show {
        /// The bundle (id or prefix).
        id: String,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Debug, Subcommand)]
enum ReplicasCommand {
    /// Set the number of copies kept.
    Set {
        /// The bundle (id or prefix).
        bundle: String,
        /// Copies to keep.
        replicas: u8,
    },
}

#[derive(Debug, Subcommand)]
enum NameCommand {
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

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a join token; prints only the token.
    Create {
        /// The region of the node that will join.
        #[arg(long)]
        region: String,
        /// Its site.
        #[arg(long)]
        site: String,
        /// Lifetime: 30s, 15m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = units::parse_duration)]
        expires: u64,
    },
    /// List the join tokens.
    Ls(Output),
    /// Revoke a join token.
    Revoke {
        /// The token id, as `token ls` shows it.
        id: String,
    },
}

/// What `plan` previews.
#[derive(Debug, clap::Args)]
struct PlanArgs {
    /// Required: the plan is only previewed, never applied.
    #[arg(long)]
    dry_run: bool,
    /// A node to take out (id or prefix; repeatable).
    #[arg(long, value_name = "NODE")]
    without: Vec<String>,
    /// A node to add, as REGION/SITE/CAPACITY, e.g. east/lyon-2/200GB (repeatable).
    #[arg(long, value_name = "REGION/SITE/CAPACITY", value_parser = parse_hypothetical)]
    with: Vec<HypotheticalNode>,
    #[command(flatten)]
    out: Output,
}

impl Cli {
    /// Runs the command; the error is the one line to print.
    pub fn run(self) -> anyhow::Result<()> {
        if let Command::Plan(plan) = &self.command {
            anyhow::ensure!(plan.dry_run, "plan only previews; pass --dry-run");
        }
        let settings = Settings::resolve(&self.global, &|name| std::env::var(name).ok())?;
        let pin = match &settings.ca_cert {
            Some(path) => Pin::from_pem_file(path)?,
            None => anyhow::bail!(
                "no certificate to trust for {}: pass --ca-cert FILE (the coordinator's self-signed certificate, PEM), set {ENV_CA_CERT} or add ca_cert to the config file",
                settings.coordinator
            ),
        };
        let mut api = ApiClient::new(&settings.coordinator, pin, settings.token)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(self.command.run(&mut api))
    }
}

impl Command {
    async fn run(self, api: &mut ApiClient) -> anyhow::Result<()> {
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
                println!("removed bundle {id}");
                Ok(())
            }
            Self::Replicas(ReplicasCommand::Set { bundle, replicas }) => {
                let id = ids::bundle(api, &bundle).await?;
                let body = api::SetReplicas { replicas };
                let path = format!("/api/bundles/{id}/replicas");
                let view: api::BundleView = api.send_json(Method::PUT, &path, &body).await?;
                println!(
                    "bundle {id}: {} copies wanted, {} complete",
                    view.replicas_wanted, view.complete
                );
                Ok(())
            }
            Self::Publish(args) => publish::publish(api, args).await,
            Self::Name(command) => command.run(api).await,
            Self::Token(command) => command.run(api).await,
            Self::Status(out) => show(out, &api.get("/api/status").await?, views::status),
            Self::Plan(args) => args.run(api).await,
        }
    }
}

impl NodeCommand {
    async fn run(self, api: &mut ApiClient) -> anyhow::Result<()> {
        let (id, drain) = match self {
            Self::Show { id, out } => {
                let id = ids::node(api, &id).await?;
                return show(
                    out,
                    &api.get(&format!("/api/nodes/{id}")).await?,
                    views::node,
                );
            }
            Self::Drain { id } => (ids::node(api, &id).await?, true),
            Self::Remove { id } => (ids::node(api, &id).await?, false),
        };
        let view: api::NodeView = if drain {
            let path = format!("/api/nodes/{id}/drain");
            api.send_json(Method::POST, &path, &()).await?
        } else {
            api.delete(&format!("/api/nodes/{id}")).await?
        };
        let done = if drain { "draining" } else { "removed" };
        println!("node {id} ({} / {}) {done}", view.region, view.site);
        Ok(())
    }
}

impl NameCommand {
    async fn run(self, api: &mut ApiClient) -> anyhow::Result<()> {
        match self {
            Self::Set { name, bundle } => {
                let bundle = ids::bundle(api, &bundle).await?;
                let path = format!("/api/names/{}", encode_component(&name));
                let view: api::NameView = api
                    .send_json(Method::PUT, &path, &api::SetName { bundle })
                    .await?;
                println!("{} -> {}", view.name, view.bundle);
                Ok(())
            }
            Self::Ls(out) => list(api, "/api/names", out, views::names).await,
            Self::History { name, out } => {
                let path = format!("/api/names/{}/history", encode_component(&name));
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
            } => {
                let body = CreateToken {
                    region,
                    site,
                    expires_secs: expires,
                };
                let created: CreatedToken =
                    api.send_json(Method::POST, "/api/tokens", &body).await?;
                // Only the token on stdout, so that scripts can capture it.
                println!("{}", created.token);
                Ok(())
            }
            Self::Ls(out) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
                list(api, "/api/tokens", out, |list| views::tokens(list, now)).await
            }
            Self::Revoke { id } => {
                let path = format!("/api/tokens/{}", encode_component(&id));
                let view: api::TokenView = api.delete(&path).await?;
                println!(
                    "revoked token {} ({} / {})",
                    view.id, view.region, view.site
                );
                Ok(())
            }
        }
    }
}

impl PlanArgs {
    async fn run(self, api: &mut ApiClient) -> anyhow::Result<()> {
        let mut change = PlanChange {
            without: Vec::new(),
            with: self.with,
        };
        for node in &self.without {
            change.without.push(ids::node(api, node).await?);
        }
        let preview = api.send_json(Method::POST, "/api/plan", &change).await?;
        show(self.out, &preview, views::plan)
    }
}

/// Lists `path` as pretty JSON or through `view`.
async fn list<T: serde::de::DeserializeOwned + serde::Serialize>(
    api: &mut ApiClient,
    path: &str,
    out: Output,
    view: impl FnOnce(&[T]) -> String,
) -> anyhow::Result<()> {
    let items: Vec<T> = api.get(path).await?;
    show(out, &items, |items| view(items))
}

/// Prints `value` as pretty JSON or through `view`.
fn show<T: serde::Serialize>(
    out: Output,
    value: &T,
    view: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", view(value));
    }
    Ok(())
}

/// `REGION/SITE/CAPACITY`, e.g. `east/lyon-2/200GB`.
fn parse_hypothetical(text: &str) -> Result<HypotheticalNode, String> {
    let parts: Vec<&str> = text.split('/').collect();
    let [region, site, capacity] = parts[..] else {
        return Err(format!(
            "{text:?}: expected REGION/SITE/CAPACITY, e.g. east/lyon-2/200GB"
        ));
    };
    if region.is_empty() || site.is_empty() {
        return Err(format!("{text:?}: empty region or site"));
    }
    Ok(HypotheticalNode {
        region: region.to_owned(),
        site: site.to_owned(),
        capacity: units::parse_size(capacity)?,
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn hypothetical_nodes_parse_with_sizes() {
        let node = parse_hypothetical("east/lyon-2/200GB").unwrap();
        assert_eq!(
            (node.region.as_str(), node.site.as_str(), node.capacity),
            ("east", "lyon-2", 200_000_000_000)
        );
        for bad in ["east/lyon", "east/lyon/2/3", "/lyon/1GB", "east/lyon/lots"] {
            assert!(parse_hypothetical(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plan_without_dry_run_is_refused_before_anything_else() {
        let cli = Cli::try_parse_from(["cartable", "plan", "--with", "a/b/1GB"]).unwrap();
        let err = cli.run().unwrap_err();
        assert_eq!(err.to_string(), "plan only previews; pass --dry-run");
    }
}
