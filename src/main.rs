//! The `verge` command line: `serve` runs the proxy, `control` the control plane, `check`
//! validates a config; `reload` and `upgrade` signal a running node; `policy`, `purge` and
//! `nodes` talk to a running control plane; `verify` asks nodes' admin listeners.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod lifecycle;
mod ops;
mod verify;
mod verify_metrics;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use verge::config::{Config, ConfigErrors, Policy};

/// mimalloc rather than glibc's malloc: fewer instructions per request on the miss and
/// pass-through paths (Pingora allocates over a hundred times per request), and memory per
/// cached entry within the target; see docs/benchmarks.md ("Where a stored miss's time goes").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        #[arg(short, long, default_value = "conf/control/control.yaml")]
        config: PathBuf,
        /// Only validate the config (and its seed policy) and list every error.
        #[arg(long)]
        check: bool,
    },
    /// Read, push, list, compare or roll back the control plane's policy.
    Policy {
        #[command(subcommand)]
        action: ops::PolicyAction,
        #[command(flatten)]
        control: ops::ControlArgs,
    },
    /// Invalidate cached content on every node (hard unless --soft).
    Purge {
        #[arg(value_enum)]
        kind: ops::PurgeKind,
        /// URLs (`host/path?query`), `host/prefix`, hosts or tags.
        targets: Vec<String>,
        /// Mark stale (revalidate) instead of removing.
        #[arg(long)]
        soft: bool,
        /// Required with `all`.
        #[arg(long)]
        confirm_all: bool,
        /// Stage the purge (`all` is staged unless --at-once): one wave per --wave, a share of
        /// the live nodes (`10%`, counted from the first wave) or node ids (`edge-1,edge-2`),
        /// then the rest. Default for `all`: 10%, then the rest.
        #[arg(long = "wave", value_name = "SHARE|NODES")]
        waves: Vec<String>,
        /// Staged: how long to wait after every node of a wave applied it (default 60s).
        #[arg(long, value_name = "DURATION")]
        hold: Option<String>,
        /// Staged: how long a wave waits for its nodes before the purge stalls (default 5m).
        #[arg(long, value_name = "DURATION")]
        ack_timeout: Option<String>,
        /// Purge everything on every node at once (break-glass), not in waves.
        #[arg(long)]
        at_once: bool,
        /// With one `url`: the origin object's new ETag. Only entries carrying another version
        /// (or none) are invalidated; a node whose entry already carries it keeps it.
        #[arg(long, value_name = "ETAG")]
        expected_version: Option<String>,
        /// Return once every live node has applied the purge, or fail (exit 6) naming the
        /// nodes that have not within TIMEOUT (default 30s).
        #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, require_equals = true,
              default_missing_value = "30s")]
        wait: Option<String>,
        #[command(flatten)]
        control: ops::ControlArgs,
    },
    /// Ask each node's admin listener what it would serve for each URL (stored version, age,
    /// invalidations applied), without fetching from the origin, and name the nodes that would
    /// serve another version: the one given, else the origin's current ETag (--origin), else
    /// the one most nodes serve. Exit 1 if any.
    Verify {
        /// URLs (`host/path?query`).
        #[arg(required = true)]
        urls: Vec<String>,
        /// A node's admin listener (`host:port`); once per node.
        #[arg(long = "node", value_name = "ADMIN")]
        nodes: Vec<String>,
        /// Ask every node the control plane knows, at the admin address of its receipts.
        #[arg(long)]
        from_control: bool,
        /// The origin (`http://host:port`) whose current ETag of each URL is the expected one.
        #[arg(long, value_name = "URL")]
        origin: Option<String>,
        /// The version every node should serve: the origin object's current ETag.
        #[arg(long, value_name = "ETAG")]
        expected_version: Option<String>,
        /// Check again every INTERVAL until stopped.
        #[arg(long, value_name = "INTERVAL")]
        every: Option<String>,
        /// With --every: serve `verge_verify_divergent_nodes{class}` on ADDR.
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        control: ops::ControlArgs,
    },
    /// List staged purges, show one, or pause, resume or abort one.
    Staged {
        #[command(subcommand)]
        action: Option<ops::StagedAction>,
        #[command(flatten)]
        control: ops::ControlArgs,
    },
    /// Show every node: alive, late or dead, its applied policy version and invalidation
    /// sequence, its lag and when it last reported.
    Nodes {
        #[command(flatten)]
        control: ops::ControlArgs,
    },
    /// Reload the config file of the running node (SIGHUP to `server.pid_file`) and report
    /// whether it was applied. Listeners, admin, server, cache, access log and control
    /// settings need `verge upgrade` or a restart instead.
    Reload {
        /// Config file (the running node's).
        #[arg(short, long, default_value = "conf/verge.yaml")]
        config: PathBuf,
        /// How long to wait for the outcome, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Replace the running node by the binary on disk without closing its listening sockets
    /// (SIGUSR2 to `server.pid_file`); waits until the new process is ready.
    Upgrade {
        /// Config file (the running node's; the new process loads it again).
        #[arg(short, long, default_value = "conf/verge.yaml")]
        config: PathBuf,
        /// How long to wait for the new process, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Validate a config file and list every error; starts nothing.
    Check {
        /// Config file.
        #[arg(short, long, default_value = "conf/verge.yaml")]
        config: PathBuf,
        /// The file is a policy document (pools and routes), as pushed to `verge control`.
        #[arg(long)]
        policy: bool,
    },
}

fn main() -> ExitCode {
    verge::node::log_level::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Policy { action, control } => ops::policy(&control, action),
        Command::Purge {
            kind,
            targets,
            soft,
            confirm_all,
            waves,
            hold,
            ack_timeout,
            at_once,
            expected_version,
            wait,
            control,
        } => ops::purge(
            &control,
            kind,
            targets,
            ops::PurgeFlags {
                soft,
                confirm_all,
                expected_version,
                stages: ops::Stages {
                    waves,
                    hold,
                    ack_timeout,
                    at_once,
                },
            },
            wait,
        ),
        Command::Staged { action, control } => ops::staged(&control, action),
        Command::Nodes { control } => ops::nodes(&control),
        Command::Verify {
            urls,
            nodes,
            from_control,
            origin,
            expected_version,
            every,
            metrics_listen,
            control,
        } => {
            let every = match every.as_deref().map(verge::config::units::parse_duration) {
                Some(Err(e)) => {
                    eprintln!("verge: --every: {e}");
                    return ExitCode::from(2);
                }
                Some(Ok(d)) => Some(d),
                None => None,
            };
            let client = match from_control.then(|| ops::control_client(&control)) {
                Some(Err(e)) => {
                    eprintln!("verge: {e}");
                    return ExitCode::from(2);
                }
                Some(Ok(c)) => Some(c),
                None => None,
            };
            verify::verify(verify::VerifyArgs {
                urls,
                nodes,
                control: client,
                origin,
                expected_version,
                json: ops::wants_json(&control),
                every,
                metrics_listen,
            })
        }
        Command::Reload { config, timeout } => {
            lifecycle::reload(&config, Duration::from_secs(timeout))
        }
        Command::Upgrade { config, timeout } => {
            lifecycle::upgrade(&config, Duration::from_secs(timeout))
        }
        Command::Check {
            config,
            policy: true,
        } => check_policy(&config),
        Command::Control {
            config,
            check: true,
        } => match verge::control::settings::ControlSettings::load(&config) {
            Ok(s) => {
                println!(
                    "{}: ok (listen {}, {} token(s))",
                    config.display(),
                    s.listen,
                    s.tokens.len()
                );
                match &s.seed_policy {
                    Some(p) => check_policy(p),
                    None => ExitCode::SUCCESS,
                }
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Check {
            config,
            policy: false,
        } => match load_checked(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (version {}, {} listener(s), {} pool(s), {} route(s))",
                    config.display(),
                    c.version,
                    c.listeners.len(),
                    c.pools.len(),
                    c.routes.len()
                );
                print_warnings(&config, &c.warnings());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Control {
            config,
            check: false,
        } => match control(&config) {
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

/// Load and validate a node config, then check its filters and load every listener's
/// certificate and key.
fn load_checked(path: &std::path::Path) -> Result<Config, ConfigErrors> {
    let config = Config::load(path)?;
    config.check_filters(&[])?;
    verge::config::certificates::check_certificates(&config, SystemTime::now())?;
    Ok(config)
}

/// Validate a policy document file with the node's rules; exit 2 with every error.
fn check_policy(path: &std::path::Path) -> ExitCode {
    let result = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read: {e}"))
        .and_then(|text| {
            let doc = Policy::document_from_text(&text).map_err(|e| e.to_string())?;
            Policy::from_json(&doc).map_err(|e| e.to_string())
        });
    match result {
        Ok(p) => {
            println!(
                "{}: ok ({} pool(s), {} route(s))",
                path.display(),
                p.pools.len(),
                p.routes.len()
            );
            print_warnings(path, &p.warnings());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

/// `verge check`'s warnings, on stderr after the `ok` line: the config is valid and runs, but
/// something in it is probably not what was meant (a class budget its routes can exceed).
fn print_warnings(path: &std::path::Path, warnings: &[verge::config::classes::ConfigWarning]) {
    if warnings.is_empty() {
        return;
    }
    let n = warnings.len();
    eprintln!(
        "{}: {n} warning{}",
        path.display(),
        if n == 1 { "" } else { "s" }
    );
    for w in warnings {
        eprintln!("  {w}");
    }
}

fn control(path: &std::path::Path) -> anyhow::Result<()> {
    let settings = verge::control::settings::ControlSettings::load(path)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let listen = settings.listen;
    let shutdown = verge::server::ControlShutdown {
        grace_period: settings.grace_period,
        graceful_shutdown_timeout: settings.graceful_shutdown_timeout,
    };
    let server = verge::server::build_control_server(settings, shutdown).context("cannot start")?;
    log::info!("verge control listening on {listen}");
    server.run_forever()
}

fn serve(path: &std::path::Path, upgrade: bool, daemon: bool) -> anyhow::Result<()> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in config.warnings() {
        log::warn!("{}: {w}", path.display());
    }
    // the plain binary registers no filters: a route with `filters:` is refused here
    verge::Verge::builder(config)
        .options(verge::RunOptions { upgrade, daemon })
        .run()
        .context("cannot start")
}
