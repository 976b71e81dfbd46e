//! In-place config reload (SIGHUP, `verge reload`): re-read the config file, validate it, and
//! swap a new snapshot in the way a control-plane update does. Pools whose spec did not change
//! keep their health state and upstream connections; the cache is untouched. The access log's
//! destination is opened anew (another file, on or off, or the same path after logrotate moved
//! it) before the swap. What only a new process can change (sockets, threads, the cache's
//! size...) is refused, naming the keys.

use crate::access_log::LogSink;
use crate::config::{Config, ConfigErrors};
use crate::metrics::METRICS;
use crate::node::poller::config_for;
use crate::node::writer::SnapshotWriter;
use crate::snapshot::Snapshot;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a reload was refused; the old config keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The node's config did not come from a file.
    #[error("this node's config was not loaded from a file; nothing to reload")]
    NoFile,
    /// The file does not validate.
    #[error("{0}")]
    Invalid(ConfigErrors),
    /// The file changes settings that only a new process can apply.
    #[error(
        "{} changed: a reload cannot apply {}; use a binary upgrade (`verge upgrade`) or a restart",
        .0.join(", "),
        if .0.len() == 1 { "it" } else { "them" }
    )]
    NeedsRestart(Vec<String>),
    /// The file validates but its pools could not be built.
    #[error("cannot build the new snapshot: {0}")]
    Build(String),
    /// The access log's destination cannot be opened; the old one keeps being written.
    #[error("access_log.path: cannot open {path}: {reason}")]
    AccessLog {
        /// The file (`-`: stdout).
        path: String,
        /// Why.
        reason: String,
    },
}

impl ReloadError {
    /// The `outcome` label of `verge_config_reloads_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ReloadError::NoFile | ReloadError::Invalid(_) => "invalid",
            ReloadError::NeedsRestart(_) => "needs_restart",
            ReloadError::Build(_) | ReloadError::AccessLog { .. } => "failed",
        }
    }

    /// One line per problem, for logs and `/status`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(e) => e.to_string().lines().map(str::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// The keys of `new` that differ from `running` and that only a new process can apply: the
/// listening sockets and their TLS and limits, the admin listener, the `server:` settings
/// Pingora reads at start, the cache (its memory is allocated once), and the control-plane link.
/// (The access log's `path` is not among them: a reload opens it anew.)
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<String> {
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let mut changed = Vec::new();
    if running.listeners.len() != new.listeners.len() {
        changed.push("listeners".to_string());
    } else {
        // error pages and access rules are read per request from the snapshot, and
        // certificates (with the minimum version and ALPN) are re-read from it
        // (`tls_certificates`) for new handshakes: a reload applies them
        let sockets = |l: &crate::config::ListenerSpec| crate::config::ListenerSpec {
            error_pages: Default::default(),
            deny: Vec::new(),
            allow: Vec::new(),
            // only whether it terminates TLS: everything in its TLS spec applies on a reload
            tls: l.tls.as_ref().map(|_| crate::config::TlsSpec {
                cert: Default::default(),
                key: Default::default(),
                certificates: Vec::new(),
                min_version: Default::default(),
                alpn: Default::default(),
            }),
            ..l.clone()
        };
        for (i, (a, b)) in running.listeners.iter().zip(&new.listeners).enumerate() {
            if differs(&sockets(a), &sockets(b)) {
                changed.push(format!("listeners[{i}]"));
            }
        }
    }
    if running.admin.listen != new.admin.listen {
        changed.push("admin.listen".into());
    }
    let (a, b) = (&running.server, &new.server);
    for (key, same) in [
        ("server.threads", a.threads == b.threads),
        ("server.grace_period", a.grace_period == b.grace_period),
        (
            "server.graceful_shutdown_timeout",
            a.graceful_shutdown_timeout == b.graceful_shutdown_timeout,
        ),
        ("server.pid_file", a.pid_file == b.pid_file),
        ("server.upgrade_sock", a.upgrade_sock == b.upgrade_sock),
        ("server.error_log", a.error_log == b.error_log),
        ("server.ca_file", a.ca_file == b.ca_file),
        ("cache", running.cache == new.cache),
        ("control", !differs(&running.control, &new.control)),
    ] {
        if !same {
            changed.push(key.to_string());
        }
    }
    changed
}

/// The result of one reload attempt, as `/status` shows it.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// When it ran (Unix seconds).
    pub at_unix: u64,
    /// `success`, or the refusal's outcome label.
    pub outcome: &'static str,
    /// The config version now served from the file (success only).
    pub version: Option<String>,
    /// What was wrong (empty on success).
    pub errors: Vec<String>,
}

