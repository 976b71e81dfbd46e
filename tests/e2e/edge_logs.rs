//! The configurable access log through real sockets: chosen JSON fields with `time` first, on
//! the full path and the hit lane alike; the combined format; the TLS version and scheme of a
//! TLS listener; a reload switching the format.

use crate::support::metrics::sum_eventually;
use crate::support::{
    assert_eventually, fetch, Config, Listener, Origin, Pool, Route, RouteCache, Verge,
};
use std::path::Path;
use std::time::Duration;

/// The access log's lines, once `n` are written.
async fn lines(v: &Verge, n: usize) -> Vec<String> {
    let path = v.dir().join("access.log");
    assert_eventually(
        Duration::from_secs(5),
        &format!("{n} access-log lines"),
        || async {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        },
        |got| got.len() >= n,
    )
    .await
}

/// The keys of a JSON line, in the order written.
fn keys(line: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
    let mut keys: Vec<(usize, String)> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(|k| {
            (
                line.find(&format!("\"{k}\":")).unwrap_or(usize::MAX),
                k.clone(),
            )
        })
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

#[tokio::test]
async fn chosen_fields_are_written_in_order_after_the_time_on_misses_and_lane_hits() {
    let o = Origin::start("o").await;
    o.set_headers("/c", &[("cache-control", "max-age=600")]);
    let v = Verge::start(
        &Config::new()
            .raw(
                "access_log: {path: \"{dir}/access.log\", fields: [status, cache, user_agent, \
                 referer, protocol, scheme, listener, route]}",
            )
            .listener(Listener::new().name("front"))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").name("site").cache(RouteCache::new())),
    )
    .await;
    let ua = [
        ("user-agent", "probe/1.0 \"quoted\""),
        ("referer", "https://r.test/x"),
    ];
    assert_eq!(
        fetch(&v, "/c", &ua).await.cache_status,
        "verge; fwd=uri-miss; stored"
    );
    let hit = fetch(&v, "/c", &ua).await;
    assert!(
        hit.cache_status.starts_with("verge; hit"),
        "{}",
        hit.cache_status
    );
    let got = lines(&v, 2).await;
    for line in &got {
        assert_eq!(
            keys(line),
            [
                "time",
                "status",
                "cache",
                "user_agent",
                "referer",
                "protocol",
                "scheme",
                "listener",
                "route"
            ],
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
        assert_eq!(v["user_agent"], "probe/1.0 \"quoted\"");
        assert_eq!(v["referer"], "https://r.test/x");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["scheme"], "http");
        assert_eq!(v["listener"], "front");
        assert_eq!(v["route"], "site");
    }
    let caches: Vec<String> = got
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON")["cache"].to_string())
        .collect();
    assert!(caches.contains(&"\"hit\"".to_string()), "{caches:?}");
    assert!(caches.contains(&"\"miss\"".to_string()), "{caches:?}");
    assert_eq!(o.hits("/c"), 1);
    let lane = v.metrics().await.sum("verge_cache_fast_hits_total", &[]);
    assert_eq!(lane, 1.0, "the hit was the lane's");
}

#[tokio::test]
async fn the_combined_format_reads_like_apaches() {
    let o = Origin::start("o").await;
    let v = Verge::start(
        &Config::new()
            .raw("access_log: {path: \"{dir}/access.log\", format: combined}")
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p")),
    )
    .await;
    let got = fetch(
        &v,
        "/a?b=1",
        &[("user-agent", "agent/2"), ("referer", "https://r.test/")],
    )
    .await;
    let len = got.body.len();
    let line = lines(&v, 1).await.remove(0);
    let (start, rest) = line.split_once(" [").expect("a time");
    assert_eq!(start, "127.0.0.1 - -");
    let (time, rest) = rest.split_once("] ").expect("the time's end");
    assert_eq!(time.len(), "04/Dec/2026:10:40:28 +0000".len(), "{time}");
    assert!(time.ends_with(" +0000"), "{time}");
    assert_eq!(
        rest,
        format!("\"GET /a?b=1 HTTP/1.1\" 200 {len} \"https://r.test/\" \"agent/2\"")
    );
}

#[tokio::test]
async fn a_tls_listener_logs_its_version_and_scheme() {
    let o = Origin::start("o").await;
    o.set_headers("/t", &[("cache-control", "max-age=600")]);
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/test-certs");
    let v = Verge::start(
        &Config::new()
            .raw(
                "access_log: {path: \"{dir}/access.log\", fields: [tls_version, scheme, \
                 protocol, cache]}",
            )
            .listener(
                Listener::new()
                    .name("tls")
                    .tls(&certs.join("server.crt"), &certs.join("server.key")),
            )
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .hosts(&["localhost"])
                    .cache(RouteCache::new()),
            ),
    )
    .await;
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .http1_only()
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/t", v.http.port());
    for _ in 0..2 {
        let r = client.get(&url).send().await.expect("request");
        assert_eq!(r.status(), 200);
    }
    for line in lines(&v, 2).await {
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["tls_version"], "TLSv1.3", "{line}");
        assert_eq!(v["scheme"], "https");
        assert_eq!(v["protocol"], "HTTP/1.1");
    }
    assert_eq!(o.hits("/t"), 1, "the second was a hit");
    let lane = v.metrics().await.sum("verge_cache_fast_hits_total", &[]);
    assert_eq!(
        lane, 0.0,
        "the lane leaves hits to the full path when the log wants TLS"
    );
}

