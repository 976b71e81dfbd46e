//! The pass lane is a shortcut, never a second opinion: the same requests on routes that do not
//! cache, sent to a verge with the lane on and to one with `cache.pass_lane: false`, get the
//! same bytes back, except `Date` (each writer stamps the time it sends), and the two origins
//! read the same request heads, byte for byte. The origin's answers cover every framing, an
//! interim head, hop-by-hop fields, a status verge refuses, a cut body and a dead backend.

use crate::support::raw_origin::{good, Asked, RawOrigin, Script, Step};
use crate::support::wire::{dechunk, head_end, Conn};
use crate::support::{Cache, Config, Pool, Route, Verge};
use std::time::Duration;

/// The origin's answer for `path`: `head` (its framing included), then `body` unless the
/// request was `HEAD`, then whatever `after` says.
fn answer(head: &'static str, body: &'static str, after: Option<Step>) -> Script {
    Script::new(move |asked: &Asked| {
        let mut steps = vec![Step::Write(head.as_bytes().to_vec())];
        if asked.method != "HEAD" && !body.is_empty() {
            steps.push(Step::Write(body.as_bytes().to_vec()));
        }
        steps.extend(after.clone());
        steps
    })
}

/// Script every path the test asks for on `o`.
fn script(o: &RawOrigin) {
    let big: &'static str = Box::leak("0123456789abcdef".repeat(6_000).into_boxed_str());
    let big_head: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .into_boxed_str(),
    );
    let scripts: [(&str, Script); 12] = [
        (
            "/cl",
            answer(
                "HTTP/1.1 200 OK\r\nX-Case: Kept\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nServer: origin\r\nContent-Length: 5\r\n\r\n",
                "hello",
                None,
            ),
        ),
        (
            "/chunked",
            answer(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n",
                "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                None,
            ),
        ),
        (
            "/close",
            answer(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
                "until the origin closes",
                Some(Step::Close),
            ),
        ),
        (
            "/old",
            answer("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", "old", Some(Step::Close)),
        ),
        ("/empty", answer("HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", "", None)),
        (
            "/missing",
            answer(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\n",
                "nope",
                None,
            ),
        ),
        (
            "/hop",
            answer(
                "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-End: 2\r\nContent-Length: 2\r\n\r\n",
                "ok",
                Some(Step::Close),
            ),
        ),
        (
            "/early",
            answer(
                "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                "ok",
                None,
            ),
        ),
        (
            "/weird",
            answer("HTTP/1.1 999 Weird\r\nContent-Length: 0\r\n\r\n", "", None),
        ),
        (
            "/cut",
            answer(
                "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
                "only ten b",
                Some(Step::Close),
            ),
        ),
        ("/reset", Script::new(|_: &Asked| vec![Step::Reset])),
        ("/big", answer(big_head, big, None)),
    ];
    for (path, script) in scripts {
        o.set(path, script);
    }
}

