//! Picks the backend for a request and builds its `HttpPeer` (TLS, SNI and every timeout set
//! explicitly); counts connect failures, ejects, and decides retries.

use super::context::{client_ip, RequestCtx};
use super::deadline::ResponseDeadline;
use crate::config::{PoolSpec, RouteTimeouts, Timeouts};
use crate::metrics::METRICS;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use std::time::Instant;

/// The whole-response deadline (`timeouts.total`) for a route of this pool: the route's, else
/// the pool's; a route's `0s` turns the pool's off.
pub fn total_deadline(pool: &Timeouts, route: &RouteTimeouts) -> Option<Duration> {
    route.total.or(pool.total).filter(|t| !t.is_zero())
}

/// Connect no longer than the whole-response deadline leaves (`remaining`).
pub fn clamp_connect(peer: &mut HttpPeer, remaining: Duration) {
    let o = &mut peer.options;
    for t in [&mut o.connection_timeout, &mut o.total_connection_timeout] {
        *t = Some(t.map_or(remaining, |t| t.min(remaining)));
    }
}

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

/// `upstream_peer`: a healthy, non-ejected backend of the route's pool (skipping those tried
/// already), as a peer with the route's timeouts, within what the whole-response deadline
/// leaves. The deadline starts with the first attempt.
pub fn select(session: &Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
    select_for(session.req_header(), client_ip(session), ctx)
}

/// [`select`] for the request `req` from `client` (the pass lane's, outside a session).
pub fn select_for(
    req: &RequestHeader,
    client: Option<IpAddr>,
    ctx: &mut RequestCtx,
) -> Result<Box<HttpPeer>> {
    let Some(route) = ctx.route.clone() else {
        return Error::e_explain(ErrorType::InternalError, "no route chosen");
    };
    let pool = &route.pool;
    let key = crate::upstream::pool::hash_input(&pool.spec.selection, req, client);
    let Some(addr) = pool.select(&key, &ctx.tried) else {
        METRICS.no_backend.with_label_values(&[pool.name()]).inc();
        // the pool is internal: the log and the metric name it, the client's page does not
        log::warn!("{}: no healthy backend in pool {:?}", ctx.host, pool.name());
        ctx.failure = Some("verge: no healthy backend".to_string());
        return Err(crate::upstream::pool::no_backend_error(pool.name()));
    };
    if ctx.deadline.is_none() {
        if let Some(total) = total_deadline(&pool.spec.timeouts, &route.spec.timeouts) {
            ctx.deadline = Some(ResponseDeadline::new(Instant::now(), total));
        }
    }
    let mut upstream = build_peer(&pool.spec, &route.spec.timeouts, addr);
    if let Some(d) = ctx.deadline.as_ref() {
        let now = Instant::now();
        if d.expired(now) {
            return Err(d.error(None));
        }
        clamp_connect(&mut upstream, d.remaining(now));
    }
    ctx.tried.push(addr);
    Ok(Box::new(upstream))
}

/// `fail_to_connect`: count the failure against the backend (passive ejection after N in a
/// row), and retry on another backend for idempotent requests while attempts are left.
pub fn on_connect_failure(session: &Session, ctx: &mut RequestCtx, e: Box<Error>) -> Box<Error> {
    let idempotent = session.req_header().method.is_idempotent();
    on_connect_failure_for(idempotent, ctx, e)
}

/// [`on_connect_failure`] for a request whose method is `idempotent` or not.
pub fn on_connect_failure_for(
    idempotent: bool,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
) -> Box<Error> {
    let (Some(route), Some(addr)) = (ctx.route.as_ref(), ctx.tried.last()) else {
        return e;
    };
    let pool = &route.pool;
    let label = addr.to_string();
    METRICS
        .connect_failures
        .with_label_values(&[pool.name(), &label])
        .inc();
    if pool.report_connect_failure(addr) {
        log::warn!(
            "pool {}: ejecting {addr} after connect failures",
            pool.name()
        );
        METRICS
            .ejections
            .with_label_values(&[pool.name(), &label])
            .inc();
    }
    let attempts_left = ctx.tried.len() <= pool.spec.retries;
    if idempotent && attempts_left {
        METRICS.retries.with_label_values(&[pool.name()]).inc();
        e.set_retry(true);
    } else {
        e.set_retry(false);
        log::warn!(
            "{}: could not connect to a backend of pool {:?}",
            ctx.host,
            pool.name()
        );
        ctx.failure = Some("verge: could not connect to a backend".to_string());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PassiveSpec, Selection, UpstreamTls};

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

    #[test]
    fn total_deadline_route_over_pool_and_zero_is_off() {
        let secs = Duration::from_secs;
        let pool = |total| Timeouts {
            total,
            ..Timeouts::default()
        };
        let route = |total| RouteTimeouts {
            total,
            ..RouteTimeouts::default()
        };
        assert_eq!(total_deadline(&pool(None), &route(None)), None);
        assert_eq!(
            total_deadline(&pool(Some(secs(60))), &route(None)),
            Some(secs(60))
        );
        assert_eq!(
            total_deadline(&pool(Some(secs(60))), &route(Some(secs(5)))),
            Some(secs(5))
        );
        assert_eq!(
            total_deadline(&pool(Some(secs(60))), &route(Some(Duration::ZERO))),
            None
        );
        assert_eq!(
            total_deadline(&pool(None), &route(Some(secs(5)))),
            Some(secs(5))
        );
    }

    #[test]
    fn connects_never_outlast_the_deadline() {
        let mut peer = HttpPeer::new("127.0.0.1:1", false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(3));
        peer.options.total_connection_timeout = Some(Duration::from_secs(6));
        clamp_connect(&mut peer, Duration::from_secs(4));
        assert_eq!(
            peer.options.connection_timeout,
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            peer.options.total_connection_timeout,
            Some(Duration::from_secs(4))
        );
        clamp_connect(&mut peer, Duration::from_millis(500));
        assert_eq!(
            peer.options.connection_timeout,
            Some(Duration::from_millis(500))
        );
    }
}
