//! A raw-TCP origin run by scripts: per path, a list of steps ([`Step`]: write bytes, write a
//! body piece, drip bytes, sleep, wait for the test's gate, reset, close, echo) played after
//! each request head it reads. Paths without a script get a well-formed cacheable 200. It
//! counts requests per path and connections, keeps every request head, and, per path, how many
//! body pieces its latest answer wrote and whether verge cut it off, so a test can tell from
//! the origin's side whether verge went back to it, reused a connection, or stopped reading.
//!
//! [`Fault`] names the misbehaviours the suite uses in several files.

use super::fetch::fetch;
use super::lock;
use super::process::Verge;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One thing the origin does while answering a request.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Write one body piece (already framed), counted in [`RawOrigin::pieces_sent`].
    Piece(Vec<u8>),
    /// Write these bytes one at a time, `every` apart.
    Drip {
        bytes: Vec<u8>,
        every: Duration,
    },
    /// Write these bytes every `every`, until the peer goes away (or the origin is dropped).
    Repeat {
        bytes: Vec<u8>,
        every: Duration,
    },
    Sleep(Duration),
    /// Wait until the test opens the gate ([`RawOrigin::open_gate`]; at most 20 s).
    Gate,
    /// Reset the connection (SO_LINGER 0).
    Reset,
    /// Close the connection cleanly (FIN).
    Close,
    /// Send back every byte that follows the request head, until the peer closes.
    Echo,
}

/// What a script is told about the request it answers.
pub struct Asked<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// This is the `n`th request for the path.
    pub n: u64,
    /// The origin's `Cache-Control` for cacheable answers.
    pub cache_control: &'a str,
    /// The `Age` cacheable answers carry, if any.
    pub age: Option<u64>,
}

/// Makes the steps for one request.
type MakeSteps = dyn Fn(&Asked) -> Vec<Step> + Send + Sync;

/// The steps for a path, made per request.
#[derive(Clone)]
pub struct Script(Arc<MakeSteps>);

impl Script {
    pub fn new(make: impl Fn(&Asked) -> Vec<Step> + Send + Sync + 'static) -> Script {
        Script(Arc::new(make))
    }
}

impl From<Vec<Step>> for Script {
    fn from(steps: Vec<Step>) -> Script {
        Script::new(move |_| steps.clone())
    }
}

impl From<Fault> for Script {
    fn from(fault: Fault) -> Script {
        Script::new(move |asked| fault.steps(asked))
    }
}

/// A cacheable 200 head (the origin's `Cache-Control` and `Age`) with these framing fields.
pub fn cacheable_head(asked: &Asked, framing: &str) -> String {
    let age = asked
        .age
        .map(|a| format!("Age: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 200 OK\r\nCache-Control: {}\r\n{age}Content-Type: text/plain\r\n{framing}\r\n",
        asked.cache_control
    )
}

/// The well-formed answer: a cacheable 200 with `Content-Length` and the body
/// `good <path> #<n>` (no body for HEAD); the connection stays open.
pub fn good(asked: &Asked) -> Vec<Step> {
    let body = format!("good {} #{}\n", asked.path, asked.n);
    let head = cacheable_head(asked, &format!("Content-Length: {}\r\n", body.len()));
    let out = if asked.method == "HEAD" {
        head
    } else {
        head + &body
    };
    vec![Step::Write(out.into_bytes())]
}

/// How long the dripping faults wait between bytes: longer than any read timeout in the tests.
pub const DRIP: Duration = Duration::from_secs(3);

/// The body of the response a `BodyOnHead` answer smuggles after its head.
pub const POISON_RESPONSE: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nCache-Control: max-age=600\r\n\r\nPOISON";

/// Ready-made answers, good and bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// [`good`].
    Good,
    /// Read the request, then close without a byte.
    CloseBeforeResponse,
    /// Send half a status line and header, then reset.
    ResetMidHeaders,
    /// Send a cacheable 200 head with `Content-Length: 1000` and 100 body bytes, then reset.
    ResetMidBody,
    /// Send a cacheable 200 head with `Content-Length: 1000` and 100 body bytes, then close
    /// cleanly (FIN): a Content-Length mismatch.
    ShortBody,
    /// Send a cacheable chunked 200 head and one chunk, then close without the last chunk.
    ChunkedThenClose,
    /// Send the response head one byte per [`DRIP`].
    DripHead,
    /// Send a cacheable 200 head with `Content-Length: 100` at once, then the body one byte per
    /// [`DRIP`].
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
    /// 1000 `100 Continue` heads and then, every 100 ms, another (never a final response).
    InformationalFlood,
    /// A cacheable 200 with a body, even for HEAD, whose body is itself a complete HTTP response
    /// ([`POISON_RESPONSE`]); the connection stays open, so a proxy that reuses it would read
    /// the poison as the answer to its next request.
    BodyOnHead,
    /// Read the request and never answer (connection left open).
    NeverRespond,
    /// Answer a WebSocket upgrade with 101, then echo every byte back (anything that came
    /// after the request head included).
    WebSocketEcho,
}

