//! `verge control` on etcd: two replicas share a 3-member etcd cluster on loopback. A write on
//! one replica reaches a node polling the other, racing compare-and-sets have one winner, a
//! member's loss changes nothing, a lost quorum refuses writes while nodes keep serving, and a
//! restarted replica loses nothing.

use crate::control::get;
use crate::support::control_plane::{node, node_polling, policy, Cp, CpConfig, OPS};
use crate::support::etcd::{EtcdCerts, EtcdCluster};
use crate::support::{eventually, Config, Metrics, Origin, Verge};
use serde_json::{json, Value};
use std::time::Duration;

/// A replica on `etcd` under `prefix`.
pub(crate) async fn replica(etcd: &EtcdCluster, prefix: &str) -> Cp {
    replica_with(etcd, prefix, "").await
}

/// A replica on `etcd` under `prefix`, with more top-level settings.
pub(crate) async fn replica_with(etcd: &EtcdCluster, prefix: &str, extra_yaml: &str) -> Cp {
    let cfg = CpConfig::new().yaml(&format!(
        "{extra_yaml}\nstore:\n  etcd:\n    endpoints: {}\n    prefix: {prefix}\n    timeout: 2s",
        etcd.endpoints_yaml()
    ));
    Cp::start_with(&cfg).await
}

/// A policy document that differs from the one at `version` (the same document again writes
/// nothing).
pub(crate) fn next_policy(o: &Origin, version: u64) -> Value {
    policy(o, json!({"max_ttl": format!("{}h", version + 1)}))
}

/// `GET path` on a replica, as the ops token.
pub(crate) async fn read(cp: &Cp, path: &str) -> Value {
    let (status, v) = cp.send("GET", path, OPS, None, None).await;
    assert_eq!(status, 200, "{path}: {v}");
    v
}

/// Wait until `cp` holds policy `version` and invalidations up to `seq`.
pub(crate) async fn holds(cp: &Cp, version: u64, seq: u64) -> bool {
    eventually(Duration::from_secs(10), || async {
        let (_, p) = cp.send("GET", "/v1/policy", OPS, None, None).await;
        let (_, i) = cp.send("GET", "/v1/invalidations", OPS, None, None).await;
        let last = i["invalidations"]
            .as_array()
            .and_then(|a| a.last())
            .and_then(|x| x["seq"].as_u64())
            .unwrap_or(0);
        p["version"] == json!(version) && last == seq
    })
    .await
}

/// Wait until `cp` holds policy `version` and `seq`, and its one node applied them.
pub(crate) async fn node_at(cp: &Cp, version: u64, seq: u64) -> bool {
    holds(cp, version, seq).await && cp.converged(1).await
}

/// Fetch `path` through `n` until the origin has seen `hits` requests for it.
pub(crate) async fn refetched(
    n: &crate::support::Verge,
    o: &Origin,
    path: &str,
    hits: u64,
) -> bool {
    eventually(Duration::from_secs(10), || async {
        get(n, path).await;
        o.hits(path) >= hits
    })
    .await
}

