//! Streaming partial writes: requests collapsed onto a fetch in flight are served its body as
//! it arrives; a fetch that fails mid-body fails every one of them visibly (cut short, connection
//! closed) and leaves nothing stored; an oversize body without `Content-Length` reaches every
//! client whole and is not stored; and concurrent misses still make one origin request.
//!
//! The origin here is raw TCP and scripted per path: a response head, then body pieces one at a
//! time, optionally held at a gate the test opens, then a clean end or a reset. It counts
//! requests and the body pieces it has written, so a test can tell "a client got bytes before
//! the origin sent its last piece" from the origin's side rather than from a clock.

use crate::support::wire::Conn;
use crate::support::{
    eventually, Cache, Config, Metrics, Pool, RawOrigin, Route, RouteCache, Step, Verge,
};
use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

/// How long any wait in these tests may take before it counts as a failure.
const PATIENCE: Duration = Duration::from_secs(10);

/// Where the clients here connect from: 127.0.0.2, so the hundreds of connections these tests
/// open take their ephemeral ports on another address than the 127.0.0.1 the other tests'
/// processes listen on.
const CLIENT_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A client like `support::client`, connecting from [`CLIENT_SOURCE`].
fn local_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .local_address(CLIENT_SOURCE)
        .build()
        .expect("client")
}

/// What the origin answers for a path: a cacheable 200 head, then body pieces one at a time.
#[derive(Clone)]
struct Stream {
    /// Chunked framing, else `Content-Length` of the full body (or `declared_len`).
    chunked: bool,
    /// A `Content-Length` other than the length of `pieces` (the origin means to send more).
    declared_len: Option<usize>,
    /// Body pieces, written one by one.
    pieces: Vec<Bytes>,
    /// Wait between pieces.
    pace: Duration,
    /// Wait for the gate before writing this piece (`pieces.len()`: before the end).
    gate_before: Option<usize>,
    /// Reset the connection instead of ending the body (after the gate, if any).
    reset: bool,
    /// Hold the response head until the gate opens.
    gate_head: bool,
}

impl Stream {
    fn new(pieces: Vec<Bytes>) -> Stream {
        Stream {
            chunked: false,
            declared_len: None,
            pieces,
            pace: Duration::ZERO,
            gate_before: None,
            reset: false,
            gate_head: false,
        }
    }

    fn body(&self) -> Vec<u8> {
        self.pieces.iter().flat_map(|p| p.iter().copied()).collect()
    }

    /// The origin's steps for this answer.
    fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        if self.gate_head {
            steps.push(Step::Gate);
        }
        let framing = if self.chunked {
            "Transfer-Encoding: chunked\r\n".to_string()
        } else {
            let len = self.declared_len.unwrap_or(self.body().len());
            format!("Content-Length: {len}\r\n")
        };
        steps.push(Step::Write(
            format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Type: text/plain\r\n{framing}\r\n"
            )
            .into_bytes(),
        ));
        for (i, piece) in self.pieces.iter().enumerate() {
            if self.gate_before == Some(i) {
                steps.push(Step::Gate);
            }
            let framed = if self.chunked {
                let mut framed = format!("{:x}\r\n", piece.len()).into_bytes();
                framed.extend_from_slice(piece);
                framed.extend_from_slice(b"\r\n");
                framed
            } else {
                piece.to_vec()
            };
            steps.push(Step::Piece(framed));
            steps.push(Step::Sleep(self.pace));
        }
        if self.gate_before == Some(self.pieces.len()) {
            steps.push(Step::Gate);
        }
        if self.reset {
            steps.push(Step::Reset);
        } else if self.chunked {
            steps.push(Step::Write(b"0\r\n\r\n".to_vec()));
        }
        steps
    }
}

/// `n` pieces of `size` bytes, each with its own content, so a reordering or a repeat shows.
fn pieces(n: usize, size: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let line: Vec<u8> = (0..size)
                .map(|j| b"abcdefghijklmnopqrstuvwxyz"[(i * 7 + j) % 26])
                .collect();
            Bytes::from(line)
        })
        .collect()
}

/// One keep-alive HTTP/1.1 exchange read off the wire, as far as it has arrived.
struct Exchange(Conn);

/// The body of a response as far as it arrived: the bytes, and whether its framing says it is
/// whole (`Content-Length` reached, or the last chunk and its empty trailer line seen).
struct Body {
    bytes: Vec<u8>,
    complete: bool,
}

