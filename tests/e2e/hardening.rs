//! Request strictness and origin sanity (issue #15, points 1–4, 6, 7, 11, 12), through real
//! sockets: what a client may not send never reaches the origin or the cache, on a miss or on a
//! would-be hit (the front door's hit lane answers those), and what an origin may not answer
//! never reaches the client. The origin is the kit's [`RawOrigin`], which keeps every request
//! head it reads; HTTP/2 requests are written as frames here.

use crate::support::h2_wire::frame as h2_frame;
use crate::support::raw_origin::Step;
use crate::support::wire::raw;
use crate::support::{Config, Listener, Pool, RawOrigin, Route, RouteCache, Verge};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bytes an unsolicited 101 is followed by.
const TUNNEL: &str = "TUNNEL-BYTES";

/// verge in front of `o`: `shop.test` caches, `pass.test` does not.
async fn verge_for(o: &RawOrigin) -> Verge {
    Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .hosts(&["shop.test"])
                    .cache(RouteCache::new()),
            )
            .route(Route::to("p").hosts(&["pass.test"])),
    )
    .await
}

/// Send `request` on a fresh connection and read until verge closes it: the whole answer as
/// text (a connection left open fails the test).
async fn exchange(v: &Verge, request: &[u8]) -> String {
    let answer = raw(v.http, request, Duration::from_secs(10)).await;
    assert!(
        !answer.ends_with("<no close>"),
        "connection left open: {answer}"
    );
    answer
}

/// A GET for `path` with `Host: host` and the `extra` field lines, closing the connection.
async fn get(v: &Verge, host: &str, path: &str, extra: &str) -> String {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    exchange(v, request.as_bytes()).await
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

/// The value of field `name` in a request head, if it is there once.
fn field<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    let mut values = head.split("\r\n").skip(1).filter_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    });
    let first = values.next();
    assert!(values.next().is_none(), "{name} twice in {head:?}");
    first
}

fn is_hit(answer: &str) -> bool {
    answer
        .to_ascii_lowercase()
        .contains("cache-status: verge; hit")
}

#[tokio::test]
async fn client_forwarding_fields_are_dropped_by_rule_on_a_miss_and_a_hit() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    let evil = "X-Forwarded-Scheme: evil\r\nX-Forwarded-Server: evil\r\n\
                X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.test\r\n\
                X-Forwarded-Proto: evil\r\nX-Forwarded-Anything-New: evil\r\n\
                Forwarded: for=evil\r\nX-Real-IP: 6.6.6.6\r\n";
    let miss = get(&v, "shop.test", "/fwd", evil).await;
    assert_eq!(status(&miss), "200", "{miss}");
    let seen = o.heads("/fwd");
    assert_eq!(seen.len(), 1);
    let head = seen[0].to_ascii_lowercase();
    assert!(
        !head.contains("evil") && !head.contains("6.6.6.6"),
        "{head}"
    );
    assert_eq!(field(&head, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(field(&head, "x-forwarded-host"), Some("shop.test"));
    assert_eq!(field(&head, "x-forwarded-proto"), Some("http"));
    // the stored answer is served to clean and poisoning clients alike, without a new fetch
    for extra in ["", evil] {
        let hit = get(&v, "shop.test", "/fwd", extra).await;
        assert_eq!(status(&hit), "200", "{hit}");
        assert!(is_hit(&hit), "{hit}");
    }
    assert_eq!(o.hits("/fwd"), 1, "served from the cache");
    // a route that does not cache drops them too
    let pass = get(&v, "pass.test", "/fwd-pass", evil).await;
    assert_eq!(status(&pass), "200", "{pass}");
    let head = o.heads("/fwd-pass")[0].to_ascii_lowercase();
    assert!(
        !head.contains("evil") && !head.contains("6.6.6.6"),
        "{head}"
    );
}

#[tokio::test]
async fn a_host_port_never_reaches_the_key_or_the_origin() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    // a port the listener is not on: the origin sees the host the key uses, nothing else
    let miss = get(&v, "shop.test:1337", "/port", "").await;
    assert_eq!(status(&miss), "200", "{miss}");
    let seen = o.heads("/port");
    assert_eq!(seen.len(), 1);
    assert_eq!(field(&seen[0], "host"), Some("shop.test"), "{}", seen[0]);
    assert!(!seen[0].contains("1337"), "{}", seen[0]);
    // every spelling of the host is one entry
    for host in [
        "shop.test",
        "shop.test:1337",
        "shop.test:80",
        "SHOP.test.:8080",
    ] {
        let hit = get(&v, host, "/port", "").await;
        assert_eq!(status(&hit), "200", "{host}: {hit}");
        assert!(is_hit(&hit), "{host}: {hit}");
    }
    assert_eq!(o.hits("/port"), 1);
    // a port that is not one makes the Host invalid, on a would-be hit and on a miss
    for path in ["/port", "/port-never"] {
        for host in [
            "shop.test:",
            "shop.test:0",
            "shop.test:99999",
            "shop.test:x",
        ] {
            let refused = get(&v, host, path, "").await;
            assert_eq!(status(&refused), "400", "{host}{path}: {refused}");
        }
    }
    assert_eq!((o.hits("/port"), o.hits("/port-never")), (1, 0));
}

