//! The config validator (`Config::from_yaml_str`, `src/config/`) and its agreement with the
//! policy validator the control plane and nodes use (`Policy::from_json`).
//!
//! Input: YAML text. Documents that would make the validator resolve a name or read a special
//! file are skipped (see `input::hermetic_yaml`).
//!
//! Invariants:
//! - the validator never panics, and a refusal lists at least one error, each with a message;
//! - a valid config round-trips: the same document written out again as YAML, or as JSON (the
//!   control plane's format), validates to the same config;
//! - its `upstream_defaults`/`pools`/`routes` part, sent as a control-plane policy, validates to
//!   the same pools and routes (when it has both: a node fed by a control plane may have none);
//! - a valid config builds a snapshot, and every route can match some request: its exact hosts
//!   and wildcard suffixes are what `canonical_host` produces, its path prefix is a path
//!   `check_path` accepts.

use super::input::hermetic_yaml;
use verge::config::{Config, HostPattern, Policy};
use verge::http_syntax::host::canonical_host;
use verge::http_syntax::target::check_path;
use verge::snapshot::Snapshot;

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let doc: Option<serde_yaml::Value> = serde_yaml::from_str(text).ok();
    if doc.as_ref().is_some_and(|d| !hermetic_yaml(d)) {
        return;
    }
    let config = match Config::from_yaml_str(text) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.errors.is_empty(), "refused without an error");
            for err in &e.errors {
                assert!(!err.message.is_empty(), "an error without a message");
            }
            return;
        }
    };
    let Some(doc) = doc else {
        // Only blank text is valid without being a YAML document.
        assert!(text.trim().is_empty(), "valid config that is not YAML");
        return;
    };
    round_trips(&config, &doc);
    policy_agrees(&config, &doc);
    routes_reachable(&config);
    if let Err(e) = Snapshot::build(&config, None) {
        panic!("a valid config does not build: {e:?}");
    }
}

/// The config without what depends on the text's bytes (the version hash) or its origin.
fn comparable(c: &Config) -> String {
    let mut c = c.clone();
    c.version.clear();
    c.source = None;
    format!("{c:?}")
}

fn round_trips(config: &Config, doc: &serde_yaml::Value) {
    // Without a version (or with `version: null`) it is a hash of the text, which changes.
    let explicit_version = doc.get("version").is_some_and(|v| !v.is_null());
    let Ok(yaml) = serde_yaml::to_string(doc) else {
        return;
    };
    match Config::from_yaml_str(&yaml) {
        Ok(again) => {
            assert_eq!(comparable(&again), comparable(config), "YAML round trip");
            if explicit_version {
                assert_eq!(again.version, config.version);
            }
        }
        Err(e) => panic!("written out again, a valid config is refused: {e}\n{yaml}"),
    }
    // JSON cannot hold every YAML document (non-string keys, tags); those are skipped.
    let Ok(json) = serde_yaml::from_value::<serde_json::Value>(doc.clone()) else {
        return;
    };
    let Ok(json_text) = serde_json::to_string(&json) else {
        return;
    };
    match Config::from_yaml_str(&json_text) {
        Ok(again) => assert_eq!(comparable(&again), comparable(config), "JSON round trip"),
        Err(e) => panic!("as JSON, a valid config is refused: {e}\n{json_text}"),
    }
}

fn policy_agrees(config: &Config, doc: &serde_yaml::Value) {
    // A node fed by a control plane may leave pools and routes out; a policy may not.
    if config.pools.is_empty() || config.routes.is_empty() {
        return;
    }
    let mut policy = serde_json::Map::new();
    for key in ["upstream_defaults", "pools", "routes"] {
        let Some(v) = doc.get(key) else { continue };
        let Ok(v) = serde_yaml::from_value::<serde_json::Value>(v.clone()) else {
            return;
        };
        policy.insert(key.to_string(), v);
    }
    match Policy::from_json(&serde_json::Value::Object(policy)) {
        Ok(p) => {
            assert_eq!(format!("{:?}", p.pools), format!("{:?}", config.pools));
            assert_eq!(format!("{:?}", p.routes), format!("{:?}", config.routes));
        }
        Err(e) => panic!("the config's own policy part is refused as a policy: {e}"),
    }
}

fn routes_reachable(config: &Config) {
    for route in &config.routes {
        for host in &route.hosts {
            match host {
                HostPattern::Exact(h) => assert_eq!(
                    canonical_host(h).as_deref(),
                    Some(h.as_str()),
                    "route {:?}: no request host is ever {h:?}",
                    route.name
                ),
                HostPattern::Wildcard(suffix) => {
                    let example = format!("a{suffix}");
                    assert_eq!(
                        canonical_host(&example).as_deref(),
                        Some(example.as_str()),
                        "route {:?}: no request host ends in {suffix:?}",
                        route.name
                    );
                }
                HostPattern::Any => {}
            }
        }
        assert_eq!(
            check_path("GET", &route.path_prefix),
            Ok(()),
            "route {:?}: every request under {:?} is refused",
            route.name,
            route.path_prefix
        );
    }
}
