//! Turns a raw YAML document into a validated `Config`, collecting every error with its key path.

use super::model::*;
use super::raw::*;
use super::{ConfigError, ConfigErrors};
use http::{HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// Collects errors while a document is validated.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Decode one YAML value into `T`, recording a decode error under `path`.
    fn decode<T: DeserializeOwned>(&mut self, path: &str, value: serde_yaml::Value) -> Option<T> {
        match serde_yaml::from_value::<T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(path, clean_serde_message(&e.to_string()));
                None
            }
        }
    }
}

/// serde_yaml messages end in "at line X column Y" relative to a sub-value, which is
/// misleading once we decode sections separately; the key path says where instead.
fn clean_serde_message(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

impl TryFrom<RawDocument> for Config {
    type Error = ConfigErrors;

    fn try_from(doc: RawDocument) -> Result<Config, ConfigErrors> {
        validate_document(doc, "").map_err(ConfigErrors::new)
    }
}

/// Validate a raw document. `content_tag` seeds the version label when the file has none.
pub(super) fn validate_document(
    doc: RawDocument,
    content_tag: &str,
) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors::default();

    let version = match doc.version {
        None | Some(serde_yaml::Value::Null) => format!("sha-{}", fnv_hex(content_tag)),
        Some(serde_yaml::Value::String(s)) if !s.trim().is_empty() => s,
        Some(serde_yaml::Value::Number(n)) => n.to_string(),
        Some(_) => {
            errs.push("version", "must be a non-empty string or a number");
            String::new()
        }
    };

    let server = doc
        .server
        .and_then(|v| errs.decode::<RawServer>("server", v))
        .unwrap_or_default();
    let server = validate_server(server, &mut errs);

    let admin = doc
        .admin
        .and_then(|v| errs.decode::<RawAdmin>("admin", v))
        .unwrap_or_default();
    let admin_listen = admin.listen.as_deref().unwrap_or("127.0.0.1:9901");
    let admin = AdminSettings {
        listen: parse_listen_addr("admin.listen", admin_listen, &mut errs)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901))),
    };

    let listeners = validate_listeners(doc.listeners, admin.listen, &mut errs);

    let control = doc
        .control
        .and_then(|v| errs.decode::<RawControl>("control", v))
        .and_then(|c| validate_control(c, &mut errs));
    let purge = doc
        .purge
        .and_then(|v| errs.decode::<RawPurge>("purge", v))
        .map(|raw| {
            if raw.allow.is_empty() {
                errs.push(
                    "purge.allow",
                    "list at least one client address or CIDR block",
                );
            }
            let mut allow = Vec::new();
            for (i, text) in raw.allow.iter().enumerate() {
                match IpNet::parse(text) {
                    Ok(n) => allow.push(n),
                    Err(e) => errs.push(format!("purge.allow[{i}]"), e),
                }
            }
            PurgeSpec { allow }
        });
    let access_log = doc
        .access_log
        .and_then(|v| errs.decode::<RawAccessLog>("access_log", v))
        .and_then(|raw| {
            if raw.path == "-" {
                return Some(crate::access_log::LogTarget::Stdout);
            }
            let path = std::path::PathBuf::from(&raw.path);
            match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(dir) if !dir.is_dir() => {
                    errs.push(
                        "access_log.path",
                        format!("directory {} does not exist", dir.display()),
                    );
                    None
                }
                _ => Some(crate::access_log::LogTarget::File(path)),
            }
        });
    // A node fed by a control plane may start without any routes of its own.
    let policy_optional = control.is_some() && doc.pools.is_none() && doc.routes.is_none();
    let (pools, routes) = if policy_optional {
        (BTreeMap::new(), Vec::new())
    } else {
        validate_policy_sections(doc.upstream_defaults, doc.pools, doc.routes, &mut errs)
    };

    let cache = doc
        .cache
        .and_then(|v| errs.decode::<RawCache>("cache", v))
        .unwrap_or_default();
    let cache = validate_cache(cache, &mut errs);

    if errs.0.is_empty() {
        Ok(Config {
            cache,
            version,
            server,
            admin,
            listeners,
            pools,
            routes,
            control,
            purge,
            access_log,
            source: None,
        })
    } else {
        Err(errs.0)
    }
}

