//! A control channel that refuses what it cannot verify: snapshots signed by the control plane
//! and applied only when one of the node's keys verifies them (key rotation included); a state
//! file that carries the same checksum and signature and is refused, whole, when it does not
//! verify; a node without a good state file and without its control plane is not ready and
//! answers 503; purges limited by the token's scope, hosts and tenants; every API call audited.

use crate::support::config::Control;
use crate::support::control_plane::{
    key_pair, node, policy, sends_snapshot, Cp, CpConfig, NODE, OPS,
};
use crate::support::metrics::sum_eventually;
use crate::support::{client, get, Config, Origin, RawOrigin, Verge};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use verge::control::wire::{checksum, signature};

/// A node of `cp` that verifies snapshots with `keys`.
fn verifying(cp: &Cp, id: &str, keys: &[&Path]) -> Config {
    Config::new().control(cp.control(id).verify_keys(keys))
}

/// A node that is up but not ready: `/readyz` names the control plane, and a request gets 503
/// (the routes are not known yet), never a 404 or an origin's answer.
async fn assert_not_ready(v: &Verge, why: &str) {
    let (status, reason) = v.readyz().await;
    assert_eq!(status, 503, "{why}: {reason}");
    assert!(reason.contains("control plane"), "{why}: {reason}");
    let got = get(v, "site.test", "/x").await;
    assert_eq!(got.status, 503, "{why}: {}", got.body);
    assert!(got.body.contains("not ready"), "{why}: {}", got.body);
}

#[tokio::test]
async fn the_control_plane_signs_snapshots_and_a_node_applies_only_what_its_keys_verify() {
    let o = Origin::start("o").await;
    let keys = tempfile::tempdir().expect("dir");
    let (_, a_private, a_public) = key_pair(keys.path(), "a", 1);
    let (_, _, b_public) = key_pair(keys.path(), "b", 2);
    let cp = Cp::start_with(&CpConfig::new().signing_key(&a_private)).await;
    assert_eq!(cp.put_policy(policy(&o, json!({})), 0).await.0, 200);
    // the answer on the wire carries both fields
    let r = client()
        .get(cp.url("/v1/snapshot"))
        .bearer_auth(NODE)
        .send()
        .await
        .expect("snapshot");
    let field = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert!(field("verge-checksum").is_some_and(|v| v.starts_with("blake2b-256=")));
    assert!(field("verge-signature").is_some_and(|v| v.starts_with("ed25519=")));

    // the key itself, and a rotation where `b` is coming in and `a` still verifies
    let only_a = Verge::start(&verifying(&cp, "a", &[&a_public])).await;
    let rotating = Verge::start(&verifying(&cp, "ab", &[&b_public, &a_public])).await;
    assert!(cp.converged(2).await, "both nodes apply the signed policy");
    for n in [&only_a, &rotating] {
        let got = get(n, "site.test", "/x").await;
        assert_eq!((got.status, got.origin()), (200, "o"), "{}", got.body);
    }
    // a node that knows only `b` refuses everything this control plane sends
    let only_b = Verge::start_unready(&verifying(&cp, "b", &[&b_public])).await;
    sum_eventually(
        &only_b,
        Duration::from_secs(10),
        "verge_snapshot_rejected_total",
        &[("reason", "signature")],
        |n| n >= 1.0,
    )
    .await;
    assert_not_ready(&only_b, "signed by a key the node does not have").await;
    assert_eq!(
        o.hits("/x"),
        2,
        "only the two verifying nodes reached the origin"
    );
}

