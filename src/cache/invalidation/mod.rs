//! Invalidations as the cache applies them: what one matches (URL, prefix, host, tag, all), its
//! target in canonical form, and the node's index of applied invalidations (`index`).

pub mod index;

use crate::http_syntax::host::canonical_host;
use serde::{Deserialize, Serialize};

/// What an invalidation matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvalidationKind {
    /// One URL (host + path and query), every variant.
    Url,
    /// Every URL of a host under a path prefix.
    Prefix,
    /// Every URL of a host.
    Host,
    /// Every entry whose response carried this surrogate key / cache tag.
    Tag,
    /// Everything.
    All,
}

impl InvalidationKind {
    /// The kind as written in the API and the CLI (`url`, `prefix`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidationKind::Url => "url",
            InvalidationKind::Prefix => "prefix",
            InvalidationKind::Host => "host",
            InvalidationKind::Tag => "tag",
            InvalidationKind::All => "all",
        }
    }
}

/// A target in its canonical form, as the node's invalidation index stores it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// One URL of one host.
    Url {
        /// Canonical host (lowercase, default port dropped).
        host: String,
        /// Path and query as the cache keys them.
        path_query: String,
    },
    /// Every URL of a host whose path starts with `prefix` on a segment boundary.
    Prefix {
        /// Canonical host.
        host: String,
        /// Path prefix, starting with `/`.
        prefix: String,
    },
    /// Every URL of a canonical host.
    Host(String),
    /// Every entry tagged with this surrogate key.
    Tag(String),
    /// Everything.
    All,
}

/// Longest target accepted (a URL's request line is capped at 8 KiB by default).
pub const MAX_TARGET_LEN: usize = 8192;

/// Split `http://host/path?q`, `//host/path` or `host/path` into canonical host and the rest.
fn split_url(text: &str) -> Result<(String, String), String> {
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .or_else(|| text.strip_prefix("//"))
        .unwrap_or(text);
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = canonical_host(authority).ok_or_else(|| format!("{authority:?} is not a host"))?;
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    if path.contains('#') {
        return Err("a URL target cannot contain a fragment".into());
    }
    Ok((host, path))
}

/// Parse and canonicalise a target for its kind; the error says why it is unusable.
pub fn parse_target(kind: InvalidationKind, text: &str) -> Result<Target, String> {
    let text = text.trim();
    if text.len() > MAX_TARGET_LEN {
        return Err(format!("target is longer than {MAX_TARGET_LEN} bytes"));
    }
    if text.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("target contains spaces or control characters".into());
    }
    if text.is_empty() && kind != InvalidationKind::All {
        return Err("target is empty".into());
    }
    match kind {
        InvalidationKind::Url => {
            let (host, path_query) = split_url(text)?;
            Ok(Target::Url { host, path_query })
        }
        InvalidationKind::Prefix => {
            let (host, prefix) = split_url(text)?;
            if prefix.contains('?') {
                return Err("a prefix target cannot contain a query".into());
            }
            Ok(Target::Prefix { host, prefix })
        }
        InvalidationKind::Host => canonical_host(text)
            .map(Target::Host)
            .ok_or_else(|| format!("{text:?} is not a host")),
        InvalidationKind::Tag => {
            if text.len() > 1024 || text.contains([',', '"']) {
                Err("a tag is at most 1024 bytes without ',' or '\"'".into())
            } else {
                Ok(Target::Tag(text.to_string()))
            }
        }
        InvalidationKind::All => Ok(Target::All),
    }
}

/// One accepted invalidation, as logged by the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    /// Its place in the invalidation log (1, 2, …).
    pub seq: u64,
    /// What `target` names.
    pub kind: InvalidationKind,
    /// The URL, prefix, host or tag, as submitted.
    pub target: String,
    /// Soft: entries become stale (still usable for stale-while-revalidate / stale-if-error);
    /// hard: entries are refetched.
    pub soft: bool,
    /// When the control plane accepted it (Unix milliseconds).
    pub created_ms: u64,
    /// The client's id for it (an event id from an at-least-once pipeline): a redelivery with
    /// the same id gets this `seq` back and purges nothing again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// For a URL: the origin object's new version (its `ETag`). Only entries that carry
    /// another version (or none) are invalidated; one already carrying it is kept, so a late
    /// or duplicated purge does not evict fresh content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<String>,
    /// The nodes that apply it, when it is one wave of a staged purge; absent: every node.
    /// A node it does not reach skips it (its `seq` still counts as applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeSelector>,
}