#[tokio::test]
async fn the_origin_gets_the_canonical_host_the_router_and_the_key_used() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    let port = v.http.port();
    for (host, path, want) in [
        (format!("Shop.TEST.:{port}"), "/canon-a", "shop.test"),
        ("SHOP.TEST".to_string(), "/canon-b", "shop.test"),
        ("pass.test.:80".to_string(), "/canon-c", "pass.test"),
    ] {
        let answer = get(&v, &host, path, "").await;
        assert_eq!(status(&answer), "200", "{host}: {answer}");
        let seen = o.heads(path);
        assert_eq!(field(&seen[0], "host"), Some(want), "{host}");
    }
    // and the canonical spelling is a hit on what the odd one stored
    let hit = get(&v, "shop.test", "/canon-a", "").await;
    assert!(is_hit(&hit), "{hit}");
}

#[tokio::test]
async fn field_names_with_an_underscore_never_reach_the_origin() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    let sneaky = "Transfer_Encoding: chunked\r\nContent_Length: 5\r\n\
                  X_Forwarded_For: 6.6.6.6\r\nX_Custom: 1\r\nX-Plain: kept\r\n";
    for (host, path) in [("shop.test", "/us"), ("pass.test", "/us-pass")] {
        let answer = get(&v, host, path, sneaky).await;
        assert_eq!(status(&answer), "200", "{host}: {answer}");
        let seen = o.heads(path);
        assert_eq!(seen.len(), 1);
        for line in seen[0].split("\r\n").skip(1) {
            let name = line.split(':').next().unwrap_or("");
            assert!(
                !name.contains('_'),
                "{name} reached the origin: {}",
                seen[0]
            );
        }
        assert!(!seen[0].contains("6.6.6.6"), "{}", seen[0]);
        assert_eq!(field(&seen[0], "x-plain"), Some("kept"));
    }
}

#[tokio::test]
async fn targets_and_methods_other_than_plain_are_refused_before_routing() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    // `/t` is stored (a would-be hit); `/u` never was (a miss)
    let stored = get(&v, "shop.test", "/t", "").await;
    assert_eq!(status(&stored), "200", "{stored}");
    for path in ["/t", "/u"] {
        for line in [
            "GET !foo HTTP/1.1".to_string(),
            format!("GET {path} b HTTP/1.1"),
            format!("GET {path}  HTTP/1.1"),
            format!("GET http://shop.test{path} HTTP/1.1"),
            format!("GET {path}#frag HTTP/1.1"),
            format!("GET {path}\u{e9} HTTP/1.1"),
            format!("gET {path} HTTP/1.1"),
            format!("get {path} HTTP/1.1"),
            format!("GET {path} HTTP/1.2"),
            "CONNECT shop.test:80 HTTP/1.1".to_string(),
        ] {
            let request = format!("{line}\r\nHost: shop.test\r\nConnection: close\r\n\r\n");
            let answer = exchange(&v, request.as_bytes()).await;
            assert_eq!(status(&answer), "400", "{line:?}: {answer}");
            assert!(!answer.contains("good /"), "{line:?} answered: {answer}");
        }
    }
    assert_eq!((o.hits("/t"), o.hits("/u")), (1, 0));
    assert_eq!(o.connections(), 1, "nothing else reached the origin");
    // an uppercase method verge does not know is an extension method: it goes through
    let ext = exchange(
        &v,
        b"PROPFIND /ext HTTP/1.1\r\nHost: pass.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&ext), "200", "{ext}");
    assert_eq!(o.hits("/ext"), 1);
}

