//! `cartable-coordinator`: parse arguments, start logging, run `init`, `serve`,
//! `backup` or `restore`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use cartable_coordinator::config::{CoordinatorConfig, Overrides};
use cartable_coordinator::{backup, daemon};
use cartable_net::logging::LogArgs;
use clap::{Parser, Subcommand};

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
    #[command(flatten)]
    log: LogArgs,
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
    /// Writes the whole coordinator (key, certificate, admin token, every
    /// member, token, bundle and name) to FILE, mode 0600: asked of the
    /// running coordinator, else read from the stopped one's data folder.
    Backup {
        /// The backup file; replaced whole if it exists.
        file: PathBuf,
    },
    /// Restores a backup into the data folder, which must be empty or absent.
    /// The file is checked whole first; a bad one changes nothing.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Restore into a folder that is not empty: what it holds is moved
        /// into a replaced-UNIXTIME folder inside it, not deleted.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    cli.log.init();
    cartable_net::output::exit_code(run(cli))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (https, quic, metrics) = match cli.command {
        Command::Serve {
            https,
            quic,
            metrics,
        } => (https, quic, metrics),
        _ => (None, None, None),
    };
    let mut config_file = cli.config;
    if let Command::Init { file, force } = &cli.command {
        let file = file.clone().or(config_file.clone());
        let file = file.unwrap_or_else(|| "cartable-coordinator.toml".into());
        let template = cartable_coordinator::config::template();
        let data_dir = cli.data_dir.as_deref();
        let written =
            cartable_net::config::template::write_template(&file, &template, data_dir, *force)?;
        cartable_net::say!("{written}")?;
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
                Some(_) => cartable_net::say!(
                    "made {} (admin token, keep it secret) and {}",
                    dir.join(daemon::ADMIN_TOKEN_FILE).display(),
                    dir.join("tls/cert.pem").display()
                )?,
                None => cartable_net::say!("{} is already initialised", dir.display())?,
            }
            Ok(())
        }
        Command::Serve { .. } => cartable_net::signal::block_on_daemon(daemon::run(config)),
        Command::Backup { file } => backup(&config, &file),
        Command::Restore { file, force } => restore(&config, &file, force),
    }
}

fn backup(config: &CoordinatorConfig, file: &std::path::Path) -> anyhow::Result<()> {
    let cert = match &config.tls {
        Some(tls) => tls.cert.clone(),
        None => cartable_net::tls::TlsFiles::self_signed_in(&config.data_dir).cert,
    };
    let (snapshot, source) = tokio::runtime::Runtime::new()
        .context("starting the runtime")?
        .block_on(backup::fetch::backup_to(file, &config.data_dir, &cert))?;
    let from = match source {
        backup::fetch::Source::Running => "the running coordinator",
        backup::fetch::Source::Folder => "the stopped coordinator's folder",
    };
    cartable_net::say!(
        "wrote {} (mode 0600, holds secrets) from {from}: coordinator {}, {}",
        file.display(),
        snapshot.coordinator,
        snapshot.summary()
    )?;
    Ok(())
}

fn restore(config: &CoordinatorConfig, file: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    let restored = backup::restore::restore(file, dir, force)?;
    if let Some(aside) = &restored.set_aside {
        cartable_net::say!("moved what {} held into {}", dir.display(), aside.display())?;
    }
    cartable_net::say!(
        "restored coordinator {} taken {} into {} ({}); start it on the addresses its nodes know",
        restored.snapshot.coordinator,
        cartable_proto::units::utc_minute(restored.snapshot.taken_at),
        dir.display(),
        restored.snapshot.summary()
    )?;
    Ok(())
}
