//! Staged purges: a purge of everything sent to the nodes one wave at a time, each after the
//! previous wave's nodes applied it and a hold, and stopped (paused, resumed, aborted) midway.
//! What the clients see on each node and what the origin received prove where it went.
//! A staged purge lives in the store: a restarted control plane goes on with it, and on etcd
//! another replica finishes it when the one driving it dies.

use crate::control_etcd::{leader, replica_with};
use crate::operator_cli::cli;
use crate::support::control_plane::{node, policy, Cp, OPS, PURGER};
use crate::support::etcd::EtcdCluster;
use crate::support::{eventually, get, Config, Origin, Verge};
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
    eventually(Duration::from_secs(40), || async {
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

/// The invalidations `cp` lists after `seq`: the waves written, as `(seq, nodes)`.
async fn waves_written(cp: &Cp, after: &Value) -> Vec<(u64, Value)> {
    let path = format!("/v1/invalidations?after={after}");
    let (status, v) = cp.send("GET", &path, OPS, None, None).await;
    assert_eq!(status, 200, "{v}");
    v["invalidations"]
        .as_array()
        .expect("invalidations")
        .iter()
        .map(|i| (i["seq"].as_u64().unwrap_or(0), i["nodes"].clone()))
        .collect()
}

/// What every wave of three (n1, n2, the rest) must have written: one invalidation each.
fn three_waves() -> Vec<Value> {
    vec![
        json!({"only": ["n1"]}),
        json!({"only": ["n2"]}),
        json!({"except": ["n1", "n2"]}),
    ]
}

/// The control plane (file store) restarted during the hold after wave 1 reads the staged
/// purge back from its log and goes on: waves 2 and 3 go out once each after the hold, every
/// node purges once (the origin sees one refetch per node), and the log holds one invalidation
/// per wave.
#[tokio::test]
async fn a_control_plane_restarted_mid_staged_purge_goes_on_and_writes_each_wave_once() {
    let o = Origin::start("o").await;
    let mut cp = Cp::start().await;
    let nodes = three_nodes_holding_a(&o, &cp).await;
    let head = cp.send("GET", "/v1/nodes", OPS, None, None).await.1["head"]["seq"].clone();
    let body = json!({"kind": "all", "confirm": "all", "waves": [["n1"], ["n2"]], "hold": "6s"});
    let (status, started) = cp
        .send("POST", "/v1/staged-purges", OPS, Some(body), None)
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_u64().expect("id");
    assert!(
        reaches_state(&cp, id, "holding").await,
        "{}",
        staged(&cp, id).await
    );
    assert_eq!(served_from_cache(&nodes).await, [false, true, true]);
    let before = staged(&cp, id).await;

    cp.restart().await;
    let after = staged(&cp, id).await;
    assert_eq!(
        after["waves"][0], before["waves"][0],
        "wave 1 read back as written"
    );
    assert_eq!(after["waves"][1]["seq"], Value::Null, "{after}");
    assert!(
        reaches_state(&cp, id, "done").await,
        "{}",
        staged(&cp, id).await
    );
    let done = staged(&cp, id).await;
    let sent = |w: usize| done["waves"][w]["sent_ms"].as_u64().unwrap_or(0);
    assert!(
        sent(1) >= sent(0) + 6000,
        "wave 2 waited for the hold: {done}"
    );
    let written = waves_written(&cp, &head).await;
    let selectors: Vec<Value> = written.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(
        selectors,
        three_waves(),
        "one invalidation per wave: {written:?}"
    );
    assert!(cp.converged(3).await);
    // n1 refetched after wave 1 and keeps that copy; n2 and n3 purged once each
    assert_eq!(served_from_cache(&nodes).await, [true, false, false]);
    assert_eq!(served_from_cache(&nodes).await, [true, true, true]);
    assert_eq!(o.hits("/a"), 6, "each node purged once");
}

/// On etcd with 3 replicas, a staged purge started through a replica that does not drive it is
/// shown the same by every replica (`verge staged`); the elected replica drives it, and when
/// it is killed during the hold, another is elected and finishes it from the store: one
/// invalidation per wave, one purge per node.
#[tokio::test]
async fn on_etcd_every_replica_shows_a_staged_purge_and_another_finishes_it_when_its_driver_dies() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let o = Origin::start("o").await;
    o.set_headers("/a", &[("cache-control", "max-age=300")]);
    let mut replicas = [
        replica_with(&etcd, "/staged/", "").await,
        replica_with(&etcd, "/staged/", "").await,
        replica_with(&etcd, "/staged/", "").await,
    ];
    let elected = eventually(Duration::from_secs(15), || async {
        let mut sum = 0.0;
        for r in &replicas {
            sum += leader(r).await;
        }
        sum == 1.0
    })
    .await;
    assert!(elected, "exactly one replica is elected");
    let mut l = 0;
    for (i, r) in replicas.iter().enumerate() {
        if leader(r).await == 1.0 {
            l = i;
        }
    }
    // each node polls its own replica first, and fails over to the others
    let urls: Vec<String> = replicas.iter().map(|r| r.url("")).collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let list: Vec<&str> = (0..3).map(|k| urls[(i + k) % 3].as_str()).collect();
        let control = replicas[i]
            .control(&format!("n{}", i + 1))
            .urls(&list)
            .wait("1s");
        nodes.push(Verge::start(&Config::new().control(control)).await);
    }
    let nodes: [Verge; 3] = nodes.try_into().ok().expect("three nodes");
    let (status, v) = replicas[0].put_policy(policy(&o, json!({})), 0).await;
    assert_eq!(status, 200, "{v}");
    for r in &replicas {
        assert!(r.converged(3).await, "every replica lists the three nodes");
    }
    for n in &nodes {
        get(n, "site.test", "/a").await;
    }
    assert_eq!(served_from_cache(&nodes).await, [true, true, true]);
    assert_eq!(o.hits("/a"), 3);
    let head = replicas[0]
        .send("GET", "/v1/nodes", OPS, None, None)
        .await
        .1["head"]["seq"]
        .clone();

    // started through a replica that does not drive staged purges
    let s = (l + 1) % 3;
    let body = json!({"kind": "all", "confirm": "all", "waves": [["n1"], ["n2"]], "hold": "10s"});
    let (status, started) = replicas[s]
        .send("POST", "/v1/staged-purges", OPS, Some(body), None)
        .await;
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_u64().expect("id");
    assert!(
        reaches_state(&replicas[l], id, "holding").await,
        "the driver saw wave 1 acknowledged: {}",
        staged(&replicas[l], id).await
    );
    let same = eventually(Duration::from_secs(10), || async {
        let shown = [
            cli(&replicas[0], &["staged"], "ops.token").out,
            cli(&replicas[1], &["staged"], "ops.token").out,
            cli(&replicas[2], &["staged"], "ops.token").out,
        ];
        shown[0].contains("holding") && shown.iter().all(|x| *x == shown[0])
    })
    .await;
    assert!(same, "`verge staged` shows the same on every replica");
    assert_eq!(served_from_cache(&nodes).await, [false, true, true]);

    // the driver dies during the hold: another replica is elected and goes on
    let before = staged(&replicas[l], id).await;
    assert_eq!(before["state"], "holding", "{before}");
    assert_eq!(before["waves"][1]["seq"], Value::Null, "{before}");
    replicas[l].kill();
    let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    assert!(
        reaches_state(&replicas[others[0]], id, "done").await,
        "{}",
        staged(&replicas[others[0]], id).await
    );
    let took_over = eventually(Duration::from_secs(10), || async {
        leader(&replicas[others[0]]).await + leader(&replicas[others[1]]).await == 1.0
    })
    .await;
    assert!(took_over, "one surviving replica drives");
    let (a, b) = (
        cli(
            &replicas[others[0]],
            &["staged", "show", &id.to_string()],
            "ops.token",
        ),
        cli(
            &replicas[others[1]],
            &["staged", "show", &id.to_string()],
            "ops.token",
        ),
    );
    assert_eq!(a.code, Some(0), "{}", a.err);
    assert!(a.out.contains("done"), "{}", a.out);
    assert_eq!(a.out, b.out, "both survivors show the same");
    let written = waves_written(&replicas[others[0]], &head).await;
    let selectors: Vec<Value> = written.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(
        selectors,
        three_waves(),
        "one invalidation per wave: {written:?}"
    );
    assert!(replicas[others[0]].converged(3).await);
    assert_eq!(served_from_cache(&nodes).await, [true, false, false]);
    assert_eq!(o.hits("/a"), 6, "each node purged once");
}
