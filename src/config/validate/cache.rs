//! The `cache` section and each route's `cache` block (TTLs, cache key, early refresh).

use super::Errors;
use crate::config::model::*;
use crate::config::raw::*;
use http::HeaderName;
use std::time::Duration;

pub(super) fn validate_cache(raw: RawCache, errs: &mut Errors) -> CacheSettings {
    let d = CacheSettings::default();
    let memory = raw.memory.map_or(d.memory, |s| s.0);
    if memory < (1 << 20) {
        errs.push("cache.memory", "must be at least 1MiB");
    }
    let max_object_size = raw.max_object_size.map_or(d.max_object_size, |s| s.0);
    if max_object_size == 0 || max_object_size > memory {
        errs.push(
            "cache.max_object_size",
            "must be greater than zero and at most cache.memory",
        );
    }
    let lock_timeout = raw.lock_timeout.map_or(d.lock_timeout, |x| x.0);
    let lock_wait = raw.lock_wait.map_or(d.lock_wait, |x| x.0);
    for (key, v) in [("lock_timeout", lock_timeout), ("lock_wait", lock_wait)] {
        if v.is_zero() {
            errs.push(format!("cache.{key}"), "must be greater than zero");
        }
    }
    CacheSettings {
        memory,
        max_object_size,
        lock_timeout,
        lock_wait,
        hit_lane: raw.hit_lane.unwrap_or(d.hit_lane),
        pass_lane: raw.pass_lane.unwrap_or(d.pass_lane),
        disk: raw
            .disk
            .map(|disk| validate_disk(disk, max_object_size, errs)),
    }
}

/// The smallest disk tier: a few segments of the smallest size.
const MIN_DISK_SIZE: u64 = 4 << 20;
const MIN_SEGMENT_SIZE: u64 = 64 << 10;
const MAX_DEFAULT_SEGMENT_SIZE: u64 = 256 << 20;

/// `cache.disk`: a directory, a byte budget of at least 4MiB, objects up to a quarter of it
/// (default: `cache.max_object_size`), segments of at most half of it (default: a sixteenth,
/// between 1MiB and 256MiB), so dropping the oldest segment never empties the tier.
fn validate_disk(raw: RawDiskCache, memory_max_object: u64, errs: &mut Errors) -> DiskSettings {
    let path = raw.path.unwrap_or_default();
    if path.trim().is_empty() {
        errs.push(
            "cache.disk.path",
            "is required (a directory for the segment files)",
        );
    }
    let size = raw.size.map_or(0, |s| s.0);
    if size < MIN_DISK_SIZE {
        errs.push("cache.disk.size", "is required and must be at least 4MiB");
    }
    let max_object_size = raw.max_object_size.map_or(memory_max_object, |s| s.0);
    if max_object_size == 0 || max_object_size > size / 4 {
        errs.push(
            "cache.disk.max_object_size",
            "must be greater than zero and at most a quarter of cache.disk.size",
        );
    }
    let default_segment = (size / 16).clamp(1 << 20, MAX_DEFAULT_SEGMENT_SIZE);
    let segment_size = raw.segment_size.map_or(default_segment, |s| s.0);
    if segment_size < MIN_SEGMENT_SIZE || segment_size > size / 2 {
        errs.push(
            "cache.disk.segment_size",
            "must be at least 64KiB and at most half of cache.disk.size",
        );
    }
    let min_uses = raw.min_uses.unwrap_or(2);
    if !(1..=100).contains(&min_uses) {
        errs.push("cache.disk.min_uses", "must be between 1 and 100");
    }
    DiskSettings {
        path: path.into(),
        size,
        max_object_size,
        segment_size,
        min_uses,
    }
}

