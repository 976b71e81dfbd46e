//! The end of every request, whichever way it was answered: the request metrics, the lock-wait
//! count and the access-log line. Pingora's `logging` phase and the hit lane both finish here,
//! so both count and log alike.

use super::context::{client_ip, RequestCtx};
use super::{caching, tier};
pub use crate::access_log::Seen;
use crate::access_log::{key_hex, Record};
use crate::cache::collapse::LockWait;
pub use crate::cache::freshness::{Served, ServedState};
use crate::http_syntax::path_and_query;
use crate::metrics::{RequestOutcome, METRICS};
use crate::snapshot::{Route, SharedSnapshot, Snapshot};
use pingora_cache::key::CacheHashKey;
use pingora_cache::CachePhase;
use pingora_proxy::Session;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

/// One finished request, as the metrics and the access log see it.
pub struct Finished<'a> {
    /// Its route, if it was routed.
    pub route: Option<&'a Route>,
    /// The canonical host.
    pub host: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The path and query as received.
    pub path: &'a str,
    /// The status sent (0: none).
    pub status: u16,
    /// Response body bytes sent.
    pub body_bytes: usize,
    /// The `verge_cache_lookups_total` result, when the request is counted as a lookup.
    pub lookup: Option<&'static str>,
    /// The lookup result the access log shows (every request on a caching route).
    pub logged_lookup: Option<&'static str>,
    /// Where the body came from (`cache`, `origin`, `local`).
    pub source: &'static str,
    /// How its wait for another request's fetch ended, if it waited.
    pub lock_wait: Option<LockWait>,
    /// The backend that answered, if one was reached.
    pub backend: Option<SocketAddr>,
    /// The cache key's hash, on routes that cache.
    pub key: Option<&'a [u8]>,
    /// From sending upstream to the response head, in milliseconds.
    pub origin_ms: Option<f64>,
    /// From the request head to the end of the response.
    pub elapsed: Option<Duration>,
    /// The client's address.
    pub client: Option<IpAddr>,
    /// Its `X-Request-Id`, on routes that give one.
    pub request_id: Option<&'a str>,
    /// The stored entry it was answered from, when it counts as a lookup answered from the
    /// cache (the freshness metrics, `cache::freshness`).
    pub served: Option<Served<'a>>,
    /// What the access log may record of the request and its connection.
    pub seen: Seen<'a>,
    /// The snapshot whose invalidations decided to serve [`Finished::served`], when known.
    pub decided_with: Option<&'a Snapshot>,
}

/// Pingora's `logging` phase: how the request went, as [`finish`] counts and logs it.
pub fn record(
    session: &Session,
    ctx: &mut RequestCtx,
    listener: &str,
    scheme: &'static str,
    snapshot: &SharedSnapshot,
) {
    // the snapshot in force now says whether the line is written, where and how
    let snapshot = snapshot.load();
    let logs = snapshot.log().is_some();
    if let Some(d) = ctx.deadline.as_mut() {
        d.disarm();
    }
    let caches = ctx.route.as_ref().is_some_and(|r| r.spec.cache.is_some());
    // a request a filter or an edge rule answered never reached the cache
    let counted = caches && !ctx.filters.answered() && !ctx.edge_answered;
    let phase = session.cache.phase();
    tier::count_avoided_fetch(ctx, phase);
    let lookup = lookup_result(phase, ctx.stored, ctx.bypass.is_some());
    let key = logs
        .then(|| session.cache.maybe_cache_key())
        .flatten()
        .map(|k| k.combined_bin());
    let req = session.req_header();
    let field = |name| req.headers.get(name).and_then(|v| v.to_str().ok());
    let tls_version = logs
        .then(|| session.digest())
        .flatten()
        .and_then(|d| d.ssl_digest.as_ref())
        .map(|d| tls_version_name(&d.version));
    let finished = Finished {
        route: ctx.route.as_deref(),
        host: &ctx.host,
        method: req.method.as_str(),
        path: path_and_query(&req.uri),
        status: session.response_written().map_or(0, |r| r.status.as_u16()),
        body_bytes: session.body_bytes_sent(),
        lookup: counted.then_some(lookup),
        logged_lookup: (caches && !ctx.edge_answered).then_some(lookup),
        source: response_source(phase, ctx.upstream_sent_at.is_some()),
        lock_wait: counted.then(|| caching::lock_wait(session, ctx)).flatten(),
        // an owner in the tier ring that answered, else the last origin backend tried
        backend: ctx
            .tier
            .owner
            .as_ref()
            .map(|(_, addr)| *addr)
            .or(ctx.tried.last().copied()),
        key: key.as_ref().map(|k| &k[..]),
        origin_ms: ctx.origin_ms,
        elapsed: ctx.started.map(|t| t.elapsed()),
        client: client_ip(session),
        request_id: ctx.request_id.as_deref(),
        // a background refresh serves no client
        served: (counted && session.subrequest_ctx.is_none())
            .then(|| ServedState::of(phase))
            .flatten()
            .zip(session.cache.maybe_cache_meta())
            .map(|(state, meta)| {
                // measured when the client got the head, as its Cache-Status was
                let at = ctx.served_at.unwrap_or_else(SystemTime::now);
                Served {
                    state,
                    header: meta.response_header(),
                    created: meta.created(),
                    age: at.duration_since(meta.epoch()).unwrap_or_default(),
                    fresh_until: meta.fresh_until(),
                    at,
                }
            }),
        seen: Seen {
            user_agent: field(http::header::USER_AGENT),
            referer: field(http::header::REFERER),
            protocol: protocol_name(req.version),
            scheme,
            listener,
            tls_version: tls_version.as_deref(),
        },
        decided_with: ctx.decided_with.as_deref(),
    };
    finish(&finished, &snapshot);
}

