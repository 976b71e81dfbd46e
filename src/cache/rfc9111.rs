//! Shared-cache rules (RFC 9111) as pure functions: may a request use the cache, may a response
//! be stored and for how long, and the fields verge stores with an entry for itself (its URL,
//! fetch time and duration) that no client sees.

use super::request_view::RequestView;
use super::{http_date, structured_field};
use crate::config::{RouteCache, SetCookiePolicy};
use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora_cache::{CacheMeta, NoCacheReason};
use pingora_http::ResponseHeader;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why a request skips the cache entirely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// Not GET or HEAD.
    Method,
    /// The request carries `Cookie` and the route is not `public`.
    Cookie,
    /// The request says `Cache-Control: no-store`.
    NoStore,
    /// A WebSocket handshake: its 101 and what follows are one client's connection.
    Upgrade,
}

impl Bypass {
    /// The `Cache-Status` detail.
    pub fn as_str(self) -> &'static str {
        match self {
            Bypass::Method => "method",
            Bypass::Cookie => "cookie",
            Bypass::NoStore => "no-store",
            Bypass::Upgrade => "upgrade",
        }
    }
}

/// Response headers carrying an entry's invalidation tags. Kept in the stored copy, removed from
/// what clients see.
pub static TAG_HEADERS: [http::HeaderName; 3] = [
    http::HeaderName::from_static("surrogate-key"),
    http::HeaderName::from_static("cache-tag"),
    http::HeaderName::from_static("cache-groups"),
];

/// Decide whether a request may be answered from, or stored into, the shared cache. A request
/// with `Authorization` does not bypass it: its response is stored only when marked for sharing
/// ([`response_meta`]), and a stored response answers it only when so marked
/// ([`shared_with_credentials`], through `RequestDirectives::credentials`), RFC 9111 §3.5.
pub fn request_bypass(req: &RequestView<'_>, rules: &RouteCache) -> Option<Bypass> {
    if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return Some(Bypass::Method);
    }
    if is_websocket_upgrade(req) {
        return Some(Bypass::Upgrade);
    }
    if !rules.public && req.contains("cookie") {
        return Some(Bypass::Cookie);
    }
    if req.cache_control().is_some_and(|cc| cc.no_store()) {
        return Some(Bypass::NoStore);
    }
    None
}

/// An HTTP/1.1 request for a WebSocket: the one upgrade Pingora forwards (its default
/// `H1UpgradePolicy::WebSocketOnly`). Other `Upgrade` values (`h2c`, …) are stripped before the
/// origin sees them, so those requests stay ordinary, cacheable GETs.
pub fn is_websocket_upgrade(req: &RequestView<'_>) -> bool {
    req.version() == http::Version::HTTP_11
        && req
            .values("upgrade")
            .next()
            .is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"))
}

/// Statuses a cache may store with heuristic or default freshness (RFC 9110 §15.1), minus the
/// ones verge never stores.
fn heuristically_cacheable(status: u16) -> bool {
    matches!(status, 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410)
}

/// Uncacheable because the request carried credentials: says nothing about the URL.
pub const AUTHORIZED: &str = "authorization";
/// Uncacheable because of this response's status (an error, a partial): says nothing lasting.
pub const STATUS: &str = "status";
/// Uncacheable because the URL already has its route's `max_variants`.
pub const MAX_VARIANTS: &str = "max-variants";

/// Whether an uncacheable response with this custom reason should NOT make verge remember its
/// URL as uncacheable (hit-for-pass): the reason is about this request or this one response,
/// not about what the origin serves at that URL.
pub fn transient_no_cache_reason(reason: &'static str) -> bool {
    matches!(reason, AUTHORIZED | STATUS | MAX_VARIANTS)
}

/// Statuses never stored, whatever the origin says: interim responses, partial content, 304,
/// statuses past 599, and errors a client can provoke (400, 413, 414, 431: one client could
/// poison the URL for others).
fn never_stored(status: u16) -> bool {
    !(200..600).contains(&status) || matches!(status, 206 | 304 | 400 | 413 | 414 | 431)
}