/// Validate a policy document (what `verge control` stores) with the node's own rules.
pub(super) fn validate_policy(raw: RawPolicy) -> Result<Policy, Vec<ConfigError>> {
    let mut errs = Errors::default();
    let (pools, routes) =
        validate_policy_sections(raw.upstream_defaults, raw.pools, raw.routes, &mut errs);
    if errs.0.is_empty() {
        Ok(Policy { pools, routes })
    } else {
        Err(errs.0)
    }
}

/// The sections a node config and a policy document share: defaults, pools and routes.
fn validate_policy_sections(
    upstream_defaults: Option<serde_yaml::Value>,
    pools: Option<serde_yaml::Value>,
    routes: Option<serde_yaml::Value>,
    errs: &mut Errors,
) -> (BTreeMap<String, PoolSpec>, Vec<RouteSpec>) {
    let defaults = upstream_defaults
        .and_then(|v| errs.decode::<RawUpstreamDefaults>("upstream_defaults", v))
        .unwrap_or_default();
    let default_timeouts = merge_timeouts(
        Timeouts::default(),
        defaults.timeouts.as_ref(),
        "upstream_defaults.timeouts",
        errs,
    );
    let mut declared_pools = HashSet::new();
    let pools = validate_pools(pools, default_timeouts, &mut declared_pools, errs);
    // Routes are checked against every declared pool, valid or not, so that one broken pool
    // is reported once rather than again for each route that uses it.
    let routes = validate_routes(routes, &declared_pools, errs);
    (pools, routes)
}

fn validate_control(raw: RawControl, errs: &mut Errors) -> Option<ControlSpec> {
    let before = errs.0.len();
    let url = raw.url.trim_end_matches('/').to_string();
    match url.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("http") || u.scheme_str() == Some("https") => {
            if u.host().is_none() {
                errs.push("control.url", format!("{url:?} has no host"));
            }
        }
        _ => errs.push(
            "control.url",
            format!("{url:?} is not an http:// or https:// URL"),
        ),
    }
    let node_id = raw.node_id.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "verge-node".into())
    });
    if !valid_name(&node_id) {
        errs.push(
            "control.node_id",
            "use letters, digits, '-', '_' and '.' only (at most 128)",
        );
    }
    let token = match (raw.token_file, raw.token_env) {
        (Some(_), Some(_)) => {
            errs.push("control", "set token_file or token_env, not both");
            None
        }
        (Some(file), None) => match std::fs::read_to_string(&file) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            Ok(_) => {
                errs.push("control.token_file", format!("{file:?} is empty"));
                None
            }
            Err(e) => {
                errs.push("control.token_file", format!("cannot read {file:?}: {e}"));
                None
            }
        },
        (None, Some(var)) => match std::env::var(&var) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => {
                errs.push(
                    "control.token_env",
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (None, None) => None,
    };
    let wait = raw.wait.map_or(Duration::from_secs(30), |d| d.0);
    if wait.is_zero() || wait > Duration::from_secs(300) {
        errs.push("control.wait", "must be between 1ms and 300s");
    }
    let state_file = raw
        .state_file
        .unwrap_or_else(|| format!("/var/lib/verge/{node_id}.snapshot.json"))
        .into();
    (errs.0.len() == before).then_some(ControlSpec {
        url,
        node_id,
        token,
        state_file,
        wait,
    })
}

fn validate_cache(raw: RawCache, errs: &mut Errors) -> CacheSettings {
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
    }
}

