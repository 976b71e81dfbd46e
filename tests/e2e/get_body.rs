//! A body sent with GET or HEAD (`routes[].get_body`): dropped by default (the origin gets the
//! request with `Content-Length: 0`, and the body is never read as a second request, on a hit,
//! a miss or a HEAD), refused with 400 and a closed connection on `reject` routes, and
//! forwarded on `forward` routes (which may not cache).

use crate::harness::{raw, Verge};
use crate::origin::Origin;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn verge_for(o: &Origin) -> Verge {
    Verge::start(&format!(
        "pools: {{p: {{backends: [\"{}\"]}}}}\n\
         routes:\n\
         \x20 - {{hosts: [c.test], pool: p, cache: {{}}}}\n\
         \x20 - {{hosts: [r.test], pool: p, get_body: reject}}\n\
         \x20 - {{hosts: [f.test], pool: p, get_body: forward}}\n",
        o.addr
    ))
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
    let mut s = tokio::net::TcpStream::connect(v.http)
        .await
        .expect("connect");
    s.write_all(first.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read_one = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if head_only || buf.len() >= end + 4 + len {
                    return;
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_one)
        .await
        .expect("first response in time");
    let first_response = String::from_utf8_lossy(&buf).into_owned();
    let mut rest = Vec::new();
    let next = b"GET /next HTTP/1.1\r\nHost: c.test\r\nConnection: close\r\n\r\n";
    if s.write_all(next).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    }
    (first_response, String::from_utf8_lossy(&rest).into_owned())
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
