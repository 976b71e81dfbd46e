//! The cache key (`src/cache/mod.rs`) and the per-route key rules (`src/cache/key_rules.rs`).
//!
//! Input: a rule byte, then lines `host`, `path?query`, `Accept-Encoding`, `Cookie`, and the
//! parameter (allow/deny) or cookie names.
//!
//! Invariants:
//! - the key is deterministic, and its primary part decodes back into exactly scheme, host and
//!   the keyed path and query (length-prefixed parts: no two requests can collide);
//! - the rules never touch the path; `all` is the request byte for byte (and the plain key),
//!   `ignore` the path alone; every rule is idempotent;
//! - `sorted`: the keyed parameters are the request's non-empty ones, ordered by decoded name,
//!   and reordering parameters with different names does not change the key;
//! - `allow`/`deny`: the kept parameters are those whose decoded name is (not) listed, in
//!   request order, and the two lists split the parameters between them;
//! - variants: the order and case of `Vary` names, the order of `Accept-Encoding` codings and
//!   the order of cookies do not change the variant; a different key-cookie value does.

use super::input::Input;
use pingora_cache::CacheMeta;
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};
use verge::cache::key_rules::key_path_and_query;
use verge::cache::{cache_key, request_variance, route_cache_key, AcceptEncodingVary};
use verge::config::{CacheKeyRules, QueryKey};

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let sel = input.byte();
    let scheme = if sel & 0x80 == 0 { "http" } else { "https" };
    let text = input.rest_text();
    let mut lines = text.split('\n');
    let host = lines.next().unwrap_or("");
    let pq = lines.next().unwrap_or("/");
    let accept_encoding = lines.next().unwrap_or("");
    let cookie = lines.next().unwrap_or("");
    let names: Vec<String> = lines.map(str::to_string).collect();
    let rule = match sel % 5 {
        0 => QueryKey::All,
        1 => QueryKey::Sorted,
        2 => QueryKey::Ignore,
        3 => QueryKey::Allow(names.clone()),
        _ => QueryKey::Deny(names.clone()),
    };
    key_invariants(scheme, host, pq, &rule);
    if let QueryKey::Allow(n) | QueryKey::Deny(n) = &rule {
        split_invariants(pq, n);
    }
    variant_invariants(accept_encoding, cookie, &names);
}

/// Decode a primary key back into its length-prefixed parts.
fn decode_primary(mut key: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    while !key.is_empty() {
        assert!(key.len() >= 4, "truncated length prefix");
        let len = u32::from_be_bytes([key[0], key[1], key[2], key[3]]) as usize;
        assert!(key.len() >= 4 + len, "part longer than the key");
        parts.push(&key[4..4 + len]);
        key = &key[4 + len..];
    }
    parts
}