fn validate_route_cache(
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

fn fnv_hex(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", h >> 16)
}

fn validate_server(raw: RawServer, errs: &mut Errors) -> ServerSettings {
    let threads = raw.threads.unwrap_or(1);
    if threads == 0 || threads > 1024 {
        errs.push("server.threads", "must be between 1 and 1024");
    }
    let grace_period = raw.grace_period.map_or(Duration::from_secs(5), |d| d.0);
    let graceful_shutdown_timeout = raw
        .graceful_shutdown_timeout
        .map_or(Duration::from_secs(5), |d| d.0);
    if let Some(ca) = &raw.ca_file {
        if !Path::new(ca).is_file() {
            errs.push("server.ca_file", format!("file {ca:?} does not exist"));
        }
    }
    ServerSettings {
        threads,
        grace_period,
        graceful_shutdown_timeout,
        pid_file: raw.pid_file.unwrap_or_else(|| "/tmp/verge.pid".into()),
        upgrade_sock: raw
            .upgrade_sock
            .unwrap_or_else(|| "/tmp/verge_upgrade.sock".into()),
        error_log: raw.error_log,
        ca_file: raw.ca_file,
    }
}

/// Parse `ip:port` (or `host:port`, resolved once now) into a socket address.
fn parse_listen_addr(path: &str, text: &str, errs: &mut Errors) -> Option<SocketAddr> {
    match resolve_addr(text) {
        Ok(a) => Some(a),
        Err(e) => {
            errs.push(path, e);
            None
        }
    }
}

fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !text.contains(':') {
        return Err(format!("{text:?} is not host:port"));
    }
    match text.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(e) => Err(format!("cannot resolve {text:?}: {e}")),
    }
}

fn validate_listeners(
    value: Option<serde_yaml::Value>,
    admin: SocketAddr,
    errs: &mut Errors,
) -> Vec<ListenerSpec> {
    let Some(value) = value else {
        errs.push("listeners", "at least one listener is required");
        return Vec::new();
    };
    let Some(items) = errs.decode::<Vec<serde_yaml::Value>>("listeners", value) else {
        return Vec::new();
    };
    if items.is_empty() {
        errs.push("listeners", "at least one listener is required");
    }
    let mut out = Vec::new();
    let mut seen_addrs = HashSet::new();
    let mut seen_names = HashSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let path = format!("listeners[{i}]");
        let Some(raw) = errs.decode::<RawListener>(&path, item) else {
            continue;
        };
        let Some(addr) = parse_listen_addr(&format!("{path}.listen"), &raw.listen, errs) else {
            continue;
        };
        if addr == admin {
            errs.push(
                format!("{path}.listen"),
                format!("{addr} is also the admin listener"),
            );
        }
        if !seen_addrs.insert(addr) {
            errs.push(
                format!("{path}.listen"),
                format!("{addr} is used by another listener"),
            );
        }
        let name = raw.name.clone().unwrap_or_else(|| format!("listener{i}"));
        if !seen_names.insert(name.clone()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate listener name {name:?}"),
            );
        }
        let tls = raw
            .tls
            .as_ref()
            .and_then(|t| validate_listener_tls(&format!("{path}.tls"), t, errs));
        let limits = validate_limits(&format!("{path}.limits"), raw.limits, errs);
        out.push(ListenerSpec {
            name,
            addr,
            h2c: raw.h2c,
            tls,
            limits,
        });
    }
    out
}

fn validate_listener_tls(path: &str, raw: &RawListenerTls, errs: &mut Errors) -> Option<TlsSpec> {
    let cert_ok = check_pem(&format!("{path}.cert"), &raw.cert, PemKind::Cert, errs);
    let key_ok = check_pem(&format!("{path}.key"), &raw.key, PemKind::Key, errs);
    (cert_ok && key_ok).then(|| TlsSpec {
        cert: raw.cert.clone().into(),
        key: raw.key.clone().into(),
        h2: raw.h2.unwrap_or(true),
    })
}

enum PemKind {
    Cert,
    Key,
}