#[tokio::test]
async fn replicas_share_policy_purges_and_compare_and_set() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    let a = replica(&etcd, "/share/").await;
    let b = replica(&etcd, "/share/").await;
    let n = node(&b, "on-b").await;

    // A policy written through A reaches the node polling B.
    let (status, v) = a.put_policy(next_policy(&o, 0), 0).await;
    assert_eq!(status, 200, "{v}");
    assert!(node_at(&b, 1, 0).await, "the node on B applied A's policy");
    assert_eq!(get(&n, "/p").await.0, 200);
    assert_eq!(get(&n, "/p").await.0, 200);
    assert_eq!(o.hits("/p"), 1, "the second GET was a hit");

    // Two replicas racing on the same version: exactly one wins, the other gets 412.
    for version in 1..=4u64 {
        let doc = policy(&o, json!({"default_ttl": format!("{version}m")}));
        let (ra, rb) = tokio::join!(
            a.put_policy(doc.clone(), version),
            b.put_policy(doc, version)
        );
        let mut statuses = [ra.0, rb.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 412], "round {version}: {} / {}", ra.1, rb.1);
        let winner = if ra.0 == 200 { ra.1 } else { rb.1 };
        assert_eq!(winner["version"], json!(version + 1));
    }
    let history = read(&a, "/v1/policy/history").await;
    let versions: Vec<u64> = history["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    assert_eq!(
        versions,
        [1, 2, 3, 4, 5],
        "one writer per version, none lost"
    );

    // A purge through A is applied by the node on B; both replicas agree on its seq.
    let seq = a
        .purge(json!({"kind": "url", "target": "site.test/p"}))
        .await;
    assert_eq!(seq, 1);
    assert!(
        refetched(&n, &o, "/p", 2).await,
        "the node on B refetched after A's purge"
    );
    assert!(holds(&b, 5, 1).await);
    // Purges through both replicas get distinct, dense sequence numbers.
    let (sa, sb) = tokio::join!(
        a.purge(json!({"kind": "tag", "target": "x"})),
        b.purge(json!({"kind": "tag", "target": "y"}))
    );
    let mut seqs = [sa, sb];
    seqs.sort_unstable();
    assert_eq!(seqs, [2, 3]);
    assert!(holds(&a, 5, 3).await && holds(&b, 5, 3).await);
    assert_eq!(
        read(&a, "/v1/invalidations").await,
        read(&b, "/v1/invalidations").await,
        "one log, the same on every replica"
    );
    assert!(node_at(&b, 5, 3).await, "the node reached the shared head");
}

#[tokio::test]
async fn etcd_member_and_quorum_loss_and_a_replica_restart() {
    let Some(mut etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    let a = replica(&etcd, "/faults/").await;
    let mut b = replica(&etcd, "/faults/").await;
    let n = node(&b, "on-b").await;
    assert_eq!(a.put_policy(next_policy(&o, 0), 0).await.0, 200);
    assert!(node_at(&b, 1, 0).await);
    assert_eq!(get(&n, "/p").await.0, 200);

    // One member down: writes still commit, and still reach the node.
    etcd.kill(0);
    let (status, v) = a.put_policy(next_policy(&o, 1), 1).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        a.purge(json!({"kind": "url", "target": "site.test/p"}))
            .await,
        1
    );
    assert!(
        refetched(&n, &o, "/p", 2).await,
        "the purge reached the node"
    );
    assert!(node_at(&b, 2, 1).await);

    // Two down, no quorum: writes are refused with 503, never a 2xx; reads and the node go on.
    etcd.kill(1);
    let (status, v) = a.put_policy(next_policy(&o, 2), 2).await;
    assert_eq!(status, 503, "{v}");
    let (status, v) = b
        .send(
            "POST",
            "/v1/invalidations",
            OPS,
            Some(json!({"kind": "url", "target": "site.test/p"})),
            None,
        )
        .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(read(&b, "/v1/policy").await["version"], json!(2));
    let hits = o.hits("/p");
    assert_eq!(get(&n, "/p").await.0, 200, "the node keeps serving");
    assert_eq!(o.hits("/p"), hits, "from its cache");

    // Quorum back: writes commit again.
    etcd.start_stopped().await;
    let ok = eventually(Duration::from_secs(15), || async {
        a.put_policy(next_policy(&o, 2), 2).await.0 == 200
    })
    .await;
    assert!(ok, "writes commit once the quorum is back");
    // (B's watch may still be catching up with the revision A's write made: a 503, nothing
    // written, until it has)
    let purge = json!({"kind": "url", "target": "site.test/p"});
    assert_eq!(b.purge_once_the_store_answers(purge).await, 2);

    // B restarts while A writes: B comes back with everything, and its node catches up.
    b.kill();
    assert_eq!(
        a.purge(json!({"kind": "host", "target": "site.test"}))
            .await,
        3
    );
    assert_eq!(a.put_policy(next_policy(&o, 3), 3).await.0, 200);
    b.restart().await;
    assert!(
        node_at(&b, 4, 3).await,
        "B has every write after its restart, and so does its node"
    );
    assert_eq!(
        read(&a, "/v1/invalidations").await,
        read(&b, "/v1/invalidations").await
    );
    assert!(refetched(&n, &o, "/p", 3).await);
}

