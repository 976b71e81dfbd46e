//! Rewrites and header rules through real sockets: a path rewritten by a regex with its groups
//! and a host rewrite reach the origin; the cache key, `PURGE` and a policy from the control
//! plane follow the rewritten request; header values fill in request variables.

use crate::edge::{ControlPlane, BEHIND_LOCAL_PROXY};
use crate::support::Verge;
use crate::support::{
    assert_eventually, fetch, fetch_with, Config, Origin, Pool, Route, RouteCache,
};
use std::time::Duration;

#[tokio::test]
async fn a_regex_path_rewrite_and_a_host_rewrite_reach_the_origin_and_the_key_follows_them() {
    let o = Origin::start("o").await;
    o.set_headers("/new/b/a", &[("cache-control", "max-age=600")]);
    let v = Verge::start(
        &Config::new()
            .purge_allow(&["127.0.0.1"])
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .hosts(&["c.test"])
                    .path("/old")
                    .cache(RouteCache::new())
                    .set(
                        "rewrite",
                        r#"{path: {from: "^/old/([^/]+)/(.*)$", to: "/new/$2/$1"}, host: "Origin.Internal:8443"}"#,
                    ),
            )
            .route(
                Route::to("p")
                    .hosts(&["c.test"])
                    .path("/alias")
                    .cache(RouteCache::new())
                    .set("rewrite", r#"{path: {from: "^/alias/(.*)$", to: "/new/$1"}}"#),
            )
            .route(Route::to("p").hosts(&["c.test"])),
    )
    .await;

    let got = fetch(&v, "/old/a/b?x=1", &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.cache_status, "verge; fwd=uri-miss; stored");
    let seen = o.seen_for("/new/b/a");
    assert_eq!(seen.len(), 1, "the origin was asked for the rewritten path");
    assert_eq!(seen[0].uri, "/new/b/a?x=1", "the query is kept");
    assert_eq!(seen[0].header("host"), Some("origin.internal:8443"));
    assert_eq!(
        seen[0].header("x-forwarded-host"),
        Some("c.test"),
        "the client's host still goes in X-Forwarded-Host"
    );

    // another client path rewritten to the same target on the same host: the same entry
    let alias = fetch(&v, "/alias/b/a?x=1", &[]).await;
    assert!(
        alias.cache_status.starts_with("verge; hit"),
        "{}",
        alias.cache_status
    );
    assert_eq!(o.hits("/new/b/a"), 1);
    assert_eq!(
        o.seen_for("/new/b/a")[0].header("host"),
        Some("origin.internal:8443")
    );

    // a path the pattern does not match goes as it was sent
    assert_eq!(fetch(&v, "/old/flat", &[]).await.status, 200);
    assert_eq!(o.hits("/old/flat"), 1);

    // PURGE names the client's URL; it removes the entry stored under the rewritten one
    let purged = fetch_with(
        &v,
        reqwest::Method::from_bytes(b"PURGE").expect("method"),
        "/old/a/b?x=1",
        &[],
    )
    .await;
    assert_eq!(purged.status, 200, "{}", purged.body);
    let again = fetch(&v, "/alias/b/a?x=1", &[]).await;
    assert_eq!(again.cache_status, "verge; fwd=uri-miss; stored");
    assert_eq!(o.hits("/new/b/a"), 2);
    let seen = o.seen_for("/new/b/a");
    assert_eq!(
        seen[1].header("host"),
        Some("c.test"),
        "no host rewrite on /alias"
    );
}

#[tokio::test]
async fn a_rewrite_from_the_control_plane_applies_without_a_restart() {
    let o = Origin::start("o").await;
    let cp = ControlPlane::start().await;
    let v = Verge::start(&Config::new().control(cp.node("rewrite-node"))).await;
    let policy = |route| ControlPlane::policy(o.addr, route);
    let last_uri = |o: &Origin| o.last_seen().map(|s| s.uri).unwrap_or_default();
    cp.put_policy(policy(serde_json::json!({})), 0).await;
    assert_eventually(
        Duration::from_secs(15),
        "the first policy serves",
        || async { fetch(&v, "/v1/item", &[]).await.status },
        |s| *s == 200,
    )
    .await;
    assert_eq!(last_uri(&o), "/v1/item");

    let rewrite = serde_json::json!({"path": {"from": "^/v1/(.*)$", "to": "/api/v2/$1"}});
    cp.put_policy(policy(serde_json::json!({"rewrite": rewrite})), 1)
        .await;
    assert_eventually(
        Duration::from_secs(15),
        "the rewrite applies",
        || async {
            fetch(&v, "/v1/item?q", &[]).await;
            last_uri(&o)
        },
        |uri| uri == "/api/v2/item?q",
    )
    .await;
}

#[tokio::test]
async fn header_rules_fill_in_the_client_the_request_id_the_route_the_scheme_and_the_host() {
    let o = Origin::start("o").await;
    let v = Verge::start(
        &Config::new()
            .raw(BEHIND_LOCAL_PROXY)
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .name("site")
                    .hosts(&["c.test"])
                    .set("request_id", "{}")
                    .set(
                        "request_headers",
                        r#"{set: {x-client: "${client_ip}", x-trace: "id=${request_id};route=${route}", x-plain: "a $b {c}"}}"#,
                    )
                    .set(
                        "response_headers",
                        r#"{set: {x-served: "${scheme}://${host} by ${route}", x-client: "${client_ip}"}}"#,
                    ),
            ),
    )
    .await;
    let got = fetch(&v, "/h", &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(got.status, 200);
    let id = got.header("x-request-id").expect("an id").to_string();
    let seen = o.last_seen().expect("the origin saw it");
    assert_eq!(
        seen.header("x-client"),
        Some("203.0.113.9"),
        "the address the trusted proxy named"
    );
    assert_eq!(
        seen.header("x-trace"),
        Some(format!("id={id};route=site").as_str())
    );
    assert_eq!(
        seen.header("x-plain"),
        Some("a $b {c}"),
        "no variable: as written"
    );
    assert_eq!(got.header("x-served"), Some("http://c.test by site"));
    assert_eq!(got.header("x-client"), Some("203.0.113.9"));
}
