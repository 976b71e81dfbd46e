//! The front door's pass lane: a plain HTTP/1.1 `GET` or `HEAD` on a route that does not cache is
//! proxied to its origin from the front door, without building Pingora's per-request session.
//!
//! Like the hit lane, it is a shortcut and never a second opinion. It routes by the same table,
//! picks the backend and decides retries through [`peer`], builds the head sent upstream as the
//! full path does (Pingora's own preparation before and after verge's
//! [`upstream_request::to_origin`], made public for it in the vendored crate), treats the
//! origin's head with [`origin_response::final_head`] and [`client_head::hide_fields`], counts
//! failures through [`upstream_error`], answers them with [`error_page`]'s head and texts, and
//! finishes through [`finish`]. What it writes to the client is what Pingora's writer writes
//! (`Date` and `Connection` set, a body without a length re-framed as chunked): the e2e test
//! `pass_lane_parity` compares the bytes with the lane on and off. Which routes it takes is an
//! exhaustive match over the route's fields ([`pass_rules`]): a new field does not compile until
//! someone decides what the lane does with it.
//!
//! What it leaves to Pingora: routes that cache (a miss takes the cache lock and fills the
//! cache), edge rules, response header edits, user filters, compression, custom error pages,
//! TLS origins, listeners with access rules or error pages, and every request the hit lane
//! leaves for its shape ([`super::hit_lane::plain_request`]: bodies, ranges, preconditions,
//! upgrades, HTTP/1.0, HTTP/2, pipelined bytes).

use super::context::RequestCtx;
use super::filter::Filters;
use super::finish::{finish, Finished, Seen};
use super::headers::{ForwardingTrust, HeaderVars};
use super::hit_lane::PlainRequest;
use super::lane_route::{edge_free, Routed};
use super::{
    client_address, client_head, error_page, origin_response, peer, request_id, upstream_error,
    upstream_request,
};
use crate::config::RouteSpec;
use crate::http_syntax::scheme;
use crate::snapshot::{Route, SharedSnapshot};
use crate::upstream::idle_pool::IdlePool;
use bytes::{BufMut, Bytes, BytesMut};
use http::{header, Method, Version};
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::UniqueID;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{IntoCaseHeaderName, RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::time::Instant;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Whether the lane may proxy requests on `route`: every field of the route is classified here,
/// with no `..`, so a new one fails to compile until it is. Only routes that do not cache, whose
/// every other rule the lane applies the full path's way or that has none set.
pub fn pass_rules(route: &Route, filters: &Filters) -> bool {
    let Route {
        spec,
        pool,
        counters: _, // series, not a rule
    } = route;
    let RouteSpec {
        name: _,            // a label
        hosts: _,           // routing, done before the lane looks
        path_prefix: _,     // routing; `strip_prefix` reads it through `headers::prepare_upstream`
        pool: _,            // the lane's backends: `pool` (below)
        strip_prefix: _,    // applied by `headers::prepare_upstream`, as on the full path
        request_headers: _, // likewise
        response_headers,   // edits every response: the full path applies them
        timeouts: _,        // the peer's timeouts and the whole-response deadline, as the full path
        cache,              // a route that caches takes the cache lock on a miss: the full path
        class: _,           // a metrics label
        filters: selected,  // user filters: the full path runs them
        get_body: _,        // the lane takes no request with a body
        edge,
        error_pages, // custom pages for verge's own answers: the full path writes them
        compression, // codings negotiated and transcoded: the full path
    } = &**spec;
    // every edge rule acts before the origin is asked (refusals, rate limits, redirects, ids,
    // the target); `rewrite.host` is applied by `headers::prepare_upstream`, as on the full path
    edge_free(edge)
        && cache.is_none()
        && response_headers.is_empty()
        && error_pages.is_empty()
        && compression.is_none()
        && pool.spec.tls.is_none()
        && !filters.run_on(selected.as_deref())
}

/// The request head Pingora's HTTP/1 reader would have built from `req`: the method, the target
/// as sent, HTTP/1.1, and every field in order with its name's case kept. Pure.
pub fn request_header(req: &PlainRequest<'_>) -> Result<RequestHeader> {
    let mut head = RequestHeader::build(
        req.method.as_str(),
        req.path_and_query.as_bytes(),
        Some(req.fields.len()),
    )?;
    head.set_version(Version::HTTP_11);
    for field in req.fields {
        let name = Bytes::copy_from_slice(field.name(req.head)).into_case_header_name();
        let value = http::HeaderValue::from_bytes(field.value(req.head))
            .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "request field", e))?;
        head.append_header(name, value)?;
    }
    Ok(head)
}

