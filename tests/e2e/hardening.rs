//! Request strictness and origin sanity (issue #15, points 1–4, 6, 7, 11, 12), through real
//! sockets: what a client may not send never reaches the origin or the cache, on a miss or on a
//! would-be hit (the front door's hit lane answers those), and what an origin may not answer
//! never reaches the client.
//!
//! The origin here is a raw-TCP one local to this file: it records every request head it reads,
//! answers `/reflect*` with a cacheable 200 whose body is that head, `/status999` with status
//! 999, and `/switch*` with a 101 nobody asked for followed by "tunnel" bytes.

use crate::support::{lock, Config, Listener, Pool, Route, RouteCache, Verge};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bytes a `/switch*` answer sends after its 101.
const TUNNEL: &str = "TUNNEL-BYTES";

struct RecordingOrigin {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingOrigin {
    async fn start() -> RecordingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, seen.clone()));
            }
        });
        RecordingOrigin { addr, heads, task }
    }

    /// Every head read for a target starting with `path`.
    fn heads_for(&self, path: &str) -> Vec<String> {
        let prefix = format!(" {path}");
        lock(&self.heads)
            .iter()
            .filter(|h| h.split('\n').next().is_some_and(|l| l.contains(&prefix)))
            .cloned()
            .collect()
    }

    fn total(&self) -> usize {
        lock(&self.heads).len()
    }
}