#[tokio::test]
async fn a_reload_switches_the_format_from_the_next_line_on() {
    let o = Origin::start("o").await;
    o.set_headers("/c", &[("cache-control", "max-age=600")]);
    let config = |log: &str| {
        Config::new()
            .raw(&format!(
                "access_log: {{path: \"{{dir}}/access.log\", {log}}}"
            ))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").cache(RouteCache::new()))
    };
    let v = Verge::start(&config("fields: [path, cache]")).await;
    fetch(&v, "/c", &[]).await;
    fetch(&v, "/c", &[]).await;
    let before = lines(&v, 2).await;
    // each line is written when its response ends: the miss's may come after the hit's
    let mut caches = Vec::new();
    for line in &before {
        assert_eq!(keys(line), ["time", "path", "cache"], "{line}");
        let (_, end) = line.split_once("\"path\":\"/c\",\"cache\":").expect("/c");
        caches.push(end.to_string());
    }
    caches.sort();
    assert_eq!(caches, ["\"hit\"}", "\"miss\"}"]);

    v.reload_with(&config("format: combined"));
    // the reload is applied in the background: ask until a line comes out combined
    let vr = &v;
    let mut n = 0;
    assert_eventually(
        Duration::from_secs(10),
        "a line in the combined format",
        || {
            n += 1;
            async move {
                fetch(vr, &format!("/p{n}"), &[("user-agent", "agent/3")]).await;
                lines(vr, n + 2).await.pop().unwrap_or_default()
            }
        },
        |last| last.starts_with("127.0.0.1 - - ["),
    )
    .await;
    // a hit from the lane writes the new format too
    let lane = || async { v.metrics().await.sum("verge_cache_fast_hits_total", &[]) };
    let lane_before = lane().await;
    let hit = fetch(&v, "/c", &[("user-agent", "agent/3")]).await;
    // (the lane counts a hit once it has written it: a moment after the client has it)
    let lanes = "verge_cache_fast_hits_total";
    let m = sum_eventually(&v, Duration::from_secs(5), lanes, &[], |n| n > lane_before).await;
    assert_eq!(m.sum(lanes, &[]), lane_before + 1.0, "the lane answered it");
    assert!(
        hit.cache_status.starts_with("verge; hit"),
        "{}",
        hit.cache_status
    );
    let after = lines(&v, n + 3).await;
    assert_eq!(
        &after[..2],
        &before[..],
        "lines already written stay as they were"
    );
    let last = after.last().cloned().unwrap_or_default();
    let request = format!(
        "\"GET /c HTTP/1.1\" 200 {} \"-\" \"agent/3\"",
        hit.body.len()
    );
    assert!(
        last.starts_with("127.0.0.1 - - [") && last.ends_with(&request),
        "{last}"
    );
    for line in &after[2..] {
        // each line is whole: JSON before the switch, combined after it
        assert!(
            line.starts_with("{\"time\":") || line.starts_with("127.0.0.1 - - ["),
            "{line}"
        );
    }
    assert_eq!(o.hits("/c"), 1);
}
