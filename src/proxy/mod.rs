//! `EdgeProxy`: verge's `ProxyHttp` implementation. It reads as a table of contents: each phase
//! method delegates to the modules beside it (caching, peers, headers, filters, error pages, the
//! finish shared with the hit lane), which hold the logic, mostly as pure functions.

pub mod brotli_codec;
pub mod caching;
pub mod client_address;
pub mod client_head;
pub mod compression;
pub mod content_coding;
pub mod context;
pub mod deadline;
pub mod edge;
pub mod error_page;
pub mod filter;
pub mod finish;
pub mod gzip_codec;
pub mod headers;
pub mod hit_lane;
pub mod lane_route;
pub mod origin_response;
pub mod pass_lane;
pub mod peer;
pub mod purge;
pub mod rate_limit;
pub mod redirect;
pub mod refresh;
pub mod request_body;
pub mod request_id;
pub mod request_routing;
pub mod rewrite;
pub mod tier;
pub mod upstream_error;
pub mod upstream_request;

pub use context::{LaneWaited, ListenerInfo, RequestCtx};

use crate::cache::CacheEngine;
use crate::http_syntax::scheme;
use crate::snapshot::SharedSnapshot;
use async_trait::async_trait;
use bytes::Bytes;
use filter::Filters;
use pingora_cache::key::CacheHashKey;
use pingora_cache::{
    key::HashBinary, CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable,
};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::time::Instant;

