//! TLS termination with HTTP/2 via ALPN, and h2c on a plain listener.

use crate::support::fetch::send;
use crate::support::{get, Config, HealthCheck, Listener, Origin, Pool, Route, Verge};
use std::path::{Path, PathBuf};

fn cert(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conf/test-certs")
        .join(file)
}

/// A listener terminating TLS with the test certificate.
fn tls_listener() -> Listener {
    Listener::new().tls(&cert("server.crt"), &cert("server.key"))
}

#[tokio::test]
async fn tls_listener_speaks_h2_and_http1() {
    let o = Origin::start("o").await;
    let v = Verge::start(
        &Config::new()
            .listener(tls_listener().name("https"))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").hosts(&["localhost"])),
    )
    .await;
    let url = format!("https://localhost:{}/secure", v.http.port());
    let h2 = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    let r = h2.get(&url).send().await.expect("h2 request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let h1 = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .http1_only()
        .build()
        .expect("client");
    let r = h1.get(&url).send().await.expect("h1 request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    let seen = o.last_seen().expect("seen");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(o.total(), 2);
}

#[tokio::test]
async fn h2c_prior_knowledge_on_a_plain_listener() {
    let o = Origin::start("o").await;
    let v = Verge::start(
        &Config::new()
            .listener(Listener::new().h2c())
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p")),
    )
    .await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let r = c.get(v.url("/h2c")).send().await.expect("h2c");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // HTTP/1 still works on the same listener
    let r = send(v.http, reqwest::Method::GET, None, "/h1", &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn upstream_tls_with_sni() {
    // A TLS "origin": a second verge terminating TLS in front of a plain origin.
    let o = Origin::start("o").await;
    let tls_origin = Verge::start(
        &Config::new()
            .listener(tls_listener())
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p")),
    )
    .await;
    let edge = Verge::start(
        &Config::new()
            .pool(
                Pool::new("secure", &[tls_origin.http])
                    .tls_unverified("localhost")
                    .health_check(HealthCheck::tcp("1s")),
            )
            .route(Route::to("secure")),
    )
    .await;
    let g = get(&edge, "edge.test", "/over-tls").await;
    assert_eq!((g.status, g.origin()), (200, "o"), "{}", g.body);
    let seen = o.last_seen().expect("seen");
    assert_eq!(
        seen.header("x-forwarded-proto"),
        Some("https"),
        "inner hop was TLS"
    );
    assert_eq!(
        seen.header("via"),
        Some("1.1 verge, 1.1 verge"),
        "both hops appended to Via"
    );
}
