//! Configuration: raw YAML types, validation that reports every error with its key path, and loading.

pub mod certificates;
pub mod classes;
mod compression;
mod edge;
pub mod keys;
mod listener;
mod log_format;
mod model;
mod raw;
pub mod relative_paths;
pub mod secret;
mod tier;
pub mod units;
mod validate;

pub use compression::*;
pub use edge::*;
pub use log_format::*;
pub use model::*;
pub use tier::*;
#[cfg(test)]
pub(crate) use validate::parse_host_pattern;
pub(crate) use validate::valid_name;

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config, at a key path such as `routes[2].pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: a key path such as `routes[2].pool` (empty for the whole document).
    pub path: String,
    /// What is wrong, and what would be right.
    pub message: String,
    /// The line of the config text it is on (1-based), when the config came as text.
    pub line: Option<usize>,
}

impl ConfigError {
    /// An error at a key path, without a line.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
            line: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        match self.line {
            Some(line) => write!(f, " (line {line})"),
            None => Ok(()),
        }
    }
}

/// Every problem found in one config, optionally with the file it came from.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    /// The file the config came from, if any.
    pub file: Option<PathBuf>,
    /// Every error, in document order.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Errors not tied to a file.
    pub fn new(errors: Vec<ConfigError>) -> Self {
        ConfigErrors { file: None, errors }
    }

    fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        match &self.file {
            Some(p) => writeln!(
                f,
                "{}: {n} error{}",
                p.display(),
                if n == 1 { "" } else { "s" }
            )?,
            None => writeln!(f, "config: {n} error{}", if n == 1 { "" } else { "s" })?,
        }
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// The listener named `name`, if there is one.
    pub fn listener(&self, name: &str) -> Option<&ListenerSpec> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// Parse and validate YAML text.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigErrors> {
        validate::validate_yaml(text, None).map_err(ConfigErrors::new)
    }

    /// Read, parse and validate a config file; errors name the file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::new(vec![ConfigError::new("", format!("cannot read file: {e}"))])
                .in_file(path)
        })?;
        // paths in the file are read from its directory
        let base = path.parent().filter(|d| !d.as_os_str().is_empty());
        let mut config =
            validate::validate_yaml(&text, base).map_err(|e| ConfigErrors::new(e).in_file(path))?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Check every `routes[].filters` name against the filters this binary registered
    /// (`registered`, in registration order); errors name the route key and, when the config
    /// came from a file, the file.
    pub fn check_filters(&self, registered: &[&str]) -> Result<(), ConfigErrors> {
        let errors = unknown_filters(&self.routes, registered);
        if errors.is_empty() {
            return Ok(());
        }
        let errors = ConfigErrors::new(errors);
        Err(match &self.source {
            Some(path) => errors.in_file(path),
            None => errors,
        })
    }

    /// The same config with its pools and routes replaced by a control plane's policy, and its
    /// tier ring too when the policy has one (the node keeps its own id and hop key).
    pub fn with_policy(&self, policy: &Policy) -> Config {
        let tier = self.tier.as_ref().map(|t| match &policy.tier {
            Some(ring) => TierSpec {
                ring: Some(ring.clone()),
                ..t.clone()
            },
            None => t.clone(),
        });
        Config {
            pools: policy.pools.clone(),
            routes: policy.routes.clone(),
            classes: policy.classes.clone(),
            tier,
            ..self.clone()
        }
    }

    /// Routes whose class budget their configuration can exceed (`verge check` prints them).
    pub fn warnings(&self) -> Vec<classes::ConfigWarning> {
        classes::budget_warnings(&self.routes, &self.classes)
    }

    /// The pool a route points at (validation guarantees it exists).
    pub fn pool(&self, name: &str) -> Option<&PoolSpec> {
        self.pools.get(name)
    }
}

/// `routes[i].filters[j]` errors for names not in `registered`.
pub(crate) fn unknown_filters(routes: &[RouteSpec], registered: &[&str]) -> Vec<ConfigError> {
    let known = if registered.is_empty() {
        "this binary registers no filters (the plain verge binary has none: filters come from \
         a Rust program built with verge::Verge::builder)"
            .to_string()
    } else {
        format!("registered: {}", registered.join(", "))
    };
    let mut errors = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        for (j, name) in route.filters.iter().flatten().enumerate() {
            if !registered.contains(&name.as_str()) {
                errors.push(ConfigError::new(
                    format!("routes[{i}].filters[{j}]"),
                    format!("unknown filter {name:?}; {known}"),
                ));
            }
        }
    }
    errors
}

impl Policy {
    /// Validate a policy document given as JSON (the control plane's wire format), with the same
    /// rules a node applies to its config file.
    pub fn from_json(value: &serde_json::Value) -> Result<Policy, ConfigErrors> {
        let one = |message: String| ConfigErrors::new(vec![ConfigError::new("", message)]);
        if !value.is_object() {
            return Err(one("a policy document must be a JSON object".into()));
        }
        let yaml = serde_yaml::to_value(value).map_err(|e| one(e.to_string()))?;
        validate::validate_policy(yaml).map_err(ConfigErrors::new)
    }

    /// Routes whose class budget their configuration can exceed (`verge check` prints them).
    pub fn warnings(&self) -> Vec<classes::ConfigWarning> {
        classes::budget_warnings(&self.routes, &self.classes)
    }

    /// Parse a policy document written as YAML (or JSON) text into its JSON form, without
    /// validating it: what `verge policy push` sends.
    pub fn document_from_text(text: &str) -> Result<serde_json::Value, ConfigErrors> {
        serde_yaml::from_str::<serde_json::Value>(text).map_err(|e| {
            let mut error = ConfigError::new("", e.to_string());
            error.line = e.location().map(|l| l.line());
            ConfigErrors::new(vec![error])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listeners:
  - listen: 127.0.0.1:8080
pools:
  web:
    backends: ["127.0.0.1:9000", {addr: "127.0.0.1:9001", weight: 3}]
    health_check: {type: http, path: /health, interval: 1s}
  api:
    backends: ["127.0.0.1:9100"]
    selection: consistent
    hash_key: header:x-user
routes:
  - hosts: [example.com, "*.example.com"]
    pool: web
  - hosts: [example.com]
    path: /api
    pool: api
    strip_prefix: true
    request_headers: {set: {x-env: prod}, remove: [x-debug]}
"#;

    #[test]
    fn good_config_validates() {
        let c = Config::from_yaml_str(GOOD).expect("valid");
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.pools["web"].backends[1].weight, 3);
        assert_eq!(c.pools["web"].timeouts.connect.as_secs(), 3);
        assert!(matches!(
            c.pools["api"].selection,
            Selection::Consistent(HashKey::Header(_))
        ));
        assert!(c.version.starts_with("sha-"));
        assert_eq!(c.server.grace_period.as_secs(), 5);
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let bad = r#"
listeners:
  - listen: nonsense
  - listen: 127.0.0.1:8080
    bogus: 1
pools:
  web:
    backends: []
  ok:
    backends: ["127.0.0.1:1"]
    selection: fastest
routes:
  - hosts: [example.com]
    pool: api
  - hosts: ["bad host"]
    path: nope
    pool: ok
  - hosts: [a.com]
    pool: ok
    timeouts: {connect: soon}
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let has = |p: &str| text.iter().any(|t| t.starts_with(p));
        assert!(has("listeners[0].listen"), "{text:#?}");
        assert!(has("listeners[1]: unknown field `bogus`"), "{text:#?}");
        assert!(has("pools.web.backends"), "{text:#?}");
        assert!(has("pools.ok.selection"), "{text:#?}");
        assert!(has("routes[0].pool: unknown pool \"api\""), "{text:#?}");
        assert!(has("routes[1].hosts[0]"), "{text:#?}");
        assert!(has("routes[1].path"), "{text:#?}");
        assert!(has("routes[2]"), "{text:#?}");
    }

    #[test]
    fn unknown_top_level_key() {
        let errs = Config::from_yaml_str("lisners: []\n")
            .expect_err("typo")
            .errors;
        assert!(errs[0].message.contains("unknown field `lisners`"));
    }

    /// `(path, message, line)` of every error, in order.
    fn report(text: &str) -> Vec<(String, String, Option<usize>)> {
        Config::from_yaml_str(text)
            .expect_err("invalid")
            .errors
            .into_iter()
            .map(|e| (e.path, e.message, e.line))
            .collect()
    }

    #[test]
    fn several_errors_in_one_route_are_all_reported() {
        let errs = report(
            r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {web: {backends: ["127.0.0.1:1"]}}
routes:
  - hosts: ["bad host", a.com]
    path: nope
    pool: api
    strip_prefix: maybe
    timeouts: {read: forever, connect: 0s}
    cache: {max_ttl: 1s, default_ttl: 1m, key: {query: shuffled}}
"#,
        );
        let paths: Vec<&str> = errs.iter().map(|(p, _, _)| p.as_str()).collect();
        // type errors first (each found by decoding), then what the checks of the rest find
        assert_eq!(
            paths,
            [
                "routes[0].strip_prefix",
                "routes[0].timeouts.read",
                "routes[0].hosts[0]",
                "routes[0].path",
                "routes[0].pool",
                "routes[0].timeouts.connect",
                "routes[0].cache.key.query",
                "routes[0].cache.default_ttl",
            ],
            "{errs:#?}"
        );
        assert!(errs[0].1.contains("expected a boolean"), "{errs:#?}");
        assert!(
            errs[1].1.starts_with("invalid duration \"forever\""),
            "{errs:#?}"
        );
        let lines: Vec<Option<usize>> = errs.iter().map(|(_, _, l)| *l).collect();
        assert_eq!(lines, [8, 9, 5, 6, 7, 9, 10, 10].map(Some), "{errs:#?}");
    }

    #[test]
    fn errors_carry_their_full_key_path() {
        let errs = report(
            r#"
listeners: [{listen: "127.0.0.1:8080", limits: {h2: {stream_window: lots}}}]
pools:
  demo:
    backends: ["127.0.0.1:1", {addr: "127.0.0.1:2", weight: heavy}, 42, {adr: "127.0.0.1:3"}]
    health_check: {interval: soon}
routes:
  - {hosts: [a.com], pool: demo, timeouts: {read: forever}}
  - {hosts: [b.com], pool: demo, cache: {key: {headers: [[x]]}}}
"#,
        );
        let paths: Vec<&str> = errs.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].limits.h2.stream_window",
                "pools.demo.backends[1].weight",
                "pools.demo.backends[2]",
                "pools.demo.backends[3]",
                "pools.demo.backends[3]",
                "pools.demo.health_check.interval",
                "routes[0].timeouts.read",
                "routes[1].cache.key.headers[0]",
            ],
            "{errs:#?}"
        );
        assert!(errs[3].1.starts_with("unknown field `adr`"), "{errs:#?}");
        assert_eq!(errs[4].1, "missing field `addr`", "{errs:#?}");
        let text =
            Config::from_yaml_str("routes: [{hosts: [a.com], pool: p, timeouts: {read: x}}]")
                .expect_err("invalid")
                .to_string();
        assert!(
            text.contains("\n  routes[0].timeouts.read: invalid duration \"x\""),
            "{text}"
        );
        // a policy (JSON, no text to number) gets the same paths, without lines
        let policy = serde_json::json!({
            "pools": {"demo": {"backends": ["127.0.0.1:1", {"addr": "127.0.0.1:2", "weight": "x"}]}},
            "routes": [{"hosts": ["a.com"], "pool": "demo", "timeouts": {"read": "forever"}}],
        });
        let errs = Policy::from_json(&policy).expect_err("invalid").errors;
        let found: Vec<(&str, Option<usize>)> =
            errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            found,
            [
                ("pools.demo.backends[1].weight", None),
                ("routes[0].timeouts.read", None)
            ]
        );
    }

    #[test]
    fn a_type_error_in_the_third_item_has_its_line_and_hides_nothing() {
        let errs = report(
            r#"listeners:
  - listen: 127.0.0.1:8080
pools:
  web: {backends: ["127.0.0.1:1"]}
routes:
  - hosts: [a.com]
    pool: api
  - hosts: ["bad host"]
    pool: web
  - hosts: [c.com]
    pool: web
    timeouts:
      connect: 1s
      read: forever
  - hosts: [d.com]
    pool: web
    get_body: keep
"#,
        );
        assert_eq!(
            errs,
            [
                (
                    "routes[0].pool".to_string(),
                    "unknown pool \"api\"".to_string(),
                    Some(7)
                ),
                (
                    "routes[1].hosts[0]".to_string(),
                    "invalid host \"bad host\": use example.com, *.example.com or * (no port, no \
                     scheme)"
                        .to_string(),
                    Some(8)
                ),
                (
                    "routes[2].timeouts.read".to_string(),
                    "invalid duration \"forever\": expected e.g. 250ms, 5s, 2m".to_string(),
                    Some(14)
                ),
                (
                    "routes[3].get_body".to_string(),
                    "must be drop, reject or forward, not \"keep\"".to_string(),
                    Some(17)
                ),
            ]
        );
    }

    #[test]
    fn unknown_keys_do_not_stop_validation() {
        let errs = report("lisners: []\nlisteners: []\npools: {}\nroutes: []\nbogus: 1\n");
        let found: Vec<(&str, Option<usize>)> =
            errs.iter().map(|(p, _, l)| (p.as_str(), *l)).collect();
        assert_eq!(
            found,
            [
                ("", Some(1)),
                ("", Some(5)),
                ("listeners", Some(2)),
                ("routes", Some(4)),
            ],
            "{errs:#?}"
        );
        assert!(errs[1].1.starts_with("unknown field `bogus`"));
    }

    #[test]
    fn a_syntax_error_has_its_line() {
        let errs = report("listeners: []\npools: {a: [1, 2}\n");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].2, Some(2), "{errs:#?}");
    }

    #[test]
    fn route_filters_validate_and_check_against_registered_names() {
        let text = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - {hosts: [a.com], pool: p, filters: [auth, device-key]}
  - {hosts: [b.com], pool: p, filters: []}
  - {hosts: [c.com], pool: p}
"#;
        let c = Config::from_yaml_str(text).expect("valid");
        assert_eq!(
            c.routes[0].filters.as_deref(),
            Some(&["auth".to_string(), "device-key".to_string()][..])
        );
        assert_eq!(c.routes[1].filters.as_deref(), Some(&[][..]));
        assert_eq!(c.routes[2].filters, None);
        assert!(c.check_filters(&["device-key", "auth"]).is_ok());
        let errs = c.check_filters(&["auth"]).expect_err("unknown").errors;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "routes[0].filters[1]");
        assert!(errs[0].message.contains("\"device-key\"; registered: auth"));
        let none = c.check_filters(&[]).expect_err("plain binary").errors;
        assert_eq!(none.len(), 2);
        assert!(none[0].message.contains("registers no filters"));

        let bad = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - {hosts: [a.com], pool: p, filters: [auth, "no spaces", auth]}
  - {hosts: [b.com], pool: p, filters: auth}
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text[0].starts_with("routes[0].filters[1]: \"no spaces\" is not"),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with("routes[0].filters[2]: \"auth\" is listed twice"),
            "{text:#?}"
        );
        assert!(
            text[2].starts_with("routes[1].filters: invalid type"),
            "{text:#?}"
        );
        assert_eq!(text.len(), 3, "{text:#?}");
    }

    #[test]
    fn load_names_the_file() {
        let e = Config::load(Path::new("/nonexistent/verge.yaml")).expect_err("missing");
        assert!(e
            .to_string()
            .starts_with("/nonexistent/verge.yaml: 1 error"));
    }
}
