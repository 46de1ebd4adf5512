//! `cartable-coordinator`: parse arguments, start logging, run `init` or `serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use cartable_coordinator::config::{CoordinatorConfig, Overrides};
use cartable_coordinator::daemon;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The Cartable coordinator: places lesson copies on nodes across sites and regions.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data folder (key, certificate, admin token, state). Default: ./cartable-coordinator-data
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a configuration file with every setting commented out at its
    /// default, and makes the key, the HTTPS certificate and the admin token
    /// (file mode 0600) in the data folder.
    Init {
        /// Where [default: the --config file, else ./cartable-coordinator.toml].
        file: Option<PathBuf>,
        /// Replace an existing configuration file.
        #[arg(long)]
        force: bool,
    },
    /// Runs the QUIC endpoint for nodes and the HTTPS admin API.
    Serve {
        /// HTTPS address (admin API, browser redirects). Default: 127.0.0.1:7443
        #[arg(long)]
        https: Option<SocketAddr>,
        /// QUIC address for nodes. Default: 127.0.0.1:7444
        #[arg(long)]
        quic: Option<SocketAddr>,
        /// Serve Prometheus metrics at http://ADDR/metrics. Default: metrics.listen,
        /// else none; port 0 picks a free port. Never the HTTPS address.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
    },
}

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("CARTABLE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (https, quic, metrics) = match cli.command {
        Command::Serve {
            https,
            quic,
            metrics,
        } => (https, quic, metrics),
        Command::Init { .. } => (None, None, None),
    };
    let mut config_file = cli.config;
    if let Command::Init { file, force } = &cli.command {
        let file = file.clone().or(config_file.clone());
        let file = file.unwrap_or_else(|| "cartable-coordinator.toml".into());
        cartable_net::config::template::write_template(
            &file,
            &cartable_coordinator::config::template(),
            *force,
        )?;
        println!(
            "wrote {}: every setting, commented out at its default",
            file.display()
        );
        config_file = Some(file);
    }
    let overrides = Overrides {
        data_dir: cli.data_dir,
        https,
        quic,
        metrics,
    };
    let config = CoordinatorConfig::load(config_file.as_deref(), overrides)?;
    match cli.command {
        Command::Init { .. } => {
            let dir = &config.data_dir;
            match daemon::init(dir)? {
                Some(_) => println!(
                    "made {} (admin token, keep it secret) and {}",
                    dir.join(daemon::ADMIN_TOKEN_FILE).display(),
                    dir.join("tls/cert.pem").display()
                ),
                None => println!("{} is already initialised", dir.display()),
            }
            Ok(())
        }
        Command::Serve { .. } => tokio::runtime::Runtime::new()
            .context("starting the runtime")?
            .block_on(daemon::run(config)),
    }
}
