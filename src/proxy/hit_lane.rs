//! The front door's hit lane: a plain HTTP/1.1 request for a fresh stored `200` is answered
//! straight from the cache, without building Pingora's per-request session.
//!
//! The lane is a shortcut, never a second opinion. It fills the same [`RequestView`] the full
//! path fills and decides through the same functions: the route's bypass rules
//! ([`rfc9111::request_bypass`]), the request's directives ([`request_directives::for_route`]),
//! invalidations and directives against the stored entry ([`hit_decision::decide`]), the
//! `Cache-Status` ([`cache_status::value`]), and the finish (metrics, access log:
//! [`finish`]). Which routes it may serve is an exhaustive match over the route's fields
//! ([`lane_rules`]): a new field does not compile until someone decides what the lane does
//! with it.
//!
//! A stored compressed body (a compressing route's, under `Vary: Accept-Encoding`) is served
//! here as stored to a client whose `Accept-Encoding` takes its coding; decoding it for another
//! client is Pingora's phases' work.
//!
//! What it leaves to Pingora: conditional and range requests, bodies, upgrades and other
//! connection options (those change the answer's shape, not the cache's say), HTTP/1.0 and
//! HTTP/2, pipelined bytes, stale or invalidated entries, responses still being fetched. What it
//! sends is what the full path sends (stored fields, `Age`, `Accept-Ranges`, `Cache-Status`,
//! `Connection`), except `Date`: the stored one goes out, as RFC 9111 asks, where Pingora's
//! writer stamps the time of sending.

use super::content_coding::AcceptEncoding;
use super::filter::Filters;
use super::finish::{finish, Finished, Seen};
use super::lane_route::{edge_free, Routed};
use crate::cache::collapse::LockWait;
use crate::cache::freshness::{Served, ServedState};
use crate::cache::hit_decision::{self, HitDecision, StoredEntry};
use crate::cache::request_view::RequestView;
use crate::cache::storage::Servable;
use crate::cache::stored_meta::HeadOnDemand;
use crate::cache::{self, cache_status, request_directives, rfc9111, CacheEngine};
use crate::config::{RouteCache, RouteSpec};
use crate::http_syntax::head_index::{FieldSpan, HeadIndex};
use crate::http_syntax::scheme;
use crate::snapshot::{Route, Snapshot};
use crate::upstream::hop_marker::HOP_FIELD;
use bytes::{Bytes, BytesMut};
use http::{Method, Version};
use pingora_cache::eviction::EvictionManager;
use pingora_cache::key::CacheHashKey;
use pingora_cache::CachePhase;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Request fields that change the shape of the answer rather than the cache's say, which the
/// lane leaves to Pingora: preconditions (304/412), ranges (206), bodies and their framing,
/// `Expect`, and upgrades. (Credentials, cookies, methods, WebSocket handshakes and cache
/// directives are the cache's rules, decided by the functions both paths call.)
pub const SHAPING_FIELDS: [&str; 11] = [
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

/// The path of an origin-form `target` (or `*`), when `http`'s `PathAndQuery` takes the target as
/// it is (what Pingora's request head holds): no fragment, and none of the bytes it refuses
/// (`<`, `>` and `` ` `` in the path; `"`, `<` and `>` in the query; controls and spaces). The
/// same as parsing it with `PathAndQuery::try_from`, without the copy that makes. Pure.
pub fn origin_path(target: &str) -> Option<&str> {
    /// `http`'s longest URI.
    const MAX_LEN: usize = u16::MAX as usize - 1;
    if target == "*" {
        return Some(target);
    }
    if !target.starts_with('/') || target.len() > MAX_LEN {
        return None;
    }
    let (path, query) = target.split_at(target.find('?').unwrap_or(target.len()));
    let path_ok = path.bytes().all(
        |b| matches!(b, b'!' | b'"' | b'$'..=b';' | b'=' | b'@'..=b'_' | b'a'..=b'~' | 0x80..),
    );
    let query_ok = query
        .bytes()
        .all(|b| matches!(b, b'!' | b'$'..=b';' | b'=' | b'?'..=b'~' | 0x80..));
    (path_ok && query_ok).then_some(path)
}

/// A request whose answer, if it is a hit, has the shape the lane writes.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainRequest<'a> {
    /// The method, as the cache rules read it.
    pub method: Method,
    /// The origin-form target (path and query, no fragment).
    pub path_and_query: &'a str,
    /// The path part of the target.
    pub path: &'a str,
    /// The `Host` field as sent.
    pub host: &'a str,
    /// The client asked to close the connection after this response.
    pub close: bool,
    /// The raw head.
    pub head: &'a [u8],
    /// Where every field line lies in `head`, in order.
    pub fields: &'a [FieldSpan],
}

