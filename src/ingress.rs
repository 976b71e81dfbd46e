//! The HTTP/1 front door: reads each request head itself under a whole-head deadline and size,
//! line and count limits, rejects ambiguous framing and request lines other than a plain
//! origin-form one, then hands the bytes to Pingora's proxy. These refusals happen here, before
//! the hit lane could answer.
//!
//! Pingora reads heads with a per-read timeout and a ~1 MiB cap, which leaves slowloris and
//! oversized heads to us. After the head, the connection stays watched
//! (`ingress/body_guard.rs`): the request body's chunked framing is checked strictly and its
//! pace kept, as Pingora reads it.
//! A listener's PROXY protocol header comes first (`ingress/proxy_protocol.rs`), then on a TLS
//! listener the handshake, run here (`ingress/tls_handshake.rs`) so that a
//! reload's ALPN applies to new connections.
//! HTTP/2 connections (ALPN `h2`, or h2c when enabled) go to Pingora, whose H2 limits are
//! bounded, with their frames counted against a budget on the way (`ingress/h2_frames.rs`).

use crate::config::{Limits, ProxyProtocol};
use crate::http_syntax::head_index::HeadIndex;
use crate::http_syntax::request_line;
use crate::metrics::METRICS;
use crate::proxy::hit_lane::{plain_request, HitLane, Lane, PlainRequest};
use crate::proxy::lane_route::{LaneRoutes, Routed};
use crate::proxy::pass_lane::PassLane;
use crate::proxy::EdgeProxy;
use crate::proxy::LaneWaited;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{GetSocketDigest, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

mod body_guard;
mod h2_frames;
mod proxy_protocol;
mod tls_handshake;
mod watched_stream;

use body_guard::BodyGuard;
pub use body_guard::{BodyFraming, BodyPace};
use h2_frames::{FrameBudget, FrameBudgetSpec};
pub use tls_handshake::TlsHandshake;
use watched_stream::Watched;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How much longer Pingora's own body read timeout is than the body guard's.
const BACKSTOP: Duration = Duration::from_secs(1);

/// An HTTP/1 client connection, watched by its body guard.
type Client = Watched<BodyGuard>;

/// Outcome of scanning the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadScan {
    /// A whole head is buffered: its first `head_len` bytes, then a body framed as `body`.
    Complete {
        /// Bytes of the head, its final empty line included.
        head_len: usize,
        /// How the body that follows is framed.
        body: BodyFraming,
    },
    /// More bytes are needed.
    Incomplete,
    /// Refuse the request with this status; `reason` labels the metric.
    Reject {
        /// The status answered before closing.
        status: u16,
        /// The `verge_requests_rejected_total` reason label.
        reason: &'static str,
    },
}

fn reject(status: u16, reason: &'static str) -> HeadScan {
    HeadScan::Reject { status, reason }
}

/// Check a (possibly partial) request head against the limits, the request-line rules
/// ([`request_line::parse`]) and RFC 9112 framing rules. Each line is judged once it is whole,
/// so a decision never depends on how the network split the bytes. Pure: looks only at `buf`.
pub fn scan_head(buf: &[u8], limits: &Limits) -> HeadScan {
    scan_head_indexed(buf, limits, &mut HeadIndex::new())
}

