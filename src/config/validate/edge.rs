//! Each route's edge rules: access rules (`allow`, `deny`), `rate_limit`, `https_redirect`,
//! `redirect` (with its target template), `request_id` and `rewrite` (path by regex, upstream
//! host).

use super::{address_blocks, Errors};
use crate::config::edge::*;
use crate::config::model::*;
use crate::config::raw::*;
use http::HeaderName;
use std::time::Duration;

/// The parts of a raw route that make up its edge rules.
pub(super) struct RawEdge {
    pub deny: Vec<String>,
    pub allow: Vec<String>,
    pub rate_limit: Option<RawRateLimit>,
    pub https_redirect: bool,
    pub redirect: Option<RawRedirect>,
    pub request_id: Option<RawRequestId>,
    pub rewrite: Option<RawRewrite>,
    /// The route strips its prefix (which a path rewrite would contradict).
    pub strip_prefix: bool,
}

/// Validate a route's edge rules; `path` is the route's key path (`routes[3]`).
pub(super) fn edge_rules(path: &str, raw: RawEdge, errs: &mut Errors) -> EdgeRules {
    EdgeRules {
        deny: address_blocks(&format!("{path}.deny"), &raw.deny, errs),
        allow: address_blocks(&format!("{path}.allow"), &raw.allow, errs),
        rate_limit: raw
            .rate_limit
            .map(|r| rate_limit(&format!("{path}.rate_limit"), r, errs)),
        https_redirect: raw.https_redirect,
        redirect: raw
            .redirect
            .map(|r| redirect(&format!("{path}.redirect"), r, errs)),
        request_id: raw.request_id.map(|r| RequestIdSpec {
            trust_client: r.trust_client,
        }),
        rewrite: raw.rewrite.map_or_else(Rewrite::default, |r| {
            rewrite(&format!("{path}.rewrite"), r, raw.strip_prefix, errs)
        }),
    }
}

/// Longest compiled form of a rewrite pattern (the regex crate's size limit).
const MAX_PATTERN_SIZE: usize = 1 << 20;

fn rewrite(path: &str, raw: RawRewrite, strip_prefix: bool, errs: &mut Errors) -> Rewrite {
    let path_rule = raw.path.and_then(|p| {
        let at = format!("{path}.path");
        if strip_prefix {
            errs.push(
                &at,
                "a route with strip_prefix cannot rewrite its path too: write the prefix into \
                 the rewrite instead",
            );
        }
        path_rewrite(&at, p, errs)
    });
    let host = raw.host.and_then(|h| match upstream_host(&h) {
        Ok(v) => Some(v),
        Err(e) => {
            errs.push(format!("{path}.host"), e);
            None
        }
    });
    Rewrite {
        path: path_rule,
        host,
    }
}

fn path_rewrite(path: &str, raw: RawPathRewrite, errs: &mut Errors) -> Option<PathRewrite> {
    let from = match regex::RegexBuilder::new(&raw.from)
        .size_limit(MAX_PATTERN_SIZE)
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            // the regex crate draws the pattern and a caret over several lines: keep the last
            let text = e.to_string();
            let why = text
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("error: ");
            errs.push(
                format!("{path}.from"),
                format!("{:?} is not a valid pattern: {why}", raw.from),
            );
            None
        }
    };
    if let Err(e) = check_rewrite_target(&raw.to, from.as_ref()) {
        errs.push(format!("{path}.to"), e);
        return None;
    }
    from.map(|from| PathRewrite { from, to: raw.to })
}

/// A rewrite's `to`: a path (`/`, visible ASCII, no query or fragment) whose group references
/// (`$1`, `${1}`, `${name}`, `$$` for a `$`) all name groups of `from`. Pure.
pub(crate) fn check_rewrite_target(to: &str, from: Option<&regex::Regex>) -> Result<(), String> {
    if !to.starts_with('/') || to.starts_with("//") {
        return Err(format!(
            "{to:?} must be a path starting with a single / (the host is rewrite.host)"
        ));
    }
    if let Some(bad) = to
        .chars()
        .find(|c| !c.is_ascii_graphic() || *c == '?' || *c == '#')
    {
        return Err(format!(
            "{to:?} contains {bad:?}: the query is kept as sent, and spaces or non-ASCII \
             characters must be percent-encoded"
        ));
    }
    if to.starts_with("/$") {
        return Err(format!(
            "{to:?}: a group right after the leading / could make a path starting with //"
        ));
    }
    let Some(from) = from else {
        return Ok(());
    };
    let mut rest = to;
    while let Some(at) = rest.find('$') {
        let after = &rest[at + 1..];
        let (name, used) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("{to:?}: \"${{\" is not closed by \"}}\""))?;
            (&braced[..end], end + 2)
        } else if after.starts_with('$') {
            ("", 1)
        } else {
            let len = after
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            if len == 0 {
                return Err(format!("{to:?}: write a lone $ as $$"));
            }
            (&after[..len], len)
        };
        if !name.is_empty() {
            let known = match name.parse::<usize>() {
                Ok(i) => i < from.captures_len(),
                Err(_) => from.capture_names().flatten().any(|n| n == name),
            };
            if !known {
                return Err(format!(
                    "{to:?}: the pattern has no group {name:?} (write ${{1}} where a group \
                     number is followed by a letter, digit or _)"
                ));
            }
        }
        rest = &after[used..];
    }
    Ok(())
}

