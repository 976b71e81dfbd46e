//! The compiled routing table: host (exact, wildcard, any) then longest path prefix. Pure, no I/O.

use crate::config::HostPattern;
use std::collections::HashMap;
use std::sync::Arc;

/// Routes for one host pattern, longest prefix first.
#[derive(Debug)]
struct PrefixList<T>(Vec<(String, Arc<T>)>);

impl<T> Default for PrefixList<T> {
    fn default() -> Self {
        PrefixList(Vec::new())
    }
}

impl<T> PrefixList<T> {
    fn insert(&mut self, prefix: &str, target: Arc<T>) {
        self.0.push((prefix.to_string(), target));
        self.0.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
    }

    fn find(&self, path: &str) -> Option<&Arc<T>> {
        self.0
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(_, t)| t)
    }
}

/// `prefix` matches `path` on a segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// An immutable routing table mapping (host, path) to a target.
///
/// The most specific host pattern is tried first (exact, then the longest wildcard suffix, then
/// `*`); within it the longest matching path prefix wins. When no prefix of a more specific host
/// pattern matches, the less specific ones are tried.
#[derive(Debug)]
pub struct RouteTable<T> {
    exact: HashMap<String, PrefixList<T>>,
    wildcard: Vec<(String, PrefixList<T>)>,
    any: PrefixList<T>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any: PrefixList::default(),
        }
    }
}

impl<T> RouteTable<T> {
    /// Add a target for every host pattern at one path prefix.
    pub fn insert(&mut self, hosts: &[HostPattern], prefix: &str, target: Arc<T>) {
        for h in hosts {
            match h {
                HostPattern::Exact(name) => self
                    .exact
                    .entry(name.clone())
                    .or_default()
                    .insert(prefix, target.clone()),
                HostPattern::Wildcard(suffix) => {
                    match self.wildcard.iter_mut().find(|(s, _)| s == suffix) {
                        Some((_, list)) => list.insert(prefix, target.clone()),
                        None => {
                            let mut list = PrefixList::default();
                            list.insert(prefix, target.clone());
                            self.wildcard.push((suffix.clone(), list));
                            self.wildcard.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
                        }
                    }
                }
                HostPattern::Any => self.any.insert(prefix, target.clone()),
            }
        }
    }

    /// Find the target for a canonical host (lowercase, no port) and a path (no query).
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<T>> {
        if let Some(t) = self.exact.get(host).and_then(|l| l.find(path)) {
            return Some(t);
        }
        for (suffix, list) in &self.wildcard {
            // `*.example.com` needs at least one label before the suffix
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(t) = list.find(path) {
                    return Some(t);
                }
            }
        }
        self.any.find(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_host_pattern;

    fn table(entries: &[(&[&str], &str, &'static str)]) -> RouteTable<&'static str> {
        let mut t = RouteTable::default();
        for (hosts, prefix, name) in entries {
            let hosts: Vec<HostPattern> = hosts
                .iter()
                .map(|h| parse_host_pattern(h).expect("pattern"))
                .collect();
            t.insert(&hosts, prefix, Arc::new(*name));
        }
        t
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let t = table(&[
            (&["a.com"], "/", "root"),
            (&["a.com"], "/api", "api"),
            (&["a.com"], "/api/v2", "v2"),
        ]);
        let get = |p| t.lookup("a.com", p).map(|x| **x);
        assert_eq!(get("/"), Some("root"));
        assert_eq!(get("/api"), Some("api"));
        assert_eq!(get("/api/users"), Some("api"));
        assert_eq!(get("/apix"), Some("root"));
        assert_eq!(get("/api/v2/x"), Some("v2"));
        assert_eq!(get("/api/v22"), Some("api"));
    }

    #[test]
    fn host_specificity_and_fallback() {
        let t = table(&[
            (&["*"], "/", "any"),
            (&["*.example.com"], "/", "wild"),
            (&["*.api.example.com"], "/", "apiwild"),
            (&["www.example.com"], "/special", "exact"),
        ]);
        let get = |h, p| t.lookup(h, p).map(|x| **x);
        assert_eq!(get("www.example.com", "/special/x"), Some("exact"));
        // exact host has no matching prefix: falls back to the wildcard
        assert_eq!(get("www.example.com", "/other"), Some("wild"));
        assert_eq!(get("x.api.example.com", "/"), Some("apiwild"));
        assert_eq!(get("a.b.example.com", "/"), Some("wild"));
        // the bare domain does not match its own wildcard
        assert_eq!(get("example.com", "/"), Some("any"));
        assert_eq!(get("other.org", "/"), Some("any"));
    }

    #[test]
    fn unknown_host_without_catch_all() {
        let t = table(&[(&["a.com"], "/", "a")]);
        assert!(t.lookup("b.com", "/").is_none());
    }
}