/// Whether `cp` counted a full read of the store for `reason`.
pub(crate) async fn resynced(cp: &Cp, reason: &str) -> bool {
    resynced_for(cp, &[reason]).await
}

/// Whether `cp` counted a full read of the store for one of `reasons`.
pub(crate) async fn resynced_for(cp: &Cp, reasons: &[&str]) -> bool {
    eventually(Duration::from_secs(15), || async {
        let r = crate::support::client()
            .get(cp.url("/metrics"))
            .send()
            .await
            .expect("metrics");
        let m = Metrics::parse(&r.text().await.unwrap_or_default());
        reasons.iter().any(|reason| {
            m.value("verge_control_store_resyncs_total", &[("reason", reason)])
                .is_some_and(|v| v >= 1.0)
        })
    })
    .await
}

/// `verge_control_leader` on `cp` (0 when it cannot be read).
pub(crate) async fn leader(cp: &Cp) -> f64 {
    let Ok(r) = crate::support::client()
        .get(cp.url("/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    let m = Metrics::parse(&r.text().await.unwrap_or_default());
    m.value("verge_control_leader", &[]).unwrap_or(0.0)
}

/// The sequence numbers `cp` still lists.
async fn seqs(cp: &Cp) -> Vec<u64> {
    read(cp, "/v1/invalidations").await["invalidations"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["seq"].as_u64()).collect())
        .unwrap_or_default()
}

/// Wait until both replicas list only invalidations from `from` on (retention dropped the
/// older ones) and agree.
async fn retained_from(a: &Cp, b: &Cp, from: u64) -> bool {
    eventually(Duration::from_secs(10), || async {
        let (x, y) = (seqs(a).await, seqs(b).await);
        x == y && x.iter().all(|&s| s >= from)
    })
    .await
}

/// Send SIGSTOP or SIGCONT to a process.
pub(crate) fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn a_replica_behind_a_compaction_or_on_a_wiped_etcd_reads_everything_again() {
    let Some(mut etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    let a = replica(&etcd, "/resync/").await;
    let b = replica(&etcd, "/resync/").await;
    let n = node(&b, "on-b").await;
    assert_eq!(a.put_policy(next_policy(&o, 0), 0).await.0, 200);
    assert!(node_at(&b, 1, 0).await);

    // B stops answering and etcd drops its connection (no ping answered: 1 s + 1 s); then A
    // writes, and etcd compacts past B's revision.
    signal(b.pid(), "-STOP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for target in ["a", "b", "c"] {
        a.purge(json!({"kind": "tag", "target": target})).await;
    }
    assert_eq!(a.put_policy(next_policy(&o, 1), 1).await.0, 200);
    etcd.compact().await;
    signal(b.pid(), "-CONT");
    assert!(
        resynced(&b, "compacted").await,
        "B's watch met the compaction"
    );
    assert!(
        node_at(&b, 2, 3).await,
        "B read everything again, and its node has it"
    );
    assert_eq!(
        read(&a, "/v1/invalidations").await,
        read(&b, "/v1/invalidations").await
    );

    // etcd wiped: a new cluster id. Both replicas read everything again and take the empty
    // store, rather than keep answering from what no longer exists; the node, at 2.3 of the old
    // epoch, takes the new one's full snapshot and then its purge number 1.
    assert_eq!(get(&n, "/p").await.0, 200);
    assert_eq!(get(&n, "/p").await.0, 200);
    let hits = o.hits("/p");
    let epoch_before = read(&a, "/v1/snapshot").await["epoch"].clone();
    assert!(epoch_before.is_string(), "an etcd plane has an epoch");
    etcd.wipe().await;
    assert!(resynced(&a, "cluster_changed").await);
    assert!(resynced(&b, "cluster_changed").await);
    assert!(holds(&a, 0, 0).await && holds(&b, 0, 0).await);
    let ok = eventually(Duration::from_secs(10), || async {
        b.put_policy(next_policy(&o, 0), 0).await.0 == 200
    })
    .await;
    assert!(ok, "the new store takes writes from version 0");
    assert!(holds(&a, 1, 0).await);
    let epoch_after = read(&a, "/v1/snapshot").await["epoch"].clone();
    assert!(
        epoch_after.is_string() && epoch_after != epoch_before,
        "{epoch_after}"
    );
    assert_eq!(read(&b, "/v1/snapshot").await["epoch"], epoch_after);
    let seq = a
        .purge(json!({"kind": "url", "target": "site.test/p"}))
        .await;
    assert_eq!(seq, 1);
    assert!(
        refetched(&n, &o, "/p", hits + 1).await,
        "the node applied the new epoch's purge 1"
    );
    assert!(node_at(&b, 1, 1).await, "and reports the new epoch's head");
}

#[tokio::test]
async fn one_elected_replica_does_retention_and_another_takes_over_when_it_dies() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    // every invalidation is past its retention at once; compact after every third
    let extra = "compact_after: 3\ninvalidation_retention: 1ms";
    let mut replicas = [
        replica_with(&etcd, "/retention/", extra).await,
        replica_with(&etcd, "/retention/", extra).await,
    ];
    let elected = eventually(Duration::from_secs(10), || async {
        leader(&replicas[0]).await + leader(&replicas[1]).await == 1.0
    })
    .await;
    assert!(elected, "exactly one replica is elected");
    let l = usize::from(leader(&replicas[1]).await == 1.0);
    let f = 1 - l;

    // Purges through the follower: the leader compacts, and the follower follows its floor.
    for target in ["a", "b", "c"] {
        replicas[f]
            .purge(json!({"kind": "tag", "target": target}))
            .await;
    }
    assert!(
        retained_from(&replicas[0], &replicas[1], 3).await,
        "the leader compacted what the follower appended"
    );
    assert_eq!(
        read(&replicas[f], "/v1/nodes").await["head"]["seq"],
        json!(3)
    );

    // The leader dies: once its lease expires the other replica is elected and compacts.
    replicas[l].kill();
    let took_over = eventually(Duration::from_secs(15), || async {
        leader(&replicas[f]).await == 1.0
    })
    .await;
    assert!(took_over, "the surviving replica was elected");
    for target in ["d", "e", "f"] {
        replicas[f]
            .purge(json!({"kind": "tag", "target": target}))
            .await;
    }
    let compacted = eventually(Duration::from_secs(10), || async {
        seqs(&replicas[f]).await.iter().all(|&s| s >= 6)
    })
    .await;
    assert!(compacted, "the new leader compacted");
    replicas[l].restart().await;
    assert!(retained_from(&replicas[0], &replicas[1], 6).await);
}

#[tokio::test]
async fn a_node_with_several_urls_fails_over_between_replicas_and_keeps_serving() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    let mut a = replica(&etcd, "/failover/").await;
    let b = replica(&etcd, "/failover/").await;
    assert_eq!(a.put_policy(next_policy(&o, 0), 0).await.0, 200);
    // the first URL answers nothing at all: the node starts on the second
    let dead = format!("http://{}", crate::support::ports::addr());
    let urls = [dead.as_str(), &a.url(""), &b.url("")];
    let n = Verge::start(&Config::new().control(a.control("multi").urls(&urls))).await;
    assert_eq!(get(&n, "/p").await.0, 200);
    assert!(node_at(&a, 1, 0).await, "the node reports to A");

    // A dies: the node goes on with B from the position it has, and keeps serving meanwhile
    a.kill();
    assert_eq!(
        get(&n, "/p").await.0,
        200,
        "served from the last good snapshot"
    );
    assert_eq!(o.hits("/p"), 1);
    let seq = b
        .purge(json!({"kind": "url", "target": "site.test/p"}))
        .await;
    assert_eq!(seq, 1);
    assert!(
        refetched(&n, &o, "/p", 2).await,
        "B's purge reached the node"
    );
    assert_eq!(b.put_policy(next_policy(&o, 1), 1).await.0, 200);
    assert!(node_at(&b, 2, 1).await, "the node reports to B");
    let failovers = n
        .metrics()
        .await
        .value("verge_snapshot_failovers_total", &[])
        .unwrap_or(0.0);
    assert!(failovers >= 2.0, "the dead URL, then A: {failovers}");
}