/// Which nodes apply an invalidation: one wave of a staged purge (`{"only": [...]}`), or its
/// last wave, every node but those of the earlier ones (`{"except": [...]}`), so nodes that
/// joined meanwhile are reached too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum NodeSelector {
    /// Only these node ids.
    Only(Vec<String>),
    /// Every node but these.
    Except(Vec<String>),
}

impl NodeSelector {
    /// Whether the node named `node` applies it.
    pub fn reaches(&self, node: &str) -> bool {
        match self {
            NodeSelector::Only(ids) => ids.iter().any(|n| n == node),
            NodeSelector::Except(ids) => !ids.iter().any(|n| n == node),
        }
    }
}

impl Invalidation {
    /// Whether the node named `node` applies it (a node without a name applies every one).
    pub fn reaches(&self, node: Option<&str>) -> bool {
        match (&self.nodes, node) {
            (Some(sel), Some(node)) => sel.reaches(node),
            _ => true,
        }
    }
}

/// An entity tag as versions compare: without a weak prefix (`W/`) or its quotes, so `"v2"`,
/// `W/"v2"` and `v2` are the same version.
pub fn version_of(etag: &str) -> &str {
    let t = etag.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(t)
}

/// Why an `expected_version` cannot be used, if it cannot.
pub fn check_expected_version(kind: InvalidationKind, version: &str) -> Result<(), String> {
    if kind != InvalidationKind::Url {
        return Err("expected_version applies to url purges only".into());
    }
    let v = version_of(version);
    if v.is_empty() || v.len() > 1024 {
        return Err("expected_version must be an entity tag of 1 to 1024 bytes".into());
    }
    // RFC 9110 §8.8.3 etagc: '!', '#' to '~', or obs-text
    let etagc = |b: u8| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80;
    if !v.bytes().all(etagc) {
        return Err(
            "expected_version must be an entity tag (no spaces, quotes or controls)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_targets_are_canonical() {
        let t = parse_target(InvalidationKind::Url, "https://Example.COM:443/a/b?x=1").unwrap();
        assert_eq!(
            t,
            Target::Url {
                host: "example.com".into(),
                path_query: "/a/b?x=1".into()
            }
        );
        let t = parse_target(InvalidationKind::Url, "example.com").unwrap();
        assert_eq!(
            t,
            Target::Url {
                host: "example.com".into(),
                path_query: "/".into()
            }
        );
        let t = parse_target(InvalidationKind::Url, "example.com?q").unwrap();
        assert!(matches!(t, Target::Url { path_query, .. } if path_query == "/?q"));
    }

    #[test]
    fn versions_compare_without_weakness_or_quotes() {
        for tag in ["\"v2\"", "W/\"v2\"", "v2", " \"v2\" "] {
            assert_eq!(version_of(tag), "v2", "{tag}");
        }
        assert!(check_expected_version(InvalidationKind::Url, "\"abc-1\"").is_ok());
        assert!(check_expected_version(InvalidationKind::Prefix, "\"a\"")
            .unwrap_err()
            .contains("url purges only"));
        for bad in ["", "\"\"", "a b", "a\"b", "\"x\u{7}\""] {
            assert!(
                check_expected_version(InvalidationKind::Url, bad).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_targets_say_why() {
        let k = InvalidationKind::Url;
        assert!(parse_target(k, "").unwrap_err().contains("empty"));
        assert!(parse_target(k, "bad host/x").is_err());
        assert!(parse_target(k, "a.com/x#frag")
            .unwrap_err()
            .contains("fragment"));
        assert!(parse_target(InvalidationKind::Prefix, "a.com/x?y").is_err());
        assert!(parse_target(InvalidationKind::Host, "a b").is_err());
        assert!(parse_target(InvalidationKind::Tag, "a,b").is_err());
        assert!(parse_target(k, &"a".repeat(9000)).is_err());
        assert_eq!(parse_target(InvalidationKind::All, ""), Ok(Target::All));
    }
}
