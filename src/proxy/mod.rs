//! `EdgeProxy`: verge's `ProxyHttp` implementation. Each phase method is short and delegates to
//! the pure modules beside it (routing, headers, peers), to the pool, and to user filters.

pub mod deadline;
pub mod filter;
pub mod headers;
pub mod peer;
pub mod purge;
pub mod refresh;
pub mod request_body;


pub mod upstream_error;

use crate::access_log::AccessLog;
use crate::cache::collapse::LockWait;
use crate::cache::request_directives::{self, HitVerdict, RequestDirectives};
use crate::cache::{cache_status, rfc9111, unsafe_methods, CacheEngine};
use crate::http_syntax::host::request_host;
use crate::http_syntax::target;
use crate::metrics::{RequestOutcome, METRICS};
use crate::snapshot::{Route, SharedSnapshot};
use async_trait::async_trait;
use bytes::Bytes;
use filter::{FilterState, Filters};
use pingora_cache::{
    key::HashBinary, CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness,
    HitHandler, RespCacheable,
};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// What the proxy knows about the listener a request came in on.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// The listener's name (metrics label).
    pub name: String,
    /// Whether it terminates TLS (the scheme in cache keys and `X-Forwarded-Proto`).
    pub tls: bool,
    /// Largest request body accepted; a streamed (chunked) body over it fails with 413.
    pub max_body: u64,
}

/// The proxy for one listener. Cheap to clone: the snapshot handle is shared.
pub struct EdgeProxy {
    snapshot: SharedSnapshot,
    listener: ListenerInfo,
    cache: &'static CacheEngine,
    access_log: Option<Arc<AccessLog>>,
    filters: Filters,
}

impl EdgeProxy {
    /// The proxy for one listener, serving from `snapshot` through `cache`.
    pub fn new(
        snapshot: SharedSnapshot,
        listener: ListenerInfo,
        cache: &'static CacheEngine,
    ) -> Self {
        EdgeProxy {
            snapshot,
            listener,
            cache,
            access_log: None,
            filters: Filters::default(),
        }
    }

    /// Run these user filters on the routes that select them.
    pub fn with_filters(mut self, filters: Filters) -> Self {
        self.filters = filters;
        self
    }

    /// Write one JSON line per request to `log`.
    pub fn with_access_log(mut self, log: Option<Arc<AccessLog>>) -> Self {
        self.access_log = log;
        self
    }