pub(super) fn validate_route_cache(
    path: &str,
    raw: Option<RawRouteCache>,
    errs: &mut Errors,
) -> Option<RouteCache> {
    let raw = raw.filter(|r| r.enabled)?;
    let set_cookie = match raw.set_cookie.as_deref() {
        None | Some("refuse") => SetCookiePolicy::Refuse,
        Some("strip") => SetCookiePolicy::Strip,
        Some(other) => {
            errs.push(
                format!("{path}.set_cookie"),
                format!("must be \"refuse\" or \"strip\", not {other:?}"),
            );
            SetCookiePolicy::Refuse
        }
    };
    let max_variants = raw.max_variants.unwrap_or(DEFAULT_MAX_VARIANTS);
    if !(1..=1024).contains(&max_variants) {
        errs.push(format!("{path}.max_variants"), "must be between 1 and 1024");
    }
    let key = raw
        .key
        .map(|k| cache_key_rules(&format!("{path}.key"), k, errs))
        .unwrap_or_default();
    if !key.cookies.is_empty() && !raw.public {
        errs.push(
            format!("{path}.key.cookies"),
            "needs public: true (requests with Cookie bypass the cache otherwise)",
        );
    }
    let c = RouteCache {
        default_ttl: raw.default_ttl.map(|d| d.0),
        max_ttl: raw.max_ttl.map(|d| d.0),
        stale_while_revalidate: raw.stale_while_revalidate.map_or(Duration::ZERO, |d| d.0),
        stale_if_error: raw.stale_if_error.map_or(Duration::ZERO, |d| d.0),
        stale_if_disconnected: raw
            .stale_if_disconnected
            .map_or(DEFAULT_STALE_IF_DISCONNECTED, |d| d.0),
        error_max_ttl: raw.error_max_ttl.map_or(DEFAULT_ERROR_MAX_TTL, |d| d.0),
        public: raw.public,
        negative_ttl: raw.negative_ttl.map(|d| d.0),
        force_ttl: raw.force_ttl.map(|d| d.0),
        set_cookie,
        max_variants,
        key,
        client_revalidation: raw.client_revalidation.unwrap_or(true),
        early_refresh: raw
            .early_refresh
            .map(|e| early_refresh(&format!("{path}.early_refresh"), e, errs)),
        tier: raw.tier.unwrap_or(true),
    };
    if let Some(m) = c.max_ttl {
        for (name, ttl) in [
            ("default_ttl", c.default_ttl),
            ("negative_ttl", c.negative_ttl),
            ("force_ttl", c.force_ttl),
        ] {
            if ttl.is_some_and(|t| t > m) {
                errs.push(format!("{path}.{name}"), "is larger than max_ttl");
            }
        }
    }
    for (name, ttl) in [("max_ttl", c.max_ttl), ("force_ttl", c.force_ttl)] {
        if ttl.is_some_and(|t| t.is_zero()) {
            errs.push(format!("{path}.{name}"), "must be greater than zero");
        }
    }
    Some(c)
}

/// Largest `early_refresh.beta`: beyond it every hit of a long-lived entry would refresh.
const MAX_EARLY_REFRESH_BETA: f64 = 1000.0;

/// `routes[].cache.early_refresh`: `beta` in (0, 1000] (default 1.0), `delta` above zero.
fn early_refresh(path: &str, raw: RawEarlyRefresh, errs: &mut Errors) -> EarlyRefresh {
    let mut e = EarlyRefresh::default();
    if let Some(beta) = raw.beta {
        if beta.is_finite() && beta > 0.0 && beta <= MAX_EARLY_REFRESH_BETA {
            e.beta = beta;
        } else {
            errs.push(
                format!("{path}.beta"),
                format!("must be above 0 and at most {MAX_EARLY_REFRESH_BETA}, not {beta}"),
            );
        }
    }
    if let Some(delta) = raw.delta {
        if delta.0.is_zero() {
            errs.push(format!("{path}.delta"), "must be greater than zero");
        } else {
            e.delta = Some(delta.0);
        }
    }
    e
}

/// `routes[].cache.key`: query rule, headers and cookies that select variants.
fn cache_key_rules(path: &str, raw: RawCacheKey, errs: &mut Errors) -> CacheKeyRules {
    let query = raw
        .query
        .map(|v| query_key(&format!("{path}.query"), v, errs))
        .unwrap_or_default();
    let mut headers = Vec::new();
    for (i, name) in raw.headers.iter().enumerate() {
        match HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(h) if h == http::header::COOKIE => errs.push(
                format!("{path}.headers[{i}]"),
                "use key.cookies to key on cookies",
            ),
            Ok(h) if !headers.contains(&h) => headers.push(h),
            Ok(_) => errs.push(format!("{path}.headers[{i}]"), "listed twice"),
            Err(_) => errs.push(
                format!("{path}.headers[{i}]"),
                format!("{name:?} is not a header name"),
            ),
        }
    }
    let mut cookies: Vec<String> = Vec::new();
    for (i, name) in raw.cookies.iter().enumerate() {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        if !valid {
            errs.push(
                format!("{path}.cookies[{i}]"),
                format!("{name:?} is not a cookie name"),
            );
        } else if cookies.contains(name) {
            errs.push(format!("{path}.cookies[{i}]"), "listed twice");
        } else {
            cookies.push(name.clone());
        }
    }
    CacheKeyRules {
        query,
        headers,
        cookies,
    }
}

