//! The cache's part in Pingora's phases: enabling it for a request, the key, what a stored
//! entry the lookup found may do (through the decision the hit lane shares), whether a response
//! is stored, the `Cache-Status` a client sees, and what an unsafe method takes out.

use super::context::{waited_on_fetch, RequestCtx};
use super::{refresh, tier};
use crate::cache::collapse::LockWait;
use crate::cache::hit_decision::{self, HitDecision, StoredEntry};
use crate::cache::request_directives::{self, RequestDirectives};
use crate::cache::request_view::RequestView;
use crate::cache::{cache_status, key_rules, rfc9111, unsafe_methods, CacheEngine};
use crate::http_syntax::path_and_query;
use crate::metrics::METRICS;
use crate::snapshot::Snapshot;
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness};
use pingora_cache::{NoCacheReason, RespCacheable};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::time::{Duration, SystemTime};

/// `request_cache_filter`: read the request's directives, apply the route's bypass rules, and
/// enable the cache (storage, eviction, predictor, lock) for the request.
pub fn enable(session: &mut Session, ctx: &mut RequestCtx, engine: &'static CacheEngine) {
    let Some(rules) = ctx.route.as_ref().and_then(|r| r.spec.cache.as_ref()) else {
        return;
    };
    let view = RequestView::from_head(session.req_header());
    ctx.directives = if session.subrequest_ctx.is_some() {
        // a background refresh copies the client's head, but not its say: it must fetch
        // (`only-if-cached` would leave it without the cache lock it was handed)
        RequestDirectives::default()
    } else {
        request_directives::for_route(&view, rules)
    };
    if let Some(bypass) = rfc9111::request_bypass(&view, rules) {
        ctx.bypass = Some(bypass);
        return;
    }
    let mut overrides = CacheOptionOverrides::default();
    // one wait in all, whether it began in the hit lane or here
    overrides.wait_timeout = Some(
        engine
            .settings
            .lock_wait
            .saturating_sub(ctx.lane_waited.unwrap_or_default()),
    );
    // only-if-cached never fetches, so it must not take (or wait on) the miss lock
    let lock = (!ctx.directives.only_if_cached).then_some(engine.lock);
    session.cache.enable(
        engine.storage,
        Some(engine.eviction),
        Some(engine.predictor),
        lock,
        Some(overrides),
    );
    session
        .cache
        .set_max_file_size_bytes(engine.max_stored_body());
}

/// `cache_key_callback`: the key under the route's key rules.
pub fn key(scheme: &str, req: &RequestHeader, ctx: &RequestCtx) -> CacheKey {
    let pq = ctx.target(req);
    match ctx.route.as_ref().and_then(|r| r.spec.cache.as_ref()) {
        Some(rules) => crate::cache::route_cache_key(scheme, &ctx.host, pq, &rules.key),
        None => crate::cache::cache_key(scheme, &ctx.host, pq),
    }
}

/// How a stored entry found for this request is to be treated beyond its own freshness, as
/// pingora's forced freshness: the hit lane's decision ([`hit_decision::decide`]), counted.
pub fn hit_override(
    snapshot: &Snapshot,
    req: &RequestHeader,
    meta: &CacheMeta,
    is_fresh: bool,
    ctx: &mut RequestCtx,
) -> Option<ForcedFreshness> {
    let rules = ctx.route.as_ref().and_then(|r| r.spec.cache.as_ref())?;
    let entry = StoredEntry {
        header: meta.response_header(),
        created: meta.created(),
        age: meta.age(),
        fresh_until: meta.fresh_until(),
    };
    let decision = hit_decision::decide(
        &snapshot.control.invalidations,
        &ctx.host,
        ctx.target(req),
        rules,
        &ctx.directives,
        entry,
        SystemTime::now(),
    );
    match decision {
        HitDecision::AsStored => None,
        HitDecision::Invalidated => {
            METRICS.cache_invalidated.with_label_values(&["hard"]).inc();
            Some(ForcedFreshness::ForceMiss)
        }
        HitDecision::SoftInvalidated { since } => {
            METRICS.cache_invalidated.with_label_values(&["soft"]).inc();
            Some(ForcedFreshness::ForceExpiredServeStale {
                expired_at: Some(since),
            })
        }
        HitDecision::Revalidate => {
            ctx.request_forced = is_fresh;
            Some(ForcedFreshness::ForceExpired)
        }
        HitDecision::NotShared => {
            ctx.request_forced = is_fresh;
            Some(ForcedFreshness::ForceMiss)
        }
        HitDecision::ServeStale => Some(ForcedFreshness::ForceFresh),
    }
}

