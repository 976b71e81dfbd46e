//! The extension API: user [`Filter`]s that verge runs on the requests of the routes selecting them.
//!
//! A filter is an `async` trait object registered when verge is built as a library
//! (`verge::Verge::builder(config).filter(MyFilter)`). Filters run in registration order; a
//! route's `filters: [name, ...]` key selects which of them run on it (no key: all of them). Each
//! hook gets the header it may change and a [`FilterCtx`]: the client address, host, route and
//! pool, a typed extension map kept for the whole request, and, in `on_request`, overrides of the
//! route, the pool and the cache key.
//!
//! ```text
//! request_filter: route by host + path ─► on_request (each filter, in order)
//!                   Continue ─► next filter ─► cache lookup ─► origin
//!                   Respond(reply) ─► the reply goes to the client; no cache, no origin
//!                   Err(e) ─► 500 or 502, verge_filter_errors_total{filter,phase}
//! upstream_request_filter: verge's own edits ─► on_upstream_request (misses only)
//! response_filter: Cache-Status, route edits ─► on_response (misses and hits)
//! ```
//!
//! Requests verge answers before routing completes (a refused target, a missing host, no
//! route, `PURGE`) never reach filters.

use super::context::{client_ip, RequestCtx};
use super::error_page::answer;
use crate::metrics::METRICS;
use crate::snapshot::{Route, SharedSnapshot, Snapshot};
use async_trait::async_trait;
use bytes::Bytes;
use http::{Extensions, HeaderName, HeaderValue};
use pingora_error::{Error, ErrorType};
pub use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;

/// A user extension of the request path. Implement the hooks you need; the others do nothing.
///
/// Hooks must not panic: return a [`FilterError`] instead, which verge turns into a 500 (or
/// 502) with a plain body and counts in `verge_filter_errors_total{filter,phase}`.
///
/// ```
/// use verge::{async_trait, Decision, Filter, FilterCtx, FilterError, Reply, RequestHeader};
///
/// /// Refuses requests without an `x-tenant` header; the rest go on to the cache and origin.
/// struct RequireTenant;
///
/// #[async_trait]
/// impl Filter for RequireTenant {
///     fn name(&self) -> &str {
///         "require-tenant"
///     }
///
///     async fn on_request(
///         &self,
///         req: &mut RequestHeader,
///         _ctx: &mut FilterCtx<'_>,
///     ) -> Result<Decision, FilterError> {
///         Ok(match req.headers.get("x-tenant") {
///             Some(_) => Decision::Continue,
///             None => Decision::Respond(Reply::text(400, "x-tenant is required")),
///         })
///     }
/// }
/// ```
#[async_trait]
pub trait Filter: Send + Sync + 'static {
    /// The name routes use in `filters: [...]` and metrics use as the `filter` label: 1-128
    /// ASCII letters, digits, `-`, `_` or `.`, unique among the registered filters.
    fn name(&self) -> &str;

    /// After routing, before any cache lookup or origin work. `req` is the client's request;
    /// changes to it are what the cache key and the origin see (routing is not redone: use
    /// [`FilterCtx::use_route`]).
    ///
    /// Runs once per client request, and once more when verge refreshes a stale cache entry
    /// in the background (stale-while-revalidate, [`FilterCtx::is_background_refresh`]) on a
    /// copy of the request: over HTTP/1 the client's original, over HTTP/2 the request as the
    /// filters left it. Keep it idempotent: a filter that accepted a request must accept its
    /// copy too, so make lasting edits (such as removing a credential) in
    /// [`on_upstream_request`](Self::on_upstream_request), which only changes what the origin
    /// receives.
    async fn on_request(
        &self,
        _req: &mut RequestHeader,
        _ctx: &mut FilterCtx<'_>,
    ) -> Result<Decision, FilterError> {
        Ok(Decision::Continue)
    }

    /// Before the request goes to the origin (cache misses, uncacheable requests), after verge's
    /// own forwarding headers and route edits. Runs again for each retry on another backend.
    async fn on_upstream_request(
        &self,
        _upstream: &mut RequestHeader,
        _ctx: &mut FilterCtx<'_>,
    ) -> Result<(), FilterError> {
        Ok(())
    }

    /// Before the response header goes to the client (from the origin or from the cache), after
    /// verge's `Cache-Status` and route edits. Not run for replies filters or verge generate.
    async fn on_response(
        &self,
        _resp: &mut ResponseHeader,
        _ctx: &mut FilterCtx<'_>,
    ) -> Result<(), FilterError> {
        Ok(())
    }
}

