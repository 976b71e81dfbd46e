//! A route's edge rules through real sockets: redirects (with the request's path and query),
//! the HTTPS redirect of plain listeners, `allow`/`deny` by client address, request ids and
//! rate limits, and a listener's own `allow`/`deny`. Each is answered by verge before the cache
//! and the origin.

use crate::support::wire::{Conn, Response};
use crate::support::{fetch, Config, Listener, Origin, Pool, Route, RouteCache, Verge};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// `GET target` for `host` on a new connection from `from` (any loopback address), read to its
/// close.
pub(crate) async fn request(
    addr: SocketAddr,
    from: &str,
    host: &str,
    target: &str,
    extra: &str,
) -> Response {
    let from: IpAddr = from.parse().expect("address");
    let mut c = Conn::open(addr, Some(from)).await;
    let head = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    c.send(head.as_bytes()).await;
    c.read_to_close(Duration::from_secs(5)).await;
    c.response(false).response().cloned().expect("a response")
}

#[tokio::test]
async fn redirects_use_the_request_path_and_query_and_never_reach_the_origin() {
    let o = Origin::start("o").await;
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").hosts(&["old.test"]).set(
                "redirect",
                r#"{to: "https://new.example${path}${query}", status: 308}"#,
            ))
            .route(Route::to("p").hosts(&["old.test"]).path("/blog").set(
                "redirect",
                r#"{to: "${scheme}://blog.test/archive${path}"}"#,
            ))
            .route(Route::to("p").hosts(&["c.test"])),
    )
    .await;
    let r = request(v.http, "127.0.0.1", "old.test", "/a/b?x=1&y=%20", "").await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://new.example/a/b?x=1&y=%20")
    );
    let r = request(v.http, "127.0.0.1", "old.test", "/", "").await;
    assert_eq!(r.header("location"), Some("https://new.example/"));
    let r = request(v.http, "127.0.0.1", "OLD.test:80", "/blog/post?q", "").await;
    assert_eq!(r.status, 301, "the default status");
    assert_eq!(
        r.header("location"),
        Some("http://blog.test/archive/blog/post"),
        "no ${{query}} in the target: the query is left out"
    );
    assert_eq!(o.total(), 0, "a redirect never reaches the origin");
    assert_eq!(fetch(&v, "/other", &[]).await.status, 200);
    assert_eq!(o.total(), 1);
}

fn cert(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf/test-certs")
        .join(file)
}

#[tokio::test]
async fn https_redirect_sends_plain_requests_to_https_and_lets_tls_requests_through() {
    let o = Origin::start("o").await;
    let config = |listener: Listener| {
        Config::new()
            .listener(listener)
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .hosts(&["localhost"])
                    .set("https_redirect", "true"),
            )
    };
    let plain = Verge::start(&config(Listener::new())).await;
    let r = request(plain.http, "127.0.0.1", "localhost", "/a?b=1", "").await;
    assert_eq!(r.status, 308, "method and body are kept");
    assert_eq!(r.header("location"), Some("https://localhost/a?b=1"));
    assert_eq!(o.total(), 0);

    let tls = Verge::start(&config(
        Listener::new().tls(&cert("server.crt"), &cert("server.key")),
    ))
    .await;
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/a?b=1", tls.http.port());
    let r = client.get(&url).send().await.expect("request");
    assert_eq!(r.status(), 200, "a request over TLS is served");
    assert_eq!(o.hits("/a"), 1);
}

#[tokio::test]
async fn deny_and_allow_refuse_clients_by_address_even_on_cache_hits() {
    let o = Origin::start("o").await;
    o.set_headers("/c", &[("cache-control", "max-age=600")]);
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .hosts(&["deny.test"])
                    .set("deny", r#"["127.0.0.2", "127.0.9.0/24"]"#)
                    .cache(RouteCache::new()),
            )
            .route(
                Route::to("p")
                    .hosts(&["allow.test"])
                    .set("allow", r#"["127.0.0.0/24"]"#)
                    .set("deny", r#"["127.0.0.3"]"#),
            ),
    )
    .await;
    // stored, then a hit for an allowed client
    for _ in 0..2 {
        let r = request(v.http, "127.0.0.1", "deny.test", "/c", "").await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(o.hits("/c"), 1);
    for from in ["127.0.0.2", "127.0.9.7"] {
        let r = request(v.http, from, "deny.test", "/c", "").await;
        assert_eq!(r.status, 403, "{from} is denied, hit or not");
        assert_eq!(String::from_utf8_lossy(&r.body), "verge: forbidden\n");
    }
    assert_eq!(
        request(v.http, "127.0.0.4", "allow.test", "/a", "")
            .await
            .status,
        200
    );
    assert_eq!(
        request(v.http, "127.0.0.3", "allow.test", "/a", "")
            .await
            .status,
        403,
        "deny wins over allow"
    );
    assert_eq!(
        request(v.http, "127.0.1.1", "allow.test", "/a", "")
            .await
            .status,
        403,
        "outside the allow list"
    );
    assert_eq!(o.hits("/a"), 1);
    assert_eq!(o.hits("/c"), 1);
    // a refused request is counted as a request, never as a cache lookup
    let route = [("route", "deny.test/")];
    crate::support::metrics::metric_eventually(
        &v,
        Duration::from_secs(5),
        "verge_requests_total",
        &[("route", "deny.test/"), ("status", "403")],
        |n| n == Some(2.0),
    )
    .await;
    let m = v.metrics().await;
    assert_eq!(
        m.sum("verge_cache_lookups_total", &route),
        2.0,
        "the miss and the hit"
    );
}

/// The access log's lines, once `n` are written.
async fn log_lines(v: &Verge, n: usize) -> Vec<serde_json::Value> {
    let path = v.dir().join("access.log");
    let lines = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("each line is JSON"))
            .collect::<Vec<_>>()
    };
    crate::support::assert_eventually(
        Duration::from_secs(5),
        &format!("{n} access-log lines"),
        || async { lines() },
        |got| got.len() >= n,
    )
    .await
}