#[tokio::test]
async fn a_snapshot_altered_on_the_way_is_refused_even_with_a_fresh_checksum() {
    let o = Origin::start("o").await;
    let evil = Origin::start("evil").await;
    let keys = tempfile::tempdir().expect("dir");
    let (a, _, a_public) = key_pair(keys.path(), "a", 1);
    let (stranger, _, _) = key_pair(keys.path(), "s", 3);
    let message = |backend: std::net::SocketAddr| {
        serde_json::to_vec(&json!({
            "full": true, "policy_version": 1, "seq": 0, "retention_secs": 3600,
            "policy": {
                "pools": {"p": {"backends": [backend.to_string()]}},
                "routes": [{"hosts": ["*"], "pool": "p"}],
            },
        }))
        .expect("json")
    };
    std::fs::write(keys.path().join("t"), NODE).expect("token file");
    // a node that verifies with `a`, of a control plane that is `control`
    let node_of = |control: &RawOrigin| {
        let url = format!("http://{}", control.addr);
        let link = Control::new(&url, "n1", &keys.path().join("t"));
        Config::new().control(link.verify_keys(&[&a_public]).wait("1s"))
    };
    let legit = message(o.addr);
    let altered = message(evil.addr);
    // each with a checksum that matches what is sent: only the signature can tell
    let cases = [
        ("unsigned", altered.clone(), None),
        (
            "signed by a stranger",
            altered.clone(),
            Some(signature(&stranger, &altered)),
        ),
        (
            "the legit message's signature",
            altered.clone(),
            Some(signature(&a, &legit)),
        ),
    ];
    for (what, body, sig) in cases {
        let control = RawOrigin::start().await;
        control.set(
            "/v1/snapshot",
            sends_snapshot(body.clone(), checksum(&body), sig),
        );
        let v = Verge::start_unready(&node_of(&control)).await;
        sum_eventually(
            &v,
            Duration::from_secs(10),
            "verge_snapshot_rejected_total",
            &[("reason", "signature")],
            |n| n >= 1.0,
        )
        .await;
        assert_not_ready(&v, what).await;
    }
    assert_eq!(evil.hits("/x"), 0, "no altered policy was ever applied");
    // the same channel with the message the key signed
    let control = RawOrigin::start().await;
    control.set(
        "/v1/snapshot",
        sends_snapshot(legit.clone(), checksum(&legit), Some(signature(&a, &legit))),
    );
    let v = Verge::start(&node_of(&control)).await;
    let got = get(&v, "site.test", "/x").await;
    assert_eq!((got.status, got.origin()), (200, "o"), "{}", got.body);
}

/// The state file as the test reads it: the checksum line, then one JSON message per line.
fn read_state(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("state file");
    let (head, rest) = text.split_once('\n').expect("a checksum line");
    assert_eq!(
        head,
        format!("verge-state v1 {}", checksum(rest.as_bytes())),
        "the file's checksum covers every message"
    );
    rest.lines()
        .map(|l| serde_json::from_str(l).expect("message"))
        .collect()
}

/// Write messages back as a state file whose own checksum matches (as anyone able to write
/// the file could).
fn write_state(path: &Path, messages: &[Value]) {
    let rest: String = messages.iter().map(|m| format!("{m}\n")).collect();
    let text = format!("verge-state v1 {}\n{rest}", checksum(rest.as_bytes()));
    std::fs::write(path, text).expect("write state file");
}

