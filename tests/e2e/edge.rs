//! A route's edge rules through real sockets: redirects (with the request's path and query),
//! the HTTPS redirect of plain listeners, `allow`/`deny` by client address, request ids and
//! rate limits. Each is answered by verge before the cache and the origin.

use crate::support::wire::{Conn, Response};
use crate::support::{fetch, Config, Listener, Origin, Pool, Route, RouteCache, Verge};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// `GET target` for `host` on a new connection from `from` (any loopback address), read to its
/// close.
async fn request(addr: SocketAddr, from: &str, host: &str, target: &str, extra: &str) -> Response {
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
}