/// What [`Filter::on_request`] decided.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Go on: the next filter, then the cache and the origin.
    Continue,
    /// Answer the client with this reply; no later filter, cache lookup or origin request runs.
    Respond(Reply),
}

/// A response a filter sends instead of proxying (counted in
/// `verge_filter_responses_total{filter,status}`). `Content-Length` is set by verge.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Reply {
    /// An empty reply with this status (200-599).
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A `text/plain` reply: `text` and a newline.
    pub fn text(status: u16, text: &str) -> Reply {
        Reply::new(status)
            .header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )
            .body(format!("{text}\n"))
    }

    /// Add a header (repeated names are all sent).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    fn into_parts(self) -> Result<(ResponseHeader, Bytes), FilterError> {
        if !(200..=599).contains(&self.status) {
            return Err(FilterError::internal(format!(
                "reply status {} is not a final status (200-599)",
                self.status
            )));
        }
        let bad = |e: Box<Error>| FilterError::internal(format!("reply header: {e}"));
        let mut resp =
            ResponseHeader::build(self.status, Some(self.headers.len() + 2)).map_err(bad)?;
        for (name, value) in self.headers {
            resp.append_header(name, value).map_err(bad)?;
        }
        resp.insert_header(http::header::CONTENT_LENGTH, self.body.len())
            .map_err(bad)?;
        Ok((resp, self.body))
    }
}

/// Why a filter failed. The client gets the status with a generic plain body; the message goes
/// to verge's log (never to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FilterError {
    status: u16,
    message: String,
}

impl FilterError {
    /// The filter itself failed: 500.
    pub fn internal(message: impl Into<String>) -> FilterError {
        FilterError {
            status: 500,
            message: message.into(),
        }
    }

    /// A service the filter depends on (an auth server, a lookup) failed: 502.
    pub fn bad_gateway(message: impl Into<String>) -> FilterError {
        FilterError {
            status: 502,
            message: message.into(),
        }
    }

    /// The status the client gets: 500 or 502.
    pub fn status(&self) -> u16 {
        self.status
    }
}

/// The hook a filter is running in (the `phase` label of `verge_filter_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// [`Filter::on_request`].
    Request,
    /// [`Filter::on_upstream_request`].
    UpstreamRequest,
    /// [`Filter::on_response`].
    Response,
}

impl Phase {
    /// `request`, `upstream_request` or `response`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Request => "request",
            Phase::UpstreamRequest => "upstream_request",
            Phase::Response => "response",
        }
    }
}

/// What filters keep for one request between hooks (part of verge's per-request state).
#[derive(Debug, Default)]
pub struct FilterState {
    /// Indices of the registered filters that run on this request, in order.
    selected: Vec<usize>,
    extensions: Extensions,
    /// `(name, value)` parts added to the cache key's variant.
    cache_key: Vec<(String, String)>,
    /// A filter answered the request, or failed: no cache lookup happened.
    answered: bool,
}

impl FilterState {
    /// The cache-key parts filters added ([`FilterCtx::add_cache_key`]).
    pub fn cache_key(&self) -> &[(String, String)] {
        &self.cache_key
    }

    /// Whether a filter answered (or failed) this request before the cache and the origin.
    pub fn answered(&self) -> bool {
        self.answered
    }
}

/// A filter's view of the request it runs for: who asked, where it is routed, a typed
/// extension map that lives as long as the request (stash in `on_request`, read in
/// `on_response`), and in `on_request` the overrides of route, pool and cache key.
pub struct FilterCtx<'a> {
    phase: Phase,
    state: &'a mut RequestCtx,
    snapshot: Option<&'a Snapshot>,
    client_ip: Option<IpAddr>,
    background: bool,
}

