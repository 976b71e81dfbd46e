//! What a node takes from a control plane is bounded: a snapshot over the node's limit is
//! refused before it is read, counted, and the last good snapshot keeps serving.

use crate::support::config::Control;
use crate::support::control_plane::sends_snapshot;
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

#[tokio::test]
async fn a_snapshot_whose_checksum_does_not_match_is_refused() {
    let origin = Origin::start("o").await;
    let elsewhere = Origin::start("elsewhere").await;
    let message = |backend: std::net::SocketAddr| {
        serde_json::to_vec(&serde_json::json!({
            "full": true, "policy_version": 1, "seq": 0, "retention_secs": 3600,
            "policy": {
                "pools": {"p": {"backends": [backend.to_string()]}},
                "routes": [{"hosts": ["*"], "pool": "p"}],
            },
        }))
        .expect("json")
    };
    let good = message(elsewhere.addr);
    // the same bytes with one bit flipped on the way
    let mut flipped = good.clone();
    let at = good.len() - 40;
    flipped[at] ^= 0x01;
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("node.token");
    std::fs::write(&token, "node-token-0123456789abcdef").expect("token");
    let node = |control: &RawOrigin| {
        Config::new()
            .pool(Pool::new("p", &[origin.addr]))
            .route(Route::to("p"))
            .control(Control::new(&format!("http://{}", control.addr), "n1", &token).wait("1s"))
    };
    let tampered = RawOrigin::start().await;
    tampered.set(
        "/v1/snapshot",
        sends_snapshot(flipped, verge::control::wire::checksum(&good), None),
    );
    let v = Verge::start(&node(&tampered)).await;
    sum_eventually(
        &v,
        Duration::from_secs(10),
        "verge_snapshot_rejected_total",
        &[("reason", "checksum")],
        |n| n >= 1.0,
    )
    .await;
    let got = fetch(&v, "/x", &[]).await;
    assert!(
        got.body.contains("origin=o"),
        "the file's routes still serve: {}",
        got.body
    );
    // the bytes the checksum names are applied
    let honest = RawOrigin::start().await;
    honest.set(
        "/v1/snapshot",
        sends_snapshot(good.clone(), verge::control::wire::checksum(&good), None),
    );
    let v = Verge::start(&node(&honest)).await;
    sum_eventually(
        &v,
        Duration::from_secs(10),
        "verge_snapshot_applied_total",
        &[],
        |n| n >= 1.0,
    )
    .await;
    let got = fetch(&v, "/x", &[]).await;
    assert!(got.body.contains("origin=elsewhere"), "{}", got.body);
}