/// A `rewrite.host`: a host name or address, with an optional port, as the upstream's `Host`.
fn upstream_host(text: &str) -> Result<http::HeaderValue, String> {
    let authority: http::uri::Authority = text
        .parse()
        .map_err(|_| format!("{text:?} is not a host name (with an optional :port)"))?;
    if text.contains('@') || authority.host().is_empty() {
        return Err(format!(
            "{text:?} is not a host name (with an optional :port)"
        ));
    }
    http::HeaderValue::from_str(&text.to_ascii_lowercase())
        .map_err(|_| format!("{text:?} is not a valid Host value"))
}

/// Largest `rate` and `burst`.
const MAX_RATE: u32 = 1_000_000;

fn rate_limit(path: &str, raw: RawRateLimit, errs: &mut Errors) -> RateLimitSpec {
    if raw.rate == 0 || raw.rate > MAX_RATE {
        errs.push(format!("{path}.rate"), format!("must be 1 to {MAX_RATE}"));
    }
    let per = raw.per.map_or(Duration::from_secs(1), |d| d.0);
    if per.is_zero() || per > Duration::from_secs(86_400) {
        errs.push(format!("{path}.per"), "must be between 1ms and 1d");
    }
    let burst = raw.burst.unwrap_or(raw.rate);
    // a default burst (the rate) is wrong only where the rate is, and reported there
    if raw.burst.is_some() && (burst == 0 || burst > MAX_RATE) {
        errs.push(format!("{path}.burst"), format!("must be 1 to {MAX_RATE}"));
    }
    let key = match raw.key.as_deref() {
        None | Some("client_ip") => RateKey::ClientIp,
        Some("route") => RateKey::Route,
        Some(other) => match other.strip_prefix("header:").map(str::trim) {
            Some(name) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => RateKey::Header(n),
                Err(_) => {
                    errs.push(
                        format!("{path}.key"),
                        format!("invalid header name {name:?}"),
                    );
                    RateKey::Route
                }
            },
            None => {
                errs.push(
                    format!("{path}.key"),
                    format!("must be client_ip, route or header:NAME, not {other:?}"),
                );
                RateKey::Route
            }
        },
    };
    RateLimitSpec {
        rate: raw.rate,
        per,
        burst,
        key,
    }
}

fn redirect(path: &str, raw: RawRedirect, errs: &mut Errors) -> Redirect {
    let status = raw.status.unwrap_or(301);
    if ![301, 302, 303, 307, 308].contains(&status) {
        errs.push(
            format!("{path}.status"),
            format!("must be 301, 302, 303, 307 or 308, not {status}"),
        );
    }
    let to = match parse_template(&raw.to) {
        Ok(parts) => parts,
        Err(e) => {
            errs.push(format!("{path}.to"), e);
            Vec::new()
        }
    };
    Redirect { to, status }
}

/// Parse a header value set by a route: text with `${client_ip}`, `${request_id}`,
/// `${route}`, `${scheme}` and `${host}` (a value without `${` is kept as it is). Pure.
pub(crate) fn parse_header_template(text: &str) -> Result<HeaderTemplate, String> {
    if !text.contains("${") {
        return http::HeaderValue::from_str(text)
            .map(HeaderTemplate::Fixed)
            .map_err(|_| format!("invalid header value {text:?}"));
    }
    let parts = parse_variables(text, ValuePart::Literal, |name| match name {
        "client_ip" => Some(ValuePart::ClientIp),
        "request_id" => Some(ValuePart::RequestId),
        "route" => Some(ValuePart::Route),
        "scheme" => Some(ValuePart::Scheme),
        "host" => Some(ValuePart::Host),
        _ => None,
    })
    .map_err(|e| {
        e.describe(
            text,
            "${client_ip}, ${request_id}, ${route}, ${scheme} or ${host}",
        )
    })?;
    Ok(HeaderTemplate::Parts(parts))
}