/// Pingora's TLS setup panics on unreadable files, so check them here first.
fn check_pem(path: &str, file: &str, kind: PemKind, errs: &mut Errors) -> bool {
    let data = match std::fs::read(file) {
        Ok(d) => d,
        Err(e) => {
            errs.push(path, format!("cannot read {file:?}: {e}"));
            return false;
        }
    };
    let mut reader = std::io::BufReader::new(&data[..]);
    let ok = match kind {
        PemKind::Cert => rustls_pemfile::certs(&mut reader).any(|c| c.is_ok()),
        PemKind::Key => matches!(rustls_pemfile::private_key(&mut reader), Ok(Some(_))),
    };
    if !ok {
        let what = match kind {
            PemKind::Cert => "a PEM certificate",
            PemKind::Key => "a PEM private key",
        };
        errs.push(path, format!("{file:?} does not contain {what}"));
    }
    ok
}

fn validate_limits(path: &str, raw: Option<RawLimits>, errs: &mut Errors) -> Limits {
    let d = Limits::default();
    let Some(raw) = raw else { return d };
    let mut size = |key: &str, v: Option<super::units::ConfSize>, default: usize| -> usize {
        match v {
            None => default,
            Some(s) if (64..=(1 << 20)).contains(&s.0) => s.0 as usize,
            Some(_) => {
                errs.push(format!("{path}.{key}"), "must be between 64 bytes and 1MiB");
                default
            }
        }
    };
    let max_request_line = size("max_request_line", raw.max_request_line, d.max_request_line);
    let max_header_line = size("max_header_line", raw.max_header_line, d.max_header_line);
    let max_headers_size = size("max_headers_size", raw.max_headers_size, d.max_headers_size);
    let max_headers = match raw.max_headers {
        None => d.max_headers,
        Some(n) if (1..=256).contains(&n) => n,
        Some(_) => {
            errs.push(format!("{path}.max_headers"), "must be between 1 and 256");
            d.max_headers
        }
    };
    let mut positive = |key: &str, v: Option<super::units::ConfDuration>, default: Duration| match v
    {
        None => default,
        Some(x) if !x.0.is_zero() => x.0,
        Some(_) => {
            errs.push(format!("{path}.{key}"), "must be greater than zero");
            default
        }
    };
    let header_timeout = positive("header_timeout", raw.header_timeout, d.header_timeout);
    let keepalive_timeout = positive(
        "keepalive_timeout",
        raw.keepalive_timeout,
        d.keepalive_timeout,
    );
    let max_body = match raw.max_body {
        None => d.max_body,
        Some(s) if s.0 <= (16u64 << 30) => s.0,
        Some(_) => {
            errs.push(format!("{path}.max_body"), "must be at most 16GiB");
            d.max_body
        }
    };
    let max_connections = match raw.max_connections {
        None => d.max_connections,
        Some(n) if (1..=1_000_000).contains(&n) => n,
        Some(_) => {
            errs.push(
                format!("{path}.max_connections"),
                "must be between 1 and 1000000",
            );
            d.max_connections
        }
    };
    let h2 = validate_h2_limits(&format!("{path}.h2"), raw.h2, errs);
    Limits {
        max_request_line,
        max_header_line,
        max_headers_size,
        max_headers,
        header_timeout,
        keepalive_timeout,
        keepalive_requests: raw.keepalive_requests.unwrap_or(d.keepalive_requests),
        max_body,
        max_connections,
        h2,
    }
}