#[tokio::test]
async fn a_state_file_rewritten_with_fresh_checksums_is_refused_when_signatures_are_required() {
    let o = Origin::start("o").await;
    let evil = Origin::start("evil").await;
    let keys = tempfile::tempdir().expect("dir");
    let (_, a_private, a_public) = key_pair(keys.path(), "a", 1);
    let mut cp = Cp::start_with(&CpConfig::new().signing_key(&a_private)).await;
    cp.put_policy(policy(&o, json!({})), 0).await;
    let mut n = Verge::start(&verifying(&cp, "n", &[&a_public])).await;
    assert!(cp.converged(1).await);
    let state = n.dir().join("snapshot.json");
    let good = std::fs::read(&state).expect("the node saved its snapshot");
    let messages = read_state(&state);
    assert_eq!(messages.len(), 1, "one full message");
    assert!(
        messages[0]["signature"]
            .as_str()
            .is_some_and(|s| s.starts_with("ed25519=")),
        "kept with the signature it came with: {}",
        messages[0]
    );
    cp.kill();

    // the policy pointed elsewhere, every checksum made to match, the signature kept
    let mut forged = messages.clone();
    let body = forged[0]["body"]
        .as_str()
        .expect("body")
        .replace(&o.addr.to_string(), &evil.addr.to_string());
    forged[0]["checksum"] = json!(checksum(body.as_bytes()));
    forged[0]["body"] = json!(body);
    write_state(&state, &forged);
    n.restart_unready().await;
    assert_not_ready(&n, "a forged state file").await;
    sum_eventually(
        &n,
        Duration::from_secs(5),
        "verge_snapshot_rejected_total",
        &[("reason", "state_file")],
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(evil.hits("/x"), 0);

    // the file as the node wrote it is restored with the control plane still down
    std::fs::write(&state, &good).expect("restore");
    n.restart().await;
    let got = get(&n, "site.test", "/x").await;
    assert_eq!((got.status, got.origin()), (200, "o"), "{}", got.body);
    cp.restart().await;
    assert!(cp.converged(1).await, "and catches up when it returns");
}

#[tokio::test]
async fn a_missing_truncated_or_corrupt_state_file_without_the_control_plane_means_not_ready() {
    let o = Origin::start("o").await;
    let mut cp = Cp::start().await;
    cp.put_policy(policy(&o, json!({})), 0).await;
    let mut n = node(&cp, "n").await;
    assert!(cp.converged(1).await);
    cp.purge(json!({"kind": "url", "target": "site.test/gone"}))
        .await;
    assert!(cp.converged(1).await);
    let state = n.dir().join("snapshot.json");
    assert_eq!(
        read_state(&state).len(),
        2,
        "the full message, then the purge's delta"
    );
    let good = std::fs::read(&state).expect("the node saved its snapshot");
    cp.kill();

    let mut flipped = good.clone();
    let middle = good.len() / 2;
    flipped[middle] ^= 0x04;
    let mut bad_sum = good.clone();
    let at = "verge-state v1 blake2b-256=".len();
    bad_sum[at] = if good[at] == b'a' { b'b' } else { b'a' };
    let mut bad_message_sum = read_state(&state);
    bad_message_sum[0]["checksum"] = json!(checksum(b"another body"));
    let cases: [(&str, Option<Vec<u8>>); 4] = [
        ("missing", None),
        ("truncated", Some(good[..good.len() - 20].to_vec())),
        ("one bit flipped", Some(flipped)),
        ("the file's checksum altered", Some(bad_sum)),
    ];
    for (what, bytes) in cases {
        match bytes {
            None => std::fs::remove_file(&state).expect("remove"),
            Some(b) => std::fs::write(&state, b).expect("write"),
        }
        n.restart_unready().await;
        assert_not_ready(&n, what).await;
        let refused = n
            .metrics()
            .await
            .sum("verge_snapshot_rejected_total", &[("reason", "state_file")]);
        let expected = if what == "missing" { 0.0 } else { 1.0 };
        assert_eq!(refused, expected, "{what}: counted as a refused state file");
    }
    // a message whose own checksum does not match, in a file whose checksum does
    write_state(&state, &bad_message_sum);
    n.restart_unready().await;
    assert_not_ready(&n, "a message's checksum altered").await;

    // the good file: ready with the control plane down, its invalidations included
    std::fs::write(&state, &good).expect("restore");
    n.restart().await;
    assert_eq!(get(&n, "site.test", "/x").await.status, 200);
    let (_, status) = n.admin_get("/status").await;
    let status: Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["control"]["invalidation_seq"], json!(1), "{status}");
    cp.restart().await;
    cp.purge(json!({"kind": "url", "target": "site.test/x"}))
        .await;
    assert!(cp.converged(1).await);
}

/// Purge through the API with `token`; the status.
async fn purge_as(cp: &Cp, token: &str, body: Value) -> u16 {
    cp.send("POST", "/v1/invalidations", token, Some(body), None)
        .await
        .0
}