/// A response head as Pingora's HTTP/1 writer serializes it: the status line of the head's
/// version, the fields in order with their names' case, and the blank line. `None` for a
/// version HTTP/1 cannot write. Pure.
pub fn response_bytes(resp: &ResponseHeader) -> Option<BytesMut> {
    let version: &[u8] = match resp.version {
        Version::HTTP_09 => b"HTTP/0.9 ",
        Version::HTTP_10 => b"HTTP/1.0 ",
        Version::HTTP_11 => b"HTTP/1.1 ",
        _ => return None,
    };
    let mut buf = BytesMut::with_capacity(512);
    buf.put_slice(version);
    buf.put_slice(resp.status.as_str().as_bytes());
    buf.put_u8(b' ');
    if let Some(reason) = resp.get_reason_phrase() {
        buf.put_slice(reason.as_bytes());
    }
    buf.put_slice(b"\r\n");
    resp.header_to_h1_wire(&mut buf);
    buf.put_slice(b"\r\n");
    Some(buf)
}

/// How the body after a final head is framed for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (`HEAD`, 204, 304, or a response complete with its head).
    None,
    /// As many bytes as the head's `Content-Length` says, as they come.
    Length,
    /// Chunked: the origin's own chunks decoded, or a body that ends when its connection
    /// closes, re-framed (the head then says `Transfer-Encoding: chunked`).
    Chunked,
}

/// What the full path does to a final origin head before `response_filter`, and how the body
/// goes out: a body without `Transfer-Encoding` or `Content-Length` is re-framed as chunked,
/// its head turned HTTP/1.1 (`proxy_h1`'s conversion, so the client connection can stay open).
/// `head_only`: the request was `HEAD`; `done`: the origin's response ended with its head.
pub fn client_framing(resp: &mut ResponseHeader, head_only: bool, done: bool) -> Result<Framing> {
    let no_body = head_only || matches!(resp.status.as_u16(), 204 | 304);
    let te = resp.headers.contains_key(header::TRANSFER_ENCODING);
    let cl = resp.headers.contains_key(header::CONTENT_LENGTH);
    if !no_body && !te && !cl && !done {
        resp.set_version(Version::HTTP_11);
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        return Ok(Framing::Chunked);
    }
    Ok(if no_body {
        Framing::None
    } else if te {
        Framing::Chunked
    } else if cl {
        Framing::Length
    } else {
        Framing::None
    })
}

/// What Pingora's writer sets on every final head: `Date` (the time of sending) and
/// `Connection`.
fn writer_fields(resp: &mut ResponseHeader, close: bool) -> Result<()> {
    let date = pingora_core::protocols::http::date::get_cached_date();
    resp.insert_header(header::DATE, date)?;
    let connection = if close { "close" } else { "keep-alive" };
    resp.insert_header(header::CONNECTION, connection)
}

/// How a request the lane took ended, for the client connection.
enum Ended {
    /// The response is whole and the connection may carry the next request.
    Reusable,
    /// The connection must close (asked for, an error answered, or a response cut short).
    Close,
}

