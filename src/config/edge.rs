//! Validated types of the edge features besides access rules and redirects: rewrites toward the
//! upstream, custom error pages, route header edits (values with request variables), and a TLS
//! listener's certificates by SNI, ALPN and minimum version.

use http::{HeaderName, HeaderValue};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One more certificate of a TLS listener (`tls.certificates[]`), for the hosts it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCertificate {
    /// Server names it is chosen for: `a.example` exactly, or `*.a.example` (one label).
    pub hosts: Vec<String>,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The protocols a TLS listener offers through ALPN (`tls.alpn`), in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alpn {
    /// `[h2, http/1.1]` (the default).
    #[default]
    H2H1,
    /// `[http/1.1]` (also `h2: false`).
    H1,
    /// `[h2]`: a client whose ALPN offers no `h2` is refused.
    H2,
}

/// The oldest TLS version a listener accepts (`tls.min_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default).
    #[default]
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// `routes[].rewrite`: what the upstream is asked for instead of what the client asked.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// A new path from a regex match of the request's path; the query is kept.
    pub path: Option<PathRewrite>,
    /// The `Host` the upstream receives (routing, the cache key and `X-Forwarded-Host` keep the
    /// client's).
    pub host: Option<HeaderValue>,
}

/// `routes[].rewrite.path: {from, to}`: a path matching `from` becomes `to`, with `$1`,
/// `${name}`… replaced by the match's groups. A path that does not match is left as it is.
#[derive(Debug, Clone)]
pub struct PathRewrite {
    /// The pattern, matched against the path (not the query).
    pub from: regex::Regex,
    /// The new path, with group references.
    pub to: String,
}

impl PathRewrite {
    /// The rewritten path for `path`, or `None` when `from` does not match it. Pure.
    pub fn apply(&self, path: &str) -> Option<String> {
        let captures = self.from.captures(path)?;
        let mut out = String::with_capacity(self.to.len() + path.len());
        captures.expand(&self.to, &mut out);
        Some(out)
    }
}

/// Error pages by status (`error_pages:` of a route or a listener). Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorPages(pub Arc<BTreeMap<u16, ErrorPage>>);

impl ErrorPages {
    /// The page for `status`, if one is configured.
    pub fn get(&self, status: u16) -> Option<&ErrorPage> {
        self.0.get(&status)
    }

    /// Whether no page is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One custom error page: its body (read from a file when the config is validated, or written
/// inline) and its `Content-Type`. `${request_id}` and `${status}` in the body are replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPage {
    /// The body, with its variables.
    pub body: String,
    /// Its `Content-Type`.
    pub content_type: HeaderValue,
}

impl ErrorPage {
    /// The body for one answer: `${request_id}` (empty without one) and `${status}` filled in.
    pub fn render(&self, status: u16, request_id: Option<&str>) -> String {
        self.body
            .replace("${request_id}", request_id.unwrap_or(""))
            .replace("${status}", &status.to_string())
    }
}

/// Header edits applied to a request or a response.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    /// Fields set (replacing any existing value), each value text with request variables.
    pub set: Vec<(HeaderName, HeaderTemplate)>,
    /// Fields removed.
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Whether a value set reads the client's address (`${client_ip}`).
    pub fn reads_client_ip(&self) -> bool {
        self.set.iter().any(|(_, t)| match t {
            HeaderTemplate::Fixed(_) => false,
            HeaderTemplate::Parts(parts) => parts.contains(&ValuePart::ClientIp),
        })
    }
}

/// A header value set by a route's header rules: text with request variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderTemplate {
    /// No variables: the value as written.
    Fixed(HeaderValue),
    /// Text and variables, filled in per request.
    Parts(Vec<ValuePart>),
}

/// A piece of a header value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValuePart {
    /// Text copied as written.
    Literal(String),
    /// `${client_ip}`: the client address the route's edge rules read.
    ClientIp,
    /// `${request_id}`: the request's id (empty on routes without `request_id`).
    RequestId,
    /// `${route}`: the route's name.
    Route,
    /// `${scheme}`: `http` or `https`, as the request came in.
    Scheme,
    /// `${host}`: the canonical host (lowercase, no port).
    Host,
}
