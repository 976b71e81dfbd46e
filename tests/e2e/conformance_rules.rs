//! The RFC 9111 rules the HTTP caching test suite (`scripts/conformance`) grades, as a client
//! and a counting origin see them through verge: how `Age` is read, when `CDN-Cache-Control`
//! governs and that it reaches the client, responses to requests with credentials, error
//! statuses with explicit freshness, stale answers when the origin is gone, the date formats of
//! `Expires`, and how `Vary` compares request fields.

use crate::harness::{client, Verge};
use crate::origin::Origin;

/// verge with one catch-all route to `o` whose `cache:` block is `route_cache`.
async fn verge_for(o: &Origin, route_cache: &str) -> Verge {
    Verge::start(&format!(
        "pools: {{p: {{backends: [\"{}\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: p, cache: {route_cache}}}]\n",
        o.addr
    ))
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
    let cases: [(&str, &[(&str, &str)], bool); 8] = [
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