/// [`scan_head`], noting in `index` where the request line's parts and each field line lie, so
/// that the hit lane reads the head without parsing it again. `index` describes `buf` when the
/// scan is [`HeadScan::Complete`].
pub fn scan_head_indexed(buf: &[u8], limits: &Limits, index: &mut HeadIndex) -> HeadScan {
    index.clear();
    // RFC 9112 §2.2: ignore empty lines before the request line.
    let mut pos = 0;
    while pos < buf.len() && (buf[pos] == b'\r' || buf[pos] == b'\n') {
        pos += 1;
    }
    if pos > 64 {
        return reject(400, "bad_request_line");
    }
    if pos > 0 && !crlf_lines(&buf[..pos]) {
        index.lenient_bytes = true;
    }
    let Some(line_end) = find_lf(&buf[pos..]) else {
        // a line's own CR may already be here without its LF: it does not count toward the limit
        return if trim_cr(&buf[pos..]).len() > limits.max_request_line {
            reject(414, "request_line_too_long")
        } else {
            HeadScan::Incomplete
        };
    };
    let request_line = trim_cr(&buf[pos..pos + line_end]);
    if request_line.len() > limits.max_request_line {
        return reject(414, "request_line_too_long");
    }
    let http10 = match request_line::parse(request_line) {
        Ok(line) => {
            // `parse` took three parts split by single spaces: the method, then the target
            let method_end = pos + line.method.len();
            let target = method_end + 1;
            index.set_request_line((pos, method_end), (target, target + line.target.len()));
            line.http10
        }
        Err(bad) => return reject(400, bad.reason()),
    };
    index.http10 = http10;
    pos += line_end + 1;
    let headers_start = pos;

    let mut count = 0usize;
    let mut content_lengths = 0usize;
    let mut declared_length: Option<u64> = None;
    let mut transfer_encodings = 0usize;
    let mut te_chunked_only = true;
    loop {
        let Some(end) = find_lf(&buf[pos..]) else {
            let partial = trim_cr(&buf[pos..]).len();
            if partial > limits.max_header_line {
                return reject(431, "header_line_too_long");
            }
            if buf.len() - headers_start > limits.max_headers_size {
                return reject(431, "headers_too_large");
            }
            return HeadScan::Incomplete;
        };
        let line_start = pos;
        let line = trim_cr(&buf[pos..pos + end]);
        pos += end + 1;
        if pos - headers_start > limits.max_headers_size {
            return reject(431, "headers_too_large");
        }
        if line.is_empty() {
            break;
        }
        if line.len() > limits.max_header_line {
            return reject(431, "header_line_too_long");
        }
        count += 1;
        if count > limits.max_headers {
            return reject(431, "too_many_headers");
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return reject(400, "obs_fold");
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return reject(400, "bad_header");
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
            return reject(400, "bad_header");
        }
        let raw_value = &line[colon + 1..];
        // a value of tabs and visible or non-ASCII bytes holds no CR or NUL
        if !raw_value.iter().all(|b| is_field_value_byte(*b)) {
            index.lenient_bytes = true;
            if raw_value
                .trim_ascii()
                .iter()
                .any(|b| *b == b'\r' || *b == 0)
            {
                return reject(400, "bad_header");
            }
        }
        let value_from = colon + 1 + (raw_value.len() - raw_value.trim_ascii_start().len());
        let value = line[value_from..].trim_ascii_end();
        let value_start = line_start + value_from;
        index.push_field(
            (line_start, line_start + colon),
            (value_start, value_start + value.len()),
        );
        if name.eq_ignore_ascii_case(b"content-length") {
            content_lengths += 1 + value.iter().filter(|b| **b == b',').count();
            declared_length = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encodings += 1;
            te_chunked_only &= value.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") && names_framing(value) {
            // framing is never hop-by-hop: a proxy that honoured it would drop the body's length
            return reject(400, "connection_names_framing");
        }
    }
    if content_lengths > 1 {
        return reject(400, "duplicate_content_length");
    }
    if content_lengths == 1 && declared_length.is_none() {
        return reject(400, "bad_content_length");
    }
    if declared_length.is_some_and(|n| n > limits.max_body) {
        return reject(413, "body_too_large");
    }
    if transfer_encodings > 0 {
        if content_lengths > 0 {
            return reject(400, "content_length_and_transfer_encoding");
        }
        if http10 {
            return reject(400, "transfer_encoding_on_http10");
        }
        if transfer_encodings > 1 {
            return reject(400, "multiple_transfer_encoding");
        }
        if !te_chunked_only {
            return reject(501, "unsupported_transfer_encoding");
        }
    }
    let body = match (transfer_encodings, declared_length) {
        (0, Some(n)) => BodyFraming::Length(n),
        (0, None) => BodyFraming::None,
        _ => BodyFraming::Chunked,
    };
    index.complete(pos);
    HeadScan::Complete {
        head_len: pos,
        body,
    }
}

/// Whether a `Connection` value lists `Content-Length` or `Transfer-Encoding`.
fn names_framing(connection: &[u8]) -> bool {
    connection.split(|b| *b == b',').any(|option| {
        let option = option.trim_ascii();
        option.eq_ignore_ascii_case(b"content-length")
            || option.eq_ignore_ascii_case(b"transfer-encoding")
    })
}

