//! Protocol strictness (issue #15, points 5, 8, 9, 10 and 14), through real sockets: chunked
//! request bodies read strictly, a dripping request body cut off, malformed HTTP/2 fields refused
//! as stream errors, floods of cheap HTTP/2 frames answered with GOAWAY, and a fill that goes on
//! when the client that started it stops reading. Each test asserts what the client got and what
//! the origin received; HTTP/1 is written as raw bytes, HTTP/2 as raw frames.

use crate::limits::verge_with_limits;
use crate::support::h2_wire::{self, H2Conn, Outcome};
use crate::support::metrics::sum_eventually;
use crate::support::wire::Conn;
use crate::support::{
    assert_eventually, fetch, Config, Limits, Listener, Origin, Pool, Route, RouteCache, Verge,
};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REJECTED: &str = "verge_requests_rejected_total";

fn chunked_post(path: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: c.test\r\nTransfer-Encoding: chunked\r\n\r\n")
}

/// The status of the response in `c`, once it is whole or the connection closed.
async fn status_then_close(c: &mut Conn) -> (u16, bool) {
    let parsed = c.read_response(Duration::from_secs(10), false).await;
    let status = parsed.response().map_or(0, |r| r.status);
    (status, c.read_to_close(Duration::from_secs(10)).await)
}

// ---- 5. strict chunked request bodies ----

#[tokio::test]
async fn chunk_lines_two_parsers_could_read_differently_get_400_and_a_close() {
    let o = Origin::start("o").await;
    let v = verge_with_limits(&o, Limits::new()).await;
    let cases: [(&str, &str); 6] = [
        ("/size-space", "5 \r\nhello\r\n0\r\n\r\n"),
        ("/size-tab", "5\t\r\nhello\r\n0\r\n\r\n"),
        ("/empty-size", "5\r\nhello\r\n\r\n\r\n"),
        ("/ext-nul", "5;a\0b\r\nhello\r\n0\r\n\r\n"),
        ("/ext-bare-lf", "5;a\nb\r\nhello\r\n0\r\n\r\n"),
        ("/ext-quoted-lf", "5;a=\"x\ny\"\r\nhello\r\n0\r\n\r\n"),
    ];
    for (path, body) in cases {
        let mut c = Conn::open(v.http, None).await;
        c.send(format!("{}{body}", chunked_post(path)).as_bytes())
            .await;
        let (status, closed) = status_then_close(&mut c).await;
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&c.bytes));
        assert!(closed, "{path}: connection left open");
        assert_eq!(o.hits(path), 0, "{path} reached the origin");
    }
    sum_eventually(&v, Duration::from_secs(5), REJECTED, &[], |n| n >= 6.0).await;
    let m = v.metrics().await;
    assert!(m.sum(REJECTED, &[("reason", "bad_chunk_size")]) >= 3.0);
    assert!(m.sum(REJECTED, &[("reason", "bad_chunk_extension")]) >= 1.0);
    assert!(m.sum(REJECTED, &[("reason", "bad_chunk_line_ending")]) >= 1.0);

    // a well-formed body, extensions and a trailer included, goes through whole
    let mut c = Conn::open(v.http, None).await;
    let body = "5 ; name=\"a b\"\r\nhello\r\n3;x\r\nabc\r\n0\r\nx-sum: 8\r\n\r\n";
    c.send(format!("{}{body}", chunked_post("/good")).as_bytes())
        .await;
    let parsed = c.read_response(Duration::from_secs(10), false).await;
    assert_eq!(parsed.response().map(|r| r.status), Some(200));
    let seen = o.seen_for("/good");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 8, "the origin got the whole body");
}

#[tokio::test]
async fn a_bad_chunk_line_that_arrives_later_never_reaches_the_origin() {
    let o = Origin::start("o").await;
    let v = verge_with_limits(&o, Limits::new()).await;
    let mut c = Conn::open(v.http, None).await;
    c.send(format!("{}5\r\nhello\r\n", chunked_post("/later")).as_bytes())
        .await;
    // the head has been forwarded by now; the origin waits for the rest of the body
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.send(b"3 \r\nabc\r\n0\r\n\r\n").await;
    let (status, closed) = status_then_close(&mut c).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&c.bytes));
    assert!(closed);
    // whatever the origin read of the request, it never got a complete body
    for seen in o.seen_for("/later") {
        assert_ne!(seen.body_len, 8, "the refused chunk reached the origin");
    }
    sum_eventually(
        &v,
        Duration::from_secs(5),
        REJECTED,
        &[("reason", "bad_chunk_size")],
        |n| n >= 1.0,
    )
    .await;
}

