//! The `routes` section: hosts, path prefixes, header rules, GET bodies and filters (edge
//! rules in `edge.rs`).

use super::cache::validate_route_cache;
use super::compression::compression;
use super::edge::{edge_rules, RawEdge};
use super::error_pages::error_pages;
use super::timeouts::route_timeouts;
use super::valid_name;
use super::Errors;
use crate::config::edge::HeaderOps;
use crate::config::model::*;
use crate::config::raw::*;
use http::{HeaderName, HeaderValue};

use std::collections::{BTreeMap, HashSet};

/// The names routes may refer to: every pool and class written, valid or not.
pub(super) struct Declared<'a> {
    pub pools: &'a HashSet<String>,
    pub classes: &'a HashSet<String>,
}

pub(super) fn validate_routes(
    value: Option<serde_yaml::Value>,
    declared: &Declared<'_>,
    errs: &mut Errors,
) -> Vec<RouteSpec> {
    let Some(value) = value else {
        errs.push("routes", "at least one route is required");
        return Vec::new();
    };
    let Some(items) = errs.decode::<Vec<serde_yaml::Value>>("routes", value) else {
        return Vec::new();
    };
    if items.is_empty() {
        errs.push("routes", "at least one route is required");
    }
    let mut out = Vec::new();
    let mut seen: BTreeMap<(HostPattern, String), usize> = BTreeMap::new();
    let mut names = HashSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        let Some(raw) = errs.decode::<RawRoute>(&path, item) else {
            continue;
        };
        let before = errs.len();
        if raw.hosts.is_empty() {
            errs.push(format!("{path}.hosts"), "list at least one host (or \"*\")");
        }
        let mut hosts = Vec::new();
        for (j, h) in raw.hosts.iter().enumerate() {
            match parse_host_pattern(h) {
                Ok(p) => hosts.push(p),
                Err(e) => errs.push(format!("{path}.hosts[{j}]"), e),
            }
        }
        let path_prefix = raw.path.clone().unwrap_or_else(|| "/".into());
        if let Err(e) = check_path_prefix(&path_prefix) {
            errs.push(format!("{path}.path"), e);
        }
        if !declared.pools.contains(&raw.pool) {
            errs.push(
                format!("{path}.pool"),
                format!("unknown pool {:?}", raw.pool),
            );
        }
        if raw.strip_prefix && path_prefix == "/" {
            errs.push(
                format!("{path}.strip_prefix"),
                "has no effect with path \"/\"",
            );
        }
        let request_headers = header_ops(
            &format!("{path}.request_headers"),
            raw.request_headers,
            errs,
        );
        let response_headers = header_ops(
            &format!("{path}.response_headers"),
            raw.response_headers,
            errs,
        );
        let timeouts = route_timeouts(raw.timeouts.as_ref(), &format!("{path}.timeouts"), errs);
        let cache = validate_route_cache(&format!("{path}.cache"), raw.cache, errs);
        if let Some(class) = raw.class.as_deref() {
            if !declared.classes.contains(class) {
                let mut known: Vec<&str> = declared.classes.iter().map(String::as_str).collect();
                known.sort_unstable();
                let known = if known.is_empty() {
                    "no classes are declared".to_string()
                } else {
                    format!("declared under classes: {}", known.join(", "))
                };
                errs.push(
                    format!("{path}.class"),
                    format!("unknown class {class:?} ({known})"),
                );
            } else if cache.is_none() {
                errs.push(
                    format!("{path}.class"),
                    "the route does not cache: a class budgets cached responses",
                );
            }
        }
        let get_body = match raw.get_body.as_deref() {
            None | Some("drop") => GetBodyPolicy::Drop,
            Some("reject") => GetBodyPolicy::Reject,
            Some("forward") if cache.is_some() => {
                errs.push(
                    format!("{path}.get_body"),
                    "forward is not allowed on a route that caches: the cache key does not \
                     include the body, so one client's body could decide what others get",
                );
                GetBodyPolicy::Drop
            }
            Some("forward") => GetBodyPolicy::Forward,
            Some(other) => {
                errs.push(
                    format!("{path}.get_body"),
                    format!("must be drop, reject or forward, not {other:?}"),
                );
                GetBodyPolicy::Drop
            }
        };
        let filters = raw
            .filters
            .map(|names| filter_names(&format!("{path}.filters"), names, errs));
        if raw.redirect.is_some() && cache.is_some() {
            errs.push(
                format!("{path}.redirect"),
                "answers every request itself: remove the route's cache block",
            );
        }
        let edge = edge_rules(
            &path,
            RawEdge {
                deny: raw.deny,
                allow: raw.allow,
                rate_limit: raw.rate_limit,
                https_redirect: raw.https_redirect,
                redirect: raw.redirect,
                request_id: raw.request_id,
                rewrite: raw.rewrite,
                strip_prefix: raw.strip_prefix,
            },
            errs,
        );
        let error_pages = raw
            .error_pages
            .map(|p| error_pages(&format!("{path}.error_pages"), p, errs))
            .unwrap_or_default();
        let compression = raw
            .compression
            .and_then(|c| compression(&format!("{path}.compression"), c, errs));
        let name = raw.name.clone().unwrap_or_else(|| {
            let host = hosts.first().map(|h| h.to_string()).unwrap_or_default();
            format!("{host}{path_prefix}")
        });
        if !names.insert(name.clone()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate route name {name:?} (set a distinct name:)"),
            );
        }
        for h in &hosts {
            if let Some(prev) = seen.insert((h.clone(), path_prefix.clone()), i) {
                errs.push(
                    &path,
                    format!(
                        "host {h} with path {path_prefix:?} is already routed by routes[{prev}]"
                    ),
                );
            }
        }
        if errs.len() == before {
            out.push(RouteSpec {
                name,
                hosts,
                path_prefix,
                pool: raw.pool,
                strip_prefix: raw.strip_prefix,
                request_headers,
                response_headers,
                timeouts,
                cache,
                class: raw.class,
                get_body,
                filters,
                edge,
                error_pages,
                compression,
            });
        }
    }
    out
}