fn find_lf(b: &[u8]) -> Option<usize> {
    b.iter().position(|c| *c == b'\n')
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Whether `prefix` (CR and LF bytes) is a run of empty lines as `httparse` reads them: each
/// CR followed by an LF.
fn crlf_lines(prefix: &[u8]) -> bool {
    let mut bytes = prefix.iter();
    while let Some(b) = bytes.next() {
        if *b == b'\r' && bytes.next() != Some(&b'\n') {
            return false;
        }
    }
    true
}

/// A byte `httparse` takes in a field value (RFC 9110's `field-vchar`, `obs-text`, SP, HTAB).
fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What reading one request head produced.
enum Head {
    /// A whole head is in the buffer, followed by `buf.len() - head_len` bytes of what comes
    /// next; the index says where its parts lie.
    Ready {
        head_len: usize,
        body: BodyFraming,
    },
    Closed,
    Reject {
        status: u16,
        reason: &'static str,
    },
}

/// Wraps Pingora's HTTP proxy app for one listener.
pub struct Ingress {
    proxy: Arc<HttpProxy<EdgeProxy>>,
    limits: Limits,
    listener: String,
    h2c: bool,
    routes: Option<LaneRoutes>,
    hits: Option<HitLane>,
    passes: Option<PassLane>,
    tls: Option<TlsHandshake>,
    proxy_protocol: Option<ProxyProtocol>,
}

impl Ingress {
    /// The front door for one listener, handing accepted heads to `proxy`.
    pub fn new(proxy: HttpProxy<EdgeProxy>, limits: Limits, listener: String, h2c: bool) -> Self {
        Ingress {
            proxy: Arc::new(proxy),
            limits,
            listener,
            h2c,
            routes: None,
            hits: None,
            passes: None,
            tls: None,
            proxy_protocol: None,
        }
    }

    /// Read the PROXY protocol header of connections from these sources first
    /// (`ingress/proxy_protocol.rs`).
    pub fn with_proxy_protocol(mut self, spec: Option<ProxyProtocol>) -> Self {
        self.proxy_protocol = spec;
        self
    }

    /// Terminate TLS on each connection before anything else (see [`TlsHandshake`]).
    pub fn with_tls(mut self, tls: TlsHandshake) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Route plain requests for the lanes (one of them at least must be added for any to run).
    pub fn with_lane_routes(mut self, routes: LaneRoutes) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Answer plain hits in the front door (see [`crate::proxy::hit_lane`]).
    pub fn with_hit_lane(mut self, hits: HitLane) -> Self {
        self.hits = Some(hits);
        self
    }

    /// Proxy plain requests on routes that do not cache in the front door (see
    /// [`crate::proxy::pass_lane`]).
    pub fn with_pass_lane(mut self, passes: PassLane) -> Self {
        self.passes = Some(passes);
        self
    }

    /// Answer the request in `head` from the hit lane, if it can: `None` when it goes the full
    /// way. `Some(true)`: answered, and the connection stays open for the next request.
    async fn answer_hit(
        &self,
        stream: &mut Client,
        (req, routed): (&PlainRequest<'_>, &Routed),
        last: bool,
        waited: &mut Option<Duration>,
    ) -> Option<bool> {
        let hits = self.hits.as_ref()?;
        let started = std::time::Instant::now();
        let answer = match hits.answer(req, routed, last, false) {
            Lane::Answer(answer) => answer,
            Lane::Decline => return None,
            Lane::Wait(mut fetched) => {
                // collapse onto the other request's fetch here, within the cache lock's wait
                let limit = hits.lock_wait();
                let _ = tokio::time::timeout(limit, fetched.changed()).await;
                *waited = Some(started.elapsed());
                match hits.answer(req, routed, last, true) {
                    Lane::Answer(answer) => answer,
                    Lane::Decline | Lane::Wait(_) => return None,
                }
            }
        };
        let sent = write_both(stream, &answer.head, &answer.body).await.is_ok();
        let client = answer.logs().then(|| peer_ip(stream)).flatten();
        hits.record(&answer, sent, client, started.elapsed());
        Some(sent && !answer.close)
    }

    /// Whether the connection speaks HTTP/2. `None` when, on an h2c listener, fewer bytes than
    /// the 24-byte preface arrived within the head deadline: Pingora's peek has no timeout of its
    /// own (an idle client would hold the connection forever), and a timed-out peek may have
    /// consumed what did arrive, so the connection can only be closed.
    async fn is_http2(&self, stream: &mut Stream) -> Option<bool> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return Some(true);
        }
        if !self.h2c || stream.get_ssl_digest().is_some() {
            return Some(false);
        }
        let mut buf = [0u8; H2_PREFACE.len()];
        let peek = tokio::time::timeout(self.limits.header_timeout, stream.try_peek(&mut buf));
        match peek.await {
            Ok(read) => Some(matches!(read, Ok(true)) && buf == H2_PREFACE),
            Err(_) => None,
        }
    }

    /// Read one head into `buf` (empty), noting where its parts lie in `index`. `deadline`
    /// bounds the whole head; `idle` bounds the wait for its first byte; `served` counts the
    /// requests already answered on the connection.
    async fn read_head(
        &self,
        stream: &mut Client,
        (buf, index): (&mut BytesMut, &mut HeadIndex),
        idle: Duration,
        served: u32,
        shutdown: &ShutdownWatch,
    ) -> Head {
        let limits = &self.limits;
        let cap = limits.max_request_line + limits.max_headers_size + 128;
        let mut deadline: Option<Instant> = None;
        let mut shutdown = shutdown.clone();
        // A connection's first request is awaited even during a shutdown: the client has sent
        // it or is sending it (the header timeout bounds the wait); an idle keep-alive
        // connection has no request to lose.
        let first = served == 0;
        if *shutdown.borrow() && !first {
            return Head::Closed;
        }
        loop {
            let wait_until = deadline.unwrap_or_else(|| Instant::now() + idle);
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let read = tokio::select! {
                r = tokio::time::timeout_at(wait_until, stream.read_buf(&mut *buf)) => r,
                _ = shutdown.changed(), if buf.is_empty() && !first => return Head::Closed,
            };
            match read {
                Err(_) if buf.is_empty() => return Head::Closed,
                Err(_) => {
                    return Head::Reject {
                        status: 408,
                        reason: "header_timeout",
                    }
                }
                Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
                Ok(Ok(_)) => {}
            }
            if deadline.is_none() {
                deadline = Some(Instant::now() + limits.header_timeout);
            }
            match scan_head_indexed(buf, limits, index) {
                HeadScan::Complete { head_len, body } => return Head::Ready { head_len, body },
                HeadScan::Reject { status, reason } => return Head::Reject { status, reason },
                HeadScan::Incomplete if buf.len() > cap => {
                    return Head::Reject {
                        status: 431,
                        reason: "headers_too_large",
                    }
                }
                HeadScan::Incomplete => {}
            }
        }
    }
}