/// The proxy for one listener. Cheap to clone: the snapshot handle is shared.
pub struct EdgeProxy {
    snapshot: SharedSnapshot,
    listener: ListenerInfo,
    cache: &'static CacheEngine,
    filters: Filters,
    forwarding_trust: headers::ForwardingTrust,
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
            filters: Filters::default(),
            forwarding_trust: headers::ForwardingTrust::default(),
        }
    }

    /// Let these trusted hops in front of the listener set forwarding fields (by default no
    /// client may: every one is dropped).
    pub fn with_forwarding_trust(mut self, trust: headers::ForwardingTrust) -> Self {
        self.forwarding_trust = trust;
        self
    }

    /// Run these user filters on the routes that select them.
    pub fn with_filters(mut self, filters: Filters) -> Self {
        self.filters = filters;
        self
    }

    /// The scheme the client used: the listener's, or for a verified tier hop, the one the
    /// forwarding member's client used (the key and the rules see the same request there).
    fn scheme(&self, ctx: &RequestCtx) -> &'static str {
        tier::scheme(ctx, scheme(self.listener.tls))
    }
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
        if let Some(waited) = prev_ctx.downcast_ref::<LaneWaited>() {
            ctx.lane_waited = Some(waited.0);
        }
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut RequestCtx) {
        session.cache.cache_miss();
        // the hit lane may hold plain requests for this key until the response is stored
        if session.subrequest_ctx.is_none() {
            if let Some(key) = session.cache.maybe_cache_key() {
                ctx.pending_fetch = Some(self.cache.storage.pending.begin(key.combined_bin()));
            }
        }
    }

    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &RequestCtx) -> bool {
        // early refreshes are spawned by client requests, never by a refresh itself
        session.subrequest_ctx.is_none()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if session.is_http2() {
            // Responses served from a fill go out through the vendored crate's cancel-safe
            // HTTP/2 proxy tasks: while this stream waits for the client's flow-control window,
            // the origin's body keeps going into the cache, so a fill runs at the origin's pace
            // for every other reader (as over HTTP/1, see the front door)
            session.set_proxy_tasks_enabled(true);
            // a stream whose window stays shut this long is reset; a fill it started goes on
            session.set_write_timeout(Some(self.listener.send_timeout));
            // and HTTP/2 has no read timeout: the wait for each piece of a request body
            session.downstream_body_timeout = Some(self.listener.body_timeout);
        }
        if edge::refused_by_listener(session, ctx, &self.listener.name, &self.snapshot).await? {
            return Ok(true);
        }
        tier::receive(session.req_header_mut(), ctx, &self.snapshot.load());
        if request_routing::answered_before_routing(session, ctx, &self.snapshot, self.cache)
            .await?
        {
            return Ok(true);
        }
        let tls = self.scheme(ctx) == "https";
        if edge::answered(session, ctx, tls, &self.snapshot).await? {
            return Ok(true);
        }
        // after routing, before the cache and the origin
        self.filters
            .request_phase(session, ctx, &self.snapshot)
            .await
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        caching::enable(session, ctx, self.cache);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        Ok(caching::key(self.scheme(ctx), session.req_header(), ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        caching::variance(meta, ctx, req)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<ForcedFreshness>> {
        let snapshot = self.snapshot.load_full();
        let forced = caching::hit_filter(self.cache, &snapshot, session, meta, is_fresh, ctx);
        ctx.decided_with = Some(snapshot);
        forced
    }

    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let caches = ctx.route.as_ref().is_some_and(|r| r.spec.cache.is_some());
        if caches && ctx.directives.only_if_cached {
            // RFC 9111 §5.2.1.7: nothing stored is usable, and the origin must not be asked
            let text = "verge: only-if-cached, and no usable stored response";
            error_page::answer(session, ctx, 504, text, &[]).await?;
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
        Ok(caching::storable(self.cache, session, resp, ctx))
    }

    fn should_serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        caching::may_serve_stale(session, ctx, error)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Err(e) = request_body::count(ctx, body, self.listener.max_body) {
            session.set_keepalive(None);
            return Err(e);
        }
        if session.is_http2() {
            let (idle, min_rate) = (self.listener.body_timeout, self.listener.body_min_rate);
            request_body::keeps_h2_pace(ctx, idle, min_rate)?;
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if let Some(owner) = tier::owner_peer(session, ctx, &self.snapshot.load()) {
            return Ok(owner);
        }
        peer::select(session, ctx)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        if tier::awaiting_owner(ctx) {
            return tier::owner_failed(ctx, e, false);
        }
        peer::on_connect_failure(session, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if tier::awaiting_owner(ctx) {
            return tier::owner_failed(ctx, e, true);
        }
        upstream_error::while_proxying(peer, session, e, ctx, client_reused)
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
        if !tier::owner_connected(ctx) {
            if let (Some(route), Some(addr)) = (ctx.route.as_ref(), ctx.tried.last()) {
                route.pool.report_connect_success(addr);
            }
        }
        #[cfg(unix)]
        return deadline::watch_connection(&mut ctx.deadline, fd);
        #[cfg(not(unix))]
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        deadline::body_arrived(&mut ctx.deadline, end_of_stream)?;
        let route = ctx.route.as_ref().map_or("", |r| r.spec.name.as_str());
        compression::origin_body(body, end_of_stream, route, &mut ctx.transcoding)?;
        Ok(None)
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_proxy::RangeType {
        let compresses = ctx
            .route
            .as_ref()
            .is_some_and(|r| r.spec.compression.is_some());
        compression::range_type(session, resp, compresses)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        compression::client_body(body, end_of_stream, &mut ctx.transcoding)?;
        Ok(None)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (snapshot, trust) = (&self.snapshot, &self.forwarding_trust);
        if upstream_request::prepare(session, upstream, ctx, snapshot, self.scheme(ctx), trust)? {
            self.filters.upstream_phase(session, upstream, ctx).await?;
            upstream_request::sent(ctx);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_error::refuse_status(upstream, session.is_upgrade_req())?;
        if origin_response::is_interim(upstream) {
            return upstream_error::count_informational(&mut ctx.informational);
        }
        tier::owner_answered(upstream, ctx);
        if !session.req_header().method.is_safe() {
            let snapshot = self.snapshot.load();
            let (req, host) = (session.req_header(), &ctx.host);
            caching::invalidate_after_unsafe(
                self.cache,
                &snapshot,
                self.scheme(ctx),
                req,
                upstream,
                host,
            );
        }
        origin_response::head_arrived(session, upstream, ctx)
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
        client_head::prepare(session, resp, ctx, self.scheme(ctx), &self.snapshot)?;
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
        let code = error_page::failure_status(e);
        if session.is_http2() {
            request_body::count_h2_idle_body(e);
        }
        // Once a final response head is out (including one a failed filter wrote in
        // on_response), only closing the connection is left.
        if code > 0 && !error_page::final_head_sent(session.response_written()) {
            let text = error_page::failure_text(code, ctx.failure.as_deref());
            if let Err(err) = error_page::answer(session, ctx, code, &text, &[]).await {
                log::debug!("could not send error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let scheme = self.scheme(ctx);
        finish::record(session, ctx, &self.listener.name, scheme, &self.snapshot);
    }
}
