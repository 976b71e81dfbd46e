//! The origin `scripts/bench` puts behind verge, nginx and Varnish: fixed-size cacheable objects,
//! fixed-size objects no cache may store, a slow endpoint, and per-path request counters read
//! after a run.
//!
//! ```text
//! cargo run --release --example bench_origin -- --listen 127.0.0.1:9100 --max-age 3600
//! curl -si 127.0.0.1:9100/obj/1024/a      # 1024 bytes, Cache-Control: public, max-age=3600, ETag
//! curl -si 127.0.0.1:9100/nostore/1024/a  # 1024 bytes, Cache-Control: no-store
//! curl -si 127.0.0.1:9100/text/16384/a    # 16 KiB of HTML text (cacheable, compressible)
//! curl -si 127.0.0.1:9100/gztext/16384/a  # the same text gzipped, Content-Encoding: gzip
//! curl -s  127.0.0.1:9100/slow/200/k      # answers after 200 ms (cacheable)
//! curl -s  127.0.0.1:9100/stats           # {"total": N, "paths": {"/obj/1024/a": 1, ...}}
//! curl -s  127.0.0.1:9100/stats/total     # {"total": N}: cheap to read after a run of unique keys
//! ```
//!
//! It runs on one thread (the harness pins it to a core) and answers from one shared buffer, so
//! it costs little next to the proxy under test. `If-None-Match` with the current ETag gets 304.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest object `/obj/<size>/…` serves.
const MAX_OBJECT: usize = 16 << 20;
/// Longest wait `/slow/<ms>/…` accepts.
const MAX_SLOW_MS: u64 = 60_000;

/// Requests seen per path (the `/stats` endpoint itself is not counted).
#[derive(Default)]
struct Counts {
    total: u64,
    paths: HashMap<String, u64>,
}

/// What the origin answers with, decided from the path alone.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Object {
        size: usize,
        key: String,
    },
    /// HTML text of `size` bytes; `gzip`: sent gzipped (`Content-Encoding: gzip`).
    Text {
        size: usize,
        key: String,
        gzip: bool,
    },
    NoStore {
        size: usize,
    },
    Slow {
        ms: u64,
        key: String,
    },
    Stats,
    StatsTotal,
    NotFound,
}

/// `/obj/<size>/<key>`, `/text/<size>/<key>`, `/gztext/<size>/<key>`, `/nostore/<size>/<key>`,
/// `/api/<size>/<key>` (as `nostore`),
/// `/slow/<ms>/<key>`, `/stats`, `/stats/total`; anything else (or a size/ms out of range) is
/// `NotFound`.
fn endpoint(path: &str) -> Endpoint {
    match path {
        "/stats" => return Endpoint::Stats,
        "/stats/total" => return Endpoint::StatsTotal,
        _ => {}
    }
    let mut parts = path.trim_start_matches('/').splitn(3, '/');
    let (Some(kind), Some(n), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Endpoint::NotFound;
    };
    match kind {
        "obj" => match n.parse::<usize>() {
            Ok(size) if size <= MAX_OBJECT => Endpoint::Object {
                size,
                key: key.to_string(),
            },
            _ => Endpoint::NotFound,
        },
        "text" | "gztext" => match n.parse::<usize>() {
            Ok(size) if size <= MAX_OBJECT => Endpoint::Text {
                size,
                key: key.to_string(),
                gzip: kind == "gztext",
            },
            _ => Endpoint::NotFound,
        },
        // `api`: the same answer, asked for on a route that does not cache (scenario `api`)
        "nostore" | "api" => match n.parse::<usize>() {
            Ok(size) if size <= MAX_OBJECT => Endpoint::NoStore { size },
            _ => Endpoint::NotFound,
        },
        "slow" => match n.parse::<u64>() {
            Ok(ms) if ms <= MAX_SLOW_MS => Endpoint::Slow {
                ms,
                key: key.to_string(),
            },
            _ => Endpoint::NotFound,
        },
        _ => Endpoint::NotFound,
    }
}

