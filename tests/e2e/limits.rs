//! Request-head limits and framing rules, checked with raw bytes: the status, the closed
//! connection, and that nothing reached the origin.

use crate::support::metrics::metric_eventually;
use crate::support::wire::raw;
use crate::support::{client, eventually, Config, Limits, Listener, Origin, Pool, Route, Verge};
use std::time::{Duration, Instant};

/// verge in front of `o` for every host, with `limits` on its one listener.
pub(crate) async fn verge_with_limits(o: &Origin, limits: Limits) -> Verge {
    Verge::start(
        &Config::new()
            .listener(Listener::new().limits(limits))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p")),
    )
    .await
}

async fn verge_with_short_timeout(o: &Origin) -> Verge {
    verge_with_limits(o, Limits::new().header_timeout("1s").max_headers(20)).await
}

#[tokio::test]
async fn oversized_and_ambiguous_requests_are_refused_and_closed() {
    let o = Origin::start("o").await;
    let v = verge_with_short_timeout(&o).await;
    let wait = Duration::from_secs(5);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000)).into_bytes(), "414"),
        (format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(9000)).into_bytes(), "431"),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
                (0..21).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
            )
            .into_bytes(),
            "431",
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), "400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".to_vec(), "400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(), "501"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n".to_vec(), "400"),
    ];
    for (bytes, status) in cases {
        let out = raw(v.http, &bytes, wait).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")),
            "expected {status}: {out}"
        );
        assert!(out.contains("Connection: close"), "{out}");
        assert!(
            !out.ends_with("<no close>"),
            "connection closed after the error: {out}"
        );
    }
    assert_eq!(o.total(), 0, "nothing reached the origin");
    // a good request on a fresh connection still works
    let ok = raw(
        v.http,
        b"GET /fine HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(o.total(), 1);
}

#[tokio::test]
async fn slow_head_is_cut_off_by_the_whole_head_deadline() {
    let o = Origin::start("o").await;
    let v = verge_with_short_timeout(&o).await;
    let addr = v.http;
    let started = Instant::now();
    // Drip one header byte every 300 ms: each read is quick, the whole head is not.
    let out = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("t");
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").expect("w");
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        for _ in 0..40 {
            if s.write_all(b"X").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .expect("join");
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut at ~1s, took {:?}",
        started.elapsed()
    );
    assert_eq!(o.total(), 0);
}

#[tokio::test]
async fn keepalive_serves_several_requests_on_one_connection() {
    let o = Origin::start("o").await;
    let v = verge_with_short_timeout(&o).await;
    let out = raw(
        v.http,
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_millis(500),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with("<no close>"),
        "connection kept open for the next request"
    );
    let client = client();
    for i in 0..5 {
        let r = client
            .get(v.url(&format!("/k{i}")))
            .header("host", "a")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(o.total(), 6);
}

#[tokio::test]
async fn ambiguous_targets_are_refused_before_routing_and_never_reach_the_origin() {
    let o = Origin::start("o").await;
    let v = verge_with_short_timeout(&o).await;
    let wait = Duration::from_secs(5);
    for target in [
        "/a%2Fb",
        "/a%5cb",
        "/a\\b",
        "/a%00b",
        "/a%zz",
        "/../etc/passwd",
        "/public/../admin",
        "/a/./b",
        "/a/%2e%2e/b",
    ] {
        let out = raw(
            v.http,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
            wait,
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400 "), "{target}: {out}");
        assert!(
            !out.ends_with("<no close>"),
            "{target}: connection left open"
        );
    }
    assert_eq!(o.total(), 0, "nothing reached the origin");
    let ok = raw(
        v.http,
        b"GET /caf%C3%A9/a.b?x=../y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        wait,
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    assert_eq!(
        o.last_seen().map(|s| s.uri),
        Some("/caf%C3%A9/a.b?x=../y".to_string()),
        "forwarded byte for byte"
    );
}

#[tokio::test]
async fn bodies_over_max_body_get_413() {
    let o = Origin::start("o").await;
    let v = verge_with_limits(&o, Limits::new().max_body("1KiB")).await;
    let wait = Duration::from_secs(5);
    let declared = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n{}",
        "x".repeat(2000)
    );
    let out = raw(v.http, declared.as_bytes(), wait).await;
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    assert!(!out.ends_with("<no close>"), "closed after 413");
    assert_eq!(
        o.total(),
        0,
        "a declared oversized body never reaches the origin"
    );

    let chunk = format!("258\r\n{}\r\n", "y".repeat(600));
    let streamed = format!("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}{chunk}0\r\n\r\n");
    let out = raw(v.http, streamed.as_bytes(), wait).await;
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");

    let small = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{}",
        "z".repeat(1000)
    );
    let out = raw(v.http, small.as_bytes(), wait).await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    assert_eq!(o.last_seen().map(|s| s.body_len), Some(1000));
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_others_are_served_after() {
    let o = Origin::start("o").await;
    let v = verge_with_limits(&o, Limits::new().max_connections(3)).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            tokio::net::TcpStream::connect(v.http)
                .await
                .expect("connect"),
        );
    }
    let wait = Duration::from_secs(5);
    // Wait until verge itself holds the 3 idle connections (not just the kernel backlog).
    metric_eventually(
        &v,
        wait,
        "verge_downstream_connections",
        &[("listener", "listener0")],
        |n| n == Some(3.0),
    )
    .await;
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let out = raw(v.http, req, wait).await;
    assert!(
        out.starts_with("HTTP/1.1 503 "),
        "a 4th connection is refused: {out}"
    );
    assert_eq!(o.total(), 0);
    drop(idle);
    let served = eventually(wait, || async {
        raw(v.http, req, wait).await.starts_with("HTTP/1.1 200 ")
    })
    .await;
    assert!(served, "served again once the idle connections are gone");
}
