//! A raw-TCP origin that misbehaves on command: per path it answers well, or closes, resets,
//! drips (one byte per `DRIP`), sends garbage, oversized or ambiguous framing, floods 1xx, or never answers. It counts
//! every request head it reads (per path) and every connection, so tests can tell whether verge
//! went back to it and whether it reused a connection. It also plays a WebSocket echo server.

use crate::harness::lock;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the origin does with a request for a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A well-formed 200 with `Content-Length`, the origin's `Cache-Control` and a body
    /// `good <path> #<n>`; the connection stays open for the next request.
    Good,
    /// Read the request, then close without a byte.
    CloseBeforeResponse,
    /// Send half a status line and header, then reset (SO_LINGER 0).
    ResetMidHeaders,
    /// Send a cacheable 200 head with `Content-Length: 1000` and 100 body bytes, then reset.
    ResetMidBody,
    /// Send a cacheable 200 head with `Content-Length: 1000` and 100 body bytes, then close
    /// cleanly (FIN): a Content-Length mismatch.
    ShortBody,
    /// Send a cacheable chunked 200 head and one chunk, then close without the last chunk.
    ChunkedThenClose,
    /// Send the response head one byte per drip interval.
    DripHead,
    /// Send a cacheable 200 head with `Content-Length: 100` at once, then the body one byte per
    /// drip interval.
    DripBody,
    /// Answer with bytes that are not an HTTP status line.
    Garbage,
    /// A 200 head of about 1.1 MiB (a few very long header lines).
    OversizedHead,
    /// A 200 head with 300 header fields.
    ManyHeaders,
    /// A cacheable 200 with `Content-Length: 5` and `Content-Length: 6`.
    ConflictingContentLength,
    /// A cacheable 200 with both `Content-Length` and `Transfer-Encoding: chunked`, whose
    /// Content-Length reading would end early and leave a smuggled response behind.
    ContentLengthAndChunked,
    /// A cacheable chunked 200 whose first chunk size is not hexadecimal.
    BadChunkSize,
    /// 1000 `100 Continue` heads and then, slowly, more of them (never a final response).
    InformationalFlood,
    /// A cacheable 200 with a body, even for HEAD, whose body is itself a complete HTTP response
    /// (`POISON`); the connection stays open, so a proxy that reuses it would read the poison
    /// as the answer to its next request.
    BodyOnHead,
    /// Read the request and never answer (connection left open).
    NeverRespond,
    /// Answer a WebSocket upgrade with 101, then echo every byte back (anything that came
    /// after the request head included).
    WebSocketEcho,
}

/// How long the dripping faults wait between bytes: longer than any read timeout in the tests.
pub const DRIP: Duration = Duration::from_secs(3);

/// The body of the response a `BodyOnHead` answer smuggles after its head.
pub const POISON_RESPONSE: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nCache-Control: max-age=600\r\n\r\nPOISON";

#[derive(Default)]
struct State {
    faults: Mutex<BTreeMap<String, Fault>>,
    /// Requests per path (the request head was read in full).
    per_path: Mutex<BTreeMap<String, u64>>,
    /// Every request head read, per path, as text.
    heads: Mutex<BTreeMap<String, Vec<String>>>,
    connections: AtomicU64,
    cache_control: Mutex<String>,
}

pub struct BadOrigin {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl BadOrigin {
    /// Listen on an ephemeral loopback port. Every path answers `Good` until told otherwise;
    /// responses carry `Cache-Control: max-age=600`.
    pub async fn start() -> BadOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            cache_control: Mutex::new("max-age=600".into()),
            ..Default::default()
        });
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        BadOrigin { addr, state, task }
    }

    /// Misbehave (or not) this way for `path`.
    pub fn set(&self, path: &str, fault: Fault) {
        lock(&self.state.faults).insert(path.to_string(), fault);
    }

    /// The `Cache-Control` every response head carries.
    pub fn set_cache_control(&self, value: &str) {
        *lock(&self.state.cache_control) = value.to_string();
    }

    /// Requests read for `path`.
    pub fn hits(&self, path: &str) -> u64 {
        lock(&self.state.per_path).get(path).copied().unwrap_or(0)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Every request head read for `path`, in order.
    pub fn heads(&self, path: &str) -> Vec<String> {
        lock(&self.state.heads)
            .get(path)
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for BadOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        state.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve_connection(stream, state.clone()));
    }
}

/// One parsed request head.
struct Request {
    method: String,
    path: String,
    head: String,
}

/// Read one request head (and skip a Content-Length body). `None` when the peer went away.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let mut words = head.split_whitespace();
    let method = words.next()?.to_string();
    let target = words.next()?.to_string();
    let path = target.split('?').next().unwrap_or("/").to_string();
    let body_len: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < body_len {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..body_len);
    Some(Request { method, path, head })
}

fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn drip(stream: &mut TcpStream, bytes: &[u8], every: Duration) {
    for b in bytes {
        if stream.write_all(&[*b]).await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

async fn serve_connection(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf).await {
        let n = {
            let mut per_path = lock(&state.per_path);
            let n = per_path.entry(req.path.clone()).or_default();
            *n += 1;
            *n
        };
        lock(&state.heads)
            .entry(req.path.clone())
            .or_default()
            .push(req.head.clone());
        let fault = lock(&state.faults)
            .get(&req.path)
            .copied()
            .unwrap_or(Fault::Good);
        let cc = lock(&state.cache_control).clone();
        let cacheable_head = |framing: &str| {
            format!("HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\nContent-Type: text/plain\r\n{framing}\r\n")
        };
        match fault {
            Fault::Good => {
                let body = format!("good {} #{n}\n", req.path);
                let head = cacheable_head(&format!("Content-Length: {}\r\n", body.len()));
                let out = if req.method == "HEAD" {
                    head
                } else {
                    head + &body
                };
                if stream.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
            Fault::CloseBeforeResponse => return,
            Fault::ResetMidHeaders => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Ty")
                    .await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                return reset(stream);
            }
            Fault::ResetMidBody | Fault::ShortBody => {
                let out = cacheable_head("Content-Length: 1000\r\n") + &"x".repeat(100);
                let _ = stream.write_all(out.as_bytes()).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                if fault == Fault::ResetMidBody {
                    return reset(stream);
                }
                return;
            }
            Fault::ChunkedThenClose => {
                let out = cacheable_head("Transfer-Encoding: chunked\r\n") + "64\r\n";
                let out = out + &"y".repeat(100) + "\r\n";
                let _ = stream.write_all(out.as_bytes()).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            Fault::DripHead => {
                let out = cacheable_head("Content-Length: 2\r\n") + "ok";
                drip(&mut stream, out.as_bytes(), DRIP).await;
                return;
            }
            Fault::DripBody => {
                let _ = stream
                    .write_all(cacheable_head("Content-Length: 100\r\n").as_bytes())
                    .await;
                drip(&mut stream, "z".repeat(100).as_bytes(), DRIP).await;
                return;
            }
            Fault::Garbage => {
                let _ = stream
                    .write_all(b"SSH-2.0-OpenSSH_9.2\r\nthis is not http\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            Fault::OversizedHead => {
                let line = format!("X-Big: {}\r\n", "b".repeat(60_000));
                let mut out = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
                for _ in 0..19 {
                    out.push_str(&line);
                }
                out.push_str("\r\nok");
                let _ = stream.write_all(out.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            Fault::ManyHeaders => {
                let mut out = format!("HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\n");
                for i in 0..300 {
                    out.push_str(&format!("X-H{i}: v\r\n"));
                }
                out.push_str("Content-Length: 2\r\n\r\nok");
                let _ = stream.write_all(out.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            Fault::ConflictingContentLength => {
                let out = cacheable_head("Content-Length: 5\r\nContent-Length: 6\r\n") + "hello!";
                let _ = stream.write_all(out.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            Fault::ContentLengthAndChunked => {
                // Read by Content-Length, the body is "5\r\nhel"; read as chunked, it is
                // "hello" and then the terminator. Either way the bytes that follow look like
                // a second response, which must never be taken as one.
                let out = cacheable_head("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n")
                    + "5\r\nhello\r\n0\r\n\r\n"
                    + POISON_RESPONSE;
                let _ = stream.write_all(out.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            Fault::BadChunkSize => {
                let out =
                    cacheable_head("Transfer-Encoding: chunked\r\n") + "zz\r\nhello\r\n0\r\n\r\n";
                let _ = stream.write_all(out.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            Fault::InformationalFlood => {
                let burst = "HTTP/1.1 100 Continue\r\n\r\n".repeat(1000);
                if stream.write_all(burst.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..600 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                return;
            }
            Fault::BodyOnHead => {
                let body = POISON_RESPONSE;
                let out = cacheable_head(&format!("Content-Length: {}\r\n", body.len())) + body;
                if stream.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
            Fault::NeverRespond => {
                tokio::time::sleep(Duration::from_secs(120)).await;
                return;
            }
            Fault::WebSocketEcho => {
                // One network round trip's worth of delay before agreeing. Pingora 0.9.1 ends
                // an upgraded connection at once when it happens to read the 101 before it has
                // forwarded the (empty) end of the handshake request, which a loopback origin
                // that answers instantly triggers now and then (see upgrade.rs).
                tokio::time::sleep(Duration::from_millis(100)).await;
                let out = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if stream.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
                if !buf.is_empty() && stream.write_all(&buf).await.is_err() {
                    return;
                }
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}
