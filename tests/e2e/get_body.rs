//! A body sent with GET or HEAD (`routes[].get_body`): dropped by default (the origin gets the
//! request with `Content-Length: 0`, and the body is never read as a second request, on a hit,
//! a miss or a HEAD), refused with 400 and a closed connection on `reject` routes, and
//! forwarded on `forward` routes (which may not cache).

use crate::support::wire::{raw, Conn};
use crate::support::{Config, Origin, Pool, Route, RouteCache, Verge};
use std::time::Duration;

async fn verge_for(o: &Origin) -> Verge {
    Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").hosts(&["c.test"]).cache(RouteCache::new()))
            .route(Route::to("p").hosts(&["r.test"]).get_body("reject"))
            .route(Route::to("p").hosts(&["f.test"]).get_body("forward")),
    )
    .await
}

/// A request to `c.test` that hides a whole second request in its body.
fn smuggling(method: &str, path: &str) -> String {
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: c.test\r\n\r\n";
    format!(
        "{method} {path} HTTP/1.1\r\nHost: c.test\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    )
}

/// Send `first`, read its whole response (`head_only` for HEAD), then send `GET /next` on the
/// same connection; returns both responses as text.
async fn then_next(v: &Verge, first: &str, head_only: bool) -> (String, String) {
    let mut c = Conn::open(v.http, None).await;
    c.send(first.as_bytes()).await;
    let answered = c
        .read_until(Duration::from_secs(10), |c| {
            c.closed || c.response(head_only).is_complete()
        })
        .await;
    assert!(answered || c.closed, "first response in time");
    let first_response = String::from_utf8_lossy(&c.bytes).into_owned();
    c.bytes.clear();
    let next = b"GET /next HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n";
    if c.try_send(next).await {
        c.read_to_close(Duration::from_secs(10)).await;
    }
    (
        first_response,
        String::from_utf8_lossy(&c.bytes).into_owned(),
    )
}

#[tokio::test]
async fn get_and_head_bodies_are_dropped_and_never_read_as_a_request() {
    let o = Origin::start("o").await;
    o.set_headers("/hit", &[("cache-control", "max-age=600")]);
    let v = verge_for(&o).await;

    // a miss: the origin gets the request without the body
    let (first, next) = then_next(&v, &smuggling("GET", "/hit"), false).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    assert!(next.starts_with("HTTP/1.1 200 "), "same connection: {next}");
    let seen = o.seen_for("/hit");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 0, "no body forwarded");
    assert_eq!(seen[0].header("content-length"), Some("0"));
    assert_eq!(seen[0].header("transfer-encoding"), None);

    // a hit (answered from cache): the body is never parsed as a request; Pingora closes the
    // connection after the response rather than draining the body, and says so
    let (first, next) = then_next(&v, &smuggling("GET", "/hit"), false).await;
    assert!(first.contains("cache-status: verge; hit"), "{first}");
    if first.contains("Connection: close") {
        assert_eq!(next, "", "closed as announced");
    } else {
        assert!(next.starts_with("HTTP/1.1 200 "), "same connection: {next}");
    }
    // a HEAD (a miss, forwarded as GET)
    let (first, next) = then_next(&v, &smuggling("HEAD", "/head"), true).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    assert!(next.starts_with("HTTP/1.1 200 "), "same connection: {next}");

    // a chunked body
    let chunked = "GET /chunked HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (first, next) = then_next(&v, chunked, false).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    assert!(next.starts_with("HTTP/1.1 200 "), "same connection: {next}");
    let seen = o.seen_for("/chunked");
    assert_eq!(seen[0].body_len, 0);
    assert_eq!(seen[0].header("transfer-encoding"), None);

    assert_eq!(o.hits("/smuggled"), 0, "a body never became a request");
    assert_eq!(o.hits("/hit"), 1);
    assert!(o.hits("/next") >= 3, "{}", o.hits("/next"));
}

#[tokio::test]
async fn reject_routes_answer_400_and_close() {
    let o = Origin::start("o").await;
    let v = verge_for(&o).await;
    let wait = Duration::from_secs(5);
    let req = "GET /r HTTP/1.1\r\nHost: r.test\r\nContent-Length: 5\r\n\r\nhello";
    let out = raw(v.http, req.as_bytes(), wait).await;
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert!(
        out.contains("verge: no body allowed with GET or HEAD"),
        "{out}"
    );
    assert!(!out.ends_with("<no close>"), "closed after the 400: {out}");
    assert_eq!(o.total(), 0, "nothing reached the origin");
    // without a body the same route is served
    let out = raw(
        v.http,
        b"GET /r HTTP/1.1\r\nHost: r.test\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    let (_, metrics) = v.admin_get("/metrics").await;
    assert!(
        metrics.contains("verge_requests_rejected_total{reason=\"get_body\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn forward_routes_pass_the_body_on() {
    let o = Origin::start("o").await;
    let v = verge_for(&o).await;
    let out = raw(
        v.http,
        b"GET /f HTTP/1.1\r\nHost: f.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert_eq!(o.seen_for("/f")[0].body_len, 5);
}