#[tokio::test]
async fn replicas_log_in_to_an_etcd_with_authentication() {
    let Some(etcd) = EtcdCluster::start(1).await else {
        return;
    };
    etcd.enable_auth("etcd-root-password").await;
    let o = Origin::start("o").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("etcd.password");
    std::fs::write(&password, "etcd-root-password\n").expect("password file");
    let auth = format!(
        "store:\n  etcd:\n    endpoints: {}\n    prefix: /auth/\n    timeout: 2s\n    auth: {{user: root, password_file: {}}}",
        etcd.endpoints_yaml(),
        password.display()
    );
    let (_a, _b, n) = two_replicas_share_a_write(&auth, &o).await;
    assert_eq!(get(&n, "/p").await.0, 200);
    // without the password, etcd refuses the replica's first read: it does not start
    let store = format!(
        "store:\n  etcd:\n    endpoints: {}\n    prefix: /auth/\n    timeout: 2s\n",
        etcd.endpoints_yaml()
    );
    let err = refused_to_start(&store);
    assert!(err.contains("etcd"), "{err}");
}

/// Two replicas with `store_yaml` and a node on the second: a policy written through the first
/// reaches the node.
async fn two_replicas_share_a_write(store_yaml: &str, o: &Origin) -> (Cp, Cp, Verge) {
    let a = Cp::start_with(&CpConfig::new().yaml(store_yaml)).await;
    let b = Cp::start_with(&CpConfig::new().yaml(store_yaml)).await;
    let n = node(&b, "on-b").await;
    assert_eq!(a.put_policy(next_policy(o, 0), 0).await.0, 200);
    assert!(
        node_at(&b, 1, 0).await,
        "a write through A reached B's node"
    );
    (a, b, n)
}

