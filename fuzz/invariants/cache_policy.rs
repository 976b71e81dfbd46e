//! Cache-Control and the response policy (`src/cache/rfc9111.rs`) and request directives
//! (`src/cache/request_directives.rs`).
//!
//! Input: status (2 bytes), a flags byte, four TTL numbers and a clock offset (4 bytes each),
//! then `name: value` response header lines, an empty line, and request header lines.
//!
//! Invariants:
//! - `response_meta` stores nothing verge never stores (status, a server error beyond
//!   the route's `error_max_ttl` or stale windows, `no-store`/`private` in the
//!   governing field, `Vary: *`, `Set-Cookie` unless stripped, credentials without
//!   `public`/`s-maxage`/`must-revalidate`), and what it stores has no `Set-Cookie` or `Age`;
//! - its times never go negative or overflow: `created` is not after now, the lifetime is at most
//!   `max_ttl` and at most what the origin or the route could give; `no-cache` and
//!   `must-revalidate` have their effect (stale at once, no stale windows), an invalid `Age`
//!   none;
//! - request directives: every delta-seconds value fits in `u32` seconds, `Pragma` counts only
//!   without `Cache-Control`, and the hit verdict follows them (`no-cache` revalidates, without
//!   revalidation directives nothing revalidates, stale is served only within `max-stale`);
//! - a 304 refresh keeps the stored validator and framing.

use super::input::Input;
use pingora_cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};
use verge::cache::request_directives::{
    forbids_stale, hit_verdict, parse, HitVerdict, MaxStale, RequestDirectives,
};
use verge::cache::request_view::RequestView;
use verge::cache::rfc9111::{
    governing_cache_control, refreshed_by_not_modified, refuses_stale, request_bypass,
    response_meta,
};
use verge::config::{RouteCache, SetCookiePolicy};

/// Ten years: the largest route TTL the fuzzer sets.
const MAX_ROUTE_TTL: u32 = 10 * 365 * 86_400;

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let status = 100 + (u16::from(input.byte()) << 8 | u16::from(input.byte())) % 500;
    let flags = input.byte();
    let mut ttl = |on: bool| {
        let n = input.u32();
        on.then(|| Duration::from_secs(u64::from(n % MAX_ROUTE_TTL)))
    };
    let rules = RouteCache {
        force_ttl: ttl(flags & 1 != 0),
        max_ttl: ttl(flags & 2 != 0),
        default_ttl: ttl(flags & 4 != 0),
        negative_ttl: ttl(flags & 8 != 0),
        set_cookie: if flags & 16 != 0 {
            SetCookiePolicy::Strip
        } else {
            SetCookiePolicy::Refuse
        },
        public: flags & 32 != 0,
        stale_while_revalidate: Duration::from_secs(30),
        stale_if_error: Duration::from_secs(60),
        ..RouteCache::default()
    };
    let authorization = flags & 64 != 0;
    let method = if flags & 128 != 0 { "POST" } else { "GET" };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(input.u32()));
    let text = input.rest_text();
    let (resp_text, req_text) = text.split_once("\n\n").unwrap_or((text.as_str(), ""));
    let Ok(mut resp) = ResponseHeader::build(status, None) else {
        return;
    };
    let Ok(mut req) = RequestHeader::build(method, b"/", None) else {
        return;
    };
    for (name, value) in header_lines(resp_text) {
        let _ = resp.append_header(name.to_string(), value);
    }
    for (name, value) in header_lines(req_text) {
        let _ = req.append_header(name.to_string(), value);
    }
    response_invariants(&resp, authorization, &rules, now);
    request_invariants(&req, &resp, &rules, now);
    not_modified_invariants(&resp, &req);
}

fn header_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| {
        let (n, v) = l.split_once(':')?;
        Some((n.trim(), v.trim_start()))
    })
}

fn never_stored(status: u16) -> bool {
    !(200..600).contains(&status) || matches!(status, 206 | 304 | 400 | 413 | 414 | 431)
}

/// The field whose directives a shared cache obeys: a usable `CDN-Cache-Control`,
/// `Surrogate-Control`, then `Cache-Control`.
fn governing(resp: &ResponseHeader) -> Option<std::sync::Arc<CacheControl>> {
    governing_cache_control(resp)
}

