//! The node's background services, each one a small loop over the current snapshot: the
//! control-plane poller (sidecar), active health checks, and the sweep that frees invalidated
//! entries.

pub mod health_checks;
pub mod poller;
pub mod reclaim;
