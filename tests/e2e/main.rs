//! End-to-end tests: the real verge binary on loopback, in front of real counting origins.

mod support;

mod admin;
mod balancing;
mod binary_upgrade;
mod cache;
mod cache_rules;
mod config_files;
mod conformance_rules;
mod control;
mod control_limits;
mod directives;
mod edge;
mod edge_compression;
mod edge_logs;
mod edge_pages;
mod edge_rewrites;
mod edge_tls;
mod eviction;
mod filters;
mod get_body;
mod h2_limits;
mod hardening;
mod health;
mod hit_lane;
mod hit_lane_parity;
mod limits;
mod origin_deadline;
mod origin_faults;
mod readiness;
mod refresh;
mod reload;
mod routing;
mod streaming;
mod tls;
mod upgrade;