impl Exchange {
    /// Send `GET path` for host `c.test` on a new connection, without `Connection: close`, so
    /// a whole response leaves the connection open and only a failure closes it.
    async fn start(v: &Verge, path: &str) -> Exchange {
        let mut c = Conn::open(v.http, Some(CLIENT_SOURCE)).await;
        c.send(format!("GET {path} HTTP/1.1\r\nHost: c.test\r\n\r\n").as_bytes())
            .await;
        Exchange(c)
    }

    fn head(&self) -> Option<String> {
        self.0.response(false).response().map(|r| r.head.clone())
    }

    fn header(&self, name: &str) -> Option<String> {
        let parsed = self.0.response(false);
        parsed.response()?.header(name).map(str::to_string)
    }

    fn status(&self) -> Option<u16> {
        self.0.response(false).response().map(|r| r.status)
    }

    fn body(&self) -> Body {
        match self.0.response(false) {
            crate::support::wire::Parsed::Response(r) => Body {
                bytes: r.body,
                complete: r.complete,
            },
            _ => Body {
                bytes: Vec::new(),
                complete: false,
            },
        }
    }

    /// Read until some body bytes arrived.
    async fn first_body_bytes(&mut self) -> bool {
        self.0
            .read_until(PATIENCE, |c| {
                c.response(false)
                    .response()
                    .is_some_and(|r| !r.body.is_empty())
            })
            .await
    }

    /// Read until the body is whole.
    async fn complete(&mut self) -> bool {
        self.0
            .read_until(PATIENCE, |c| c.response(false).is_complete())
            .await
    }

    /// Read until verge closes the connection.
    async fn until_closed(&mut self) -> bool {
        self.0.read_to_close(PATIENCE).await
    }
}

/// verge caching everything for host `c.test` from `o`, with `cache` as the top-level cache
/// block. The miss lock is held for up to 60 s, so a lock left behind by a failed fetch would
/// make a follow-up request outlast `PATIENCE`.
async fn verge_for(o: &RawOrigin, cache: Cache) -> Verge {
    Verge::start(
        &Config::new()
            .cache(cache.lock("60s", "60s"))
            .pool(Pool::new("o", &[o.addr]))
            .route(Route::to("o").hosts(&["c.test"]).cache(RouteCache::new())),
    )
    .await
}

#[tokio::test]
async fn a_collapsed_request_streams_the_body_while_the_origin_still_sends_it() {
    let o = RawOrigin::start().await;
    // ten pieces about 100 ms apart; the last one waits for the test
    let mut script = Stream::new(pieces(10, 1000));
    script.pace = Duration::from_millis(100);
    script.gate_before = Some(9);
    let expected = script.body();
    o.set("/drip", script.steps());
    let v = verge_for(&o, Cache::new()).await;

    let mut first = Exchange::start(&v, "/drip").await;
    assert!(
        first.first_body_bytes().await,
        "the fetching client streams"
    );
    let mut second = Exchange::start(&v, "/drip").await;
    assert!(
        second.first_body_bytes().await,
        "the collapsed request got body bytes while the fetch was in flight"
    );
    let sent = o.pieces_sent("/drip");
    assert!(
        sent < 10,
        "first bytes before the origin sent its last piece (it has sent {sent})"
    );
    assert_eq!(second.status(), Some(200));
    assert!(
        second
            .header("cache-status")
            .is_some_and(|s| s.starts_with("verge; hit")),
        "{:?}",
        second.head()
    );
    o.open_gate();
    assert!(first.complete().await, "first body whole");
    assert!(second.complete().await, "second body whole");
    assert_eq!(first.body().bytes, expected);
    assert_eq!(second.body().bytes, expected);
    assert_eq!(o.hits("/drip"), 1, "one origin request");
    // stored whole: a later request is an ordinary hit
    let mut third = Exchange::start(&v, "/drip").await;
    assert!(third.complete().await);
    assert_eq!(third.body().bytes, expected);
    assert_eq!(o.hits("/drip"), 1);
}