/// Start `verge control` with `store_yaml` and expect it to exit with an error: its stderr.
fn refused_to_start(store_yaml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("control.yaml");
    let text = format!(
        "listen: \"{}\"\ndata_dir: {}\ninsecure_no_auth: true\n{store_yaml}",
        crate::support::ports::addr(),
        dir.path().join("data").display(),
    );
    std::fs::write(&cfg, text).expect("config");
    let out = std::process::Command::new(crate::support::process::verge_bin())
        .args(["control", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "error")
        .output()
        .expect("verge control");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "it started: {err}");
    err
}

#[tokio::test]
async fn replicas_reach_an_etcd_on_mutual_tls_and_refuse_a_wrong_ca() {
    let certs = EtcdCerts::generate();
    let file = |f: &str| certs.path(f).display().to_string();
    let (ca, cert, key, other_ca) = (
        file("ca.crt"),
        file("client.crt"),
        file("client.key"),
        file("other-ca.crt"),
    );
    let Some(etcd) = EtcdCluster::start_tls(3, certs).await else {
        return;
    };
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    let store = |tls: &str| {
        format!(
            "store:\n  etcd:\n    endpoints: {}\n    prefix: /tls/\n    timeout: 2s\n    tls: {tls}\n",
            etcd.endpoints_yaml()
        )
    };
    let good = store(&format!("{{ca: {ca}, cert: {cert}, key: {key}}}"));
    let (a, b, n) = two_replicas_share_a_write(&good, &o).await;
    assert_eq!(get(&n, "/p").await.0, 200);
    let seq = b
        .purge(json!({"kind": "url", "target": "site.test/p"}))
        .await;
    assert_eq!(seq, 1);
    assert!(
        refetched(&n, &o, "/p", 2).await,
        "B's purge reached the node"
    );
    assert!(holds(&a, 1, 1).await, "and A");

    // a CA that did not sign the members' certificate: the replica does not start, and says why
    let err = refused_to_start(&store(&format!(
        "{{ca: {other_ca}, cert: {cert}, key: {key}}}"
    )));
    assert!(
        err.contains("etcd") && err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    // the right CA but no client certificate: etcd refuses the handshake
    let err = refused_to_start(&store(&format!("{{ca: {ca}}}")));
    assert!(err.contains("etcd"), "{err}");
}

#[tokio::test]
async fn writes_waiting_for_a_lost_quorum_do_not_hold_the_api_workers() {
    let Some(mut etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let o = Origin::start("o").await;
    // one API worker: a write waiting on etcd there would hold every other request
    let a = replica_with(&etcd, "/workers/", "threads: 1").await;
    assert_eq!(a.put_policy(next_policy(&o, 0), 0).await.0, 200);
    etcd.kill(0);
    etcd.kill(1);
    let writes: Vec<_> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|target| {
            let url = a.url("/v1/invalidations");
            tokio::spawn(async move {
                crate::support::client()
                    .post(url)
                    .bearer_auth(OPS)
                    .json(&json!({"kind": "tag", "target": target}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // reads and long-polls are answered while the writes still wait for a quorum
    assert_eq!(read(&a, "/v1/policy").await["version"], json!(1));
    let (status, v) = a
        .send("GET", "/v1/snapshot?after=0.0&wait=0ms", OPS, None, None)
        .await;
    assert_eq!(status, 200, "{v}");
    let waiting = writes.iter().filter(|w| !w.is_finished()).count();
    assert!(waiting > 0, "the reads were answered before the writes");
    for w in writes {
        assert_eq!(w.await.expect("task").expect("answer"), 503);
    }
}

/// The node ids `cp` lists in `/v1/nodes`.
async fn listed(cp: &Cp) -> Vec<String> {
    read(cp, "/v1/nodes").await["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["node"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn every_replica_lists_every_node_and_a_dead_one_disappears_with_its_lease() {
    let Some(etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let o = Origin::start("o").await;
    let a = replica(&etcd, "/receipts/").await;
    let b = replica(&etcd, "/receipts/").await;
    assert_eq!(a.put_policy(next_policy(&o, 0), 0).await.0, 200);
    // polls of 1 s: a receipt's lease is 3 s
    let _on_a = node_polling(&a, "on-a", "1s").await;
    let on_b = node_polling(&b, "on-b", "1s").await;
    let both = eventually(Duration::from_secs(10), || async {
        listed(&a).await == ["on-a", "on-b"] && listed(&b).await == ["on-a", "on-b"]
    })
    .await;
    assert!(both, "A: {:?}, B: {:?}", listed(&a).await, listed(&b).await);
    // what a node polling B applied is what A lists for it
    let on_a_view = read(&a, "/v1/nodes").await;
    let entry = on_a_view["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node"] == json!("on-b")).cloned())
        .expect("on-b on A");
    assert_eq!(entry["policy_version"], json!(1), "{entry}");

    // the node on B dies: once its lease expires, neither replica lists it
    drop(on_b);
    let gone = eventually(Duration::from_secs(15), || async {
        listed(&a).await == ["on-a"] && listed(&b).await == ["on-a"]
    })
    .await;
    assert!(gone, "A: {:?}, B: {:?}", listed(&a).await, listed(&b).await);
    // the living node stays listed on both, past several lease lengths
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(listed(&a).await, ["on-a"]);
    assert_eq!(listed(&b).await, ["on-a"]);
}

/// What one writer of the fault run got acknowledged.
#[derive(Default)]
struct Acked {
    /// Policy writes that got 200: (version, document).
    policies: Vec<(u64, Value)>,
    /// Purges that got 202: (seq, tag).
    purges: Vec<(u64, String)>,
}

/// Write until `stop`: policy compare-and-sets (`policy_writer`) or tag purges, each to the
/// next replica of `urls` in turn; only what got a 2xx is recorded. Unique documents and tags
/// tell every write apart.
async fn writer(
    id: usize,
    urls: Vec<String>,
    base: Value,
    policy_writer: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Acked {
    let client = crate::support::client();
    let mut acked = Acked::default();
    let mut n = 0usize;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let url = &urls[(id + n) % urls.len()];
        if policy_writer {
            let current = client
                .get(format!("{url}/v1/policy"))
                .bearer_auth(OPS)
                .send()
                .await;
            let Ok(r) = current else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let version = r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v["version"].as_u64());
            let Some(version) = version else { continue };
            let mut doc = base.clone();
            // a long max_ttl (the node's cached /p must not expire during the check)
            let ttl = 1_000_000 + id * 100_000 + n;
            doc["routes"][0]["cache"] = json!({"max_ttl": format!("{ttl}s")});
            let sent = client
                .put(format!("{url}/v1/policy"))
                .bearer_auth(OPS)
                .header("if-match", format!("\"{version}\""))
                .json(&doc)
                .send()
                .await;
            if let Ok(r) = sent {
                if r.status() == 200 {
                    let v: Value = r.json().await.expect("answer");
                    acked
                        .policies
                        .push((v["version"].as_u64().expect("version"), doc));
                }
            }
        } else {
            let tag = format!("w{id}-{n}");
            let sent = client
                .post(format!("{url}/v1/invalidations"))
                .bearer_auth(OPS)
                .json(&json!({"kind": "tag", "target": tag}))
                .send()
                .await;
            if let Ok(r) = sent {
                if r.status() == 202 {
                    let v: Value = r.json().await.expect("answer");
                    acked.purges.push((v["seq"].as_u64().expect("seq"), tag));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acked
}

/// The history checker: every acknowledged write is in the final history exactly once, at the
/// version or `seq` it was acknowledged with; versions and `seq`s are dense and strictly
/// increasing (one writer per version); every replica holds the same history.
async fn check_history(replicas: &[Cp], acked: &[Acked]) -> (u64, u64) {
    let first = &replicas[0];
    let versions: Vec<u64> = read(first, "/v1/policy/history").await["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    let head_version = versions.len() as u64;
    assert_eq!(
        versions,
        (1..=head_version).collect::<Vec<_>>(),
        "policy versions dense and strictly increasing"
    );
    let mut documents = Vec::new();
    for v in &versions {
        documents.push(read(first, &format!("/v1/policy/versions/{v}")).await["policy"].clone());
    }
    let log = read(first, "/v1/invalidations").await;
    let log: Vec<(u64, String)> = log["invalidations"]
        .as_array()
        .expect("invalidations")
        .iter()
        .map(|i| {
            (
                i["seq"].as_u64().expect("seq"),
                i["target"].as_str().expect("target").to_string(),
            )
        })
        .collect();
    let head_seq = log.len() as u64;
    let seqs: Vec<u64> = log.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=head_seq).collect::<Vec<_>>(), "seqs dense");
    let mut targets: Vec<&String> = log.iter().map(|(_, t)| t).collect();
    targets.sort();
    targets.dedup();
    assert_eq!(targets.len(), log.len(), "no purge twice in the log");
    for (i, doc) in documents.iter().enumerate() {
        let twice = documents[i + 1..].iter().any(|d| d == doc);
        assert!(!twice, "a policy document at two versions: {doc}");
    }
    for a in acked {
        for (version, doc) in &a.policies {
            let at = usize::try_from(*version - 1).expect("version");
            assert_eq!(&documents[at], doc, "acknowledged version {version}");
        }
        for (seq, tag) in &a.purges {
            let at = usize::try_from(*seq - 1).expect("seq");
            assert_eq!(&log[at].1, tag, "acknowledged seq {seq}");
        }
    }
    for r in &replicas[1..] {
        assert!(
            holds(r, head_version, head_seq).await,
            "every replica at the head"
        );
        assert_eq!(
            read(r, "/v1/invalidations").await,
            read(first, "/v1/invalidations").await
        );
        assert_eq!(
            read(r, "/v1/policy/history").await,
            read(first, "/v1/policy/history").await
        );
    }
    (head_version, head_seq)
}

#[tokio::test]
async fn faults_under_a_write_mix_lose_no_acknowledged_write() {
    let Some(mut etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    let extra = "policy_history: 100000";
    let mut replicas = vec![
        replica_with(&etcd, "/faults-mix/", extra).await,
        replica_with(&etcd, "/faults-mix/", extra).await,
        replica_with(&etcd, "/faults-mix/", extra).await,
    ];
    assert_eq!(replicas[0].put_policy(next_policy(&o, 0), 0).await.0, 200);
    let urls: Vec<String> = replicas.iter().map(|r| r.url("")).collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        // each node lists the replicas starting from its own
        let order: Vec<&str> = (0..3).map(|k| urls[(i + k) % 3].as_str()).collect();
        let control = replicas[i]
            .control(&format!("n{i}"))
            .urls(&order)
            .wait("1s");
        nodes.push(Verge::start(&Config::new().control(control)).await);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let base = policy(&o, json!({}));
    let writers: Vec<_> = (0..4)
        .map(|id| tokio::spawn(writer(id, urls.clone(), base.clone(), id < 2, stop.clone())))
        .collect();
    let pause = || tokio::time::sleep(Duration::from_secs(2));
    pause().await;
    // a replica dies and comes back
    replicas[2].kill();
    pause().await;
    replicas[2].restart().await;
    pause().await;
    // the elected one dies and comes back
    let mut l = None;
    for (i, r) in replicas.iter().enumerate() {
        if leader(r).await == 1.0 {
            l = Some(i);
        }
    }
    let l = l.expect("a leader");
    replicas[l].kill();
    pause().await;
    replicas[l].restart().await;
    pause().await;
    // one etcd member dies and comes back
    etcd.kill(1);
    pause().await;
    etcd.start_stopped().await;
    pause().await;
    // two die: no quorum, writes get 503; then they come back
    etcd.kill(0);
    etcd.kill(2);
    pause().await;
    etcd.start_stopped().await;
    pause().await;
    // everything restarts: every member and every replica
    for r in replicas.iter_mut() {
        r.kill();
    }
    for i in 0..3 {
        etcd.kill(i);
    }
    etcd.start_stopped().await;
    for r in replicas.iter_mut() {
        r.restart().await;
    }
    pause().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.expect("writer"));
    }
    let policies: usize = acked.iter().map(|a| a.policies.len()).sum();
    let purges: usize = acked.iter().map(|a| a.purges.len()).sum();
    assert!(
        policies > 5 && purges > 5,
        "{policies} policies, {purges} purges acknowledged"
    );
    // settle: every replica catches up with etcd
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (version, seq) = check_history(&replicas, &acked).await;
    eprintln!("fault run: {policies} policy writes and {purges} purges acknowledged; head {version}.{seq}");
    // every node converged to the head, as every replica sees it
    for r in &replicas {
        assert!(holds(r, version, seq).await);
        assert!(r.converged(3).await, "every node at {version}.{seq}");
    }
    // and no purge is lost on a node: a URL purge now is refetched by every node
    for n in &nodes {
        assert_eq!(get(n, "/p").await.0, 200);
    }
    let hits = o.hits("/p");
    replicas[1]
        .purge(json!({"kind": "url", "target": "site.test/p"}))
        .await;
    for (i, n) in nodes.iter().enumerate() {
        assert!(
            refetched(n, &o, "/p", hits + i as u64 + 1).await,
            "node {i}"
        );
    }
    assert_eq!(o.hits("/p"), hits + 3, "each node refetched once");
}