/// What is wrong with a text's `${…}` variables.
enum VariableError {
    /// A `${` without its `}`.
    Unclosed,
    /// A name that is not one of the text's variables.
    Unknown(String),
}

impl VariableError {
    /// The message, naming the variables `text` may use (`known`).
    fn describe(&self, text: &str, known: &str) -> String {
        match self {
            VariableError::Unclosed => format!("{text:?}: \"${{\" is not closed by \"}}\""),
            VariableError::Unknown(name) => format!("unknown variable ${{{name}}}: use {known}"),
        }
    }
}

/// Split `text` into literal pieces and the variables `variable` knows (`${name}`). Pure.
fn parse_variables<T>(
    text: &str,
    literal: fn(String) -> T,
    variable: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, VariableError> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(literal(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(VariableError::Unclosed)?;
        let name = &after[..end];
        parts.push(variable(name).ok_or_else(|| VariableError::Unknown(name.to_string()))?);
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(literal(rest.to_string()));
    }
    Ok(parts)
}

/// Parse a redirect target: text with `${scheme}`, `${host}`, `${path}` and `${query}`. It
/// must start with `http://`, `https://`, `${scheme}://` or `/`, and be visible ASCII. Pure.
pub(crate) fn parse_template(text: &str) -> Result<Vec<TemplatePart>, String> {
    let absolute = ["http://", "https://", "${scheme}://"];
    if !(absolute.iter().any(|a| text.starts_with(a)) || text.starts_with('/')) {
        return Err(format!(
            "{text:?} must start with http://, https://, ${{scheme}}:// or / (a path on the \
             same host)"
        ));
    }
    if text.starts_with("/${") {
        // `/${path}` would send a request for `//evil.example/` to another site
        return Err(format!(
            "{text:?}: a variable right after the leading / could make a URL to another host"
        ));
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{text:?} contains {bad:?}: write spaces and non-ASCII characters percent-encoded"
        ));
    }
    parse_variables(text, TemplatePart::Literal, |name| match name {
        "scheme" => Some(TemplatePart::Scheme),
        "host" => Some(TemplatePart::Host),
        "path" => Some(TemplatePart::Path),
        "query" => Some(TemplatePart::Query),
        _ => None,
    })
    .map_err(|e| e.describe(text, "${scheme}, ${host}, ${path} or ${query}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeaderTemplate, ValuePart};

    #[test]
    fn templates_parse_into_text_and_variables() {
        assert_eq!(
            parse_template("https://new.example${path}${query}"),
            Ok(vec![
                TemplatePart::Literal("https://new.example".into()),
                TemplatePart::Path,
                TemplatePart::Query
            ])
        );
        assert_eq!(
            parse_template("/v2${path}/x$y"),
            Ok(vec![
                TemplatePart::Literal("/v2".into()),
                TemplatePart::Path,
                TemplatePart::Literal("/x$y".into())
            ])
        );
        assert!(parse_template("/${path}").is_err(), "//evil.example");
        assert!(parse_template("new.example/x").is_err(), "no scheme");
        assert!(parse_template("https://a b").is_err(), "a space");
        assert!(parse_template("https://a${path").is_err(), "unclosed");
        let err = parse_template("https://a${uri}").expect_err("unknown");
        assert!(err.contains("unknown variable ${uri}"), "{err}");
    }

    #[test]
    fn every_edge_error_is_reported_with_its_key_path() {
        let bad = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - hosts: [a.com]
    pool: p
    deny: [10.0.0.0/33]
    allow: [nope]
    rate_limit: {rate: 0, per: 0s, key: cookie}
    redirect: {to: "https://x${nope}", status: 200}
  - hosts: [b.com]
    pool: p
    rate_limit: {rate: 5, burst: 0, key: "header:bad name"}
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].deny[0]",
                "routes[0].allow[0]",
                "routes[0].rate_limit.rate",
                "routes[0].rate_limit.per",
                "routes[0].rate_limit.key",
                "routes[0].redirect.status",
                "routes[0].redirect.to",
                "routes[1].rate_limit.burst",
                "routes[1].rate_limit.key",
            ],
            "{text:#?}"
        );
    }

    #[test]
    fn a_control_plane_policy_carries_edge_rules_with_the_same_checks() {
        let policy: serde_yaml::Value = serde_yaml::from_str(
            r#"
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - {hosts: [a.com], pool: p, deny: [10.0.0.0/8], rate_limit: {rate: 5}, request_id: {}}
  - {hosts: [b.com], pool: p, redirect: {to: "/x", status: 999}}
"#,
        )
        .expect("yaml");
        let errs = super::super::validate_policy(policy).expect_err("invalid");
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 1, "{text:#?}");
        assert_eq!(errs[0].path, "routes[1].redirect.status");
    }

    #[test]
    fn header_values_parse_into_text_and_variables() {
        assert_eq!(
            parse_header_template("plain $x {y}"),
            Ok(HeaderTemplate::Fixed(http::HeaderValue::from_static(
                "plain $x {y}"
            )))
        );
        assert_eq!(
            parse_header_template("${client_ip}, ${request_id}/${route}:${scheme}:${host}"),
            Ok(HeaderTemplate::Parts(vec![
                ValuePart::ClientIp,
                ValuePart::Literal(", ".into()),
                ValuePart::RequestId,
                ValuePart::Literal("/".into()),
                ValuePart::Route,
                ValuePart::Literal(":".into()),
                ValuePart::Scheme,
                ValuePart::Literal(":".into()),
                ValuePart::Host,
            ]))
        );
        assert!(parse_header_template("${path}").is_err());
        assert!(parse_header_template("${host").is_err());
        let bad = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - hosts: [a.com]
    pool: p
    request_headers: {set: {x-a: "${nope}"}}
    response_headers: {set: {x-b: "${host"}}
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].request_headers.set.x-a",
                "routes[0].response_headers.set.x-b"
            ]
        );
    }

    #[test]
    fn rewrites_are_checked_with_their_key_paths() {
        let bad = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - hosts: [a.com]
    pool: p
    rewrite: {path: {from: "^/(a", to: "/x"}, host: "a b"}
  - hosts: [b.com]
    pool: p
    rewrite: {path: {from: "^/(a)/(?P<n>.*)$", to: "/x/$2/$1a/${n}"}}
  - hosts: [c.com]
    path: /c
    strip_prefix: true
    pool: p
    rewrite: {path: {from: "^/c(.*)$", to: "x$1?q"}}
"#;
        let errs = Config::from_yaml_str(bad).expect_err("invalid").errors;
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].rewrite.path.from",
                "routes[0].rewrite.host",
                "routes[1].rewrite.path.to",
                "routes[2].rewrite.path",
                "routes[2].rewrite.path.to",
            ],
            "{text:#?}"
        );
        assert!(text[2].contains("no group \"1a\""), "{}", text[2]);
        let from = regex::Regex::new("^/(a)/(?P<n>.*)$").expect("pattern");
        for good in ["/x/$2/${1}a/${n}", "/x/$$1", "/"] {
            assert_eq!(check_rewrite_target(good, Some(&from)), Ok(()), "{good}");
        }
        for wrong in ["/x/$3", "/x/${m}", "/$1", "//x", "/x y", "/x$"] {
            assert!(check_rewrite_target(wrong, Some(&from)).is_err(), "{wrong}");
        }
    }

    #[test]
    fn edge_rules_validate_with_their_defaults() {
        let good = r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {p: {backends: ["127.0.0.1:1"]}}
routes:
  - hosts: [a.com]
    pool: p
    allow: [10.0.0.0/8, "::1"]
    deny: [10.1.0.0/16]
    rate_limit: {rate: 10, key: "header:X-Api-Key"}
    https_redirect: true
    redirect: {to: "https://b.com${path}"}
    request_id: {}
"#;
        let c = Config::from_yaml_str(good).expect("valid");
        let edge = &c.routes[0].edge;
        assert_eq!(edge.allow.len(), 2);
        let limit = edge.rate_limit.as_ref().expect("limit");
        assert_eq!((limit.rate, limit.burst), (10, 10));
        assert_eq!(limit.per, Duration::from_secs(1));
        assert_eq!(
            limit.key,
            RateKey::Header(HeaderName::from_static("x-api-key"))
        );
        assert_eq!(edge.redirect.as_ref().map(|r| r.status), Some(301));
        assert_eq!(edge.request_id, Some(RequestIdSpec::default()));
        let ip = |s: &str| s.parse().ok();
        assert!(!edge.refuses(ip("10.2.3.4")));
        assert!(edge.refuses(ip("10.1.3.4")), "deny wins");
        assert!(edge.refuses(ip("192.168.1.1")), "not allowed");
        assert!(!edge.refuses(ip("::1")));
        assert!(!EdgeRules::default().refuses(None), "no rules");
    }
}
