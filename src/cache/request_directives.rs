//! Request cache directives (RFC 9111 §5.2.1): what a client allows the cache to serve, as pure
//! functions from the request and a stored entry's freshness to a verdict.

use super::request_view::RequestView;
use pingora_cache::cache_control::{CacheControl, DirectiveKey};
use pingora_http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// `max-stale`: how much staleness the client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxStale {
    /// `max-stale` without a value: any staleness.
    Any,
    /// `max-stale=N`: stale by at most N seconds.
    Within(Duration),
}

/// The request directives verge obeys. Invalid values (`max-age=abc`) count as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestDirectives {
    /// `no-cache` (or `Pragma: no-cache` without `Cache-Control`): revalidate before serving.
    pub no_cache: bool,
    /// `max-age=N`: do not serve a stored response older than N without revalidation.
    pub max_age: Option<Duration>,
    /// `min-fresh=N`: the response must stay fresh for at least N more seconds.
    pub min_fresh: Option<Duration>,
    /// `max-stale[=N]`: stale responses are acceptable (within N).
    pub max_stale: Option<MaxStale>,
    /// `only-if-cached`: never contact the origin; 504 when nothing stored is usable.
    pub only_if_cached: bool,
    /// Not a directive: the request carries `Authorization` on a route that is not `public`
    /// ([`crate::cache::rfc9111::credentials_apply`]), so only a stored response marked for
    /// sharing may answer it (RFC 9111 §3.5).
    pub credentials: bool,
}

impl RequestDirectives {
    /// Nothing the cache must act on.
    pub fn is_empty(&self) -> bool {
        *self == RequestDirectives::default()
    }

    /// The directives without those that make the cache revalidate (`no-cache`, `max-age`,
    /// `min-fresh`), for routes that do not let clients force origin fetches. `max-stale` and
    /// `only-if-cached` stay: they never add origin traffic.
    pub fn without_revalidation(self) -> RequestDirectives {
        RequestDirectives {
            no_cache: false,
            max_age: None,
            min_fresh: None,
            ..self
        }
    }
}

fn delta_seconds(cc: &CacheControl, name: &str) -> Option<Duration> {
    let value = cc
        .directives
        .get(&DirectiveKey::from_lowercase(name))?
        .as_ref()?;
    value
        .parse_as_delta_seconds()
        .ok()
        .map(|s| Duration::from_secs(u64::from(s)))
}

/// Read the request's cache directives. `Pragma: no-cache` counts only when the request has no
/// `Cache-Control` (RFC 9111 §5.4).
pub fn parse(req: &RequestView<'_>) -> RequestDirectives {
    let Some(cc) = req.cache_control() else {
        let pragma_no_cache = req
            .values("pragma")
            .flat_map(|v| v.split(|b| *b == b','))
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-cache"));
        return RequestDirectives {
            no_cache: pragma_no_cache,
            ..RequestDirectives::default()
        };
    };
    let max_stale = match cc
        .directives
        .get(&DirectiveKey::from_lowercase("max-stale"))
    {
        None => None,
        Some(None) => Some(MaxStale::Any),
        Some(Some(_)) => delta_seconds(&cc, "max-stale").map(MaxStale::Within),
    };
    RequestDirectives {
        // `no-cache` takes no argument in a request; accept one anyway rather than ignore it
        no_cache: cc.has_directive(&DirectiveKey::NoCache),
        max_age: delta_seconds(&cc, "max-age"),
        min_fresh: delta_seconds(&cc, "min-fresh"),
        max_stale,
        only_if_cached: cc.only_if_cached(),
        credentials: false,
    }
}

/// The directives a request on a route with cache `rules` brings to the cache: all of them
/// when the route lets clients force revalidation (`client_revalidation`), else only those that
/// never add origin traffic; and whether its credentials apply.
pub fn for_route(req: &RequestView<'_>, rules: &crate::config::RouteCache) -> RequestDirectives {
    let parsed = RequestDirectives {
        credentials: crate::cache::rfc9111::credentials_apply(req, rules),
        ..parse(req)
    };
    if rules.client_revalidation {
        parsed
    } else {
        parsed.without_revalidation()
    }
}

/// What to do with a stored response the request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitVerdict {
    /// The request adds nothing: fresh is served, stale follows the usual rules (SWR, refetch).
    AsStored,
    /// The client does not accept it without validation: revalidate with the origin, and do not
    /// fall back to serving it stale.
    Revalidate,
    /// Stale, but within what the client accepts (`max-stale`): serve it as it is.
    ServeStale,
}