fn response_invariants(
    resp: &ResponseHeader,
    authorization: bool,
    rules: &RouteCache,
    now: SystemTime,
) {
    let status = resp.status.as_u16();
    let result = response_meta(resp, authorization, rules, now);
    let again = response_meta(resp, authorization, rules, now);
    assert_eq!(result.is_ok(), again.is_ok(), "not deterministic");
    let Ok(meta) = result else {
        return;
    };
    if let Ok(m) = &again {
        assert_eq!(m.fresh_until(), meta.fresh_until());
        assert_eq!(m.created(), meta.created());
    }
    assert!(!never_stored(status), "status {status} stored");
    let cc = governing(resp);
    // `must-understand` lifts `no-store` (for the statuses verge knows)
    let must_understand = cc
        .as_ref()
        .is_some_and(|c| c.directives.keys().any(|k| k.as_str() == "must-understand"));
    assert!(
        !cc.as_ref()
            .is_some_and(|c| (c.no_store() && !must_understand) || c.private()),
        "no-store or private stored"
    );
    let vary_star = resp.headers.get_all("vary").iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|p| p.trim_ascii() == b"*")
    });
    assert!(!vary_star, "Vary: * stored");
    if resp.headers.contains_key("set-cookie") {
        assert_eq!(
            rules.set_cookie,
            SetCookiePolicy::Strip,
            "Set-Cookie stored"
        );
    }
    let stored = meta.response_header();
    assert!(
        !stored.headers.contains_key("set-cookie"),
        "stored Set-Cookie"
    );
    assert!(!stored.headers.contains_key("age"), "stored Age");
    if authorization {
        assert!(
            cc.as_ref().is_some_and(|c| c.allow_caching_authorized_req()),
            "a response to a request with credentials stored without public/s-maxage/must-revalidate"
        );
    }
    // Times: never in the future, never overflowing, bounded by what anyone asked for.
    let created = meta.created();
    assert!(created <= now, "created after now");
    let fresh_until = meta.fresh_until();
    let lifetime = fresh_until
        .duration_since(created)
        .unwrap_or(Duration::ZERO);
    if let Some(max) = rules.max_ttl {
        assert!(
            lifetime <= max,
            "lifetime {lifetime:?} over max_ttl {max:?}"
        );
    }
    // Expires − Date spans at most the dates HTTP can write (years 0..=9999 from 1970 on).
    let bound = Duration::from_secs(u64::from(u32::MAX))
        .max(Duration::from_secs(253_402_300_800))
        .max(rules.force_ttl.unwrap_or_default());
    assert!(lifetime <= bound, "lifetime {lifetime:?} out of range");
    if cc.as_ref().is_some_and(|c| c.no_cache()) {
        assert!(!meta.is_fresh(now), "no-cache stored as fresh");
    }
    // An Age whose first member is no number counts as absent (RFC 9111 §5.1).
    let first_age = resp.headers.get_all("age").iter().next().map(|v| {
        let member = v
            .as_bytes()
            .split(|b| *b == b',')
            .next()
            .unwrap_or_default();
        let item = member.split(|b| *b == b';').next().unwrap_or_default();
        item.trim_ascii().to_vec()
    });
    if first_age.is_some_and(|a| a.is_empty() || !a.iter().all(u8::is_ascii_digit)) {
        let mut without = resp.clone();
        without.remove_header("age");
        let m = response_meta(&without, authorization, rules, now).expect("stored with Age");
        assert_eq!(
            m.fresh_until(),
            meta.fresh_until(),
            "an invalid Age counted"
        );
    }
    if cc
        .as_ref()
        .is_some_and(|c| c.must_revalidate() || c.proxy_revalidate())
    {
        assert_eq!(meta.stale_while_revalidate_sec(), 0);
        assert_eq!(meta.stale_if_error_sec(), 0);
    }
    if (500..600).contains(&status) {
        // Server errors: only on explicit freshness, briefly, never stale.
        assert!(
            lifetime <= rules.error_max_ttl,
            "a server error kept {lifetime:?}"
        );
        assert!(
            meta.is_fresh(created),
            "a server error stored without freshness"
        );
        assert_eq!(meta.stale_while_revalidate_sec(), 0);
        assert_eq!(meta.stale_if_error_sec(), 0);
    } else if cc.is_none() && rules.force_ttl.is_none() {
        // Route defaults for the stale windows apply when the origin names none; a
        // disconnected origin gets at least the route's stale_if_disconnected.
        assert_eq!(meta.stale_while_revalidate_sec(), 30);
        assert_eq!(
            u64::from(meta.stale_if_error_sec()),
            rules.stale_if_disconnected.as_secs().max(60)
        );
    }
    if cc.as_deref().is_some_and(refuses_stale) {
        assert_eq!(
            meta.stale_if_error_sec(),
            0,
            "stale-if-error despite {cc:?}"
        );
    }
}