impl<'a> PlainRequest<'a> {
    /// The view the cache's rules read.
    pub fn view(&'a self) -> RequestView<'a> {
        RequestView::from_index(&self.method, Version::HTTP_11, self.head, self.fields)
    }

    /// `HEAD`: the head alone.
    pub fn head_only(&self) -> bool {
        self.method == Method::HEAD
    }
}

/// Read a whole request head (and nothing after it) from where the front door's scan found its
/// parts (`index`, which must describe `head`: the scan checked every line, so nothing is
/// parsed again here). `None` when the answer would not have the lane's shape: anything but
/// HTTP/1.1 in origin form with exactly one `Host`, a target `http` would not take as it is, a
/// field in `SHAPING_FIELDS`, a tier hop marker (checked, and answered under the owner's own
/// `Cache-Status` name, by the full path), a `Connection` option other than `keep-alive` and
/// `close`, more than 64 fields (`head_index::MAX_FIELDS`), or bytes Pingora's parser
/// (`httparse`) would refuse. Pure.
pub fn plain_request<'a>(head: &'a [u8], index: &'a HeadIndex) -> Option<PlainRequest<'a>> {
    if index.head_len() != Some(head.len()) || index.lenient_bytes || index.http10 {
        return None;
    }
    let method = Method::from_bytes(index.method(head)?).ok()?;
    let target = std::str::from_utf8(index.target(head)?).ok()?;
    // the scan checked the target and its path (`request_line::parse`): left are the bytes
    // `http` refuses
    let path = origin_path(target)?;
    let fields = index.fields()?;
    let (mut host, mut close) = (None, false);
    for field in fields {
        let (name, value) = (field.name(head), field.value(head));
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return None;
            }
            host = Some(std::str::from_utf8(value).ok()?);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|b| *b == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !option.eq_ignore_ascii_case(b"keep-alive") && !option.is_empty() {
                    return None;
                }
            }
        } else if SHAPING_FIELDS
            .iter()
            .any(|d| name.eq_ignore_ascii_case(d.as_bytes()))
            || name.eq_ignore_ascii_case(HOP_FIELD.as_bytes())
        {
            return None;
        }
    }
    Some(PlainRequest {
        method,
        path_and_query: target,
        path,
        host: host?,
        close,
        head,
        fields,
    })
}

/// The cache rules of `route` when the lane may answer its hits: every field of the route is
/// classified here, with no `..`, so a new one fails to compile until it is. `None`: the route
/// does not cache, or something on it acts on a hit beyond what the lane does.
pub fn lane_rules<'r>(route: &'r Route, filters: &Filters) -> Option<&'r RouteCache> {
    let Route {
        spec,
        pool: _,     // a hit never reaches the pool
        counters: _, // series, not a rule
    } = route;
    let RouteSpec {
        name: _,            // a label
        hosts: _,           // routing, done before the lane looks
        path_prefix: _,     // routing
        pool: _,            // a hit never reaches the pool
        strip_prefix: _,    // shapes the forwarded request only
        request_headers: _, // the forwarded request only
        response_headers,   // edits every response: the full path applies them
        timeouts: _,        // the origin only
        cache,
        class: _,          // a metrics label
        filters: selected, // user filters see hits too: the full path runs them
        get_body: _,       // the lane takes no request with a body
        edge,
        error_pages: _, // verge's own errors: the lane writes none
        compression: _, // a coded entry is served as stored to clients taking its coding
                        // (`coded_for`); decoding is the full path's
    } = &**spec;
    let rules = cache.as_ref()?;
    let RouteCache {
        default_ttl: _,            // decided when the entry was stored
        max_ttl: _,                // stored
        stale_while_revalidate: _, // stored; the lane serves fresh entries only
        stale_if_error: _,         // the lane never reaches the origin
        stale_if_disconnected: _,  // the same
        error_max_ttl: _,          // stored; the lane serves 200s only
        public: _,                 // read by `rfc9111::request_bypass`, `credentials_apply`
        negative_ttl: _,           // stored; the lane serves 200s only
        force_ttl: _,              // stored
        set_cookie: _,             // applies to fills only
        max_variants: _,           // applies to fills only
        key,                       // key variants from request fields: the full path
        client_revalidation: _,    // read by `request_directives::for_route`
        early_refresh,             // a hit may start a refresh: the full path
        tier: _,                   // where misses go: the lane serves hits only
    } = rules;
    // every edge rule acts on hits too (refusals, rate limits, redirects, ids, the key's path)
    let lane = edge_free(edge)
        && early_refresh.is_none()
        && !key.has_variant_inputs()
        && response_headers.is_empty()
        && !filters.run_on(selected.as_deref());
    lane.then_some(rules)
}

