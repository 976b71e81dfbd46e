//! End-to-end tests: the real verge binary on loopback, in front of real counting origins.

mod bad_origin;
mod harness;
mod origin;

mod admin;
mod balancing;
mod cache;
mod cache_rules;
mod config_files;
mod conformance_rules;
mod control;
mod directives;
mod eviction;
mod fast_hit;
mod filters;
mod get_body;
mod h2_limits;
mod health;
mod limits;
mod origin_deadline;
mod origin_faults;
mod refresh;
mod routing;
mod streaming;
mod tls;
mod upgrade;
