//! Per-route cache-key rules as pure functions: how the query enters the primary key, and which
//! request headers and cookies select a variant. The origin always gets the request unchanged.

use crate::config::{CacheKeyRules, QueryKey};
use pingora_cache::VarianceBuilder;
use pingora_http::RequestHeader;
use std::borrow::Cow;

/// Percent-decode a query parameter name (`+` is a space, as in form encoding), for comparing
/// names only; the key keeps the bytes as sent. Bytes, not text: decoded names that are not
/// UTF-8 must still sort and compare as what they are.
fn decoded_name(raw: &str) -> Cow<'_, [u8]> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw.as_bytes());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn param_name(pair: &str) -> Cow<'_, [u8]> {
    decoded_name(pair.split_once('=').map_or(pair, |(n, _)| n))
}

/// The query as it enters the key under `rule` (without the `?`). `All` keeps it byte for byte;
/// the other rules drop empty `&&` segments.
pub fn key_query<'a>(query: &'a str, rule: &QueryKey) -> Cow<'a, str> {
    let pairs = || query.split('&').filter(|p| !p.is_empty());
    let listed = |names: &[String], pair: &str| {
        let name = param_name(pair);
        names.iter().any(|n| n.as_bytes() == &*name)
    };
    match rule {
        QueryKey::All => Cow::Borrowed(query),
        QueryKey::Ignore => Cow::Borrowed(""),
        QueryKey::Sorted => {
            let mut v: Vec<&str> = pairs().collect();
            v.sort_by_cached_key(|p| param_name(p).into_owned());
            Cow::Owned(v.join("&"))
        }
        QueryKey::Allow(names) => Cow::Owned(
            pairs()
                .filter(|p| listed(names, p))
                .collect::<Vec<_>>()
                .join("&"),
        ),
        QueryKey::Deny(names) => Cow::Owned(
            pairs()
                .filter(|p| !listed(names, p))
                .collect::<Vec<_>>()
                .join("&"),
        ),
    }
}

/// The path and query that enter the primary key: the path as requested, the query per `rule`.
/// With `QueryKey::All` this is `path_and_query` itself, so such routes keep the plain key.
pub fn key_path_and_query<'a>(path_and_query: &'a str, rule: &QueryKey) -> Cow<'a, str> {
    if *rule == QueryKey::All {
        return Cow::Borrowed(path_and_query);
    }
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    let q = key_query(query, rule);
    if q.is_empty() {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(format!("{path}?{q}"))
    }
}