impl FilterCtx<'_> {
    /// The hook being run.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The client's address (the TCP peer), when known.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    /// True when verge itself made this request, to refresh a stale cache entry in the
    /// background (stale-while-revalidate): no client waits for it, and its response only
    /// updates the cache. A rate limiter, for one, should not count it.
    pub fn is_background_refresh(&self) -> bool {
        self.background
    }

    /// The canonical host the request is for (lowercase, no port).
    pub fn host(&self) -> &str {
        &self.state.host
    }

    /// The name of the route the request is on (after any [`use_route`](Self::use_route)).
    pub fn route(&self) -> &str {
        self.state.route_name()
    }

    /// The name of the pool the request goes to (after any override).
    pub fn pool(&self) -> &str {
        self.state.route.as_ref().map_or("", |r| r.pool.name())
    }

    /// Typed per-request data shared by every filter and hook of this request.
    pub fn extensions(&self) -> &Extensions {
        &self.state.filters.extensions
    }

    /// Mutable access to the per-request extensions.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.state.filters.extensions
    }

    /// Send the request on the route named `name` instead: its pool, cache rules, header edits
    /// and timeouts (the filters that run stay those of the route matched by host and path).
    /// Only in `on_request`; an unknown name is an error (500 when returned with `?`).
    pub fn use_route(&mut self, name: &str) -> Result<(), FilterError> {
        let snapshot = self.overridable("use_route")?;
        let route = snapshot
            .route(name)
            .ok_or_else(|| FilterError::internal(format!("no route named {name:?}")))?;
        self.state.route = Some(route.clone());
        Ok(())
    }

    /// Send the request to the pool named `name`, keeping everything else of the route. Only in
    /// `on_request`, after any `use_route`; an unknown name is an error (500 with `?`).
    pub fn use_pool(&mut self, name: &str) -> Result<(), FilterError> {
        let snapshot = self.overridable("use_pool")?;
        let pool = snapshot
            .pools
            .get(name)
            .ok_or_else(|| FilterError::internal(format!("no pool named {name:?}")))?;
        let Some(current) = self.state.route.as_ref() else {
            return Err(FilterError::internal("use_pool: the request has no route"));
        };
        if !Arc::ptr_eq(&current.pool, pool) {
            self.state.route = Some(Arc::new(Route {
                spec: current.spec.clone(),
                pool: pool.clone(),
                counters: current.counters.clone(),
            }));
        }
        Ok(())
    }

    /// Add `name=value` to the cache key, e.g. `("device", "mobile")`: requests with different
    /// values get separate cached copies. The part goes into the key's variant, like a `Vary`
    /// header, so a purge of the URL still removes every copy and `max_variants` still applies.
    /// The same name again replaces its value. Only in `on_request`; no effect on routes
    /// that do not cache.
    pub fn add_cache_key(&mut self, name: &str, value: &str) -> Result<(), FilterError> {
        self.overridable("add_cache_key")?;
        let parts = &mut self.state.filters.cache_key;
        match parts.iter_mut().find(|(n, _)| n == name) {
            Some(part) => part.1 = value.to_string(),
            None => parts.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    fn overridable(&self, what: &str) -> Result<&Snapshot, FilterError> {
        match (self.phase, self.snapshot) {
            (Phase::Request, Some(s)) => Ok(s),
            _ => Err(FilterError::internal(format!(
                "{what} is only possible in on_request, not in {}",
                self.phase.as_str()
            ))),
        }
    }
}

/// Why a set of filters cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// A name routes could not refer to.
    #[error("filter name {0:?} is not valid (1-128 letters, digits, '-', '_', '.')")]
    InvalidName(String),
    /// Two filters with one name.
    #[error("two filters are named {0:?}")]
    Duplicate(String),
}

/// The filters registered with one verge build, in registration order. Cheap to clone.
#[derive(Clone, Default)]
pub struct Filters {
    list: Arc<Vec<Box<dyn Filter>>>,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Filters {
    /// Register `list` in this order; names must be valid and distinct.
    pub fn new(list: Vec<Box<dyn Filter>>) -> Result<Filters, RegistrationError> {
        let mut seen = std::collections::HashSet::new();
        for f in &list {
            let name = f.name();
            if !crate::config::valid_name(name) {
                return Err(RegistrationError::InvalidName(name.to_string()));
            }
            if !seen.insert(name) {
                return Err(RegistrationError::Duplicate(name.to_string()));
            }
        }
        Ok(Filters {
            list: Arc::new(list),
        })
    }

    /// The registered names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|f| f.name()).collect()
    }

    /// No filter is registered.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether a request on a route with this `filters:` selection runs any filter. A selection
    /// naming a filter this binary lacks counts: the request phase fails it closed.
    pub fn run_on(&self, selection: Option<&[String]>) -> bool {
        !self.list.is_empty() && selection.is_none_or(|names| !names.is_empty())
    }