/// Whether the lane may send `entry` as stored, as far as its content coding goes: a body
/// without one, or one stored under `Vary: Accept-Encoding` in a coding the client accepts, on
/// a route that compresses now (then its key has no `Accept-Encoding` variant; once the route
/// stops compressing, that `Vary` selects variants again, which is the full path's to do). A
/// client that does not take the coding is the full path's too: it decodes.
fn coded_for(entry: &Servable, route: &Route, view: &RequestView<'_>) -> bool {
    match entry.head().and_then(|h| h.coding) {
        None => true,
        Some(coding) => {
            route.spec.compression.is_some()
                && AcceptEncoding::parse(view.values("accept-encoding")).accepts(coding)
        }
    }
}

/// The response head a hit sends: the stored head, then `Date` (only when none was stored),
/// `Accept-Ranges`, `Age`, `Content-Length` (only for a coded body stored without one:
/// `length`), `Cache-Status` and `Connection`, as the full path adds them and in its order.
/// Pure.
pub fn response_head(
    stored: &[u8],
    length: Option<usize>,
    date: Option<&[u8]>,
    age: u64,
    cache_status: &str,
    close: bool,
) -> BytesMut {
    let date_len = date.map_or(0, |d| d.len() + 8);
    let mut out = BytesMut::with_capacity(stored.len() + date_len + cache_status.len() + 128);
    out.extend_from_slice(stored);
    if let Some(date) = date {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Accept-Ranges: bytes\r\nAge: ");
    out.extend_from_slice(itoa::Buffer::new().format(age).as_bytes());
    if let Some(length) = length {
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
    }
    out.extend_from_slice(b"\r\ncache-status: ");
    out.extend_from_slice(cache_status.as_bytes());
    out.extend_from_slice(if close {
        b"\r\nConnection: close\r\n\r\n".as_slice()
    } else {
        b"\r\nConnection: keep-alive\r\n\r\n".as_slice()
    });
    out
}

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
    /// The entry it came from, for the freshness metrics.
    entry: Servable,
    /// The snapshot the decision to serve it read: the freshness check judges by it, and its
    /// access log (destination and format) takes the line.
    decided_with: Arc<Snapshot>,
    /// What the access log records of the request, kept only when one is written.
    logged: Option<Logged>,
}

impl Answer {
    /// Whether it gets an access-log line (the caller then looks up the client's address).
    pub fn logs(&self) -> bool {
        self.logged.is_some()
    }
}

/// What the access log records of a request the lane answered.
struct Logged {
    path: String,
    user_agent: Option<String>,
    referer: Option<String>,
}

/// The hit lane of one listener.
pub struct HitLane {
    cache: &'static CacheEngine,
    filters: Filters,
    scheme: &'static str,
    /// The listener's name, for the access log.
    listener: String,
}

impl HitLane {
    /// The hit lane for a listener serving through `cache` (the snapshot comes with each routed
    /// request); `tls` picks the key's scheme.
    pub fn new(cache: &'static CacheEngine, filters: Filters, tls: bool) -> Self {
        HitLane {
            cache,
            filters,
            scheme: scheme(tls),
            listener: String::new(),
        }
    }

    /// Name the listener in the access log's lines.
    pub fn with_listener_name(mut self, name: &str) -> Self {
        self.listener = name.to_string();
        self
    }

    /// The answer to the plain request `req` (routed by [`super::lane_route::LaneRoutes`]), if it asks for
    /// a fresh, servable, uninvalidated stored response. `last`: this response must close the
    /// connection (the keep-alive request limit, or shutdown). Counts the hit with the eviction
    /// manager, as a Pingora hit does.
    pub fn answer(
        &self,
        req: &PlainRequest<'_>,
        routed: &Routed,
        last: bool,
        waited: bool,
    ) -> Lane {
        self.try_answer(req, routed, last, waited)
            .unwrap_or(Lane::Decline)
    }

