//! The whole-response deadline (`timeouts.total`) against an origin that drips: one byte every
//! 100 ms, far inside the 5 s read timeout, forever. Without the deadline such an origin holds
//! a request (and its URL's cache lock) as long as it likes.
//!
//! - dripping before its response head is complete: the client gets verge's own 504 (or the
//!   stale copy, within stale-if-error), counted as `kind="timeout"`;
//! - dripping its body (with `Content-Length`, or close-delimited): the head has gone out, so
//!   the client sees the response cut and the connection closed; nothing is stored (a
//!   close-delimited body cut by the deadline would otherwise look complete);
//! - a route's `timeouts.total` overrides its pool's; a well-behaved origin is unaffected.

use crate::harness::{exchange_until_closed, lock, Verge};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A cacheable 200 with `Content-Length`, connection kept open.
    Good,
    /// The status line, then a header value one byte per drip, never finishing the head.
    DripHead,
    /// A cacheable 200 head with `Content-Length: 100000` at once, then the body one byte per
    /// drip.
    DripBody,
    /// A cacheable 200 head without `Content-Length` (the body ends when the connection
    /// closes), then the body one byte per drip.
    DripCloseDelimited,
}

const DRIP_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct State {
    modes: Mutex<BTreeMap<String, Mode>>,
    hits: Mutex<BTreeMap<String, u64>>,
    cache_control: Mutex<String>,
}

struct DripOrigin {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl DripOrigin {
    async fn start() -> DripOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        *lock(&state.cache_control) = "max-age=600".into();
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, s.clone()));
            }
        });
        DripOrigin { addr, state, task }
    }

    fn set(&self, path: &str, mode: Mode) {
        lock(&self.state.modes).insert(path.into(), mode);
    }

    fn set_cache_control(&self, value: &str) {
        *lock(&self.state.cache_control) = value.into();
    }

    fn hits(&self, path: &str) -> u64 {
        lock(&self.state.hits).get(path).copied().unwrap_or(0)
    }
}

impl Drop for DripOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .split('?')
            .next()
            .unwrap_or("/")
            .to_string();
        let n = {
            let mut hits = lock(&state.hits);
            let n = hits.entry(path.clone()).or_default();
            *n += 1;
            *n
        };
        let mode = lock(&state.modes).get(&path).copied().unwrap_or(Mode::Good);
        let cc = lock(&state.cache_control).clone();
        let ok = match mode {
            Mode::Good => {
                let body = format!("good {path} #{n}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(resp.as_bytes()).await.is_ok()
            }
            Mode::DripHead => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nX-Slow: ").await;
                drip_forever(&mut stream, b'h').await;
                false
            }
            Mode::DripBody | Mode::DripCloseDelimited => {
                let length = if mode == Mode::DripBody {
                    "Content-Length: 100000\r\n"
                } else {
                    "Connection: close\r\n"
                };
                let resp = format!("HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\n{length}\r\n");
                let _ = stream.write_all(resp.as_bytes()).await;
                drip_forever(&mut stream, b'z').await;
                false
            }
        };
        if !ok {
            return;
        }
    }
}

/// One byte per `DRIP_EVERY` until the peer goes away.
async fn drip_forever(stream: &mut TcpStream, byte: u8) {
    loop {
        tokio::time::sleep(DRIP_EVERY).await;
        if stream.write_all(&[byte]).await.is_err() {
            return;
        }
    }
}

/// verge in front of `o`: pool `drip` (read timeout 5 s, whole-response deadline 60 s);
/// host `c.test` caches and lowers the deadline to 1 s on its route, host `n.test` does not
/// cache and has the same 1 s.
async fn verge_for(o: &DripOrigin) -> Verge {
    Verge::start(&format!(
        "cache: {{lock_timeout: 60s, lock_wait: 60s}}\n\
         pools: {{drip: {{backends: [\"{}\"], timeouts: {{read: 5s, total: 60s}}}}}}\n\
         routes:\n\
         \x20 - {{name: cached, hosts: [c.test], pool: drip, cache: {{}}, timeouts: {{total: 1s}}}}\n\
         \x20 - {{name: plain, hosts: [n.test], pool: drip, timeouts: {{total: 1s}}}}\n",
        o.addr
    ))
    .await
}

/// What came back for one request, read until verge closed the connection (at most 20 s).
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
    closed: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
}

async fn exchange(v: &Verge, host: &str, path: &str) -> Reply {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (out, closed) =
        exchange_until_closed(v.http, req.as_bytes(), Duration::from_secs(20)).await;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head,
        body: out[end..].to_vec(),
        closed,
    }
}

/// A chunked body's data, and whether its last chunk arrived.
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (data, false);
        };
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|t| usize::from_str_radix(t.trim(), 16).ok());
        let Some(size) = size else {
            return (data, false);
        };
        if size == 0 {
            return (data, true);
        }
        rest = &rest[eol + 2..];
        if rest.len() < size + 2 {
            data.extend_from_slice(&rest[..size.min(rest.len())]);
            return (data, false);
        }
        data.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// `verge_upstream_errors_total{pool="drip"}` for `kind` (every kind: `None`).
