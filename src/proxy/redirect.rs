//! Redirects verge answers itself: a route's `redirect` (a target built from the request's
//! scheme, host, path and query) and its `https_redirect` (plain-listener requests sent to
//! `https://`). Pure.

use crate::config::{EdgeRules, TemplatePart};

/// The status of an HTTPS redirect: permanent, and the method and body are kept (RFC 9110
/// §15.4.9), as Caddy's automatic HTTPS redirect does.
pub const HTTPS_REDIRECT_STATUS: u16 = 308;

/// The request as a redirect target reads it.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// `http` or `https`, as the request came in.
    pub scheme: &'a str,
    /// The canonical host (lowercase, no port).
    pub host: &'a str,
    /// The path.
    pub path: &'a str,
    /// The query without its `?` (`None`: the target had none).
    pub query: Option<&'a str>,
}

/// The redirect a route's rules give this request, as (status, `Location`), if any:
/// `https_redirect` first (plain listeners only), then `redirect`.
pub fn redirect_for(edge: &EdgeRules, req: &RequestParts<'_>) -> Option<(u16, String)> {
    if edge.https_redirect && req.scheme == "http" {
        let query = query_part(req.query);
        return Some((
            HTTPS_REDIRECT_STATUS,
            format!("https://{}{}{query}", req.host, req.path),
        ));
    }
    let redirect = edge.redirect.as_ref()?;
    Some((redirect.status, expand(&redirect.to, req)))
}

/// `?query`, or nothing without a query (an empty query `?` is kept as sent).
fn query_part(query: Option<&str>) -> String {
    query.map(|q| format!("?{q}")).unwrap_or_default()
}

/// A redirect target with the request's values in place of its variables.
pub fn expand(parts: &[TemplatePart], req: &RequestParts<'_>) -> String {
    let mut out = String::with_capacity(64);
    for part in parts {
        match part {
            TemplatePart::Literal(text) => out.push_str(text),
            TemplatePart::Scheme => out.push_str(req.scheme),
            TemplatePart::Host => out.push_str(req.host),
            TemplatePart::Path => out.push_str(req.path),
            TemplatePart::Query => out.push_str(&query_part(req.query)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Redirect;

    fn req<'a>(scheme: &'a str, query: Option<&'a str>) -> RequestParts<'a> {
        RequestParts {
            scheme,
            host: "old.example",
            path: "/a/b",
            query,
        }
    }

    #[test]
    fn targets_take_the_request_values() {
        let parts = vec![
            TemplatePart::Literal("https://new.example".into()),
            TemplatePart::Path,
            TemplatePart::Query,
        ];
        assert_eq!(
            expand(&parts, &req("http", Some("x=1&y"))),
            "https://new.example/a/b?x=1&y"
        );
        assert_eq!(
            expand(&parts, &req("http", None)),
            "https://new.example/a/b"
        );
        let all = vec![
            TemplatePart::Scheme,
            TemplatePart::Literal("://".into()),
            TemplatePart::Host,
            TemplatePart::Literal("/v2".into()),
            TemplatePart::Path,
        ];
        assert_eq!(
            expand(&all, &req("https", None)),
            "https://old.example/v2/a/b"
        );
    }

    #[test]
    fn https_redirect_applies_to_plain_requests_before_the_route_redirect() {
        let mut edge = EdgeRules {
            https_redirect: true,
            ..EdgeRules::default()
        };
        assert_eq!(
            redirect_for(&edge, &req("http", Some("q"))),
            Some((308, "https://old.example/a/b?q".to_string()))
        );
        assert_eq!(redirect_for(&edge, &req("https", None)), None);
        edge.redirect = Some(Redirect {
            to: vec![TemplatePart::Literal("/moved".into())],
            status: 302,
        });
        assert_eq!(
            redirect_for(&edge, &req("https", None)),
            Some((302, "/moved".to_string()))
        );
        assert_eq!(
            redirect_for(&EdgeRules::default(), &req("http", None)),
            None
        );
    }
}