#[tokio::test]
async fn uploads_that_keep_the_rules_go_through_whole() {
    let o = Origin::start("o").await;
    let v = verge_with_limits(&o, Limits::new()).await;
    // a large body with Content-Length, in one go
    let big = vec![b'a'; 3 << 20];
    let mut c = Conn::open(v.http, None).await;
    let head = format!(
        "POST /length HTTP/1.1\r\nHost: c.test\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    c.send(head.as_bytes()).await;
    c.send(&big).await;
    let parsed = c.read_response(Duration::from_secs(20), false).await;
    assert_eq!(parsed.response().map(|r| r.status), Some(200));
    assert_eq!(o.seen_for("/length")[0].body_len, big.len());
    // many chunks, in many writes
    let mut c = Conn::open(v.http, None).await;
    c.send(chunked_post("/chunks").as_bytes()).await;
    let chunk = format!("2800;n=v\r\n{}\r\n", "b".repeat(0x2800));
    for _ in 0..100 {
        c.send(chunk.as_bytes()).await;
    }
    c.send(b"0\r\n\r\n").await;
    let parsed = c.read_response(Duration::from_secs(20), false).await;
    assert_eq!(parsed.response().map(|r| r.status), Some(200));
    assert_eq!(o.seen_for("/chunks")[0].body_len, 100 * 0x2800);
    // a client that waits for 100 Continue before its body
    let mut c = Conn::open(v.http, None).await;
    c.send(b"POST /expect HTTP/1.1\r\nHost: c.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    c.read_until(Duration::from_secs(3), |c| {
        c.bytes.starts_with(b"HTTP/1.1 100")
    })
    .await;
    c.send(b"hello").await;
    let parsed = c.read_response(Duration::from_secs(10), false).await;
    assert_eq!(parsed.response().map(|r| r.status), Some(200));
    assert_eq!(o.seen_for("/expect")[0].body_len, 5);
}

// ---- 8. a request body that drips gets cut off ----

/// Send `head`, then `piece` every `every` until the peer stops taking them; returns the
/// client's reading half's view: status and whether the connection closed.
async fn drip(
    v: &Verge,
    head: &str,
    piece: &'static [u8],
    every: Duration,
) -> (u16, bool, Vec<u8>) {
    let stream = TcpStream::connect(v.http).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    write.write_all(head.as_bytes()).await.expect("head");
    let dripper = tokio::spawn(async move {
        for _ in 0..200 {
            tokio::time::sleep(every).await;
            if write.write_all(piece).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(20), read.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    dripper.abort();
    let status = String::from_utf8_lossy(got.get(9..12).unwrap_or_default())
        .parse()
        .unwrap_or(0);
    (status, closed, got)
}

#[tokio::test]
async fn a_body_that_drips_below_the_minimum_rate_gets_408() {
    let o = Origin::start("o").await;
    let limits = Limits::new()
        .set("body_timeout", "1s")
        .set("body_min_rate", "100");
    let v = verge_with_limits(&o, limits).await;
    // one byte every 300 ms: never idle for a whole second, but far below 100 bytes/s
    let head = "POST /drip HTTP/1.1\r\nHost: c.test\r\nContent-Length: 100\r\n\r\n";
    let (status, closed, got) = drip(&v, head, b"x", Duration::from_millis(300)).await;
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&got));
    assert!(closed, "connection left open");
    for seen in o.seen_for("/drip") {
        assert_ne!(seen.body_len, 100, "the origin got a whole body");
    }
    sum_eventually(
        &v,
        Duration::from_secs(5),
        REJECTED,
        &[("reason", "body_too_slow")],
        |n| n >= 1.0,
    )
    .await;

    // the same drip in chunked framing is cut the same way
    let head = chunked_post("/drip-chunked");
    let (status, closed, _) = drip(&v, &head, b"1\r\nx\r\n", Duration::from_millis(300)).await;
    assert_eq!(status, 408);
    assert!(closed);
}

#[tokio::test]
async fn an_idle_body_gets_408_and_a_body_at_a_fair_pace_goes_through() {
    let o = Origin::start("o").await;
    let limits = Limits::new()
        .set("body_timeout", "1s")
        .set("body_min_rate", "100");
    let v = verge_with_limits(&o, limits).await;
    let mut c = Conn::open(v.http, None).await;
    c.send(b"POST /idle HTTP/1.1\r\nHost: c.test\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    let (status, closed) = status_then_close(&mut c).await;
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&c.bytes));
    assert!(closed);
    sum_eventually(
        &v,
        Duration::from_secs(5),
        REJECTED,
        &[("reason", "body_idle_timeout")],
        |n| n >= 1.0,
    )
    .await;

    // 50 bytes every 400 ms (125 bytes/s): slow, but above the minimum and never idle
    let piece = [b'y'; 50];
    let mut c = Conn::open(v.http, None).await;
    c.send(b"POST /fair HTTP/1.1\r\nHost: c.test\r\nContent-Length: 200\r\n\r\n")
        .await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.send(&piece).await;
    }
    let parsed = c.read_response(Duration::from_secs(10), false).await;
    assert_eq!(parsed.response().map(|r| r.status), Some(200));
    let seen = o.seen_for("/fair");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 200);
}