/// The pass lane of one listener.
pub struct PassLane {
    snapshot: SharedSnapshot,
    filters: Filters,
    /// Connects to origins (Pingora's, as the full path's).
    transport: TransportConnector,
    /// Origin connections kept between requests.
    idle: IdlePool,
    trust: ForwardingTrust,
    max_retries: usize,
    scheme: &'static str,
    /// The listener's name, for the access log.
    listener: String,
}

/// One request the lane is proxying: what the finish needs, kept as it goes.
struct Exchange<'a> {
    req: &'a PlainRequest<'a>,
    route: &'a Route,
    ctx: RequestCtx,
    client: Option<IpAddr>,
    /// The status of the final head sent to the client (0: none yet).
    status: u16,
    body_bytes: usize,
    close: bool,
}

impl PassLane {
    /// The pass lane for a listener serving `snapshot`; `options` and `max_retries` are the
    /// ones Pingora's proxy uses for its own upstream connections.
    pub fn new(
        snapshot: SharedSnapshot,
        filters: Filters,
        options: ConnectorOptions,
        max_retries: usize,
        trust: ForwardingTrust,
        tls: bool,
    ) -> Self {
        PassLane {
            snapshot,
            filters,
            idle: IdlePool::new(options.keepalive_pool_size),
            transport: TransportConnector::new(Some(options)),
            trust,
            max_retries,
            scheme: scheme(tls),
            listener: String::new(),
        }
    }

    /// Name the listener in the access log's lines.
    pub fn with_listener_name(mut self, name: &str) -> Self {
        self.listener = name.to_string();
        self
    }