fn validate_h2_limits(path: &str, raw: Option<RawH2Limits>, errs: &mut Errors) -> H2Limits {
    let d = H2Limits::default();
    let Some(raw) = raw else { return d };
    let mut within =
        |key: &str, v: Option<u64>, default: u64, range: (u64, u64), unit: &str| match v {
            None => default,
            Some(n) if (range.0..=range.1).contains(&n) => n,
            Some(_) => {
                errs.push(
                    format!("{path}.{key}"),
                    format!("must be between {}{unit} and {}{unit}", range.0, range.1),
                );
                default
            }
        };
    let size = |s: Option<super::units::ConfSize>| s.map(|s| s.0);
    let count = |n: Option<usize>| n.map(|n| n as u64);
    let max_concurrent_streams = within(
        "max_concurrent_streams",
        raw.max_concurrent_streams.map(u64::from),
        d.max_concurrent_streams.into(),
        (1, 1000),
        "",
    );
    let max_header_list_size = within(
        "max_header_list_size",
        size(raw.max_header_list_size),
        d.max_header_list_size.into(),
        (1 << 10, 1 << 20),
        " bytes",
    );
    let stream_window = within(
        "stream_window",
        size(raw.stream_window),
        d.stream_window.into(),
        (1 << 10, 16 << 20),
        " bytes",
    );
    // the connection window starts at 65535 and can only be raised
    let connection_window = within(
        "connection_window",
        size(raw.connection_window),
        d.connection_window.into(),
        (64 << 10, 64 << 20),
        " bytes",
    );
    let max_pending_resets = within(
        "max_pending_resets",
        count(raw.max_pending_resets),
        d.max_pending_resets as u64,
        (1, 1000),
        "",
    );
    let max_error_resets = within(
        "max_error_resets",
        count(raw.max_error_resets),
        d.max_error_resets as u64,
        (1, 100_000),
        "",
    );
    // every value was range-checked above, so these conversions cannot fail
    let u32_of = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let usize_of = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    H2Limits {
        max_concurrent_streams: u32_of(max_concurrent_streams),
        max_header_list_size: u32_of(max_header_list_size),
        stream_window: u32_of(stream_window),
        connection_window: u32_of(connection_window),
        max_pending_resets: usize_of(max_pending_resets),
        max_error_resets: usize_of(max_error_resets),
    }
}

fn merge_timeouts(
    base: Timeouts,
    raw: Option<&RawTimeouts>,
    path: &str,
    errs: &mut Errors,
) -> Timeouts {
    let r = route_timeouts(raw, path, errs);
    Timeouts {
        connect: r.connect.unwrap_or(base.connect),
        read: r.read.unwrap_or(base.read),
        write: r.write.unwrap_or(base.write),
        idle: r.idle.unwrap_or(base.idle),
        // 0s: off
        total: match r.total {
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
            None => base.total,
        },
    }
}

fn route_timeouts(raw: Option<&RawTimeouts>, path: &str, errs: &mut Errors) -> RouteTimeouts {
    let Some(raw) = raw else {
        return RouteTimeouts::default();
    };
    let mut check = |key: &str, v: Option<super::units::ConfDuration>, allow_zero: bool| {
        v.and_then(|d| {
            if d.0.is_zero() && !allow_zero {
                errs.push(format!("{path}.{key}"), "must be greater than zero");
                None
            } else {
                Some(d.0)
            }
        })
    };
    RouteTimeouts {
        connect: check("connect", raw.connect, false),
        read: check("read", raw.read, false),
        write: check("write", raw.write, false),
        // idle 0 means "do not pool upstream connections"
        idle: check("idle", raw.idle, true),
        // total 0 means "no whole-response deadline"
        total: check("total", raw.total, true),
    }
}

fn validate_pools(
    value: Option<serde_yaml::Value>,
    default_timeouts: Timeouts,
    declared: &mut HashSet<String>,
    errs: &mut Errors,
) -> BTreeMap<String, PoolSpec> {
    let mut out = BTreeMap::new();
    let Some(value) = value else {
        errs.push("pools", "at least one pool is required");
        return out;
    };
    let Some(items) = errs.decode::<BTreeMap<String, serde_yaml::Value>>("pools", value) else {
        return out;
    };
    for (name, item) in items {
        declared.insert(name.clone());
        let path = format!("pools.{name}");
        if !valid_name(&name) {
            errs.push(
                &path,
                "pool names use letters, digits, '-', '_' and '.' only",
            );
        }
        let Some(raw) = errs.decode::<RawPool>(&path, item) else {
            continue;
        };
        if let Some(p) = validate_pool(&name, &path, raw, default_timeouts, errs) {
            out.insert(name, p);
        }
    }
    out
}

