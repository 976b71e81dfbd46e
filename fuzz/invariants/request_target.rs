//! Request-target and Host checks (`src/http_syntax/target.rs`, `src/http_syntax/host.rs`, `src/routing.rs`).
//!
//! Input: one method byte, then `path \n host`.
//!
//! Invariants:
//! - `check_path` accepts exactly what an independent statement of the rule accepts: origin-form
//!   (or `*` for OPTIONS), no raw `\`, no raw or encoded control byte, no `%2F`/`%5C`, every
//!   `%` followed by two hex digits, no `.`/`..` segment raw or decoded;
//! - a refusal names a reason the path really has;
//! - an accepted path is forwarded as is, so it is its own canonical form: checking it again
//!   accepts it, decoding it once never creates a `/`, and every prefix ending before a `/`
//!   matches it on a segment boundary (what the router relies on);
//! - `check_target` (the whole target, query included) accepts exactly `*` for OPTIONS or an
//!   origin-form target of visible ASCII without `#` whose path `check_path` accepts;
//! - `canonical_host` is idempotent, lowercase, without port or trailing dot, and gives a name of
//!   non-empty labels of `[a-z0-9-_]`, or a bracketed IPv6 address; a port or upper case in the
//!   input does not change the result.

use super::input::Input;
use verge::http_syntax::host::canonical_host;
use verge::http_syntax::target::{check_path, check_target, BadTarget};
use verge::routing::prefix_matches;

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let method = match input.byte() % 4 {
        0 => "GET",
        1 => "OPTIONS",
        2 => "options",
        _ => "HEAD",
    };
    let text = input.rest_text();
    let (path, host) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    path_invariants(method, path);
    path_invariants(method, &text);
    target_invariants(method, path);
    target_invariants(method, &text);
    host_invariants(host);
    host_invariants(path);
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// The path after one percent-decoding pass, or `None` when a `%` has no two hex digits.
fn decode_once(path: &str) -> Option<Vec<u8>> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = hex(*b.get(i + 1)?)?;
            let l = hex(*b.get(i + 2)?)?;
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn has_dot_segment(bytes: &[u8]) -> bool {
    bytes
        .split(|&b| b == b'/')
        .any(|seg| seg == b"." || seg == b"..")
}

fn has_encoded_separator(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c")
}

/// The rule of `src/http_syntax/target.rs`, stated independently.
fn oracle_accepts(method: &str, path: &str) -> bool {
    if path == "*" {
        return method.eq_ignore_ascii_case("OPTIONS");
    }
    let Some(decoded) = decode_once(path) else {
        return false;
    };
    path.starts_with('/')
        && !path.contains('\\')
        && !has_encoded_separator(path)
        && !decoded.iter().copied().any(is_control)
        && !decoded.contains(&b'\\')
        && !has_dot_segment(&decoded)
}

fn is_bad_byte(b: u8) -> bool {
    b == b' ' || b == b'#' || b >= 0x80
}

/// `check_target` accepts exactly a `*` for OPTIONS, or an origin-form target of visible ASCII
/// without `#` whose path (before the first `?`) the path rule accepts; a refusal is one the
/// target really has.
fn target_invariants(method: &str, target: &str) {
    let verdict = check_target(method.as_bytes(), target.as_bytes());
    let path = target.split('?').next().unwrap_or_default();
    let oracle = (target == "*" && method == "OPTIONS")
        || (target.starts_with('/')
            && !target.bytes().any(|b| is_control(b) || is_bad_byte(b))
            && oracle_accepts("GET", path));
    assert_eq!(
        verdict.is_ok(),
        oracle,
        "check_target({method}, {target:?}) = {verdict:?} disagrees with the rule"
    );
    if let Err(BadTarget::BadByte) = verdict {
        assert!(target.bytes().any(is_bad_byte), "{target:?}");
    }
}

fn path_invariants(method: &str, path: &str) {
    let verdict = check_path(method, path);
    assert_eq!(
        verdict.is_ok(),
        oracle_accepts(method, path),
        "check_path({method}, {path:?}) = {verdict:?} disagrees with the rule"
    );
    match verdict {
        Ok(()) if path == "*" => {}
        Ok(()) => {
            assert_eq!(check_path("GET", path), Ok(()), "not stable: {path:?}");
            let decoded = decode_once(path).unwrap_or_default();
            let slashes = |b: &[u8]| b.iter().filter(|&&c| c == b'/').count();
            assert_eq!(
                slashes(&decoded),
                slashes(path.as_bytes()),
                "decoding {path:?} creates a separator"
            );
            for (i, _) in path.match_indices('/').skip(1) {
                let prefix = &path[..i];
                assert!(
                    prefix_matches(prefix, path),
                    "{prefix:?} should match {path:?}"
                );
                assert!(prefix_matches(&format!("{prefix}/"), path));
            }
        }
        Err(why) => {
            let truthful = match why {
                BadTarget::NotOriginForm => !path.starts_with('/'),
                BadTarget::EncodedSeparator => has_encoded_separator(path),
                BadTarget::Backslash => path.contains('\\'),
                BadTarget::ControlByte => {
                    path.bytes().any(is_control)
                        || (0u8..0x20)
                            .chain([0x7f])
                            .any(|c| path.to_ascii_uppercase().contains(&format!("%{c:02X}")))
                }
                BadTarget::BadPercentEncoding => decode_once(path).is_none(),
                BadTarget::DotSegment => decode_once(path).is_some_and(|d| has_dot_segment(&d)),
                BadTarget::BadByte => path.bytes().any(is_bad_byte),
            };
            assert!(
                truthful,
                "check_path({path:?}) = {why:?}, which it does not have"
            );
            assert!(!why.reason().is_empty());
        }
    }
}

fn host_invariants(raw: &str) {
    let Some(host) = canonical_host(raw) else {
        return;
    };
    assert_eq!(
        canonical_host(&host).as_deref(),
        Some(host.as_str()),
        "canonical_host is not idempotent for {raw:?}"
    );
    assert!(!host.is_empty());
    assert!(
        !host.bytes().any(|b| b.is_ascii_uppercase()),
        "{host:?} is not lowercase"
    );
    if let Some(inside) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        assert!(
            inside.parse::<std::net::Ipv6Addr>().is_ok(),
            "{raw:?} gives {host:?}, not an IPv6 literal"
        );
    } else {
        assert!(host.len() <= 253, "{host:?} is too long");
        assert!(
            host.split('.').all(|label| !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')),
            "{raw:?} gives {host:?}, not a host name"
        );
        assert_eq!(
            canonical_host(&format!("{host}:8080")).as_deref(),
            Some(host.as_str())
        );
        assert_eq!(
            canonical_host(&host.to_ascii_uppercase()).as_deref(),
            Some(host.as_str())
        );
    }
}
