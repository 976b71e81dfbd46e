//! What a node takes from a control plane is bounded: a snapshot over the node's limit is
//! refused before it is read, counted, and the last good snapshot keeps serving.

use crate::support::config::Control;
use crate::support::metrics::sum_eventually;
use crate::support::raw_origin::{Script, Step};
use crate::support::{fetch, Config, Origin, Pool, RawOrigin, Route, Verge};
use std::time::Duration;

#[tokio::test]
async fn a_snapshot_over_the_limit_is_refused_and_the_last_good_one_serves() {
    let origin = Origin::start("o").await;
    let control = RawOrigin::start().await;
    // 100 MiB announced; the node must not wait for (or hold) any of it
    control.set(
        "/v1/snapshot",
        Script::new(|_| {
            vec![
                Step::Write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n{\"full\":true,"
                        .to_vec(),
                ),
                Step::Sleep(Duration::from_secs(5)),
                Step::Close,
            ]
        }),
    );
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("node.token");
    std::fs::write(&token, "node-token-0123456789abcdef").expect("token");
    let v = Verge::start(
        &Config::new()
            .pool(Pool::new("p", &[origin.addr]))
            .route(Route::to("p"))
            .control(Control::new(&format!("http://{}", control.addr), "n1", &token).wait("1s")),
    )
    .await;
    sum_eventually(
        &v,
        Duration::from_secs(10),
        "verge_snapshot_rejected_total",
        &[("reason", "too_large")],
        |n| n >= 1.0,
    )
    .await;
    assert!(control.hits("/v1/snapshot") >= 1);
    // the file's routes, the last good snapshot, keep serving
    let got = fetch(&v, "/still", &[]).await;
    assert_eq!(got.status, 200);
    assert!(got.body.contains("origin=o"), "{}", got.body);
}
