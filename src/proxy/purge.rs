//! The data-plane `PURGE` method: who may use it, and what it removes (one URL, every variant,
//! on this node only; fleet-wide purges go through `verge control`).

use super::error_page::respond_plain;
use crate::cache::CacheEngine;
use crate::config::PurgeSpec;
use crate::http_syntax::path_and_query;
use crate::snapshot::Route;
use pingora_error::Result;
use pingora_proxy::Session;
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

/// Answer a `PURGE` request: 405 when disabled, 403 for clients not allowed, else remove the
/// URL (both schemes, every variant) from this node's cache: 200, or 404 when not cached.
pub async fn answer(
    engine: &CacheEngine,
    session: &mut Session,
    decision: PurgeDecision,
    route: Option<&Route>,
    host: &str,
) -> Result<bool> {
    let (status, text) = match decision {
        PurgeDecision::Disabled => (405, "verge: PURGE is not enabled".to_string()),
        PurgeDecision::Forbidden => (403, "verge: PURGE not allowed from this client".to_string()),
        _ => match route.and_then(|r| Some((r, r.spec.cache.as_ref()?))) {
            None => (404, "verge: this URL is not on a caching route".to_string()),
            Some((route, rules)) => {
                // the URL as the client names it, stored under the route's rewrite
                let pq = super::rewrite::key_target(
                    route.spec.edge.rewrite.path.as_ref(),
                    path_and_query(&session.req_header().uri),
                );
                let pq = pq.as_str();
                let removed: usize = ["http", "https"]
                    .iter()
                    .map(|scheme| {
                        engine.invalidate(&crate::cache::route_cache_key(
                            scheme, host, pq, &rules.key,
                        ))
                    })
                    .sum();
                if removed == 0 {
                    (404, "verge: not cached".to_string())
                } else {
                    let plural = if removed == 1 { "y" } else { "ies" };
                    (200, format!("verge: purged {removed} entr{plural}"))
                }
            }
        },
    };
    respond_plain(session, status, &text).await?;
    Ok(true)
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