#[tokio::test]
async fn request_ids_reach_the_origin_the_client_the_log_and_error_pages() {
    let o = Origin::start("o").await;
    o.set_headers("/c", &[("cache-control", "max-age=600")]);
    // nothing listens on the port of a stopped origin
    let dead = Origin::start("dead").await;
    dead.stop();
    let v = Verge::start(
        &Config::new()
            .access_log("{dir}/access.log")
            .pool(Pool::new("p", &[o.addr]))
            .pool(Pool::new("dead", &[dead.addr]).retries(0))
            .route(
                Route::to("p")
                    .hosts(&["ids.test"])
                    .set("request_id", "{}")
                    .cache(RouteCache::new()),
            )
            .route(
                Route::to("p")
                    .hosts(&["trusted.test"])
                    .set("request_id", "{trust_client: true}"),
            )
            .route(
                Route::to("dead")
                    .hosts(&["dead.test"])
                    .set("request_id", "{}"),
            )
            .route(Route::to("p").hosts(&["plain.test"])),
    )
    .await;
    let sent = "X-Request-Id: from-client-1\r\n";
    let miss = request(v.http, "127.0.0.1", "ids.test", "/c", sent).await;
    let id = miss.header("x-request-id").expect("an id").to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert_ne!(id, "from-client-1", "an untrusted client's id is replaced");
    assert_eq!(
        o.last_seen().expect("seen").header("x-request-id"),
        Some(id.as_str()),
        "the origin got the same id"
    );
    let hit = request(v.http, "127.0.0.1", "ids.test", "/c", "").await;
    assert!(hit.header("cache-status").unwrap_or("").contains("hit"));
    let hit_id = hit.header("x-request-id").expect("a hit has an id too");
    assert_ne!(hit_id, id, "each request its own");
    assert_eq!(o.hits("/c"), 1);

    let trusted = request(v.http, "127.0.0.1", "trusted.test", "/t", sent).await;
    assert_eq!(trusted.header("x-request-id"), Some("from-client-1"));
    assert_eq!(
        o.last_seen().expect("seen").header("x-request-id"),
        Some("from-client-1")
    );
    let bad = "X-Request-Id: no spaces allowed\r\n";
    let replaced = request(v.http, "127.0.0.1", "trusted.test", "/t", bad).await;
    assert_eq!(replaced.header("x-request-id").map(str::len), Some(32));

    let failed = request(v.http, "127.0.0.1", "dead.test", "/d", "").await;
    assert_eq!(failed.status, 502);
    let failed_id = failed
        .header("x-request-id")
        .expect("the error page has an id");
    let body = String::from_utf8_lossy(&failed.body).into_owned();
    assert!(body.contains(&format!("request id: {failed_id}")), "{body}");

    let plain = request(v.http, "127.0.0.1", "plain.test", "/p", sent).await;
    assert_eq!(
        plain.header("x-request-id"),
        None,
        "a route without ids adds none"
    );
    assert_eq!(
        o.last_seen().expect("seen").header("x-request-id"),
        Some("from-client-1"),
        "and passes the client's field on as it is"
    );

    let lines = log_lines(&v, 6).await;
    let logged = |id: &str| lines.iter().any(|l| l["request_id"] == id);
    for id in [id.as_str(), hit_id, "from-client-1", failed_id] {
        assert!(logged(id), "{id} is in the access log: {lines:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["host"] == "plain.test" && l["request_id"].is_null()),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_burst_over_the_rate_limit_gets_429_with_retry_after_per_client_and_per_header() {
    let o = Origin::start("o").await;
    o.set_headers("/c", &[("cache-control", "max-age=600")]);
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .name("limited")
                    .hosts(&["ip.test"])
                    .set("rate_limit", "{rate: 1, per: 1h, burst: 3}")
                    .cache(RouteCache::new()),
            )
            .route(Route::to("p").name("by-key").hosts(&["key.test"]).set(
                "rate_limit",
                r#"{rate: 2, per: 1h, key: "header:X-Api-Key"}"#,
            )),
    )
    .await;
    // ten at once on separate connections (verge's threads share the bucket)
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let addr = v.http;
            tokio::spawn(async move { request(addr, "127.0.0.1", "ip.test", "/c", "").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in burst {
        let r = r.await.expect("task");
        if r.status == 429 {
            let wait: u64 = r
                .header("retry-after")
                .and_then(|s| s.parse().ok())
                .expect("Retry-After in seconds");
            assert!((1..=3600).contains(&wait), "{wait}");
            assert!(String::from_utf8_lossy(&r.body).contains("too many requests"));
        }
        statuses.push(r.status);
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429, 429, 429, 429, 429],
        "the burst of 3"
    );
    assert_eq!(o.hits("/c"), 1, "hits count against the limit too");
    // another client has its own bucket
    assert_eq!(
        request(v.http, "127.0.0.2", "ip.test", "/c", "")
            .await
            .status,
        200
    );
    crate::support::metrics::metric_eventually(
        &v,
        Duration::from_secs(5),
        "verge_rate_limited_total",
        &[("route", "limited")],
        |n| n == Some(7.0),
    )
    .await;

    let with_key = |k: &'static str| async move {
        let field = format!("X-Api-Key: {k}\r\n");
        request(v.http, "127.0.0.1", "key.test", "/k", &field)
            .await
            .status
    };
    assert_eq!(with_key("a").await, 200);
    assert_eq!(with_key("a").await, 200);
    assert_eq!(with_key("a").await, 429, "the burst defaults to the rate");
    assert_eq!(with_key("b").await, 200, "a header value is its own bucket");
}

