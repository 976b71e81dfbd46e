//! TLS termination with HTTP/2 via ALPN, and h2c on a plain listener.

use crate::harness::Verge;
use crate::origin::Origin;

fn cert_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/conf/test-certs").to_string()
}

#[tokio::test]
async fn tls_listener_speaks_h2_and_http1() {
    let o = Origin::start("o").await;
    let listeners = format!(
        "listeners:\n  - name: https\n    listen: \"{{http}}\"\n    tls: {{cert: {d}/server.crt, key: {d}/server.key}}\n",
        d = cert_dir()
    );
    let v = Verge::start_with_listeners(
        &format!(
            "pools: {{p: {{backends: [\"{}\"]}}}}\nroutes: [{{hosts: [localhost], pool: p}}]\n",
            o.addr
        ),
        Some(&listeners),
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
    let v = Verge::start_with_listeners(
        &format!(
            "pools: {{p: {{backends: [\"{}\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: p}}]\n",
            o.addr
        ),
        Some("listeners:\n  - listen: \"{http}\"\n    h2c: true\n"),
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
    let r = crate::harness::client()
        .get(v.url("/h1"))
        .send()
        .await
        .expect("h1");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn upstream_tls_with_sni() {
    // A TLS "origin": a second verge terminating TLS in front of a plain origin.
    let o = Origin::start("o").await;
    let tls_origin = Verge::start_with_listeners(
        &format!("pools: {{p: {{backends: [\"{}\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: p}}]\n", o.addr),
        Some(&format!(
            "listeners:\n  - listen: \"{{http}}\"\n    tls: {{cert: {d}/server.crt, key: {d}/server.key}}\n",
            d = cert_dir()
        )),
    )
    .await;
    let edge = Verge::start(&format!(
        r#"
pools:
  secure:
    backends: ["{}"]
    tls: {{sni: localhost, verify: false}}
    health_check: {{type: tcp, interval: 1s}}
routes: [{{hosts: ["*"], pool: secure}}]
"#,
        tls_origin.http
    ))
    .await;
    let (status, origin, body) = crate::harness::get(&edge, "edge.test", "/over-tls").await;
    assert_eq!((status, origin.as_str()), (200, "o"), "{body}");
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