fn request_invariants(
    req: &RequestHeader,
    stored: &ResponseHeader,
    rules: &RouteCache,
    now: SystemTime,
) {
    let view = RequestView::from_head(req);
    let d = parse(&view);
    assert_eq!(d, parse(&view), "not deterministic");
    let limit = Duration::from_secs(u64::from(u32::MAX));
    for v in [d.max_age, d.min_fresh].into_iter().flatten() {
        assert!(v <= limit, "delta-seconds {v:?} out of range");
    }
    if let Some(MaxStale::Within(v)) = d.max_stale {
        assert!(v <= limit, "max-stale {v:?} out of range");
    }
    let has_cc = req.headers.contains_key("cache-control");
    if !has_cc {
        let pragma = req
            .headers
            .get_all("pragma")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("no-cache"));
        assert_eq!(
            d,
            RequestDirectives {
                no_cache: pragma,
                ..RequestDirectives::default()
            },
            "directives without Cache-Control"
        );
    }
    // The bypass decision.
    let bypass = request_bypass(&RequestView::from_head(req), rules);
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        assert!(bypass.is_some(), "{} used the cache", req.method);
    }
    if CacheControl::from_req_headers(req).is_some_and(|c| c.no_store()) {
        assert!(bypass.is_some(), "no-store request used the cache");
    }
    // Hit verdicts over a few entry ages around now.
    let forbids = forbids_stale(stored);
    if CacheControl::from_resp_headers(stored).is_some_and(|c| c.no_cache() || c.must_revalidate())
    {
        assert!(forbids);
    }
    let dates = [0u64, 1, 59, 3600, u64::from(u32::MAX)];
    for &back in &dates {
        for &ahead in &dates {
            let fresh_until = now + Duration::from_secs(ahead);
            let fresh_until = fresh_until
                .checked_sub(Duration::from_secs(back))
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let age = Duration::from_secs(back);
            for forbid in [forbids, true, false] {
                verdict_invariants(&d, age, fresh_until, forbid, now);
            }
        }
    }
}

fn verdict_invariants(
    d: &RequestDirectives,
    age: Duration,
    fresh_until: SystemTime,
    forbids: bool,
    now: SystemTime,
) {
    let v = hit_verdict(d, age, fresh_until, forbids, now);
    let fresh = fresh_until > now;
    if d.no_cache {
        assert_eq!(
            v,
            HitVerdict::Revalidate,
            "no-cache served without revalidation"
        );
    }
    if d.is_empty() {
        assert_eq!(v, HitVerdict::AsStored);
    }
    assert_ne!(
        hit_verdict(&d.without_revalidation(), age, fresh_until, forbids, now),
        HitVerdict::Revalidate,
        "revalidation without a revalidation directive"
    );
    if v == HitVerdict::ServeStale {
        assert!(!fresh && !forbids && d.max_stale.is_some() && d.min_fresh.is_none());
        if let Some(MaxStale::Within(n)) = d.max_stale {
            assert!(now.duration_since(fresh_until).unwrap_or_default() <= n);
        }
    }
}

fn not_modified_invariants(stored: &ResponseHeader, headers_304: &RequestHeader) {
    let Ok(mut not_modified) = ResponseHeader::build(304, None) else {
        return;
    };
    for (name, values) in headers_304.headers.iter() {
        let _ = not_modified.append_header(name.clone(), values.clone());
    }
    let out = refreshed_by_not_modified(stored, &not_modified, Some(stored));
    for name in ["etag", "content-length", "content-encoding", "set-cookie"] {
        let before: Vec<_> = stored.headers.get_all(name).iter().collect();
        let after: Vec<_> = out.headers.get_all(name).iter().collect();
        assert_eq!(before, after, "a 304 changed the stored {name}");
    }
}
