//! The `verge` command line: `serve` runs the proxy, `check` validates a config.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use verge::config::Config;

#[derive(Parser)]
#[command(
    name = "verge",
    version,
    about = "A programmable edge proxy and shared HTTP cache"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file.
        #[arg(short, long, default_value = "conf/verge.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running verge (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(short, long)]
        daemon: bool,
    },
    /// Run the control plane (policy, invalidations, snapshots for nodes).
    Control {
        /// Control-plane config file.
        #[arg(short, long, default_value = "conf/control.yaml")]
        config: PathBuf,
    },
    /// Validate a config file and list every error; starts nothing.
    Check {
        /// Config file.
        #[arg(short, long, default_value = "conf/verge.yaml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (version {}, {} listener(s), {} pool(s), {} route(s))",
                    config.display(),
                    c.version,
                    c.listeners.len(),
                    c.pools.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Control { config } => match control(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("verge control: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Serve {
            config,
            upgrade,
            daemon,
        } => match serve(&config, upgrade, daemon) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("verge: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

fn control(path: &std::path::Path) -> anyhow::Result<()> {
    let settings = verge::control::settings::ControlSettings::load(path)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listen = settings.listen;
    let server = verge::server::build_control_server(settings).context("cannot start")?;
    log::info!("verge control listening on {listen}");
    server.run_forever()
}

fn serve(path: &std::path::Path, upgrade: bool, daemon: bool) -> anyhow::Result<()> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let server =
        verge::server::build_server(&config, verge::server::RunOptions { upgrade, daemon })
            .context("cannot start")?;
    if !daemon {
        // Pingora writes the pid file only when it daemonizes; the upgrade recipe and service
        // managers need it in the foreground too.
        std::fs::write(&config.server.pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pid file {}", config.server.pid_file))?;
    }
    log::info!(
        "verge serving config {} on {}; admin on {}",
        config.version,
        config
            .listeners
            .iter()
            .map(|l| l.addr.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        config.admin.listen
    );
    server.run_forever()
}
