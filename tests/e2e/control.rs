//! `verge control` with nodes on loopback: versioned policy, purges by every kind, soft purges,
//! refusal of bad writes, persisted snapshots, and a control plane that keeps accepted writes.

use crate::support::config::Control;
use crate::support::fetch::cache_status_of;
use crate::support::metrics::metric_eventually;
use crate::support::process::verge_bin;
use crate::support::{client, eventually, ports, Config, Launch, Origin, Verge};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

const OPS: &str = "ops-token-0123456789abcdef";
const NODE: &str = "node-token-0123456789abcdef";
const PURGER: &str = "purge-token-0123456789abcdef";

/// A `verge control` process with its own data directory, restartable on the same port.
pub(crate) struct Cp {
    child: Child,
    pub(crate) addr: SocketAddr,
    config: PathBuf,
    pub(crate) dir: tempfile::TempDir,
}

impl Cp {
    pub(crate) async fn start() -> Cp {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = ports::addr();
        let yaml = format!(
            "listen: \"{addr}\"\ndata_dir: {d}/data\ntokens:\n  - {{name: ops, token: {OPS}, scopes: [read, policy:write, purge, purge:all]}}\n  - {{name: node, token: {NODE}, scopes: [read]}}\n  - {{name: purger, token: {PURGER}, scopes: [purge]}}\n",
            d = dir.path().display()
        );
        let config = dir.path().join("control.yaml");
        std::fs::write(&config, yaml).expect("write control config");
        std::fs::write(dir.path().join("node.token"), NODE).expect("token file");
        std::fs::write(dir.path().join("ops.token"), OPS).expect("token file");
        let mut cp = Cp {
            child: Launch::verge_with(&["control", "-c"]).spawn(&config),
            addr,
            config,
            dir,
        };
        cp.wait_ready().await;
        cp
    }