/// `all` | `sorted` | `ignore` | `{allow: [names]}` | `{deny: [names]}`.
fn query_key(path: &str, value: serde_yaml::Value, errs: &mut Errors) -> QueryKey {
    use serde_yaml::Value;
    const EXPECTED: &str = "must be all, sorted, ignore, {allow: [names]} or {deny: [names]}";
    let names = |path: &str, list: &Value, errs: &mut Errors| -> Vec<String> {
        let Some(items) = list.as_sequence() else {
            errs.push(path, "must be a list of parameter names");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(n) if !n.is_empty() => out.push(n.to_string()),
                _ => errs.push(format!("{path}[{i}]"), "must be a non-empty string"),
            }
        }
        out
    };
    match &value {
        Value::String(s) => match s.as_str() {
            "all" => QueryKey::All,
            "sorted" => QueryKey::Sorted,
            "ignore" => QueryKey::Ignore,
            _ => {
                errs.push(path, format!("{EXPECTED}, not {s:?}"));
                QueryKey::All
            }
        },
        Value::Mapping(m) if m.len() == 1 => {
            let (k, v) = m
                .iter()
                .next()
                .map_or((None, &Value::Null), |(k, v)| (k.as_str(), v));
            match k {
                Some("allow") => QueryKey::Allow(names(&format!("{path}.allow"), v, errs)),
                Some("deny") => QueryKey::Deny(names(&format!("{path}.deny"), v, errs)),
                _ => {
                    errs.push(path, EXPECTED);
                    QueryKey::All
                }
            }
        }
        _ => {
            errs.push(path, EXPECTED);
            QueryKey::All
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_tier_validates_with_key_paths() {
        let base = "listeners: [{listen: \"127.0.0.1:8080\"}]\n\
                    pools: {p: {backends: [\"127.0.0.1:1\"]}}\n\
                    routes: [{hosts: [a.com], pool: p}]\n";
        let c = Config::from_yaml_str(base).expect("valid");
        assert_eq!(c.cache.disk, None, "memory only unless configured");
        let c = Config::from_yaml_str(&format!(
            "{base}cache: {{max_object_size: 1MiB, disk: {{path: /var/cache/verge, size: 1GiB}}}}\n"
        ))
        .expect("valid");
        let disk = c.cache.disk.expect("disk");
        assert_eq!(disk.path, std::path::PathBuf::from("/var/cache/verge"));
        assert_eq!(disk.size, 1 << 30);
        assert_eq!(
            disk.max_object_size,
            1 << 20,
            "defaults to the memory tier's"
        );
        assert_eq!(disk.segment_size, 64 << 20, "a sixteenth of the budget");
        let errs = Config::from_yaml_str(&format!(
            "{base}cache: {{disk: {{size: 1MiB, max_object_size: 2MiB, segment_size: 1KiB, sise: 1}}}}\n"
        ))
        .expect_err("invalid")
        .errors;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text[0].starts_with("cache.disk: unknown field `sise`"),
            "{text:#?}"
        );
        for p in [
            "cache.disk.path: is required",
            "cache.disk.size: is required and must be at least 4MiB",
            "cache.disk.max_object_size: must be greater than zero",
            "cache.disk.segment_size: must be at least 64KiB",
        ] {
            assert!(text.iter().any(|t| t.starts_with(p)), "{p}: {text:#?}");
        }
    }

    #[test]
    fn route_cache_rules_validate() {
        let good = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - hosts: [a.com]
    pool: p
    cache:
      public: true
      negative_ttl: 10s
      force_ttl: 1m
      set_cookie: strip
      max_variants: 4
      key: {query: {allow: [id, page]}, headers: [X-Device], cookies: [lang]}
  - {hosts: [b.com], pool: p, cache: {key: {query: sorted}, client_revalidation: false}}
  - {hosts: [c.com], pool: p, cache: {key: {query: {deny: [utm_source]}}}}
"#;
        let c = Config::from_yaml_str(good).expect("valid");
        let rc = c.routes[0].cache.as_ref().expect("cache");
        assert_eq!(rc.negative_ttl, Some(std::time::Duration::from_secs(10)));
        assert_eq!(rc.set_cookie, SetCookiePolicy::Strip);
        assert_eq!(rc.max_variants, 4);
        assert_eq!(
            rc.key.query,
            QueryKey::Allow(vec!["id".into(), "page".into()])
        );
        assert_eq!(rc.key.headers[0].as_str(), "x-device");
        assert_eq!(rc.key.cookies, vec!["lang".to_string()]);
        let sorted = c.routes[1].cache.as_ref().expect("cache");
        assert_eq!(sorted.key.query, QueryKey::Sorted);
        assert_eq!(sorted.max_variants, DEFAULT_MAX_VARIANTS);
        assert!(rc.client_revalidation && !sorted.client_revalidation);
        let deny = &c.routes[2].cache.as_ref().expect("cache").key.query;
        assert_eq!(deny, &QueryKey::Deny(vec!["utm_source".into()]));

        let bad = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - hosts: [a.com]
    pool: p
    cache:
      max_ttl: 10s
      force_ttl: 1m
      set_cookie: keep
      max_variants: 0
      key: {query: shuffled, headers: ["bad header", cookie], cookies: [sid]}
  - {hosts: [b.com], pool: p, cache: {key: {query: {allow: id}}}}
  - {hosts: [c.com], pool: p, cache: {key: {query: {keep: [id]}}}}
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        for p in [
            "routes[0].cache.force_ttl: is larger than max_ttl",
            "routes[0].cache.set_cookie",
            "routes[0].cache.max_variants",
            "routes[0].cache.key.query: must be all, sorted",
            "routes[0].cache.key.headers[0]",
            "routes[0].cache.key.headers[1]: use key.cookies",
            "routes[0].cache.key.cookies: needs public: true",
            "routes[1].cache.key.query.allow: must be a list",
            "routes[2].cache.key.query: must be all",
        ] {
            assert!(text.iter().any(|t| t.starts_with(p)), "{p}: {text:#?}");
        }
        assert_eq!(text.len(), 9, "{text:#?}");
    }

    #[test]
    fn total_timeouts_and_early_refresh_validate() {
        use std::time::Duration;
        let good = r#"
listeners: [{listen: "127.0.0.1:8080"}]
upstream_defaults: {timeouts: {total: 2m}}
pools:
  p: {backends: ["127.0.0.1:1"]}
  q: {backends: ["127.0.0.1:2"], timeouts: {total: 0s}}
routes:
  - {hosts: [a.com], pool: p, timeouts: {total: 5s}, cache: {early_refresh: {beta: 2.5, delta: 250ms}}}
  - {hosts: [b.com], pool: p, timeouts: {total: 0s}, cache: {early_refresh: {}}}
  - {hosts: [c.com], pool: q, cache: {}}
"#;
        let c = Config::from_yaml_str(good).expect("valid");
        let pool = |name: &str| c.pools.get(name).expect("pool").timeouts;
        assert_eq!(pool("p").total, Some(Duration::from_secs(120)));
        assert_eq!(pool("q").total, None, "0s turns the default off");
        assert_eq!(c.routes[0].timeouts.total, Some(Duration::from_secs(5)));
        assert_eq!(c.routes[1].timeouts.total, Some(Duration::ZERO));
        let er = |i: usize| c.routes[i].cache.as_ref().and_then(|rc| rc.early_refresh);
        assert_eq!(
            er(0),
            Some(EarlyRefresh {
                beta: 2.5,
                delta: Some(Duration::from_millis(250))
            })
        );
        assert_eq!(er(1), Some(EarlyRefresh::default()));
        assert_eq!(er(2), None, "off unless asked for");

        let bad = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"], timeouts: {totl: 5s}}}
routes:
  - {hosts: [a.com], pool: p, cache: {early_refresh: {beta: 0}}}
  - {hosts: [b.com], pool: p, cache: {early_refresh: {beta: 5000, delta: 0s}}}
  - {hosts: [c.com], pool: p, cache: {early_refresh: {beta: -1}}}
  - {hosts: [d.com], pool: p, cache: {early_refresh: {probability: 1}}}
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        for p in [
            "pools.p",
            "routes[0].cache.early_refresh.beta: must be above 0 and at most 1000",
            "routes[1].cache.early_refresh.beta",
            "routes[1].cache.early_refresh.delta: must be greater than zero",
            "routes[2].cache.early_refresh.beta",
            "routes[3]",
        ] {
            assert!(text.iter().any(|t| t.starts_with(p)), "{p}: {text:#?}");
        }
    }
}
