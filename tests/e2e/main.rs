//! End-to-end tests: the real verge binary on loopback, in front of real counting origins.

mod harness;
mod origin;

mod admin;
mod balancing;
mod cache;
mod cache_rules;
mod config_files;
mod control;
mod eviction;
mod filters;
mod health;
mod limits;
mod routing;
mod tls;