    /// Proxy the plain request `req` (routed by `routes`) if the lane takes it: `None` when it
    /// goes the full way (nothing was read or written), else whether the client connection
    /// stays open. `last`: the response must close the connection; `client`: the connection's
    /// peer address; `started`: when its head was read.
    pub async fn serve<S: AsyncWrite + Unpin + Send>(
        &self,
        stream: &mut S,
        (req, routed): (&PlainRequest<'_>, &Routed),
        last: bool,
        client: Option<IpAddr>,
        started: Instant,
    ) -> Option<bool> {
        if req.method != Method::GET && req.method != Method::HEAD {
            return None;
        }
        let route = &routed.route;
        if !pass_rules(route, &self.filters) || routed.listener_pages {
            return None;
        }
        let ctx = RequestCtx {
            host: routed.host.clone(),
            route: Some(route.clone()),
            started: Some(started),
            ..RequestCtx::default()
        };
        let mut exchange = Exchange {
            req,
            route,
            ctx,
            client,
            status: 0,
            body_bytes: 0,
            close: last || req.close,
        };
        let ended = match self.proxy(stream, &mut exchange).await {
            Ok(ended) => ended,
            Err(e) => self.fail(stream, &mut exchange, &e).await,
        };
        self.record(&mut exchange);
        Some(matches!(ended, Ended::Reusable) && !exchange.close)
    }

    /// Connect (retrying as the full path does), send, and relay the response.
    async fn proxy<S: AsyncWrite + Unpin + Send>(
        &self,
        stream: &mut S,
        x: &mut Exchange<'_>,
    ) -> Result<Ended> {
        // the client's head, as Pingora's reader builds it; each attempt sends its own copy
        let mut client_req = Some(request_header(x.req)?);
        // the address the route's header edits may name (`server.client_ip`), when they do
        let reads_client = x.route.spec.request_headers.reads_client_ip();
        let vars_client = if !reads_client {
            None
        } else {
            let snapshot = self.snapshot.load();
            let trusted = snapshot.config.server.client_ip.as_ref();
            let headers = client_req.as_ref().map(|r| &r.headers);
            headers.and_then(|h| client_address::client_address(x.client, h, trusted))
        };
        let mut retries = 0;
        loop {
            retries += 1;
            let head = match client_req.take() {
                Some(head) => head,
                None => request_header(x.req)?,
            };
            let peer = peer::select_for(&head, x.client, &mut x.ctx)?;
            let key = peer.reuse_hash();
            let connected = match self.idle.take(key) {
                Some(stream) => Ok((stream, true)),
                None => self.transport.new_stream(&*peer).await.map(|s| (s, false)),
            };
            let (mut upstream, reused) = match connected {
                Ok((stream, reused)) => (HttpSession::new_with_options(stream, &*peer), reused),
                Err(mut e) => {
                    e.as_up();
                    let e = peer::on_connect_failure_for(true, &mut x.ctx, e).into_up();
                    if e.retry() && retries < self.max_retries {
                        client_req = Some(head);
                        continue;
                    }
                    return Err(e);
                }
            };
            let result = self
                .exchange(stream, x, (head, vars_client), &mut upstream, &peer)
                .await;
            match result {
                Ok((ended, upstream_reusable)) => {
                    if upstream_reusable {
                        upstream.respect_keepalive();
                        if let Some(stream) = upstream.reuse().await {
                            self.idle.put(key, stream, peer.idle_timeout());
                        }
                    }
                    return Ok(ended);
                }
                Err(e) => {
                    let e = upstream_error::while_proxying_for(&peer, true, e, &mut x.ctx, reused);
                    // a retry is only possible while nothing has gone to the client
                    if e.retry() && x.status == 0 && retries < self.max_retries {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One attempt on a connection: the head sent, the response relayed. `Ok((ended, reusable))`
    /// where `reusable` says the upstream connection may go back to the pool.
    async fn exchange<S: AsyncWrite + Unpin + Send>(
        &self,
        stream: &mut S,
        x: &mut Exchange<'_>,
        (mut head, vars_client): (RequestHeader, Option<IpAddr>),
        upstream: &mut HttpSession,
        peer: &HttpPeer,
    ) -> Result<(Ended, bool)> {
        let route = x.route;
        if !super::tier::owner_connected(&x.ctx) {
            if let Some(addr) = x.ctx.tried.last() {
                route.pool.report_connect_success(addr);
            }
        }
        #[cfg(unix)]
        super::deadline::watch_connection(&mut x.ctx.deadline, upstream.id())?;
        upstream.read_timeout = peer.options.read_timeout;
        upstream.write_timeout = peer.options.write_timeout;
        pingora_proxy::h1_upstream_request_before_filter(
            &mut head,
            peer.options.http_upstream_request_policy,
        )?;
        let vars = HeaderVars {
            client_ip: vars_client,
            request_id: None, // the lane declines routes that give ids (`pass_rules`)
            route: route.spec.name.as_str(),
            scheme: self.scheme,
            host: &x.ctx.host,
        };
        upstream_request::to_origin(&mut head, (route, &x.ctx), x.client, &vars, &self.trust)?;
        upstream_request::sent(&mut x.ctx);
        pingora_proxy::h1_upstream_request_after_filter(&mut head, true, false)?;
        upstream
            .write_request_header(Box::new(head))
            .await
            .map_err(|e| e.into_up())?;
        let mut resp = loop {
            let resp = upstream
                .read_resp_header_parts()
                .await
                .map_err(|e| e.into_up())?;
            if !origin_response::is_interim(&resp) {
                break resp;
            }
            // an interim head passes through as the origin sent it
            upstream_error::count_informational(&mut x.ctx.informational)?;
            let bytes = response_bytes(&resp).ok_or_else(|| unwritable(&resp))?;
            write_all(stream, &bytes, &[]).await?;
        };
        upstream_error::refuse_status(&resp, false)?;
        origin_response::final_head(&mut resp, &mut x.ctx);
        let done = upstream.is_body_done();
        let framing = client_framing(&mut resp, x.req.head_only(), done)?;
        client_head::hide_fields(&mut resp);
        request_id::set_response(&mut resp, &x.ctx)?;
        writer_fields(&mut resp, x.close)?;
        let head = response_bytes(&resp).ok_or_else(|| unwritable(&resp))?;
        x.status = resp.status.as_u16();
        self.relay_body(stream, x, upstream, framing, head).await
    }

    /// Send `head` and the origin's body after it, framed as `framing` says; the head goes out
    /// with the body's first piece (one write for a small response).
    async fn relay_body<S: AsyncWrite + Unpin + Send>(
        &self,
        stream: &mut S,
        x: &mut Exchange<'_>,
        upstream: &mut HttpSession,
        framing: Framing,
        head: BytesMut,
    ) -> Result<(Ended, bool)> {
        let mut pending_head = Some(head);
        let mut frame = BytesMut::new();
        loop {
            let (data, end) = if upstream.is_body_done() {
                (None, true)
            } else {
                let data = upstream.read_body_bytes().await.map_err(|e| e.into_up())?;
                let end = upstream.is_body_done();
                (data, end)
            };
            super::deadline::body_arrived(&mut x.ctx.deadline, end)?;
            let data = data.filter(|d| !d.is_empty() && framing != Framing::None);
            frame.clear();
            if let Some(head) = pending_head.take() {
                frame = head;
            }
            let mut body: &[u8] = &[];
            if let Some(data) = &data {
                x.body_bytes += data.len();
                if framing == Framing::Chunked {
                    frame.put_slice(format!("{:X}\r\n", data.len()).as_bytes());
                }
                body = data;
            }
            let trailer: &[u8] = match (framing, data.is_some(), end) {
                (Framing::Chunked, true, true) => b"\r\n0\r\n\r\n",
                (Framing::Chunked, true, false) => b"\r\n",
                (Framing::Chunked, false, true) => b"0\r\n\r\n",
                _ => b"",
            };
            write_all(stream, &frame, body).await?;
            if !trailer.is_empty() {
                write_all(stream, trailer, &[]).await?;
            }
            if end {
                stream.flush().await.map_err(client_gone)?;
                return Ok((Ended::Reusable, true));
            }
        }
    }

    /// The request failed: verge's own answer when no final head went out yet, else nothing
    /// but closing the connection.
    async fn fail<S: AsyncWrite + Unpin + Send>(
        &self,
        stream: &mut S,
        x: &mut Exchange<'_>,
        e: &Error,
    ) -> Ended {
        x.close = true;
        let code = error_page::failure_status(e);
        if code == 0 || x.status != 0 {
            return Ended::Close;
        }
        let text = error_page::failure_text(code, x.ctx.failure.as_deref());
        let body = format!("{text}\n");
        let content_type = b"text/plain; charset=utf-8";
        let answer = error_page::local_head(code, content_type, body.len(), &[])
            .and_then(|mut resp| writer_fields(&mut resp, true).map(|()| resp));
        let Some(head) = answer.ok().as_ref().and_then(response_bytes) else {
            return Ended::Close;
        };
        if write_all(stream, &head, body.as_bytes()).await.is_ok() && stream.flush().await.is_ok() {
            x.status = code;
            x.body_bytes = body.len();
        }
        Ended::Close
    }

    /// Count and log the request through the finish the full path uses.
    fn record(&self, x: &mut Exchange<'_>) {
        let snapshot = self.snapshot.load();
        if let Some(d) = x.ctx.deadline.as_mut() {
            d.disarm();
        }
        let logs = snapshot.log().is_some();
        let field = |name: &'static str| {
            logs.then(|| x.req.view().values(name).next())
                .flatten()
                .and_then(|v| std::str::from_utf8(v).ok())
        };
        let (user_agent, referer) = (field("user-agent"), field("referer"));
        let finished = Finished {
            route: Some(x.route),
            host: &x.ctx.host,
            method: x.req.method.as_str(),
            path: x.req.path_and_query,
            status: x.status,
            body_bytes: x.body_bytes,
            lookup: None, // the route does not cache
            logged_lookup: None,
            source: if x.ctx.upstream_sent_at.is_some() {
                "origin"
            } else {
                "local"
            },
            lock_wait: None,
            backend: x.ctx.tried.last().copied(),
            key: None,
            origin_ms: x.ctx.origin_ms,
            elapsed: x.ctx.started.map(|t| t.elapsed()),
            client: x.client,
            request_id: None,
            served: None,
            seen: Seen {
                user_agent,
                referer,
                protocol: "HTTP/1.1", // the lane takes HTTP/1.1 only
                scheme: self.scheme,
                listener: &self.listener,
                tls_version: None, // a log that wants it has the lane decline
            },
            decided_with: None,
        };
        finish(&finished, &snapshot);
        x.route.counters.fast_passes().inc();
    }
}

/// The error for a head HTTP/1 cannot write.
fn unwritable(resp: &ResponseHeader) -> Box<Error> {
    let mut e = Error::explain(
        ErrorType::InvalidHTTPHeader,
        format!("origin response version {:?}", resp.version),
    );
    e.as_up();
    e
}

/// A write to the client failed: it is gone (no answer, the connection closes).
fn client_gone(e: std::io::Error) -> Box<Error> {
    let mut e = Error::because(ErrorType::WriteError, "writing to the client", e);
    e.as_down();
    e
}

/// Write `first` then `second` with as few writes as the socket takes (vectored).
async fn write_all<S: AsyncWrite + Unpin>(
    stream: &mut S,
    first: &[u8],
    second: &[u8],
) -> Result<()> {
    let (mut first, mut second) = (first, second);
    while !first.is_empty() || !second.is_empty() {
        let parts = [std::io::IoSlice::new(first), std::io::IoSlice::new(second)];
        let n = stream.write_vectored(&parts).await.map_err(client_gone)?;
        if n == 0 {
            return Err(client_gone(std::io::ErrorKind::WriteZero.into()));
        }
        let from_first = n.min(first.len());
        first = &first[from_first..];
        second = &second[(n - from_first).min(second.len())..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, fields: &[(&'static str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).expect("head");
        for (name, value) in fields {
            resp.append_header(*name, *value).expect("field");
        }
        resp
    }

    #[test]
    fn a_body_without_a_length_goes_out_chunked() {
        let mut resp = head(200, &[]);
        resp.set_version(Version::HTTP_10);
        assert_eq!(
            client_framing(&mut resp, false, false).ok(),
            Some(Framing::Chunked)
        );
        assert_eq!(resp.version, Version::HTTP_11);
        assert_eq!(resp.headers["transfer-encoding"], "chunked");
        let mut resp = head(200, &[("content-length", "5")]);
        assert_eq!(
            client_framing(&mut resp, false, false).ok(),
            Some(Framing::Length)
        );
        let mut resp = head(200, &[("transfer-encoding", "chunked")]);
        assert_eq!(
            client_framing(&mut resp, false, false).ok(),
            Some(Framing::Chunked)
        );
        for (status, head_only) in [(204, false), (304, false), (200, true)] {
            let mut resp = head(status, &[("content-length", "5")]);
            assert_eq!(
                client_framing(&mut resp, head_only, false).ok(),
                Some(Framing::None)
            );
            assert!(!resp.headers.contains_key("transfer-encoding"));
        }
        let mut resp = head(200, &[]);
        assert_eq!(
            client_framing(&mut resp, false, true).ok(),
            Some(Framing::None)
        );
        assert!(!resp.headers.contains_key("transfer-encoding"));
    }

    #[test]
    fn heads_are_written_as_pingoras_writer_writes_them() {
        let mut resp = head(200, &[("X-Case", "a"), ("content-length", "0")]);
        writer_fields(&mut resp, true).expect("fields");
        let bytes = response_bytes(&resp).expect("bytes");
        let text = std::str::from_utf8(&bytes).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nX-Case: a\r\ncontent-length: 0\r\n"));
        assert!(text.ends_with("\r\nConnection: close\r\n\r\n"), "{text}");
        assert!(text.contains("\r\nDate: "), "{text}");
        let mut resp = head(200, &[]);
        resp.set_version(Version::HTTP_2);
        assert!(response_bytes(&resp).is_none());
    }
}