/// Reloads one node's config file and remembers how the last attempt went.
pub struct FileReloader {
    path: Option<PathBuf>,
    writer: Arc<SnapshotWriter>,
    last: Mutex<(u64, Option<ReloadReport>)>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl FileReloader {
    /// A reloader for the file the writer's config came from (`Config::source`).
    pub fn new(writer: Arc<SnapshotWriter>) -> Arc<Self> {
        Arc::new(FileReloader {
            path: writer.base().source,
            writer,
            last: Mutex::new((0, None)),
        })
    }

    /// Re-read, validate and apply the file; returns the new config version. On a node with a
    /// `control:` block the control plane's policy, when one is in force, keeps its pools and
    /// routes (applied on the new file); the file's pools and routes serve only while there is
    /// none, as at start.
    pub fn reload(&self) -> Result<String, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let new = Config::load(path).map_err(ReloadError::Invalid)?;
        // certificates are swapped in after the reload: refuse ones that would not serve
        crate::config::certificates::check_certificates(&new, std::time::SystemTime::now())
            .map_err(ReloadError::Invalid)?;
        new.check_filters(&self.writer.filters())
            .map_err(ReloadError::Invalid)?;
        self.writer.update(|current, base| {
            let changed = restart_only_changes(base, &new);
            if !changed.is_empty() {
                return Err(ReloadError::NeedsRestart(changed));
            }
            let serving = match &current.control.policy {
                Some(doc) => config_for(&new, doc, current.control.position.policy_version)
                    .map_err(|e| ReloadError::Build(e.to_string()))?,
                None => new.clone(),
            };
            let mut snapshot =
                Snapshot::build_with(&serving, Some(current), current.control.clone())
                    .map_err(|e| ReloadError::Build(e.to_string()))?;
            // opened before the swap: one that cannot be is refused with nothing changed
            snapshot.access_log = match &serving.access_log {
                Some(spec) => {
                    Some(
                        LogSink::open(&spec.target).map_err(|e| ReloadError::AccessLog {
                            path: spec.target.to_string(),
                            reason: e.to_string(),
                        })?,
                    )
                }
                None => None,
            };
            Ok(Some((snapshot, Some(new.clone()))))
        })?;
        crate::node::log_level::apply(new.server.log_level);
        METRICS.config_info.reset();
        METRICS
            .config_info
            .with_label_values(&[&new.version])
            .set(1);
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        METRICS.config_loaded.set(now);
        METRICS.config_last_reload_success.set(now);
        Ok(new.version)
    }

    /// [`reload`](Self::reload), then log, count and remember the outcome.
    pub fn reload_and_record(&self) -> Result<String, ReloadError> {
        let result = self.reload();
        let file = self
            .path
            .as_ref()
            .map_or_else(String::new, |p| p.display().to_string());
        let report = match &result {
            Ok(version) => {
                let s = self.writer.snapshot().load();
                log::info!(
                    "config reloaded from {file}: version {version} ({} pool(s), {} route(s))",
                    s.pools.len(),
                    s.routes.len()
                );
                ReloadReport {
                    at_unix: unix_now(),
                    outcome: "success",
                    version: Some(version.clone()),
                    errors: Vec::new(),
                }
            }
            Err(e) => {
                let lines = e.lines();
                log::error!(
                    "config reload from {file} refused, the old config keeps serving: {}",
                    lines.join("; ")
                );
                ReloadReport {
                    at_unix: unix_now(),
                    outcome: e.outcome(),
                    version: None,
                    errors: lines,
                }
            }
        };
        METRICS
            .config_reloads
            .with_label_values(&[report.outcome])
            .inc();
        let mut last = self.last.lock();
        last.0 += 1;
        last.1 = Some(report);
        result
    }

    /// The `reload` object of `/status`: how many attempts, and the last one.
    pub fn status_json(&self) -> Value {
        let last = self.last.lock();
        json!({
            "attempts": last.0,
            "last": last.1.as_ref().map(|r| json!({
                "at_unix": r.at_unix,
                "outcome": r.outcome,
                "version": r.version,
                "errors": r.errors,
            })),
        })
    }
}

/// Reloads the config file on every SIGHUP.
pub struct ReloadService {
    reloader: Arc<FileReloader>,
}

impl ReloadService {
    /// The SIGHUP handler for `reloader`.
    pub fn new(reloader: Arc<FileReloader>) -> Self {
        ReloadService { reloader }
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot handle SIGHUP, config reload is unavailable: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    log::info!("SIGHUP received, reloading the config file");
                    // the outcome is logged, counted and shown in /status
                    let _ = self.reloader.reload_and_record();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listeners: [{listen: \"127.0.0.1:1\"}]\npools: {a: {backends: [\"127.0.0.1:2\"]}}\nroutes: [{hosts: [x.com], pool: a}]\n";

    #[test]
    fn only_what_a_new_process_needs_is_named() {
        let a = Config::from_yaml_str(BASE).expect("a");
        let routes = Config::from_yaml_str(&BASE.replace("x.com", "y.com")).expect("routes");
        assert!(restart_only_changes(&a, &routes).is_empty());
        let moved = Config::from_yaml_str(&format!(
            "{}server: {{threads: 7}}\ncache: {{memory: 64MiB}}\n",
            BASE.replace("127.0.0.1:1", "127.0.0.1:3")
        ))
        .expect("moved");
        assert_eq!(
            restart_only_changes(&a, &moved),
            vec!["listeners[0]", "server.threads", "cache"]
        );
        let pages = Config::from_yaml_str(&BASE.replace(
            "\"127.0.0.1:1\"}",
            "\"127.0.0.1:1\", error_pages: {404: {body: gone}}}",
        ))
        .expect("pages");
        assert!(
            restart_only_changes(&a, &pages).is_empty(),
            "a listener's error pages apply on reload"
        );
        let log = |yaml: &str| {
            Config::from_yaml_str(&format!("{BASE}access_log: {yaml}\n")).expect("log")
        };
        let json = log("{path: '-', fields: [status]}");
        assert!(
            restart_only_changes(&json, &log("{path: '-', format: combined}")).is_empty(),
            "the format applies on reload"
        );
        assert!(
            restart_only_changes(&json, &a).is_empty(),
            "turning the log off applies on reload"
        );
        let file = format!("{{path: {:?}}}", std::env::temp_dir().join("a.log"));
        assert!(
            restart_only_changes(&json, &log(&file)).is_empty(),
            "another file applies on reload"
        );
    }
}
