//! Rewrites toward the upstream (`routes[].rewrite`): the path and query the upstream is asked
//! for, which the cache key, the stored URL and invalidations read too, and the `Host` it
//! receives. Pure.

use crate::config::PathRewrite;
use crate::http_syntax::target::check_target;

/// A rewritten target that is not a path verge forwards (the match's groups made one the
/// target checks refuse, such as one with `//` or `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused;

/// The path and query `rule` makes of a request's, or `None` when its pattern does not match
/// the path. The query is kept as sent.
pub fn rewritten_target(
    rule: &PathRewrite,
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Option<Result<String, Refused>> {
    let mut target = rule.apply(path)?;
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    let ok =
        !target.starts_with("//") && check_target(method.as_bytes(), target.as_bytes()).is_ok();
    Some(if ok { Ok(target) } else { Err(Refused) })
}

/// The path and query a request on a route with `rule` is stored and fetched under: the
/// rewritten one, or the request's own when the rule does not apply (or refuses it).
pub fn key_target(rule: Option<&PathRewrite>, path_and_query: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    match rule.and_then(|r| rewritten_target(r, "GET", path, query)) {
        Some(Ok(target)) => target,
        _ => path_and_query.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(from: &str, to: &str) -> PathRewrite {
        PathRewrite {
            from: regex::Regex::new(from).expect("pattern"),
            to: to.to_string(),
        }
    }

    #[test]
    fn groups_fill_the_new_path_and_the_query_is_kept() {
        let r = rule("^/old/([^/]+)/(.*)$", "/new/$2/${1}x");
        assert_eq!(
            rewritten_target(&r, "GET", "/old/a/b/c", Some("q=1")),
            Some(Ok("/new/b/c/ax?q=1".to_string()))
        );
        assert_eq!(rewritten_target(&r, "GET", "/other", None), None);
        let named = rule("^/u/(?P<id>[0-9]+)$", "/users/id=${id}");
        assert_eq!(
            rewritten_target(&named, "GET", "/u/42", None),
            Some(Ok("/users/id=42".to_string()))
        );
    }

    #[test]
    fn a_rewritten_target_is_checked_like_a_request_target() {
        let r = rule("^/f/(.*)$", "/x/$1");
        assert_eq!(
            rewritten_target(&r, "GET", "/f/../etc", None),
            Some(Err(Refused)),
            "dot segments"
        );
        let leading = rule("^(.*)$", "$1");
        assert_eq!(
            rewritten_target(&leading, "GET", "//evil", None),
            Some(Err(Refused))
        );
    }

    #[test]
    fn keys_follow_the_rewrite() {
        let r = rule("^/old/(.*)$", "/new/$1");
        assert_eq!(key_target(Some(&r), "/old/a?b"), "/new/a?b");
        assert_eq!(key_target(Some(&r), "/keep"), "/keep");
        assert_eq!(key_target(None, "/old/a"), "/old/a");
    }
}