/// The client connection's peer address.
fn peer_ip(stream: &Client) -> Option<std::net::IpAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip())
}

/// Write `head` then `body` with as few writes as the socket takes (vectored: one `writev` for a
/// whole response when it fits the socket buffer), then flush.
async fn write_both(stream: &mut Client, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() || !body.is_empty() {
        let parts = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
        let n = stream.write_vectored(&parts).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[(n - from_head).min(body.len())..];
    }
    stream.flush().await
}

/// Keeps the open-connection gauge right however the connection ends.
struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn write_rejection<S: AsyncWriteExt + Unpin>(stream: &mut S, status: u16) {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = format!("verge: {reason}\n");
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nServer: verge\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(resp.as_bytes()).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    if let Err(e) = tokio::time::timeout(Duration::from_secs(5), write).await {
        log::debug!("rejection not delivered: {e}");
    }
}

#[async_trait]
impl ServerApp for Ingress {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if let Some(spec) = &self.proxy_protocol {
            let timeout = self.limits.header_timeout;
            if let Err(e) = proxy_protocol::accept(spec, &mut stream, timeout).await {
                log::debug!("listener {}: {e}", self.listener);
                if e != proxy_protocol::BadHeader::Closed {
                    METRICS
                        .rejected
                        .with_label_values(&["proxy_protocol"])
                        .inc();
                }
                return None;
            }
        }
        if let Some(tls) = &self.tls {
            stream = tls.accept(stream).await?;
        }
        METRICS
            .connections_total
            .with_label_values(&[&self.listener])
            .inc();
        let gauge = METRICS
            .connections_open
            .with_label_values(&[&self.listener]);
        gauge.inc();
        let open = gauge.get();
        let _open = OpenConnection(gauge);
        if open > i64::from(self.limits.max_connections) {
            METRICS
                .rejected
                .with_label_values(&["too_many_connections"])
                .inc();
            if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
                write_rejection(&mut stream, 503).await;
            }
            return None;
        }

        match self.is_http2(&mut stream).await {
            Some(true) => {
                let spec = FrameBudgetSpec {
                    burst: self.limits.h2.frame_budget,
                    per_second: self.limits.h2.frame_rate,
                };
                let stream: Stream = Box::new(Watched::new(stream, FrameBudget::new(spec)));
                return ServerApp::process_new(&self.proxy, stream, shutdown).await;
            }
            Some(false) => {}
            None => {
                METRICS
                    .rejected
                    .with_label_values(&["header_timeout"])
                    .inc();
                return None;
            }
        }

        // requests answered on this connection so far (for the keep-alive request limit)
        let mut served: u32 = 0;
        let mut idle = self.limits.header_timeout;
        let pace = BodyPace {
            idle: self.limits.body_timeout,
            min_rate: self.limits.body_min_rate,
        };
        let guard = BodyGuard::new(pace, self.limits.max_headers_size, self.limits.send_timeout);
        let mut stream = Watched::new(stream, guard);
        // The head buffer, kept from one request to the next while the hit lane answers them
        // (a request it leaves takes the buffer to Pingora), and where the head's parts lie.
        let mut buf = BytesMut::new();
        let mut index = HeadIndex::new();
        loop {
            buf.clear();
            let into = (&mut buf, &mut index);
            match self
                .read_head(&mut stream, into, idle, served, shutdown)
                .await
            {
                Head::Closed => return None,
                Head::Reject { status, reason } => {
                    METRICS.rejected.with_label_values(&[reason]).inc();
                    write_rejection(&mut stream, status).await;
                    return None;
                }
                Head::Ready { head_len, body } => {
                    // reuses left after this request (0: it is the connection's last)
                    let reuses = self.limits.keepalive_requests.saturating_sub(served + 1);
                    let last = reuses == 0 || *shutdown.borrow();
                    served = served.saturating_add(1);
                    idle = self.limits.keepalive_timeout;
                    let mut waited = None;
                    // a plain request, read and routed once for the lanes
                    let plain = self.routes.as_ref().and_then(|routes| {
                        let req = plain_request(&buf[..], &index)?;
                        let routed = routes.route(&req)?;
                        Some((req, routed))
                    });
                    if let Some((req, routed)) = &plain {
                        let started = std::time::Instant::now();
                        let lane = (req, routed);
                        match self.answer_hit(&mut stream, lane, last, &mut waited).await {
                            Some(true) => continue,
                            Some(false) => return None,
                            None => {}
                        }
                        if let Some(passes) = self.passes.as_ref().filter(|_| waited.is_none()) {
                            let client = peer_ip(&stream);
                            let served = passes.serve(&mut stream, lane, last, client, started);
                            match served.await {
                                Some(true) => continue,
                                Some(false) => return None,
                                None => {}
                            }
                        }
                    }
                    drop(plain);
                    // the body bytes that came with the head are judged before routing
                    if let Err(refusal) = stream.watch.start(body, &buf[head_len..]) {
                        write_rejection(&mut stream, refusal.status()).await;
                        return None;
                    }
                    let mut session = ServerSession::new_http1(Box::new(stream));
                    if let Some(waited) = waited {
                        // the lock's wait goes on from where the hit lane's stopped
                        session.set_connection_user_context(Some(Box::new(LaneWaited(waited))));
                    }
                    session.set_keepalive(if last {
                        None
                    } else {
                        Some(self.limits.keepalive_timeout.as_secs())
                    });
                    session.set_keepalive_reuses_remaining(Some(reuses));
                    // the body guard times body reads; Pingora's own per-read timeout stays
                    // behind it as a backstop
                    session.set_read_timeout(Some(self.limits.body_timeout + BACKSTOP));
                    // Responses go out through Pingora's cancel-safe proxy tasks: while this
                    // client is slow to read, Pingora keeps taking the origin's body into the
                    // cache, so a fill runs at the origin's pace for every other reader
                    // (without them, one stalled client stalls everyone reading the fill). A
                    // client that takes nothing in is cut off by the body guard's send timeout.
                    session.set_proxy_tasks_enabled(true);
                    session.set_pipelined_prefix(std::mem::take(&mut buf));
                    let reused = self
                        .proxy
                        .process_new_http_unboxed(session, shutdown)
                        .await?;
                    stream = Watched::recover(reused.consume().0)?;
                }
            }
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{request_directives, rfc9111};
    use crate::config::RouteCache;
    use crate::http_syntax::head_index::MAX_FIELDS;
    use crate::proxy::hit_lane::{plain_request, PlainRequest, SHAPING_FIELDS};
    use http::Method;

    fn scan(text: &str) -> HeadScan {
        scan_head(text.as_bytes(), &Limits::default())
    }

    fn rejected(text: &str) -> u16 {
        match scan(text) {
            HeadScan::Reject { status, .. } => status,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn complete_and_incomplete() {
        assert!(matches!(
            scan("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadScan::Complete { .. }
        ));
        assert!(matches!(
            scan("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadScan::Complete { .. }
        ));
        assert_eq!(scan("GET / HTTP/1.1\r\nHost: a\r\n"), HeadScan::Incomplete);
        assert_eq!(scan("GET / HT"), HeadScan::Incomplete);
    }

    #[test]
    fn a_line_at_its_limit_is_accepted_wherever_the_network_splits_it() {
        let limits = Limits {
            max_request_line: 32,
            max_header_line: 24,
            ..Limits::default()
        };
        let head = format!(
            "GET /{} HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(18),
            "b".repeat(21)
        );
        for end in 0..head.len() {
            assert!(
                !matches!(
                    scan_head(&head.as_bytes()[..end], &limits),
                    HeadScan::Reject { .. }
                ),
                "split after {end} bytes"
            );
        }
        assert!(matches!(
            scan_head(head.as_bytes(), &limits),
            HeadScan::Complete { .. }
        ));
    }

    #[test]
    fn size_limits() {
        let long_uri = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
        assert_eq!(rejected(&long_uri), 414);
        // a partial request line over the limit is refused before it ends
        assert_eq!(rejected(&format!("GET /{}", "a".repeat(9000))), 414);
        let long_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(9000));
        assert_eq!(rejected(&long_header), 431);
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(rejected(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
        let big: String = (0..8)
            .map(|i| format!("X-{i}: {}\r\n", "c".repeat(5000)))
            .collect();
        assert_eq!(rejected(&format!("GET / HTTP/1.1\r\n{big}\r\n")), 431);
    }

    #[test]
    fn ambiguous_framing() {
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\n"),
            400
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            rejected("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert!(matches!(
            scan("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadScan::Complete { .. }
        ));
    }

    #[test]
    fn the_body_framing_is_read_off_the_head() {
        let framed = |text: &str| match scan(text) {
            HeadScan::Complete { head_len, body } => (head_len, body),
            other => panic!("{text:?}: {other:?}"),
        };
        let head = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            framed(&format!("{head}5\r\nhello")),
            (head.len(), BodyFraming::Chunked)
        );
        let head = "POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(framed(head), (head.len(), BodyFraming::Length(12)));
        let head = "\r\nGET / HTTP/1.1\n\n";
        assert_eq!(framed(head), (head.len(), BodyFraming::None));
        for length in ["+5", "0x5", "", "5 5", "-1"] {
            let head = format!("POST / HTTP/1.1\r\nContent-Length: {length}\r\n\r\n");
            assert_eq!(reason(&head), "bad_content_length", "{length:?}");
        }
    }

    #[test]
    fn malformed_lines() {
        assert_eq!(rejected("GET / HTTP/1.1\r\nX: a\r\n  folded\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/1.1\r\nX a\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/1.1\r\nX : a\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"), 400);
    }

    fn reason(text: &str) -> &'static str {
        match scan(text) {
            HeadScan::Reject {
                status: 400,
                reason,
            } => reason,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn request_lines_are_plain_origin_form() {
        assert_eq!(
            reason("GET !foo HTTP/1.1\r\nHost: a\r\n\r\n"),
            "target_not_origin_form"
        );
        assert_eq!(
            reason("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
            "bad_request_line"
        );
        assert_eq!(reason("gET / HTTP/1.1\r\nHost: a\r\n\r\n"), "bad_method");
        // refused as soon as the line is whole
        assert_eq!(
            reason("GET http://a/ HTTP/1.1\r\n"),
            "target_not_origin_form"
        );
        assert!(matches!(
            scan("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadScan::Complete { .. }
        ));
    }

    /// Scan `text` as the front door does and hand what the hit lane reads of it (`None` also
    /// when the scan did not find a whole head: the lane is never asked) to `check`.
    fn with_plain(text: &str, check: impl FnOnce(Option<&PlainRequest<'_>>)) {
        let mut index = HeadIndex::new();
        let scanned = scan_head_indexed(text.as_bytes(), &Limits::default(), &mut index);
        let plain = matches!(scanned, HeadScan::Complete { .. })
            .then(|| plain_request(text.as_bytes(), &index))
            .flatten();
        check(plain.as_ref());
    }

    #[test]
    fn a_plain_get_or_head_is_read() {
        with_plain(
            "GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com\r\nAccept: */*\r\n\r\n",
            |r| {
                let r = r.expect("plain");
                assert_eq!(r.method, Method::GET);
                assert_eq!(
                    (r.path_and_query, r.path, r.host, r.close),
                    ("/a/b?x=1", "/a/b", "Example.com", false)
                );
                assert_eq!(r.view().values("accept").collect::<Vec<_>>(), [b"*/*"]);
            },
        );
        with_plain(
            "HEAD / HTTP/1.1\r\nhost: a\r\nConnection: Close\r\nCookie: c=1\r\n\r\n",
            |r| {
                let r = r.expect("plain");
                assert!(r.head_only() && r.close && r.view().contains("cookie"));
            },
        );
        with_plain(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
            |r| assert!(r.is_some()),
        );
    }

    #[test]
    fn a_different_shape_of_answer_goes_the_full_way() {
        for head in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a/../b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\"\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nIf-Modified-Since: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-hop\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nVerge-Tier-Hop: b 1 0 http 00\r\n\r\n",
            // a pipelined second request, or an unfinished head
            "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n",
        ] {
            with_plain(head, |r| assert_eq!(r, None, "{head:?}"));
        }
    }

    #[test]
    fn the_cache_rules_decide_on_the_lanes_view_as_on_the_full_path() {
        let rules = RouteCache::default();
        let public = RouteCache {
            public: true,
            ..RouteCache::default()
        };
        for (head, bypass_private, bypass_public) in [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", false, false),
            ("POST / HTTP/1.1\r\nHost: a\r\n\r\n", true, true),
            ("PURGE / HTTP/1.1\r\nHost: a\r\n\r\n", true, true),
            // credentials are decided against the stored entry (`hit_decision::decide`)
            (
                "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: x\r\n\r\n",
                false,
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nCookie: c=1\r\n\r\n",
                true,
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nCache-Control: no-store\r\n\r\n",
                true,
                true,
            ),
        ] {
            with_plain(head, |r| {
                let r = r.expect("plain");
                let view = r.view();
                assert_eq!(
                    rfc9111::request_bypass(&view, &rules).is_some(),
                    bypass_private,
                    "{head:?}"
                );
                assert_eq!(
                    rfc9111::request_bypass(&view, &public).is_some(),
                    bypass_public,
                    "{head:?}"
                );
                let authorized = head.contains("Authorization");
                assert_eq!(
                    request_directives::for_route(&view, &rules).credentials,
                    authorized,
                    "{head:?}"
                );
                assert!(!request_directives::for_route(&view, &public).credentials);
            });
        }
    }

    /// What the lane makes of a head: method, target, path, host, close and the field lines.
    type Reading<'a> = (
        Method,
        &'a str,
        &'a str,
        &'a str,
        bool,
        Vec<(&'a [u8], &'a [u8])>,
    );

    fn reading<'a>(r: &PlainRequest<'a>) -> Reading<'a> {
        let fields = r.fields.iter();
        let lines = fields.map(|f| (f.name(r.head), f.value(r.head))).collect();
        (
            r.method.clone(),
            r.path_and_query,
            r.path,
            r.host,
            r.close,
            lines,
        )
    }

    /// The hit lane's reading of a head before the scan indexed it: `httparse` over the buffer,
    /// then `http`'s target parse and the path checks.
    fn httparse_plain_request<'a>(
        head: &'a [u8],
        lines: &'a mut [httparse::Header<'a>],
    ) -> Option<Reading<'a>> {
        let mut req = httparse::Request::new(lines);
        match req.parse(head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            _ => return None,
        }
        let method = http::Method::from_bytes(req.method?.as_bytes()).ok()?;
        if req.version? != 1 {
            return None;
        }
        let target = req.path?;
        if target.contains('#') {
            return None;
        }
        let parsed = http::uri::PathAndQuery::try_from(target).ok()?;
        if parsed.as_str() != target
            || crate::http_syntax::target::check_path(method.as_str(), parsed.path()).is_err()
        {
            return None;
        }
        let path = &target[..parsed.path().len()];
        let (mut host, mut close) = (None, false);
        let fields: &'a [httparse::Header<'a>] = req.headers;
        for field in fields {
            let name = field.name;
            if name.eq_ignore_ascii_case("host") {
                if host.is_some() {
                    return None;
                }
                host = Some(std::str::from_utf8(field.value).ok()?);
            } else if name.eq_ignore_ascii_case("connection") {
                for option in field.value.split(|b| *b == b',') {
                    let option = option.trim_ascii();
                    if option.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !option.eq_ignore_ascii_case(b"keep-alive") && !option.is_empty() {
                        return None;
                    }
                }
            } else if SHAPING_FIELDS.iter().any(|d| name.eq_ignore_ascii_case(d))
                // the tier's hop marker
                || name.eq_ignore_ascii_case("verge-tier-hop")
            {
                return None;
            }
        }
        let lines = fields
            .iter()
            .map(|f| (f.name.as_bytes(), f.value))
            .collect();
        Some((method, target, path, host?, close, lines))
    }

    #[test]
    fn the_lane_reads_the_scanned_head_as_httparse_read_it() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        fn pick(next: &mut dyn FnMut(usize) -> usize, from: &[&'static str]) -> &'static str {
            from[next(from.len())]
        }
        const PREFIXES: &[&str] = &["", "", "", "\r\n", "\n", "\r", "\r\r\n", "\n\r\n", "\r\n\r"];
        const METHODS: &[&str] = &["GET", "GET", "HEAD", "POST", "OPTIONS", "PURGE", "gET"];
        const TARGETS: &[&str] = &[
            "/",
            "/a/b?x=1",
            "*",
            "/a<b",
            "/a?x=\"1\"",
            "/a`b",
            "/a?b`c",
            "/{j}",
            "/a?<",
            "/%41",
            "/a/../b",
            "/a#f",
            "/a?b?c",
            "/~!$&'()*+,;=:@",
            "/a\\b",
            "/?a\\b",
            "/a%2Fb",
        ];
        const VERSIONS: &[&str] = &["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"];
        const ENDS: &[&str] = &["\r\n", "\r\n", "\r\n", "\n", "\r\r\n"];
        const NAMES: &[&str] = &[
            "Host",
            "host",
            "HOST",
            "Connection",
            "Accept",
            "Cookie",
            "Cache-Control",
            "Range",
            "If-None-Match",
            "Content-Length",
            "Transfer-Encoding",
            "Expect",
            "Verge-Tier-Hop",
            "X-A",
            "User-Agent",
            "X A",
            "",
            "Accept-Encoding",
        ];
        const SEPARATORS: &[&str] = &[":", ": ", ": ", ":\t", ":  ", " :"];
        const VALUES: &[&str] = &[
            "a",
            "example.com",
            "close",
            "keep-alive",
            "Close, keep-alive",
            "x-hop",
            "0",
            "5",
            "chunked",
            "no-store",
            "",
            " ",
            "a b",
            "a\t",
            "\x01",
            "a\x0c",
            "\x0cb",
            "\x7f",
            "a\rb",
            "\r",
            "\0",
            "\u{e9}",
            "caf\u{e9}.com",
            "*/*",
            "\"x\"",
            "a,b",
        ];
        let limits = Limits::default();
        let (mut complete, mut plain) = (0, 0);
        for round in 0..200_000 {
            let mut head = String::new();
            head.push_str(pick(&mut next, PREFIXES));
            head.push_str(pick(&mut next, METHODS));
            head.push(' ');
            head.push_str(pick(&mut next, TARGETS));
            head.push(' ');
            head.push_str(pick(&mut next, VERSIONS));
            head.push_str(pick(&mut next, ENDS));
            // around `MAX_FIELDS` now and then, of names the lane takes
            let many = round % 50 == 0;
            let fields = if many { 60 + next(8) } else { next(5) };
            let host_first = next(4) != 0;
            for i in 0..fields {
                if i == 0 && host_first {
                    head.push_str("Host: a\r\n");
                    continue;
                }
                head.push_str(if many {
                    pick(&mut next, &["Accept", "X-A", "Cookie"])
                } else {
                    pick(&mut next, NAMES)
                });
                head.push_str(pick(&mut next, SEPARATORS));
                for _ in 0..next(3) {
                    head.push_str(pick(&mut next, VALUES));
                }
                head.push_str(pick(&mut next, ENDS));
            }
            head.push_str(pick(&mut next, ENDS));
            head.push_str(pick(&mut next, &["", "", "", "GET", "x"]));
            let buf = head.as_bytes();
            let mut index = HeadIndex::new();
            if !matches!(
                scan_head_indexed(buf, &limits, &mut index),
                HeadScan::Complete { .. }
            ) {
                // never offered to the lane
                continue;
            }
            complete += 1;
            // `httparse` with as many slots as the lane had
            let mut old_lines = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let old = httparse_plain_request(buf, &mut old_lines);
            let new = plain_request(buf, &index).as_ref().map(reading);
            assert_eq!(new, old, "{head:?}");
            plain += usize::from(new.is_some());
        }
        // the generator reaches both outcomes often
        assert!(complete > 40_000 && plain > 2_000, "{complete} {plain}");
    }

    #[test]
    fn the_index_says_where_the_parts_lie() {
        let head = b"\r\nGET /a?b HTTP/1.1\r\nHost:  x \r\nX-Empty:\r\nA:\tb c\t\n\r\n";
        let mut index = HeadIndex::new();
        let scanned = scan_head_indexed(head, &Limits::default(), &mut index);
        assert!(matches!(scanned, HeadScan::Complete { head_len, .. } if head_len == head.len()));
        assert_eq!(index.head_len(), Some(head.len()));
        assert_eq!(index.method(head), Some(&b"GET"[..]));
        assert_eq!(index.target(head), Some(&b"/a?b"[..]));
        assert!(!index.http10 && !index.lenient_bytes);
        let fields: Vec<_> = index
            .fields()
            .expect("indexed")
            .iter()
            .map(|f| (f.name(head), f.value(head)))
            .collect();
        assert_eq!(
            fields,
            [(&b"Host"[..], &b"x"[..]), (b"X-Empty", b""), (b"A", b"b c"),]
        );
        // bytes the scan takes and `httparse` refuses are flagged
        for lenient in [
            "\rGET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x01\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\r\r\n\r\n",
        ] {
            let scanned = scan_head_indexed(lenient.as_bytes(), &Limits::default(), &mut index);
            assert!(matches!(scanned, HeadScan::Complete { .. }), "{lenient:?}");
            assert!(index.lenient_bytes, "{lenient:?}");
        }
        // an unfinished head is not whole
        scan_head_indexed(
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            &Limits::default(),
            &mut index,
        );
        assert_eq!(index.head_len(), None);
    }

    #[test]
    fn framing_is_never_hop_by_hop() {
        for value in [
            "Content-Length",
            "close, transfer-encoding",
            "TE,Content-length ",
        ] {
            let head = format!("POST / HTTP/1.1\r\nHost: a\r\nConnection: {value}\r\n\r\n");
            assert_eq!(reason(&head), "connection_names_framing", "{value}");
        }
        assert!(matches!(
            scan("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-content-length\r\n\r\n"),
            HeadScan::Complete { .. }
        ));
    }
}
