//! Content classes (`classes:`): named staleness budgets that routes belong to, and the
//! `verge check` warnings for routes whose configured freshness and stale windows exceed them.

use super::model::RouteSpec;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The `class` label of routes that name no class, in metrics.
pub const NO_CLASS: &str = "none";

/// A content class: how long a response of it may be served past its origin's truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentClass {
    /// The longest time a response may be served after the origin changed it, counting its
    /// freshness lifetime, the stale windows and invalidation propagation.
    pub budget: Duration,
}

/// Something in a valid config that is probably not what was meant, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Where: a key path such as `routes[2].cache`.
    pub path: String,
    /// What is likely wrong, and what would fix it.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The longest a route may serve a response past its origin's truth, as far as its config
/// says: its freshness bound (`max_ttl` caps every lifetime, `force_ttl` replaces the
/// origin's) plus the longest stale window
/// (stale-while-revalidate, stale-if-error and stale-if-disconnected all count from expiry, so
/// the longest of them is what adds up). `None` when nothing bounds the freshness lifetime:
/// the origin's `Cache-Control` decides it.
pub fn worst_staleness(route: &RouteSpec) -> Option<WorstStaleness> {
    let cache = route.cache.as_ref()?;
    let ttl = match (cache.force_ttl, cache.max_ttl) {
        (Some(force), Some(max)) => force.min(max),
        (force, max) => force.or(max)?,
    };
    let (window, stale) = [
        ("stale_while_revalidate", cache.stale_while_revalidate),
        ("stale_if_error", cache.stale_if_error),
        ("stale_if_disconnected", cache.stale_if_disconnected),
    ]
    .into_iter()
    .fold(("no stale window", Duration::ZERO), |a, b| {
        if b.1 > a.1 {
            b
        } else {
            a
        }
    });
    Some(WorstStaleness { ttl, window, stale })
}

/// The longest a route's config lets a response be served past its origin's truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorstStaleness {
    /// The longest freshness lifetime.
    pub ttl: Duration,
    /// The longest stale window's key (`stale_if_disconnected`, ...).
    pub window: &'static str,
    /// Its length.
    pub stale: Duration,
}

impl WorstStaleness {
    /// TTL plus the longest stale window.
    pub fn total(&self) -> Duration {
        self.ttl.saturating_add(self.stale)
    }
}

/// Warnings for every route whose class budget its configuration can exceed. Routes are at
/// `routes[i]` in the order given.
pub fn budget_warnings(
    routes: &[RouteSpec],
    classes: &BTreeMap<String, ContentClass>,
) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let (Some(name), Some(_)) = (route.class.as_deref(), route.cache.as_ref()) else {
            continue;
        };
        let Some(class) = classes.get(name) else {
            continue; // validation refuses unknown classes
        };
        let budget = seconds(class.budget);
        match worst_staleness(route) {
            None => out.push(ConfigWarning {
                path: format!("routes[{i}].cache"),
                message: format!(
                    "class {name:?} has a budget of {budget}, but nothing bounds the route's \
                     freshness: set max_ttl (or force_ttl) so the origin cannot exceed it"
                ),
            }),
            Some(w) if w.total() > class.budget => out.push(ConfigWarning {
                path: format!("routes[{i}].cache"),
                message: format!(
                    "TTL {} plus {} {} is {}, over class {name:?}'s budget of {budget}: \
                     lower max_ttl or the stale windows",
                    seconds(w.ttl),
                    w.window,
                    seconds(w.stale),
                    seconds(w.total())
                ),
            }),
            Some(_) => {}
        }
    }
    out
}

/// A duration as config files write it: `2d`, `1h`, `90s`, `1.5s`.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() != 0.0 {
        return format!("{s}s");
    }
    let whole = d.as_secs();
    match [(86_400, "d"), (3_600, "h"), (60, "m")]
        .into_iter()
        .find(|(unit, _)| whole >= *unit && whole % unit == 0)
    {
        Some((unit, suffix)) => format!("{}{suffix}", whole / unit),
        None => format!("{whole}s"),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Policy};

    const BASE: &str = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