/// `routes[].filters`: well-formed, distinct names. Whether a filter of that name is registered
/// is only known to the binary that runs the config (`Config::check_filters`).
fn filter_names(path: &str, names: Vec<String>, errs: &mut Errors) -> Vec<String> {
    let mut seen = HashSet::new();
    for (j, name) in names.iter().enumerate() {
        if !valid_name(name) {
            errs.push(
                format!("{path}[{j}]"),
                format!("{name:?} is not a filter name (1-128 letters, digits, '-', '_', '.')"),
            );
        } else if !seen.insert(name.as_str()) {
            errs.push(format!("{path}[{j}]"), format!("{name:?} is listed twice"));
        }
    }
    names
}

/// Parse a route host: `example.com`, `*.example.com` or `*`.
pub(crate) fn parse_host_pattern(text: &str) -> Result<HostPattern, String> {
    let h = text.trim().to_ascii_lowercase();
    if h == "*" {
        return Ok(HostPattern::Any);
    }
    let (wild, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h.as_str()),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !wild {
        // An IPv6 address (bracketed or not), written as `canonical_host` writes a request's
        // host: a bare `::1` could never match one.
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if let Ok(ip) = bare.parse::<std::net::Ipv6Addr>() {
            return Ok(HostPattern::Exact(format!("[{ip}]")));
        }
    }
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "invalid host {text:?}: use example.com, *.example.com or * (no port, no scheme)"
        ));
    }
    Ok(if wild {
        HostPattern::Wildcard(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_string())
    })
}

fn check_path_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with '/'"));
    }
    if p.contains(['?', '#']) || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{p:?} must be a plain path (no query, fragment, spaces or control bytes)"
        ));
    }
    // Every request under such a prefix gets a 400 before routing: the route could never match.
    if let Err(bad) = crate::http_syntax::target::check_path("GET", p) {
        return Err(format!(
            "{p:?} can never match: requests with such a path are refused ({})",
            bad.reason()
        ));
    }
    Ok(())
}

