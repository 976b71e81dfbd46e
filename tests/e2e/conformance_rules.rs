//! The RFC 9111 rules the HTTP caching test suite (`scripts/conformance`) grades, as a client
//! and a counting origin see them through verge: how `Age` is read, when `CDN-Cache-Control`
//! governs and that it reaches the client, responses to requests with credentials, error
//! statuses with explicit freshness, stale answers when the origin is gone, the date formats of
//! `Expires`, and how `Vary` compares request fields.

use crate::support::{client, Config, Origin, Pool, RawOrigin, Route, Step, Verge};

/// verge with one catch-all route to `o` whose `cache:` block is `route_cache`.
async fn verge_for(o: &Origin, route_cache: &str) -> Verge {
    Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").set("cache", route_cache)),
    )
    .await
}

/// What a client got: status, headers, body.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }
}

/// GET `path` (host `c.test`) with extra request headers.
async fn get(v: &Verge, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = client().get(v.url(path)).header("host", "c.test");
    for (k, val) in headers {
        req = req.header(*k, *val);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Reply {
        status,
        headers,
        body: r.text().await.unwrap_or_default(),
    }
}

/// Fetch `path` twice; true when the second answer came from the cache (same body, one
/// origin request).
async fn reused(v: &Verge, o: &Origin, path: &str) -> bool {
    let first = get(v, path, &[]).await;
    let second = get(v, path, &[]).await;
    assert_eq!(first.status, second.status, "{path}");
    let hits = o.hits(path);
    assert!((1..=2).contains(&hits), "{path}: {hits} origin requests");
    let from_cache = hits == 1;
    assert_eq!(from_cache, first.body == second.body, "{path}");
    from_cache
}

#[tokio::test]
async fn an_invalid_age_is_ignored_and_the_first_member_counts() {
    let o = Origin::start("o").await;
    /// A path, the `Age` lines its response carries, and whether it is fresh.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
    let cases: [Case; 8] = [
        ("/nonnumeric", &[("age", "abc")], true),
        ("/negative", &[("age", "-7200")], true),
        ("/fraction", &[("age", "7200.0")], true),
        ("/list-old-first", &[("age", "7200, 0")], false),
        ("/list-young-first", &[("age", "0, 7200")], true),
        ("/lines-old-first", &[("age", "7200"), ("age", "0")], false),
        ("/lines-young-first", &[("age", "0"), ("age", "7200")], true),
        ("/huge", &[("age", "2147483648")], false),
    ];
    for (path, age, _) in &cases {
        let mut h = vec![("cache-control", "max-age=3600")];
        h.extend_from_slice(age);
        o.set_headers(path, &h);
    }
    let v = verge_for(&o, "{}").await;
    for (path, age, fresh) in cases {
        assert_eq!(reused(&v, &o, path).await, fresh, "{path}: Age {age:?}");
    }
}

#[tokio::test]
async fn an_unusable_cdn_cache_control_is_ignored_and_a_usable_one_reaches_the_client() {
    let o = Origin::start("o").await;
    // not a Structured Fields dictionary, or max-age not an Integer: Cache-Control governs
    for (path, cdn) in [
        ("/unknown-type", "max-age=10000, &&&&&"),
        ("/wrong-type", "max-age=\"10000\""),
        ("/space", "max-age =10000"),
    ] {
        o.set_headers(
            path,
            &[("cdn-cache-control", cdn), ("cache-control", "no-store")],
        );
    }
    // valid: it governs in place of Cache-Control, and travels on to the client
    o.set_headers(
        "/valid",
        &[
            ("cdn-cache-control", "foobar, max-age=10000"),
            ("cache-control", "no-store"),
        ],
    );
    o.set_headers(
        "/private",
        &[
            ("cdn-cache-control", "private"),
            ("cache-control", "max-age=10000"),
        ],
    );
    let v = verge_for(&o, "{}").await;
    for path in ["/unknown-type", "/wrong-type", "/space", "/private"] {
        assert!(!reused(&v, &o, path).await, "{path}");
    }
    assert!(reused(&v, &o, "/valid").await);
    let hit = get(&v, "/valid", &[]).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    assert_eq!(
        hit.header("cdn-cache-control"),
        Some("foobar, max-age=10000")
    );
    let passed = get(&v, "/private", &[]).await;
    assert_eq!(passed.header("cdn-cache-control"), Some("private"));
}

#[tokio::test]
async fn requests_with_authorization_share_only_responses_marked_for_sharing() {
    let o = Origin::start("o").await;
    let auth = [("authorization", "Bearer alice")];
    for (path, cc) in [
        ("/public", "public, max-age=600"),
        ("/must-revalidate", "max-age=600, must-revalidate"),
        ("/s-maxage", "s-maxage=600"),
        ("/plain", "max-age=600"),
    ] {
        o.set_headers(path, &[("cache-control", cc)]);
    }
    let v = verge_for(&o, "{}").await;
    // answers to a request with credentials are stored only when marked for sharing (§3.5)
    for path in ["/public", "/must-revalidate", "/s-maxage"] {
        let first = get(&v, path, &auth).await;
        assert!(
            first.cache_status().contains("stored"),
            "{path}: {}",
            first.cache_status()
        );
        let seen = o.seen_for(path);
        assert_eq!(
            seen[0].header("authorization"),
            Some("Bearer alice"),
            "{path}"
        );
        for headers in [&auth[..], &[]] {
            let again = get(&v, path, headers).await;
            assert_eq!(again.body, first.body, "{path} {headers:?}");
            assert!(
                again.cache_status().contains("hit"),
                "{path}: {}",
                again.cache_status()
            );
        }
        assert_eq!(o.hits(path), 1, "{path}");
    }
    let first = get(&v, "/plain", &auth).await;
    assert!(
        !first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    let second = get(&v, "/plain", &auth).await;
    assert_ne!(second.body, first.body);
    assert_eq!(o.hits("/plain"), 2);

    // a response stored for everyone without the marking: a request with credentials goes to
    // the origin (its answer may differ), and the stored copy stays for the others
    o.set_headers("/anon", &[("cache-control", "max-age=600")]);
    let anon = get(&v, "/anon", &[]).await;
    assert!(
        anon.cache_status().contains("stored"),
        "{}",
        anon.cache_status()
    );
    let authed = get(&v, "/anon", &auth).await;
    assert_ne!(authed.body, anon.body);
    assert_eq!(authed.cache_status(), "verge; fwd=request");
    assert_eq!(
        o.seen_for("/anon")[1].header("authorization"),
        Some("Bearer alice")
    );
    let later = get(&v, "/anon", &[]).await;
    assert_eq!(later.body, anon.body);
    assert!(
        later.cache_status().contains("hit"),
        "{}",
        later.cache_status()
    );
    assert_eq!(o.hits("/anon"), 2);
}

#[tokio::test]
async fn errors_are_stored_only_with_explicit_freshness_and_briefly() {
    let o = Origin::start("o").await;
    for (path, status) in [
        ("/500", 500),
        ("/503", 503),
        ("/bare-502", 502),
        ("/400", 400),
    ] {
        o.set_status(path, status);
    }
    o.set_headers("/500", &[("cache-control", "max-age=3600")]);
    o.set_headers("/503", &[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")]);
    o.set_headers("/400", &[("cache-control", "max-age=3600")]);
    let v = verge_for(&o, "{default_ttl: 60s}").await;
    for path in ["/500", "/503"] {
        assert!(reused(&v, &o, path).await, "{path}");
        let hit = get(&v, path, &[]).await;
        // the origin asked for an hour (or years): an error is kept a minute at most
        let ttl: i64 = hit
            .cache_status()
            .split("ttl=")
            .nth(1)
            .and_then(|t| t.split(';').next())
            .and_then(|t| t.trim().parse().ok())
            .expect("ttl");
        assert!((0..=60).contains(&ttl), "{path}: {}", hit.cache_status());
    }
    // no freshness from the origin: never stored, default_ttl or not
    assert!(!reused(&v, &o, "/bare-502").await);
    // an error a client can provoke is never stored (cache poisoning)
    assert!(!reused(&v, &o, "/400").await);
}

#[tokio::test]
async fn a_stale_copy_answers_when_the_origin_is_gone_unless_the_origin_forbade_it() {
    let o = Origin::start("o").await;
    let forbidding = [
        ("/must-revalidate", "max-age=1, must-revalidate"),
        ("/proxy-revalidate", "max-age=1, proxy-revalidate"),
        ("/no-cache", "max-age=1, no-cache"),
        ("/s-maxage", "s-maxage=1"),
    ];
    // every entry is stored already stale: an Age past its lifetime of 1 s
    o.set_headers("/plain", &[("cache-control", "max-age=1"), ("age", "2")]);
    o.set_headers("/5xx", &[("cache-control", "max-age=1"), ("age", "2")]);
    for (path, cc) in forbidding {
        o.set_headers(
            path,
            &[("cache-control", cc), ("etag", "\"e\""), ("age", "2")],
        );
    }
    let v = verge_for(&o, "{}").await;
    let plain = get(&v, "/plain", &[]).await;
    get(&v, "/5xx", &[]).await;
    for (path, _) in forbidding {
        get(&v, path, &[]).await;
    }
    // an origin that answers with an error is not "disconnected": its answer goes through
    o.set_status("/5xx", 503);
    assert_eq!(get(&v, "/5xx", &[]).await.status, 503);
    o.stop();
    let stale = get(&v, "/plain", &[]).await;
    assert_eq!(
        (stale.status, stale.body.as_str()),
        (200, plain.body.as_str())
    );
    assert!(
        stale.cache_status().contains("fwd=stale"),
        "{}",
        stale.cache_status()
    );
    for (path, cc) in forbidding {
        let g = get(&v, path, &[]).await;
        assert_eq!(g.status, 502, "{path} ({cc}): {}", g.body);
    }
}

/// The answer after the origin closed without a response, for a stale entry on a route whose
/// `cache:` block is `route_cache`; and how often the origin was tried.
async fn after_a_close(route_cache: &str) -> (u16, bool, u64) {
    use crate::support::{Fault, RawOrigin};
    let o = RawOrigin::start().await;
    // stored already stale: an Age past its max-age
    o.set_cache_control("max-age=1");
    o.set_age(Some(2));
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").set("cache", route_cache)),
    )
    .await;
    let first = get(&v, "/c", &[]).await;
    o.set("/c", Fault::CloseBeforeResponse);
    let g = get(&v, "/c", &[]).await;
    (g.status, g.body == first.body, o.hits("/c"))
}

#[tokio::test]
async fn a_stale_copy_answers_when_the_origin_closes_without_a_response() {
    // tried on the pooled connection, then once more on a fresh one, then the stale copy
    assert_eq!(after_a_close("{}").await, (200, true, 3));
    // unless the route turns it off
    let (status, _, tried) = after_a_close("{stale_if_disconnected: 0s}").await;
    assert_eq!((status, tried), (502, 3));
}

#[tokio::test]
async fn expires_is_read_in_every_date_format_recipients_accept() {
    let o = Origin::start("o").await;
    let cases = [
        ("/imf", "Thu, 18 Aug 2050 02:01:18 GMT", true),
        ("/asctime", "Thu Aug  8 02:01:18 2050", true),
        ("/rfc850", "Thursday, 18-Aug-50 02:01:18 GMT", true),
        ("/upper", "THU, 18 AUG 2050 02:01:18 GMT", true),
        ("/lower-zone", "Thu, 18 Aug 2050 02:01:18 gmt", true),
        ("/utc", "Thu, 18 Aug 2050 02:01:18 UTC", false),
        ("/two-digit-year", "Thu, 18 Aug 50 02:01:18 GMT", false),
        ("/dashes", "Thu, 18-Aug-2050 02:01:18 GMT", false),
        ("/one-digit-hour", "Thu, 18 Aug 2050 2:01:18 GMT", false),
    ];
    for (path, expires, _) in cases {
        o.set_headers(path, &[("expires", expires)]);
    }
    let v = verge_for(&o, "{}").await;
    for (path, expires, fresh) in cases {
        assert_eq!(
            reused(&v, &o, path).await,
            fresh,
            "{path}: Expires {expires:?}"
        );
    }
}

#[tokio::test]
async fn vary_ignores_whitespace_and_accept_language_order_and_case() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/lang",
        &[
            ("cache-control", "max-age=600"),
            ("vary", "Accept-Language"),
        ],
    );
    o.set_headers("/foo", &[("cache-control", "max-age=600"), ("vary", "Foo")]);
    let v = verge_for(&o, "{}").await;
    let lang = get(&v, "/lang", &[("accept-language", "en, de")]).await;
    for same in ["de, en", "eN, De", " en ,   de"] {
        let g = get(&v, "/lang", &[("accept-language", same)]).await;
        assert_eq!(g.body, lang.body, "{same:?}");
    }
    assert_eq!(o.hits("/lang"), 1);
    let other = get(&v, "/lang", &[("accept-language", "fr, en")]).await;
    assert_ne!(other.body, lang.body);
    assert_eq!(o.hits("/lang"), 2);

    let foo = get(&v, "/foo", &[("foo", "1,2")]).await;
    let spaced = get(&v, "/foo", &[("foo", " 1, 2 ")]).await;
    assert_eq!(spaced.body, foo.body);
    // the order of an unknown field's members is its own business
    let reordered = get(&v, "/foo", &[("foo", "2,1")]).await;
    assert_ne!(reordered.body, foo.body);
    assert_eq!(o.hits("/foo"), 2);
}

#[tokio::test]
async fn must_understand_lifts_no_store_only_for_statuses_verge_knows() {
    let o = Origin::start("o").await;
    let cc = ("cache-control", "max-age=3600, no-store, must-understand");
    o.set_headers("/known", &[cc]);
    o.set_headers("/unknown", &[cc]);
    o.set_status("/unknown", 599);
    o.set_headers(
        "/plain-no-store",
        &[("cache-control", "max-age=3600, no-store")],
    );
    let v = verge_for(&o, "{}").await;
    assert!(reused(&v, &o, "/known").await);
    assert!(!reused(&v, &o, "/unknown").await);
    assert!(!reused(&v, &o, "/plain-no-store").await);
}

/// An interim response (here 103 Early Hints) reaches the client on every cacheable miss, even
/// when the origin sends it in the same write as the final head, and it is never stored: the
/// hit that follows has no 103.
#[tokio::test]
async fn an_interim_response_reaches_the_client_on_every_cacheable_miss_and_is_never_stored() {
    use crate::support::raw_origin::Script;
    use crate::support::wire::Conn;
    use std::time::Duration;
    let o = RawOrigin::start().await;
    let v = crate::support::cached_verge(o.addr, crate::support::RouteCache::new()).await;
    let hints_then_final = Script::new(|_| {
        vec![Step::Write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Length: 5\r\n\r\nfinal"
                .to_vec(),
        )]
    });
    let ask = |path: String| async move {
        let mut c = Conn::open(v.http, None).await;
        c.send(format!("GET {path} HTTP/1.1\r\nHost: c.test\r\n\r\n").as_bytes())
            .await;
        let done = c
            .read_until(Duration::from_secs(5), |c| c.bytes.ends_with(b"final"))
            .await;
        let text = String::from_utf8_lossy(&c.bytes).into_owned();
        assert!(done, "{path}: no whole answer: {text}");
        text
    };
    // the race showed in about 4 of 10 misses; 25 in a row leaves no room for luck
    for i in 0..25 {
        let path = format!("/interim/{i}");
        o.set(&path, hints_then_final.clone());
        let miss = ask(path.clone()).await;
        assert!(
            miss.starts_with("HTTP/1.1 103 ") && miss.contains("rel=preload"),
            "{path}: the miss lost its 103: {miss}"
        );
        assert!(miss.contains("HTTP/1.1 200 OK"), "{miss}");
        let hit = ask(path.clone()).await;
        assert!(hit.starts_with("HTTP/1.1 200 OK"), "{path}: {hit}");
        assert!(!hit.contains(" 103 "), "{path}: the 103 was stored: {hit}");
        assert_eq!(o.hits(&path), 1, "{path}: the second answer is a hit");
    }
}
