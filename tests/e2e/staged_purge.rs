//! Staged purges: a purge of everything sent to the nodes one wave at a time, each after the
//! previous wave's nodes applied it and a hold, and stopped (paused, resumed, aborted) midway.
//! What the clients see on each node and what the origin received prove where it went.

use crate::operator_cli::cli;
use crate::support::control_plane::{node, policy, Cp, OPS, PURGER};
use crate::support::{eventually, get, Origin, Verge};
use serde_json::{json, Value};
use std::time::Duration;

/// Three nodes of one control plane, each holding `/a` from `o` (three origin requests).
async fn three_nodes_holding_a(o: &Origin, cp: &Cp) -> [Verge; 3] {
    o.set_headers("/a", &[("cache-control", "max-age=300")]);
    let nodes = [
        node(cp, "n1").await,
        node(cp, "n2").await,
        node(cp, "n3").await,
    ];
    let (status, body) = cp.put_policy(policy(o, json!({})), 0).await;
    assert_eq!(status, 200, "{body}");
    assert!(cp.converged(3).await, "nodes did not apply the policy");
    for n in &nodes {
        get(n, "site.test", "/a").await;
        assert!(get(n, "site.test", "/a")
            .await
            .cache_status
            .contains("; hit"));
    }
    assert_eq!(o.hits("/a"), 3);
    nodes
}

/// Whether each node serves `/a` from its cache (true) or had to fetch it (false).
async fn served_from_cache(nodes: &[Verge; 3]) -> Vec<bool> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(
            get(n, "site.test", "/a")
                .await
                .cache_status
                .contains("; hit"),
        );
    }
    out
}

