//! Host names as the router, the cache key, invalidations and the origin see them: the
//! canonical form of a `Host` field or URI authority.
//!
//! A port never reaches the key or the origin: the canonical form has none, and it is also the
//! `Host` verge forwards. Otherwise `Host: shop.test:1337` would be keyed as `shop.test` while the
//! origin, seeing the port, built its answer (a redirect, absolute links) for `:1337`. A port
//! that is not one (empty, not decimal, 0, over 65535) makes the whole value invalid.

use pingora_http::RequestHeader;

/// Canonical form of a Host header or URI authority: lowercase, no port, no trailing dot.
/// Returns `None` for a value that is not a plausible host name or IP literal on a valid port.
///
/// Every request's `Host` goes through here (the hit lane's included), so a name is checked and
/// lowered in one pass over its bytes, with one allocation for the result.
pub fn canonical_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('[') {
        return canonical_ipv6(rest);
    }
    let (host, port) = match raw.bytes().rposition(|b| b == b':') {
        Some(i) => (&raw.as_bytes()[..i], Some(&raw[i + 1..])),
        None => (raw.as_bytes(), None),
    };
    if port.is_some_and(|p| !valid_port(p)) {
        return None;
    }
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    // one pass: allowed bytes only, no empty label (`a..b`, `.a`, a second trailing dot)
    let mut label_empty = true;
    let mut upper = false;
    for &b in host {
        if b == b'.' {
            if label_empty {
                return None;
            }
            label_empty = true;
        } else if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            label_empty = false;
            upper |= b.is_ascii_uppercase();
        } else {
            return None;
        }
    }
    if label_empty {
        return None;
    }
    // only ASCII bytes remain, so this cannot fail
    let host = std::str::from_utf8(host).ok()?;
    Some(if upper {
        host.to_ascii_lowercase()
    } else {
        host.to_owned()
    })
}

/// The canonical form of an IPv6 literal after its `[`: `[address]`, in its one canonical
/// spelling (RFC 5952), with an optional valid port after the `]`.
fn canonical_ipv6(rest: &str) -> Option<String> {
    let end = rest.find(']')?;
    let after = &rest[end + 1..];
    if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
        return None;
    }
    let ip: std::net::Ipv6Addr = rest[..end].parse().ok()?;
    Some(format!("[{ip}]"))
}

/// A TCP port a client could have connected to: 1 to 65535, in decimal digits.
fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0)
}

/// The host a request is for, canonical: the absolute-form authority if present, else the
/// `Host` field.
pub fn request_host(req: &RequestHeader) -> Option<String> {
    let raw = match req.uri.authority() {
        Some(a) => a.as_str(),
        None => req.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    canonical_host(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first, plainer spelling of [`canonical_host`], kept as the reference the one-pass
    /// version is compared with.
    fn reference(raw: &str) -> Option<String> {
        let raw = raw.trim();
        let host = if let Some(rest) = raw.strip_prefix('[') {
            let end = rest.find(']')?;
            let after = &rest[end + 1..];
            if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
                return None;
            }
            let ip: std::net::Ipv6Addr = rest[..end].parse().ok()?;
            return Some(format!("[{ip}]"));
        } else {
            match raw.rsplit_once(':') {
                Some((h, port)) if valid_port(port) => h,
                Some(_) => return None,
                None => raw,
            }
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty()
            || host.len() > 253
            || host.split('.').any(str::is_empty)
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return None;
        }
        Some(host.to_ascii_lowercase())
    }

    #[test]
    fn the_one_pass_form_agrees_with_the_reference_on_every_input() {
        const ALPHABET: &[u8] = b"aZ09.-_:[]  \t/@%\xc3\xa9";
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let fixed = [
            "Example.COM:8080",
            "example.com.",
            "example.com..",
            "[::1]:80",
            "a.com:",
            ":80",
            ".",
            "..",
            "a.",
            "a..",
            "A.B.C:65535",
            "a.com:65536",
            "[FE80:0::1]",
            "\u{e9}.com",
            " a.com ",
            "a:b:c",
            "1.2.3.4",
            "",
        ];
        for raw in fixed {
            assert_eq!(canonical_host(raw), reference(raw), "{raw:?}");
        }
        for _ in 0..200_000 {
            let len = (next() % 12) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            let Ok(raw) = std::str::from_utf8(&bytes) else {
                continue;
            };
            assert_eq!(canonical_host(raw), reference(raw), "{raw:?}");
        }
        let long = "a".repeat(253);
        assert_eq!(canonical_host(&long), reference(&long));
        let longer = "a".repeat(254);
        assert_eq!(canonical_host(&longer), None);
        assert_eq!(
            canonical_host(&format!("{long}.")),
            reference(&format!("{long}."))
        );
    }

    #[test]
    fn host_from_header_or_authority() {
        let mut req = RequestHeader::build("GET", b"/x", None).expect("req");
        req.insert_header("host", "Example.com:8080").expect("h");
        assert_eq!(request_host(&req).as_deref(), Some("example.com"));
        let mut req = RequestHeader::build("GET", b"/x", None).expect("req");
        req.set_uri(http::Uri::from_static("http://a.org/x"));
        req.insert_header("host", "ignored.com").expect("h");
        assert_eq!(request_host(&req).as_deref(), Some("a.org"));
        let req = RequestHeader::build("GET", b"/x", None).expect("req");
        assert_eq!(request_host(&req), None);
    }

    #[test]
    fn canonical_hosts() {
        assert_eq!(
            canonical_host("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            canonical_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(canonical_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(canonical_host("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(canonical_host("a.com:x"), None);
        for bad_port in [
            "a.com:",
            "a.com:0",
            "a.com:65536",
            "a.com:99999",
            "a.com:+80",
            "[::1]:0",
        ] {
            assert_eq!(canonical_host(bad_port), None, "{bad_port}");
        }
        assert_eq!(canonical_host("a.com:65535").as_deref(), Some("a.com"));
        assert_eq!(canonical_host("a.com:080").as_deref(), Some("a.com"));
        assert_eq!(canonical_host("a b.com"), None);
        assert_eq!(canonical_host(""), None);
        assert_eq!(canonical_host("a.com\0"), None);
    }

    /// Found by the `request_target` fuzz target: canonical output must be a fixed point and a
    /// plausible host (fuzz/corpus/request_target/bug-*).
    #[test]
    fn canonical_hosts_are_canonical() {
        // a second trailing dot used to give "example.com.", which is not canonical
        assert_eq!(canonical_host("example.com.."), None);
        assert_eq!(canonical_host("a..b"), None);
        assert_eq!(canonical_host(".a"), None);
        assert_eq!(canonical_host("."), None);
        // brackets used to accept anything
        assert_eq!(canonical_host("[x y]"), None);
        assert_eq!(canonical_host("[a/b]:80"), None);
        assert_eq!(
            canonical_host("[FE80:0::1]:443").as_deref(),
            Some("[fe80::1]")
        );
        for raw in ["Example.COM.", "[::FFFF:1.2.3.4]", "a-b_c.d:1", "1.2.3.4"] {
            let once = canonical_host(raw).expect(raw);
            assert_eq!(
                canonical_host(&once).as_deref(),
                Some(once.as_str()),
                "{raw}"
            );
        }
    }
}
