//! The data-plane `PURGE` method: who may use it, and what it removes (one URL, every variant,
//! on this node only; fleet-wide purges go through `verge control`).

use crate::config::PurgeSpec;
use std::net::IpAddr;

/// What to do with a request, as far as `PURGE` is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeDecision {
    /// Not a `PURGE` request: carry on.
    NotPurge,
    /// `PURGE` is not enabled on this node: 405.
    Disabled,
    /// The client is not in `purge.allow`: 403.
    Forbidden,
    /// Remove the URL from this node's cache.
    Allowed,
}

/// Decide from the method, the node's purge settings and the client address.
pub fn decide(method: &str, spec: Option<&PurgeSpec>, client: Option<IpAddr>) -> PurgeDecision {
    if !method.eq_ignore_ascii_case("PURGE") {
        return PurgeDecision::NotPurge;
    }
    let Some(spec) = spec else {
        return PurgeDecision::Disabled;
    };
    match client {
        Some(ip) if spec.allow.iter().any(|n| n.contains(ip)) => PurgeDecision::Allowed,
        _ => PurgeDecision::Forbidden,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpNet;

    fn spec(nets: &[&str]) -> PurgeSpec {
        PurgeSpec {
            allow: nets.iter().map(|n| IpNet::parse(n).unwrap()).collect(),
        }
    }

    #[test]
    fn only_purge_from_allowed_clients() {
        let s = spec(&["10.0.0.0/8", "::1"]);
        let ip = |t: &str| Some(t.parse::<IpAddr>().unwrap());
        assert_eq!(
            decide("GET", Some(&s), ip("1.2.3.4")),
            PurgeDecision::NotPurge
        );
        assert_eq!(
            decide("PURGE", None, ip("10.0.0.1")),
            PurgeDecision::Disabled
        );
        assert_eq!(
            decide("PURGE", Some(&s), ip("10.9.8.7")),
            PurgeDecision::Allowed
        );
        assert_eq!(decide("purge", Some(&s), ip("::1")), PurgeDecision::Allowed);
        assert_eq!(
            decide("PURGE", Some(&s), ip("11.0.0.1")),
            PurgeDecision::Forbidden
        );
        assert_eq!(decide("PURGE", Some(&s), None), PurgeDecision::Forbidden);
        // IPv4-mapped IPv6 clients match IPv4 blocks
        assert_eq!(
            decide("PURGE", Some(&s), ip("::ffff:10.1.1.1")),
            PurgeDecision::Allowed
        );
    }

    #[test]
    fn cidr_parsing_and_matching() {
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("::/0")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        assert!(!IpNet::parse("192.168.1.0/24")
            .unwrap()
            .contains("192.168.2.1".parse().unwrap()));
        assert!(IpNet::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("nope/8").is_err());
        assert!(!IpNet::parse("10.0.0.0/8")
            .unwrap()
            .contains("::1".parse().unwrap()));
    }
}