    fn write_access_log(&self, log: &AccessLog, session: &Session, ctx: &RequestCtx, status: u16) {
        let req = session.req_header();
        let snapshot = self.snapshot.load();
        let caches = ctx.route.as_ref().is_some_and(|r| r.spec.cache.is_some());
        let key = session.cache.maybe_cache_key().map(|k| {
            crate::access_log::key_hex(&pingora_cache::key::CacheHashKey::combined_bin(k))
        });
        log.log(&crate::access_log::Record {
            time: Some(std::time::SystemTime::now()),
            client: client_ip(session).map(|ip| ip.to_string()),
            host: &ctx.host,
            method: req.method.as_str(),
            path: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            status,
            bytes: session.body_bytes_sent(),
            route: ctx.route.as_ref().map(|r| r.spec.name.as_str()),
            pool: ctx.route.as_ref().map(|r| r.pool.name()),
            backend: ctx.tried.last().map(|a| a.to_string()),
            cache: caches.then(|| lookup_result(session.cache.phase(), ctx)),
            key,
            origin_ms: ctx.origin_ms,
            total_ms: ctx
                .started
                .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0),
            config: &snapshot.version,
            seq: snapshot.control.position.seq,
        });
    }

    fn scheme(&self) -> &'static str {
        if self.listener.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Whether the response being fetched may be stored without exceeding the route's variant
    /// cap for its URL (a refresh of a stored variant always may).
    fn variant_admitted(&self, session: &Session, max_variants: usize) -> bool {
        if !session.cache.enabled() {
            return true;
        }
        session
            .cache
            .maybe_cache_key()
            .is_none_or(|key| self.cache.admits_variant(key, max_variants))
    }

    /// RFC 9111 §4.4: a successful unsafe request takes its URL, and same-host `Location` /
    /// `Content-Location`, out of the cache (every variant), each under its own route's key rules.
    fn invalidate_after_unsafe(&self, req: &RequestHeader, resp: &ResponseHeader, host: &str) {
        let header = |name| resp.headers.get(name).and_then(|v| v.to_str().ok());
        let targets = unsafe_methods::targets(
            &req.method,
            resp.status.as_u16(),
            self.scheme(),
            host,
            req.uri.path_and_query().map_or("/", |p| p.as_str()),
            header(http::header::LOCATION),
            header(http::header::CONTENT_LOCATION),
        );
        if targets.is_empty() {
            return;
        }
        let snapshot = self.snapshot.load();
        for t in targets {
            let Some(route) = snapshot.table.lookup(&t.host, t.path()) else {
                continue;
            };
            let Some(rules) = route.spec.cache.as_ref() else {
                continue;
            };
            let key =
                crate::cache::route_cache_key(&t.scheme, &t.host, &t.path_and_query, &rules.key);
            let removed = self.cache.invalidate(&key);
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
}

/// Per-request state carried between phases.
#[derive(Default)]
pub struct RequestCtx {
    /// Canonical host (lowercase, no port).
    pub host: String,
    /// The matched route (with a filter's pool override applied).
    pub route: Option<Arc<Route>>,
    /// Backends tried so far (in order); the last one is the current one.
    pub tried: Vec<SocketAddr>,
    /// When the request was sent upstream (for the origin latency).
    pub upstream_sent_at: Option<Instant>,
    /// When the origin request was sent (wall clock): the stored entry's `created`, which
    /// invalidations are compared against.
    pub fetch_started: Option<std::time::SystemTime>,
    /// When the request arrived (for the access log's total time).
    pub started: Option<Instant>,
    /// From sending upstream to the response header, in milliseconds.
    pub origin_ms: Option<f64>,
    /// Request body bytes read so far.
    pub body_bytes: u64,
    /// Why verge answered with an error itself, for the response body.
    pub failure: Option<String>,
    /// Why a cached route skipped the cache for this request.
    pub bypass: Option<rfc9111::Bypass>,
    /// The response was admitted to the cache.
    pub stored: bool,
    /// The request's cache directives (only read on routes that cache).
    pub directives: RequestDirectives,
    /// The origin's 304 while revalidating, for the fields that refresh the stored header.
    pub not_modified: Option<Box<ResponseHeader>>,
    /// Informational (1xx) heads received from the origin for this request.
    pub informational: usize,
    /// The request body (sent with GET or HEAD) is read and discarded, never forwarded.
    pub drop_body: bool,
    /// What user filters keep for this request (selection, extensions, cache-key parts).
    pub filters: FilterState,
    /// The client's HTTP/2 head was rewritten as HTTP/1.1 so a background refresh can be
    /// built from it (`refresh.rs`); its version is put back before the response goes out.
    pub h2_head_downgraded: bool,
    /// A fresh stored response was found, but the request's own directives sent it to the
    /// origin (`Cache-Status: fwd=request`).
    pub request_forced: bool,
    /// This fresh hit started an early (XFetch) refresh of its entry.
    pub early_refresh: bool,
    /// The whole-response deadline (`timeouts.total`), from the first connect attempt.
    pub deadline: Option<deadline::ResponseDeadline>,
    /// Origin fields the stored form of this response leaves out (`Age`, fields named by
    /// `no-cache="…"`/`private="…"`, a stripped `Set-Cookie`): the fetching client, which
    /// pingora serves from the stored head as the body streams into the cache, gets them back.
    pub unstored_fields: Vec<(http::HeaderName, http::HeaderValue)>,
    /// This request is the cache lock's writer: the hit lane's waiters wait on it.
    pub pending_fetch: Option<crate::cache::pending::PendingFetch>,
    /// How long the hit lane already waited for another request's fetch before handing this
    /// request over; taken off the cache lock's wait.
    pub lane_waited: Option<std::time::Duration>,
}

/// Whether a final response head has gone to the client already: anything but an interim 1xx
/// (a 101 is final: the connection is a tunnel from then on).
fn final_head_sent(written: Option<&ResponseHeader>) -> bool {
    written.is_some_and(|r| {
        !r.status.is_informational() || r.status == http::StatusCode::SWITCHING_PROTOCOLS
    })
}

impl RequestCtx {
    fn route_name(&self) -> &str {
        self.route.as_ref().map_or("", |r| r.spec.name.as_str())
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Seconds of freshness left (negative when stale).
fn cache_ttl_left(meta: &CacheMeta) -> i64 {
    cache_status::ttl_left(meta.fresh_until(), std::time::SystemTime::now())
}

/// The `result` label of `verge_cache_lookups_total`.
fn lookup_result(phase: CachePhase, ctx: &RequestCtx) -> &'static str {
    match phase {
        CachePhase::Hit => "hit",
        CachePhase::Miss if ctx.stored => "miss",
        CachePhase::Miss => "uncacheable",
        CachePhase::StaleUpdating => "stale",
        CachePhase::Stale => "stale_error",
        CachePhase::Expired => "expired",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "revalidated",
        _ if ctx.bypass.is_some() => "bypass",
        _ => "uncacheable",
    }
}

/// The `source` label of `verge_response_body_bytes_total`: where the body a client got came
/// from.
fn response_source(phase: CachePhase, ctx: &RequestCtx) -> &'static str {
    match phase {
        CachePhase::Hit
        | CachePhase::StaleUpdating
        | CachePhase::Stale
        | CachePhase::Revalidated
        | CachePhase::RevalidatedNoCache(_) => "cache",
        _ if ctx.upstream_sent_at.is_some() => "origin",
        _ => "local",
    }
}

/// Write a short plain-text response that verge generated itself.
async fn respond_plain(session: &mut Session, status: u16, text: &str) -> Result<()> {
    let body = Bytes::from(format!("{text}\n"));
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("server", "verge")?;
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The status a client gets for a failure verge could not proxy around.
fn failure_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                ErrorType::ReadTimedout => 408,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

impl EdgeProxy {
    /// Answer a `PURGE` request: 405 when disabled, 403 for clients not allowed, else remove the
    /// URL (both schemes, every variant) from this node's cache: 200, or 404 when not cached.
    async fn answer_purge(
        &self,
        session: &mut Session,
        decision: purge::PurgeDecision,
        route: Option<&Route>,
        host: &str,
    ) -> Result<bool> {
        let (status, text) = match decision {
            purge::PurgeDecision::Disabled => (405, "verge: PURGE is not enabled".to_string()),
            purge::PurgeDecision::Forbidden => {
                (403, "verge: PURGE not allowed from this client".to_string())
            }
            _ => match route.and_then(|r| r.spec.cache.as_ref()) {
                None => (404, "verge: this URL is not on a caching route".to_string()),
                Some(rules) => {
                    let pq = session
                        .req_header()
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str());
                    let removed: usize = ["http", "https"]
                        .iter()
                        .map(|scheme| {
                            self.cache.invalidate(&crate::cache::route_cache_key(
                                scheme, host, pq, &rules.key,
                            ))
                        })
                        .sum();
                    if removed == 0 {
                        (404, "verge: not cached".to_string())
                    } else {
                        (
                            200,
                            format!(
                                "verge: purged {removed} entr{}",
                                if removed == 1 { "y" } else { "ies" }
                            ),
                        )
                    }
                }
            },
        };
        session.set_keepalive(None);
        respond_plain(session, status, &text).await?;
        Ok(true)
    }
}

impl EdgeProxy {
    /// How a stored entry found for this request is to be treated, beyond its own freshness:
    /// invalidations first (a purged entry is never served as fresh, whatever the client asks),
    /// then the request's directives.
    fn hit_override(
        &self,
        session: &Session,
        meta: &CacheMeta,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Option<ForcedFreshness> {
        let snapshot = self.snapshot.load();
        if !snapshot.control.invalidations.is_empty() {
            let pq = session
                .req_header()
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str());
            let key_pq = ctx
                .route
                .as_ref()
                .and_then(|r| r.spec.cache.as_ref())
                .map(|rules| crate::cache::key_rules::key_path_and_query(pq, &rules.key.query));
            let forced = crate::cache::invalidation_override(
                &snapshot.control.invalidations,
                &ctx.host,
                pq,
                key_pq.as_deref(),
                meta,
            );
            if forced.is_some() {
                return forced;
            }
        }
        if ctx.directives.is_empty() {
            return None;
        }
        let verdict = request_directives::hit_verdict(
            &ctx.directives,
            meta.age(),
            meta.fresh_until(),
            request_directives::forbids_stale(meta.response_header()),
            std::time::SystemTime::now(),
        );
        match verdict {
            HitVerdict::AsStored => None,
            HitVerdict::Revalidate => {
                ctx.request_forced = is_fresh;
                Some(ForcedFreshness::ForceExpired)
            }
            HitVerdict::ServeStale => Some(ForcedFreshness::ForceFresh),
        }
    }
}

impl EdgeProxy {
    /// XFetch on a fresh hit (routes with `cache.early_refresh`): maybe start one background
    /// refresh of the entry (none when one is already running for its key). The client is
    /// answered from the entry either way.
    fn maybe_refresh_early(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        use crate::cache::early_refresh;
        let Some(settings) = ctx
            .route
            .as_ref()
            .and_then(|r| r.spec.cache.as_ref())
            .and_then(|c| c.early_refresh)
        else {
            return Ok(());
        };
        let left = meta
            .fresh_until()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        let delta = settings
            .delta
            .or_else(|| rfc9111::fetch_duration(meta))
            .unwrap_or(early_refresh::DEFAULT_DELTA);
        if session.subrequest_spawner.is_none()
            || !early_refresh::should_refresh(
                left,
                delta,
                settings.beta,
                early_refresh::unit_random(),
            )
        {
            return Ok(());
        }
        let key = pingora_cache::key::CacheHashKey::combined_bin(session.cache.cache_key());
        let Some(claim) = self.cache.refreshing.try_start(key) else {
            return Ok(());
        };
        // the subrequest is rebuilt from this head as HTTP/1 text
        let downgraded = refresh::h1_head_for_subrequest(session.req_header_mut())?;
        if let Some(spawner) = session.subrequest_spawner.as_ref() {
            let sub = pingora_proxy::subrequest::Ctx::builder()
                .user_ctx(Box::new(refresh::EarlyRefreshTicket::new(claim)))
                .build();
            spawner.spawn_background_subrequest(session.downstream_session.as_ref(), sub);
            ctx.early_refresh = true;
            METRICS
                .cache_early_refreshes
                .with_label_values(&[ctx.route_name()])
                .inc();
        }
        if downgraded {
            refresh::restore_h2_version(session.req_header_mut());
        }
        Ok(())
    }
}

/// Whether this request waited for another request's fetch: on the cache lock, or in the hit
/// lane before it was handed over (it then reads that fetch's response as it streams in).
fn waited_on_fetch(session: &Session, ctx: &RequestCtx) -> bool {
    session.cache.lock_duration().is_some() || ctx.lane_waited.is_some()
}

/// Whether this request is an early refresh whose stored entry is still to be revalidated
/// (`true` once per refresh).
fn early_refresh_turn(session: &Session) -> bool {
    session
        .subrequest_ctx
        .as_ref()
        .and_then(|c| c.user_ctx())
        .and_then(|u| u.downcast_ref::<refresh::EarlyRefreshTicket>())
        .is_some_and(|t| t.take_turn())
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Some(Instant::now()),
            ..RequestCtx::default()
        }
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        prev_ctx: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Some(waited) = prev_ctx.downcast_ref::<crate::fast_hit::LaneWaited>() {
            ctx.lane_waited = Some(waited.0);
        }
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        session.cache.cache_miss();
        // the hit lane may hold plain requests for this key until the response is stored
        if session.subrequest_ctx.is_none() {
            if let Some(key) = session.cache.maybe_cache_key() {
                let key = pingora_cache::key::CacheHashKey::combined_bin(key);
                ctx.pending_fetch = Some(self.cache.storage.pending.begin(key));
            }
        }
    }

    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &RequestCtx) -> bool {
        // early refreshes are spawned by client requests, never by a refresh itself
        session.subrequest_ctx.is_none()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        if let Err(bad) = target::check_path(req.method.as_str(), req.uri.path()) {
            METRICS.rejected.with_label_values(&[bad.reason()]).inc();
            session.set_keepalive(None);
            respond_plain(session, 400, "verge: request target refused").await?;
            return Ok(true);
        }
        let Some(host) = request_host(req) else {
            METRICS.rejected.with_label_values(&["bad_host"]).inc();
            respond_plain(session, 400, "verge: missing or invalid Host").await?;
            return Ok(true);
        };
        let snapshot = self.snapshot.load();
        let route = snapshot.table.lookup(&host, req.uri.path()).cloned();
        ctx.host = host;
        let purge = purge::decide(
            req.method.as_str(),
            snapshot.config.purge.as_ref(),
            client_ip(session),
        );
        if purge != purge::PurgeDecision::NotPurge {
            return self
                .answer_purge(session, purge, route.as_deref(), &ctx.host)
                .await;
        }
        drop(snapshot);
        match route {
            Some(r) => {
                let has_body = !session.is_body_empty();
                match request_body::action(&session.req_header().method, has_body, r.spec.get_body)
                {
                    request_body::BodyAction::Reject => {
                        METRICS.rejected.with_label_values(&["get_body"]).inc();
                        respond_plain(session, 400, "verge: no body allowed with GET or HEAD")
                            .await?;
                        return Ok(true);
                    }
                    request_body::BodyAction::Drop => ctx.drop_body = true,
                    request_body::BodyAction::Forward => {}
                }
                ctx.route = Some(r);
                // after routing, before the cache and the origin
                self.filters
                    .request_phase(session, ctx, &self.snapshot)
                    .await
            }
            None => {
                let text = format!("verge: no route for host {:?}", ctx.host);
                respond_plain(session, 404, &text).await?;
                Ok(true)
            }
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let Some(rules) = ctx.route.as_ref().and_then(|r| r.spec.cache.as_ref()) else {
            return Ok(());
        };
        let directives = request_directives::parse(session.req_header());
        ctx.directives = if session.subrequest_ctx.is_some() {
            // a background refresh copies the client's head, but not its say: it must fetch
            // (`only-if-cached` would leave it without the cache lock it was handed)
            RequestDirectives::default()
        } else if rules.client_revalidation {
            directives
        } else {
            directives.without_revalidation()
        };
        if let Some(bypass) = rfc9111::request_bypass(session.req_header(), rules) {
            ctx.bypass = Some(bypass);
            return Ok(());
        }
        let engine = self.cache;
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
        session.cache.set_max_file_size_bytes(
            usize::try_from(engine.settings.max_object_size).unwrap_or(usize::MAX),
        );
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        let pq = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        Ok(
            match ctx.route.as_ref().and_then(|r| r.spec.cache.as_ref()) {
                Some(rules) => {
                    crate::cache::route_cache_key(self.scheme(), &ctx.host, pq, &rules.key)
                }
                None => crate::cache::cache_key(self.scheme(), &ctx.host, pq),
            },
        )
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let rules = ctx.route.as_ref().and_then(|r| r.spec.cache.as_ref());
        crate::cache::request_variance(meta, req, rules.map(|r| &r.key), ctx.filters.cache_key())
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        let mut forced = self.hit_override(session, meta, is_fresh, ctx);
        if forced.is_none() && early_refresh_turn(session) {
            // this is an early refresh: have the entry revalidated (and not served stale)
            forced = Some(ForcedFreshness::ForceExpired);
        }
        let served_fresh = match forced {
            None => is_fresh,
            Some(ForcedFreshness::ForceFresh) => true,
            Some(_) => false,
        };
        if served_fresh && forced.is_none() && session.subrequest_ctx.is_none() {
            self.maybe_refresh_early(session, meta, ctx)?;
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

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let caches = ctx.route.as_ref().is_some_and(|r| r.spec.cache.is_some());
        if caches && ctx.directives.only_if_cached {
            // RFC 9111 §5.2.1.7: nothing stored is usable, and the origin must not be asked
            respond_plain(
                session,
                504,
                "verge: only-if-cached, and no usable stored response",
            )
            .await?;
            return Ok(false);
        }
        Ok(true)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        let Some(rules) = ctx.route.as_ref().and_then(|r| r.spec.cache.as_ref()) else {
            return Ok(RespCacheable::Uncacheable(
                pingora_cache::NoCacheReason::NeverEnabled,
            ));
        };
        let auth = session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION);
        let refreshed = ctx.not_modified.as_deref().map(|nm| {
            let stored = session
                .cache
                .maybe_cache_meta()
                .map(|m| m.response_header());
            rfc9111::refreshed_by_not_modified(resp, nm, stored)
        });
        let resp = refreshed.as_ref().unwrap_or(resp);
        // Ages count from when the request went out (RFC 9111 §4.2.3 `request_time`), which
        // is also what invalidations compare against (design invariant 2).
        let fetch_started = ctx.fetch_started.unwrap_or_else(std::time::SystemTime::now);
        Ok(
            match rfc9111::response_meta(resp, auth, rules, fetch_started) {
                Ok(_) if !self.variant_admitted(session, rules.max_variants) => {
                    RespCacheable::Uncacheable(pingora_cache::NoCacheReason::Custom(
                        rfc9111::MAX_VARIANTS,
                    ))
                }
                Ok(mut meta) => {
                    ctx.stored = true;
                    if ctx.not_modified.is_none() {
                        ctx.unstored_fields = headers::missing_from(&resp.headers, meta.headers());
                    }
                    rfc9111::set_fetched_at(&mut meta, fetch_started);
                    if ctx.not_modified.is_none() {
                        // XFetch's delta: what a full fetch costs (a 304 keeps the old figure)
                        if let Some(ms) = ctx.origin_ms {
                            rfc9111::set_fetch_duration(
                                &mut meta,
                                std::time::Duration::from_secs_f64(ms / 1000.0),
                            );
                        }
                    }
                    let pq = session
                        .req_header()
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str());
                    let key_pq = crate::cache::key_rules::key_path_and_query(pq, &rules.key.query);
                    rfc9111::set_entry_url(&mut meta, &ctx.host, &key_pq);
                    RespCacheable::Cacheable(meta)
                }
                Err(reason) => RespCacheable::Uncacheable(reason),
            },
        )
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        // None: stale-while-revalidate (the meta's window was already checked); Some: the
        // origin failed and the stale-if-error window allows it.
        error.is_none_or(|e| e.esource() == &ErrorSource::Upstream)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > self.listener.max_body {
                METRICS
                    .rejected
                    .with_label_values(&["body_too_large"])
                    .inc();
                session.set_keepalive(None);
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    format!("request body over {} bytes", self.listener.max_body),
                );
            }
        }
        if ctx.drop_body {
            *body = None;
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen");
        };
        let pool = &route.pool;
        let key = crate::upstream::pool::hash_input(
            &pool.spec.selection,
            session.req_header(),
            client_ip(session),
        );
        let Some(addr) = pool.select(&key, &ctx.tried) else {
            METRICS.no_backend.with_label_values(&[pool.name()]).inc();
            ctx.failure = Some(format!(
                "verge: no healthy backend in pool {:?}",
                pool.name()
            ));
            return Err(crate::upstream::pool::no_backend_error(pool.name()));
        };
        if ctx.deadline.is_none() {
            if let Some(total) = peer::total_deadline(&pool.spec.timeouts, &route.spec.timeouts) {
                ctx.deadline = Some(deadline::ResponseDeadline::new(Instant::now(), total));
            }
        }
        let mut upstream = peer::build_peer(&pool.spec, &route.spec.timeouts, addr);
        if let Some(d) = ctx.deadline.as_ref() {
            let now = Instant::now();
            if d.expired(now) {
                return Err(d.error(None));
            }
            peer::clamp_connect(&mut upstream, d.remaining(now));
        }
        ctx.tried.push(addr);
        Ok(Box::new(upstream))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
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
        let idempotent = session.req_header().method.is_idempotent();
        let attempts_left = ctx.tried.len() <= pool.spec.retries;
        if idempotent && attempts_left {
            METRICS.retries.with_label_values(&[pool.name()]).inc();
            e.set_retry(true);
        } else {
            e.set_retry(false);
            ctx.failure = Some(format!(
                "verge: could not connect to a backend of pool {:?}",
                pool.name()
            ));
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // a connection cut by the whole-response deadline is a timeout, never retried
        let over_deadline = ctx.deadline.as_mut().and_then(|d| {
            d.disarm();
            d.expired(Instant::now()).then_some(d)
        });
        let e = match over_deadline {
            Some(d) => d.error(Some(e)),
            None => e,
        };
        if let (Some(kind), Some(route)) = (upstream_error::kind(&e), ctx.route.as_ref()) {
            log::debug!("pool {}: upstream {kind}: {e}", route.pool.name());
            METRICS
                .upstream_errors
                .with_label_values(&[route.pool.name(), kind])
                .inc();
        }
        // Pingora's own policy: retry only idempotent requests whose body is still buffered,
        // and only when the failed connection was a reused one.
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx
            .deadline
            .as_ref()
            .is_some_and(|d| d.expired(Instant::now()))
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(route), Some(addr)) = (ctx.route.as_ref(), ctx.tried.last()) {
            route.pool.report_connect_success(addr);
        }
        if let Some(d) = ctx.deadline.as_mut() {
            if d.expired(Instant::now()) {
                return Err(d.error(None));
            }
            #[cfg(unix)]
            if let Err(e) = d.arm(fd) {
                log::warn!("timeouts.total: cannot watch the origin connection: {e}");
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(d) = ctx.deadline.as_mut() {
            // Over the deadline, even a body that ends here (a close-delimited one ends when
            // the deadline cut its connection) is not the origin's whole response: fail it,
            // so it is not stored.
            if d.expired(Instant::now()) {
                return Err(d.error(None));
            }
            if end_of_stream {
                // the whole response is in: no deadline for what follows
                ctx.deadline = None;
            }
        }
        Ok(None)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = ctx.route.as_ref() else {
            return Ok(());
        };
        headers::set_forwarding_headers(upstream, client_ip(session), self.scheme(), &ctx.host)?;
        if route.spec.strip_prefix {
            let pq = upstream
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let new = headers::strip_path_prefix(&pq, &route.spec.path_prefix);
            let uri = http::Uri::try_from(new)
                .map_err(|e| Error::because(ErrorType::InternalError, "rewrite path", e))?;
            upstream.set_uri(uri);
        }
        headers::apply_request_ops(upstream, &route.spec.request_headers)?;
        if ctx.drop_body {
            // the body is discarded as it arrives; say so with an explicit empty length
            upstream.remove_header(&http::header::TRANSFER_ENCODING);
            upstream.insert_header(http::header::CONTENT_LENGTH, "0")?;
        }
        self.filters.upstream_phase(session, upstream, ctx).await?;
        ctx.upstream_sent_at = Some(Instant::now());
        ctx.fetch_started = Some(std::time::SystemTime::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream.status.is_informational()
            && upstream.status != http::StatusCode::SWITCHING_PROTOCOLS
        {
            return upstream_error::count_informational(&mut ctx.informational);
        }
        // a tunnel (101) has no end to wait for; a head without a body is the whole response
        if ctx.deadline.is_some()
            && (upstream.status == http::StatusCode::SWITCHING_PROTOCOLS
                || !deadline::body_follows(upstream))
        {
            ctx.deadline = None;
        }
        // before pingora's cache write: a streamed body without Content-Length that outgrows
        // cache.max_object_size must reach the client whole (see the function's doc)
        crate::cache::defer_body_size_check(&mut session.cache, upstream);
        if !session.req_header().method.is_safe() {
            self.invalidate_after_unsafe(session.req_header(), upstream, &ctx.host);
        }
        if upstream.status != http::StatusCode::SWITCHING_PROTOCOLS {
            headers::strip_connection_listed(upstream);
        }
        if upstream.status == http::StatusCode::NOT_MODIFIED {
            ctx.not_modified = Some(Box::new(upstream.clone()));
        }
        if let (Some(route), Some(at)) = (ctx.route.as_ref(), ctx.upstream_sent_at) {
            let elapsed = at.elapsed().as_secs_f64();
            ctx.origin_ms = Some(elapsed * 1000.0);
            METRICS
                .upstream_latency
                .with_label_values(&[route.pool.name()])
                .observe(elapsed);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.h2_head_downgraded {
            // any background refresh was spawned by now
            refresh::restore_h2_version(session.req_header_mut());
            ctx.h2_head_downgraded = false;
        }
        if resp.status.is_informational() {
            // 1xx heads pass through as the origin sent them
            return Ok(());
        }
        if !ctx.unstored_fields.is_empty() && session.cache.phase() == CachePhase::Miss {
            // this head is the stored one: give the fetching client what the origin sent
            headers::restore_fields(resp, std::mem::take(&mut ctx.unstored_fields))?;
        }
        for name in &rfc9111::CLIENT_HIDDEN_HEADERS {
            resp.remove_header(name);
        }
        if let Some(route) = ctx.route.as_ref() {
            if let Some(rules) = route.spec.cache.as_ref() {
                if ctx.stored && rules.set_cookie == crate::config::SetCookiePolicy::Strip {
                    // stored without it: the client that caused the fetch gets what others get
                    resp.remove_header(&http::header::SET_COOKIE);
                }
                let phase = session.cache.phase();
                if phase == CachePhase::Stale {
                    // stale-if-error: pingora will not reuse this connection after the failed
                    // fetch, so say so rather than promise keep-alive and then close
                    session.set_keepalive(None);
                }
                let ttl_left = matches!(
                    phase,
                    CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating
                )
                .then(|| cache_ttl_left(session.cache.cache_meta()));
                // the predictor remembered this URL as uncacheable: no lookup, no lock
                let passed = !ctx.stored && session.cache.predicted_uncacheable_reason().is_some();
                let (phase, detail) = match ctx.bypass {
                    Some(b) => (phase, Some(b.as_str())),
                    None if passed => (CachePhase::Bypass, Some("hit-for-pass")),
                    None if ctx.early_refresh => (phase, Some("early-refresh")),
                    None => (
                        phase,
                        LockWait::of(phase, waited_on_fetch(session, ctx))
                            .and_then(LockWait::detail),
                    ),
                };
                let status =
                    cache_status::cache_status(phase, ttl_left, ctx.stored, ctx.request_forced, detail);
                resp.insert_header("cache-status", status)?;
            }
            headers::apply_response_ops(resp, &route.spec.response_headers)?;
        }
        let result = self.filters.response_phase(session, resp, ctx).await;
        if result.is_err() {
            // a failed response is not cached, even when its body already streamed into storage
            self.cache.discard_fill_of(&session.cache);
        }
        result
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = failure_status(e);
        // Once a final response head is out (including one a failed filter wrote in
        // on_response), an error page would be read as the end of that response's body;
        // closing the connection is the only honest signal left.
        if code > 0 && !final_head_sent(session.response_written()) {
            let text = ctx.failure.clone().unwrap_or_else(|| match code {
                504 => "verge: upstream timed out".to_string(),
                502 => "verge: bad gateway".to_string(),
                408 => "verge: request timed out".to_string(),
                400 => "verge: bad request".to_string(),
                _ => "verge: internal error".to_string(),
            });
            if let Err(err) = respond_plain(session, code, &text).await {
                log::debug!("could not send error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(d) = ctx.deadline.as_mut() {
            d.disarm();
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let caches = ctx.route.as_ref().is_some_and(|r| r.spec.cache.is_some());
        // a request a filter answered never reached the cache
        let counted = caches && !ctx.filters.answered();
        let phase = session.cache.phase();
        METRICS.record_request(&RequestOutcome {
            route: ctx.route_name(),
            status,
            lookup: counted.then(|| lookup_result(phase, ctx)),
            source: response_source(phase, ctx),
            body_bytes: session.body_bytes_sent() as u64,
            elapsed: ctx.started.map(|t| t.elapsed()),
        });
        if counted {
            if let Some(wait) = LockWait::of(phase, waited_on_fetch(session, ctx)) {
                METRICS
                    .cache_lock_waits
                    .with_label_values(&[ctx.route_name(), wait.as_str()])
                    .inc();
            }
        }
        if let Some(log) = &self.access_log {
            self.write_access_log(log, session, ctx, status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_page_only_before_a_final_head() {
        let head = |status| ResponseHeader::build(status, None).expect("resp");
        assert!(!final_head_sent(None));
        assert!(!final_head_sent(Some(&head(100))));
        assert!(!final_head_sent(Some(&head(103))));
        assert!(final_head_sent(Some(&head(101))), "a tunnel");
        assert!(final_head_sent(Some(&head(200))));
        assert!(final_head_sent(Some(&head(502))));
    }

    #[test]
    fn statuses_for_failures() {
        let up = |t| {
            let mut e = Error::new(t);
            e.as_up();
            e
        };
        assert_eq!(failure_status(&up(ErrorType::ConnectRefused)), 502);
        assert_eq!(failure_status(&up(ErrorType::ReadTimedout)), 504);
        assert_eq!(failure_status(&Error::new(ErrorType::HTTPStatus(502))), 502);
        assert_eq!(failure_status(&Error::new(ErrorType::InternalError)), 500);
    }
}