fn header_ops(path: &str, raw: Option<RawHeaderOps>, errs: &mut Errors) -> HeaderOps {
    let Some(raw) = raw else {
        return HeaderOps::default();
    };
    let mut ops = HeaderOps::default();
    for (name, value) in raw.set {
        let n = HeaderName::from_bytes(name.as_bytes());
        let v = HeaderValue::from_str(&value)
            .map_err(|_| format!("invalid header value {value:?}"))
            .and_then(|_| super::edge::parse_header_template(&value));
        match (n, v) {
            (Ok(n), _) if is_hop_by_hop(&n) => errs.push(
                format!("{path}.set"),
                format!("{name:?} is a hop-by-hop header and cannot be set"),
            ),
            (Ok(n), Ok(v)) => ops.set.push((n, v)),
            (Err(_), _) => errs.push(
                format!("{path}.set"),
                format!("invalid header name {name:?}"),
            ),
            (_, Err(e)) => errs.push(format!("{path}.set.{name}"), e),
        }
    }
    for (i, name) in raw.remove.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => ops.remove.push(n),
            Err(_) => errs.push(
                format!("{path}.remove[{i}]"),
                format!("invalid header name {name:?}"),
            ),
        }
    }
    ops
}

/// Connection-level header names; a route may not set them.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "host"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert_eq!(
            parse_host_pattern("Example.COM"),
            Ok(HostPattern::Exact("example.com".into()))
        );
        assert_eq!(
            parse_host_pattern("*.example.com"),
            Ok(HostPattern::Wildcard(".example.com".into()))
        );
        assert_eq!(parse_host_pattern("*"), Ok(HostPattern::Any));
        assert!(parse_host_pattern("example.com:80").is_err());
        assert!(parse_host_pattern("http://x").is_err());
        assert!(parse_host_pattern("a.*.com").is_err());
        assert!(parse_host_pattern("").is_err());
        assert_eq!(
            parse_host_pattern("127.0.0.1"),
            Ok(HostPattern::Exact("127.0.0.1".into()))
        );
    }

    /// Found by the `config` fuzz target: every route must be able to match some request
    /// (fuzz/corpus/config/bug-*).
    #[test]
    fn routes_that_could_never_match_are_refused() {
        // IPv6 hosts are written as canonical_host writes a request's Host: `[::1]`
        for h in ["::1", "[::1]", "[0:0::1]"] {
            assert_eq!(
                parse_host_pattern(h),
                Ok(HostPattern::Exact("[::1]".into())),
                "{h}"
            );
        }
        assert!(parse_host_pattern("*.::1").is_err());
        // prefixes that every request under them would be refused for (400 before routing)
        for p in [
            "/a/../b", "/a/./b", "/..", "/a%2Fb", "/a\\b", "/a%zz", "/a%00",
        ] {
            assert!(check_path_prefix(p).is_err(), "{p}");
        }
        for p in ["/", "/a", "/a/", "/a.b/c..d", "/caf%C3%A9"] {
            assert_eq!(check_path_prefix(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn path_prefixes() {
        assert!(check_path_prefix("/api").is_ok());
        assert!(check_path_prefix("api").is_err());
        assert!(check_path_prefix("/a?b").is_err());
        assert!(check_path_prefix("/a b").is_err());
    }

    #[test]
    fn duplicate_routes_are_rejected() {
        let bad = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - {name: a, hosts: [x.com], pool: p}
  - {name: b, hosts: [X.com], pool: p}
"#;
        let errs = Config::from_yaml_str(bad).expect_err("dup").errors;
        assert!(errs[0].message.contains("already routed by routes[0]"));
    }

    #[test]
    fn get_body_policy_validates() {
        let good = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - {hosts: [a.com], pool: p, cache: {}}
  - {hosts: [b.com], pool: p, get_body: reject, cache: {}}
  - {hosts: [c.com], pool: p, get_body: forward}
"#;
        let c = Config::from_yaml_str(good).expect("valid");
        let policies: Vec<GetBodyPolicy> = c.routes.iter().map(|r| r.get_body).collect();
        assert_eq!(
            policies,
            [
                GetBodyPolicy::Drop,
                GetBodyPolicy::Reject,
                GetBodyPolicy::Forward
            ]
        );
        let bad = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - {hosts: [a.com], pool: p, get_body: forward, cache: {}}
  - {hosts: [b.com], pool: p, get_body: keep}
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text[0]
                .starts_with("routes[0].get_body: forward is not allowed on a route that caches"),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with("routes[1].get_body: must be drop, reject or forward"),
            "{text:#?}"
        );
        assert_eq!(text.len(), 2, "{text:#?}");
    }
}
