//! Custom error pages through real sockets: per status, from a file or inline, on a route or a
//! listener (the route's first), for verge's own answers (404, 403, 429, 502…), each carrying
//! the request id; a page from the control plane applies without a restart.

use crate::edge::{request, ControlPlane};
use crate::support::{assert_eventually, fetch, get, Config, Listener, Origin, Pool, Route, Verge};
use std::time::Duration;

#[tokio::test]
async fn verge_answers_with_the_routes_then_the_listeners_page_and_the_request_id() {
    let o = Origin::start("o").await;
    let pages = tempfile::tempdir().expect("tempdir");
    let page_502 = pages.path().join("502.html");
    std::fs::write(
        &page_502,
        "<h1>${status}: try again</h1><p>${request_id}</p>\n",
    )
    .expect("page");
    let v = Verge::start(
        &Config::new()
            .listener(Listener::new().set(
                "error_pages",
                r#"{404: {body: "nothing here (${status})", content_type: text/plain}, 403: {body: "listener 403"}}"#,
            ))
            .pool(Pool::new("p", &[o.addr]))
            .pool(Pool::new("dead", &["127.0.0.1:1"]))
            .route(
                Route::to("dead")
                    .hosts(&["c.test"])
                    .path("/down")
                    .set("request_id", "{}")
                    .set(
                        "error_pages",
                        &format!("{{502: {{file: \"{}\"}}}}", page_502.display()),
                    ),
            )
            .route(
                Route::to("p")
                    .hosts(&["c.test"])
                    .path("/private")
                    .set("deny", "[127.0.0.0/8]")
                    .set("request_id", "{}")
                    .set("error_pages", r#"{403: {body: "route 403 ${request_id}", content_type: "text/x-verge"}}"#),
            )
            .route(
                Route::to("p")
                    .hosts(&["c.test"])
                    .path("/listener-page")
                    .set("deny", "[127.0.0.0/8]"),
            )
            .route(
                Route::to("p")
                    .hosts(&["c.test"])
                    .path("/limited")
                    .set("rate_limit", "{rate: 1, per: 1h, burst: 1}")
                    .set("error_pages", r#"{429: {body: "slow down"}}"#),
            )
            .route(Route::to("dead").hosts(&["plain.test"])),
    )
    .await;

    let down = fetch(&v, "/down", &[]).await;
    assert_eq!(down.status, 502);
    let id = down.header("x-request-id").expect("an id").to_string();
    assert_eq!(down.body, format!("<h1>502: try again</h1><p>{id}</p>\n"));
    assert_eq!(
        down.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(down.header("cache-control"), Some("no-store"));

    let private = fetch(&v, "/private", &[]).await;
    assert_eq!(private.status, 403);
    let id = private.header("x-request-id").expect("an id");
    assert_eq!(
        private.body,
        format!("route 403 {id}"),
        "the route's page wins"
    );
    assert_eq!(private.header("content-type"), Some("text/x-verge"));
    let listener = fetch(&v, "/listener-page", &[]).await;
    assert_eq!(
        (listener.status, listener.body.as_str()),
        (403, "listener 403")
    );
    assert_eq!(
        listener.header("content-type"),
        Some("text/html; charset=utf-8")
    );

    let no_route = get(&v, "nowhere.test", "/").await;
    assert_eq!(
        (no_route.status, no_route.body.as_str()),
        (404, "nothing here (404)")
    );

    assert_eq!(fetch(&v, "/limited", &[]).await.status, 200);
    let limited = fetch(&v, "/limited", &[]).await;
    assert_eq!((limited.status, limited.body.as_str()), (429, "slow down"));
    assert!(
        limited.header("retry-after").is_some(),
        "the page keeps Retry-After"
    );

    // no page for this status: the default text, which names no pool
    let plain = get(&v, "plain.test", "/").await;
    assert_eq!(plain.status, 502);
    assert!(plain.body.starts_with("verge: "), "{}", plain.body);
    assert!(
        !plain.body.contains("dead"),
        "names no pool: {}",
        plain.body
    );
    assert_eq!(o.hits("/private") + o.hits("/listener-page"), 0);
}

#[tokio::test]
async fn a_listeners_pages_change_on_a_reload() {
    let o = Origin::start("o").await;
    let config = |page: &str| {
        Config::new()
            .listener(Listener::new().set(
                "error_pages",
                &format!("{{404: {{body: \"{page}\", content_type: text/plain}}}}"),
            ))
            .pool(Pool::new("p", &[o.addr]))
            .route(Route::to("p").hosts(&["c.test"]))
    };
    let v = Verge::start(&config("first")).await;
    assert_eq!(get(&v, "nowhere.test", "/").await.body, "first");
    v.reload_with(&config("second"));
    assert_eventually(
        Duration::from_secs(10),
        "the reloaded page",
        || async { get(&v, "nowhere.test", "/").await.body },
        |b| b == "second",
    )
    .await;
}

#[tokio::test]
async fn a_page_from_the_control_plane_applies_without_a_restart() {
    let o = Origin::start("o").await;
    let cp = ControlPlane::start().await;
    let v = Verge::start(&Config::new().control(cp.node("pages-node"))).await;
    let policy = |pages: serde_json::Value| {
        let route = serde_json::json!({"deny": ["127.0.0.2"], "error_pages": pages});
        ControlPlane::policy(o.addr, route)
    };
    let denied = || async { request(v.http, "127.0.0.2", "site.test", "/", "").await };
    cp.put_policy(policy(serde_json::json!({})), 0).await;
    assert_eventually(
        Duration::from_secs(15),
        "the default 403",
        || async { denied().await.status },
        |s| *s == 403,
    )
    .await;
    cp.put_policy(
        policy(serde_json::json!({"403": {"body": "policy page"}})),
        1,
    )
    .await;
    let got = assert_eventually(
        Duration::from_secs(15),
        "the policy's 403 page",
        || async { String::from_utf8_lossy(&denied().await.body).into_owned() },
        |b| b == "policy page",
    )
    .await;
    assert_eq!(got, "policy page");
}
