//! Request strictness and origin sanity (issue #15, points 1–4, 6, 7, 11, 12), through real
//! sockets: what a client may not send never reaches the origin or the cache, on a miss or on a
//! would-be hit (the front door's hit lane answers those), and what an origin may not answer
//! never reaches the client.
//!
//! The origin here is a raw-TCP one local to this file: it records every request head it reads,
//! answers `/reflect*` with a cacheable 200 whose body is that head, `/status999` with status
//! 999, and `/switch*` with a 101 nobody asked for followed by "tunnel" bytes.

use crate::harness::{lock, Verge};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bytes a `/switch*` answer sends after its 101.
const TUNNEL: &str = "TUNNEL-BYTES";

struct RawOrigin {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawOrigin {
    async fn start() -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, seen.clone()));
            }
        });
        RawOrigin { addr, heads, task }
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

impl Drop for RawOrigin {
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
async fn verge_for(o: &RawOrigin) -> Verge {
    Verge::start(&format!(
        "pools: {{p: {{backends: [\"{}\"]}}}}\n\
         routes:\n\
         \x20 - {{hosts: [shop.test], pool: p, cache: {{}}}}\n\
         \x20 - {{hosts: [pass.test], pool: p}}\n",
        o.addr
    ))
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
    let o = RawOrigin::start().await;
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
async fn a_host_naming_a_foreign_port_is_refused_on_a_miss_and_a_hit() {
    let o = RawOrigin::start().await;
    let v = verge_for(&o).await;
    let port = v.http.port();
    for host in [
        "shop.test:1337",
        "shop.test:443",
        "shop.test:99999",
        "shop.test:",
    ] {
        let refused = get(&v, host, "/reflect-port", "").await;
        assert_eq!(status(&refused), "400", "{host}: {refused}");
    }
    assert_eq!(o.total(), 0, "nothing reached the origin");
    // now the URL is stored under `shop.test`
    let miss = get(&v, "shop.test", "/reflect-port", "").await;
    assert_eq!(status(&miss), "200", "{miss}");
    let refused = get(&v, "shop.test:1337", "/reflect-port", "").await;
    assert_eq!(status(&refused), "400", "a would-be hit: {refused}");
    // the listener's own port and the scheme's default name the same resource: one key
    for host in [format!("SHOP.Test.:{port}"), "shop.test:80".to_string()] {
        let hit = get(&v, &host, "/reflect-port", "").await;
        assert_eq!(status(&hit), "200", "{host}: {hit}");
        assert!(
            hit.to_ascii_lowercase()
                .contains("cache-status: verge; hit"),
            "{hit}"
        );
    }
    assert_eq!(o.heads_for("/reflect-port").len(), 1);
}

#[tokio::test]
async fn the_origin_gets_the_canonical_host_the_router_and_the_key_used() {
    let o = RawOrigin::start().await;
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
    let o = RawOrigin::start().await;
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
    let o = RawOrigin::start().await;
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
    let o = RawOrigin::start().await;
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
    let o = RawOrigin::start().await;
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
    let o = RawOrigin::start().await;
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