// ---- 9. malformed HTTP/2 fields are stream errors ----

/// A request's fields, pseudo-headers first, in the order they are sent.
type Fields = Vec<(&'static str, Vec<u8>)>;

/// Fields of a GET for `path`, with `edit` applied: `(name, Some(value))` sets or adds,
/// `(name, None)` removes; extra fields go last, in order.
fn edited(path: &str, edits: &[(&'static str, Option<&'static [u8]>)]) -> Fields {
    let mut fields = h2_wire::get_fields(path);
    for (name, value) in edits {
        match value {
            None => fields.retain(|(n, _)| n != name),
            Some(v) => match fields
                .iter_mut()
                .find(|(n, _)| n == name && n.starts_with(':'))
            {
                Some(field) => field.1 = v.to_vec(),
                None => fields.push((*name, v.to_vec())),
            },
        }
    }
    fields
}

async fn h2_request(v: &Verge, fields: &[(&str, Vec<u8>)]) -> Outcome {
    let fields: Vec<(&str, &[u8])> = fields.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    H2Conn::open(v.http).await.request(1, &fields).await
}

/// Refused as RFC 9113 has it: a 400, or RST_STREAM / GOAWAY with PROTOCOL_ERROR.
fn refused(outcome: Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Status(400)
            | Outcome::Reset(h2_wire::PROTOCOL_ERROR)
            | Outcome::GoAway(h2_wire::PROTOCOL_ERROR)
    )
}

