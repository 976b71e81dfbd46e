//! Active health checks: a killed backend stops receiving traffic within the check window and
//! returns when it comes back; readiness waits for the first check.

use crate::support::{eventually, get, Config, HealthCheck, Origin, Pool, Route, Verge};
use std::time::Duration;

#[tokio::test]
async fn killed_backend_leaves_and_returns() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let check = HealthCheck::http("/health", "200ms")
        .timeout("200ms")
        .unhealthy_after(1)
        .healthy_after(1);
    let v = Verge::start(
        &Config::new()
            .pool(
                Pool::new("p", &[a.addr, b.addr])
                    .health_check(check)
                    .passive(0, None)
                    .retries(0),
            )
            .route(Route::to("p")),
    )
    .await;
    for i in 0..10 {
        get(&v, "x.com", &format!("/warm{i}")).await;
    }
    assert!(b.total() > 0);

    b.stop();
    // within the health-check window, traffic stops going to b
    let left = eventually(Duration::from_secs(3), || async {
        let (_, status) = v.admin_get("/status").await;
        status.contains("\"healthy\": false")
    })
    .await;
    assert!(left, "b marked unhealthy");
    let before = b.total();
    for i in 0..20 {
        let g = get(&v, "x.com", &format!("/after{i}")).await;
        assert_eq!((g.status, g.origin()), (200, "a"));
    }
    assert_eq!(b.total(), before);

    b.restart().await;
    let back = eventually(Duration::from_secs(3), || async {
        get(&v, "x.com", "/back").await.origin() == "b"
            || get(&v, "x.com", "/back").await.origin() == "b"
    })
    .await;
    assert!(back, "b receives traffic again after it recovers");
}

#[tokio::test]
async fn unhealthy_status_code_counts_as_down() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    b.set_health_status(503);
    let check = HealthCheck::http("/health", "200ms")
        .expect_status(200)
        .unhealthy_after(1);
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[a.addr, b.addr]).health_check(check))
            .route(Route::to("p")),
    )
    .await;
    // readiness came after the first pass, so b is already out
    for i in 0..10 {
        assert_eq!(get(&v, "x.com", &format!("/{i}")).await.origin(), "a");
    }
    let m = v.metrics().await;
    let b_addr = b.addr.to_string();
    assert_eq!(
        m.value(
            "verge_backend_healthy",
            &[("backend", &b_addr), ("pool", "p")]
        ),
        Some(0.0),
        "{}",
        m.text
    );
}
