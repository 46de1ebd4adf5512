//! The `cartable` admin CLI: a client of the admin API ([`cartable_proto::api`]) and
//! nothing more. Each command is one or a few API calls; listings print aligned
//! tables with short ids, or the API's JSON with `--json`. It links neither the
//! coordinator nor the node, nor any storage engine: HTTPS with pinned
//! certificates and the lesson folder's manifest are [`cartable_net`]'s.
//!
//! - [`commands`], [`plan`], [`drill`]: the commands, one or a few API calls each.
//! - [`config`]: where the coordinator URL, token and certificate come from.
//! - [`client`]: the admin API's token and JSON over [`cartable_net::client`].
//! - [`ids`]: full ids or prefixes copied from a table.
//! - [`publish`], [`upload`]: packing a lesson folder and uploading it.
//! - [`views`], [`table`]: what people read (sizes and durations are parsed by
//!   [`cartable_proto::units`], which the node shares).

// The map above names private modules: `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

mod client;
mod commands;
mod config;
mod drill;
mod ids;
mod plan;
mod publish;
mod table;
pub mod upload;
#[cfg(test)]
mod upload_tests;
mod views;
#[cfg(test)]
mod views_tests;

use clap::Parser;

use self::client::ApiClient;
use self::commands::Command;
use self::config::{ENV_CA_CERT, GlobalArgs, Settings};
use cartable_net::pin::Pin;

/// The Cartable admin CLI: manage nodes, bundles, names and join tokens.
#[derive(Debug, Parser)]
#[command(name = "cartable", version)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Runs the command; the error is the one line to print.
    pub fn run(self) -> anyhow::Result<()> {
        self.command.check_offline()?;
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn plan_without_dry_run_is_refused_before_anything_else() {
        let cli = Cli::try_parse_from(["cartable", "plan", "--with", "a/b/1GB"]).unwrap();
        let err = cli.run().unwrap_err();
        assert_eq!(err.to_string(), "plan only previews; pass --dry-run");
    }
}