impl Fault {
    pub fn steps(self, asked: &Asked) -> Vec<Step> {
        use Step::*;
        let settle = Sleep(Duration::from_millis(200));
        let head = |framing: &str| cacheable_head(asked, framing);
        let write = |s: String| Write(s.into_bytes());
        match self {
            Fault::Good => good(asked),
            Fault::CloseBeforeResponse => vec![Close],
            Fault::ResetMidHeaders => vec![
                Write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Ty".to_vec()),
                Sleep(Duration::from_millis(50)),
                Reset,
            ],
            Fault::ResetMidBody | Fault::ShortBody => vec![
                write(head("Content-Length: 1000\r\n") + &"x".repeat(100)),
                settle,
                if self == Fault::ResetMidBody {
                    Reset
                } else {
                    Close
                },
            ],
            Fault::ChunkedThenClose => vec![
                write(head("Transfer-Encoding: chunked\r\n") + "64\r\n" + &"y".repeat(100) + "\r\n"),
                settle,
                Close,
            ],
            Fault::DripHead => vec![
                Drip {
                    bytes: (head("Content-Length: 2\r\n") + "ok").into_bytes(),
                    every: DRIP,
                },
                Close,
            ],
            Fault::DripBody => vec![
                write(head("Content-Length: 100\r\n")),
                Drip {
                    bytes: vec![b'z'; 100],
                    every: DRIP,
                },
                Close,
            ],
            Fault::Garbage => vec![
                Write(b"SSH-2.0-OpenSSH_9.2\r\nthis is not http\r\n\r\n".to_vec()),
                settle,
                Close,
            ],
            Fault::OversizedHead => {
                let line = format!("X-Big: {}\r\n", "b".repeat(60_000));
                let out = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_string()
                    + &line.repeat(19)
                    + "\r\nok";
                vec![write(out), settle, Close]
            }
            Fault::ManyHeaders => {
                let mut out = format!("HTTP/1.1 200 OK\r\nCache-Control: {}\r\n", asked.cache_control);
                for i in 0..300 {
                    out.push_str(&format!("X-H{i}: v\r\n"));
                }
                out.push_str("Content-Length: 2\r\n\r\nok");
                vec![write(out), settle, Close]
            }
            Fault::ConflictingContentLength => vec![
                write(head("Content-Length: 5\r\nContent-Length: 6\r\n") + "hello!"),
                settle,
                Close,
            ],
            // Read by Content-Length, the body is "5\r\nhel"; read as chunked, it is "hello"
            // and then the terminator. Either way the bytes that follow look like a second
            // response, which must never be taken as one.
            Fault::ContentLengthAndChunked => vec![
                write(
                    head("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n")
                        + "5\r\nhello\r\n0\r\n\r\n"
                        + POISON_RESPONSE,
                ),
                settle,
                Close,
            ],
            Fault::BadChunkSize => vec![
                write(head("Transfer-Encoding: chunked\r\n") + "zz\r\nhello\r\n0\r\n\r\n"),
                settle,
                Close,
            ],
            Fault::InformationalFlood => {
                let one = b"HTTP/1.1 100 Continue\r\n\r\n";
                vec![
                    Write(one.repeat(1000)),
                    Repeat {
                        bytes: one.to_vec(),
                        every: Duration::from_millis(100),
                    },
                ]
            }
            Fault::BodyOnHead => vec![write(
                head(&format!("Content-Length: {}\r\n", POISON_RESPONSE.len())) + POISON_RESPONSE,
            )],
            Fault::NeverRespond => vec![Sleep(Duration::from_secs(120)), Close],
            // One network round trip's worth of delay before agreeing. Pingora 0.9.1 ends an
            // upgraded connection at once when it happens to read the 101 before it has
            // forwarded the (empty) end of the handshake request, which a loopback origin that
            // answers instantly triggers now and then (see upgrade.rs).
            Fault::WebSocketEcho => vec![
                Sleep(Duration::from_millis(100)),
                Write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                        .to_vec(),
                ),
                Echo,
            ],
        }
    }
}

