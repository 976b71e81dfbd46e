//! verge: a programmable edge proxy and shared HTTP cache on Pingora.
//!
//! Request flow (one listener):
//!
//! ```text
//! client ─► ingress (head deadline, size/count limits, framing checks)
//!        ─► hit lane                    a plain fresh hit is answered here, decided by the
//!                                       same functions as the phases below; the rest goes on
//!        ─► EdgeProxy::request_filter   route by canonical host + longest path prefix,
//!                                       then user filters' on_request (may answer, re-route)
//!        ─► cache lookup                key: scheme + host + path?query + variant
//!        ─► EdgeProxy::upstream_peer    pick a healthy, non-ejected backend of the route's pool
//!        ─► upstream_request_filter     forwarding headers, prefix strip, route header edits,
//!                                       user filters' on_upstream_request
//!        ─► origin ─► response_filter   route response header edits, on_response ─► client
//!        ─► logging                     access log, metrics (the finish the hit lane shares)
//! ```
//!
//! Extending verge in Rust: implement [`Filter`] and register it with
//! [`Verge::builder`]`(config).filter(MyFilter).run()`; see [`proxy::filter`] and `examples/`.
//!
//! Crate map, lowest layer first (`tests/layering.rs` keeps imports pointing down):
//! - [`http_syntax`], [`unix_time`], [`metrics`]: the leaves: canonical hosts, target checks,
//!   field values; timestamps; every metric name, in one place.
//! - [`config`]: raw YAML types, validation with every error's key path, validated types.
//! - [`routing`], [`access_log`]: the routing table; the JSON access log.
//! - [`cache`]: in-memory storage, cache key and per-route key rules, Vary, the request view,
//!   RFC 9111 rules, the hit decision, `Cache-Status`, invalidations and their index.
//! - [`upstream`]: pools, selection, passive ejection, health-check probes.
//! - [`control`]: the control plane, its client and its wire format.
//! - [`snapshot`]: the immutable routing table + pools behind one `ArcSwap`.
//! - [`node`]: background services over the snapshot (control poller, health checks, reclaim).
//! - [`proxy`]: the `ProxyHttp` implementation and the hit lane, and the modules they share.
//! - [`ingress`]: the HTTP/1 front door that enforces head limits before Pingora parses.
//! - [`admin`]: `/healthz`, `/readyz`, `/status`, `/metrics`.
//! - [`server`]: assembling the Pingora server from a config.
//! - [`embed`]: [`Verge`], the library entry point (config + user filters → running node).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod config;
pub mod control;
pub mod embed;
pub mod http_syntax;
pub mod ingress;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod unix_time;
pub mod upstream;

pub use async_trait::async_trait;
pub use config::Config;
pub use embed::{StartError, Verge, VergeBuilder};
pub use http;
pub use proxy::filter::{
    percent_bucket, Decision, Filter, FilterCtx, FilterError, Filters, Phase, Reply, RequestHeader,
    ResponseHeader,
};
pub use server::RunOptions;
