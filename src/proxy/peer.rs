//! Builds the `HttpPeer` for a chosen backend: TLS, SNI and every timeout set explicitly.

use crate::config::{PoolSpec, RouteTimeouts};
use pingora_core::upstreams::peer::HttpPeer;
use std::net::SocketAddr;

/// The upstream peer for `addr` in `pool`, with route timeout overrides applied.
pub fn build_peer(pool: &PoolSpec, route: &RouteTimeouts, addr: SocketAddr) -> HttpPeer {
    let (tls, sni) = match &pool.tls {
        Some(t) => (true, t.sni.clone()),
        None => (false, String::new()),
    };
    let mut peer = HttpPeer::new(addr, tls, sni);
    let t = &pool.timeouts;
    let o = &mut peer.options;
    o.connection_timeout = Some(route.connect.unwrap_or(t.connect));
    o.total_connection_timeout = Some(route.connect.unwrap_or(t.connect) * 2);
    o.read_timeout = Some(route.read.unwrap_or(t.read));
    o.write_timeout = Some(route.write.unwrap_or(t.write));
    o.idle_timeout = Some(route.idle.unwrap_or(t.idle));
    if let Some(t) = &pool.tls {
        o.verify_cert = t.verify;
        o.verify_hostname = t.verify;
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PassiveSpec, Selection, Timeouts, UpstreamTls};
    use std::time::Duration;

    #[test]
    fn timeouts_and_tls() {
        let pool = PoolSpec {
            name: "p".into(),
            backends: vec![],
            selection: Selection::RoundRobin,
            tls: Some(UpstreamTls {
                sni: "origin.example".into(),
                verify: true,
            }),
            health_check: None,
            passive: PassiveSpec::default(),
            timeouts: Timeouts::default(),
            retries: 1,
        };
        let route = RouteTimeouts {
            read: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let peer = build_peer(&pool, &route, "127.0.0.1:1".parse().expect("addr"));
        assert!(peer.is_tls());
        assert_eq!(peer.sni, "origin.example");
        assert_eq!(
            peer.options.connection_timeout,
            Some(Duration::from_secs(3))
        );
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(2)));
        assert_eq!(peer.options.idle_timeout, Some(Duration::from_secs(60)));
        assert!(peer.options.verify_cert);
    }
}