/// A verge with the pass lane on or off, in front of its own origin.
async fn verge(lane: bool) -> (Verge, RawOrigin) {
    let o = RawOrigin::start().await;
    script(&o);
    let v = Verge::start(
        &Config::new()
            .cache(Cache::new().set("pass_lane", if lane { "true" } else { "false" }))
            .pool(Pool::new("p", &[o.addr]))
            .pool(Pool::new("dead", &["127.0.0.1:9"]))
            .route(Route::to("dead").name("dead").path("/dead"))
            .route(
                Route::to("p")
                    .name("edited")
                    .path("/edit")
                    .strip_prefix()
                    .set(
                        "request_headers",
                        r#"{set: {x-edge: verge, x-client: "${client_ip}"}, remove: [x-debug]}"#,
                    )
                    .set("rewrite", r#"{host: "Origin.Internal:8443"}"#),
            )
            .route(Route::to("p").name("pass")),
    )
    .await;
    (v, o)
}

/// The raw response to `request` on a new connection, every `Date` line taken out: the bytes a
/// client reads until the response is whole or the connection closes. A chunked body is shown
/// decoded (where one chunk ends and the next starts depends on how the origin's bytes were
/// read), with whether its last chunk arrived.
async fn exchange(v: &Verge, request: &str) -> String {
    let head_only = request.starts_with("HEAD ");
    let mut c = Conn::open(v.http, None).await;
    c.send(request.as_bytes()).await;
    let parsed = c.read_response(Duration::from_secs(10), head_only).await;
    if !parsed.is_complete() {
        c.read_to_close(Duration::from_secs(10)).await;
    }
    let mut bytes = c.bytes.clone();
    if let Some(end) = head_end(&bytes) {
        let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
        if !head_only && head.contains("\r\ntransfer-encoding: chunked\r\n") {
            let (body, whole) = dechunk(&bytes[end..]);
            bytes.truncate(end);
            bytes.extend_from_slice(format!("[chunked, whole: {whole}]").as_bytes());
            bytes.extend_from_slice(&body);
        }
    }
    String::from_utf8_lossy(&bytes)
        .split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Every path the requests below reach at the origin.
const PATHS: [&str; 12] = [
    "/cl", "/chunked", "/close", "/old", "/empty", "/missing", "/hop", "/early", "/weird", "/cut",
    "/reset", "/big",
];

#[tokio::test]
async fn pass_lane_parity() {
    let (on, on_origin) = verge(true).await;
    let (off, off_origin) = verge(false).await;
    let mut requests: Vec<String> = PATHS
        .iter()
        // (an HTTP/1.0 answer with a length is read to the connection's close: ask for it)
        .map(|p| match *p {
            "/old" => format!("GET {p} HTTP/1.1\r\nHost: x.test\r\nConnection: close\r\n\r\n"),
            _ => format!("GET {p} HTTP/1.1\r\nHost: x.test\r\n\r\n"),
        })
        .collect();
    requests.extend(
        [
            "HEAD /cl HTTP/1.1\r\nHost: x.test\r\n\r\n",
            "HEAD /chunked HTTP/1.1\r\nHost: x.test\r\n\r\n",
            "GET /cl HTTP/1.1\r\nHost: X.Test:80\r\nConnection: close\r\n\r\n",
            "GET /cl?b=2&a=1 HTTP/1.1\r\nhost: x.test\r\nAccept: */*\r\nUser-Agent: t/1\r\n\r\n",
            // forwarding fields no client may set, and hop-by-hop ones
            "GET /cl HTTP/1.1\r\nHost: x.test\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nVia: 1.1 evil\r\n\r\n",
            "GET /cl HTTP/1.1\r\nHost: x.test\r\nConnection: keep-alive\r\nKeep-Alive: timeout=1\r\nTE: trailers\r\nProxy-Connection: x\r\n\r\n",
            // the route's edits: a stripped prefix, a field set and one removed, the host rewritten
            "GET /edit/cl HTTP/1.1\r\nHost: x.test\r\nX-Debug: 1\r\nX-Edge: client\r\n\r\n",
            // a backend nobody listens on
            "GET /dead/x HTTP/1.1\r\nHost: x.test\r\n\r\n",
        ]
        .map(String::from),
    );
    for request in &requests {
        let (a, b) = (exchange(&on, request).await, exchange(&off, request).await);
        assert_eq!(a, b, "{request:?}: lane on, then off");
        assert!(a.starts_with("HTTP/1."), "{request:?}: {a}");
    }
    for path in PATHS {
        assert_eq!(
            on_origin.heads(path),
            off_origin.heads(path),
            "{path}: the heads the origin read"
        );
    }
    assert!(!on_origin.heads("/cl").is_empty());
    let lane_on = on.metrics().await.sum("verge_fast_passes_total", &[]);
    assert!(
        lane_on >= requests.len() as f64 - 1.0,
        "the lane proxied them: {lane_on} of {}",
        requests.len()
    );
    let lane_off = off.metrics().await.sum("verge_fast_passes_total", &[]);
    assert_eq!(lane_off, 0.0, "pass_lane: false");
    // both count alike in the request metrics
    let (a, b) = (on.metrics().await, off.metrics().await);
    for status in ["200", "204", "404", "502"] {
        let series = "verge_requests_total";
        assert_eq!(
            a.sum(series, &[("status", status)]),
            b.sum(series, &[("status", status)]),
            "{series} {{status={status}}}"
        );
    }
}

#[tokio::test]
async fn the_pass_lane_keeps_origin_connections_and_drops_those_the_origin_closed() {
    let o = RawOrigin::start().await;
    // a good answer, after which the origin closes the connection verge may have kept
    o.set(
        "/bye",
        Script::new(|asked: &Asked| {
            let mut steps = good(asked);
            steps.push(Step::Close);
            steps
        }),
    );
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p")),
    )
    .await;
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x.test\r\n\r\n");
    for _ in 0..5 {
        let answer = exchange(&v, &get("/keep")).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
    assert_eq!(o.connections(), 1, "five requests, one origin connection");
    assert!(exchange(&v, &get("/bye"))
        .await
        .starts_with("HTTP/1.1 200 "));
    // the kept connection is closed now: the next request takes a new one, without an error
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(exchange(&v, &get("/keep"))
        .await
        .starts_with("HTTP/1.1 200 "));
    assert_eq!(o.connections(), 2);
    let m = v.metrics().await;
    assert_eq!(m.sum("verge_upstream_errors_total", &[]), 0.0);
    assert_eq!(m.sum("verge_fast_passes_total", &[]), 7.0);
}