/// Whether the stored response forbids serving it stale whatever the client says: a shared
/// cache must revalidate `no-cache`, `must-revalidate` and `proxy-revalidate` responses
/// (RFC 9111 §5.2.2.1, §5.2.2.4, §5.2.2.8), and `s-maxage` implies `proxy-revalidate`. The
/// directives are those of the field that governs this cache: `CDN-Cache-Control` (else
/// `Surrogate-Control`) replaces `Cache-Control` entirely when present (RFC 9213 §2.1), so a
/// `must-revalidate` given only there counts, and one given only in `Cache-Control` does not.
pub fn forbids_stale(stored: &ResponseHeader) -> bool {
    use crate::cache::rfc9111::{governing_cache_control, refuses_stale};
    governing_cache_control(stored).is_some_and(|cc| refuses_stale(&cc))
}

/// Decide how a stored entry may answer a request with these directives. `age` is the entry's
/// current age, `fresh_until` when it stops being fresh, `forbids_stale` what
/// [`forbids_stale`] says about its headers.
pub fn hit_verdict(
    d: &RequestDirectives,
    age: Duration,
    fresh_until: SystemTime,
    forbids_stale: bool,
    now: SystemTime,
) -> HitVerdict {
    if d.no_cache || d.max_age.is_some_and(|max| age > max) {
        return HitVerdict::Revalidate;
    }
    match fresh_until.duration_since(now) {
        // fresh (the boundary instant counts as stale, as in `CacheMeta::is_fresh`)
        Ok(left) if !left.is_zero() => {
            if d.min_fresh.is_some_and(|min| left < min) {
                HitVerdict::Revalidate
            } else {
                HitVerdict::AsStored
            }
        }
        _ => {
            let stale_for = now.duration_since(fresh_until).unwrap_or(Duration::ZERO);
            let accepted = match d.max_stale {
                None => false,
                Some(MaxStale::Any) => true,
                Some(MaxStale::Within(n)) => stale_for <= n,
            };
            if accepted && !forbids_stale && d.min_fresh.is_none() {
                HitVerdict::ServeStale
            } else {
                HitVerdict::AsStored
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_http::RequestHeader;

    fn parse_head(req: &RequestHeader) -> RequestDirectives {
        parse(&RequestView::from_head(req))
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).expect("req");
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).expect("h");
        }
        r
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn parses_each_directive() {
        let d = parse_head(&req(&[(
            "cache-control",
            "max-age=5, min-fresh=3, max-stale=10, only-if-cached",
        )]));
        assert_eq!(
            d,
            RequestDirectives {
                no_cache: false,
                max_age: Some(secs(5)),
                min_fresh: Some(secs(3)),
                max_stale: Some(MaxStale::Within(secs(10))),
                only_if_cached: true,
                credentials: false,
            }
        );
        let d = parse_head(&req(&[("cache-control", "No-Cache, max-stale")]));
        assert!(d.no_cache);
        assert_eq!(d.max_stale, Some(MaxStale::Any));
        assert!(parse_head(&req(&[])).is_empty());
        // invalid numbers count as absent, not as zero
        let d = parse_head(&req(&[("cache-control", "max-age=abc, max-stale=-1")]));
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn pragma_counts_only_without_cache_control() {
        assert!(parse_head(&req(&[("pragma", "no-cache")])).no_cache);
        assert!(parse_head(&req(&[("pragma", "foo, No-Cache")])).no_cache);
        let d = parse_head(&req(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-age=60"),
        ]));
        assert!(!d.no_cache);
        assert_eq!(d.max_age, Some(secs(60)));
    }

    #[test]
    fn verdicts_for_fresh_entries() {
        let now = SystemTime::now();
        let fresh_until = now + secs(30);
        let v = |cc: &str, age: u64| {
            hit_verdict(
                &parse_head(&req(&[("cache-control", cc)])),
                secs(age),
                fresh_until,
                false,
                now,
            )
        };
        assert_eq!(v("foo", 10), HitVerdict::AsStored);
        assert_eq!(v("no-cache", 0), HitVerdict::Revalidate);
        assert_eq!(v("max-age=0", 1), HitVerdict::Revalidate);
        assert_eq!(v("max-age=10", 10), HitVerdict::AsStored);
        assert_eq!(v("max-age=10", 11), HitVerdict::Revalidate);
        assert_eq!(v("min-fresh=20", 0), HitVerdict::AsStored);
        assert_eq!(v("min-fresh=31", 0), HitVerdict::Revalidate);
        let pragma = parse_head(&req(&[("pragma", "no-cache")]));
        assert_eq!(
            hit_verdict(&pragma, secs(0), fresh_until, false, now),
            HitVerdict::Revalidate
        );
    }

    #[test]
    fn verdicts_for_stale_entries() {
        let now = SystemTime::now();
        let fresh_until = now - secs(20);
        let v = |cc: &str, forbids: bool| {
            hit_verdict(
                &parse_head(&req(&[("cache-control", cc)])),
                secs(80),
                fresh_until,
                forbids,
                now,
            )
        };
        assert_eq!(v("foo", false), HitVerdict::AsStored);
        assert_eq!(v("max-stale", false), HitVerdict::ServeStale);
        assert_eq!(v("max-stale=20", false), HitVerdict::ServeStale);
        assert_eq!(v("max-stale=19", false), HitVerdict::AsStored);
        // the origin's must-revalidate beats the client's max-stale
        assert_eq!(v("max-stale", true), HitVerdict::AsStored);
        // max-age still limits what max-stale allows
        assert_eq!(v("max-stale, max-age=60", false), HitVerdict::Revalidate);
        assert_eq!(v("max-stale, max-age=100", false), HitVerdict::ServeStale);
        // min-fresh cannot be met by a stale response
        assert_eq!(v("max-stale, min-fresh=1", false), HitVerdict::AsStored);
    }

    #[test]
    fn routes_may_ignore_client_revalidation() {
        let d = parse_head(&req(&[(
            "cache-control",
            "no-cache, max-age=0, min-fresh=5, max-stale, only-if-cached",
        )]))
        .without_revalidation();
        assert_eq!(
            d,
            RequestDirectives {
                max_stale: Some(MaxStale::Any),
                only_if_cached: true,
                ..RequestDirectives::default()
            }
        );
        let now = SystemTime::now();
        let d = parse_head(&req(&[("pragma", "no-cache")])).without_revalidation();
        assert_eq!(
            hit_verdict(&d, secs(5), now + secs(5), false, now),
            HitVerdict::AsStored
        );
    }

    #[test]
    fn stored_headers_that_forbid_stale() {
        let resp = |cc: &str| {
            let mut h = ResponseHeader::build(200, None).expect("h");
            h.insert_header("cache-control", cc).expect("h");
            h
        };
        assert!(forbids_stale(&resp("max-age=5, must-revalidate")));
        assert!(forbids_stale(&resp("no-cache")));
        assert!(forbids_stale(&resp("proxy-revalidate")));
        assert!(forbids_stale(&resp("s-maxage=5")));
        assert!(!forbids_stale(&resp("max-age=5")));
        assert!(!forbids_stale(
            &ResponseHeader::build(200, None).expect("h")
        ));
    }

    #[test]
    fn the_targeted_field_decides_whether_stale_may_be_served() {
        let resp = |fields: &[(&str, &str)]| {
            let mut h = ResponseHeader::build(200, None).expect("h");
            for (k, v) in fields {
                h.append_header(k.to_string(), *v).expect("h");
            }
            h
        };
        // must-revalidate only in CDN-Cache-Control: it governs this cache
        assert!(forbids_stale(&resp(&[
            ("cache-control", "max-age=5"),
            ("cdn-cache-control", "max-age=5, must-revalidate"),
        ])));
        assert!(forbids_stale(&resp(&[
            ("cache-control", "max-age=5"),
            ("cdn-cache-control", "proxy-revalidate"),
        ])));
        // ... or in Surrogate-Control when there is no CDN-Cache-Control
        assert!(forbids_stale(&resp(&[
            ("cache-control", "max-age=5"),
            ("surrogate-control", "max-age=5, must-revalidate"),
        ])));
        // must-revalidate only in Cache-Control: replaced by the targeted field (RFC 9213 §2.1)
        assert!(!forbids_stale(&resp(&[
            ("cache-control", "max-age=5, must-revalidate"),
            ("cdn-cache-control", "max-age=5"),
        ])));
        // CDN-Cache-Control wins over Surrogate-Control
        assert!(!forbids_stale(&resp(&[
            ("surrogate-control", "must-revalidate"),
            ("cdn-cache-control", "max-age=5"),
        ])));
        let now = SystemTime::now();
        let d = parse_head(&req(&[("cache-control", "max-stale")]));
        let stored = resp(&[
            ("cache-control", "max-age=1"),
            ("cdn-cache-control", "max-age=1, must-revalidate"),
        ]);
        assert_eq!(
            hit_verdict(&d, secs(10), now - secs(9), forbids_stale(&stored), now),
            HitVerdict::AsStored
        );
    }
}
