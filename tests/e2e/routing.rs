//! Routing by exact host, wildcard host and longest path prefix; forwarding hygiene.

use crate::support::fetch::send;
use crate::support::{get, Config, Origin, Pool, Route, Verge};

#[tokio::test]
async fn routes_by_host_wildcard_and_longest_prefix() {
    let (www, wild, api, any) = (
        Origin::start("www").await,
        Origin::start("wild").await,
        Origin::start("api").await,
        Origin::start("any").await,
    );
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("www", &[www.addr]))
            .pool(Pool::new("wild", &[wild.addr]))
            .pool(Pool::new("api", &[api.addr]))
            .pool(Pool::new("any", &[any.addr]))
            .route(Route::to("www").hosts(&["www.example.com"]))
            .route(Route::to("wild").hosts(&["*.example.com"]))
            .route(
                Route::to("api")
                    .hosts(&["www.example.com"])
                    .path("/api")
                    .strip_prefix(),
            )
            .route(Route::to("any")),
    )
    .await;

    assert_eq!(get(&v, "www.example.com", "/").await.origin(), "www");
    assert_eq!(
        get(&v, "WWW.Example.com:8080", "/page").await.origin(),
        "www"
    );
    assert_eq!(get(&v, "img.example.com", "/").await.origin(), "wild");
    assert_eq!(get(&v, "a.b.example.com", "/").await.origin(), "wild");
    assert_eq!(
        get(&v, "example.com", "/").await.origin(),
        "any",
        "bare domain is not *.example.com"
    );
    assert_eq!(get(&v, "other.org", "/").await.origin(), "any");

    let g = get(&v, "www.example.com", "/api/users?id=7").await;
    assert_eq!((g.status, g.origin()), (200, "api"));
    assert!(
        g.body.contains("uri=/users?id=7"),
        "prefix stripped upstream: {}",
        g.body
    );
    assert_eq!(
        get(&v, "www.example.com", "/apix").await.origin(),
        "www",
        "prefix matches whole segments"
    );
    assert_eq!(api.hits("/users"), 1);
    assert_eq!(www.hits("/apix"), 1);
}

#[tokio::test]
async fn unknown_host_is_404_and_reaches_no_origin() {
    let o = Origin::start("o").await;
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").hosts(&["known.com"])),
    )
    .await;
    let g = get(&v, "unknown.com", "/").await;
    assert_eq!(g.status, 404);
    assert!(
        g.body.contains("no route for host \"unknown.com\""),
        "{}",
        g.body
    );
    assert_eq!(get(&v, "bad host!", "/").await.status, 400);
    assert_eq!(o.total(), 0);
}

#[tokio::test]
async fn forwarding_headers_are_verges_own_and_header_ops_apply() {
    let o = Origin::start("o").await;
    let v = Verge::start(
        &Config::new().pool(Pool::new("p", &[o.addr])).route(
            Route::to("p")
                .hosts(&["a.com"])
                .set(
                    "request_headers",
                    "{set: {x-edge: verge}, remove: [x-debug]}",
                )
                .set(
                    "response_headers",
                    "{set: {x-served: edge}, remove: [x-origin]}",
                ),
        ),
    )
    .await;
    let sent = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.com"),
        ("x-original-url", "/admin"),
        ("x-debug", "1"),
    ];
    let r = send(v.http, reqwest::Method::GET, Some("a.com"), "/f", &sent).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-served"), Some("edge"));
    assert!(r.header("x-origin").is_none(), "response header removed");
    let seen = o.last_seen().expect("origin saw the request");
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-host"), Some("a.com"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("via"), Some("1.1 verge"));
    assert_eq!(seen.header("x-original-url"), None);
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-edge"), Some("verge"));
}
