//! Route compression through real sockets: one stored encoding per object, asked of the origin
//! as `br, gzip` and compressed on fill when the origin sends none; served as stored to clients
//! that accept it and decoded for the others, byte for byte; what must not be compressed is
//! not; ranges, HEAD, revalidation, reloads and policies behave as docs/edge-features.md says.

use crate::support::{Config, Origin, Pool, RawOrigin, Route, RouteCache, Step, Verge};
use pingora_core::protocols::http::compression::Algorithm;
use std::time::Duration;

/// A text body of about 20 KB that compresses well, with a few varying bytes.
fn page() -> Vec<u8> {
    (0..400)
        .map(|i| format!("<p>line {i}: the quick brown fox jumps over the lazy dog</p>\n"))
        .collect::<String>()
        .into_bytes()
}

/// The body decoded by the reference decoders (brotli's reader, which refuses a stream without
/// its last meta-block; flate2's through pingora-core).
fn decode(algorithm: Algorithm, body: &[u8]) -> Vec<u8> {
    if algorithm == Algorithm::Brotli {
        let mut out = Vec::new();
        let mut reader = brotli::Decompressor::new(body, 4096);
        std::io::Read::read_to_end(&mut reader, &mut out).expect("a complete brotli stream");
        return out;
    }
    let mut decoder = algorithm.decompressor(true).expect("a decoder");
    decoder
        .encode(body, true)
        .expect("a well-formed body")
        .to_vec()
}

/// `got` is `want`, byte for byte (a failure names the lengths and the first difference, not
/// 20 KB of bytes).
#[track_caller]
fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes where {} were expected, first difference at {at:?}; got starts {:?}",
            got.len(),
            want.len(),
            String::from_utf8_lossy(&got[..got.len().min(80)])
        );
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = Algorithm::Gzip.compressor(6).expect("gzip");
    encoder.encode(body, true).expect("compressed").to_vec()
}

/// What a client got, with its body as bytes.
struct Raw {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn varies_on_accept_encoding(&self) -> bool {
        self.headers
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|n| n.trim().eq_ignore_ascii_case("accept-encoding"))
    }
}

/// `method path` on host `c.test` with these fields (reqwest here adds no `Accept-Encoding`
/// and decodes nothing).
async fn send(v: &Verge, method: reqwest::Method, path: &str, fields: &[(&str, &str)]) -> Raw {
    let mut req = crate::support::client()
        .request(method, v.url(path))
        .header("host", "c.test");
    for (k, val) in fields {
        req = req.header(*k, *val);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.expect("body").to_vec();
    Raw {
        status,
        headers,
        body,
    }
}

async fn get(v: &Verge, path: &str, accept_encoding: Option<&str>) -> Raw {
    let fields: Vec<(&str, &str)> = accept_encoding
        .map(|ae| ("accept-encoding", ae))
        .into_iter()
        .collect();
    send(v, reqwest::Method::GET, path, &fields).await
}

fn compressing_route(compression: &str) -> Route {
    Route::to("p")
        .name("site")
        .cache(RouteCache::new())
        .set("compression", compression)
}

/// verge in front of `origin` with one caching route, `site`, with this `compression` block.
async fn compressing_verge(origin: std::net::SocketAddr, compression: &str) -> Verge {
    Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[origin]))
            .route(compressing_route(compression)),
    )
    .await
}