#[tokio::test]
async fn a_connection_field_naming_framing_is_refused() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    let stored = get(&v, "shop.test", "/c", "").await;
    assert_eq!(status(&stored), "200", "{stored}");
    for request in [
        "POST /c HTTP/1.1\r\nHost: shop.test\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
        "POST /d HTTP/1.1\r\nHost: pass.test\r\nContent-Length: 5\r\nConnection: keep-alive, content-length\r\n\r\nhello",
        "GET /c HTTP/1.1\r\nHost: shop.test\r\nConnection: close, Transfer-Encoding\r\n\r\n",
        "POST /d HTTP/1.1\r\nHost: pass.test\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let answer = exchange(&v, request.as_bytes()).await;
        assert_eq!(status(&answer), "400", "{request:?}: {answer}");
    }
    assert_eq!((o.hits("/c"), o.hits("/d")), (1, 0));
}

#[tokio::test]
async fn an_origin_status_outside_100_to_599_is_a_502_and_never_stored() {
    let o = RawOrigin::start().await;
    o.set(
        "/status999",
        vec![
            Step::Write(
                b"HTTP/1.1 999 Weird\r\nContent-Length: 5\r\nCache-Control: max-age=600\r\n\r\nweird"
                    .to_vec(),
            ),
            Step::Close,
        ],
    );
    let v = verge_for(&o).await;
    for host in ["shop.test", "shop.test", "pass.test"] {
        let answer = get(&v, host, "/status999", "").await;
        assert_eq!(status(&answer), "502", "{host}: {answer}");
        assert!(
            !answer.contains("Weird") && !answer.contains("weird"),
            "{answer}"
        );
    }
    assert_eq!(o.hits("/status999"), 3, "nothing was stored");
}

#[tokio::test]
async fn an_unsolicited_101_is_a_502_and_no_tunnel_byte_reaches_the_client() {
    let o = RawOrigin::start().await;
    let switch = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: Upgrade\r\n\r\n{TUNNEL}"
    );
    for path in ["/switch-a", "/switch-b"] {
        o.set(
            path,
            vec![
                Step::Write(switch.clone().into_bytes()),
                // a tunnel stays open: anything relayed would be relayed by now
                Step::Sleep(Duration::from_secs(1)),
                Step::Write(TUNNEL.as_bytes().to_vec()),
                Step::Close,
            ],
        );
    }
    let v = verge_for(&o).await;
    for (host, path) in [("shop.test", "/switch-a"), ("pass.test", "/switch-b")] {
        let answer = get(&v, host, path, "").await;
        assert_eq!(status(&answer), "502", "{host}: {answer}");
        assert!(
            !answer.contains(TUNNEL) && !answer.contains("Switching"),
            "{answer}"
        );
        assert_eq!(o.hits(path), 1);
    }
}