    /// `on_request` of every filter selected by the request's route. `Ok(true)`: a response
    /// was sent (a filter's reply, or the error a failing filter caused).
    pub(crate) async fn request_phase(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &SharedSnapshot,
    ) -> pingora_error::Result<bool> {
        if self.list.is_empty() {
            return Ok(false);
        }
        let Some(route) = ctx.route.clone() else {
            return Ok(false);
        };
        let names = self.names();
        ctx.filters.selected = match select(&names, route.spec.filters.as_deref()) {
            Ok(selected) => selected,
            Err(unknown) => {
                // Only a control-plane policy can get here (file configs are checked at start):
                // fail closed rather than skip a filter that may be a gate.
                let error = FilterError::internal(format!(
                    "route {:?} selects filter {unknown:?}, which this binary does not register",
                    route.spec.name
                ));
                return fail_in_request(session, ctx, &unknown, error).await;
            }
        };
        if ctx.filters.selected.is_empty() {
            return Ok(false);
        }
        let snapshot = snapshot.load_full();
        let (client, background) = (client_ip(session), session.subrequest_ctx.is_some());
        for k in 0..ctx.filters.selected.len() {
            let Some(filter) = self.list.get(ctx.filters.selected[k]) else {
                continue;
            };
            let outcome = {
                let mut fctx = FilterCtx {
                    phase: Phase::Request,
                    state: ctx,
                    snapshot: Some(&*snapshot),
                    client_ip: client,
                    background,
                };
                filter.on_request(session.req_header_mut(), &mut fctx).await
            };
            let reply = match outcome {
                Ok(Decision::Continue) => continue,
                Ok(Decision::Respond(reply)) => reply,
                Err(e) => return fail_in_request(session, ctx, filter.name(), e).await,
            };
            let status = reply.status();
            let (header, body) = match reply.into_parts() {
                Ok(parts) => parts,
                Err(e) => return fail_in_request(session, ctx, filter.name(), e).await,
            };
            let mut buf = itoa::Buffer::new();
            METRICS
                .filter_responses
                .with_label_values(&[filter.name(), buf.format(status)])
                .inc();
            ctx.filters.answered = true;
            if !session.is_body_empty() {
                // do not read (and discard) a body nobody will use: close instead
                session.set_keepalive(None);
            }
            session
                .write_response_header(Box::new(header), false)
                .await?;
            session.write_response_body(Some(body), true).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// `on_upstream_request` of the request's selected filters. A failure is an
    /// `HTTPStatus(500|502)` error, which `fail_to_proxy` answers with `ctx.failure`.
    pub(crate) async fn upstream_phase(
        &self,
        session: &Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<()> {
        let (client, background) = (client_ip(session), session.subrequest_ctx.is_some());
        for k in 0..ctx.filters.selected.len() {
            let Some(filter) = self.list.get(ctx.filters.selected[k]) else {
                continue;
            };
            let mut fctx = FilterCtx {
                phase: Phase::UpstreamRequest,
                state: ctx,
                snapshot: None,
                client_ip: client,
                background,
            };
            if let Err(e) = filter.on_upstream_request(upstream, &mut fctx).await {
                record_failure(filter.name(), Phase::UpstreamRequest, &ctx.host, &e);
                ctx.failure = Some(failure_text(e.status()).to_string());
                return Error::e_explain(
                    ErrorType::HTTPStatus(e.status()),
                    format!("filter {} failed", filter.name()),
                );
            }
        }
        Ok(())
    }

    /// `on_response` of the request's selected filters. On a failure the error response is
    /// written here (the header being filtered is never sent) and an error returned, so Pingora
    /// stops proxying or serving from cache.
    pub(crate) async fn response_phase(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<()> {
        let (client, background) = (client_ip(session), session.subrequest_ctx.is_some());
        for k in 0..ctx.filters.selected.len() {
            let Some(filter) = self.list.get(ctx.filters.selected[k]) else {
                continue;
            };
            let mut fctx = FilterCtx {
                phase: Phase::Response,
                state: ctx,
                snapshot: None,
                client_ip: client,
                background,
            };
            if let Err(e) = filter.on_response(resp, &mut fctx).await {
                record_failure(filter.name(), Phase::Response, &ctx.host, &e);
                answer(session, ctx, e.status(), failure_text(e.status()), &[]).await?;
                return Error::e_explain(
                    ErrorType::HTTPStatus(e.status()),
                    format!("filter {} failed", filter.name()),
                );
            }
        }
        Ok(())
    }
}

/// Answer a request whose `on_request` failed, and count it.
async fn fail_in_request(
    session: &mut Session,
    ctx: &mut RequestCtx,
    filter: &str,
    error: FilterError,
) -> pingora_error::Result<bool> {
    record_failure(filter, Phase::Request, &ctx.host, &error);
    ctx.filters.answered = true;
    session.set_keepalive(None);
    answer(
        session,
        ctx,
        error.status(),
        failure_text(error.status()),
        &[],
    )
    .await?;
    Ok(true)
}

fn record_failure(filter: &str, phase: Phase, host: &str, error: &FilterError) {
    METRICS
        .filter_errors
        .with_label_values(&[filter, phase.as_str()])
        .inc();
    log::warn!(
        "filter {filter} failed in {} for host {host}: {error} ({})",
        phase.as_str(),
        error.status()
    );
}

/// The body of a filter failure: generic, the details are in the log.
fn failure_text(status: u16) -> &'static str {
    if status == 502 {
        "verge: bad gateway"
    } else {
        "verge: internal error"
    }
}

/// The registered filters (by index into `registered`) that a route's `filters:` list selects,
/// in registration order. `None` selects all. `Err`: a listed name that is not registered.
fn select(registered: &[&str], wanted: Option<&[String]>) -> Result<Vec<usize>, String> {
    let Some(wanted) = wanted else {
        return Ok((0..registered.len()).collect());
    };
    if let Some(unknown) = wanted.iter().find(|w| !registered.contains(&w.as_str())) {
        return Err(unknown.clone());
    }
    Ok(registered
        .iter()
        .enumerate()
        .filter(|(_, name)| wanted.iter().any(|w| w == *name))
        .map(|(i, _)| i)
        .collect())
}

/// A stable bucket in `0..100` for `key`, for percentage splits such as canaries and A/B tests:
/// the same key lands in the same bucket on every node, across restarts and versions
/// (FNV-1a with a 64-bit finalizer; not a security primitive).
pub fn percent_bucket(key: &str) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    #[async_trait]
    impl Filter for Named {
        fn name(&self) -> &str {
            self.0
        }
    }

    #[test]
    fn selection_keeps_registration_order() {
        let reg = ["auth", "canary", "device"];
        assert_eq!(select(&reg, None), Ok(vec![0, 1, 2]));
        let wanted = vec!["device".to_string(), "auth".to_string()];
        assert_eq!(select(&reg, Some(&wanted)), Ok(vec![0, 2]));
        assert_eq!(select(&reg, Some(&[])), Ok(vec![]));
        let unknown = vec!["auth".to_string(), "geo".to_string()];
        assert_eq!(select(&reg, Some(&unknown)), Err("geo".to_string()));
        assert_eq!(select(&[], None), Ok(vec![]));
    }

    #[test]
    fn registration_checks_names() {
        let ok =
            Filters::new(vec![Box::new(Named("a")), Box::new(Named("b-2.x_y"))]).expect("valid");
        assert_eq!(ok.names(), vec!["a", "b-2.x_y"]);
        assert_eq!(
            Filters::new(vec![Box::new(Named("a")), Box::new(Named("a"))]).err(),
            Some(RegistrationError::Duplicate("a".into()))
        );
        assert_eq!(
            Filters::new(vec![Box::new(Named("has space"))]).err(),
            Some(RegistrationError::InvalidName("has space".into()))
        );
        assert_eq!(
            Filters::new(vec![Box::new(Named(""))]).err(),
            Some(RegistrationError::InvalidName(String::new()))
        );
    }

    #[test]
    fn replies_become_headers() {
        let (h, body) = Reply::text(401, "no")
            .header(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            )
            .into_parts()
            .expect("valid");
        assert_eq!(h.status.as_u16(), 401);
        assert_eq!(h.headers["www-authenticate"], "Bearer");
        assert_eq!(h.headers["content-length"], "3");
        assert_eq!(&body[..], b"no\n");
        assert!(Reply::new(101).into_parts().is_err());
        assert!(Reply::new(600).into_parts().is_err());
        assert_eq!(
            Reply::new(204).into_parts().map(|(h, _)| h.status.as_u16()),
            Ok(204)
        );
    }

    #[test]
    fn errors_map_to_500_or_502() {
        assert_eq!(FilterError::internal("x").status(), 500);
        assert_eq!(FilterError::bad_gateway("x").status(), 502);
        assert_eq!(failure_text(502), "verge: bad gateway");
        assert_eq!(failure_text(500), "verge: internal error");
        assert_eq!(Phase::UpstreamRequest.as_str(), "upstream_request");
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        // pinned: a change here moves users between tracks on upgrade
        assert_eq!(
            ["", "user-1", "alice", "bob"].map(percent_bucket),
            [58, 49, 57, 4]
        );
        let mut counts = [0u32; 10];
        for i in 0..10_000 {
            counts[usize::from(percent_bucket(&format!("id-{i}")) / 10)] += 1;
        }
        // 1000 expected per decile
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
    }
}