/// `cache_hit_filter`: how the stored entry the lookup found is treated ([`hit_override`]), a
/// tier hop from a member ahead of this node, early refreshes, and the head a background
/// refresh will be built from.
pub fn hit_filter(
    engine: &'static CacheEngine,
    snapshot: &Snapshot,
    session: &mut Session,
    meta: &CacheMeta,
    is_fresh: bool,
    ctx: &mut RequestCtx,
) -> Result<Option<ForcedFreshness>> {
    let mut forced = hit_override(snapshot, session.req_header(), meta, is_fresh, ctx);
    if tier::stored_copy_too_old(ctx, meta, snapshot) {
        // a hop from a member that knows of invalidations this node has not applied yet:
        // what is stored here may be one of those, so it is fetched anew
        forced = Some(ForcedFreshness::ForceMiss);
    }
    if forced.is_none() && refresh::early_refresh_turn(session) {
        // this is an early refresh: have the entry revalidated (and not served stale)
        forced = Some(ForcedFreshness::ForceExpired);
    }
    let served_fresh = match forced {
        None => is_fresh,
        Some(ForcedFreshness::ForceFresh) => true,
        Some(_) => false,
    };
    if served_fresh && forced.is_none() && session.subrequest_ctx.is_none() {
        refresh::maybe_refresh_early(engine, session, meta, ctx)?;
    }
    if !served_fresh
        && !matches!(forced, Some(ForcedFreshness::ForceMiss))
        && !ctx.h2_head_downgraded
    {
        // pingora may refresh this entry in the background (stale-while-revalidate), from
        // this request's head
        ctx.h2_head_downgraded = refresh::h1_head_for_subrequest(session.req_header_mut())?;
    }
    Ok(forced)
}

/// `cache_vary_filter`: the variant of the stored response this request selects.
pub fn variance(meta: &CacheMeta, ctx: &RequestCtx, req: &RequestHeader) -> Option<HashBinary> {
    let route = ctx.route.as_ref().map(|r| &r.spec);
    let rules = route.and_then(|r| r.cache.as_ref());
    // a compressing route stores one encoding for every client: its variants do not
    // follow the client's Accept-Encoding
    let coding = match route.is_some_and(|r| r.compression.is_some()) {
        true => crate::cache::AcceptEncodingVary::Ignored,
        false => crate::cache::AcceptEncodingVary::Normalised,
    };
    crate::cache::request_variance(
        meta,
        req,
        rules.map(|r| &r.key),
        ctx.filters.cache_key(),
        coding,
    )
}