/// A pool, route or filter name: 1-128 ASCII letters, digits, `-`, `_` or `.`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn validate_pool(
    name: &str,
    path: &str,
    raw: RawPool,
    default_timeouts: Timeouts,
    errs: &mut Errors,
) -> Option<PoolSpec> {
    let before = errs.0.len();
    if raw.backends.is_empty() {
        errs.push(
            format!("{path}.backends"),
            "a pool needs at least one backend",
        );
    }
    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    for (i, b) in raw.backends.iter().enumerate() {
        let bpath = format!("{path}.backends[{i}]");
        let (label, weight) = match b {
            RawBackend::Addr(a) => (a.clone(), 1),
            RawBackend::Full(f) => (f.addr.clone(), f.weight.unwrap_or(1)),
        };
        if !(1..=1000).contains(&weight) {
            errs.push(format!("{bpath}.weight"), "must be between 1 and 1000");
        }
        match resolve_addr(&label) {
            Ok(addr) => {
                if !seen.insert(addr) {
                    errs.push(&bpath, format!("duplicate backend {addr}"));
                }
                backends.push(BackendSpec {
                    label,
                    addr,
                    weight,
                })
            }
            Err(e) => errs.push(&bpath, e),
        }
    }

    let selection = match (raw.selection.as_deref(), raw.hash_key.as_deref()) {
        (None | Some("round_robin"), None) => Selection::RoundRobin,
        (None | Some("round_robin"), Some(_)) => {
            errs.push(
                format!("{path}.hash_key"),
                "only used with selection: consistent",
            );
            Selection::RoundRobin
        }
        (Some("consistent"), key) => match parse_hash_key(key.unwrap_or("uri")) {
            Ok(k) => Selection::Consistent(k),
            Err(e) => {
                errs.push(format!("{path}.hash_key"), e);
                Selection::RoundRobin
            }
        },
        (Some(other), _) => {
            errs.push(
                format!("{path}.selection"),
                format!("unknown selection {other:?}: use round_robin or consistent"),
            );
            Selection::RoundRobin
        }
    };

    let tls = raw.tls.as_ref().and_then(|t| {
        let verify = t.verify.unwrap_or(true);
        let sni = t.sni.clone().unwrap_or_default();
        if verify && sni.is_empty() {
            errs.push(
                format!("{path}.tls.sni"),
                "required when verify is on (set verify: false to skip certificate checks)",
            );
            None
        } else {
            Some(UpstreamTls { sni, verify })
        }
    });

    let health_check = raw.health_check.as_ref().and_then(|h| {
        validate_health_check(&format!("{path}.health_check"), h, tls.as_ref(), errs)
    });

    let passive = match &raw.passive {
        None => PassiveSpec::default(),
        Some(p) => {
            let d = PassiveSpec::default();
            let eject_for = p.eject_for.map_or(d.eject_for, |x| x.0);
            if eject_for.is_zero() {
                errs.push(
                    format!("{path}.passive.eject_for"),
                    "must be greater than zero",
                );
            }
            PassiveSpec {
                max_connect_failures: p.max_connect_failures.unwrap_or(d.max_connect_failures),
                eject_for,
            }
        }
    };

    let timeouts = merge_timeouts(
        default_timeouts,
        raw.timeouts.as_ref(),
        &format!("{path}.timeouts"),
        errs,
    );
    let retries = raw.retries.unwrap_or(2);
    if retries > 16 {
        errs.push(format!("{path}.retries"), "must be at most 16");
    }

    (errs.0.len() == before).then(|| PoolSpec {
        name: name.to_string(),
        backends,
        selection,
        tls,
        health_check,
        passive,
        timeouts,
        retries,
    })
}

fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    match text.split_once(':') {
        None if text == "uri" => Ok(HashKey::Uri),
        None if text == "client_ip" => Ok(HashKey::ClientIp),
        Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("invalid header name {name:?}")),
        Some(("cookie", name)) if !name.trim().is_empty() => {
            Ok(HashKey::Cookie(name.trim().to_string()))
        }
        _ => Err(format!(
            "unknown hash_key {text:?}: use uri, client_ip, header:NAME or cookie:NAME"
        )),
    }
}

fn validate_health_check(
    path: &str,
    raw: &RawHealthCheck,
    tls: Option<&UpstreamTls>,
    errs: &mut Errors,
) -> Option<HealthCheckSpec> {
    let before = errs.0.len();
    let probe = match raw.kind.as_deref().unwrap_or("http") {
        "http" => {
            let p = raw.path.clone().unwrap_or_else(|| "/".into());
            if !p.starts_with('/') {
                errs.push(format!("{path}.path"), "must start with '/'");
            }
            let expect_status = raw.expect_status.unwrap_or(200);
            if !(100..=599).contains(&expect_status) {
                errs.push(
                    format!("{path}.expect_status"),
                    "must be an HTTP status (100-599)",
                );
            }
            let host = raw
                .host
                .clone()
                .or_else(|| tls.map(|t| t.sni.clone()).filter(|s| !s.is_empty()))
                .unwrap_or_else(|| "localhost".into());
            HealthProbe::Http {
                path: p,
                host,
                expect_status,
            }
        }
        "tcp" => {
            if raw.path.is_some() || raw.expect_status.is_some() || raw.host.is_some() {
                errs.push(
                    path,
                    "path, host and expect_status apply to type: http only",
                );
            }
            HealthProbe::Tcp
        }
        other => {
            errs.push(
                format!("{path}.type"),
                format!("unknown health check type {other:?}: use http or tcp"),
            );
            HealthProbe::Tcp
        }
    };
    let interval = raw.interval.map_or(Duration::from_secs(5), |d| d.0);
    if interval < Duration::from_millis(100) {
        errs.push(format!("{path}.interval"), "must be at least 100ms");
    }
    let timeout = raw.timeout.map_or(Duration::from_secs(1), |d| d.0);
    if timeout.is_zero() {
        errs.push(format!("{path}.timeout"), "must be greater than zero");
    }
    let healthy_after = raw.healthy_after.unwrap_or(1);
    let unhealthy_after = raw.unhealthy_after.unwrap_or(2);
    for (key, v) in [
        ("healthy_after", healthy_after),
        ("unhealthy_after", unhealthy_after),
    ] {
        if !(1..=100).contains(&v) {
            errs.push(format!("{path}.{key}"), "must be between 1 and 100");
        }
    }
    (errs.0.len() == before).then_some(HealthCheckSpec {
        probe,
        interval,
        timeout,
        healthy_after,
        unhealthy_after,
    })
}

fn validate_routes(
    value: Option<serde_yaml::Value>,
    pools: &HashSet<String>,
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
        let before = errs.0.len();
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
        if !pools.contains(&raw.pool) {
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
        if errs.0.len() == before {
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
                get_body,
                filters,
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
        let v = HeaderValue::from_str(&value);
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
            (_, Err(_)) => errs.push(
                format!("{path}.set.{name}"),
                format!("invalid header value {value:?}"),
            ),
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
    fn hash_keys() {
        assert_eq!(parse_hash_key("uri"), Ok(HashKey::Uri));
        assert_eq!(parse_hash_key("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(
            parse_hash_key("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert!(matches!(
            parse_hash_key("header:x-user"),
            Ok(HashKey::Header(_))
        ));
        assert!(parse_hash_key("header:bad header").is_err());
        assert!(parse_hash_key("body").is_err());
    }

    #[test]
    fn path_prefixes() {
        assert!(check_path_prefix("/api").is_ok());
        assert!(check_path_prefix("api").is_err());
        assert!(check_path_prefix("/a?b").is_err());
        assert!(check_path_prefix("/a b").is_err());
    }
}
