//! HTTP syntax every layer reads the same way, as pure functions: canonical hosts, request-target
//! checks, field values. The leaf of the crate: it imports nothing of verge.

pub mod chunked;
pub mod fields;
pub mod h2_request;
pub mod head_index;
pub mod host;
pub mod request_line;
pub mod target;

/// The scheme of a listener's requests, as the cache key and `X-Forwarded-Proto` name it.
pub fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// The origin-form path and query of a request URI (`/` when it has none).
pub fn path_and_query(uri: &http::Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}