/// Add the route's key headers and cookies to a variance. Names are prefixed so they can never
/// collide with a `Vary` header name (a token has no `:`); a missing header or cookie counts as
/// distinct from an empty one.
pub fn add_key_inputs(
    builder: &mut VarianceBuilder<'_>,
    rules: &CacheKeyRules,
    req: &RequestHeader,
) {
    for name in &rules.headers {
        let values: Vec<&[u8]> = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let value = if values.is_empty() {
            b"\xff".to_vec() // not a valid header byte sequence on its own: "absent"
        } else {
            let mut v = b"=".to_vec();
            v.extend(values.join(&b","[..]));
            v
        };
        builder.add_owned_name_value(format!("key-header:{name}"), value);
    }
    for name in &rules.cookies {
        let value = match crate::http_syntax::fields::cookie_value(&req.headers, name) {
            Some(v) => {
                let mut out = b"=".to_vec();
                out.extend(v);
                out
            }
            None => b"\xff".to_vec(),
        };
        builder.add_owned_name_value(format!("key-cookie:{name}"), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(names: &[&str]) -> QueryKey {
        QueryKey::Allow(names.iter().map(|s| s.to_string()).collect())
    }

    fn deny(names: &[&str]) -> QueryKey {
        QueryKey::Deny(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn query_rules() {
        let q = "b=2&utm_source=x&a=1&&a=0";
        assert_eq!(key_query(q, &QueryKey::All), q);
        assert_eq!(key_query(q, &QueryKey::Ignore), "");
        assert_eq!(key_query(q, &QueryKey::Sorted), "a=1&a=0&b=2&utm_source=x");
        assert_eq!(key_query(q, &allow(&["a"])), "a=1&a=0");
        assert_eq!(key_query(q, &deny(&["utm_source"])), "b=2&a=1&a=0");
        // names compare decoded; the key keeps what was sent
        assert_eq!(
            key_query("utm%5Fsource=1&x=2", &deny(&["utm_source"])),
            "x=2"
        );
        assert_eq!(key_query("my+id=1&z=2", &allow(&["my id"])), "my+id=1");
        // a bare name without '=' is a parameter too
        assert_eq!(key_query("flag&b=1", &allow(&["flag"])), "flag");
        // broken escapes do not panic and are compared literally
        assert_eq!(key_query("%=1&%4=2&%zz=3", &deny(&["%"])), "%4=2&%zz=3");
        assert_eq!(
            key_query("caf%C3%A9=1&x=2", &allow(&["café"])),
            "caf%C3%A9=1"
        );
    }

    /// Found by the `cache_key` fuzz target (fuzz/corpus/cache_key/bug-sorted-non-utf8): names
    /// that decode to invalid UTF-8 used to sort as U+FFFD, so they all compared equal and kept
    /// their request order, and the sorted key depended on the order after all.
    #[test]
    fn sorted_key_ignores_order_of_non_utf8_names() {
        let sorted = QueryKey::Sorted;
        assert_eq!(
            key_query("%FF=1&%FE=2", &sorted),
            key_query("%FE=2&%FF=1", &sorted)
        );
        assert_eq!(key_query("%FF=1&%FE=2", &sorted), "%FE=2&%FF=1");
        // and a configured name never matches an invalid sequence by way of U+FFFD
        assert_eq!(key_query("%FF=1&b=2", &deny(&["\u{FFFD}"])), "%FF=1&b=2");
    }

    #[test]
    fn sorted_and_ignored_queries_share_a_key_but_the_path_does_not() {
        let sorted = QueryKey::Sorted;
        assert_eq!(
            key_path_and_query("/x?b=1&a=2", &sorted),
            key_path_and_query("/x?a=2&b=1", &sorted)
        );
        assert_eq!(key_path_and_query("/x?a=2&b=1", &sorted), "/x?a=2&b=1");
        assert_eq!(key_path_and_query("/x?z=1", &QueryKey::Ignore), "/x");
        assert_eq!(key_path_and_query("/x", &QueryKey::Ignore), "/x");
        assert_eq!(key_path_and_query("/x?", &QueryKey::Ignore), "/x");
        assert_ne!(
            key_path_and_query("/x?z=1", &QueryKey::Ignore),
            key_path_and_query("/y?z=1", &QueryKey::Ignore)
        );
        // `all` is the plain key, byte for byte
        assert_eq!(
            key_path_and_query("/x?b=1&a=2", &QueryKey::All),
            "/x?b=1&a=2"
        );
        assert_eq!(key_path_and_query("/x?", &QueryKey::All), "/x?");
        // a '?' in the query itself is not a second separator
        assert_eq!(key_path_and_query("/x?a=?&b", &deny(&["b"])), "/x?a=?");
    }

    #[test]
    fn key_inputs_select_variants() {
        let rules = CacheKeyRules {
            query: QueryKey::All,
            headers: vec![http::HeaderName::from_static("x-device")],
            cookies: vec!["lang".into()],
        };
        let variance = |headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build("GET", b"/", None).expect("r");
            for (k, v) in headers {
                r.append_header(k.to_string(), *v).expect("h");
            }
            let mut b = VarianceBuilder::new();
            add_key_inputs(&mut b, &rules, &r);
            b.finalize()
        };
        let base = variance(&[("x-device", "m"), ("cookie", "lang=en; sid=1")]);
        assert!(base.is_some());
        // another cookie does not matter, the listed one does
        assert_eq!(
            base,
            variance(&[("x-device", "m"), ("cookie", "sid=2; lang=en")])
        );
        assert_ne!(base, variance(&[("x-device", "m"), ("cookie", "lang=fr")]));
        assert_ne!(base, variance(&[("x-device", "d"), ("cookie", "lang=en")]));
        // absent and empty are different variants
        assert_ne!(
            variance(&[]),
            variance(&[("x-device", ""), ("cookie", "lang=")])
        );
        let none = CacheKeyRules::default();
        let mut b = VarianceBuilder::new();
        add_key_inputs(
            &mut b,
            &none,
            &RequestHeader::build("GET", b"/", None).expect("r"),
        );
        assert_eq!(b.finalize(), None);
    }
}
