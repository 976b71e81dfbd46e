//! A small origin server for demos and benchmarks: cacheable objects, a slow endpoint, request
//! counters, and an echo of what it received.
//!
//! ```text
//! cargo run --example demo_origin -- --listen 127.0.0.1:9000 --listen 127.0.0.1:9001
//! curl -s 127.0.0.1:9000/obj/1024 | wc -c        # 1024 bytes, Cache-Control: public, max-age=300
//! curl -s '127.0.0.1:9000/slow?ms=200'            # answers after 200 ms
//! curl -s 127.0.0.1:9000/stats                    # requests seen per path
//! curl -s 127.0.0.1:9000/anything                 # echo: method, path, headers received
//! ```

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

fn respond(status: u16, headers: &[(&str, String)], body: Bytes) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n"))))
}

async fn handle(
    req: Request<Incoming>,
    me: SocketAddr,
    counts: Counts,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if let Ok(mut c) = counts.lock() {
        *c.entry(path.clone()).or_default() += 1;
    }
    let served_by = ("x-served-by", me.to_string());
    if path == "/health" {
        return Ok(respond(200, &[served_by], Bytes::from_static(b"ok\n")));
    }
    if path == "/stats" {
        let body = counts
            .lock()
            .map(|c| serde_json::to_vec_pretty(&*c).unwrap_or_default())
            .unwrap_or_default();
        return Ok(respond(
            200,
            &[served_by, ("content-type", "application/json".into())],
            body.into(),
        ));
    }
    if let Some(size) = path.strip_prefix("/obj/") {
        let n: usize = size
            .split('/')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1024)
            .min(64 << 20);
        return Ok(respond(
            200,
            &[
                served_by,
                ("content-type", "application/octet-stream".into()),
                ("cache-control", "public, max-age=300".into()),
                ("etag", format!("\"obj-{n}\"")),
            ],
            Bytes::from(vec![b'v'; n]),
        ));
    }
    if path == "/slow" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(200)
            .min(60_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(respond(
            200,
            &[served_by, ("cache-control", "public, max-age=60".into())],
            Bytes::from(format!("slept {ms} ms\n")),
        ));
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let echo = serde_json::json!({
        "origin": me.to_string(),
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "headers": headers,
    });
    Ok(respond(
        200,
        &[
            served_by,
            ("content-type", "application/json".into()),
            ("cache-control", "public, max-age=10".into()),
        ],
        Bytes::from(serde_json::to_vec_pretty(&echo).unwrap_or_default()),
    ))
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let me = listener.local_addr()?;
    println!("demo origin listening on http://{me}");
    let counts: Counts = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let counts = counts.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, me, counts.clone()));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut addrs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" | "-l" => {
                let v = args
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--listen needs ip:port"))?;
                addrs.push(v.parse::<SocketAddr>()?);
            }
            "--help" | "-h" => {
                println!("demo_origin [--listen 127.0.0.1:9000]...");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    if addrs.is_empty() {
        addrs.push("127.0.0.1:9000".parse()?);
    }
    let tasks: Vec<_> = addrs.into_iter().map(|a| tokio::spawn(serve(a))).collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}