"#;

    fn config(rest: &str) -> Result<Config, Vec<String>> {
        Config::from_yaml_str(&format!("{BASE}{rest}"))
            .map_err(|e| e.errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn routes_name_declared_classes() {
        let c = config(
            r#"
classes: {prices: {budget: 30s}, pages: {budget: 5m}}
routes:
  - {hosts: [a.com], pool: p, class: prices,
     cache: {max_ttl: 10s, stale_while_revalidate: 5s, stale_if_disconnected: 20s}}
  - {hosts: [b.com], pool: p, cache: {}}
"#,
        )
        .expect("valid");
        assert_eq!(c.classes["pages"].budget.as_secs(), 300);
        assert_eq!(c.routes[0].class.as_deref(), Some("prices"));
        assert_eq!(c.routes[1].class, None);
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    }

    #[test]
    fn unknown_and_broken_classes_are_errors_with_their_path() {
        let errs = config(
            r#"
classes: {none: {budget: 1s}, "bad name": {budget: 1s}, zero: {budget: 0s}, ok: {budget: soon}}
routes:
  - {hosts: [a.com], pool: p, class: prise, cache: {}}
  - {hosts: [b.com], pool: p, class: zero, cache: {}}
  - {hosts: [c.com], pool: p, class: ok}
"#,
        )
        .expect_err("invalid");
        let has = |p: &str| errs.iter().any(|e| e.starts_with(p));
        assert!(
            has("classes.none: \"none\" is the metrics label"),
            "{errs:#?}"
        );
        assert!(has("classes.bad name: "), "{errs:#?}");
        assert!(
            has("classes.zero.budget: must be more than 0s"),
            "{errs:#?}"
        );
        assert!(has("classes.ok.budget: "), "{errs:#?}");
        let unknown = "routes[0].class: unknown class \"prise\" (declared under classes: \
                       bad name, none, ok, zero)";
        assert!(has(unknown), "{errs:#?}");
        // a declared class that is broken is reported once, at the class
        assert!(!has("routes[1]"), "{errs:#?}");
        assert!(
            has("routes[2].class: the route does not cache"),
            "{errs:#?}"
        );
        assert_eq!(errs.len(), 6, "{errs:#?}");
    }

    #[test]
    fn check_warns_when_ttl_and_stale_windows_exceed_the_budget() {
        let c = config(
            r#"
classes: {prices: {budget: 30s}}
routes:
  - {hosts: [a.com], pool: p, class: prices,
     cache: {max_ttl: 20s, stale_while_revalidate: 5s, stale_if_error: 15s,
             stale_if_disconnected: 0s}}
  - {hosts: [b.com], pool: p, class: prices, cache: {default_ttl: 10s}}
  - {hosts: [c.com], pool: p, class: prices,
     cache: {max_ttl: 1h, force_ttl: 10s, stale_if_error: 20s, stale_if_disconnected: 0s}}
  - {hosts: [d.com], pool: p, class: prices,
     cache: {max_ttl: 10s, stale_if_error: 5s}}
"#,
        )
        .expect("valid: budgets warn, they do not refuse");
        let text: Vec<String> = c.warnings().iter().map(|w| w.to_string()).collect();
        assert_eq!(
            text,
            [
                "routes[0].cache: TTL 20s plus stale_if_error 15s is 35s, over class \
                 \"prices\"'s budget of 30s: lower max_ttl or the stale windows",
                "routes[1].cache: class \"prices\" has a budget of 30s, but nothing bounds the \
                 route's freshness: set max_ttl (or force_ttl) so the origin cannot exceed it",
                // stale_if_disconnected's default (1 day) counts, so it must be set
                "routes[3].cache: TTL 10s plus stale_if_disconnected 1d is 86410s, over \
                 class \"prices\"'s budget of 30s: lower max_ttl or the stale windows",
            ],
            "{text:#?}"
        );
    }

    #[test]
    fn a_policy_carries_classes_too() {
        let doc = serde_json::json!({
            "pools": {"p": {"backends": ["127.0.0.1:1"]}},
            "classes": {"pages": {"budget": "10s"}},
            "routes": [
                {"hosts": ["a.com"], "pool": "p", "class": "pages",
                 "cache": {"max_ttl": "1m", "stale_if_disconnected": "0s"}},
                {"hosts": ["b.com"], "pool": "p", "class": "assets", "cache": {}}
            ]
        });
        let errs = Policy::from_json(&doc).expect_err("unknown class").errors;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "routes[1].class");
        let mut doc = doc;
        doc["routes"].as_array_mut().expect("routes").pop();
        let p = Policy::from_json(&doc).expect("valid");
        assert_eq!(p.classes["pages"].budget.as_secs(), 10);
        assert_eq!(p.warnings().len(), 1);
        assert_eq!(p.warnings()[0].path, "routes[0].cache");
    }
}