/// A protocol version as logs write it.
pub fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// A TLS version as logs write it: `TLSv1.3` for rustls's `TLSv1_3`.
pub fn tls_version_name(version: &str) -> String {
    version.replace('_', ".")
}

/// Count `f` in the metrics and write its access-log line where `snapshot` (the one in force
/// when the request ends) sends it, in its format (when its log is on).
pub fn finish(f: &Finished<'_>, snapshot: &Snapshot) {
    let route = f.route.map_or("", |r| r.spec.name.as_str());
    METRICS.record_request(&RequestOutcome {
        route,
        counters: f.route.map(|r| &*r.counters),
        status: f.status,
        lookup: f.lookup,
        source: f.source,
        body_bytes: f.body_bytes as u64,
        elapsed: f.elapsed,
    });
    if let Some(wait) = f.lock_wait {
        METRICS
            .cache_lock_waits
            .with_label_values(&[route, wait.as_str()])
            .inc();
    }
    let log = snapshot.log();
    if f.served.is_none() && log.is_none() {
        return;
    }
    if let Some(served) = &f.served {
        let class = f
            .route
            .and_then(|r| r.spec.class.as_deref())
            .unwrap_or(crate::config::classes::NO_CLASS);
        let (index, received) = match f.decided_with {
            // what the decision to serve it knew of: refusing those was its job
            Some(decided) => (&decided.control.invalidations, None),
            None => {
                let now = SystemTime::now();
                let received = f.elapsed.and_then(|e| now.checked_sub(e)).unwrap_or(now);
                (&snapshot.control.invalidations, Some(received))
            }
        };
        let budget = snapshot.config.classes.get(class).map(|c| c.budget);
        let counters = f.route.map(|r| &*r.counters);
        crate::cache::freshness::record(class, counters, budget, served, received, index);
    }
    let Some((log, format)) = log else {
        return;
    };
    log.log(
        &Record {
            time: Some(SystemTime::now()),
            client: f.client.map(|ip| ip.to_string()),
            host: f.host,
            method: f.method,
            path: f.path,
            status: f.status,
            bytes: f.body_bytes,
            route: f.route.map(|r| r.spec.name.as_str()),
            pool: f.route.map(|r| r.pool.name()),
            backend: f.backend.map(|a| a.to_string()),
            cache: f.logged_lookup,
            key: f.key.map(key_hex),
            origin_ms: f.origin_ms,
            total_ms: f.elapsed.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            config: &snapshot.version,
            seq: snapshot.control.position.seq,
            request_id: f.request_id,
            seen: f.seen,
        },
        format,
    );
}

/// The `result` label of `verge_cache_lookups_total` for a request that ended in `phase`
/// (`stored`: its response was admitted; `bypassed`: a request rule skipped the cache).
pub fn lookup_result(phase: CachePhase, stored: bool, bypassed: bool) -> &'static str {
    match phase {
        CachePhase::Hit => "hit",
        CachePhase::Miss if stored => "miss",
        CachePhase::Miss => "uncacheable",
        CachePhase::StaleUpdating => "stale",
        CachePhase::Stale => "stale_error",
        CachePhase::Expired => "expired",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "revalidated",
        _ if bypassed => "bypass",
        _ => "uncacheable",
    }
}

/// The `source` label of `verge_response_body_bytes_total`: where the body a client got came
/// from (`sent_upstream`: the request went to the origin).
pub fn response_source(phase: CachePhase, sent_upstream: bool) -> &'static str {
    match phase {
        CachePhase::Hit
        | CachePhase::StaleUpdating
        | CachePhase::Stale
        | CachePhase::Revalidated
        | CachePhase::RevalidatedNoCache(_) => "cache",
        _ if sent_upstream => "origin",
        _ => "local",
    }
}