async fn staged(cp: &Cp, id: u64) -> Value {
    let (status, v) = cp
        .send("GET", &format!("/v1/staged-purges/{id}"), OPS, None, None)
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn reaches_state(cp: &Cp, id: u64, state: &str) -> bool {
    eventually(Duration::from_secs(20), || async {
        staged(cp, id).await["state"] == json!(state)
    })
    .await
}

/// A staged purge of everything in three waves (n1, n2, then the rest) reaches n1 only; once
/// aborted, n2 and n3 never get it: their clients keep getting hits and the origin sees only
/// n1's refetch. `verge nodes` and the metrics show where it stands.
#[tokio::test]
async fn a_staged_purge_all_in_three_waves_aborted_after_the_first_reaches_only_its_nodes() {
    let o = Origin::start("o").await;
    let cp = Cp::start().await;
    let nodes = three_nodes_holding_a(&o, &cp).await;
    let head = cp.send("GET", "/v1/nodes", OPS, None, None).await.1["head"]["seq"].clone();

    let body = json!({"kind": "all", "confirm": "all", "waves": [["n1"], ["n2"]], "hold": "1h"});
    let (status, v) = cp
        .send(
            "POST",
            "/v1/staged-purges",
            PURGER,
            Some(body.clone()),
            None,
        )
        .await;
    assert_eq!(status, 403, "purge:all is still its own scope: {v}");
    let mut unconfirmed = body.clone();
    unconfirmed["confirm"] = Value::Null;
    let (status, v) = cp
        .send("POST", "/v1/staged-purges", OPS, Some(unconfirmed), None)
        .await;
    assert_eq!(status, 400, "all needs its confirmation: {v}");
    let mut unknown = body.clone();
    unknown["waves"] = json!([["n9"]]);
    let (status, v) = cp
        .send("POST", "/v1/staged-purges", OPS, Some(unknown), None)
        .await;
    assert_eq!(status, 400, "a wave names known nodes: {v}");
    assert_eq!(
        cp.send("GET", "/v1/nodes", OPS, None, None).await.1["head"]["seq"],
        head,
        "nothing refused was written"
    );

    let (status, started) = cp
        .send("POST", "/v1/staged-purges", OPS, Some(body), None)
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_u64().expect("id");
    let waves = started["waves"].as_array().expect("waves");
    assert_eq!(waves.len(), 3, "{started}");
    assert_eq!(waves[0]["nodes"], json!(["n1"]));
    assert_eq!(waves[1]["nodes"], json!(["n2"]));
    assert_eq!(waves[2]["nodes"], json!("rest"));
    assert_eq!(waves[2]["except"], json!(["n1", "n2"]));
    assert!(
        reaches_state(&cp, id, "holding").await,
        "n1 did not acknowledge wave 1: {}",
        staged(&cp, id).await
    );
    // every node is at the head (the wave's seq counts as applied everywhere), only n1 purged
    assert!(cp.converged(3).await);
    assert_eq!(served_from_cache(&nodes).await, [false, true, true]);
    assert_eq!(o.hits("/a"), 4, "only n1 refetched");

    let listed = cli(&cp, &["nodes"], "ops.token");
    assert_eq!(listed.code, Some(0), "{}", listed.err);
    assert!(
        listed.out.contains(&format!(
            "staged purge {id} (holding): n1 wave 1 applied, n2 wave 2 waiting, n3 wave 3 waiting"
        )),
        "{}",
        listed.out
    );
    let m = reqwest::get(cp.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        m.contains("verge_control_staged_purges{state=\"holding\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("verge_control_staged_purge_waves_total 1"),
        "{m}"
    );

    let aborted = cli(&cp, &["staged", "abort", &id.to_string()], "ops.token");
    assert_eq!(aborted.code, Some(0), "{}", aborted.err);
    assert!(aborted.out.contains("aborted"), "{}", aborted.out);
    assert!(
        aborted.out.contains("wave 2: n2 (skipped)"),
        "{}",
        aborted.out
    );
    let again = cli(&cp, &["staged", "resume", &id.to_string()], "ops.token");
    assert_ne!(again.code, Some(0), "an aborted purge does not resume");
    // well past the driver's steps: nothing more goes out
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = staged(&cp, id).await;
    assert_eq!(after["state"], "aborted");
    assert_eq!(after["waves"][1]["seq"], Value::Null, "{after}");
    assert_eq!(after["waves"][2]["seq"], Value::Null, "{after}");
    assert_eq!(served_from_cache(&nodes).await, [true, true, true]);
    assert_eq!(o.hits("/a"), 4, "n2 and n3 never purged");
    let listed = cli(&cp, &["nodes"], "ops.token");
    assert!(!listed.out.contains("staged purge"), "{}", listed.out);
}

/// `verge purge all` is staged: a third of the nodes, then the rest after the hold. Paused,
/// the rest waits; resumed, it reaches every node, in order.
#[tokio::test]
async fn verge_purge_all_goes_out_in_waves_and_waits_while_paused() {
    let o = Origin::start("o").await;
    let cp = Cp::start().await;
    let nodes = three_nodes_holding_a(&o, &cp).await;
    let started = cli(
        &cp,
        &[
            "purge",
            "all",
            "--confirm-all",
            "--wave",
            "33%",
            "--hold",
            "1s",
            "--json",
        ],
        "ops.token",
    );
    assert_eq!(started.code, Some(0), "{}", started.err);
    let v = started.json();
    let id = v["id"].as_u64().expect("id");
    assert_eq!(v["waves"][0]["nodes"], json!(["n1"]), "{v}");
    assert_eq!(v["waves"][1]["except"], json!(["n1"]), "{v}");
    let paused = cli(&cp, &["staged", "pause", &id.to_string()], "ops.token");
    assert_eq!(paused.code, Some(0), "{}", paused.err);
    assert!(paused.out.contains("paused"), "{}", paused.out);
    // longer than the hold: a paused purge sends nothing more
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = staged(&cp, id).await;
    assert_eq!(held["state"], "paused", "{held}");
    assert_eq!(held["waves"][1]["seq"], Value::Null, "{held}");
    assert!(cp.converged(3).await);
    assert_eq!(served_from_cache(&nodes).await, [false, true, true]);

    let resumed = cli(&cp, &["staged", "resume", &id.to_string()], "ops.token");
    assert_eq!(resumed.code, Some(0), "{}", resumed.err);
    assert!(
        reaches_state(&cp, id, "done").await,
        "{}",
        staged(&cp, id).await
    );
    let done = staged(&cp, id).await;
    let (first, rest) = (&done["waves"][0], &done["waves"][1]);
    assert!(rest["seq"].as_u64() > first["seq"].as_u64(), "{done}");
    assert!(
        rest["sent_ms"].as_u64().unwrap_or(0) >= first["sent_ms"].as_u64().unwrap_or(0) + 1000,
        "the rest went out after the hold: {done}"
    );
    assert!(cp.converged(3).await);
    // n1 refetched after wave 1 and keeps that copy; n2 and n3 were purged by the rest
    assert_eq!(served_from_cache(&nodes).await, [true, false, false]);
    assert_eq!(o.hits("/a"), 6);
}
