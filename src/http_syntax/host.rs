//! Host names as the router, the cache key and invalidations compare them: the canonical form
//! of a `Host` field or URI authority, and the ports a listener answers for.
//!
//! A request's port never reaches the key or the origin: a Host may name no port, the port of
//! the listener it came in on, or its scheme's default (all three mean the same resource), and
//! anything else is refused. Otherwise `Host: shop.test:1337` would be keyed as `shop.test` while
//! the origin, seeing the port, builds its answer (a redirect, absolute links) for `:1337`.

use pingora_http::RequestHeader;

/// Canonical form of a Host header or URI authority: lowercase, no port, no trailing dot.
/// Returns `None` for a value that is not a plausible host name or IP literal.
pub fn canonical_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal, keep the brackets
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        // only an address, in its one canonical spelling (RFC 5952)
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
    // empty labels (`a..b`, a second trailing dot) would make the result not canonical
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

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// The ports a request's Host may name on one listener: its own, and its scheme's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPorts {
    listener: u16,
    default: u16,
}

impl HostPorts {
    /// The ports of a listener bound to port `listener` (with TLS: the default is 443, else 80).
    pub const fn new(listener: u16, tls: bool) -> Self {
        HostPorts {
            listener,
            default: if tls { 443 } else { 80 },
        }
    }

    /// Whether a Host naming `port` is for this listener.
    pub fn allows(self, port: u16) -> bool {
        port == self.listener || port == self.default
    }
}

/// Whether a Host value or authority names no port or one that `ports` allows. A port that is
/// not a number up to 65535 is not allowed. (Whether the name itself is valid is
/// [`canonical_host`]'s to say.)
pub fn port_allowed(raw: &[u8], ports: HostPorts) -> bool {
    let raw = raw.trim_ascii();
    // after an IPv6 literal's `]`, else after the last `:`
    let after_name = match raw.iter().rposition(|b| *b == b']') {
        Some(end) => &raw[end + 1..],
        None => raw,
    };
    let Some(colon) = after_name.iter().position(|b| *b == b':') else {
        return true;
    };
    let port = std::str::from_utf8(&after_name[colon + 1..])
        .ok()
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok());
    port.is_some_and(|p| ports.allows(p))
}

/// Why a request's host is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadHost {
    /// No Host (and no absolute-form authority), or not a plausible host name or IP literal.
    Invalid,
    /// A port the listener does not answer for.
    Port,
}

impl BadHost {
    /// The `verge_requests_rejected_total` reason label.
    pub fn reason(self) -> &'static str {
        match self {
            BadHost::Invalid => "bad_host",
            BadHost::Port => "host_port",
        }
    }
}

/// The host a request is for, canonical: the absolute-form authority (HTTP/2's `:authority`)
/// if present, else the `Host` field, on a port `ports` allows.
pub fn request_host(req: &RequestHeader, ports: HostPorts) -> Result<String, BadHost> {
    let raw = match req.uri.authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok()),
    };
    let raw = raw.ok_or(BadHost::Invalid)?;
    let host = canonical_host(raw).ok_or(BadHost::Invalid)?;
    if !port_allowed(raw.as_bytes(), ports) {
        return Err(BadHost::Port);
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_from_header_or_authority() {
        let ports = HostPorts::new(8080, false);
        let mut req = RequestHeader::build("GET", b"/x", None).expect("req");
        req.insert_header("host", "Example.com:8080").expect("h");
        assert_eq!(request_host(&req, ports), Ok("example.com".to_string()));
        let mut req = RequestHeader::build("GET", b"/x", None).expect("req");
        req.set_uri(http::Uri::from_static("http://a.org/x"));
        req.insert_header("host", "ignored.com").expect("h");
        assert_eq!(request_host(&req, ports), Ok("a.org".to_string()));
        let mut req = RequestHeader::build("GET", b"/x", None).expect("req");
        req.set_uri(http::Uri::from_static("http://a.org:1337/x"));
        assert_eq!(request_host(&req, ports), Err(BadHost::Port));
        let mut req = RequestHeader::build("GET", b"/x", None).expect("req");
        req.insert_header("host", "a b").expect("h");
        assert_eq!(request_host(&req, ports), Err(BadHost::Invalid));
        let req = RequestHeader::build("GET", b"/x", None).expect("req");
        assert_eq!(request_host(&req, ports), Err(BadHost::Invalid));
    }

    #[test]
    fn a_host_names_the_listeners_port_its_default_or_none() {
        let plain = HostPorts::new(8080, false);
        for ok in [
            "a.com",
            "a.com:8080",
            "a.com:80",
            "a.com:080",
            "[::1]",
            "[::1]:8080",
            "1.2.3.4:80",
            " a.com:8080 ",
        ] {
            assert!(port_allowed(ok.as_bytes(), plain), "{ok}");
        }
        for bad in [
            "a.com:1337",
            "a.com:443",
            "a.com:",
            "a.com:x",
            "a.com:65616",
            "a.com:8080:8080",
            "[::1]:1337",
            "::1",
        ] {
            assert!(!port_allowed(bad.as_bytes(), plain), "{bad}");
        }
        let tls = HostPorts::new(8443, true);
        assert!(port_allowed(b"a.com:443", tls) && port_allowed(b"a.com:8443", tls));
        assert!(!port_allowed(b"a.com:80", tls));
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