/// The ETag of an object: stable for a size and key.
fn etag(size: usize, key: &str) -> String {
    format!("\"{size}-{key}\"")
}

/// Whether an `If-None-Match` value matches `tag` (weak comparison, `*` matches anything).
fn if_none_match(header: &str, tag: &str) -> bool {
    header
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == tag)
}

struct Origin {
    body: Bytes,
    /// HTML text, as long as `body`: what `/text/…` and `/gztext/…` slice.
    text: Bytes,
    cache_control: String,
    counts: RefCell<Counts>,
}

fn response(status: u16, headers: &[(&str, &str)], body: Bytes) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n"))))
}

impl Origin {
    /// The counters as JSON; `paths` only when asked (it grows with every unique key).
    fn stats_json(&self, with_paths: bool) -> Bytes {
        let c = self.counts.borrow();
        let json = if with_paths {
            serde_json::json!({ "total": c.total, "paths": c.paths })
        } else {
            serde_json::json!({ "total": c.total })
        };
        Bytes::from(serde_json::to_vec(&json).unwrap_or_default())
    }

    fn count(&self, path: &str) {
        let mut c = self.counts.borrow_mut();
        c.total += 1;
        match c.paths.get_mut(path) {
            Some(n) => *n += 1,
            None => {
                c.paths.insert(path.to_string(), 1);
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let which = endpoint(path);
        if !matches!(which, Endpoint::Stats | Endpoint::StatsTotal) {
            self.count(path);
        }
        let inm = req
            .headers()
            .get(hyper::header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok());
        match which {
            Endpoint::Stats | Endpoint::StatsTotal => response(
                200,
                &[
                    ("content-type", "application/json"),
                    ("cache-control", "no-store"),
                ],
                self.stats_json(which == Endpoint::Stats),
            ),
            Endpoint::Object { size, key } => {
                let tag = etag(size, &key);
                let headers = [
                    ("content-type", "application/octet-stream"),
                    ("cache-control", self.cache_control.as_str()),
                    ("etag", tag.as_str()),
                ];
                if inm.is_some_and(|v| if_none_match(v, &tag)) {
                    return response(304, &headers, Bytes::new());
                }
                response(200, &headers, self.body.slice(..size))
            }
            Endpoint::Text { size, key, gzip } => {
                let tag = etag(size, &key);
                let mut headers = vec![
                    ("content-type", "text/html; charset=utf-8"),
                    ("cache-control", self.cache_control.as_str()),
                    ("etag", tag.as_str()),
                ];
                if inm.is_some_and(|v| if_none_match(v, &tag)) {
                    return response(304, &headers, Bytes::new());
                }
                let mut body = self.text.slice(..size);
                if gzip {
                    // only on misses: the proxies store it
                    body = gzipped(&body);
                    headers.push(("content-encoding", "gzip"));
                }
                response(200, &headers, body)
            }
            Endpoint::NoStore { size } => response(
                200,
                &[
                    ("content-type", "application/octet-stream"),
                    ("cache-control", "no-store"),
                ],
                self.body.slice(..size),
            ),
            Endpoint::Slow { ms, key } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let tag = etag(0, &key);
                let headers = [
                    ("content-type", "text/plain"),
                    ("cache-control", self.cache_control.as_str()),
                    ("etag", tag.as_str()),
                ];
                response(
                    200,
                    &headers,
                    Bytes::from(format!("slept {ms} ms for {key}\n")),
                )
            }
            Endpoint::NotFound => response(
                404,
                &[("cache-control", "no-store")],
                Bytes::from_static(b"not found\n"),
            ),
        }
    }
}

/// `len` bytes of HTML-like text that compresses about as well as a real page (a few times,
/// not a hundred): lines with varying numbers and words.
fn html_text(len: usize) -> Bytes {
    const WORDS: [&str; 16] = [
        "cache", "origin", "edge", "request", "response", "header", "body", "stale", "fresh",
        "purge", "route", "pool", "listener", "metric", "proxy", "client",
    ];
    let mut out = String::with_capacity(len + 128);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut line = 0u64;
    while out.len() < len {
        out.push_str(&format!("<p class=\"l{}\">", line % 7));
        for _ in 0..8 {
            // xorshift: the same text on every run
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push_str(WORDS[(x % 16) as usize]);
            out.push_str(&format!(" {} ", x % 1000));
        }
        out.push_str("</p>\n");
        line += 1;
    }
    out.truncate(len);
    Bytes::from(out)
}

/// `body` gzipped (level 6).
fn gzipped(body: &[u8]) -> Bytes {
    use pingora_core::protocols::http::compression::Algorithm;
    Algorithm::Gzip
        .compressor(6)
        .and_then(|mut c| c.encode(body, true).ok())
        .unwrap_or_default()
}

async fn serve(listener: TcpListener, origin: Rc<Origin>) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let origin = origin.clone();
        tokio::task::spawn_local(async move {
            let svc = service_fn(move |req| {
                let origin = origin.clone();
                async move { Ok::<_, Infallible>(origin.handle(req).await) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn main() -> anyhow::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:9100".parse()?;
    let mut max_age: u64 = 3600;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))
        };
        match a.as_str() {
            "--listen" | "-l" => listen = value("--listen")?.parse()?,
            "--max-age" => max_age = value("--max-age")?.parse()?,
            "--help" | "-h" => {
                println!("bench_origin [--listen 127.0.0.1:9100] [--max-age SECONDS]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let origin = Rc::new(Origin {
        body: Bytes::from(vec![b'v'; MAX_OBJECT]),
        text: html_text(MAX_OBJECT),
        cache_control: format!("public, max-age={max_age}"),
        counts: RefCell::default(),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        println!(
            "bench origin listening on http://{}",
            listener.local_addr()?
        );
        serve(listener, origin).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_paths() {
        assert_eq!(
            endpoint("/obj/1024/a"),
            Endpoint::Object {
                size: 1024,
                key: "a".into()
            }
        );
        assert_eq!(
            endpoint("/obj/16/a/b"),
            Endpoint::Object {
                size: 16,
                key: "a/b".into()
            }
        );
        assert_eq!(
            endpoint("/slow/200/k"),
            Endpoint::Slow {
                ms: 200,
                key: "k".into()
            }
        );
        assert_eq!(
            endpoint("/gztext/16384/k"),
            Endpoint::Text {
                size: 16384,
                key: "k".into(),
                gzip: true
            }
        );
        assert_eq!(endpoint("/stats"), Endpoint::Stats);
        assert_eq!(endpoint("/stats/total"), Endpoint::StatsTotal);
        assert_eq!(
            endpoint("/nostore/16384/k-1"),
            Endpoint::NoStore { size: 16384 }
        );
        assert_eq!(
            endpoint(&format!("/nostore/{}/a", MAX_OBJECT + 1)),
            Endpoint::NotFound
        );
        assert_eq!(endpoint("/obj/1024"), Endpoint::NotFound);
        assert_eq!(endpoint("/obj/x/a"), Endpoint::NotFound);
        assert_eq!(
            endpoint(&format!("/obj/{}/a", MAX_OBJECT + 1)),
            Endpoint::NotFound
        );
        assert_eq!(endpoint("/slow/60001/a"), Endpoint::NotFound);
        assert_eq!(endpoint("/other"), Endpoint::NotFound);
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let tag = etag(1024, "a");
        assert_eq!(tag, "\"1024-a\"");
        assert!(if_none_match("\"1024-a\"", &tag));
        assert!(if_none_match("W/\"1024-a\"", &tag));
        assert!(if_none_match("\"x\", \"1024-a\"", &tag));
        assert!(if_none_match("*", &tag));
        assert!(!if_none_match("\"1024-b\"", &tag));
    }
}
