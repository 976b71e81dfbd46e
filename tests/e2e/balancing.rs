//! Weighted round robin, consistent hashing, retries on connect failure, all-down.

use crate::support::fetch::send;
use crate::support::{client, get, ports, Config, HealthCheck, Origin, Pool, Route, Verge};
use reqwest::Method;
use std::collections::HashMap;

#[tokio::test]
async fn weighted_round_robin_follows_weights() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let v = Verge::start(
        &Config::new()
            .pool(Pool::weighted("p", &[(a.addr, 1), (b.addr, 3)]))
            .route(Route::to("p")),
    )
    .await;
    for i in 0..400 {
        assert_eq!(get(&v, "x.com", &format!("/{i}")).await.status, 200);
    }
    let share_b = b.total() as f64 / 400.0;
    assert_eq!(a.total() + b.total(), 400);
    assert!(
        (0.68..=0.82).contains(&share_b),
        "weight 3 of 4 got {share_b}"
    );
}

#[tokio::test]
async fn consistent_hashing_is_sticky_and_moves_only_the_lost_backends_keys() {
    let mut origins = Vec::new();
    for i in 0..5 {
        origins.push(Origin::start(&format!("o{i}")).await);
    }
    let backends: Vec<_> = origins.iter().map(|o| o.addr).collect();
    let v = Verge::start(
        &Config::new()
            .pool(
                Pool::new("p", &backends)
                    .consistent("header:x-user")
                    .health_check(HealthCheck::http("/health", "200ms").unhealthy_after(1)),
            )
            .route(Route::to("p")),
    )
    .await;
    let owner = |user: usize| {
        let addr = v.http;
        async move {
            let id = format!("user-{user}");
            let g = send(addr, Method::GET, Some("x.com"), "/k", &[("x-user", &id)]).await;
            g.header("x-origin").expect("x-origin").to_string()
        }
    };
    let mut before = HashMap::new();
    for u in 0..200 {
        let o = owner(u).await;
        assert_eq!(owner(u).await, o, "the same key stays on one backend");
        before.insert(u, o);
    }
    let spread: std::collections::HashSet<_> = before.values().collect();
    assert_eq!(spread.len(), 5, "keys spread over every backend");

    // o2 fails its health check: only its keys may move.
    origins[2].set_health_status(500);
    let moved_off = crate::support::eventually(std::time::Duration::from_secs(5), || async {
        owner(
            before
                .iter()
                .find(|(_, o)| *o == "o2")
                .map(|(u, _)| *u)
                .unwrap_or(0),
        )
        .await
            != "o2"
    })
    .await;
    assert!(moved_off, "unhealthy backend left the ring");
    let mut moved = 0;
    for (u, o) in &before {
        let now = owner(*u).await;
        if o == "o2" {
            assert_ne!(now, "o2");
            moved += 1;
        } else {
            assert_eq!(&now, o, "key {u} moved although its backend is healthy");
        }
    }
    assert!(
        (10..=80).contains(&moved),
        "about 1/5 of 200 keys move, moved {moved}"
    );
}

#[tokio::test]
async fn connect_failure_retries_idempotent_requests_only() {
    let live = Origin::start("live").await;
    let dead = ports::addr().to_string();
    let v = Verge::start(
        &Config::new()
            .pool(
                Pool::new("p", &[dead, live.addr.to_string()])
                    .passive(0, None)
                    .retries(1),
            )
            .route(Route::to("p")),
    )
    .await;
    for i in 0..20 {
        let g = get(&v, "x.com", &format!("/g{i}")).await;
        assert_eq!(
            (g.status, g.origin()),
            (200, "live"),
            "GET retried on the live backend"
        );
    }
    let mut statuses = Vec::new();
    for i in 0..10 {
        let r = client()
            .post(v.url(&format!("/p{i}")))
            .header("host", "x.com")
            .body("x")
            .send()
            .await
            .expect("post");
        statuses.push(r.status().as_u16());
    }
    assert!(
        statuses.contains(&502),
        "a POST that hit the dead backend is not retried: {statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
}

#[tokio::test]
async fn passive_ejection_stops_sending_to_a_dead_backend() {
    let live = Origin::start("live").await;
    let dead = ports::addr().to_string();
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[dead.clone(), live.addr.to_string()]).passive(2, Some("60s")))
            .route(Route::to("p")),
    )
    .await;
    for i in 0..30 {
        assert_eq!(get(&v, "x.com", &format!("/{i}")).await.status, 200);
    }
    let (_, status) = v.admin_get("/status").await;
    let doc: serde_json::Value = serde_json::from_str(&status).expect("json");
    let backends = doc["pools"]["p"]["backends"].as_array().expect("backends");
    let dead_entry = backends
        .iter()
        .find(|b| b["addr"] == dead.as_str())
        .expect("dead backend listed");
    assert_eq!(dead_entry["ejected"], true);
    let m = v.metrics().await;
    let failures = m.value(
        "verge_upstream_connect_failures_total",
        &[("backend", &dead), ("pool", "p")],
    );
    assert_eq!(
        failures,
        Some(2.0),
        "after ejection no more connects to the dead backend: {}",
        m.text
    );
}

#[tokio::test]
async fn every_backend_down_is_a_502_that_names_no_internal_pool() {
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("checkout", &[ports::addr(), ports::addr()]))
            .route(Route::to("checkout")),
    )
    .await;
    for _ in 0..5 {
        let g = get(&v, "x.com", "/").await;
        assert_eq!(g.status, 502);
        assert!(
            g.body.contains("no healthy backend") && !g.body.contains("checkout"),
            "the page says what failed, not which internal pool: {}",
            g.body
        );
    }
    // the metric (and the log) name the pool
    let m = v.metrics().await;
    assert_eq!(
        m.value("verge_no_healthy_backend_total", &[("pool", "checkout")]),
        Some(5.0),
        "{}",
        m.text
    );
    // still serving afterwards
    assert_eq!(v.admin_get("/healthz").await.0, 200);
}
