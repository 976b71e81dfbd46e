//! verge as a library: [`Verge::builder`] takes a validated config and user filters, and runs.
//!
//! ```no_run
//! use verge::{async_trait, Config, Filter, FilterCtx, FilterError, ResponseHeader, Verge};
//!
//! /// Adds `x-edge: verge` to every response.
//! struct Tag;
//!
//! #[async_trait]
//! impl Filter for Tag {
//!     fn name(&self) -> &str {
//!         "tag"
//!     }
//!
//!     async fn on_response(
//!         &self,
//!         resp: &mut ResponseHeader,
//!         _ctx: &mut FilterCtx<'_>,
//!     ) -> Result<(), FilterError> {
//!         resp.insert_header("x-edge", "verge")
//!             .map_err(|e| FilterError::internal(e.to_string()))
//!     }
//! }
//!
//! fn main() -> anyhow::Result<()> {
//!     let config = Config::load("verge.yaml".as_ref())?;
//!     Verge::builder(config).filter(Tag).run()?;
//!     Ok(())
//! }
//! ```

use crate::config::Config;
use crate::node::signals::{NodeSignals, Successor};
use crate::proxy::filter::{Filter, Filters, RegistrationError};
use crate::server::{build_server_with_filters, RunOptions, ServeError};
use pingora_core::server::{RunArgs, Server};
use std::time::Duration;

/// Why verge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The filters cannot be registered together (a bad or repeated name).
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    /// The server could not be assembled, or routes select filters that are not registered.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The pid file could not be written.
    #[error("cannot write pid file {path}: {source}")]
    PidFile {
        /// `server.pid_file`.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
}

/// Collects the config, the user filters (in the order they run) and the run options.
pub struct VergeBuilder {
    config: Config,
    filters: Vec<Box<dyn Filter>>,
    options: RunOptions,
}

impl VergeBuilder {
    /// Register a filter. Filters run in registration order on every route, unless a route's
    /// `filters: [name, ...]` selects some of them.
    pub fn filter(mut self, filter: impl Filter) -> Self {
        self.filters.push(Box::new(filter));
        self
    }

    /// Pingora's process options (graceful upgrade, daemon). Default: neither.
    pub fn options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }

    /// Check the filter names and every route's `filters:` list against them.
    pub fn build(self) -> Result<Verge, StartError> {
        let filters = Filters::new(self.filters)?;
        self.config
            .check_filters(&filters.names())
            .map_err(ServeError::Filters)?;
        Ok(Verge {
            config: self.config,
            filters,
            options: self.options,
        })
    }

    /// [`build`](Self::build), then [`Verge::run`].
    pub fn run(self) -> Result<(), StartError> {
        self.build()?.run()
    }
}

/// A verge node ready to run: a validated config and the filters registered for it.
pub struct Verge {
    config: Config,
    filters: Filters,
    options: RunOptions,
}

impl Verge {
    /// Start describing a node that serves `config`.
    pub fn builder(config: Config) -> VergeBuilder {
        VergeBuilder {
            config,
            filters: Vec::new(),
            options: RunOptions::default(),
        }
    }

    /// The config this node serves.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The registered filters.
    pub fn filters(&self) -> &Filters {
        &self.filters
    }

    /// Assemble the Pingora server (listeners, admin, health checks, control poller) without
    /// running it, e.g. to add services of your own or to run it with your own shutdown signal.
    pub fn server(&self) -> Result<Server, StartError> {
        Ok(build_server_with_filters(
            &self.config,
            self.options,
            &self.filters,
        )?)
    }

    /// Serve until a signal stops the process (SIGTERM: graceful; SIGQUIT: hand the listeners
    /// to a new process; SIGUSR2: start this binary again with `--upgrade` and hand the
    /// listeners to it; SIGHUP: reload the config file, see [`crate::node::reload`]). Writes
    /// `server.pid_file` first. Returns only when startup fails; on shutdown the process exits.
    pub fn run(self) -> Result<(), StartError> {
        let server = self.server()?;
        let signals = NodeSignals::new(self.successor());
        let pid_file = &self.config.server.pid_file;
        if !self.options.daemon {
            // Pingora writes the pid file only when it daemonizes; the upgrade recipe and
            // service managers need it in the foreground too.
            std::fs::write(pid_file, format!("{}\n", std::process::id())).map_err(|source| {
                StartError::PidFile {
                    path: pid_file.clone(),
                    source,
                }
            })?;
        }
        log::info!(
            "verge serving config {} on {}; admin on {}; filters: [{}]",
            self.config.version,
            self.config
                .listeners
                .iter()
                .map(|l| l.addr.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.config.admin.listen,
            self.filters.names().join(", ")
        );
        server.run(RunArgs {
            shutdown_signal: Box::new(signals),
        });
        // the disk tier's close, if the runtimes stopped before its service finished it
        crate::node::disk_flush::close_at_exit();
        std::process::exit(0)
    }

    /// The process SIGUSR2 starts: this binary (as on disk now) with this process's arguments,
    /// `--upgrade` instead of any given.
    fn successor(&self) -> Successor {
        let program = std::env::current_exe()
            .unwrap_or_else(|_| std::env::args().next().unwrap_or_default().into());
        let args = std::env::args()
            .skip(1)
            .filter(|a| a != "--upgrade" && a != "-u")
            .collect();
        Successor {
            program,
            args,
            upgrade_sock: self.config.server.upgrade_sock.clone().into(),
            ready_within: SUCCESSOR_READY_WITHIN,
        }
    }
}

/// How long a binary upgrade waits for the new process to load its config and ask for the
/// listening sockets.
const SUCCESSOR_READY_WITHIN: Duration = Duration::from_secs(30);