    fn try_answer(
        &self,
        req: &PlainRequest<'_>,
        routed: &Routed,
        last: bool,
        waited: bool,
    ) -> Option<Lane> {
        let (host, route) = (&routed.host, &routed.route);
        let rules = lane_rules(route, &self.filters)?;
        let snapshot = &routed.snapshot;
        let view = req.view();
        if rfc9111::request_bypass(&view, rules).is_some() {
            return None;
        }
        let key = cache::route_cache_key(self.scheme, host, req.path_and_query, &rules.key);
        let combined = key.combined_bin();
        let now = SystemTime::now();
        let storage = self.cache.storage;
        // a fresh object on disk is read now if the page cache holds it; its admission to
        // memory (or its refusal) counted this request, as a fetched object's does
        let (found, from_disk) = match storage.servable(&combined) {
            Some(entry) => (Some(entry), false),
            None => (
                storage.servable_from_disk(&key, |meta| meta.fresh_until() >= now),
                true,
            ),
        };
        let Some(entry) = found else {
            if waited {
                return None;
            }
            // Another request may be fetching it. Subscribe first, then look: a head that
            // arrives after the look still wakes this request.
            let fetched = storage.pending.wait_for(&combined)?;
            if storage.servable(&combined).is_some() {
                return self.try_answer(req, routed, last, true);
            }
            // a response already streaming in is Pingora's to stream to this client
            return (!storage.is_filling(&combined)).then_some(Lane::Wait(fetched));
        };
        if !coded_for(&entry, route, &view) {
            return None;
        }
        let meta = entry.meta();
        if meta.fresh_until() < now {
            return None;
        }
        let header = HeadOnDemand::new(meta);
        let stored = StoredEntry {
            header: &header,
            created: meta.created(),
            age: meta.age(now),
            fresh_until: meta.fresh_until(),
        };
        let directives = request_directives::for_route(&view, rules);
        let decision = hit_decision::decide(
            &snapshot.control.invalidations,
            host,
            req.path_and_query,
            rules,
            &directives,
            stored,
            now,
        );
        if decision != HitDecision::AsStored {
            return None;
        }
        let route = route.clone();
        let decided_with = snapshot.clone();
        self.cache.storage.served(&combined, &entry);
        if !from_disk {
            let (eviction_key, weight) = entry.eviction_key();
            self.cache
                .eviction
                .access(&eviction_key, weight, meta.fresh_until());
        }
        let found = (entry, decided_with);
        let host = host.clone();
        let answer = self.build(found, req, now, last, route, host, combined, waited);
        Some(Lane::Answer(answer))
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        (entry, decided_with): (Servable, Arc<Snapshot>),
        req: &PlainRequest<'_>,
        now: SystemTime,
        last: bool,
        route: Arc<Route>,
        host: String,
        key: pingora_cache::key::HashBinary,
        waited: bool,
    ) -> Answer {
        let meta = entry.meta();
        let close = last || req.close;
        let status = cache_status::value(
            &cache_status::Outcome {
                phase: CachePhase::Hit,
                fresh_until: Some(meta.fresh_until()),
                stored: false,
                request_forced: false,
                bypass: None,
                passed: false,
                early_refresh: false,
                lock_wait: waited.then_some(LockWait::Collapsed),
            },
            now,
        );
        let stored = entry.head().map_or(&[][..], |h| h.bytes);
        let date = match entry.head() {
            Some(h) if !h.has_date => Some(pingora_core::protocols::http::date::get_cached_date()),
            _ => None,
        };
        // a coded body stored without a length announces the stored bytes' (`servable` checked
        // that the entry is whole)
        let length = entry
            .head()
            .filter(|h| h.content_length.is_none())
            .map(|_| entry.body().len());
        let head = response_head(
            stored,
            length,
            date.as_ref().map(|d| d.as_bytes()),
            meta.age(now).as_secs(),
            &status,
            close,
        );
        let head_only = req.head_only();
        let body = if head_only {
            Bytes::new()
        } else {
            entry.body().clone()
        };
        let logged = decided_with.log().is_some().then(|| {
            let field = |name: &'static str| {
                let value = req.view().values(name).next()?;
                Some(String::from_utf8_lossy(value).into_owned())
            };
            Logged {
                path: req.path_and_query.to_string(),
                user_agent: field("user-agent"),
                referer: field("referer"),
            }
        });
        Answer {
            head: head.freeze(),
            body_len: body.len(),
            body,
            close,
            collapsed: waited,
            decided_with,
            head_only,
            logged,
            route,
            host,
            key,
            entry,
        }
    }

    /// How long a request may wait for another's fetch (`cache.lock_wait`).
    pub fn lock_wait(&self) -> Duration {
        self.cache.settings.lock_wait
    }

    /// Count a hit this lane answered (`sent`: the whole response was written), through the
    /// finish the full path uses.
    pub fn record(&self, answer: &Answer, sent: bool, client: Option<IpAddr>, elapsed: Duration) {
        let route: &Route = &answer.route;
        let logged = answer.logged.as_ref();
        let meta = answer.entry.meta();
        let header = HeadOnDemand::new(meta);
        let finished = Finished {
            route: Some(route),
            host: &answer.host,
            method: if answer.head_only { "HEAD" } else { "GET" },
            path: logged.map_or("/", |l| l.path.as_str()),
            status: 200,
            body_bytes: if sent { answer.body_len } else { 0 },
            lookup: Some("hit"),
            logged_lookup: Some("hit"),
            source: "cache",
            lock_wait: answer.collapsed.then_some(LockWait::Collapsed),
            backend: None,
            key: Some(&answer.key[..]),
            origin_ms: None,
            elapsed: Some(elapsed),
            client,
            request_id: None, // the lane declines routes that give ids (`lane_rules`)
            served: Some({
                let at = SystemTime::now();
                Served {
                    state: ServedState::Fresh, // the lane serves fresh entries only
                    header: &header,
                    created: meta.created(),
                    age: meta.age(at),
                    fresh_until: meta.fresh_until(),
                    at,
                }
            }),
            seen: Seen {
                user_agent: logged.and_then(|l| l.user_agent.as_deref()),
                referer: logged.and_then(|l| l.referer.as_deref()),
                protocol: "HTTP/1.1", // the lane answers HTTP/1.1 only
                scheme: self.scheme,
                listener: &self.listener,
                tls_version: None, // a log that wants it has the lane decline
            },
            decided_with: Some(&answer.decided_with),
        };
        // the line goes where the snapshot that served it sends lines, in its format
        finish(&finished, &answer.decided_with);
        route.counters.fast_hits().inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // How the lane reads heads (`plain_request`) is tested with the front door's scan, which
    // indexes them, in `ingress.rs`.

    #[test]
    fn origin_path_agrees_with_http_on_every_target() {
        // what the lane did before: parse with `PathAndQuery`, which copies the target
        let reference = |target: &str| -> Option<usize> {
            if target.contains('#') {
                return None;
            }
            let parsed = http::uri::PathAndQuery::try_from(target).ok()?;
            (parsed.as_str() == target).then(|| parsed.path().len())
        };
        const ALPHABET: &[u8] = b"/a?=&%2#<>`\"{}|^ ~!$;:@[]\x7f\t\xc3\xa9*.";
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut checked = 0;
        for round in 0..200_000 {
            let len = (next() % 10) as usize;
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            // most targets the lane sees start with a slash
            if round % 4 != 0 {
                bytes.insert(0, b'/');
            }
            let Ok(target) = std::str::from_utf8(&bytes) else {
                continue;
            };
            let ours = origin_path(target);
            if target.starts_with('/') || target == "*" {
                assert_eq!(ours.map(str::len), reference(target), "{target:?}");
                if let Some(path) = ours {
                    assert!(target.starts_with(path), "{target:?}");
                }
                checked += 1;
            } else {
                // not origin form: the front door refused it before the lane could look
                assert_eq!(ours, None, "{target:?}");
            }
        }
        assert!(checked > 100_000);
        let long = format!("/{}", "a".repeat(70_000));
        assert_eq!(origin_path(&long).map(str::len), reference(&long));
        let longest = format!("/{}", "a".repeat(65_533));
        assert_eq!(origin_path(&longest).map(str::len), reference(&longest));
    }

    #[test]
    fn the_head_adds_what_the_full_path_adds() {
        let stored = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nDate: D\r\n";
        let head = response_head(stored, None, None, 7, "verge; hit; ttl=3", false);
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nDate: D\r\nAccept-Ranges: bytes\r\nAge: 7\r\ncache-status: verge; hit; ttl=3\r\nConnection: keep-alive\r\n\r\n"
        );
        let head = response_head(b"HTTP/1.1 200 OK\r\n", None, Some(b"N"), 0, "s", true);
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200 OK\r\nDate: N\r\nAccept-Ranges: bytes\r\nAge: 0\r\ncache-status: s\r\nConnection: close\r\n\r\n"
        );
        let coded = b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\n";
        let head = response_head(coded, Some(42), None, 0, "s", false);
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\nAccept-Ranges: bytes\r\nAge: 0\r\nContent-Length: 42\r\ncache-status: s\r\nConnection: keep-alive\r\n\r\n"
        );
    }
}
