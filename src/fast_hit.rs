//! The front door's hit lane: a plain HTTP/1.1 `GET` or `HEAD` for a fresh stored `200` is
//! answered straight from the cache, without building Pingora's per-request session.
//!
//! Every other request goes the full way through Pingora's phases, and so does every hit this
//! lane could not answer exactly as those phases would: conditional and range requests, request
//! cache directives that refuse the fresh entry, credentials on a non-`public` route, user filters or response header edits
//! on the route, early refresh, `Vary` and key variants, stale or invalidated entries, responses
//! still being fetched, pipelined bytes. What it sends is what the full path sends (stored
//! fields, `Age`, `Accept-Ranges`, `Cache-Status`, `Connection`), except `Date`: the stored one
//! goes out, as RFC 9111 asks, where Pingora's writer stamps the time of sending. It counts the
//! same metrics and writes the same access-log line.

use crate::access_log::{AccessLog, Record};
use crate::cache::collapse::LockWait;
use crate::cache::request_directives::{self, HitVerdict};
use crate::cache::storage::Servable;
use crate::cache::stored_meta::StoredMeta;
use crate::cache::{self, cache_status, rfc9111, CacheEngine};
use crate::config::RouteCache;
use crate::cache::invalidation::index::Verdict;
use crate::metrics::{RequestOutcome, METRICS};
use crate::proxy::filter::Filters;
use crate::http_syntax::{host::canonical_host, target};
use crate::snapshot::{Route, SharedSnapshot};
use bytes::{Bytes, BytesMut};
use pingora_cache::eviction::EvictionManager;
use pingora_cache::key::CacheHashKey;
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Most header fields a request may have and still be parsed here.
const MAX_FIELDS: usize = 64;

/// Request fields that can make the answer differ from the stored response as it is:
/// preconditions, ranges, credentials, framing and upgrades. (Cache directives are read, and
/// decide as on the full path.)
const DECLINED_FIELDS: [&str; 12] = [
    "authorization",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "range",
    "expect",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "http2-settings",
];

/// A request with nothing in it that could change how a stored response is served.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainRequest<'a> {
    /// `HEAD` (the head alone) rather than `GET`.
    pub head_only: bool,
    /// The origin-form target (path and query, no fragment).
    pub path_and_query: &'a str,
    /// The path part of the target.
    pub path: &'a str,
    /// The `Host` field as sent.
    pub host: &'a str,
    /// The client asked to close the connection after this response.
    pub close: bool,
    /// The request carries a `Cookie` (a non-`public` route bypasses the cache for it).
    pub cookie: bool,
    /// Its `Cache-Control` and `Pragma` fields (name, value), in order.
    pub directives: Vec<(&'static str, &'a [u8])>,
}

/// Read a whole request head (and nothing after it) as a plain request. `None` when it is not
/// one: anything but HTTP/1.1 `GET`/`HEAD` in origin form with exactly one `Host`, a target the
/// full path would refuse, a field in `DECLINED_FIELDS`, or a `Connection` option other than
/// `keep-alive` and `close`. Pure.
pub fn plain_request(head: &[u8]) -> Option<PlainRequest<'_>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let head_only = match req.method? {
        "GET" => false,
        "HEAD" => true,
        _ => return None,
    };
    if req.version? != 1 {
        return None;
    }
    let target = req.path?;
    if target.contains('#') {
        return None;
    }
    let parsed = http::uri::PathAndQuery::try_from(target).ok()?;
    if parsed.as_str() != target || target::check_path("GET", parsed.path()).is_err() {
        return None;
    }
    let path = &target[..parsed.path().len()];
    let (mut host, mut close, mut cookie) = (None, false, false);
    let mut directives = Vec::new();
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return None;
            }
            host = Some(std::str::from_utf8(field.value).ok()?);
        } else if name.eq_ignore_ascii_case("connection") {
            for option in field.value.split(|b| *b == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !option.eq_ignore_ascii_case(b"keep-alive") && !option.is_empty() {
                    return None;
                }
            }
        } else if name.eq_ignore_ascii_case("cookie") {
            cookie = true;
        } else if name.eq_ignore_ascii_case("cache-control") {
            directives.push(("cache-control", field.value));
        } else if name.eq_ignore_ascii_case("pragma") {
            directives.push(("pragma", field.value));
        } else if DECLINED_FIELDS.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            return None;
        }
    }
    Some(PlainRequest {
        head_only,
        path_and_query: target,
        path,
        host: host?,
        close,
        cookie,
        directives,
    })
}

