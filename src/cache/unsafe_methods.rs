//! Invalidation after unsafe requests (RFC 9111 §4.4), as a pure function: which URLs a
//! successful POST/PUT/DELETE/PATCH (or any method not known to be safe) takes out of the cache.

use http::Method;

/// A URL to invalidate: scheme, canonical host, and path with query as a client would request it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: String,
    /// Canonical host.
    pub host: String,
    /// Path and query.
    pub path_and_query: String,
}

impl Target {
    /// The path without the query, for routing.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }
}

/// Resolve a `Location` / `Content-Location` value against the request. `None` when it names
/// another host (§4.4: those MUST NOT be invalidated, or one site could purge another's
/// objects), is not http(s), or is a relative reference with dot segments (not worth resolving).
fn resolve(value: &str, scheme: &str, host: &str, request_path: &str) -> Option<Target> {
    let value = value.trim();
    let value = value.split_once('#').map_or(value, |(v, _)| v);
    if value.is_empty() {
        return None;
    }
    let same = |pq: String| Target {
        scheme: scheme.to_string(),
        host: host.to_string(),
        path_and_query: pq,
    };
    if value.starts_with("//") || value.contains("://") {
        let full = if value.starts_with("//") {
            format!("{scheme}:{value}")
        } else {
            value.to_string()
        };
        let uri: http::Uri = full.parse().ok()?;
        let target_scheme = uri.scheme_str()?.to_ascii_lowercase();
        if target_scheme != "http" && target_scheme != "https" {
            return None;
        }
        let target_host = crate::http_syntax::host::canonical_host(uri.authority()?.as_str())?;
        if target_host != host {
            return None;
        }
        let pq = crate::http_syntax::path_and_query(&uri).to_string();
        return Some(Target {
            scheme: target_scheme,
            host: target_host,
            path_and_query: pq,
        });
    }
    if value.starts_with('/') {
        return value
            .parse::<http::uri::PathAndQuery>()
            .ok()
            .map(|_| same(value.to_string()));
    }
    if value.starts_with('?') {
        return Some(same(format!("{request_path}{value}")));
    }
    let path_part = value.split_once('?').map_or(value, |(p, _)| p);
    if path_part.split('/').any(|seg| seg == "." || seg == "..") || value.contains(':') {
        return None;
    }
    let dir = request_path.rsplit_once('/').map_or("", |(d, _)| d);
    let pq = format!("{dir}/{value}");
    pq.parse::<http::uri::PathAndQuery>().ok().map(|_| same(pq))
}

/// The URLs a response to `method` invalidates: none for safe methods or error statuses;
/// otherwise the request's own URL and the same-host `Location` and `Content-Location`.
pub fn targets(
    method: &Method,
    status: u16,
    scheme: &str,
    host: &str,
    path_and_query: &str,
    location: Option<&str>,
    content_location: Option<&str>,
) -> Vec<Target> {
    if method.is_safe() || !(200..400).contains(&status) {
        return Vec::new();
    }
    let mut out = vec![Target {
        scheme: scheme.to_string(),
        host: host.to_string(),
        path_and_query: path_and_query.to_string(),
    }];
    let request_path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    for value in [location, content_location].into_iter().flatten() {
        if let Some(t) = resolve(value, scheme, host, request_path) {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pqs(v: &[Target]) -> Vec<&str> {
        v.iter().map(|t| t.path_and_query.as_str()).collect()
    }

    #[test]
    fn safe_methods_and_errors_invalidate_nothing() {
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(targets(&m, 200, "http", "a.com", "/x", None, None).is_empty());
        }
        for status in [100, 400, 404, 500, 503] {
            assert!(targets(&Method::POST, status, "http", "a.com", "/x", None, None).is_empty());
        }
    }

    #[test]
    fn unsafe_success_invalidates_the_url_and_same_host_locations() {
        for m in ["POST", "PUT", "DELETE", "PATCH", "FROB"] {
            let m = Method::from_bytes(m.as_bytes()).expect("method");
            let t = targets(&m, 204, "http", "a.com", "/items/1?x=1", None, None);
            assert_eq!(pqs(&t), ["/items/1?x=1"], "{m}");
        }
        let t = targets(
            &Method::POST,
            303,
            "http",
            "a.com",
            "/items/new",
            Some("/items/7"),
            Some("http://A.com:80/items/7?v=1#frag"),
        );
        assert_eq!(pqs(&t), ["/items/new", "/items/7", "/items/7?v=1"]);
        // another host is never invalidated
        let t = targets(
            &Method::POST,
            201,
            "http",
            "a.com",
            "/x",
            Some("https://b.com/y"),
            Some("//evil.com/z"),
        );
        assert_eq!(pqs(&t), ["/x"]);
        // an https Location on the same host keeps its scheme
        let t = targets(
            &Method::PUT,
            200,
            "http",
            "a.com",
            "/x",
            Some("https://a.com/y"),
            None,
        );
        assert_eq!(t[1].scheme, "https");
    }

    #[test]
    fn relative_references_resolve_against_the_request_path() {
        let t = |loc: &str| {
            targets(
                &Method::POST,
                201,
                "http",
                "a.com",
                "/a/b?q=1",
                Some(loc),
                None,
            )
            .get(1)
            .map(|t| t.path_and_query.clone())
        };
        assert_eq!(t("c").as_deref(), Some("/a/c"));
        assert_eq!(t("c/d?e=1").as_deref(), Some("/a/c/d?e=1"));
        assert_eq!(t("?page=2").as_deref(), Some("/a/b?page=2"));
        assert_eq!(t("../c"), None);
        assert_eq!(t("mailto:x@a.com"), None);
        assert_eq!(t(""), None);
        assert_eq!(t("/bad path"), None);
        assert_eq!(t("ftp://a.com/x"), None);
    }
}