    async fn wait_ready(&mut self) {
        let url = self.url("/healthz");
        let ok = eventually(Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                client()
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .await;
        assert!(ok, "control plane not ready: {:?}", self.child.try_wait());
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn restart(&mut self) {
        self.kill();
        self.child = Launch::verge_with(&["control", "-c"]).spawn(&self.config);
        self.wait_ready().await;
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
        if_match: Option<u64>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = client().request(method, self.url(path)).bearer_auth(token);
        if let Some(v) = if_match {
            req = req.header("if-match", format!("\"{v}\""));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("control request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) async fn put_policy(&self, doc: Value, if_match: u64) -> (u16, Value) {
        self.send("PUT", "/v1/policy", OPS, Some(doc), Some(if_match))
            .await
    }

    pub(crate) async fn purge(&self, body: Value) -> u64 {
        let (status, v) = self
            .send("POST", "/v1/invalidations", OPS, Some(body), None)
            .await;
        assert_eq!(status, 202, "{v}");
        v["seq"].as_u64().expect("seq")
    }

    /// Wait until every one of `n` nodes reports the control plane's head.
    pub(crate) async fn converged(&self, n: usize) -> bool {
        eventually(Duration::from_secs(15), || async {
            let (_, v) = self.send("GET", "/v1/nodes", OPS, None, None).await;
            let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
            nodes.len() == n && nodes.iter().all(|x| x["current"] == json!(true))
        })
        .await
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn policy(origin: &Origin, route_cache: Value) -> Value {
    json!({
        "pools": {"o": {"backends": [origin.addr.to_string()]}},
        "routes": [{"hosts": ["*"], "pool": "o", "cache": route_cache}],
    })
}

async fn node(cp: &Cp, id: &str) -> Verge {
    let control = Control::new(
        &format!("http://{}", cp.addr),
        id,
        &cp.dir.path().join("node.token"),
    )
    .state_file("{dir}/snapshot.json")
    .wait("5s");
    Verge::start(&Config::new().control(control)).await
}

/// GET through a node; returns status, body and the response headers.
async fn get(v: &Verge, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
    let g = crate::support::get(v, "site.test", path).await;
    (g.status, g.body, g.headers)
}

#[tokio::test]
async fn policy_reaches_every_node_and_each_purge_kind_makes_them_refetch() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/tagged",
        &[
            ("surrogate-key", "product-7 sale"),
            ("cache-control", "max-age=300"),
        ],
    );
    let cp = Cp::start().await;
    let nodes = [
        node(&cp, "n1").await,
        node(&cp, "n2").await,
        node(&cp, "n3").await,
    ];
    // Before any policy a node has no routes.
    assert_eq!(get(&nodes[0], "/a").await.0, 404);
    let (status, v) = cp
        .put_policy(policy(&o, json!({"default_ttl": "300s"})), 0)
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(cp.converged(3).await, "nodes did not apply policy 1");

    let paths = ["/a", "/img/1.png", "/tagged", "/other"];
    let warm = |expect_new: bool| {
        let nodes = &nodes;
        let o = &o;
        async move {
            for n in nodes {
                for p in paths {
                    let before = o.hits(p);
                    let (status, _, headers) = get(n, p).await;
                    assert_eq!(status, 200);
                    assert!(
                        headers.get("surrogate-key").is_none(),
                        "tags are not shown to clients"
                    );
                    let _ = (before, expect_new);
                }
            }
        }
    };
    warm(true).await;
    for p in paths {
        assert_eq!(o.hits(p), 3, "{p}: one fetch per node");
    }
    warm(false).await;
    for p in paths {
        assert_eq!(o.hits(p), 3, "{p}: served from each node's cache");
    }

    // Each kind of purge: exactly the matching paths are refetched, once per node.
    let cases: [(Value, &[&str]); 4] = [
        (json!({"kind": "url", "target": "site.test/a"}), &["/a"]),
        (
            json!({"kind": "prefix", "target": "site.test/img/"}),
            &["/img/1.png"],
        ),
        (json!({"kind": "tag", "target": "product-7"}), &["/tagged"]),
        (json!({"kind": "host", "target": "site.test"}), &paths),
    ];
    for (body, hit) in cases {
        let before: Vec<u64> = paths.iter().map(|p| o.hits(p)).collect();
        cp.purge(body.clone()).await;
        assert!(cp.converged(3).await, "nodes did not apply {body}");
        warm(false).await;
        for (p, b) in paths.iter().zip(before) {
            let expected = if hit.contains(p) { b + 3 } else { b };
            assert_eq!(o.hits(p), expected, "{body}: {p}");
        }
    }
    let m = nodes[0].metrics().await;
    assert!(
        m.value("verge_cache_invalidated_total", &[("verdict", "hard")])
            .is_some(),
        "{}",
        m.text
    );
    assert_eq!(
        m.value("verge_policy_version", &[]),
        Some(1.0),
        "{}",
        m.text
    );
}

#[tokio::test]
async fn soft_purge_serves_stale_while_revalidating() {
    let o = Origin::start("o").await;
    o.set_headers(
        "/s",
        &[("cache-control", "max-age=300, stale-while-revalidate=60")],
    );
    let cp = Cp::start().await;
    let n = node(&cp, "soft").await;
    cp.put_policy(policy(&o, json!({})), 0).await;
    assert!(cp.converged(1).await);
    let (_, first, _) = get(&n, "/s").await;
    assert_eq!(o.hits("/s"), 1);
    cp.purge(json!({"kind": "url", "target": "site.test/s", "soft": true}))
        .await;
    assert!(cp.converged(1).await);
    let (status, body, headers) = get(&n, "/s").await;
    assert_eq!(status, 200);
    assert_eq!(body, first, "the stale copy is served at once");
    let cs = cache_status_of(&headers);
    assert!(cs.contains("fwd=stale"), "{cs}");
    assert!(
        eventually(Duration::from_secs(5), || async { o.hits("/s") == 2 }).await,
        "revalidated in the background"
    );
    let refreshed = eventually(Duration::from_secs(5), || async {
        get(&n, "/s").await.1 != first
    })
    .await;
    assert!(refreshed, "the refreshed copy replaces the stale one");
    assert_eq!(o.hits("/s"), 2);
}

#[tokio::test]
async fn a_purge_redelivered_with_its_id_purges_once() {
    let o = Origin::start("o").await;
    o.set_headers("/e", &[("cache-control", "max-age=300")]);
    let mut cp = Cp::start().await;
    let n = node(&cp, "idem").await;
    cp.put_policy(policy(&o, json!({})), 0).await;
    assert!(cp.converged(1).await);
    get(&n, "/e").await;
    let body = json!({"kind": "url", "target": "site.test/e", "id": "order-42-updated"});
    let (status, first) = cp
        .send("POST", "/v1/invalidations", OPS, Some(body.clone()), None)
        .await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["duplicate"], json!([false]));
    assert!(cp.converged(1).await);
    get(&n, "/e").await;
    assert_eq!(o.hits("/e"), 2, "purged once, refetched");
    // the pipeline delivers the same event again, at once and after a control-plane restart
    for restart in [false, true] {
        if restart {
            cp.restart().await;
        }
        let (status, again) = cp
            .send("POST", "/v1/invalidations", OPS, Some(body.clone()), None)
            .await;
        assert_eq!(status, 202, "{again}");
        assert_eq!(again["seq"], first["seq"], "the first seq comes back");
        assert_eq!(again["duplicate"], json!([true]));
        // nothing new to deliver: the node stays where it was
        let (_, log) = cp.send("GET", "/v1/invalidations", OPS, None, None).await;
        assert_eq!(
            log["invalidations"].as_array().map(Vec::len),
            Some(1),
            "{log}"
        );
        let (_, _, headers) = get(&n, "/e").await;
        let cs = cache_status_of(&headers);
        assert!(
            cs.contains("hit"),
            "the refilled object is not purged again: {cs}"
        );
        assert_eq!(o.hits("/e"), 2);
    }
    let (_, log) = cp.send("GET", "/v1/invalidations", OPS, None, None).await;
    assert_eq!(log["invalidations"][0]["id"], json!("order-42-updated"));
}

#[tokio::test]
async fn bad_writes_are_refused_and_change_nothing() {
    let o = Origin::start("o").await;
    let cp = Cp::start().await;
    let n = node(&cp, "strict").await;
    assert_eq!(cp.put_policy(policy(&o, json!({})), 0).await.0, 200);
    assert!(cp.converged(1).await);
    assert_eq!(get(&n, "/x").await.0, 200);

    // stale If-Match
    let (status, v) = cp.put_policy(policy(&o, json!({})), 0).await;
    assert_eq!(status, 412, "{v}");
    assert_eq!(v["current_version"], json!(1));
    // missing If-Match
    let (status, _) = cp
        .send("PUT", "/v1/policy", OPS, Some(policy(&o, json!({}))), None)
        .await;
    assert_eq!(status, 428);
    // invalid: every error listed, nothing written
    let bad = json!({"pools": {"o": {"backends": []}}, "routes": [{"hosts": ["bad host"], "pool": "none"}]});
    let (status, v) = cp.put_policy(bad, 1).await;
    assert_eq!(status, 422, "{v}");
    let paths: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"pools.o.backends")
            && paths.contains(&"routes[0].hosts[0]")
            && paths.contains(&"routes[0].pool"),
        "{paths:?}"
    );
    // tokens and scopes
    assert_eq!(
        cp.send("GET", "/v1/policy", "wrong-token-0000000000", None, None)
            .await
            .0,
        401
    );
    assert_eq!(
        cp.send(
            "PUT",
            "/v1/policy",
            NODE,
            Some(policy(&o, json!({}))),
            Some(1)
        )
        .await
        .0,
        403
    );
    let (status, _) = cp
        .send(
            "POST",
            "/v1/invalidations",
            PURGER,
            Some(json!({"kind": "all", "confirm": "all"})),
            None,
        )
        .await;
    assert_eq!(status, 403, "purge:all is its own scope");
    let (status, _) = cp
        .send(
            "POST",
            "/v1/invalidations",
            OPS,
            Some(json!({"kind": "all"})),
            None,
        )
        .await;
    assert_eq!(status, 400, "all needs confirm");
    let (status, _) = cp
        .send(
            "POST",
            "/v1/invalidations",
            PURGER,
            Some(json!({"kind": "host", "target": "not a host"})),
            None,
        )
        .await;
    assert_eq!(status, 400);

    let (_, v) = cp.send("GET", "/v1/policy", NODE, None, None).await;
    assert_eq!(v["version"], json!(1));
    assert_eq!(
        cp.send("GET", "/v1/invalidations", NODE, None, None)
            .await
            .1["invalidations"],
        json!([])
    );
    assert_eq!(
        get(&n, "/x").await.0,
        200,
        "the node keeps serving policy 1"
    );
}

#[tokio::test]
async fn restarts_keep_what_was_accepted_and_applied() {
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    let mut cp = Cp::start().await;
    let mut n = node(&cp, "durable").await;
    cp.put_policy(policy(&o, json!({})), 0).await;
    let seq = cp
        .purge(json!({"kind": "tag", "targets": ["a", "b"]}))
        .await;
    assert_eq!(seq, 2);
    assert!(cp.converged(1).await);

    // The control plane dies hard and comes back: every accepted write is there.
    cp.restart().await;
    let (_, v) = cp.send("GET", "/v1/policy", OPS, None, None).await;
    assert_eq!(v["version"], json!(1));
    let (_, v) = cp.send("GET", "/v1/invalidations", OPS, None, None).await;
    assert_eq!(v["invalidations"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        cp.purge(json!({"kind": "url", "target": "site.test/p"}))
            .await,
        3
    );
    assert!(cp.converged(1).await);

    // The node restarts while the control plane is down: it serves its persisted snapshot.
    cp.kill();
    n.restart().await;
    let (status, _, _) = get(&n, "/p").await;
    assert_eq!(status, 200, "routes come from the persisted policy");
    let (_, status_doc) = n.admin_get("/status").await;
    let s: Value = serde_json::from_str(&status_doc).unwrap();
    assert_eq!(s["control"]["policy_version"], json!(1));
    assert_eq!(s["control"]["invalidation_seq"], json!(3));
    assert_eq!(s["control"]["invalidations"], json!(3));
    // the node says it cannot reach the control plane
    metric_eventually(
        &n,
        Duration::from_secs(5),
        "verge_snapshot_rejected_total",
        &[("reason", "unreachable")],
        |v| v.is_some(),
    )
    .await;

    // The control plane returns; the node resumes from where it was.
    cp.restart().await;
    cp.purge(json!({"kind": "url", "target": "site.test/p"}))
        .await;
    assert!(
        cp.converged(1).await,
        "the node catches up after the outage"
    );
}

#[tokio::test]
async fn a_fetch_that_started_before_a_purge_is_not_served_as_fresh_after_it() {
    let o = Origin::start("o").await;
    o.set_headers("/slow", &[("cache-control", "max-age=300")]);
    let cp = Cp::start().await;
    let n = node(&cp, "inflight").await;
    cp.put_policy(policy(&o, json!({})), 0).await;
    assert!(cp.converged(1).await);
    o.set_delay_ms(1500);
    let url = n.url("/slow");
    let in_flight = tokio::spawn(async move {
        client()
            .get(url)
            .header("host", "site.test")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(eventually(Duration::from_secs(5), || async { o.hits("/slow") == 1 }).await);
    // The purge lands on the node while the origin is still answering.
    cp.purge(json!({"kind": "url", "target": "site.test/slow"}))
        .await;
    assert!(cp.converged(1).await);
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
    o.set_delay_ms(0);
    let (status, _, headers) = get(&n, "/slow").await;
    assert_eq!(status, 200);
    assert_eq!(
        o.hits("/slow"),
        2,
        "the copy fetched across the purge was not served: {headers:?}"
    );
    get(&n, "/slow").await;
    assert_eq!(o.hits("/slow"), 2, "the refetched copy is cached again");
}

#[tokio::test]
async fn operator_cli_pushes_rolls_back_purges_and_lists_nodes() {
    let o = Origin::start("o").await;
    let cp = Cp::start().await;
    let _n = node(&cp, "cli").await;
    let dir = cp.dir.path();
    let run = |args: &[&str], token: &str| {
        let out = std::process::Command::new(verge_bin())
            .args(args)
            .args(["--control", &format!("http://{}", cp.addr), "--token-file"])
            .arg(dir.join(token))
            .env("RUST_LOG", "error")
            .output()
            .expect("run verge");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let good = dir.join("policy.yaml");
    std::fs::write(
        &good,
        format!(
            "pools: {{o: {{backends: [\"{}\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: o}}]\n",
            o.addr
        ),
    )
    .unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "pools: {o: {backends: []}}\nroutes: [{hosts: [\"*\"], pool: x}]\n",
    )
    .unwrap();
    let good = good.to_str().unwrap();

    let (code, out, err) = run(&["policy", "push", good], "ops.token");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"version\": 1"), "{out}");
    let (code, _, err) = run(&["policy", "push", bad.to_str().unwrap()], "ops.token");
    assert_eq!(code, Some(2), "invalid locally: {err}");
    assert!(err.contains("routes[0].pool"), "{err}");
    let (code, _, _) = run(&["policy", "push", good, "--if-match", "0"], "ops.token");
    assert_eq!(code, Some(3), "stale version");
    let (code, _, _) = run(&["policy", "push", good], "node.token");
    assert_eq!(code, Some(4), "read-only token");
    assert_eq!(run(&["policy", "push", good], "ops.token").0, Some(0));
    let (code, out, _) = run(&["policy", "rollback", "1"], "ops.token");
    assert_eq!(code, Some(0));
    assert!(
        out.contains("\"rollback_of\": 1") && out.contains("\"version\": 3"),
        "{out}"
    );
    let (code, out, _) = run(&["policy", "history"], "ops.token");
    assert_eq!(code, Some(0));
    assert_eq!(out.matches("\"version\"").count(), 3, "{out}");

    let (code, out, err) = run(
        &["purge", "url", "site.test/a", "site.test/b", "--soft"],
        "ops.token",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"seq\": 2"), "{out}");
    assert_eq!(
        run(&["purge", "all"], "ops.token").0,
        Some(2),
        "all needs --confirm-all"
    );
    assert_eq!(
        run(&["purge", "all", "--confirm-all"], "ops.token").0,
        Some(0)
    );
    assert!(cp.converged(1).await);
    let (code, out, _) = run(&["nodes"], "ops.token");
    assert_eq!(code, Some(0));
    assert!(
        out.contains("\"node\": \"cli\"") && out.contains("\"seq\": 3"),
        "{out}"
    );
}

#[tokio::test]
async fn hard_purges_free_memory_in_the_background() {
    let o = Origin::start("o").await;
    let cp = Cp::start().await;
    let n = node(&cp, "reclaim").await;
    cp.put_policy(policy(&o, json!({"default_ttl": "300s"})), 0)
        .await;
    assert!(cp.converged(1).await);
    for i in 0..5 {
        get(&n, &format!("/r/{i}")).await;
    }
    get(&n, "/keep").await;
    let objects = "verge_cache_objects";
    assert_eq!(n.metrics().await.value(objects, &[]), Some(6.0));
    cp.purge(json!({"kind": "prefix", "target": "site.test/r/"}))
        .await;
    // No client asks for the purged URLs again: the memory still comes back.
    metric_eventually(&n, Duration::from_secs(10), objects, &[], |v| {
        v == Some(1.0)
    })
    .await;
    let m = n.metrics().await;
    assert_eq!(
        m.value("verge_cache_reclaimed_total", &[("cause", "invalidation")]),
        Some(5.0),
        "{}",
        m.text
    );
    let hits = o.hits("/keep");
    get(&n, "/keep").await;
    assert_eq!(o.hits("/keep"), hits, "entries not matched stay cached");
}
