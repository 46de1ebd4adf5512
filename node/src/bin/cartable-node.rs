//! `cartable-node`: parse arguments, start logging, run the command.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = cartable_node::cli::Cli::parse();
    cli.log.init();
    cartable_net::output::exit_code(cli.run())
}
