//! `cartable`: the admin CLI. Parse arguments, run the command, print the one
//! line saying what went wrong.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Every TLS client the CLI makes names ring explicitly; installing it as the
    // default too keeps any other rustls user in the process on the same provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = cartable_cli::Cli::parse();
    cartable_net::output::exit_code(cli.run())
}