/// Send one HTTP/2 request (prior knowledge, no body) with these pseudo-header values, and
/// return the first byte of the response's header block: HPACK's static-table index of its
/// `:status` (`0x88`: 200, `0x8c`: 400), or 0 when the stream or connection ended without one.
async fn h2_status(v: &Verge, method: &str, authority: &str, path: &str) -> u8 {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", method),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
    ] {
        // literal field without indexing, new name, no Huffman coding
        block.push(0);
        for text in [name, value] {
            block.push(u8::try_from(text.len()).expect("short"));
            block.extend_from_slice(text.as_bytes());
        }
    }
    let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    request.extend(h2_frame(4, 0, 0, &[]));
    request.extend(h2_frame(1, 0x5, 1, &block)); // END_STREAM | END_HEADERS
    let mut s = TcpStream::connect(v.http).await.expect("connect");
    s.write_all(&request).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            while buf.len() >= 9 {
                let len =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                let (kind, first) = (buf[3], buf.get(9).copied().unwrap_or(0));
                buf.drain(..9 + len);
                match (kind, stream) {
                    (1, 1) => return first,      // HEADERS
                    (3, 1) | (7, _) => return 0, // RST_STREAM, GOAWAY
                    _ => {}
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return 0,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer in time")
}

#[tokio::test]
async fn http2_requests_get_the_same_host_and_method_rules() {
    let o = RawOrigin::start().await;
    let v = Verge::start(
        &Config::new()
            .listener(Listener::new().h2c())
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .hosts(&["shop.test"])
                    .cache(RouteCache::new()),
            ),
    )
    .await;
    let (ok, refused) = (0x88, 0x8c);
    for (method, authority, path) in [
        ("GET", "shop.test:0", "/h2-a"),
        ("gET", "shop.test", "/h2-a"),
        ("get", "shop.test", "/h2-a"),
    ] {
        let got = h2_status(&v, method, authority, path).await;
        assert_eq!(got, refused, "{method} {authority}");
    }
    assert_eq!(o.connections(), 0, "nothing reached the origin");
    assert_eq!(h2_status(&v, "GET", "SHOP.test.:1337", "/h2-b").await, ok);
    let seen = o.heads("/h2-b");
    assert_eq!(seen.len(), 1);
    assert_eq!(field(&seen[0], "host"), Some("shop.test"), "{}", seen[0]);
}

#[tokio::test]
async fn a_trusted_hop_keeps_the_forwarding_fields_it_is_trusted_for() {
    let o = RawOrigin::start().await;
    let listener = |from: &str| {
        Listener::new().set(
            "trusted_forwarding",
            &format!("{{from: [\"{from}\"], fields: [x-forwarded-proto, X-Forwarded-For]}}"),
        )
    };
    let start = |from: &'static str| {
        let o = &o;
        async move {
            Verge::start(
                &Config::new()
                    .listener(listener(from))
                    .pool(Pool::new("p", &[o.addr]))
                    .route(Route::to("p")),
            )
            .await
        }
    };
    let sent = "X-Forwarded-Proto: https\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Host: evil.test\r\n";
    // the tests' client is 127.0.0.1: trusted here
    let trusted = start("127.0.0.0/8").await;
    let answer = get(&trusted, "shop.test", "/t1", sent).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let head = o.heads("/t1")[0].to_ascii_lowercase();
    assert_eq!(field(&head, "x-forwarded-proto"), Some("https"), "{head}");
    assert_eq!(
        field(&head, "x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1"),
        "{head}"
    );
    assert_eq!(
        field(&head, "x-forwarded-host"),
        Some("shop.test"),
        "not trusted: {head}"
    );
    // and not trusted here
    let other = start("10.0.0.0/8").await;
    let answer = get(&other, "shop.test", "/t2", sent).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let head = o.heads("/t2")[0].to_ascii_lowercase();
    assert_eq!(field(&head, "x-forwarded-proto"), Some("http"), "{head}");
    assert_eq!(field(&head, "x-forwarded-for"), Some("127.0.0.1"), "{head}");
}

#[tokio::test]
async fn a_pooled_connection_the_origin_closed_is_retried_once_on_a_fresh_one() {
    use crate::support::raw_origin::{good, Script};
    let o = RawOrigin::start().await;
    // the 2nd request arrives on the pooled connection just as the origin closes it
    o.set(
        "/k",
        Script::new(|asked| {
            if asked.n == 2 {
                vec![Step::Close]
            } else {
                good(asked)
            }
        }),
    );
    // one backend: the retry can only go back to it, on a new connection
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p")),
    )
    .await;
    let mut c = crate::support::wire::Conn::open(v.http, None).await;
    for expect in ["#1", "#3"] {
        c.send(b"GET /k HTTP/1.1\r\nHost: shop.test\r\n\r\n").await;
        let before = c.bytes.len();
        let got = c
            .read_until(Duration::from_secs(5), |c| {
                crate::support::wire::parse(&c.bytes[before..], c.closed, false).is_complete()
            })
            .await;
        let answer = String::from_utf8_lossy(&c.bytes[before..]).into_owned();
        assert!(got, "{answer}");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(expect), "{answer}");
    }
    assert_eq!(o.hits("/k"), 3, "the closed one and its retry");
    assert_eq!(o.connections(), 2, "the retry took a fresh connection");
}