/// The origin sends a head and 4000 of the 10000 body bytes it announces (a `Content-Length`,
/// or chunks), waits until every reader has some, then resets. (4000, not less: pingora's
/// HTTP/1 writer does not flush a response with `Content-Length` until its 1460-byte buffer
/// fills, so a smaller piece would not reach the clients before the reset.)
async fn reset_mid_body_fails_every_reader(chunked: bool) {
    const READERS: usize = 4;
    let o = RawOrigin::start().await;
    let mut script = Stream::new(vec![Bytes::from(vec![b'x'; 4000])]);
    script.chunked = chunked;
    script.declared_len = Some(10_000);
    script.gate_before = Some(1);
    script.reset = true;
    o.set("/reset", script.steps());
    let v = verge_for(&o, Cache::new()).await;

    let mut clients = vec![Exchange::start(&v, "/reset").await];
    assert!(clients[0].first_body_bytes().await);
    for _ in 0..READERS {
        let mut c = Exchange::start(&v, "/reset").await;
        assert!(c.first_body_bytes().await, "collapsed reader streams");
        clients.push(c);
    }
    assert_eq!(o.hits("/reset"), 1, "all collapsed onto one fetch");
    o.open_gate();
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(c.until_closed().await, "client {i}: connection closed");
        assert_eq!(c.status(), Some(200), "client {i}");
        let body = c.body();
        assert!(
            !body.complete,
            "client {i}: a cut response must not look complete ({} bytes)",
            body.bytes.len()
        );
        assert!(
            !body.bytes.is_empty() && body.bytes.len() <= 4000,
            "client {i}: {} bytes",
            body.bytes.len()
        );
        assert!(
            body.bytes.iter().all(|b| *b == b'x'),
            "client {i}: the origin's bytes"
        );
    }

    // nothing truncated was kept: the next request refetches, and that one is stored
    let good = Stream::new(vec![Bytes::from_static(b"whole body")]);
    o.set("/reset", good.steps());
    let mut next = Exchange::start(&v, "/reset").await;
    assert!(next.complete().await);
    assert_eq!(next.body().bytes, b"whole body");
    assert_eq!(o.hits("/reset"), 2, "refetched");
    let mut hit = Exchange::start(&v, "/reset").await;
    assert!(hit.complete().await);
    assert_eq!(hit.body().bytes, b"whole body");
    assert_eq!(o.hits("/reset"), 2);
}

#[tokio::test]
async fn an_origin_reset_mid_body_fails_every_collapsed_reader_content_length() {
    reset_mid_body_fails_every_reader(false).await;
}

#[tokio::test]
async fn an_origin_reset_mid_body_fails_every_collapsed_reader_chunked() {
    reset_mid_body_fails_every_reader(true).await;
}

#[tokio::test]
async fn an_oversize_body_without_content_length_reaches_every_client_whole_and_is_not_stored() {
    let o = RawOrigin::start().await;
    // 512 KiB, chunked, against a 64 KiB max_object_size; a second client attaches while the
    // body is still small enough to be stored
    let mut script = Stream::new(pieces(32, 16 * 1024));
    script.chunked = true;
    script.gate_before = Some(1);
    let expected = script.body();
    o.set("/big", script.steps());
    let v = verge_for(&o, Cache::new().max_object_size("64KiB")).await;

    let mut first = Exchange::start(&v, "/big").await;
    assert!(first.first_body_bytes().await);
    let mut second = Exchange::start(&v, "/big").await;
    assert!(second.first_body_bytes().await, "attached to the fetch");
    o.open_gate();
    for (name, c) in [("fetching", &mut first), ("collapsed", &mut second)] {
        assert!(c.complete().await, "{name}: whole, with its last chunk");
        assert_eq!(c.body().bytes.len(), expected.len(), "{name}");
        assert!(c.body().bytes == expected, "{name}: the origin's bytes");
    }
    assert_eq!(o.hits("/big"), 1);
    let m = v.metrics().await;
    assert_eq!(m.value("verge_cache_objects", &[]), Some(0.0), "not stored");
    assert_eq!(m.value("verge_cache_bytes", &[]), Some(0.0));
    // the next requests go to the origin, and are whole too
    for n in 2..=3 {
        let mut again = Exchange::start(&v, "/big").await;
        assert!(again.complete().await);
        assert!(again.body().bytes == expected);
        assert_eq!(o.hits("/big"), n, "request {n} went to the origin");
    }

    // with a Content-Length, pingora decides at the head: served whole, not stored
    let mut script = Stream::new(pieces(32, 16 * 1024));
    script.chunked = false;
    o.set("/big-cl", script.steps());
    for n in 1..=2 {
        let mut c = Exchange::start(&v, "/big-cl").await;
        assert!(c.complete().await);
        assert!(c.body().bytes == expected);
        assert_eq!(o.hits("/big-cl"), n);
    }
}

