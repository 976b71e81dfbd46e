//! Background refreshes of stored responses: stale-while-revalidate for HTTP/2 clients (the
//! refresh subrequest is built from the client's head), and XFetch early refresh of fresh hits.

use crate::harness::{eventually, Verge};
use crate::origin::Origin;
use std::time::Duration;

/// verge with an h2c-capable plain listener and one caching catch-all route.
async fn h2c_cached_verge(o: &Origin, route_cache: &str) -> Verge {
    Verge::start_with_listeners(
        &format!(
            "pools: {{p: {{backends: [\"{}\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: p, cache: {route_cache}}}]\n",
            o.addr
        ),
        Some("listeners:\n  - listen: \"{http}\"\n    h2c: true\n"),
    )
    .await
}

fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// (status, Cache-Status, body, HTTP version) of a GET over h2c.
async fn h2_get(v: &Verge, path: &str) -> (u16, String, String, reqwest::Version) {
    let r = h2c_client()
        .get(v.url(path))
        .send()
        .await
        .expect("h2c request");
    let status = r.status().as_u16();
    let version = r.version();
    let cs = r
        .headers()
        .get("cache-status")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, cs, r.text().await.unwrap_or_default(), version)
}

#[tokio::test]
async fn stale_while_revalidate_refreshes_once_for_http2_clients() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/swr2",
        &[("cache-control", "max-age=1, stale-while-revalidate=60")],
    );
    let v = h2c_cached_verge(&o, "{}").await;
    let (status, _, first, version) = h2_get(&v, "/swr2").await;
    assert_eq!((status, version), (200, reqwest::Version::HTTP_2));
    assert_eq!(o.hits("/swr2"), 1);
    // wait until the entry is stale (the ttl in Cache-Status says so; no timing asserted)
    let stale = eventually(Duration::from_secs(10), || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        o.hits("/swr2") == 1 && {
            let (_, cs, body, _) = h2_get(&v, "/swr2").await;
            cs.contains("fwd=stale") && body == first
        }
    })
    .await;
    assert!(stale, "a stale answer was served to the h2 client");
    let refreshed = eventually(Duration::from_secs(5), || async { o.hits("/swr2") == 2 }).await;
    assert!(refreshed, "the background refresh reached the origin");
    // the refreshed entry is fresh again: served as a hit, with the new body, no more fetches
    let (status, cs, body, _) = h2_get(&v, "/swr2").await;
    assert_eq!(status, 200);
    assert!(cs.contains("hit") && !cs.contains("fwd="), "{cs}");
    assert_ne!(body, first, "the refreshed body is served");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(o.hits("/swr2"), 2, "exactly one refresh");
    // verge is still up and answering over h1 too
    let (s, _, _) = crate::harness::get(&v, "x.test", "/other").await;
    assert_eq!(s, 200);
}