#[tokio::test]
async fn malformed_http2_fields_are_refused_and_never_reach_the_origin() {
    let o = Origin::start("o").await;
    let v = h2c_verge(&o, "{}").await;
    // what verge checks itself: a 400 from verge
    let verge_checks: [(&str, Fields); 4] = [
        ("leading space", edited("/ws1", &[("x-a", Some(b" v"))])),
        ("trailing space", edited("/ws2", &[("x-a", Some(b"v "))])),
        (
            "trailing tab",
            edited("/ws3", &[("user-agent", Some(b"ua\t"))]),
        ),
        (
            "a scheme verge does not serve",
            edited("/scheme", &[(":scheme", Some(b"ftp"))]),
        ),
    ];
    for (what, fields) in &verge_checks {
        assert_eq!(h2_request(&v, fields).await, Outcome::Status(400), "{what}");
    }
    // what the h2 codec or Pingora refuses before verge sees the request
    let below: Vec<(&str, Fields)> = vec![
        ("an empty :scheme", edited("/e1", &[(":scheme", Some(b""))])),
        ("no :scheme", edited("/e2", &[(":scheme", None)])),
        ("an empty :path", edited("", &[])),
        ("no :path", edited("/e3", &[(":path", None)])),
        ("no :method", edited("/e4", &[(":method", None)])),
        ("a repeated pseudo-header", {
            let mut f = edited("/e5", &[]);
            f.push((":path", b"/other".to_vec()));
            f
        }),
        ("a pseudo-header after a field", {
            let mut f = edited("/e6", &[(":path", None), ("x-a", Some(b"1"))]);
            f.push((":path", b"/e6".to_vec()));
            f
        }),
        (
            "an unknown pseudo-header",
            edited("/e7", &[(":foo", Some(b"1"))]),
        ),
        (
            ":status in a request",
            edited("/e8", &[(":status", Some(b"200"))]),
        ),
        ("an upper-case name", edited("/e9", &[("X-A", Some(b"1"))])),
        (
            "a NUL in a value",
            edited("/e10", &[("x-a", Some(b"a\0b"))]),
        ),
        ("a LF in a value", edited("/e11", &[("x-a", Some(b"a\nb"))])),
        (
            "a connection field",
            edited("/e12", &[("connection", Some(b"close"))]),
        ),
        (
            "TE other than trailers",
            edited("/e13", &[("te", Some(b"gzip"))]),
        ),
        (
            "userinfo in :authority",
            edited("/e14", &[(":authority", Some(b"u@c.test"))]),
        ),
        (
            "a Host against :authority",
            edited("/e15", &[("host", Some(b"other.test"))]),
        ),
        (
            "conflicting lengths",
            edited(
                "/e16",
                &[
                    ("content-length", Some(b"0")),
                    ("content-length", Some(b"5")),
                ],
            ),
        ),
        ("a space in :path", edited("/e17 x", &[])),
        ("a relative :path", edited("e18", &[])),
    ];
    for (what, fields) in &below {
        let outcome = h2_request(&v, fields).await;
        assert!(refused(outcome), "{what}: {outcome:?}");
    }
    assert_eq!(o.total(), 0, "a malformed request reached the origin");
    sum_eventually(
        &v,
        Duration::from_secs(5),
        REJECTED,
        &[("reason", "h2_field_whitespace")],
        |n| n >= 3.0,
    )
    .await;

    // a well-formed request, with inner whitespace and an empty value, goes through
    let fine = edited("/fine", &[("x-a", Some(b"a b\tc")), ("x-empty", Some(b""))]);
    assert_eq!(h2_request(&v, &fine).await, Outcome::Status(200));
    let seen = o.seen_for("/fine");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-a"), Some("a b\tc"));
}

// ---- 10. every HTTP/2 frame type has a budget ----

/// Open an h2c connection, send `prelude`, then `one` over and over (in batches) while reading
/// what verge sends: the error code of its GOAWAY, if one came before the connection closed.
async fn flood(v: &Verge, prelude: &[u8], one: &[u8]) -> Option<u32> {
    let H2Conn {
        mut reader,
        mut writer,
    } = H2Conn::open(v.http).await;
    writer.write_all(prelude).await.expect("prelude");
    let batch = one.repeat(100);
    let sender = tokio::spawn(async move {
        // at most a million frames, as the flood
        for _ in 0..10_000 {
            if writer.write_all(&batch).await.is_err() {
                return;
            }
        }
    });
    let mut code = None;
    while let Some(f) = reader.next_frame(Duration::from_secs(20)).await {
        if f.kind == h2_wire::GOAWAY {
            code = Some(f.error_code());
        }
    }
    sender.abort();
    code
}

async fn h2c_verge(o: &Origin, h2: &str) -> Verge {
    Verge::start(
        &Config::new()
            .listener(Listener::new().h2c().limits(Limits::new().set("h2", h2)))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p")),
    )
    .await
}

async fn h2_get_is_fine(v: &Verge, o: &Origin, path: &str) {
    let fields = h2_wire::get_fields(path);
    assert_eq!(h2_request(v, &fields).await, Outcome::Status(200), "{path}");
    assert_eq!(o.hits(path), 1, "{path}");
}

#[tokio::test]
async fn a_flood_of_priority_frames_gets_goaway_enhance_your_calm_with_the_defaults() {
    let o = Origin::start("o").await;
    let v = h2c_verge(&o, "{}").await;
    // PRIORITY for stream 3 on stream 1, exclusive of nothing, weight 16
    let priority = h2_wire::frame(h2_wire::PRIORITY, 0, 3, &[0, 0, 0, 1, 15]);
    assert_eq!(
        flood(&v, &[], &priority).await,
        Some(h2_wire::ENHANCE_YOUR_CALM)
    );
    sum_eventually(
        &v,
        Duration::from_secs(5),
        REJECTED,
        &[("reason", "h2_priority_flood")],
        |n| n >= 1.0,
    )
    .await;
    h2_get_is_fine(&v, &o, "/after").await;
}