/// A client that leaves an oversize download: nobody reads the rest, so verge stops fetching it
/// (about one lag window, 4 MiB, after the client's reader fell behind) instead of pulling the
/// whole body from the origin for nobody.
#[tokio::test]
async fn an_abandoned_oversize_download_stops_the_origin_fetch() {
    const PIECES: usize = 256;
    let o = RawOrigin::start().await;
    // 32 MiB, chunked, as fast as the connection takes it
    let mut script = Stream::new(pieces(PIECES, 128 * 1024));
    script.chunked = true;
    o.set("/huge", script.steps());
    let v = verge_for(&o, Cache::new().max_object_size("64KiB")).await;
    let mut c = Exchange::start(&v, "/huge").await;
    assert!(c.first_body_bytes().await);
    drop(c);
    let stopped = eventually(PATIENCE, || async { o.aborted("/huge") }).await;
    let sent = o.pieces_sent("/huge");
    assert!(
        stopped,
        "the origin was read to the end ({sent} of {PIECES} pieces)"
    );
    assert!(sent < PIECES, "{sent} of {PIECES} pieces");
    // verge is fine, and the next client gets the whole body
    let whole = local_client()
        .get(v.url("/huge"))
        .header("host", "c.test")
        .send()
        .await
        .expect("request");
    assert_eq!(whole.status(), 200);
    let body = whole.bytes().await.expect("whole body");
    assert_eq!(body.len(), PIECES * 128 * 1024);
}

#[tokio::test]
async fn two_hundred_concurrent_misses_make_one_origin_request() {
    let o = RawOrigin::start().await;
    // the head waits for the gate, so the requests pile up on the miss lock; the body then
    // arrives in pieces, so some are served while it streams
    let mut script = Stream::new(pieces(8, 512));
    script.gate_head = true;
    script.pace = Duration::from_millis(20);
    let expected = String::from_utf8(script.body()).expect("ascii");
    o.set("/cold", script.steps());
    let v = verge_for(&o, Cache::new()).await;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let url = v.url("/cold");
            tokio::spawn(async move {
                let r = local_client()
                    .get(url)
                    .header("host", "c.test")
                    .send()
                    .await
                    .expect("request");
                (r.status().as_u16(), r.text().await.expect("body"))
            })
        })
        .collect();
    // let the requests reach verge before the origin answers (a late one is a hit: no harm)
    tokio::time::sleep(Duration::from_millis(500)).await;
    o.open_gate();
    for t in tasks {
        let (status, body) = t.await.expect("join");
        assert_eq!(status, 200);
        assert!(body == expected, "whole body ({} bytes)", body.len());
    }
    assert_eq!(o.hits("/cold"), 1, "one origin request for 200 misses");
}

/// Concurrent clients fill the cache with about 10× `cache.memory` of mixed sizes while the
/// test scrapes `verge_cache_bytes` as fast as it can: no sample is over the budget.
#[tokio::test]
async fn the_cache_bytes_gauge_never_exceeds_the_budget_while_concurrent_clients_overfill_it() {
    const BUDGET: u64 = 1 << 20;
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 40;
    let o = RawOrigin::start().await;
    let mut total = 0;
    for i in 0..CLIENTS * PER_CLIENT {
        // 1 KiB .. 64 KiB, half of them chunked
        let kib = 1 + (i * 37) % 64;
        let mut script = Stream::new(pieces(kib, 1024));
        script.chunked = i % 2 == 1;
        total += kib * 1024;
        o.set(&format!("/fill/{i}"), script.steps());
    }
    assert!(total as u64 > 8 * BUDGET);
    let v = verge_for(&o, Cache::new().memory(BUDGET).max_object_size("64KiB")).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let done = done.clone();
        let admin = format!("http://{}/metrics", v.admin);
        tokio::spawn(async move {
            let c = local_client();
            let mut samples = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(r) = c.get(&admin).send().await {
                    let text = r.text().await.unwrap_or_default();
                    if let Some(b) = Metrics::parse(&text).value("verge_cache_bytes", &[]) {
                        samples.push(b as u64);
                    }
                }
            }
            samples
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = v.url("/fill/");
            tokio::spawn(async move {
                let http = local_client();
                for j in 0..PER_CLIENT {
                    let i = j * CLIENTS + c;
                    let r = http
                        .get(format!("{url}{i}"))
                        .header("host", "c.test")
                        .send()
                        .await
                        .expect("request");
                    assert_eq!(r.status(), 200);
                    let kib = 1 + (i * 37) % 64;
                    assert_eq!(r.bytes().await.expect("body").len(), kib * 1024);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = poller.await.expect("poller");
    assert!(samples.len() >= 10, "{} samples", samples.len());
    let peak = samples.iter().copied().max().unwrap_or(0);
    assert!(
        peak <= BUDGET,
        "verge_cache_bytes reached {peak}, over {BUDGET}"
    );
    assert!(peak > BUDGET / 2, "the cache did fill: {peak}");
}
