//! The node's background services, each one a small loop over the current snapshot: the
//! control-plane poller (sidecar), active health checks, the sweep that frees invalidated
//! entries, config reloads on SIGHUP, and the watch that every listener is bound; plus the
//! snapshot writer they share, readiness, and the signals a running node answers.

pub mod disk_flush;
pub mod health_checks;
pub mod listeners;
pub mod log_level;
pub mod poller;
pub mod readiness;
pub mod reclaim;
pub mod reload;
pub mod signals;
pub mod state_file;
pub mod tls_certificates;
pub mod writer;
