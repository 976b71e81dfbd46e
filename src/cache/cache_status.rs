//! The RFC 9211 `Cache-Status` field verge sends with every response on a caching route.

use std::time::SystemTime;

/// Whole seconds of freshness left at `now` (negative when stale), as `Cache-Status` `ttl`
/// gives them.
pub fn ttl_left(fresh_until: SystemTime, now: SystemTime) -> i64 {
    match fresh_until.duration_since(now) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The RFC 9211 `Cache-Status` value for a response. `request_forced`: a fresh stored response
/// was found, but the request's own directives (`no-cache`, `max-age`, `min-fresh`, `Pragma`)
/// sent it to the origin, which RFC 9211 §2.2 calls `fwd=request`.
pub fn cache_status(
    phase: pingora_cache::CachePhase,
    ttl_left: Option<i64>,
    stored: bool,
    request_forced: bool,
    detail: Option<&str>,
) -> String {
    named_status(CACHE_NAME, phase, ttl_left, stored, request_forced, detail)
}

/// verge's cache identifier in `Cache-Status` (RFC 9211 §2), for the answers a client gets.
pub const CACHE_NAME: &str = "verge";

/// [`cache_status`] under the identifier `name`.
fn named_status(
    name: &str,
    phase: pingora_cache::CachePhase,
    ttl_left: Option<i64>,
    stored: bool,
    request_forced: bool,
    detail: Option<&str>,
) -> String {
    use pingora_cache::CachePhase as P;
    let forward = |usual: &'static str| if request_forced { "request" } else { usual };
    // one allocation: the longest value ("; hit; fwd=stale; ttl=-9223372036854775808; stored")
    // plus a detail
    let mut s = String::with_capacity(name.len() + 64 + detail.map_or(0, str::len));
    s.push_str(name);
    let push_ttl = |s: &mut String, t: i64| {
        use std::fmt::Write;
        // writing into a String does not fail
        let _ = write!(s, "; ttl={t}");
    };
    match phase {
        P::Hit => {
            s.push_str("; hit");
            if let Some(t) = ttl_left {
                push_ttl(&mut s, t);
            }
        }
        P::Stale | P::StaleUpdating => {
            s.push_str("; hit; fwd=stale");
            if let Some(t) = ttl_left {
                push_ttl(&mut s, t);
            }
        }
        P::Miss => {
            s.push_str("; fwd=");
            s.push_str(forward("uri-miss"));
        }
        P::Expired => {
            s.push_str("; fwd=");
            s.push_str(forward("stale"));
        }
        P::Revalidated | P::RevalidatedNoCache(_) => {
            s.push_str("; fwd=");
            s.push_str(forward("stale"));
            s.push_str("; fwd-status=304");
        }
        // looked up, missed, and the answer turned out not storable (or a lock waiter was
        // released to fetch for itself)
        P::Disabled(reason) if reason != pingora_cache::NoCacheReason::NeverEnabled => {
            s.push_str("; fwd=");
            s.push_str(forward("uri-miss"));
        }
        _ => s.push_str("; fwd=bypass"),
    }
    if stored {
        s.push_str("; stored");
    }
    if let Some(d) = detail {
        s.push_str("; detail=");
        s.push_str(d);
    }
    s
}

/// How a request on a caching route went, as far as its `Cache-Status` tells. The hit lane and
/// the full path both describe their responses with it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The cache phase the request ended in.
    pub phase: pingora_cache::CachePhase,
    /// When the entry served stops (or stopped) being fresh, for an answer from the cache.
    pub fresh_until: Option<SystemTime>,
    /// The response was admitted to the cache.
    pub stored: bool,
    /// The request's own directives sent a fresh entry to the origin.
    pub request_forced: bool,
    /// A request rule skipped the cache.
    pub bypass: Option<super::rfc9111::Bypass>,
    /// The URL is remembered as uncacheable (hit-for-pass): no lookup, no lock.
    pub passed: bool,
    /// This hit started an early refresh of its entry.
    pub early_refresh: bool,
    /// How a wait for another request's fetch ended, if the request waited.
    pub lock_wait: Option<super::collapse::LockWait>,
}

/// The `Cache-Status` value for `o` at `now`.
pub fn value(o: &Outcome, now: SystemTime) -> String {
    value_named(CACHE_NAME, o, now)
}

/// The `Cache-Status` value for `o` at `now`, under the cache identifier `name` (a tier owner
/// answering a hop names itself `verge/<id>`, so the client's field tells the hops apart).
pub fn value_named(name: &str, o: &Outcome, now: SystemTime) -> String {
    use pingora_cache::CachePhase as P;
    let ttl_left = match o.phase {
        P::Hit | P::Stale | P::StaleUpdating => o.fresh_until.map(|f| ttl_left(f, now)),
        _ => None,
    };
    let (phase, detail) = match o.bypass {
        Some(b) => (o.phase, Some(b.as_str())),
        None if o.passed => (P::Bypass, Some("hit-for-pass")),
        None if o.early_refresh => (o.phase, Some("early-refresh")),
        None => (o.phase, o.lock_wait.and_then(|w| w.detail())),
    };
    named_status(name, phase, ttl_left, o.stored, o.request_forced, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::NoCacheReason;
    use std::time::Duration;

    #[test]
    fn ttl_counts_whole_seconds_either_way() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(ttl_left(now + Duration::from_millis(2500), now), 2);
        assert_eq!(ttl_left(now - Duration::from_millis(2500), now), -2);
        assert_eq!(ttl_left(now, now), 0);
    }

    #[test]
    fn cache_status_names_what_went_forward_and_why() {
        use pingora_cache::CachePhase as P;
        assert_eq!(
            cache_status(P::Hit, Some(42), false, false, None),
            "verge; hit; ttl=42"
        );
        assert_eq!(
            cache_status(P::Hit, Some(9), false, false, Some("early-refresh")),
            "verge; hit; ttl=9; detail=early-refresh"
        );
        assert_eq!(
            cache_status(P::Miss, None, true, false, None),
            "verge; fwd=uri-miss; stored"
        );
        assert_eq!(
            cache_status(P::Expired, None, true, false, None),
            "verge; fwd=stale; stored"
        );
        assert_eq!(
            cache_status(P::Revalidated, None, true, false, None),
            "verge; fwd=stale; fwd-status=304; stored"
        );
        // a fresh entry the request's own directives refused (RFC 9211 §2.2)
        assert_eq!(
            cache_status(P::Expired, None, true, true, None),
            "verge; fwd=request; stored"
        );
        assert_eq!(
            cache_status(P::Revalidated, None, true, true, None),
            "verge; fwd=request; fwd-status=304; stored"
        );
        assert_eq!(
            cache_status(
                P::Disabled(NoCacheReason::OriginNotCache),
                None,
                false,
                true,
                None
            ),
            "verge; fwd=request"
        );
        // served from the cache after all: no forward to name
        assert_eq!(
            cache_status(P::StaleUpdating, Some(-3), false, true, None),
            "verge; hit; fwd=stale; ttl=-3"
        );
        assert_eq!(
            cache_status(P::Bypass, None, false, false, Some("cookie")),
            "verge; fwd=bypass; detail=cookie"
        );
    }
}