#[tokio::test]
async fn every_cheap_frame_type_has_a_budget() {
    let o = Origin::start("o").await;
    let v = h2c_verge(&o, "{frame_budget: 50, frame_rate: 1}").await;
    let ping = h2_wire::frame(h2_wire::PING, 0, 0, b"12345678");
    let settings = h2_wire::frame(h2_wire::SETTINGS, 0, 0, &[]);
    let window_update = h2_wire::frame(h2_wire::WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1]);
    let unknown = h2_wire::frame(0xfa, 0, 0, b"?");
    for (what, one, reason) in [
        ("PING", ping, "h2_ping_flood"),
        ("SETTINGS", settings, "h2_settings_flood"),
        ("WINDOW_UPDATE", window_update, "h2_window_update_flood"),
        ("unknown", unknown, "h2_unknown_frame_flood"),
    ] {
        assert_eq!(
            flood(&v, &[], &one).await,
            Some(h2_wire::ENHANCE_YOUR_CALM),
            "{what}"
        );
        sum_eventually(
            &v,
            Duration::from_secs(5),
            REJECTED,
            &[("reason", reason)],
            |n| n >= 1.0,
        )
        .await;
    }
    // empty DATA frames on an open request stream: h2 counts these itself (100 per connection)
    let post = [
        (":method", &b"POST"[..]),
        (":scheme", b"http"),
        (":authority", b"c.test"),
        (":path", b"/upload"),
    ];
    let open = h2_wire::frame(
        h2_wire::HEADERS,
        h2_wire::END_HEADERS,
        1,
        &h2_wire::block(&post),
    );
    let empty = h2_wire::frame(h2_wire::DATA, 0, 1, &[]);
    assert_eq!(
        flood(&v, &open, &empty).await,
        Some(h2_wire::ENHANCE_YOUR_CALM),
        "empty DATA"
    );
    // under the same tight budget, requests and a download of many DATA frames go through:
    // the WINDOW_UPDATEs a download draws are earned by the DATA frames verge sends
    h2_get_is_fine(&v, &o, "/small").await;
    o.set_body_size(8 << 20);
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let big = c.get(v.url("/big")).send().await.expect("answered");
    assert_eq!(big.status(), 200);
    assert_eq!(big.bytes().await.expect("whole body").len(), 8 << 20);
}

// ---- 14. no client can stall a fill ----

/// Larger than what the socket buffers between verge and a client take in (a few MiB), and
/// within the default `max_object_size`, so it is stored.
const BIG: u64 = 6 << 20;

/// An origin with a cacheable `BIG` object at `path`, and verge caching it on `listener`, whose
/// `send_timeout` is `send_timeout`.
async fn big_object(path: &str, listener: Listener, send_timeout: &str) -> (Origin, Verge) {
    let o = Origin::start("o").await;
    o.set_headers(path, &[("cache-control", "max-age=60")]);
    o.set_body_size(BIG);
    let limits = Limits::new().set("send_timeout", send_timeout);
    let v = Verge::start(
        &Config::new()
            .listener(listener.limits(limits))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").cache(RouteCache::new())),
    )
    .await;
    (o, v)
}

/// Once the stalled client's request reached the origin, another reader of `path` gets all of
/// it, from that one origin fetch.
async fn another_reader_gets_everything(o: &Origin, v: &Verge, path: &str) {
    wait_for_the_fill(o, path).await;
    let other = fetch(v, path, &[]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body.len() as u64, BIG);
    assert_eq!(o.hits(path), 1, "one fetch from the origin");
}

/// Wait until the stalled client's request for `path` reached the origin: the fill is on.
async fn wait_for_the_fill(o: &Origin, path: &str) {
    assert_eventually(
        Duration::from_secs(10),
        "the origin was asked",
        || async { o.hits(path) },
        |hits| *hits == 1,
    )
    .await;
}