/// The `server:` block of a node behind a trusted proxy on 127.0.0.1 (`server.client_ip`).
pub(crate) const BEHIND_LOCAL_PROXY: &str = "server: {threads: 2, grace_period: 0s, \
     graceful_shutdown_timeout: 1s, pid_file: \"{dir}/verge.pid\", upgrade_sock: \
     \"{dir}/upgrade.sock\", client_ip: {trusted_proxies: [127.0.0.1]}}";

#[tokio::test]
async fn behind_a_trusted_proxy_the_rules_read_the_client_from_its_header() {
    let o = Origin::start("o").await;
    let v = Verge::start(
        &Config::new()
            .raw(BEHIND_LOCAL_PROXY)
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .hosts(&["c.test"])
                    .set("deny", r#"["203.0.113.7"]"#),
            ),
    )
    .await;
    let status = |from: &'static str, xff: &'static str| async move {
        let field = format!("X-Forwarded-For: {xff}\r\n");
        request(v.http, from, "c.test", "/x", &field).await.status
    };
    assert_eq!(status("127.0.0.1", "203.0.113.7").await, 403);
    assert_eq!(
        status("127.0.0.1", "198.51.100.1, 203.0.113.7").await,
        403,
        "the nearest untrusted hop is the client"
    );
    assert_eq!(
        status("127.0.0.1", "203.0.113.7, 198.51.100.1").await,
        200,
        "entries a client wrote itself, left of it, do not count"
    );
    assert_eq!(
        status("127.0.0.2", "203.0.113.7").await,
        200,
        "an untrusted peer's header is not read"
    );
    assert_eq!(o.hits("/x"), 2);
}

/// A `verge control` process for one test, stopped when dropped.
pub(crate) struct ControlPlane {
    child: std::process::Child,
    pub(crate) addr: SocketAddr,
    pub(crate) dir: tempfile::TempDir,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) const OPS: &str = "ops-token-0123456789abcdef";