#[tokio::test]
async fn a_token_purges_only_within_its_scope_and_hosts_and_every_call_is_audited() {
    const NARROW: &str = "narrow-token-0123456789abcdef";
    const SHOP: &str = "shop-token-0123456789abcdef";
    const BLOGS: &str = "blogs-token-0123456789abcdef";
    let o = Origin::start("o").await;
    o.set_headers("/a", &[("cache-control", "max-age=300")]);
    let cp = Cp::start_with(
        &CpConfig::new()
            .token("narrow", NARROW, &["purge:url"], &[])
            .token("shop", SHOP, &["purge"], &["shop.test", "*.shop.test"])
            .yaml("tenants: {blogs: [blog.test, '*.blog.test']}")
            .tenant_token("blogs", BLOGS, &["purge:url"], &["blogs"])
            .audit_log("audit/control.jsonl"),
    )
    .await;
    cp.put_policy(policy(&o, json!({})), 0).await;
    let n = node(&cp, "n").await;
    assert!(cp.converged(1).await);
    get(&n, "site.test", "/a").await;

    let url = |target: &str| json!({"kind": "url", "target": target});
    let prefix = |target: &str| json!({"kind": "prefix", "target": target});
    let host = |target: &str| json!({"kind": "host", "target": target});
    let tag = json!({"kind": "tag", "target": "product-7"});
    let calls: Vec<(&str, &str, Value, u16)> = vec![
        // a URL, a tag or a prefix below the root: purge:url is enough
        ("narrow", NARROW, prefix("site.test/img/"), 202),
        ("narrow", NARROW, tag.clone(), 202),
        // a whole host, or a prefix that covers one: not with purge:url
        ("narrow", NARROW, host("site.test"), 403),
        ("narrow", NARROW, prefix("site.test/"), 403),
        // limited to its hosts (a tag reaches every host)
        ("shop", SHOP, host("shop.test"), 202),
        ("shop", SHOP, url("cdn.shop.test/a.css"), 202),
        ("shop", SHOP, url("site.test/a"), 403),
        ("shop", SHOP, tag.clone(), 403),
        // limited to its tenant's hosts
        ("blogs", BLOGS, url("www.blog.test/post"), 202),
        ("blogs", BLOGS, url("shop.test/a"), 403),
        ("blogs", BLOGS, host("blog.test"), 403),
        (
            "unknown",
            "wrong-token-0123456789abcdef",
            url("site.test/a"),
            401,
        ),
    ];
    for (name, token, body, expected) in &calls {
        assert_eq!(
            purge_as(&cp, token, body.clone()).await,
            *expected,
            "{name}: {body}"
        );
    }
    // nothing refused reached the log or the node: /a is still a hit
    let (_, log) = cp.send("GET", "/v1/invalidations", OPS, None, None).await;
    assert_eq!(
        log["invalidations"].as_array().map(Vec::len),
        Some(5),
        "{log}"
    );
    assert!(cp.converged(1).await);
    get(&n, "site.test", "/a").await;
    assert_eq!(o.hits("/a"), 1, "refused purges purged nothing");
    // the narrow token's own URL purge does purge
    assert_eq!(purge_as(&cp, NARROW, url("site.test/a")).await, 202);
    assert!(cp.converged(1).await);
    get(&n, "site.test", "/a").await;
    assert_eq!(o.hits("/a"), 2);

    let audit =
        std::fs::read_to_string(cp.dir.path().join("audit/control.jsonl")).expect("the audit log");
    let purges: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("one JSON object per line"))
        .filter(|e| e["request"]["path"] == "/v1/invalidations" && e["request"]["method"] == "POST")
        .collect();
    assert_eq!(purges.len(), calls.len() + 1, "{audit}");
    for (entry, (name, _, body, status)) in purges.iter().zip(&calls) {
        let token = if *status == 401 {
            Value::Null
        } else {
            json!(name)
        };
        assert_eq!(entry["token"], token, "{entry}");
        assert_eq!(&entry["request"]["body"], body, "{entry}");
        assert_eq!(entry["status"], json!(status), "{entry}");
        assert!(
            entry["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{entry}"
        );
        if *status == 202 {
            assert!(entry["answer"]["seq"].is_u64(), "{entry}");
        } else {
            assert!(entry["answer"]["error"].is_string(), "{entry}");
        }
    }
    // the other calls are there too: the node's polls and receipts, the policy write
    let has = |method: &str, path: &str, token: &str| {
        audit.lines().any(|l| {
            let e: Value = serde_json::from_str(l).unwrap_or_default();
            e["request"]["method"] == method && e["request"]["path"] == path && e["token"] == token
        })
    };
    assert!(has("PUT", "/v1/policy", "ops"), "{audit}");
    assert!(has("GET", "/v1/snapshot", "node"), "{audit}");
    assert!(has("POST", "/v1/nodes/n/applied", "node"), "{audit}");
}