/// The object at `path` was stored whole, from the one origin fetch.
async fn stored_whole(o: &Origin, v: &Verge, path: &str) {
    let again = fetch(v, path, &[]).await;
    assert!(
        again.cache_status.starts_with("verge; hit"),
        "{}",
        again.cache_status
    );
    assert_eq!(again.body.len() as u64, BIG);
    assert_eq!(o.hits(path), 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_stall_the_fill_for_the_others() {
    let (o, v) = big_object("/big", Listener::new(), "1s").await;
    // the client whose request starts the fill, and which then reads nothing at all
    let mut stalled = TcpStream::connect(v.http).await.expect("connect");
    stalled
        .write_all(b"GET /big HTTP/1.1\r\nHost: c.test\r\n\r\n")
        .await
        .expect("request");
    another_reader_gets_everything(&o, &v, "/big").await;
    // the client that took nothing in for send_timeout was cut off, mid-body
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut got));
    assert!(
        matches!(read.await, Ok(Ok(_))),
        "verge closed the connection"
    );
    assert!(
        (got.len() as u64) < BIG,
        "the stalled client was not cut off: it got {} bytes",
        got.len()
    );
    sum_eventually(
        &v,
        Duration::from_secs(5),
        REJECTED,
        &[("reason", "send_timeout")],
        |n| n >= 1.0,
    )
    .await;
    stored_whole(&o, &v, "/big").await;
}

/// Open stream 1 on a new HTTP/2 connection with a GET for `path`, and never open the
/// flow-control window: verge can send it 64 KiB, no more.
async fn stalled_h2_get(v: &Verge, path: &str) -> H2Conn {
    let mut stalled = H2Conn::open(v.http).await;
    let fields = h2_wire::get_fields(path);
    let fields: Vec<(&str, &[u8])> = fields.iter().map(|(n, v)| (*n, v.as_slice())).collect();
    let headers = h2_wire::frame(
        h2_wire::HEADERS,
        h2_wire::END_STREAM | h2_wire::END_HEADERS,
        1,
        &h2_wire::block(&fields),
    );
    assert!(stalled.send(&headers).await);
    stalled
}

/// Whether verge gave stream 1 of `c` up (reset it, or ended the connection) within `within`.
async fn given_up(c: &mut H2Conn, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.reader.next_frame(left).await {
            Some(f) if f.kind == h2_wire::RST_STREAM && f.stream == 1 => return true,
            Some(f) if f.kind == h2_wire::GOAWAY => return true,
            Some(_) => {}
            // a closed connection, or nothing more within the time
            None => return tokio::time::Instant::now() < deadline,
        }
    }
}

#[tokio::test]
async fn an_http2_client_that_stops_reading_does_not_stall_the_fill_for_the_others() {
    // the stalled stream may stay open for a minute: if the fill waited for it, the other
    // readers below would not be served within their (much shorter) bound
    let (o, v) = big_object("/big2", Listener::new().h2c(), "60s").await;
    let mut stalled = stalled_h2_get(&v, "/big2").await;
    wait_for_the_fill(&o, "/big2").await;
    let bound = Duration::from_secs(20);

    // another reader over HTTP/1
    let h1 = tokio::time::timeout(bound, fetch(&v, "/big2", &[]))
        .await
        .expect("an HTTP/1 reader got its answer while the stalled stream is open");
    assert_eq!(h1.status, 200);
    assert_eq!(h1.body.len() as u64, BIG, "the whole body over HTTP/1");

    // and one over HTTP/2 (for the same host, c.test, on the listener's port)
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("c.test", v.http)
        .build()
        .expect("client");
    let h2 = tokio::time::timeout(bound, async {
        let r = c
            .get(format!("http://c.test:{}/big2", v.http.port()))
            .send()
            .await
            .expect("answered");
        (r.status(), r.bytes().await.expect("whole body"))
    })
    .await
    .expect("an HTTP/2 reader got its answer while the stalled stream is open");
    assert_eq!(h2.0, 200);
    assert_eq!(h2.1.len() as u64, BIG, "the whole body over HTTP/2");

    assert_eq!(o.hits("/big2"), 1, "one fetch from the origin");
    assert!(
        !given_up(&mut stalled, Duration::from_millis(500)).await,
        "the stalled stream is still open (send_timeout is 60 s)"
    );
    stored_whole(&o, &v, "/big2").await;
}