/// Whether the request's cache directives leave a fresh stored response to be served as it is,
/// decided as the full path decides (`request_directives`, the route's `client_revalidation`,
/// `no-store` bypass): `false` sends the request the full way.
fn directives_allow(
    fields: &[(&'static str, &[u8])],
    rules: &RouteCache,
    stored: &StoredMeta,
    now: SystemTime,
) -> bool {
    if fields.is_empty() {
        return true;
    }
    let Ok(mut req) = RequestHeader::build("GET", b"/", Some(fields.len())) else {
        return false;
    };
    for (name, value) in fields {
        let Ok(value) = http::HeaderValue::from_bytes(value) else {
            return false;
        };
        if req.append_header(*name, value).is_err() {
            return false;
        }
    }
    if rfc9111::request_bypass(&req, rules).is_some() {
        return false;
    }
    let parsed = request_directives::parse(&req);
    let parsed = if rules.client_revalidation {
        parsed
    } else {
        parsed.without_revalidation()
    };
    parsed.is_empty()
        || request_directives::hit_verdict(
            &parsed,
            stored.age(now),
            stored.fresh_until(),
            request_directives::forbids_stale(stored.header()),
            now,
        ) == HitVerdict::AsStored
}

/// Whether hits on `route` may be answered by the hit lane at all: it caches, and nothing on it
/// acts on a hit beyond what the lane does (user filters, response header edits, early
/// refresh, key variants from request headers or cookies).
fn lane_serves(route: &Route, filters: &Filters) -> bool {
    route.spec.cache.as_ref().is_some_and(|rules| {
        rules.early_refresh.is_none()
            && !rules.key.has_variant_inputs()
            && route.spec.response_headers.is_empty()
            && !filters.run_on(route.spec.filters.as_deref())
    })
}

/// The response head a hit sends: the stored head, then `Date` (only when none was stored),
/// `Age`, `Accept-Ranges`, `Cache-Status` and `Connection`, as the full path adds them. Pure.
pub fn response_head(
    stored: &[u8],
    date: Option<&[u8]>,
    age: u64,
    cache_status: &str,
    close: bool,
) -> BytesMut {
    let date_len = date.map_or(0, |d| d.len() + 8);
    let mut out = BytesMut::with_capacity(stored.len() + date_len + cache_status.len() + 96);
    out.extend_from_slice(stored);
    if let Some(date) = date {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Age: ");
    out.extend_from_slice(itoa::Buffer::new().format(age).as_bytes());
    out.extend_from_slice(b"\r\nAccept-Ranges: bytes\r\ncache-status: ");
    out.extend_from_slice(cache_status.as_bytes());
    out.extend_from_slice(if close {
        b"\r\nConnection: close\r\n\r\n".as_slice()
    } else {
        b"\r\nConnection: keep-alive\r\n\r\n".as_slice()
    });
    out
}

/// How long the hit lane waited for another request's fetch before handing a request to
/// Pingora (passed through the session's connection context; the cache lock's wait is
/// shortened by it).
#[derive(Debug, Clone, Copy)]
pub struct LaneWaited(pub Duration);

/// What the hit lane makes of a request.
pub enum Lane {
    /// Answer it with this.
    Answer(Answer),
    /// Its response is being fetched by another request: wait on this (resolves when that
    /// fetch's head arrives, when it is stored, or when it ends), then ask again: a stored
    /// entry is answered here, one still streaming goes to Pingora, which streams it.
    Wait(tokio::sync::watch::Receiver<()>),
    /// It goes the full way.
    Decline,
}

/// A hit ready to go out: head and body, to be sent together (one vectored write).
pub struct Answer {
    /// The response head.
    pub head: Bytes,
    /// The body (empty for `HEAD`).
    pub body: Bytes,
    /// Close the connection after it.
    pub close: bool,
    /// It was served after waiting for another request's fetch (`Cache-Status` says
    /// `detail=collapsed`, and it counts as a collapsed lock wait).
    pub collapsed: bool,
    body_len: usize,
    head_only: bool,
    route: Arc<Route>,
    host: String,
    key: pingora_cache::key::HashBinary,
    /// The request's path and query, kept only when an access log is written.
    logged_path: Option<String>,
}

/// The hit lane of one listener.
pub struct FastHits {
    snapshot: SharedSnapshot,
    cache: &'static CacheEngine,
    filters: Filters,
    access_log: Option<Arc<AccessLog>>,
    scheme: &'static str,
}

impl FastHits {
    /// The hit lane for a listener serving `snapshot` through `cache`; `tls` picks the key's
    /// scheme.
    pub fn new(
        snapshot: SharedSnapshot,
        cache: &'static CacheEngine,
        filters: Filters,
        access_log: Option<Arc<AccessLog>>,
        tls: bool,
    ) -> Self {
        FastHits {
            snapshot,
            cache,
            filters,
            access_log,
            scheme: if tls { "https" } else { "http" },
        }
    }

    /// The answer to the request in `head`, if it is a plain request for a fresh, servable,
    /// uninvalidated stored response. `last`: this response must close the connection (the
    /// keep-alive request limit, or shutdown). Counts the hit with the eviction manager, as a
    /// Pingora hit does.
    pub fn answer(&self, head: &[u8], last: bool, waited: bool) -> Lane {
        self.try_answer(head, last, waited).unwrap_or(Lane::Decline)
    }

    fn try_answer(&self, head: &[u8], last: bool, waited: bool) -> Option<Lane> {
        let req = plain_request(head)?;
        let host = canonical_host(req.host)?;
        let snapshot = self.snapshot.load();
        let route = snapshot.table.lookup(&host, req.path)?;
        if !lane_serves(route, &self.filters) {
            return None;
        }
        let rules = route.spec.cache.as_ref()?;
        if req.cookie && !rules.public {
            return None;
        }
        let key = cache::route_cache_key(self.scheme, &host, req.path_and_query, &rules.key);
        let combined = key.combined_bin();
        let Some(entry) = self.cache.storage.servable(&combined) else {
            if waited {
                return None;
            }
            // Another request may be fetching it. Subscribe first, then look: a head that
            // arrives after the look still wakes this request.
            let fetched = self.cache.storage.pending.wait_for(&combined)?;
            let storage = self.cache.storage;
            if storage.servable(&combined).is_some() {
                return self.try_answer(head, last, true);
            }
            // a response already streaming in is Pingora's to stream to this client
            return (!storage.is_filling(&combined)).then_some(Lane::Wait(fetched));
        };
        let meta = entry.meta();
        let now = SystemTime::now();
        if meta.fresh_until() < now || !directives_allow(&req.directives, rules, meta, now) {
            return None;
        }
        let invalidations = &snapshot.control.invalidations;
        if !invalidations.is_empty() {
            let key_pq = cache::key_rules::key_path_and_query(req.path_and_query, &rules.key.query);
            let verdict = cache::invalidation_verdict(
                invalidations,
                &host,
                req.path_and_query,
                Some(&key_pq),
                &meta.header().headers,
                meta.created(),
            );
            if verdict != Verdict::Valid {
                return None;
            }
        }
        let route = route.clone();
        drop(snapshot);
        let (eviction_key, weight) = entry.eviction_key();
        self.cache
            .eviction
            .access(&eviction_key, weight, meta.fresh_until());
        Some(Lane::Answer(self.build(
            &entry, req, now, last, route, host, combined, waited,
        )))
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        entry: &Servable,
        req: PlainRequest<'_>,
        now: SystemTime,
        last: bool,
        route: Arc<Route>,
        host: String,
        key: pingora_cache::key::HashBinary,
        waited: bool,
    ) -> Answer {
        let meta = entry.meta();
        let close = last || req.close;
        let status = cache_status::cache_status(
            pingora_cache::CachePhase::Hit,
            Some(cache_status::ttl_left(meta.fresh_until(), now)),
            false,
            false,
            waited.then_some(LockWait::Collapsed.as_str()),
        );
        let stored = entry.head().map_or(&[][..], |h| &h.bytes[..]);
        let date = match entry.head() {
            Some(h) if !h.has_date => Some(pingora_core::protocols::http::date::get_cached_date()),
            _ => None,
        };
        let head = response_head(
            stored,
            date.as_ref().map(|d| d.as_bytes()),
            meta.age(now).as_secs(),
            &status,
            close,
        );
        let body = if req.head_only {
            Bytes::new()
        } else {
            entry.body().clone()
        };
        Answer {
            head: head.freeze(),
            body_len: body.len(),
            body,
            close,
            collapsed: waited,
            head_only: req.head_only,
            logged_path: self
                .access_log
                .is_some()
                .then(|| req.path_and_query.to_string()),
            route,
            host,
            key,
        }
    }

    /// How long a request may wait for another's fetch (`cache.lock_wait`).
    pub fn lock_wait(&self) -> Duration {
        self.cache.settings.lock_wait
    }

    /// Whether it writes an access log (the caller then looks up the client's address).
    pub fn logs(&self) -> bool {
        self.access_log.is_some()
    }

    /// Count a hit this lane answered (`sent`: the whole response was written), in the same
    /// metrics and access log as the full path.
    pub fn record(&self, answer: &Answer, sent: bool, client: Option<IpAddr>, elapsed: Duration) {
        let name = answer.route.spec.name.as_str();
        let bytes = if sent { answer.body_len } else { 0 };
        METRICS.record_request(&RequestOutcome {
            route: name,
            status: 200,
            lookup: Some("hit"),
            source: "cache",
            body_bytes: bytes as u64,
            elapsed: Some(elapsed),
        });
        METRICS.cache_fast_hits.with_label_values(&[name]).inc();
        if answer.collapsed {
            METRICS
                .cache_lock_waits
                .with_label_values(&[name, LockWait::Collapsed.as_str()])
                .inc();
        }
        let Some(log) = &self.access_log else {
            return;
        };
        let path = answer.logged_path.as_deref().unwrap_or("/");
        let snapshot = self.snapshot.load();
        log.log(&Record {
            time: Some(SystemTime::now()),
            client: client.map(|ip| ip.to_string()),
            host: &answer.host,
            method: if answer.head_only { "HEAD" } else { "GET" },
            path,
            status: 200,
            bytes,
            route: Some(name),
            pool: Some(answer.route.pool.name()),
            backend: None,
            cache: Some("hit"),
            key: Some(crate::access_log::key_hex(&answer.key)),
            origin_ms: None,
            total_ms: elapsed.as_secs_f64() * 1000.0,
            config: &snapshot.version,
            seq: snapshot.control.position.seq,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(text: &str) -> Option<PlainRequest<'_>> {
        plain_request(text.as_bytes())
    }

    #[test]
    fn a_plain_get_or_head_is_read() {
        let r = plain("GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com\r\nAccept: */*\r\n\r\n")
            .expect("plain");
        assert_eq!(
            r,
            PlainRequest {
                head_only: false,
                path_and_query: "/a/b?x=1",
                path: "/a/b",
                host: "Example.com",
                close: false,
                cookie: false,
                directives: vec![],
            }
        );
        let r =
            plain("GET / HTTP/1.1\r\nHost: a\r\nPragma: foo\r\nCache-Control: max-age=5\r\n\r\n")
                .expect("plain");
        assert_eq!(
            r.directives,
            [
                ("pragma", &b"foo"[..]),
                ("cache-control", &b"max-age=5"[..])
            ]
        );
        let r = plain("HEAD / HTTP/1.1\r\nhost: a\r\nConnection: Close\r\nCookie: c=1\r\n\r\n")
            .expect("plain");
        assert!(r.head_only && r.close && r.cookie);
        assert!(plain("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").is_some());
    }

    #[test]
    fn anything_that_could_change_the_answer_goes_the_full_way() {
        for head in [
            "POST / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a/../b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\"\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nIf-Modified-Since: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-hop\r\n\r\n",
            // a pipelined second request, or an unfinished head
            "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert_eq!(plain(head), None, "{head:?}");
        }
    }

    #[test]
    fn the_head_adds_what_the_full_path_adds() {
        let stored = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nDate: D\r\n";
        let head = response_head(stored, None, 7, "verge; hit; ttl=3", false);
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nDate: D\r\nAge: 7\r\nAccept-Ranges: bytes\r\ncache-status: verge; hit; ttl=3\r\nConnection: keep-alive\r\n\r\n"
        );
        let head = response_head(b"HTTP/1.1 200 OK\r\n", Some(b"N"), 0, "s", true);
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200 OK\r\nDate: N\r\nAge: 0\r\nAccept-Ranges: bytes\r\ncache-status: s\r\nConnection: close\r\n\r\n"
        );
    }
}
