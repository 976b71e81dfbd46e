//! A real origin for tests: counts requests per path, echoes what it received, and can be
//! stopped, restarted on the same port, or told to fail its health checks. Per path it can
//! answer with another status, extra headers, a fixed body, or an ETag it honours with 304 Not
//! Modified.

use super::lock;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What one request looked like when it reached the origin.
#[derive(Debug, Clone)]
#[allow(dead_code)] // fields read by some tests only
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    name: String,
    total: AtomicU64,
    per_path: Mutex<BTreeMap<String, u64>>,
    seen: Mutex<Vec<Seen>>,
    health_status: AtomicU16,
    /// Extra response headers per path.
    headers: Mutex<BTreeMap<String, Vec<(String, String)>>>,
    /// Status per path (200 otherwise).
    status: Mutex<BTreeMap<String, u16>>,
    /// ETag per path; a matching If-None-Match gets a 304.
    etags: Mutex<BTreeMap<String, String>>,
    /// 304s sent per path.
    not_modified: Mutex<BTreeMap<String, u64>>,
    delay_ms: AtomicU64,
    /// Pad every response body to at least this many bytes.
    body_size: AtomicU64,
    /// A fixed body per path, sent instead of the echo.
    bodies: Mutex<BTreeMap<String, Bytes>>,
}

pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Mutex<Option<watch::Sender<bool>>>,
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let if_none_match = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    if path == "/health" {
        let status = state.health_status.load(Ordering::Relaxed);
        let resp = Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"health\n")))
            .unwrap_or_default();
        return Ok(resp);
    }
    state.total.fetch_add(1, Ordering::Relaxed);
    *state
        .per_path
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(path.clone())
        .or_default() += 1;
    let seen = Seen {
        method,
        uri: uri.clone(),
        headers,
        body_len,
    };
    state
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(seen);
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let n = state.total.load(Ordering::Relaxed);
    let mut body = format!("origin={} uri={uri} n={n}\n", state.name);
    let body_size = usize::try_from(state.body_size.load(Ordering::Relaxed)).unwrap_or(0);
    if body.len() < body_size {
        body.push_str(&".".repeat(body_size - body.len()));
    }
    let etag = lock(&state.etags).get(&path).cloned();
    // If-None-Match compares weakly (RFC 9110 §13.1.2): `W/"a"` matches `"a"`
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let matches_etag = etag.as_deref().is_some_and(|tag| {
        if_none_match.as_deref().is_some_and(|inm| {
            inm.split(',')
                .any(|t| opaque(t) == opaque(tag) || t.trim() == "*")
        })
    });
    let status = if matches_etag {
        *lock(&state.not_modified).entry(path.clone()).or_default() += 1;
        304
    } else {
        lock(&state.status).get(&path).copied().unwrap_or(200)
    };
    let extra = lock(&state.headers).get(&path).cloned().unwrap_or_default();
    let typed = extra
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    let mut builder = Response::builder()
        .status(status)
        .header("x-origin", state.name.as_str());
    if !typed {
        builder = builder.header("content-type", "text/plain");
    }
    if let Some(tag) = etag {
        builder = builder.header("etag", tag);
    }
    for (k, v) in extra {
        builder = builder.header(k, v);
    }
    let fixed = lock(&state.bodies).get(&path).cloned();
    let body = if status == 304 {
        Bytes::new()
    } else {
        fixed.unwrap_or_else(|| Bytes::from(body))
    };
    Ok(builder.body(Full::new(body)).unwrap_or_default())
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: watch::Receiver<bool>) {
    loop {
        let mut stop_accept = stop.clone();
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop_accept.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        let mut stop_conn = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, state.clone()));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop_conn.changed() => {}
            }
        });
    }
}

impl Origin {
    /// Start an origin on an ephemeral loopback port.
    pub async fn start(name: &str) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let state = Arc::new(State {
            name: name.to_string(),
            health_status: AtomicU16::new(200),
            ..Default::default()
        });
        let origin = Origin {
            addr,
            state,
            stop: Mutex::new(None),
        };
        origin.spawn(listener);
        origin
    }

    fn spawn(&self, listener: TcpListener) {
        let (tx, rx) = watch::channel(false);
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        tokio::spawn(accept_loop(listener, self.state.clone(), rx));
    }

    /// Stop listening and drop every open connection: connects are refused from now on.
    pub fn stop(&self) {
        if let Some(tx) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(true);
        }
    }

    /// Listen again on the same port.
    pub async fn restart(&self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.spawn(listener);
    }

    /// Send these headers with every response for `path`.
    pub fn set_headers(&self, path: &str, headers: &[(&str, &str)]) {
        self.state
            .headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                path.to_string(),
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
    }

    /// Like [`set_headers`](Self::set_headers), plus an `Age` one second over the `max-age` in
    /// their `cache-control`: verge stores such a response already stale (its age counts from
    /// before it arrived), so a test that needs a stale entry has one at once, without
    /// sleeping. Every later response for `path` says the same, until headers are set again.
    pub fn set_headers_stale(&self, path: &str, headers: &[(&str, &str)]) {
        let max_age: u64 = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("cache-control"))
            .and_then(|(_, v)| {
                v.split(',')
                    .find_map(|d| d.trim().strip_prefix("max-age="))
                    .and_then(|n| n.parse().ok())
            })
            .expect("a cache-control with max-age");
        let age = (max_age + 1).to_string();
        let mut all = headers.to_vec();
        all.push(("age", &age));
        self.set_headers(path, &all);
    }

    /// Answer requests for `path` with this body (instead of the echo). A `content-type` among
    /// [`set_headers`](Self::set_headers) replaces the default `text/plain`.
    pub fn set_body(&self, path: &str, body: impl Into<Bytes>) {
        lock(&self.state.bodies).insert(path.to_string(), body.into());
    }

    /// Answer requests for `path` with this status.
    pub fn set_status(&self, path: &str, status: u16) {
        lock(&self.state.status).insert(path.to_string(), status);
    }

    /// Send this ETag for `path`, and answer a matching `If-None-Match` with 304.
    pub fn set_etag(&self, path: &str, etag: &str) {
        lock(&self.state.etags).insert(path.to_string(), etag.to_string());
    }

    /// 304s sent for `path`.
    pub fn not_modified(&self, path: &str) -> u64 {
        lock(&self.state.not_modified)
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every request for `path` that reached this origin, in order.
    pub fn seen_for(&self, path: &str) -> Vec<Seen> {
        lock(&self.state.seen)
            .iter()
            .filter(|s| s.uri.split('?').next() == Some(path))
            .cloned()
            .collect()
    }

    /// Wait this long before answering any request.
    pub fn set_delay_ms(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Pad every response body to at least `bytes`.
    pub fn set_body_size(&self, bytes: u64) {
        self.state.body_size.store(bytes, Ordering::Relaxed);
    }

    pub fn set_health_status(&self, status: u16) {
        self.state.health_status.store(status, Ordering::Relaxed);
    }

    /// Requests seen (health checks excluded).
    pub fn total(&self) -> u64 {
        self.state.total.load(Ordering::Relaxed)
    }

    pub fn hits(&self, path: &str) -> u64 {
        self.state
            .per_path
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// The last request that reached this origin.
    pub fn last_seen(&self) -> Option<Seen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop();
    }
}