impl ControlPlane {
    pub(crate) async fn start() -> ControlPlane {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = crate::support::ports::addr();
        let yaml = format!(
            "listen: \"{addr}\"\ndata_dir: {d}/data\ntokens:\n  - {{name: ops, token: {OPS}, \
             scopes: [read, policy:write]}}\n",
            d = dir.path().display()
        );
        let config = dir.path().join("control.yaml");
        std::fs::write(&config, yaml).expect("control config");
        std::fs::write(dir.path().join("ops.token"), OPS).expect("token file");
        let child = crate::support::Launch::verge_with(&["control", "-c"]).spawn(&config);
        let url = format!("http://{addr}/healthz");
        let up = crate::support::eventually(Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let r = crate::support::client().get(url).send().await;
                r.is_ok_and(|r| r.status() == 200)
            }
        })
        .await;
        assert!(up, "control plane not ready");
        ControlPlane { child, addr, dir }
    }

    /// A node's `control:` block for this control plane (its snapshot in the test's directory).
    pub(crate) fn node(&self, node_id: &str) -> crate::support::config::Control {
        crate::support::config::Control::new(
            &format!("http://{}", self.addr),
            node_id,
            &self.dir.path().join("ops.token"),
        )
        .state_file("{dir}/snapshot.json")
        .wait("5s")
    }

    /// A policy with pool `o` (backend `origin`) and one route for every host to it, with the
    /// keys of `route` added.
    pub(crate) fn policy(origin: SocketAddr, route: serde_json::Value) -> serde_json::Value {
        let mut r = serde_json::json!({"hosts": ["*"], "pool": "o"});
        if let (Some(r), Some(extra)) = (r.as_object_mut(), route.as_object()) {
            r.extend(extra.clone());
        }
        serde_json::json!({"pools": {"o": {"backends": [origin.to_string()]}}, "routes": [r]})
    }

    pub(crate) async fn put_policy(&self, doc: serde_json::Value, if_match: u64) {
        let r = crate::support::client()
            .put(format!("http://{}/v1/policy", self.addr))
            .bearer_auth(OPS)
            .header("if-match", format!("\"{if_match}\""))
            .json(&doc)
            .send()
            .await
            .expect("policy write");
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
}

#[tokio::test]
async fn edge_rules_from_the_control_plane_apply_without_a_restart_and_buckets_outlive_a_swap() {
    let o = Origin::start("o").await;
    let cp = ControlPlane::start().await;
    let v = Verge::start(&Config::new().control(cp.node("edge-node"))).await;
    let policy = |route| ControlPlane::policy(o.addr, route);
    let status = |from: &'static str| async move {
        request(v.http, from, "site.test", "/p", "").await.status
    };
    let becomes = |from: &'static str, want: u16| async move {
        crate::support::assert_eventually(
            Duration::from_secs(15),
            &format!("{from} gets {want}"),
            || status(from),
            |s| *s == want,
        )
        .await
    };
    cp.put_policy(policy(serde_json::json!({})), 0).await;
    becomes("127.0.0.2", 200).await;

    let limit = serde_json::json!({"rate": 1, "per": "1h", "burst": 2});
    cp.put_policy(
        policy(serde_json::json!({"deny": ["127.0.0.2"], "rate_limit": limit})),
        1,
    )
    .await;
    becomes("127.0.0.2", 403).await;
    assert_eq!(status("127.0.0.1").await, 200);
    assert_eq!(status("127.0.0.1").await, 200);
    assert_eq!(status("127.0.0.1").await, 429);

    // the same limit without the deny rule: the client's bucket is still empty
    cp.put_policy(policy(serde_json::json!({"rate_limit": limit})), 2)
        .await;
    becomes("127.0.0.2", 200).await;
    assert_eq!(status("127.0.0.1").await, 429);
}

#[tokio::test]
async fn a_listeners_allow_and_deny_refuse_clients_before_routing_even_on_hits() {
    let o = Origin::start("o").await;
    o.set_headers("/c", &[("cache-control", "max-age=600")]);
    let config = |listener: Listener| {
        Config::new()
            .listener(listener)
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .hosts(&["site.test"])
                    .cache(RouteCache::new()),
            )
    };
    let guarded = Listener::new()
        .set("deny", r#"["127.0.0.2"]"#)
        .set("allow", r#"["127.0.0.0/24"]"#);
    let v = Verge::start(&config(guarded)).await;
    // stored, then a hit for an allowed client
    for _ in 0..2 {
        let r = request(v.http, "127.0.0.1", "site.test", "/c", "").await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(o.hits("/c"), 1);
    // refused whether the answer would be a hit, a miss or no route at all
    for (from, host, path) in [
        ("127.0.0.2", "site.test", "/c"),
        ("127.0.1.1", "site.test", "/c"),
        ("127.0.0.2", "site.test", "/other"),
        ("127.0.0.2", "nowhere.test", "/c"),
    ] {
        let r = request(v.http, from, host, path, "").await;
        assert_eq!(r.status, 403, "{from} {host}{path}");
        assert_eq!(String::from_utf8_lossy(&r.body), "verge: forbidden\n");
    }
    assert_eq!(o.hits("/c"), 1);
    assert_eq!(o.hits("/other"), 0);
    // a reload lifts the rules: the same client gets the stored response
    v.reload_with(&config(Listener::new()));
    let lifted = crate::support::eventually(Duration::from_secs(10), || async {
        request(v.http, "127.0.0.2", "site.test", "/c", "")
            .await
            .status
            == 200
    })
    .await;
    assert!(lifted, "the reload applied the listener without rules");
    assert_eq!(o.hits("/c"), 1, "served from the cache");
}