/// Percent-decoded parameter name, byte for byte (`+` is a space).
fn decoded_name(pair: &str) -> Vec<u8> {
    let name = pair.split_once('=').map_or(pair, |(n, _)| n).as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::new();
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'%' if i + 2 < name.len() => {
                if let (Some(h), Some(l)) = (hex(name[i + 1]), hex(name[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn pairs(query: &str) -> Vec<&str> {
    query.split('&').filter(|p| !p.is_empty()).collect()
}

fn split_pq(pq: &str) -> (&str, Option<&str>) {
    match pq.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (pq, None),
    }
}

fn key_invariants(scheme: &str, host: &str, pq: &str, rule: &QueryKey) {
    let rules = CacheKeyRules {
        query: rule.clone(),
        ..CacheKeyRules::default()
    };
    let keyed = key_path_and_query(pq, rule);
    let key = route_cache_key(scheme, host, pq, &rules);
    assert_eq!(
        key.primary_key(),
        route_cache_key(scheme, host, pq, &rules).primary_key(),
        "key not deterministic"
    );
    let parts = decode_primary(key.primary_key());
    assert_eq!(
        parts,
        [scheme.as_bytes(), host.as_bytes(), keyed.as_bytes()],
        "primary key does not hold exactly its parts"
    );
    assert_eq!(key.user_tag, host);
    assert_eq!(
        key_path_and_query(&keyed, rule),
        keyed,
        "rule {rule:?} not idempotent on {pq:?}"
    );
    let (path, query) = split_pq(pq);
    let (kpath, kquery) = split_pq(&keyed);
    assert_eq!(kpath, path, "the rule changed the path");
    match rule {
        QueryKey::All => {
            assert_eq!(keyed, pq);
            assert_eq!(key.primary_key(), cache_key(scheme, host, pq).primary_key());
        }
        QueryKey::Ignore => assert_eq!(keyed, path),
        QueryKey::Sorted => {
            let orig = pairs(query.unwrap_or(""));
            let got = pairs(kquery.unwrap_or(""));
            let mut a = orig.clone();
            let mut b = got.clone();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "sorted key is not a permutation of {pq:?}");
            assert!(
                got.windows(2)
                    .all(|w| decoded_name(w[0]) <= decoded_name(w[1])),
                "{keyed:?} is not sorted by name"
            );
            // Reorder: groups of equal names in reverse order, each group keeping its order.
            let mut groups: Vec<(Vec<u8>, Vec<&str>)> = Vec::new();
            for p in &orig {
                let n = decoded_name(p);
                match groups.iter_mut().find(|(g, _)| *g == n) {
                    Some((_, list)) => list.push(p),
                    None => groups.push((n, vec![p])),
                }
            }
            let reordered: Vec<&str> = groups.iter().rev().flat_map(|(_, l)| l.clone()).collect();
            let other = format!("{path}?{}", reordered.join("&"));
            assert_eq!(
                key_path_and_query(&other, rule),
                keyed,
                "parameter order changed the sorted key: {pq:?} vs {other:?}"
            );
        }
        QueryKey::Allow(names) | QueryKey::Deny(names) => {
            let allow = matches!(rule, QueryKey::Allow(_));
            let want: Vec<&str> = pairs(query.unwrap_or(""))
                .into_iter()
                .filter(|p| names.iter().any(|n| n.as_bytes() == decoded_name(p)) == allow)
                .collect();
            assert_eq!(pairs(kquery.unwrap_or("")), want, "{rule:?} on {pq:?}");
        }
    }
}

fn split_invariants(pq: &str, names: &[String]) {
    let (_, query) = split_pq(pq);
    let allowed = key_path_and_query(pq, &QueryKey::Allow(names.to_vec()));
    let denied = key_path_and_query(pq, &QueryKey::Deny(names.to_vec()));
    let mut both: Vec<&str> = pairs(split_pq(&allowed).1.unwrap_or(""));
    both.extend(pairs(split_pq(&denied).1.unwrap_or("")));
    let mut all = pairs(query.unwrap_or(""));
    both.sort_unstable();
    all.sort_unstable();
    assert_eq!(both, all, "allow and deny do not split {pq:?}");
}

/// Trim as HTTP does (ASCII whitespace only).
fn ascii_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii_whitespace())
}

fn meta_with_vary(vary: &str) -> Option<CacheMeta> {
    let mut resp = ResponseHeader::build(200, None).ok()?;
    resp.append_header("vary", vary).ok()?;
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    Some(CacheMeta::new(now, now, 0, 0, resp))
}

fn request(headers: &[(&str, &str)]) -> Option<RequestHeader> {
    let mut req = RequestHeader::build("GET", b"/", None).ok()?;
    for (k, v) in headers {
        req.append_header(k.to_string(), *v).ok()?;
    }
    Some(req)
}

fn variant_invariants(accept_encoding: &str, cookie: &str, names: &[String]) {
    let cookie_names: Vec<String> = names
        .iter()
        .filter(|n| !n.is_empty() && !n.contains([';', '=']) && ascii_trim(n) == n.as_str())
        .cloned()
        .collect();
    let rules = CacheKeyRules {
        cookies: cookie_names.clone(),
        ..CacheKeyRules::default()
    };
    let (Some(meta), Some(meta_reordered)) = (
        meta_with_vary("Accept-Encoding, X-Device"),
        meta_with_vary("x-device,accept-encoding, ACCEPT-ENCODING"),
    ) else {
        return;
    };
    let codings: Vec<&str> = accept_encoding.split(',').collect();
    let reversed: Vec<&str> = codings.iter().rev().copied().collect();
    let cookies: Vec<&str> = cookie.split(';').map(ascii_trim).collect();
    let cookies_reversed: Vec<&str> = cookies.iter().rev().copied().collect();
    let (Some(a), Some(b)) = (
        request(&[
            ("accept-encoding", accept_encoding),
            ("x-device", "m"),
            ("cookie", &cookies.join("; ")),
        ]),
        request(&[
            ("accept-encoding", &reversed.join(",")),
            ("x-device", "m"),
            ("cookie", &cookies_reversed.join("; ")),
        ]),
    ) else {
        return;
    };
    let va = request_variance(&meta, &a, Some(&rules), &[], AcceptEncodingVary::Normalised);
    assert_eq!(
        va,
        request_variance(&meta, &a, Some(&rules), &[], AcceptEncodingVary::Normalised)
    );
    assert!(va.is_some(), "a response with Vary has a variant");
    assert_eq!(
        va,
        request_variance(
            &meta_reordered,
            &a,
            Some(&rules),
            &[],
            AcceptEncodingVary::Normalised
        ),
        "order or case of Vary names changed the variant"
    );
    let cookie_name = |c: &str| c.split_once('=').map(|(n, _)| ascii_trim(n).to_string());
    let mut seen: Vec<String> = cookies.iter().filter_map(|c| cookie_name(c)).collect();
    seen.sort_unstable();
    let unique = seen.windows(2).all(|w| w[0] != w[1]);
    if unique {
        assert_eq!(
            va,
            request_variance(&meta, &b, Some(&rules), &[], AcceptEncodingVary::Normalised),
            "order of codings or cookies changed the variant"
        );
    }
    // A key cookie with another value is another variant.
    if let Some(name) = cookie_names.first() {
        let value = cookies
            .iter()
            .find(|c| cookie_name(c).as_deref() == Some(name.as_str()))
            .and_then(|c| c.split_once('=').map(|(_, v)| ascii_trim(v)));
        let other = if value == Some("x") { "y" } else { "x" };
        let with_other = format!("{name}={other}; {}", cookies.join("; "));
        if let Some(c) = request(&[
            ("accept-encoding", accept_encoding),
            ("x-device", "m"),
            ("cookie", &with_other),
        ]) {
            assert_ne!(
                va,
                request_variance(&meta, &c, Some(&rules), &[], AcceptEncodingVary::Normalised),
                "cookie {name:?} does not select the variant"
            );
        }
    }
}