async fn upstream_errors(v: &Verge, kind: Option<&str>) -> f64 {
    let metrics = v.admin_get("/metrics").await.1;
    metrics
        .lines()
        .filter(|l| l.starts_with("verge_upstream_errors_total{") && l.contains("pool=\"drip\""))
        .filter(|l| kind.is_none_or(|k| l.contains(&format!("kind=\"{k}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn timeouts_counted(v: &Verge) -> f64 {
    upstream_errors(v, Some("timeout")).await
}

/// Nothing was stored for `path`: once the origin behaves it is fetched again, then a hit.
async fn assert_nothing_stored(v: &Verge, o: &DripOrigin, path: &str) {
    let before = o.hits(path);
    o.set(path, Mode::Good);
    let fresh = crate::cache::fetch(v, path, &[]).await;
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    assert_eq!(o.hits(path), before + 1, "went to the origin again");
    let again = crate::cache::fetch(v, path, &[]).await;
    assert!(again.cache_status.contains("hit"), "{}", again.cache_status);
    assert_eq!(again.body, fresh.body);
}

#[tokio::test]
async fn a_head_dripped_past_the_deadline_gets_504() {
    let o = DripOrigin::start().await;
    let v = verge_for(&o).await;
    o.set("/h", Mode::DripHead);
    for host in ["c.test", "n.test"] {
        let r = exchange(&v, host, "/h").await;
        assert!(r.closed, "{host}: verge closed the connection");
        assert_eq!(r.status, 504, "{host}: {}", r.head);
        assert!(
            r.body.starts_with(b"verge: "),
            "{host}: verge's own answer: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(o.hits("/h"), 2, "one attempt each, no retry");
    assert!(timeouts_counted(&v).await >= 2.0);
    // the URL's cache lock was released: the next request is served at once
    assert_nothing_stored(&v, &o, "/h").await;
}

#[tokio::test]
async fn a_body_dripped_past_the_deadline_is_cut_and_not_stored() {
    let o = DripOrigin::start().await;
    let v = verge_for(&o).await;
    for (path, mode) in [("/b", Mode::DripBody), ("/cd", Mode::DripCloseDelimited)] {
        o.set(path, mode);
        let r = exchange(&v, "c.test", path).await;
        assert!(r.closed, "{path}: verge closed the connection");
        assert_eq!(r.status, 200, "{path}: the head had gone out: {}", r.head);
        let (data, complete) = match r.header("content-length") {
            Some(n) => (r.body.clone(), r.body.len() >= n.parse().unwrap_or(0)),
            None => {
                assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{path}");
                dechunk(&r.body)
            }
        };
        assert!(!complete, "{path}: the client can tell the response is cut");
        assert!(!data.is_empty(), "{path}: some body had been relayed");
        assert!(
            data.iter().all(|b| *b == b'z'),
            "{path}: only the origin's bytes"
        );
        assert_nothing_stored(&v, &o, path).await;
    }
    assert!(timeouts_counted(&v).await >= 2.0);
}

#[tokio::test]
async fn a_stale_copy_is_served_when_the_deadline_passes_before_the_head() {
    let o = DripOrigin::start().await;
    o.set_cache_control("max-age=0, stale-if-error=600");
    let v = verge_for(&o).await;
    let first = crate::cache::fetch(&v, "/s", &[]).await;
    assert_eq!(first.body, "good /s #1\n");
    o.set("/s", Mode::DripHead);
    let g = crate::cache::fetch(&v, "/s", &[]).await;
    assert_eq!((g.status, g.body.as_str()), (200, first.body.as_str()));
    assert_eq!(o.hits("/s"), 2, "the origin was tried");
}

#[tokio::test]
async fn a_well_behaved_origin_is_unaffected() {
    let o = DripOrigin::start().await;
    let v = verge_for(&o).await;
    // several requests on pooled connections, each well inside the deadline
    for i in 1..=5 {
        let r = crate::harness::client()
            .get(v.url(&format!("/ok{i}")))
            .header("host", "n.test")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.text().await.unwrap_or_default(),
            format!("good /ok{i} #1\n")
        );
    }
    // and after the deadline has long passed for the first of them, the pooled connections
    // still work (no timer outlived its request)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = crate::harness::client()
        .get(v.url("/ok1"))
        .header("host", "n.test")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap_or_default(), "good /ok1 #2\n");
    assert_eq!(
        upstream_errors(&v, None).await,
        0.0,
        "no connection was cut"
    );
}

#[tokio::test]
async fn an_open_websocket_outlives_the_deadline() {
    use crate::bad_origin::{BadOrigin, Fault};
    // a tunnel has no "whole response": after the 101 the deadline no longer applies
    let o = BadOrigin::start().await;
    o.set("/ws", Fault::WebSocketEcho);
    let v = Verge::start(&format!(
        "pools: {{p: {{backends: [\"{}\"], timeouts: {{total: 1s}}}}}}\n\
         routes: [{{hosts: [\"*\"], pool: p}}]\n",
        o.addr
    ))
    .await;
    let mut s = TcpStream::connect(v.http).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: w.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        assert_eq!(n, 1, "connection open: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // well past the deadline, the tunnel still echoes
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&back, b"ping");
}