/// `response_cache_filter`: may `resp` be stored, and with what meta.
pub fn storable(
    engine: &CacheEngine,
    session: &Session,
    resp: &ResponseHeader,
    ctx: &mut RequestCtx,
) -> RespCacheable {
    let Some(rules) = ctx.route.as_ref().and_then(|r| r.spec.cache.as_ref()) else {
        return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
    };
    let req = session.req_header();
    let auth = req.headers.contains_key(http::header::AUTHORIZATION);
    let refreshed = ctx.not_modified.as_deref().map(|nm| {
        let stored = session
            .cache
            .maybe_cache_meta()
            .map(|m| m.response_header());
        rfc9111::refreshed_by_not_modified(resp, nm, stored)
    });
    let resp = refreshed.as_ref().unwrap_or(resp);
    // Ages count from when the request went out (RFC 9111 §4.2.3 `request_time`), which is
    // also what invalidations compare against (design invariant 2).
    let fetch_started = ctx.fetch_started.unwrap_or_else(SystemTime::now);
    let mut meta = match rfc9111::response_meta(resp, auth, rules, fetch_started) {
        Ok(meta) => meta,
        Err(reason) => return RespCacheable::Uncacheable(reason),
    };
    if !variant_admitted(engine, session, rules.max_variants) {
        return RespCacheable::Uncacheable(NoCacheReason::Custom(rfc9111::MAX_VARIANTS));
    }
    ctx.stored = true;
    if ctx.not_modified.is_none() {
        ctx.unstored_fields = super::headers::missing_from(&resp.headers, meta.headers());
    }
    rfc9111::set_fetched_at(&mut meta, fetch_started);
    if ctx.not_modified.is_none() {
        // XFetch's delta: what a full fetch costs (a 304 keeps the old figure)
        if let Some(ms) = ctx.origin_ms {
            rfc9111::set_fetch_duration(&mut meta, Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let key_pq = key_rules::key_path_and_query(ctx.target(req), &rules.key.query);
    rfc9111::set_entry_url(&mut meta, &ctx.host, &key_pq);
    RespCacheable::Cacheable(meta)
}

/// Whether the response being fetched may be stored without exceeding the route's variant cap
/// for its URL (a refresh of a stored variant always may).
fn variant_admitted(engine: &CacheEngine, session: &Session, max_variants: usize) -> bool {
    if !session.cache.enabled() {
        return true;
    }
    session
        .cache
        .maybe_cache_key()
        .is_none_or(|key| engine.admits_variant(key, max_variants))
}

/// The `Cache-Status` of the response going to the client.
pub fn status(session: &Session, ctx: &RequestCtx) -> String {
    let phase = session.cache.phase();
    let from_cache = matches!(
        phase,
        CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating
    );
    cache_status::value_named(
        ctx.tier.cache_name(),
        &cache_status::Outcome {
            phase,
            fresh_until: from_cache.then(|| session.cache.cache_meta().fresh_until()),
            stored: ctx.stored,
            request_forced: ctx.request_forced,
            bypass: ctx.bypass,
            passed: !ctx.stored && session.cache.predicted_uncacheable_reason().is_some(),
            early_refresh: ctx.early_refresh,
            lock_wait: lock_wait(session, ctx),
        },
        ctx.served_at.unwrap_or_else(SystemTime::now),
    )
}

/// `response_filter` on a caching route: what the client gets of the cache's say (the stored
/// entry's `Set-Cookie` rule, `Cache-Status`), and no keep-alive promise after a failed fetch
/// answered stale.
pub fn response_fields(
    session: &mut Session,
    resp: &mut ResponseHeader,
    ctx: &RequestCtx,
    rules: &crate::config::RouteCache,
) -> pingora_error::Result<()> {
    if ctx.stored && rules.set_cookie == crate::config::SetCookiePolicy::Strip {
        // stored without it: the client that caused the fetch gets what others get
        resp.remove_header(&http::header::SET_COOKIE);
    }
    if session.cache.phase() == CachePhase::Stale {
        // stale-if-error: pingora will not reuse this connection after the failed fetch, so
        // say so rather than promise keep-alive and then close
        session.set_keepalive(None);
    }
    let value = super::tier::cache_status_chain(ctx, status(session, ctx));
    resp.insert_header("cache-status", value)?;
    Ok(())
}

/// `should_serve_stale`: may the stale entry answer? `None`: stale-while-revalidate, whose
/// window pingora already checked. An error: only one from the origin's side, and then the
/// stored response's rules ([`rfc9111::may_serve_stale_after`]): an origin that answered with
/// a 5xx allows the stale-if-error window, one that gave no response at all (pingora's
/// connection errors and timeouts, or no healthy backend, which verge reports with a
/// `failure` text) allows the longer disconnected window too.
pub fn may_serve_stale(
    session: &Session,
    ctx: &RequestCtx,
    error: Option<&pingora_error::Error>,
) -> bool {
    let Some(e) = error else {
        return true;
    };
    if e.esource() != &pingora_error::ErrorSource::Upstream {
        return false;
    }
    let answered =
        matches!(e.etype(), pingora_error::ErrorType::HTTPStatus(_)) && ctx.failure.is_none();
    let (Some(rules), Some(meta)) = (
        ctx.route.as_ref().and_then(|r| r.spec.cache.as_ref()),
        session.cache.maybe_cache_meta(),
    ) else {
        return false;
    };
    let stale_for = SystemTime::now()
        .duration_since(meta.fresh_until())
        .unwrap_or_default();
    rfc9111::may_serve_stale_after(meta.response_header(), stale_for, answered, rules)
}

/// How this request's wait for another's fetch ended, if it waited.
pub fn lock_wait(session: &Session, ctx: &RequestCtx) -> Option<LockWait> {
    let waited = waited_on_fetch(session.cache.lock_duration().is_some(), ctx);
    LockWait::of(session.cache.phase(), waited)
}

/// RFC 9111 §4.4: a successful unsafe request takes its URL, and same-host `Location` /
/// `Content-Location`, out of the cache (every variant), each under its own route's key rules.
pub fn invalidate_after_unsafe(
    engine: &CacheEngine,
    snapshot: &Snapshot,
    scheme: &str,
    req: &RequestHeader,
    resp: &ResponseHeader,
    host: &str,
) {
    let header = |name| resp.headers.get(name).and_then(|v| v.to_str().ok());
    let targets = unsafe_methods::targets(
        &req.method,
        resp.status.as_u16(),
        scheme,
        host,
        path_and_query(&req.uri),
        header(http::header::LOCATION),
        header(http::header::CONTENT_LOCATION),
    );
    for t in targets {
        let Some(route) = snapshot.table.lookup(&t.host, t.path()) else {
            continue;
        };
        let Some(rules) = route.spec.cache.as_ref() else {
            continue;
        };
        // the URL as a client names it, stored under the route's rewrite
        let pq =
            super::rewrite::key_target(route.spec.edge.rewrite.path.as_ref(), &t.path_and_query);
        let key = crate::cache::route_cache_key(&t.scheme, &t.host, &pq, &rules.key);
        let removed = engine.invalidate(&key);
        if removed > 0 {
            log::debug!(
                "{} {}: invalidated {removed} entries of {}://{}{}",
                req.method,
                resp.status,
                t.scheme,
                t.host,
                t.path_and_query
            );
        }
    }
}