/// `path` (host `c.test` on `v`) now reaches `o` again (nothing was stored from what it did
/// before), is answered [`good`], and is then a hit: the route does cache, and verge still
/// serves.
pub async fn assert_nothing_stored(v: &Verge, o: &RawOrigin, path: &str) {
    let before = o.hits(path);
    o.set(path, Fault::Good);
    let fresh = fetch(v, path, &[]).await;
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    assert_eq!(o.hits(path), before + 1, "went to the origin again");
    assert_eq!(fresh.body, format!("good {path} #{}\n", before + 1));
    let again = fetch(v, path, &[]).await;
    assert!(again.cache_status.contains("hit"), "{}", again.cache_status);
    assert_eq!(again.body, fresh.body);
    assert_eq!(o.hits(path), before + 1);
}

#[derive(Default)]
struct PathLog {
    requests: u64,
    /// Every request head read, as text.
    heads: Vec<String>,
    /// Body pieces written by the latest answer.
    pieces: usize,
    /// The latest answer could not be written to the end: verge closed the connection.
    aborted: bool,
}

struct State {
    scripts: Mutex<BTreeMap<String, Script>>,
    paths: Mutex<BTreeMap<String, PathLog>>,
    connections: AtomicU64,
    cache_control: Mutex<String>,
    age: Mutex<Option<u64>>,
    gate: watch::Sender<bool>,
    /// Set when the origin is dropped: every connection task ends.
    stop: watch::Sender<bool>,
}

