//! Active health checks: a killed backend stops receiving traffic within the check window and
//! returns when it comes back; readiness waits for the first check.

use crate::harness::{eventually, get, Verge};
use crate::origin::Origin;
use std::time::Duration;

#[tokio::test]
async fn killed_backend_leaves_and_returns() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let v = Verge::start(&format!(
        r#"
pools:
  p:
    backends: ["{}", "{}"]
    health_check: {{type: http, path: /health, interval: 200ms, timeout: 200ms, unhealthy_after: 1, healthy_after: 1}}
    passive: {{max_connect_failures: 0}}
    retries: 0
routes: [{{hosts: ["*"], pool: p}}]
"#,
        a.addr, b.addr
    ))
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
        let (status, origin, _) = get(&v, "x.com", &format!("/after{i}")).await;
        assert_eq!((status, origin.as_str()), (200, "a"));
    }
    assert_eq!(b.total(), before);

    b.restart().await;
    let back = eventually(Duration::from_secs(3), || async {
        get(&v, "x.com", "/back").await.1 == "b" || get(&v, "x.com", "/back").await.1 == "b"
    })
    .await;
    assert!(back, "b receives traffic again after it recovers");
}

#[tokio::test]
async fn unhealthy_status_code_counts_as_down() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    b.set_health_status(503);
    let v = Verge::start(&format!(
        r#"
pools:
  p:
    backends: ["{}", "{}"]
    health_check: {{type: http, path: /health, expect_status: 200, interval: 200ms, unhealthy_after: 1}}
routes: [{{hosts: ["*"], pool: p}}]
"#,
        a.addr, b.addr
    ))
    .await;
    // readiness came after the first pass, so b is already out
    for i in 0..10 {
        assert_eq!(get(&v, "x.com", &format!("/{i}")).await.1, "a");
    }
    let (_, metrics) = v.admin_get("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "verge_backend_healthy{{backend=\"{}\",pool=\"p\"}} 0",
            b.addr
        )),
        "{metrics}"
    );
}