impl Drop for RecordingOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Read one request head, record it, answer by path, close.
async fn answer(mut stream: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    lock(&heads).push(head.clone());
    let target = head.split(' ').nth(1).unwrap_or("").to_string();
    let response = if target.starts_with("/status999") {
        "HTTP/1.1 999 Weird\r\nContent-Length: 5\r\nCache-Control: max-age=600\r\nConnection: close\r\n\r\nweird".to_string()
    } else if target.starts_with("/switch") {
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: Upgrade\r\n\r\n{TUNNEL}")
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: max-age=600\r\nConnection: close\r\n\r\n{head}",
            head.len()
        )
    };
    let _ = stream.write_all(response.as_bytes()).await;
    if target.starts_with("/switch") {
        // a tunnel stays open: anything relayed would be relayed by now
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = stream.write_all(TUNNEL.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

/// verge in front of `o`: `shop.test` caches, `pass.test` does not.
async fn verge_for(o: &RecordingOrigin) -> Verge {
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

/// Send `request` on a fresh connection and read until verge closes it (a test that waits
/// longer than 10 s fails): the whole answer as text.
async fn exchange(v: &Verge, request: &[u8]) -> String {
    let mut s = TcpStream::connect(v.http).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let read = s.read_to_end(&mut out);
    match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(_) => String::from_utf8_lossy(&out).into_owned(),
        Err(_) => panic!(
            "connection left open after {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
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

#[tokio::test]
async fn client_forwarding_fields_are_dropped_by_rule_on_a_miss_and_a_hit() {
    let o = RecordingOrigin::start().await;
    let v = verge_for(&o).await;
    let evil = "X-Forwarded-Scheme: evil\r\nX-Forwarded-Server: evil\r\n\
                X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.test\r\n\
                X-Forwarded-Proto: evil\r\nX-Forwarded-Anything-New: evil\r\n\
                Forwarded: for=evil\r\nX-Real-IP: 6.6.6.6\r\n";
    let miss = get(&v, "shop.test", "/reflect-fwd", evil).await;
    assert_eq!(status(&miss), "200", "{miss}");
    let seen = o.heads_for("/reflect-fwd");
    assert_eq!(seen.len(), 1);
    let head = seen[0].to_ascii_lowercase();
    assert!(
        !head.contains("evil") && !head.contains("6.6.6.6"),
        "{head}"
    );
    assert_eq!(field(&head, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(field(&head, "x-forwarded-host"), Some("shop.test"));
    assert_eq!(field(&head, "x-forwarded-proto"), Some("http"));
    // what was stored is what a clean client gets, and a poisoning attempt on the hit is moot
    for extra in ["", evil] {
        let hit = get(&v, "shop.test", "/reflect-fwd", extra).await;
        assert_eq!(status(&hit), "200", "{hit}");
        assert!(
            hit.to_ascii_lowercase()
                .contains("cache-status: verge; hit"),
            "{hit}"
        );
        assert!(!hit.contains("evil"), "{hit}");
    }
    assert_eq!(
        o.heads_for("/reflect-fwd").len(),
        1,
        "served from the cache"
    );
    // a route that does not cache drops them too
    let pass = get(&v, "pass.test", "/reflect-pass", evil).await;
    assert_eq!(status(&pass), "200", "{pass}");
    assert!(!pass.contains("evil"), "{pass}");
}

#[tokio::test]
async fn a_host_port_never_reaches_the_key_or_the_origin() {
    let o = RecordingOrigin::start().await;
    let v = verge_for(&o).await;
    // a port the listener is not on: the origin sees the host the key uses, nothing else
    let miss = get(&v, "shop.test:1337", "/reflect-port", "").await;
    assert_eq!(status(&miss), "200", "{miss}");
    let seen = o.heads_for("/reflect-port");
    assert_eq!(seen.len(), 1);
    assert_eq!(field(&seen[0], "host"), Some("shop.test"), "{}", seen[0]);
    assert!(!seen[0].contains("1337"), "{}", seen[0]);
    // every spelling of the host is one entry, and what it holds names no port
    for host in [
        "shop.test",
        "shop.test:1337",
        "shop.test:80",
        "SHOP.test.:8080",
    ] {
        let hit = get(&v, host, "/reflect-port", "").await;
        assert_eq!(status(&hit), "200", "{host}: {hit}");
        assert!(
            hit.to_ascii_lowercase()
                .contains("cache-status: verge; hit"),
            "{hit}"
        );
        assert!(!hit.contains("1337"), "{host}: {hit}");
    }
    assert_eq!(o.heads_for("/reflect-port").len(), 1);
    // a port that is not one makes the Host invalid, on a would-be hit and on a miss
    for path in ["/reflect-port", "/reflect-port-never"] {
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
    assert_eq!(o.total(), 1, "nothing more reached the origin");
}

#[tokio::test]
async fn the_origin_gets_the_canonical_host_the_router_and_the_key_used() {
    let o = RecordingOrigin::start().await;
    let v = verge_for(&o).await;
    let port = v.http.port();
    for (host, path) in [
        (format!("Shop.TEST.:{port}"), "/reflect-canon-a"),
        ("SHOP.TEST".to_string(), "/reflect-canon-b"),
        ("pass.test.:80".to_string(), "/reflect-canon-c"),
    ] {
        let answer = get(&v, &host, path, "").await;
        assert_eq!(status(&answer), "200", "{host}: {answer}");
        let seen = o.heads_for(path);
        let want = if path.ends_with('c') {
            "pass.test"
        } else {
            "shop.test"
        };
        assert_eq!(field(&seen[0], "host"), Some(want), "{host}");
    }
    // and the canonical spelling is a hit on what the odd one stored
    let hit = get(&v, "shop.test", "/reflect-canon-a", "").await;
    assert!(
        hit.to_ascii_lowercase()
            .contains("cache-status: verge; hit"),
        "{hit}"
    );
}

#[tokio::test]
async fn field_names_with_an_underscore_never_reach_the_origin() {
    let o = RecordingOrigin::start().await;
    let v = verge_for(&o).await;
    let sneaky = "Transfer_Encoding: chunked\r\nContent_Length: 5\r\n\
                  X_Forwarded_For: 6.6.6.6\r\nX_Custom: 1\r\nX-Plain: kept\r\n";
    for (host, path) in [
        ("shop.test", "/reflect-us"),
        ("pass.test", "/reflect-us-pass"),
    ] {
        let answer = get(&v, host, path, sneaky).await;
        assert_eq!(status(&answer), "200", "{host}: {answer}");
        let seen = o.heads_for(path);
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
    let o = RecordingOrigin::start().await;
    let v = verge_for(&o).await;
    // `/reflect-t` is stored (a would-be hit); `/reflect-u` never was (a miss)
    let stored = get(&v, "shop.test", "/reflect-t", "").await;
    assert_eq!(status(&stored), "200", "{stored}");
    for path in ["/reflect-t", "/reflect-u"] {
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
            assert!(
                !answer.contains("GET /reflect"),
                "{line:?} answered: {answer}"
            );
        }
    }
    assert_eq!(o.total(), 1, "only the first request reached the origin");
    // an uppercase method verge does not know is an extension method: it goes through
    let ext = exchange(
        &v,
        b"PROPFIND /reflect-ext HTTP/1.1\r\nHost: pass.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&ext), "200", "{ext}");
}

#[tokio::test]
async fn a_connection_field_naming_framing_is_refused() {
    let o = RecordingOrigin::start().await;
    let v = verge_for(&o).await;
    let stored = get(&v, "shop.test", "/reflect-c", "").await;
    assert_eq!(status(&stored), "200", "{stored}");
    for request in [
        "POST /reflect-c HTTP/1.1\r\nHost: shop.test\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
        "POST /reflect-d HTTP/1.1\r\nHost: pass.test\r\nContent-Length: 5\r\nConnection: keep-alive, content-length\r\n\r\nhello",
        "GET /reflect-c HTTP/1.1\r\nHost: shop.test\r\nConnection: close, Transfer-Encoding\r\n\r\n",
        "POST /reflect-d HTTP/1.1\r\nHost: pass.test\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let answer = exchange(&v, request.as_bytes()).await;
        assert_eq!(status(&answer), "400", "{request:?}: {answer}");
    }
    assert_eq!(o.total(), 1, "only the first request reached the origin");
}

#[tokio::test]
async fn an_origin_status_outside_100_to_599_is_a_502_and_never_stored() {
    let o = RecordingOrigin::start().await;
    let v = verge_for(&o).await;
    for host in ["shop.test", "shop.test", "pass.test"] {
        let answer = get(&v, host, "/status999", "").await;
        assert_eq!(status(&answer), "502", "{host}: {answer}");
        assert!(
            !answer.contains("Weird") && !answer.contains("weird"),
            "{answer}"
        );
    }
    assert_eq!(o.heads_for("/status999").len(), 3, "nothing was stored");
}

#[tokio::test]
async fn an_unsolicited_101_is_a_502_and_no_tunnel_byte_reaches_the_client() {
    let o = RecordingOrigin::start().await;
    let v = verge_for(&o).await;
    for (host, path) in [("shop.test", "/switch-a"), ("pass.test", "/switch-b")] {
        let answer = get(&v, host, path, "").await;
        assert_eq!(status(&answer), "502", "{host}: {answer}");
        assert!(
            !answer.contains(TUNNEL) && !answer.contains("Switching"),
            "{answer}"
        );
        assert_eq!(o.heads_for(path).len(), 1);
    }
}

/// One HTTP/2 frame: length, type, flags, stream, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
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
    let o = RecordingOrigin::start().await;
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
        ("GET", "shop.test:0", "/reflect-h2-a"),
        ("gET", "shop.test", "/reflect-h2-a"),
        ("get", "shop.test", "/reflect-h2-a"),
    ] {
        let got = h2_status(&v, method, authority, path).await;
        assert_eq!(got, refused, "{method} {authority}");
    }
    assert_eq!(o.total(), 0, "nothing reached the origin");
    assert_eq!(
        h2_status(&v, "GET", "SHOP.test.:1337", "/reflect-h2-b").await,
        ok
    );
    let seen = o.heads_for("/reflect-h2-b");
    assert_eq!(seen.len(), 1);
    assert_eq!(field(&seen[0], "host"), Some("shop.test"), "{}", seen[0]);
}