pub struct RawOrigin {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl RawOrigin {
    /// Listen on an ephemeral loopback port (kept for the origin's life). Every path answers
    /// [`good`] until scripted; cacheable answers carry `Cache-Control: max-age=600`.
    pub async fn start() -> RawOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            scripts: Mutex::new(BTreeMap::new()),
            paths: Mutex::new(BTreeMap::new()),
            connections: AtomicU64::new(0),
            cache_control: Mutex::new("max-age=600".into()),
            age: Mutex::new(None),
            gate: watch::channel(false).0,
            stop: watch::channel(false).0,
        });
        tokio::spawn(accept_loop(listener, state.clone()));
        RawOrigin { addr, state }
    }

    /// Answer requests for `path` this way from now on.
    pub fn set(&self, path: &str, script: impl Into<Script>) {
        lock(&self.state.scripts).insert(path.to_string(), script.into());
    }

    /// The `Cache-Control` of cacheable answers.
    pub fn set_cache_control(&self, value: &str) {
        *lock(&self.state.cache_control) = value.to_string();
    }

    /// The `Age` of cacheable answers (`None`: no `Age` field).
    pub fn set_age(&self, age: Option<u64>) {
        *lock(&self.state.age) = age;
    }

    /// Requests read for `path`.
    pub fn hits(&self, path: &str) -> u64 {
        lock(&self.state.paths).get(path).map_or(0, |p| p.requests)
    }

    /// Every request head read for `path`, in order.
    pub fn heads(&self, path: &str) -> Vec<String> {
        lock(&self.state.paths)
            .get(path)
            .map(|p| p.heads.clone())
            .unwrap_or_default()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Body pieces the latest answer for `path` has written.
    pub fn pieces_sent(&self, path: &str) -> usize {
        lock(&self.state.paths).get(path).map_or(0, |p| p.pieces)
    }

    /// Whether the latest answer for `path` was cut off by the peer.
    pub fn aborted(&self, path: &str) -> bool {
        lock(&self.state.paths).get(path).is_some_and(|p| p.aborted)
    }

    /// Let every [`Step::Gate`] pass, now and later.
    pub fn open_gate(&self) {
        self.state.gate.send_replace(true);
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.state.stop.send_replace(true);
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut stop = state.stop.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        state.connections.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        tokio::spawn(async move {
            let mut stop = state.stop.subscribe();
            tokio::select! {
                _ = serve_connection(stream, state.clone()) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

/// One request head read off the connection.
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

/// What playing a script left the connection as.
enum After {
    /// Ready for the next request.
    Open,
    Gone,
}

async fn serve_connection(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut stream, &mut buf).await {
        let n = {
            let mut paths = lock(&state.paths);
            let p = paths.entry(req.path.clone()).or_default();
            p.requests += 1;
            p.heads.push(req.head.clone());
            p.pieces = 0;
            p.aborted = false;
            p.requests
        };
        let script = lock(&state.scripts).get(&req.path).cloned();
        let cache_control = lock(&state.cache_control).clone();
        let asked = Asked {
            method: &req.method,
            path: &req.path,
            n,
            cache_control: &cache_control,
            age: *lock(&state.age),
        };
        let steps = match script {
            Some(s) => (s.0)(&asked),
            None => good(&asked),
        };
        if let After::Gone = play(&mut stream, &mut buf, &steps, &state, &req.path).await {
            return;
        }
    }
}

async fn play(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    steps: &[Step],
    state: &State,
    path: &str,
) -> After {
    let cut_off = || {
        if let Some(p) = lock(&state.paths).get_mut(path) {
            p.aborted = true;
        }
        After::Gone
    };
    for step in steps {
        match step {
            Step::Write(bytes) => {
                if stream.write_all(bytes).await.is_err() || stream.flush().await.is_err() {
                    return cut_off();
                }
            }
            Step::Piece(bytes) => {
                if stream.write_all(bytes).await.is_err() || stream.flush().await.is_err() {
                    return cut_off();
                }
                if let Some(p) = lock(&state.paths).get_mut(path) {
                    p.pieces += 1;
                }
            }
            Step::Drip { bytes, every } => {
                for b in bytes {
                    if stream.write_all(&[*b]).await.is_err() {
                        return cut_off();
                    }
                    tokio::time::sleep(*every).await;
                }
            }
            Step::Repeat { bytes, every } => loop {
                tokio::time::sleep(*every).await;
                if stream.write_all(bytes).await.is_err() {
                    return cut_off();
                }
            },
            Step::Sleep(d) => tokio::time::sleep(*d).await,
            Step::Gate => {
                let mut rx = state.gate.subscribe();
                let _ =
                    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|open| *open)).await;
            }
            Step::Reset => {
                let _ = stream.set_zero_linger();
                return After::Gone;
            }
            Step::Close => return After::Gone,
            Step::Echo => {
                if !buf.is_empty() && stream.write_all(buf).await.is_err() {
                    return After::Gone;
                }
                buf.clear();
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return After::Gone,
                        Ok(n) => {
                            if stream.write_all(&chunk[..n]).await.is_err() {
                                return After::Gone;
                            }
                        }
                    }
                }
            }
        }
    }
    After::Open
}
