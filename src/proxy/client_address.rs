//! The client address a route's edge rules read: the connection's, or, when the connection
//! comes from a trusted proxy (`server.client_ip`), the nearest untrusted address of the
//! header those proxies write. Pure.

use crate::config::ClientIpSpec;
use http::HeaderMap;
use std::net::IpAddr;

/// The client's address as edge rules see it. The header is read from its last entry (the
/// hop nearest verge) towards the first, over every trusted proxy; the first untrusted entry
/// is the client. An entry that is not an address ends the walk at the last one read.
pub fn client_address(
    connection: Option<IpAddr>,
    headers: &HeaderMap,
    spec: Option<&ClientIpSpec>,
) -> Option<IpAddr> {
    let (Some(spec), Some(peer)) = (spec, connection) else {
        return connection;
    };
    let trusted = |ip: IpAddr| spec.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(peer) {
        return connection;
    }
    let values: Vec<&str> = headers
        .get_all(&spec.header)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut client = peer;
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(ip) = parse_entry(entry) else {
            break;
        };
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    Some(client)
}

/// One address of the list: `192.0.2.1`, `2001:db8::1` or `[2001:db8::1]`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    let e = e
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(e);
    e.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpNet;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_trusted_proxy_header_names_the_nearest_untrusted_client() {
        let spec = ClientIpSpec {
            header: http::HeaderName::from_static("x-forwarded-for"),
            trusted_proxies: vec![
                IpNet::parse("10.0.0.0/8").expect("net"),
                IpNet::parse("127.0.0.1").expect("net"),
            ],
        };
        let with = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-forwarded-for", v.parse().expect("value"));
            }
            h
        };
        let at = |peer: &str, values: &[&str]| {
            client_address(Some(ip(peer)), &with(values), Some(&spec))
        };
        assert_eq!(at("127.0.0.1", &["203.0.113.7"]), Some(ip("203.0.113.7")));
        assert_eq!(
            at("127.0.0.1", &["1.1.1.1, 203.0.113.7, 10.0.0.2"]),
            Some(ip("203.0.113.7")),
            "a client's own entries left of the first untrusted one are ignored"
        );
        assert_eq!(
            at("127.0.0.1", &["1.1.1.1", "203.0.113.7, 10.0.0.2"]),
            Some(ip("203.0.113.7")),
            "several fields are one list"
        );
        assert_eq!(
            at("10.0.0.3", &["10.0.0.9"]),
            Some(ip("10.0.0.9")),
            "every hop trusted: the farthest"
        );
        assert_eq!(
            at("127.0.0.1", &["203.0.113.7, junk, 10.0.0.2"]),
            Some(ip("10.0.0.2")),
            "the walk stops at what is not an address"
        );
        assert_eq!(at("127.0.0.1", &["[2001:db8::1]"]), Some(ip("2001:db8::1")));
        assert_eq!(at("127.0.0.1", &[]), Some(ip("127.0.0.1")));
        assert_eq!(
            at("192.0.2.1", &["203.0.113.7"]),
            Some(ip("192.0.2.1")),
            "an untrusted peer's header is not read"
        );
        assert_eq!(
            client_address(Some(ip("127.0.0.1")), &with(&["203.0.113.7"]), None),
            Some(ip("127.0.0.1")),
            "no client_ip setting: the connection"
        );
    }
}
