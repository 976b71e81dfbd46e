//! `verge control` on etcd through a restore from a backup (a new epoch; nodes resync fully;
//! purges made after the backup appended again, never lost) and through writes stuck on an etcd
//! without a quorum (reads and long-polls are answered meanwhile).

use crate::control::get;
use crate::control_etcd::{
    holds, next_policy, node_at, read, refetched, replica, replica_with, resynced_for, signal,
};
use crate::support::control_plane::{node, OPS};
use crate::support::etcd::{have_etcdctl, EtcdCluster};
use crate::support::Origin;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_restore_from_a_backup_takes_a_new_epoch_and_keeps_the_purges_made_after_it() {
    if !have_etcdctl() {
        return;
    }
    let Some(mut etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    let a = replica(&etcd, "/restore/").await;
    let b = replica(&etcd, "/restore/").await;
    let n = node(&b, "on-b").await;
    assert_eq!(a.put_policy(next_policy(&o, 0), 0).await.0, 200);
    assert_eq!(a.purge(json!({"kind": "tag", "target": "before"})).await, 1);
    assert!(node_at(&b, 1, 1).await);
    assert_eq!(get(&n, "/p").await.0, 200);
    assert_eq!(get(&n, "/p").await.0, 200);
    assert_eq!(o.hits("/p"), 1, "the node caches /p");
    let epoch_before = read(&a, "/v1/snapshot").await["epoch"].clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let backup = dir.path().join("backup.db");
    etcd.snapshot_save(&backup);

    // After the backup, B (and so its node) hears nothing: A writes policy 2 and purges /p.
    signal(b.pid(), "-STOP");
    assert_eq!(a.put_policy(next_policy(&o, 1), 1).await.0, 200);
    let purged = a
        .purge(json!({"kind": "url", "target": "site.test/p"}))
        .await;
    assert_eq!(purged, 2);
    assert!(holds(&a, 2, 2).await);

    // etcd restored from the backup: same members, a new cluster id, its revision back at the
    // snapshot's.
    etcd.restore(&backup).await;
    signal(b.pid(), "-CONT");
    // (A sees the new cluster id, or first the epoch that B replaced)
    assert!(
        resynced_for(&a, &["cluster_changed", "epoch_changed"]).await,
        "A read everything again"
    );
    // The backup's policy is in force; the purge made after the backup is appended again in
    // the new epoch (by whichever replica saw the restore first; once).
    assert!(
        holds(&a, 1, 2).await,
        "{}",
        read(&a, "/v1/invalidations").await
    );
    assert!(
        holds(&b, 1, 2).await,
        "{}",
        read(&b, "/v1/invalidations").await
    );
    let epoch = read(&a, "/v1/snapshot").await["epoch"].clone();
    assert!(epoch.is_string() && epoch != epoch_before, "{epoch}");
    assert_eq!(read(&b, "/v1/snapshot").await["epoch"], epoch);
    let log = read(&a, "/v1/invalidations").await;
    let again = &log["invalidations"][1];
    assert_eq!(again["target"], json!("site.test/p"), "{log}");
    assert!(
        again["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("restored-")),
        "{log}"
    );
    assert_eq!(read(&b, "/v1/invalidations").await, log);
    // The node never heard of the purge before the restore: it refetches /p rather than serve
    // what was purged, and reports the new epoch's head.
    assert!(
        refetched(&n, &o, "/p", 2).await,
        "the node dropped /p, purged after the backup"
    );
    assert!(node_at(&b, 1, 2).await);
    // Writes go on from the backup's versions.
    assert_eq!(b.put_policy(next_policy(&o, 5), 1).await.0, 200);
    assert_eq!(a.purge(json!({"kind": "tag", "target": "after"})).await, 3);
    assert!(holds(&a, 2, 3).await && holds(&b, 2, 3).await);
}

#[tokio::test]
async fn reads_and_long_polls_are_answered_while_writes_are_stuck_without_a_quorum() {
    let Some(mut etcd) = EtcdCluster::start(3).await else {
        return;
    };
    let o = Origin::start("o").await;
    let a = replica_with(&etcd, "/stuck/", "threads: 2").await;
    assert_eq!(a.put_policy(next_policy(&o, 0), 0).await.0, 200);
    // writers purge in a loop until one is refused, so that when the quorum goes some write is
    // in its transaction
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = a.url("/v1/invalidations");
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in 0.. {
                    if answers.last().is_some_and(|&(s, _)| s != 202) {
                        break;
                    }
                    let r = crate::support::client()
                        .post(&url)
                        .bearer_auth(OPS)
                        .json(&json!({"kind": "tag", "target": format!("w{w}-{i}")}))
                        .send()
                        .await;
                    let status = r.map(|r| r.status().as_u16()).unwrap_or(0);
                    answers.push((status, i));
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.kill(0);
    etcd.kill(1);
    // a read, a snapshot and a long-poll at the head are answered while the writes wait
    let head = read(&a, "/v1/snapshot").await;
    let at = format!("{}.{}", head["policy_version"], head["seq"]);
    let epoch = head["epoch"].as_str().unwrap_or_default().to_string();
    let path = format!("/v1/snapshot?after={at}&epoch={epoch}&wait=500ms");
    let (status, v) = a.send("GET", &path, OPS, None, None).await;
    assert!(status == 204 || status == 200, "{status} {v}");
    assert_eq!(read(&a, "/v1/policy").await["version"], json!(1));
    let waiting = writers.iter().filter(|w| !w.is_finished()).count();
    assert!(
        waiting > 0,
        "the reads were answered while writes waited for a quorum"
    );
    for w in writers {
        let answers = w.await.expect("writer");
        // the write in flight when the quorum went is refused, never acknowledged
        assert_eq!(answers.last().map(|a| a.0), Some(503), "{answers:?}");
    }
}