#[tokio::test]
async fn an_http2_stream_that_takes_nothing_in_for_send_timeout_is_reset_and_the_fill_goes_on() {
    let (o, v) = big_object("/big3", Listener::new().h2c(), "1s").await;
    let mut stalled = stalled_h2_get(&v, "/big3").await;
    wait_for_the_fill(&o, "/big3").await;
    assert!(
        given_up(&mut stalled, Duration::from_secs(10)).await,
        "the stalled stream is still open"
    );
    // counted as an HTTP/1 connection cut off for send_timeout is
    sum_eventually(
        &v,
        Duration::from_secs(5),
        REJECTED,
        &[("reason", "send_timeout")],
        |n| n == 1.0,
    )
    .await;
    another_reader_gets_everything(&o, &v, "/big3").await;
}

// ---- 8, over HTTP/2: a request body that drips gets cut off ----

/// An h2c verge with a 1 s body timeout and a 100 bytes/s minimum.
async fn h2c_paced(o: &Origin) -> Verge {
    let limits = Limits::new()
        .set("body_timeout", "1s")
        .set("body_min_rate", "100");
    Verge::start(
        &Config::new()
            .listener(Listener::new().h2c().limits(limits))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p")),
    )
    .await
}

/// Open stream 1 with a POST of `length` bytes for `path` (its body still to come).
async fn h2_post(v: &Verge, path: &str, length: usize) -> H2Conn {
    let mut c = H2Conn::open(v.http).await;
    let length = length.to_string();
    let fields: Vec<(&str, &[u8])> = vec![
        (":method", b"POST"),
        (":scheme", b"http"),
        (":authority", b"c.test"),
        (":path", path.as_bytes()),
        ("content-length", length.as_bytes()),
    ];
    let head = h2_wire::frame(
        h2_wire::HEADERS,
        h2_wire::END_HEADERS,
        1,
        &h2_wire::block(&fields),
    );
    assert!(c.send(&head).await);
    c
}

#[tokio::test]
async fn an_http2_body_that_goes_idle_or_drips_gets_408_and_a_fair_one_goes_through() {
    let o = Origin::start("o").await;
    let v = h2c_paced(&o).await;

    // three bytes, then nothing: cut off after the body timeout
    let mut c = h2_post(&v, "/idle", 10).await;
    assert!(c.send(&h2_wire::frame(h2_wire::DATA, 0, 1, b"abc")).await);
    let outcome = c.reader.outcome(1, Duration::from_secs(5)).await;
    assert_eq!(outcome, Outcome::Status(408), "an idle HTTP/2 body");
    sum_eventually(
        &v,
        Duration::from_secs(5),
        REJECTED,
        &[("reason", "body_idle_timeout")],
        |n| n >= 1.0,
    )
    .await;

    // one byte every 600 ms: never idle, but far below 100 bytes/s
    let mut c = h2_post(&v, "/drip", 100).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        if !c.send(&h2_wire::frame(h2_wire::DATA, 0, 1, b"x")).await {
            break;
        }
    }
    let outcome = c.reader.outcome(1, Duration::from_secs(5)).await;
    assert_eq!(outcome, Outcome::Status(408), "a dripping HTTP/2 body");
    sum_eventually(
        &v,
        Duration::from_secs(5),
        REJECTED,
        &[("reason", "body_too_slow")],
        |n| n >= 1.0,
    )
    .await;
    assert!(
        o.seen_for("/drip").iter().all(|r| r.body_len < 100),
        "no whole dripped body reached the origin"
    );

    // 50 bytes every 400 ms (125 bytes/s): slow, but above the minimum and never idle
    let mut c = h2_post(&v, "/fair", 200).await;
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let flags = if i == 3 { h2_wire::END_STREAM } else { 0 };
        assert!(
            c.send(&h2_wire::frame(h2_wire::DATA, flags, 1, &[b'y'; 50]))
                .await
        );
    }
    let outcome = c.reader.outcome(1, Duration::from_secs(10)).await;
    assert_eq!(outcome, Outcome::Status(200));
    let seen = o.seen_for("/fair");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 200);
}