#[tokio::test]
async fn one_stored_object_serves_br_gzip_and_identity_clients_byte_for_byte() {
    let o = Origin::start("o").await;
    let original = page();
    o.set_body("/page.html", original.clone());
    o.set_headers(
        "/page.html",
        &[
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", "max-age=600"),
        ],
    );
    o.set_etag("/page.html", "\"v1\"");
    let v = compressing_verge(o.addr, "{}").await;

    // the miss: the origin is asked for br and gzip, whatever the client sent
    let br = get(&v, "/page.html", Some("gzip;q=0.5, br")).await;
    assert_eq!(br.status, 200);
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert!(br.varies_on_accept_encoding(), "{:?}", br.headers);
    assert_eq!(
        br.header("etag"),
        Some("W/\"v1\""),
        "verge changed the bytes"
    );
    assert!(
        br.body.len() < original.len() / 4,
        "{} bytes",
        br.body.len()
    );
    assert_bytes(&decode(Algorithm::Brotli, &br.body), &original, "body");
    let seen = o.seen_for("/page.html");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("accept-encoding"), Some("br, gzip"));

    // every other client is served from that one stored object
    let hit = get(&v, "/page.html", Some("br")).await;
    assert!(
        hit.header("cache-status")
            .unwrap_or("")
            .starts_with("verge; hit"),
        "{:?}",
        hit.headers
    );
    assert_eq!(hit.header("content-encoding"), Some("br"));
    assert_bytes(&hit.body, &br.body, "the stored bytes");
    assert_eq!(
        hit.header("content-length"),
        Some(br.body.len().to_string().as_str()),
        "a hit announces the stored length"
    );
    for accept in [Some("gzip"), None, Some("identity"), Some("br;q=0, *")] {
        let plain = get(&v, "/page.html", accept).await;
        assert_eq!(plain.status, 200, "{accept:?}");
        assert_eq!(plain.header("content-encoding"), None, "{accept:?}");
        assert_bytes(
            &plain.body,
            &original,
            &format!("{accept:?}: decoded byte for byte"),
        );
        assert!(plain.varies_on_accept_encoding(), "{accept:?}");
        assert_eq!(plain.header("etag"), Some("W/\"v1\""), "{accept:?}");
        assert!(
            plain
                .header("cache-status")
                .unwrap_or("")
                .starts_with("verge; hit"),
            "{accept:?}: {:?}",
            plain.headers
        );
    }
    // the weak validator answers conditional requests, whichever form the client gets
    for accept in ["br", "identity"] {
        let not_modified = send(
            &v,
            reqwest::Method::GET,
            "/page.html",
            &[("accept-encoding", accept), ("if-none-match", "W/\"v1\"")],
        )
        .await;
        assert_eq!(not_modified.status, 304, "{accept}");
        assert!(not_modified.body.is_empty());
        assert_eq!(not_modified.header("etag"), Some("W/\"v1\""), "{accept}");
    }
    let star = get(&v, "/page.html", Some("*")).await;
    assert_eq!(star.header("content-encoding"), Some("br"));
    assert_bytes(&star.body, &br.body, "body");
    assert_eq!(o.hits("/page.html"), 1, "one fetch, one stored object");

    // HEAD says what a GET would send, without a body
    let head = send(
        &v,
        reqwest::Method::HEAD,
        "/page.html",
        &[("accept-encoding", "br")],
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-encoding"), Some("br"));
    assert!(head.body.is_empty());
    let head = send(&v, reqwest::Method::HEAD, "/page.html", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-encoding"), None);
    assert_eq!(
        head.header("content-length"),
        None,
        "the decoded length is unknown"
    );
    assert!(head.body.is_empty());
    assert_eq!(o.hits("/page.html"), 1);

    let m = v.metrics().await;
    let site_br = [("route", "site"), ("coding", "br")];
    assert_eq!(
        m.value("verge_compressed_responses_total", &site_br),
        Some(1.0)
    );
    assert_eq!(
        m.value("verge_compression_input_bytes_total", &site_br),
        Some(original.len() as f64)
    );
    assert_eq!(
        m.value("verge_compression_output_bytes_total", &site_br),
        Some(br.body.len() as f64)
    );
    assert_eq!(
        m.value("verge_decompressed_responses_total", &site_br),
        Some(4.0),
        "the four GETs that did not accept br"
    );
}

#[tokio::test]
async fn what_must_not_be_compressed_goes_as_the_origin_sent_it() {
    let o = Origin::start("o").await;
    let original = page();
    let cases: [(&str, &str, &str); 3] = [
        ("/no-transform", "text/html", "max-age=600, no-transform"),
        ("/image.png", "image/png", "max-age=600"),
        ("/small.txt", "text/plain", "max-age=600"),
    ];
    for (path, content_type, cc) in cases {
        let body = match path {
            "/small.txt" => original[..1000].to_vec(),
            _ => original.clone(),
        };
        o.set_body(path, body);
        o.set_headers(
            path,
            &[("content-type", content_type), ("cache-control", cc)],
        );
    }
    let v = compressing_verge(o.addr, "{min_size: 1KiB}").await;
    for (path, _, _) in cases {
        for round in 0..2 {
            let got = get(&v, path, Some("br, gzip")).await;
            assert_eq!(got.status, 200, "{path}");
            assert_eq!(got.header("content-encoding"), None, "{path} #{round}");
            let expected = if path == "/small.txt" {
                &original[..1000]
            } else {
                &original[..]
            };
            assert_bytes(&got.body, expected, &format!("{path} #{round}"));
            assert!(!got.varies_on_accept_encoding(), "{path}: one form for all");
        }
        assert_eq!(o.hits(path), 1, "{path} is stored");
    }
    let m = v.metrics().await;
    assert_eq!(m.sum("verge_compressed_responses_total", &[]), 0.0);
}

#[tokio::test]
async fn an_origin_gzip_body_is_stored_as_sent_and_decoded_for_clients_without_gzip() {
    let o = Origin::start("o").await;
    let original = page();
    let gzipped = gzip(&original);
    o.set_body("/app.css", gzipped.clone());
    o.set_headers(
        "/app.css",
        &[
            ("content-type", "text/css"),
            ("content-encoding", "gzip"),
            ("cache-control", "max-age=600"),
            ("etag", "\"css1\""),
        ],
    );
    let v = compressing_verge(o.addr, "{algorithm: br, level: 4}").await;
    let gz = get(&v, "/app.css", Some("gzip")).await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_bytes(&gz.body, &gzipped, "stored as the origin sent it");
    assert_eq!(
        gz.header("etag"),
        Some("\"css1\""),
        "the origin's bytes: strong"
    );
    assert!(gz.varies_on_accept_encoding());
    for accept in [None, Some("br")] {
        let plain = get(&v, "/app.css", accept).await;
        assert_eq!(plain.header("content-encoding"), None, "{accept:?}");
        assert_bytes(&plain.body, &original, &format!("{accept:?}"));
        assert_eq!(plain.header("etag"), Some("W/\"css1\""), "{accept:?}");
        assert!(plain.varies_on_accept_encoding(), "{accept:?}");
    }
    assert_eq!(o.hits("/app.css"), 1);
    let m = v.metrics().await;
    assert_eq!(m.sum("verge_compressed_responses_total", &[]), 0.0);
    assert_eq!(
        m.value(
            "verge_decompressed_responses_total",
            &[("route", "site"), ("coding", "gzip")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_range_is_served_from_the_stored_bytes_or_ignored_when_verge_decodes() {
    let o = Origin::start("o").await;
    let original = page();
    o.set_body("/doc.txt", original.clone());
    o.set_headers("/doc.txt", &[("cache-control", "max-age=600")]);
    let v = compressing_verge(o.addr, "{algorithm: gzip}").await;
    // the miss that compresses and stores it: no length yet, so the whole response
    let first = send(
        &v,
        reqwest::Method::GET,
        "/doc.txt",
        &[("accept-encoding", "gzip"), ("range", "bytes=10-29")],
    )
    .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    assert_bytes(&decode(Algorithm::Gzip, &first.body), &original, "the miss");
    let whole = get(&v, "/doc.txt", Some("gzip")).await;
    assert_eq!(whole.header("content-encoding"), Some("gzip"));
    assert_bytes(&decode(Algorithm::Gzip, &whole.body), &original, "body");

    // a client that takes gzip: a range of the stored (gzip) bytes
    let part = send(
        &v,
        reqwest::Method::GET,
        "/doc.txt",
        &[("accept-encoding", "gzip"), ("range", "bytes=10-29")],
    )
    .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-encoding"), Some("gzip"));
    let total = whole.body.len();
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 10-29/{total}").as_str())
    );
    assert_bytes(&part.body, &whole.body[10..30], "body");

    // a client verge decodes for: the whole decoded body, 200
    let decoded = send(
        &v,
        reqwest::Method::GET,
        "/doc.txt",
        &[("range", "bytes=10-29")],
    )
    .await;
    assert_eq!(decoded.status, 200);
    assert_eq!(decoded.header("content-encoding"), None);
    assert_eq!(decoded.header("content-range"), None);
    assert_bytes(&decoded.body, &original, "body");
    assert_eq!(o.hits("/doc.txt"), 1);
}

#[tokio::test]
async fn a_revalidation_keeps_the_stored_encoding() {
    let o = Origin::start("o").await;
    let original = page();
    o.set_body("/news.json", original.clone());
    o.set_etag("/news.json", "\"n1\"");
    // stored already stale: every later request revalidates
    o.set_headers_stale(
        "/news.json",
        &[
            ("content-type", "application/json"),
            ("cache-control", "max-age=60"),
        ],
    );
    let v = compressing_verge(o.addr, "{}").await;
    let first = get(&v, "/news.json", Some("br")).await;
    assert_eq!(first.header("content-encoding"), Some("br"));

    let plain = get(&v, "/news.json", None).await;
    assert_eq!(plain.status, 200);
    assert_bytes(&plain.body, &original, "the revalidated br entry, decoded");
    assert_eq!(o.not_modified("/news.json"), 1, "the origin answered 304");
    let seen = o.seen_for("/news.json");
    assert_eq!(seen[1].header("accept-encoding"), Some("br, gzip"));
    assert_eq!(seen[1].header("if-none-match"), Some("W/\"n1\""));

    let again = get(&v, "/news.json", Some("br")).await;
    assert_eq!(again.header("content-encoding"), Some("br"));
    assert_bytes(&again.body, &first.body, "the stored encoding is kept");
    assert_eq!(o.not_modified("/news.json"), 2);
    assert_eq!(o.hits("/news.json"), 3);
}

#[tokio::test]
async fn a_streamed_body_without_length_is_compressed() {
    let o = RawOrigin::start().await;
    let piece = "streamed text that compresses, ".repeat(40);
    let chunk = format!("{:X}\r\n{piece}\r\n", piece.len());
    o.set(
        "/stream",
        vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .to_vec(),
            ),
            Step::Piece(chunk.clone().into_bytes()),
            Step::Sleep(Duration::from_millis(50)),
            Step::Piece(chunk.into_bytes()),
            Step::Write(b"0\r\n\r\n".to_vec()),
        ],
    );
    let v = compressing_verge(o.addr, "{min_size: 100KiB}").await;
    let expected = format!("{piece}{piece}").into_bytes();
    let br = get(&v, "/stream", Some("br")).await;
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_bytes(&decode(Algorithm::Brotli, &br.body), &expected, "body");
    let plain = get(&v, "/stream", None).await;
    assert_bytes(&plain.body, &expected, "body");
    assert_eq!(o.hits("/stream"), 1);
    let head = &o.heads("/stream")[0];
    assert!(
        head.to_ascii_lowercase()
            .contains("accept-encoding: br, gzip\r\n"),
        "{head}"
    );
}

#[tokio::test]
async fn compression_turned_on_by_a_reload_applies_without_a_restart() {
    let o = Origin::start("o").await;
    let original = page();
    for path in ["/before", "/after"] {
        o.set_body(path, original.clone());
        o.set_headers(path, &[("cache-control", "max-age=600")]);
    }
    let plain = Config::new()
        .pool(Pool::new("p", &[o.addr]))
        .route(Route::to("p").name("site").cache(RouteCache::new()));
    let v = Verge::start(&plain).await;
    let before = get(&v, "/before", Some("br")).await;
    assert_eq!(before.header("content-encoding"), None);
    assert_eq!(
        o.seen_for("/before")[0].header("accept-encoding"),
        Some("br"),
        "without compression the client's Accept-Encoding goes on"
    );
    v.reload_with(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(compressing_route("{}")),
    );
    // a new URL each time: what was stored before the reload stays as it was stored
    let n = std::sync::atomic::AtomicU32::new(0);
    crate::support::assert_eventually(
        Duration::from_secs(10),
        "the reloaded route compresses",
        || async {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            get(&v, &format!("/after?n={i}"), Some("br"))
                .await
                .header("content-encoding")
                .map(str::to_string)
        },
        |ce| ce.as_deref() == Some("br"),
    )
    .await;
    let after = get(&v, "/after?fresh", Some("br")).await;
    assert_bytes(&decode(Algorithm::Brotli, &after.body), &original, "body");
    let before = get(&v, "/before", None).await;
    assert_bytes(
        &before.body,
        &original,
        "the entry stored before is served as stored",
    );

    // and off again: the compressed entry is not handed, coded, to clients that do not take it
    v.reload_with(&plain);
    crate::support::assert_eventually(
        Duration::from_secs(10),
        "the reload turns compression off",
        || async {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            get(&v, &format!("/after?n={i}"), Some("br"))
                .await
                .header("content-encoding")
                .map(str::to_string)
        },
        |ce| ce.is_none(),
    )
    .await;
    let fetched = o.hits("/after");
    let identity = get(&v, "/after?fresh", None).await;
    assert_eq!(identity.header("content-encoding"), None);
    assert_bytes(&identity.body, &original, "fetched again for this client");
    assert_eq!(
        o.hits("/after"),
        fetched + 1,
        "its own variant, from the origin"
    );
}

#[tokio::test]
async fn compression_from_a_control_plane_policy_applies_and_is_validated() {
    use crate::edge::ControlPlane;
    let o = Origin::start("o").await;
    let original = page();
    o.set_body("/p", original.clone());
    o.set_headers("/p", &[("cache-control", "max-age=600")]);
    let cp = ControlPlane::start().await;
    let v = Verge::start(&Config::new().control(cp.node("compression-node"))).await;
    let route = |compression: serde_json::Value| {
        ControlPlane::policy(
            o.addr,
            serde_json::json!({"cache": {}, "compression": compression}),
        )
    };
    // an invalid block is refused where the policy is written, with its key path
    let refused = crate::support::client()
        .put(format!("http://{}/v1/policy", cp.addr))
        .bearer_auth(crate::edge::OPS)
        .header("if-match", "\"0\"")
        .json(&route(serde_json::json!({"algorithm": "zstd"})))
        .send()
        .await
        .expect("put");
    assert_eq!(refused.status().as_u16(), 422);
    let text = refused.text().await.unwrap_or_default();
    assert!(text.contains("routes[0].compression.algorithm"), "{text}");

    cp.put_policy(
        route(serde_json::json!({"algorithm": "gzip", "level": 5})),
        0,
    )
    .await;
    crate::support::assert_eventually(
        Duration::from_secs(15),
        "the policy's compression applies",
        || async {
            get(&v, "/p", Some("gzip"))
                .await
                .header("content-encoding")
                .map(str::to_string)
        },
        |ce| ce.as_deref() == Some("gzip"),
    )
    .await;
    let gz = get(&v, "/p", Some("gzip")).await;
    assert_bytes(&decode(Algorithm::Gzip, &gz.body), &original, "gzip body");
    let plain = get(&v, "/p", None).await;
    assert_bytes(&plain.body, &original, "decoded for an identity client");
    assert_eq!(
        o.seen_for("/p")[0].header("accept-encoding"),
        Some("br, gzip")
    );
}

#[tokio::test]
async fn a_head_first_then_a_get_gets_the_compressed_object() {
    let o = Origin::start("o").await;
    let original = page();
    o.set_body("/h", original.clone());
    o.set_headers("/h", &[("cache-control", "max-age=600")]);
    let v = compressing_verge(o.addr, "{}").await;
    let head = send(
        &v,
        reqwest::Method::HEAD,
        "/h",
        &[("accept-encoding", "br")],
    )
    .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-encoding"),
        Some("br"),
        "the fill behind a HEAD fetched and compressed the whole body"
    );
    let got = get(&v, "/h", Some("br")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-encoding"), Some("br"));
    assert_bytes(
        &decode(Algorithm::Brotli, &got.body),
        &original,
        "GET after HEAD",
    );
    let plain = get(&v, "/h", None).await;
    assert_bytes(&plain.body, &original, "decoded");
    let methods: Vec<String> = o.seen_for("/h").iter().map(|s| s.method.clone()).collect();
    assert_eq!(methods, ["GET"], "one fetch, a GET");
}

#[tokio::test]
async fn a_compressed_body_over_the_object_size_limit_reaches_the_client_whole_unstored() {
    let o = Origin::start("o").await;
    // text that compresses only about twice: still over the 16 KiB limit once compressed
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let noisy: Vec<u8> = (0..12_000)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}\n").into_bytes()
        })
        .collect();
    o.set_body("/big.txt", noisy.clone());
    o.set_headers("/big.txt", &[("cache-control", "max-age=600")]);
    let v = Verge::start(
        &Config::new()
            .cache(crate::support::Cache::new().max_object_size("16KiB"))
            .pool(Pool::new("p", &[o.addr]))
            .route(compressing_route("{}")),
    )
    .await;
    let br = get(&v, "/big.txt", Some("br")).await;
    assert_eq!(br.status, 200);
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert!(br.body.len() > 16 * 1024, "{} bytes", br.body.len());
    assert_bytes(&decode(Algorithm::Brotli, &br.body), &noisy, "whole");
    let plain = get(&v, "/big.txt", None).await;
    assert_bytes(&plain.body, &noisy, "whole, decoded");
    assert_eq!(o.hits("/big.txt"), 2, "too large to store");
}