/// Statuses whose requirements verge knows (those RFC 9110 defines), for `must-understand`
/// (RFC 9111 §5.2.2.3).
fn understood(status: u16) -> bool {
    matches!(
        status,
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// Server errors: stored only when their origin gave them explicit freshness (never on a
/// route's TTLs or the Last-Modified heuristic), for at most the route's `error_max_ttl`, and never
/// served stale.
fn server_error(status: u16) -> bool {
    (500..600).contains(&status)
}

fn header_date(resp: &ResponseHeader, name: &str, now: SystemTime) -> Option<SystemTime> {
    let mut values = resp.headers.get_all(name).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    http_date::parse(v.as_bytes(), now)
}

/// The freshness lifetime the origin gave, if any: s-maxage > max-age > Expires − Date (`now`
/// when `Date` is missing or unusable).
fn explicit_lifetime(
    cc: Option<&CacheControl>,
    resp: &ResponseHeader,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(d) = cc.and_then(|cc| cc.fresh_duration()) {
        return Some(d);
    }
    let mut expires = resp.headers.get_all(http::header::EXPIRES).iter();
    if let Some(v) = expires.next() {
        // several or unparseable Expires mean "already expired" (RFC 9111 §5.3)
        let when = (expires.next().is_none())
            .then(|| http_date::parse(v.as_bytes(), now))
            .flatten();
        let Some(when) = when else {
            return Some(Duration::ZERO);
        };
        let date = header_date(resp, "date", now).unwrap_or(now);
        return Some(when.duration_since(date).unwrap_or(Duration::ZERO));
    }
    None
}

/// Heuristic freshness: 10% of the time since Last-Modified, capped at one day (RFC 9111 §4.2.2).
fn heuristic_lifetime(resp: &ResponseHeader, now: SystemTime) -> Option<Duration> {
    let lm = header_date(resp, "last-modified", now)?;
    let date = header_date(resp, "date", now).unwrap_or(now);
    let age = date.duration_since(lm).ok()?;
    Some((age / 10).min(Duration::from_secs(86_400)))
}

/// The `Age` field (RFC 9111 §5.1): the first member of the first field line counts (a list or
/// several lines: the rest are discarded), parameters after `;` are dropped, and a value that is
/// not a non-negative integer (`abc`, `-7200`, `7200.0`) is ignored like an absent field.
fn age_field(resp: &ResponseHeader) -> Option<u64> {
    let first = resp.headers.get_all(http::header::AGE).iter().next()?;
    let member = first.as_bytes().split(|b| *b == b',').next()?;
    let item = member.split(|b| *b == b';').next()?.trim_ascii();
    if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // all digits: only overflow can fail, and a huge age is as stale as it gets
    Some(
        std::str::from_utf8(item)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX),
    )
}

/// The age the response already had when it arrived (RFC 9111 §4.2.3, with response delay ~0).
fn initial_age(resp: &ResponseHeader, age: Option<u64>, now: SystemTime) -> Duration {
    let age_value = age.map_or(Duration::ZERO, |secs| {
        Duration::from_secs(secs.min(u64::from(u32::MAX)))
    });
    let apparent = header_date(resp, "date", now)
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or(Duration::ZERO);
    age_value.max(apparent)
}

/// Stored with each entry (and never shown to clients): when its origin fetch started, in Unix
/// milliseconds. `created` cannot serve, because the age correction from `Date` (one-second
/// resolution) can move it before an invalidation the fetch actually followed.
pub const FETCHED_AT: &str = "verge-fetched-at";

/// Stored with each entry (never shown to clients): the host and the path and query it is keyed
/// under, so entries can be matched against invalidations away from a request (reclaiming).
pub const ENTRY_URL: &str = "verge-entry-url";

/// Stored with each entry (never shown to clients): how long its origin fetch took, request
/// sent to response head, in milliseconds: XFetch's `delta` for early refresh.
pub const FETCH_MS: &str = "verge-fetch-ms";

/// Headers removed from every client response: the ones verge adds to stored entries for
/// itself, the invalidation tags, and `Surrogate-Control` (the Edge Architecture spec has the
/// surrogate that obeys it remove it). `CDN-Cache-Control` is passed on: RFC 9213 lets it
/// travel through, and a CDN behind another may be its target too.
pub static CLIENT_HIDDEN_HEADERS: [http::HeaderName; 7] = [
    http::HeaderName::from_static(FETCHED_AT),
    http::HeaderName::from_static(ENTRY_URL),
    http::HeaderName::from_static(FETCH_MS),
    http::HeaderName::from_static("surrogate-key"),
    http::HeaderName::from_static("cache-tag"),
    http::HeaderName::from_static("cache-groups"),
    http::HeaderName::from_static(SURROGATE_CONTROL),
];

/// Record the URL an entry is stored under (`host` + path and query, as keyed).
pub fn set_entry_url(meta: &mut CacheMeta, host: &str, path_query: &str) {
    let mut url = String::with_capacity(host.len() + path_query.len());
    url.push_str(host);
    url.push_str(path_query);
    let _ = meta.response_header_mut().insert_header(ENTRY_URL, url);
}

/// The host and path-and-query an entry is stored under, if recorded.
pub fn entry_url(headers: &http::HeaderMap) -> Option<(&str, &str)> {
    let v = headers.get(ENTRY_URL)?.to_str().ok()?;
    let i = v.find('/')?;
    Some((&v[..i], &v[i..]))
}

/// Record how long the fetch behind `meta` took (to its response head).
pub fn set_fetch_duration(meta: &mut CacheMeta, took: Duration) {
    let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    let _ = meta
        .response_header_mut()
        .insert_header(FETCH_MS, http::HeaderValue::from(ms));
}

/// How long the fetch behind a stored entry took, if recorded.
pub fn fetch_duration(meta: &CacheMeta) -> Option<Duration> {
    let ms: u64 = meta.headers().get(FETCH_MS)?.to_str().ok()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// Record when the fetch behind `meta` started.
pub fn set_fetched_at(meta: &mut CacheMeta, started: SystemTime) {
    let ms = started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let _ = meta
        .response_header_mut()
        .insert_header(FETCHED_AT, http::HeaderValue::from(ms));
}

/// When the fetch behind a stored entry started, if recorded.
pub fn fetched_at(headers: &http::HeaderMap) -> Option<SystemTime> {
    let ms: u64 = headers.get(FETCHED_AT)?.to_str().ok()?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// The freshness lifetime from the origin's explicit one and the route's rules, before the
/// Last-Modified heuristic. In order: `force_ttl` for storable 2xx/3xx (explicitly fresh or
/// heuristically cacheable), the origin's explicit lifetime, `negative_ttl` for 404/410, then
/// `default_ttl` for heuristically cacheable statuses.
fn lifetime(status: u16, explicit: Option<Duration>, rules: &RouteCache) -> Option<Duration> {
    let storable = explicit.is_some() || heuristically_cacheable(status);
    if let Some(forced) = rules.force_ttl {
        if storable && (200..400).contains(&status) {
            return Some(forced);
        }
    }
    if explicit.is_some() {
        return explicit;
    }
    if matches!(status, 404 | 410) && rules.negative_ttl.is_some() {
        return rules.negative_ttl;
    }
    if heuristically_cacheable(status) {
        return rules.default_ttl;
    }
    None
}

/// The targeted field verge obeys first (RFC 9213), then `Cache-Control`.
pub const TARGETED_CACHE_CONTROL: &str = "cdn-cache-control";

/// The older targeted field of the Edge Architecture spec, obeyed when `CDN-Cache-Control` is
/// absent or unusable (what Varnish, Fastly and Akamai setups send). Never forwarded to
/// clients.
pub const SURROGATE_CONTROL: &str = "surrogate-control";

/// The cache directives verge obeys for `resp`: the first usable targeted field
/// (`CDN-Cache-Control`, then `Surrogate-Control`), else `Cache-Control`. A targeted field
/// replaces `Cache-Control` for this cache entirely (RFC 9213 §2.1), `must-revalidate` and all.
/// `CDN-Cache-Control` is a Structured Fields dictionary: when its lines together are empty,
/// not a valid dictionary, or give a delta-seconds directive anything but a non-negative
/// integer, it is ignored as if absent (RFC 9213 §2.1).
pub fn governing_cache_control(resp: &ResponseHeader) -> Option<Arc<CacheControl>> {
    let targeted = targeted_cache_control_usable(&resp.headers)
        .then(|| CacheControl::from_resp_headers_named(TARGETED_CACHE_CONTROL, resp))
        .flatten()
        .or_else(|| CacheControl::from_resp_headers_named(SURROGATE_CONTROL, resp));
    match targeted {
        Some(cc) => Some(Arc::new(cc)),
        None => plain_cache_control(&resp.headers),
    }
}

/// Field values longer than this are parsed every time rather than remembered.
const REMEMBERED_VALUE_MAX: usize = 256;

/// How many parsed `Cache-Control` values each thread remembers.
const REMEMBERED_VALUES: usize = 4;

/// The `Cache-Control` values this thread parsed last, with what they parsed to, and the slot
/// the next new one takes.
type Remembered = (Vec<(Box<[u8]>, Arc<CacheControl>)>, usize);

thread_local! {
    static PARSED_CACHE_CONTROL: std::cell::RefCell<Remembered> =
        const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// `Cache-Control` as pingora's parser reads it. A value of one line that this thread parsed
/// lately is not parsed again: a stored miss reads the same response's directives twice (to
/// decide on storing it, then for the facts kept with the entry), and an origin tends to send
/// a few values over and over. The parse is a function of the value's bytes alone, so the
/// remembered result is the one parsing again would give (about 9,000 instructions saved each
/// time, most of them in pingora's regex).
fn plain_cache_control(headers: &http::HeaderMap) -> Option<Arc<CacheControl>> {
    let mut lines = headers.get_all(http::header::CACHE_CONTROL).iter();
    let first = lines.next()?;
    let value = first.as_bytes();
    if lines.next().is_some() || value.len() > REMEMBERED_VALUE_MAX {
        return CacheControl::from_headers_named("cache-control", headers).map(Arc::new);
    }
    let found = PARSED_CACHE_CONTROL.with_borrow(|(seen, _)| {
        seen.iter()
            .find(|(v, _)| &v[..] == value)
            .map(|(_, cc)| cc.clone())
    });
    if found.is_some() {
        return found;
    }
    let cc = Arc::new(CacheControl::from_headers_named("cache-control", headers)?);
    PARSED_CACHE_CONTROL.with_borrow_mut(|(seen, next)| {
        let entry = (Box::from(value), cc.clone());
        match seen.get_mut(*next) {
            Some(slot) => *slot = entry,
            None => seen.push(entry),
        }
        *next = (*next + 1) % REMEMBERED_VALUES;
    });
    Some(cc)
}

/// Directives whose value is a number of seconds: in `CDN-Cache-Control` an Integer, ≥ 0.
const DELTA_DIRECTIVES: [&str; 4] = [
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

/// Whether the `CDN-Cache-Control` lines in `headers` form a usable field: present, not empty,
/// a valid Structured Fields dictionary (the lines joined with `,`), and every delta-seconds
/// directive in it a non-negative Integer.
fn targeted_cache_control_usable(headers: &http::HeaderMap) -> bool {
    let mut joined = Vec::new();
    for (i, line) in headers.get_all(TARGETED_CACHE_CONTROL).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(line.as_bytes());
    }
    if joined.trim_ascii().is_empty() {
        return false;
    }
    let mut members = Vec::new();
    if !structured_field::dictionary(&joined, |key, value| members.push((key, value))) {
        return false;
    }
    use structured_field::{BareItem, MemberValue};
    members.iter().all(|(key, value)| {
        let delta = DELTA_DIRECTIVES.iter().any(|d| d.as_bytes() == *key);
        !delta || matches!(value, MemberValue::Item(BareItem::Integer(n)) if *n >= 0)
    })
}

/// Whether a response's governing directives forbid serving it stale: a shared cache must
/// revalidate `no-cache`, `must-revalidate` and `proxy-revalidate` responses (RFC 9111
/// §5.2.2.1, §5.2.2.4, §5.2.2.8), and `s-maxage` implies `proxy-revalidate` (§5.2.2.10).
pub fn refuses_stale(cc: &CacheControl) -> bool {
    cc.no_cache()
        || cc.must_revalidate()
        || cc.proxy_revalidate()
        || cc.has_directive(&pingora_cache::cache_control::DirectiveKey::SMaxAge)
}

/// How long after going stale a response with governing directives `cc` and this `status`
/// may answer for an origin that answered with a server error: its `stale-if-error`, else the
/// route's. `None` when it may never be served stale ([`refuses_stale`], or a server error
/// itself).
fn stale_if_error_window(
    cc: Option<&CacheControl>,
    status: u16,
    rules: &RouteCache,
) -> Option<Duration> {
    if server_error(status) || cc.is_some_and(refuses_stale) {
        return None;
    }
    Some(
        cc.and_then(|c| c.serve_stale_if_error_duration())
            .unwrap_or(rules.stale_if_error),
    )
}

/// Whether a stored response that has been stale for `stale_for` may answer instead of what
/// the origin did: `origin_answered` (with a server error) allows it only within the
/// stale-if-error window; an origin that gave no response allows it within
/// the route's `stale_if_disconnected` (RFC 9111 §4.2.4) or that window, whichever is longer. Never for a response that
/// refuses to be served stale.
pub fn may_serve_stale_after(
    stored: &ResponseHeader,
    stale_for: Duration,
    origin_answered: bool,
    rules: &RouteCache,
) -> bool {
    let cc = governing_cache_control(stored);
    stale_if_error_window(cc.as_deref(), stored.status.as_u16(), rules).is_some_and(|w| {
        let window = if origin_answered {
            w
        } else {
            w.max(rules.stale_if_disconnected)
        };
        stale_for <= window
    })
}

/// Whether a request with credentials must be kept from stored responses not marked for
/// sharing: it carries `Authorization` and the route is not `public`.
pub fn credentials_apply(req: &RequestView<'_>, rules: &RouteCache) -> bool {
    !rules.public && req.contains("authorization")
}

/// Whether a response may be stored for, and answer, requests with credentials: its governing
/// field says `public`, `s-maxage` or `must-revalidate` (RFC 9111 §3.5).
pub fn shared_with_credentials(resp: &ResponseHeader) -> bool {
    governing_cache_control(resp).is_some_and(|c| c.allow_caching_authorized_req())
}

/// Decide whether `resp` may be stored and build its meta. `authorization` tells whether the
/// request carried credentials. A server error that is not stored says nothing lasting about
/// its URL ([`STATUS`], no hit-for-pass), whatever the reason.
pub fn response_meta(
    resp: &ResponseHeader,
    authorization: bool,
    rules: &RouteCache,
    now: SystemTime,
) -> Result<CacheMeta, NoCacheReason> {
    let meta = storable_meta(resp, authorization, rules, now);
    if server_error(resp.status.as_u16()) {
        return meta.map_err(|_| NoCacheReason::Custom(STATUS));
    }
    meta
}

fn storable_meta(
    resp: &ResponseHeader,
    authorization: bool,
    rules: &RouteCache,
    now: SystemTime,
) -> Result<CacheMeta, NoCacheReason> {
    let status = resp.status.as_u16();
    if never_stored(status) {
        return Err(NoCacheReason::Custom(STATUS));
    }
    let has_cookie = resp.headers.contains_key(http::header::SET_COOKIE);
    if has_cookie && rules.set_cookie == SetCookiePolicy::Refuse {
        return Err(NoCacheReason::Custom("set-cookie"));
    }
    let vary_star = resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|p| p.trim_ascii() == b"*")
    });
    if vary_star {
        return Err(NoCacheReason::Custom("vary-star"));
    }
    let governing = governing_cache_control(resp);
    let cc = governing.as_deref();
    let must_understand = cc.is_some_and(|c| {
        c.has_directive(&pingora_cache::cache_control::DirectiveKey::from_lowercase(
            "must-understand",
        ))
    });
    if must_understand && !understood(status) {
        return Err(NoCacheReason::OriginNotCache);
    }
    // `must-understand` lifts `no-store` for a cache that understands the status (§5.2.2.3)
    let no_store = cc.is_some_and(|c| c.no_store()) && !must_understand;
    if no_store || cc.is_some_and(|c| c.private()) {
        return Err(NoCacheReason::OriginNotCache);
    }
    if authorization && !cc.is_some_and(|c| c.allow_caching_authorized_req()) {
        return Err(NoCacheReason::Custom(AUTHORIZED));
    }
    let mut lifetime = lifetime(status, explicit_lifetime(cc, resp, now), rules)
        .or_else(|| {
            heuristically_cacheable(status)
                .then(|| heuristic_lifetime(resp, now))
                .flatten()
        })
        .ok_or(NoCacheReason::OriginNotCache)?;
    let age = age_field(resp);
    if cc.is_some_and(|c| c.no_cache()) {
        lifetime = Duration::ZERO;
    }
    if let Some(max) = rules.max_ttl {
        lifetime = lifetime.min(max);
    }
    let error = server_error(status);
    if error {
        if lifetime.is_zero() {
            return Err(NoCacheReason::Custom(STATUS));
        }
        lifetime = lifetime.min(rules.error_max_ttl);
    }
    let strict = error || cc.is_some_and(|c| c.must_revalidate() || c.proxy_revalidate());
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let swr = if strict {
        0
    } else {
        cc.and_then(|c| c.serve_stale_while_revalidate_duration())
            .map_or(secs(rules.stale_while_revalidate), secs)
    };
    // pingora keeps one window for every failure; `may_serve_stale_after` narrows it to the
    // stale-if-error window proper when the origin did answer (with a 5xx)
    let sie = stale_if_error_window(cc, status, rules)
        .map_or(0, |w| secs(w.max(rules.stale_if_disconnected)));
    let created = now.checked_sub(initial_age(resp, age, now)).unwrap_or(now);
    let fresh_until = if lifetime.is_zero() {
        created
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(created)
    } else {
        created + lifetime
    };
    let mut stored = resp.clone();
    if let Some(c) = cc {
        c.strip_private_headers(&mut stored);
    }
    if has_cookie {
        stored.remove_header(&http::header::SET_COOKIE);
    }
    stored.remove_header(&http::header::AGE);
    Ok(CacheMeta::new(fresh_until, created, swr, sie, stored))
}

/// Fields a 304 never changes in the stored response (RFC 9111 §3.2): framing and content
/// coding describe the stored body, the validator is what was matched, hop-by-hop fields belong
/// to one connection, and `Set-Cookie` is never stored by a shared cache.
const NOT_UPDATED_BY_304: [http::HeaderName; 14] = [
    http::header::CONTENT_LENGTH,
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_RANGE,
    http::HeaderName::from_static("content-md5"),
    http::header::ETAG,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
    http::header::SET_COOKIE,
];

/// The stored header refreshed by a 304 (RFC 9111 §3.2, §4.3.4): every field the 304 carries
/// replaces the stored one (`Date` and `Age` included, or they go when the 304 has none, so a
/// just-validated entry does not look as old as the first fetch), except the fields in
/// `NOT_UPDATED_BY_304`, those the 304 lists in `Connection`, and verge's own. `merged` is
/// pingora's partial merge; `stored` is the entry before revalidation, whose validator stays.
pub fn refreshed_by_not_modified(
    merged: &ResponseHeader,
    not_modified: &ResponseHeader,
    stored: Option<&ResponseHeader>,
) -> ResponseHeader {
    let mut out = merged.clone();
    let connection_listed = crate::http_syntax::fields::connection_tokens(&not_modified.headers);
    let mut names: Vec<&http::HeaderName> = not_modified.headers.keys().collect();
    for always in [&http::header::DATE, &http::header::AGE] {
        if !names.contains(&always) {
            names.push(always);
        }
    }
    for name in names {
        let keep = NOT_UPDATED_BY_304.contains(name)
            || name == FETCHED_AT
            || name == ENTRY_URL
            || name == FETCH_MS
            || connection_listed
                .iter()
                .any(|t| name.as_str().eq_ignore_ascii_case(t));
        if keep {
            continue;
        }
        out.remove_header(name);
        for v in not_modified.headers.get_all(name) {
            // appending a value that came from a parsed header cannot fail
            let _ = out.append_header(name.clone(), v.clone());
        }
    }
    // pingora's merge copies the 304's ETag; the stored one identifies the stored body
    let stored_etags = stored.map(|s| s.headers.get_all(http::header::ETAG));
    if let Some(etags) = stored_etags.filter(|e| e.iter().next().is_some()) {
        out.remove_header(&http::header::ETAG);
        for v in etags {
            let _ = out.append_header(http::header::ETAG, v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::RequestHeader;

    #[test]
    fn fetch_durations_round_trip_and_a_304_cannot_set_them() {
        let now = SystemTime::now();
        let r = resp(200, &[("cache-control", "max-age=60")]);
        let mut m = response_meta(&r, false, &rules(), now).expect("c");
        assert_eq!(fetch_duration(&m), None);
        set_fetch_duration(&mut m, Duration::from_millis(1234));
        assert_eq!(fetch_duration(&m), Some(Duration::from_millis(1234)));
        let nm = resp(304, &[(FETCH_MS, "1")]);
        let out = refreshed_by_not_modified(m.response_header(), &nm, None);
        assert_eq!(
            out.headers.get(FETCH_MS).map(|v| v.as_bytes()),
            Some(&b"1234"[..])
        );
    }

    #[test]
    fn fetch_times_and_entry_urls_round_trip() {
        let now = SystemTime::now();
        let r = resp(200, &[("cache-control", "max-age=60")]);
        let mut m = response_meta(&r, false, &rules(), now).expect("c");
        let started = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        set_fetched_at(&mut m, started);
        assert_eq!(fetched_at(m.headers()), Some(started));
        assert_eq!(
            m.headers().get(FETCHED_AT).map(|v| v.as_bytes()),
            Some(&b"1764000000123"[..])
        );
        set_entry_url(&mut m, "a.com", "/x?y=1");
        assert_eq!(entry_url(m.headers()), Some(("a.com", "/x?y=1")));
    }

    #[test]
    fn clients_never_see_tags_or_private_headers() {
        let hidden = |n: &str| CLIENT_HIDDEN_HEADERS.iter().any(|h| h.as_str() == n);
        for tag in &TAG_HEADERS {
            assert!(hidden(tag.as_str()), "{tag}");
        }
        for private in [FETCHED_AT, ENTRY_URL, FETCH_MS, SURROGATE_CONTROL] {
            assert!(hidden(private), "{private}");
        }
        // the targeted field is the origin's word to every CDN on the way: it travels on
        assert!(!hidden(TARGETED_CACHE_CONTROL));
    }

    fn rules() -> RouteCache {
        RouteCache::default()
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).expect("resp");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("header");
        }
        r
    }

    /// What pingora's parser makes of `resp`'s directives, without verge's memory of them.
    fn parsed_anew(resp: &ResponseHeader) -> Option<String> {
        targeted_cache_control_usable(&resp.headers)
            .then(|| CacheControl::from_resp_headers_named(TARGETED_CACHE_CONTROL, resp))
            .flatten()
            .or_else(|| CacheControl::from_resp_headers_named(SURROGATE_CONTROL, resp))
            .or_else(|| CacheControl::from_resp_headers(resp))
            .map(|cc| format!("{cc:?}"))
    }

    #[test]
    fn remembered_directives_are_what_parsing_again_gives() {
        let long = format!("max-age=60, x=\"{}\"", "y".repeat(300));
        let values = [
            "public, max-age=3600",
            "no-store",
            "private=\"set-cookie\", max-age=5",
            "max-age=60, must-revalidate",
            "s-maxage=10; stale-while-revalidate=30",
            long.as_str(),
            "",
            "MAX-AGE=7, No-Cache",
        ];
        // more values than a thread remembers, twice over, in a different order the second time
        for round in 0..3 {
            for (i, v) in values.iter().enumerate() {
                let v = if round == 1 {
                    values[values.len() - 1 - i]
                } else {
                    v
                };
                let r = resp(200, &[("cache-control", v)]);
                let got = governing_cache_control(&r).map(|cc| format!("{cc:?}"));
                assert_eq!(got, parsed_anew(&r), "{v:?}");
            }
        }
        // several lines, and a targeted field that governs instead: parsed, never remembered
        let r = resp(
            200,
            &[
                ("cache-control", "no-store"),
                ("cache-control", "max-age=9"),
            ],
        );
        let got = governing_cache_control(&r).map(|cc| format!("{cc:?}"));
        assert_eq!(got, parsed_anew(&r));
        let r = resp(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=9"),
            ],
        );
        let got = governing_cache_control(&r).map(|cc| format!("{cc:?}"));
        assert_eq!(got, parsed_anew(&r));
        assert!(
            got.is_some_and(|g| g.contains("MaxAge")),
            "the targeted field governs"
        );
        assert_eq!(governing_cache_control(&resp(200, &[])).map(|_| ()), None);
    }

    #[test]
    fn a_value_parsed_lately_is_not_parsed_again() {
        let r = resp(200, &[("cache-control", "public, max-age=3601")]);
        let first = governing_cache_control(&r).expect("parsed");
        let again = governing_cache_control(&r.clone()).expect("parsed");
        assert!(Arc::ptr_eq(&first, &again));
    }

    fn ttl(m: &CacheMeta, now: SystemTime) -> u64 {
        m.fresh_until()
            .duration_since(now)
            .map_or(0, |d| d.as_secs())
    }

    #[test]
    fn freshness_precedence() {
        let now = SystemTime::now();
        let r = resp(200, &[("cache-control", "max-age=60, s-maxage=120")]);
        assert_eq!(
            ttl(&response_meta(&r, false, &rules(), now).expect("c"), now),
            120
        );
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "max-age=5"),
            ],
        );
        let m = response_meta(&r, false, &rules(), now).expect("c");
        assert_eq!(ttl(&m, now), 5);
        // kept in the stored copy (a later 304 may omit it), and passed on to clients
        assert!(m.headers().get("cdn-cache-control").is_some());
        assert!(!CLIENT_HIDDEN_HEADERS
            .iter()
            .any(|h| h == "cdn-cache-control"));
    }

    /// Found by the `cache_policy` fuzz target (fuzz/corpus/cache_policy/bug-expires-bad-date):
    /// with `Expires` and no usable `Date`, the lifetime used the wall clock instead of `now`.
    #[test]
    fn expires_without_date_counts_from_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let expires = httpdate::fmt_http_date(now + Duration::from_secs(600));
        for date in [None, Some("not a date")] {
            let mut h = vec![("expires", expires.as_str())];
            h.extend(date.map(|d| ("date", d)));
            let m = response_meta(&resp(200, &h), false, &rules(), now).expect("stored");
            assert_eq!(ttl(&m, now), 600, "{h:?}");
        }
    }

    #[test]
    fn never_stores_private_or_personal() {
        let now = SystemTime::now();
        for h in [
            vec![("cache-control", "private, max-age=60")],
            vec![("cache-control", "no-store")],
            vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
            vec![("cache-control", "max-age=60"), ("vary", "*")],
        ] {
            assert!(
                response_meta(&resp(200, &h), false, &rules(), now).is_err(),
                "{h:?}"
            );
        }
        for status in [400, 413, 414, 431, 206, 304, 103, 600] {
            let r = resp(status, &[("cache-control", "max-age=60")]);
            assert!(response_meta(&r, false, &rules(), now).is_err(), "{status}");
        }
        let r = resp(200, &[("cache-control", "max-age=60")]);
        assert!(
            response_meta(&r, true, &rules(), now).is_err(),
            "authorized needs public"
        );
        let r = resp(200, &[("cache-control", "public, max-age=60")]);
        assert!(response_meta(&r, true, &rules(), now).is_ok());
    }

    #[test]
    fn server_errors_are_stored_only_on_explicit_freshness_within_the_cap() {
        let now = SystemTime::now();
        let generous = RouteCache {
            default_ttl: Some(Duration::from_secs(30)),
            force_ttl: Some(Duration::from_secs(40)),
            stale_if_error: Duration::from_secs(50),
            stale_while_revalidate: Duration::from_secs(50),
            ..rules()
        };
        let far = httpdate::fmt_http_date(now + Duration::from_secs(7200));
        let lm = httpdate::fmt_http_date(now - Duration::from_secs(100_000));
        for status in [500, 502, 503, 504, 599] {
            for fresh in [
                vec![("cache-control", "max-age=3600")],
                vec![("cache-control", "s-maxage=5")],
                vec![("expires", far.as_str())],
                vec![
                    ("cdn-cache-control", "max-age=30"),
                    ("cache-control", "no-store"),
                ],
            ] {
                let m =
                    response_meta(&resp(status, &fresh), false, &generous, now).expect("stored");
                let want = fresh_secs(&fresh).min(rules().error_max_ttl.as_secs());
                assert!(
                    (want - 1..=want).contains(&ttl(&m, now)),
                    "{status} {fresh:?}"
                );
                assert_eq!(
                    (m.stale_while_revalidate_sec(), m.stale_if_error_sec()),
                    (0, 0)
                );
            }
            // no freshness of its own: never stored, and not remembered as uncacheable
            for none in [
                vec![],
                vec![("last-modified", lm.as_str())],
                vec![("cache-control", "max-age=0")],
                vec![("cache-control", "no-cache, max-age=60")],
                vec![("expires", "not a date")],
                vec![("cache-control", "no-store")],
            ] {
                assert_eq!(
                    response_meta(&resp(status, &none), false, &generous, now).err(),
                    Some(NoCacheReason::Custom(STATUS)),
                    "{status} {none:?}"
                );
            }
        }
        // the cap is the route's
        let brief = RouteCache {
            error_max_ttl: Duration::from_secs(3),
            ..rules()
        };
        let m = response_meta(
            &resp(503, &[("cache-control", "max-age=3600")]),
            false,
            &brief,
            now,
        )
        .expect("stored");
        assert!((2..=3).contains(&ttl(&m, now)));
    }

    /// The lifetime the test responses above ask for, in seconds.
    fn fresh_secs(h: &[(&str, &str)]) -> u64 {
        match h[0] {
            ("cache-control", "max-age=3600") => 3600,
            ("cache-control", "s-maxage=5") => 5,
            ("expires", _) => 7200,
            _ => 30,
        }
    }

    #[test]
    fn a_stale_copy_answers_a_disconnected_origin_longer_than_an_erring_one() {
        let now = SystemTime::now();
        let route = RouteCache {
            stale_if_error: Duration::from_secs(30),
            ..rules()
        };
        let day = rules().stale_if_disconnected;
        let secs = |n: u64| Duration::from_secs(n);
        // (response, the stored window, longest stale for a 5xx, for a disconnected origin)
        for (h, stored, answered, disconnected) in [
            (vec![("cache-control", "max-age=5")], day, secs(30), day),
            (
                vec![("cache-control", "max-age=5, stale-if-error=600")],
                day,
                secs(600),
                day,
            ),
            (
                vec![("cache-control", "max-age=5, stale-if-error=200000")],
                secs(200_000),
                secs(200_000),
                secs(200_000),
            ),
            (
                vec![
                    ("cdn-cache-control", "max-age=5, stale-if-error=60"),
                    ("cache-control", "must-revalidate"),
                ],
                day,
                secs(60),
                day,
            ),
        ] {
            let r = resp(200, &h);
            let m = response_meta(&r, false, &route, now).expect("stored");
            assert_eq!(u64::from(m.stale_if_error_sec()), stored.as_secs(), "{h:?}");
            for (origin_answered, limit) in [(true, answered), (false, disconnected)] {
                assert!(
                    may_serve_stale_after(&r, limit, origin_answered, &route),
                    "{h:?}"
                );
                assert!(
                    !may_serve_stale_after(&r, limit + secs(1), origin_answered, &route),
                    "{h:?}"
                );
            }
        }
        // refusing to be served stale, or a server error: never, and no window is stored
        for (status, cc) in [
            (200, "max-age=5, must-revalidate"),
            (200, "max-age=5, proxy-revalidate"),
            (200, "max-age=5, no-cache"),
            (200, "s-maxage=5, stale-if-error=600"),
            (503, "max-age=5, stale-if-error=600"),
        ] {
            let r = resp(status, &[("cache-control", cc)]);
            let m = response_meta(&r, false, &route, now).expect("stored");
            assert_eq!(m.stale_if_error_sec(), 0, "{status} {cc}");
            for origin_answered in [true, false] {
                assert!(
                    !may_serve_stale_after(&r, Duration::ZERO, origin_answered, &route),
                    "{status} {cc}"
                );
            }
        }
    }

    #[test]
    fn must_understand_lifts_no_store_for_statuses_verge_knows() {
        let now = SystemTime::now();
        let cc = [("cache-control", "max-age=3600, no-store, must-understand")];
        for status in [200, 404, 500] {
            let m = response_meta(&resp(status, &cc), false, &rules(), now).expect("stored");
            assert!(m.is_fresh(now), "{status}");
        }
        for status in [599, 299, 418] {
            assert!(
                response_meta(&resp(status, &cc), false, &rules(), now).is_err(),
                "{status}"
            );
        }
        // without no-store, an unknown status is still refused; private still wins
        let r = resp(599, &[("cache-control", "max-age=60, must-understand")]);
        assert!(response_meta(&r, false, &rules(), now).is_err());
        let r = resp(
            200,
            &[(
                "cache-control",
                "max-age=60, private, no-store, must-understand",
            )],
        );
        assert!(response_meta(&r, false, &rules(), now).is_err());
    }

    #[test]
    fn defaults_heuristics_and_caps() {
        let now = SystemTime::now();
        assert!(response_meta(&resp(200, &[]), false, &rules(), now).is_err());
        let with_default = RouteCache {
            default_ttl: Some(Duration::from_secs(30)),
            max_ttl: Some(Duration::from_secs(100)),
            ..rules()
        };
        let m = response_meta(&resp(200, &[]), false, &with_default, now).expect("default");
        assert_eq!(ttl(&m, now), 30);
        assert!(response_meta(&resp(302, &[]), false, &with_default, now).is_err());
        let r = resp(200, &[("cache-control", "max-age=1000")]);
        assert_eq!(
            ttl(
                &response_meta(&r, false, &with_default, now).expect("c"),
                now
            ),
            100
        );
        let lm = httpdate::fmt_http_date(now - Duration::from_secs(1000));
        let d = httpdate::fmt_http_date(now);
        let m = response_meta(
            &resp(200, &[("last-modified", &lm), ("date", &d)]),
            false,
            &rules(),
            now,
        )
        .expect("heuristic");
        assert!((99..=100).contains(&ttl(&m, now)));
    }

    #[test]
    fn negative_ttl_for_404_and_410_without_freshness() {
        let now = SystemTime::now();
        let neg = RouteCache {
            negative_ttl: Some(Duration::from_secs(7)),
            default_ttl: Some(Duration::from_secs(30)),
            ..rules()
        };
        for status in [404, 410] {
            let m = response_meta(&resp(status, &[]), false, &neg, now).expect("negative");
            assert_eq!(ttl(&m, now), 7, "{status}");
        }
        // the origin's explicit freshness still wins
        let r = resp(404, &[("cache-control", "max-age=100")]);
        assert_eq!(
            ttl(&response_meta(&r, false, &neg, now).expect("c"), now),
            100
        );
        // other statuses keep default_ttl
        assert_eq!(
            ttl(
                &response_meta(&resp(200, &[]), false, &neg, now).expect("c"),
                now
            ),
            30
        );
        // other client errors are not covered
        assert!(response_meta(&resp(403, &[]), false, &neg, now).is_err());
        // without negative_ttl (or default_ttl) a bare 404 is not stored
        assert!(response_meta(&resp(404, &[]), false, &rules(), now).is_err());
    }

    #[test]
    fn force_ttl_replaces_origin_freshness_but_not_the_never_store_rules() {
        let now = SystemTime::now();
        let forced = RouteCache {
            force_ttl: Some(Duration::from_secs(500)),
            ..rules()
        };
        for h in [
            vec![("cache-control", "max-age=5")],
            vec![("cache-control", "s-maxage=10000")],
            vec![],
        ] {
            let m = response_meta(&resp(200, &h), false, &forced, now).expect("forced");
            assert_eq!(ttl(&m, now), 500, "{h:?}");
        }
        for h in [
            vec![("cache-control", "private, max-age=60")],
            vec![("cache-control", "no-store")],
            vec![("set-cookie", "a=b")],
        ] {
            assert!(
                response_meta(&resp(200, &h), false, &forced, now).is_err(),
                "{h:?}"
            );
        }
        // a 302 without freshness is not storable, forced or not; errors keep the origin's rules
        assert!(response_meta(&resp(302, &[]), false, &forced, now).is_err());
        let r = resp(404, &[("cache-control", "max-age=3")]);
        assert_eq!(
            ttl(&response_meta(&r, false, &forced, now).expect("c"), now),
            3
        );
        // no-cache still means revalidate every time
        let r = resp(200, &[("cache-control", "no-cache")]);
        assert!(!response_meta(&r, false, &forced, now)
            .expect("c")
            .is_fresh(now));
    }

    #[test]
    fn set_cookie_strip_stores_without_the_cookie() {
        let now = SystemTime::now();
        let strip = RouteCache {
            set_cookie: SetCookiePolicy::Strip,
            ..rules()
        };
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "sid=1"),
                ("x-a", "b"),
            ],
        );
        let m = response_meta(&r, false, &strip, now).expect("stored");
        assert!(m.headers().get("set-cookie").is_none());
        assert_eq!(
            m.headers().get("x-a").map(|v| v.as_bytes()),
            Some(&b"b"[..])
        );
        // private still wins
        let r = resp(
            200,
            &[("cache-control", "private"), ("set-cookie", "sid=1")],
        );
        assert!(response_meta(&r, false, &strip, now).is_err());
    }

    #[test]
    fn a_304_refreshes_date_and_age() {
        let now = SystemTime::now();
        let old = httpdate::fmt_http_date(now - Duration::from_secs(100));
        let merged = resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("date", &old),
                ("etag", "\"x\""),
            ],
        );
        // with the first fetch's Date the entry would be stale at once
        assert!(!response_meta(&merged, false, &rules(), now)
            .expect("c")
            .is_fresh(now));
        let fresh = httpdate::fmt_http_date(now);
        let nm = resp(304, &[("date", &fresh)]);
        let refreshed = refreshed_by_not_modified(&merged, &nm, Some(&merged));
        let m = response_meta(&refreshed, false, &rules(), now).expect("c");
        assert!((59..=60).contains(&ttl(&m, now)));
        assert_eq!(
            m.headers().get("etag").map(|v| v.as_bytes()),
            Some(&b"\"x\""[..])
        );
        // a 304 without Date: the validation itself is the new reference point
        let refreshed = refreshed_by_not_modified(&merged, &resp(304, &[]), Some(&merged));
        assert!(refreshed.headers.get("date").is_none());
        let m = response_meta(&refreshed, false, &rules(), now).expect("c");
        assert!((59..=60).contains(&ttl(&m, now)));
    }

    #[test]
    fn a_304_replaces_stored_fields_but_not_validator_framing_cookies_or_hop_fields() {
        let stored = resp(
            200,
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"a\""),
                ("content-length", "10"),
                ("content-type", "text/plain"),
                ("x-kept", "1"),
                ("x-multi", "old"),
            ],
        );
        // pingora's merge already copied the 304's cache-control and etag
        let mut merged = resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"b\""),
                ("content-length", "10"),
                ("content-type", "text/plain"),
                ("x-kept", "1"),
                ("x-multi", "old"),
            ],
        );
        merged.append_header(FETCHED_AT, "1").expect("h");
        let nm = resp(
            304,
            &[
                ("etag", "\"b\""),
                ("content-length", "0"),
                ("content-type", "text/plain;charset=utf-8"),
                ("x-multi", "new1"),
                ("x-multi", "new2"),
                ("set-cookie", "s=1"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
                (FETCHED_AT, "2"),
            ],
        );
        let out = refreshed_by_not_modified(&merged, &nm, Some(&stored));
        let all = |n: &str| -> Vec<&str> {
            out.headers
                .get_all(n)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        assert_eq!(all("content-type"), ["text/plain;charset=utf-8"]);
        assert_eq!(all("x-multi"), ["new1", "new2"]);
        assert_eq!(all("x-kept"), ["1"]);
        assert_eq!(all("cache-control"), ["max-age=60"]);
        assert_eq!(all("etag"), ["\"a\""]);
        assert_eq!(all("content-length"), ["10"]);
        assert_eq!(all(FETCHED_AT), ["1"]);
        assert!(all("set-cookie").is_empty() && all("x-hop").is_empty());
        assert!(all("connection").is_empty());
    }

    #[test]
    fn the_first_age_member_counts_and_an_invalid_age_is_ignored() {
        let now = SystemTime::now();
        let fresh = |lines: &[&str]| {
            let mut r = resp(200, &[("cache-control", "max-age=3600")]);
            for l in lines {
                r.append_header("age", *l).expect("h");
            }
            response_meta(&r, false, &rules(), now)
                .expect("stored")
                .is_fresh(now)
        };
        // invalid: ignored, as if absent
        for bad in ["abc", "-7200", "7200.0", "", " ", "0x10"] {
            assert!(fresh(&[bad]), "Age: {bad:?}");
        }
        // the first member of a list, the first of several lines
        assert!(fresh(&["0, 7200"]) && fresh(&["0", "7200"]) && fresh(&["0, 0"]));
        assert!(!fresh(&["7200, 0"]) && !fresh(&["7200", "0"]));
        // parameters are dropped, the number stays
        assert!(!fresh(&["7200;foo=bar"]));
        assert!(fresh(&[" 10 "]));
        // larger than any lifetime: stale
        assert!(!fresh(&["2147483648"]) && !fresh(&["99999999999999999999999"]));
    }

    #[test]
    fn expires_in_any_accepted_format_gives_freshness() {
        let now = SystemTime::now();
        for expires in [
            "THU, 18 AUG 2050 02:01:18 gMT",
            "Thu Aug  8 02:01:18 2050",
            "Thursday, 18-Aug-50 02:01:18 GMT",
        ] {
            let m = response_meta(&resp(200, &[("expires", expires)]), false, &rules(), now)
                .expect("stored");
            assert!(m.is_fresh(now), "{expires}");
        }
        let r = resp(200, &[("expires", "Thu, 18 Aug 2050 02:01:18 UTC")]);
        assert!(!response_meta(&r, false, &rules(), now)
            .expect("stored")
            .is_fresh(now));
    }

    #[test]
    fn an_unusable_cdn_cache_control_is_ignored_as_a_whole() {
        let now = SystemTime::now();
        for cdn in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age=10000, s-maxage=1.5",
            "max-age=-1",
            "max-age =10000",
            "",
        ] {
            let r = resp(
                200,
                &[("cache-control", "no-store"), ("cdn-cache-control", cdn)],
            );
            assert!(response_meta(&r, false, &rules(), now).is_err(), "{cdn:?}");
        }
        // valid, with an extension directive: it governs
        let r = resp(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "foobar, max-age=600"),
            ],
        );
        let m = response_meta(&r, false, &rules(), now).expect("stored");
        assert!((599..=600).contains(&ttl(&m, now)));
        // an invalid CDN-Cache-Control falls back to Surrogate-Control
        let r = resp(
            200,
            &[
                ("cdn-cache-control", "max-age=\"1\""),
                ("surrogate-control", "max-age=50"),
                ("cache-control", "no-store"),
            ],
        );
        let m = response_meta(&r, false, &rules(), now).expect("stored");
        assert!((49..=50).contains(&ttl(&m, now)));
        // several lines are one dictionary
        let mut two = resp(200, &[("cdn-cache-control", "max-age=70")]);
        two.append_header("cdn-cache-control", "must-revalidate")
            .expect("h");
        let m = response_meta(&two, false, &rules(), now).expect("stored");
        assert!((69..=70).contains(&ttl(&m, now)));
        assert_eq!(m.stale_if_error_sec(), 0);
    }

    #[test]
    fn surrogate_control_governs_when_cdn_cache_control_is_absent() {
        let now = SystemTime::now();
        let fresh_sc = resp(
            200,
            &[
                ("cache-control", "no-store"),
                ("surrogate-control", "max-age=60"),
            ],
        );
        let m = response_meta(&fresh_sc, false, &rules(), now).expect("stored");
        assert!((59..=60).contains(&ttl(&m, now)));
        let nostore_sc = resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("surrogate-control", "no-store"),
            ],
        );
        assert!(response_meta(&nostore_sc, false, &rules(), now).is_err());
        let both = resp(
            200,
            &[
                ("cdn-cache-control", "max-age=30"),
                ("surrogate-control", "max-age=60"),
            ],
        );
        let m = response_meta(&both, false, &rules(), now).expect("stored");
        assert!((29..=30).contains(&ttl(&m, now)));
    }

    #[test]
    fn upstream_age_counts() {
        let now = SystemTime::now();
        let r = resp(200, &[("cache-control", "max-age=100"), ("age", "40")]);
        let m = response_meta(&r, false, &rules(), now).expect("c");
        assert!((59..=60).contains(&ttl(&m, now)));
        assert!(m.age() >= Duration::from_secs(40));
    }

    #[test]
    fn no_cache_is_stored_but_stale() {
        let now = SystemTime::now();
        let r = resp(
            200,
            &[("cache-control", "no-cache, max-age=60"), ("etag", "\"x\"")],
        );
        let m = response_meta(&r, false, &rules(), now).expect("stored");
        assert!(!m.is_fresh(now));
    }

    #[test]
    fn request_bypass_rules() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("req");
        assert_eq!(
            request_bypass(&RequestView::from_head(&req), &rules()),
            None
        );
        req.insert_header("cookie", "sid=1").expect("h");
        assert_eq!(
            request_bypass(&RequestView::from_head(&req), &rules()),
            Some(Bypass::Cookie)
        );
        let public = RouteCache {
            public: true,
            ..rules()
        };
        assert_eq!(request_bypass(&RequestView::from_head(&req), &public), None);
        let post = RequestHeader::build("POST", b"/", None).expect("req");
        assert_eq!(
            request_bypass(&RequestView::from_head(&post), &rules()),
            Some(Bypass::Method)
        );
        let mut ws = RequestHeader::build("GET", b"/", None).expect("req");
        ws.insert_header("upgrade", "WebSocket").expect("h");
        assert_eq!(
            request_bypass(&RequestView::from_head(&ws), &public),
            Some(Bypass::Upgrade)
        );
        let mut h2c = RequestHeader::build("GET", b"/", None).expect("req");
        h2c.insert_header("upgrade", "h2c").expect("h");
        assert_eq!(
            request_bypass(&RequestView::from_head(&h2c), &rules()),
            None
        );
    }
}
