//! Freshness you can prove: content classes and their budgets (`verge check` warnings), the
//! served-staleness metrics per class, and version-guarded purges across nodes.

use crate::support::metrics::sum_eventually;
use crate::support::process::verge_bin;
use crate::support::{fetch, Config, Metrics, Origin, Pool, Route, RouteCache, Verge};
use std::process::Command;
use std::time::Duration;

/// `verge check` names a route whose TTL and stale windows exceed its class's budget, as a
/// warning (exit 0), and refuses a route naming an unknown class, at its key path (exit 2).
#[test]
fn check_warns_over_budget_and_refuses_unknown_classes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("classes.yaml");
    std::fs::write(
        &path,
        r#"
listeners: [{listen: "127.0.0.1:8080"}]
pools: {web: {backends: ["127.0.0.1:9000"]}}
classes:
  prices: {budget: 30s}
  assets: {budget: 2d}
routes:
  - {hosts: [a.com], pool: web, class: prices,
     cache: {max_ttl: 20s, stale_while_revalidate: 5s, stale_if_error: 30s,
             stale_if_disconnected: 0s}}
  - {hosts: [b.com], pool: web, class: prices,
     cache: {max_ttl: 10s, stale_while_revalidate: 5s, stale_if_disconnected: 0s}}
  - {hosts: [c.com], pool: web, class: assets, cache: {max_ttl: 1h}}
"#,
    )
    .expect("write");
    let out = Command::new(verge_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run verge check");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("classes.yaml: ok"), "{stdout}");
    assert!(stderr.contains("classes.yaml: 1 warning"), "{stderr}");
    assert!(
        stderr.contains(
            "routes[0].cache: TTL 20s plus stale_if_error 30s is 50s, over class \"prices\"'s \
             budget of 30s"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("routes[1]"), "within budget: {stderr}");
    assert!(!stderr.contains("routes[2]"), "within budget: {stderr}");

    let bad = dir.path().join("policy.yaml");
    std::fs::write(
        &bad,
        r#"
pools: {web: {backends: ["127.0.0.1:9000"]}}
classes: {pages: {budget: 1m}}
routes:
  - {hosts: [a.com], pool: web, class: prices, cache: {}}
"#,
    )
    .expect("write");
    let out = Command::new(verge_bin())
        .args(["check", "--policy", "-c"])
        .arg(&bad)
        .output()
        .expect("run verge check --policy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr
            .contains("routes[0].class: unknown class \"prices\" (declared under classes: pages)"),
        "{stderr}"
    );
}

/// A histogram bucket's count (`le` as Prometheus writes it).
fn bucket(m: &Metrics, name: &str, labels: &[(&str, &str)], le: &str) -> f64 {
    let mut all = labels.to_vec();
    all.push(("le", le));
    m.value(&format!("{name}_bucket"), &all).unwrap_or(0.0)
}

/// Every state an answer from the cache can be in is counted under its route's class, with how
/// far past expiry the stale ones were and how far through their lifetime all of them were.
/// Entries are made stale by an upstream `Age`, not by sleeping.
#[tokio::test]
async fn every_served_state_is_counted_per_class_with_its_staleness() {
    let o = Origin::start("o").await;
    // fresh: a quarter of its 60 s lifetime gone on arrival
    o.set_headers(
        "/p/fresh",
        &[("cache-control", "max-age=60"), ("age", "15")],
    );
    // stale by 35 s on arrival, each with one way to be served stale
    let stale = |extra: &str| format!("max-age=10{extra}");
    let swr = stale(", stale-while-revalidate=600");
    let sie = stale(", stale-if-error=600");
    o.set_headers("/p/swr", &[("cache-control", &swr), ("age", "45")]);
    o.set_headers("/p/sie", &[("cache-control", &sie), ("age", "45")]);
    o.set_headers(
        "/p/reval",
        &[("cache-control", "max-age=10"), ("age", "45")],
    );
    o.set_etag("/p/reval", "\"r1\"");
    o.set_headers("/plain", &[("cache-control", "max-age=60")]);
    let v = Verge::start(
        &Config::new()
            .raw("classes: {prices: {budget: 1h}}")
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .name("priced")
                    .path("/p")
                    .cache(RouteCache::new().set("stale_if_disconnected", "0s"))
                    .set("class", "prices"),
            )
            .route(Route::to("p").name("plain").cache(RouteCache::new())),
    )
    .await;
    for path in ["/p/fresh", "/p/swr", "/p/sie", "/p/reval", "/plain"] {
        let first = fetch(&v, path, &[]).await;
        assert!(
            first.cache_status.contains("fwd=uri-miss"),
            "{path}: {}",
            first.cache_status
        );
    }
    let fresh = fetch(&v, "/p/fresh", &[]).await;
    assert!(
        fresh.cache_status.contains("; hit"),
        "{}",
        fresh.cache_status
    );
    let swr = fetch(&v, "/p/swr", &[]).await;
    assert!(
        swr.cache_status.contains("hit; fwd=stale"),
        "{}",
        swr.cache_status
    );
    let reval = fetch(&v, "/p/reval", &[]).await;
    assert!(
        reval.cache_status.contains("fwd-status=304"),
        "{}",
        reval.cache_status
    );
    assert_eq!(o.not_modified("/p/reval"), 1);
    let plain = fetch(&v, "/plain", &[]).await;
    assert!(
        plain.cache_status.contains("; hit"),
        "{}",
        plain.cache_status
    );
    // the SWR refresh has gone out before the origin stops
    let refreshed =
        crate::support::eventually(Duration::from_secs(10), || async { o.hits("/p/swr") == 2 })
            .await;
    assert!(
        refreshed,
        "the stale-while-revalidate refresh reached the origin"
    );
    o.set_status("/p/sie", 500);
    let sie = fetch(&v, "/p/sie", &[]).await;
    assert_eq!(sie.status, 200, "served stale instead of the origin's 500");
    assert!(
        sie.cache_status.contains("hit; fwd=stale"),
        "{}",
        sie.cache_status
    );

    let served = "verge_cache_served_total";
    let prices = |state| [("class", "prices"), ("state", state)];
    let m = sum_eventually(
        &v,
        Duration::from_secs(5),
        served,
        &[("class", "prices")],
        |n| n == 4.0,
    )
    .await;
    for state in [
        "fresh",
        "stale-while-revalidate",
        "stale-if-error",
        "revalidated",
    ] {
        assert_eq!(m.value(served, &prices(state)), Some(1.0), "{state}");
    }
    assert_eq!(
        m.value(served, &[("class", "none"), ("state", "fresh")]),
        Some(1.0),
        "a route without a class counts as none"
    );
    // 35 s past expiry (plus the test's own time), for both stale answers only
    let past = "verge_cache_served_stale_seconds";
    for state in ["stale-while-revalidate", "stale-if-error"] {
        let labels = prices(state);
        assert_eq!(bucket(&m, past, &labels, "30"), 0.0, "{state}");
        assert_eq!(bucket(&m, past, &labels, "60"), 1.0, "{state}");
        assert_eq!(bucket(&m, past, &labels, "+Inf"), 1.0, "{state}");
    }
    assert!(!m.has(&format!("{past}_count"), &prices("fresh")));
    assert!(!m.has(&format!("{past}_count"), &prices("revalidated")));
    // age ÷ lifetime: the fresh hit a quarter in (and a little), the stale ones 4.5 times over
    let ratio = "verge_cache_served_age_ratio";
    let class = [("class", "prices")];
    assert_eq!(bucket(&m, ratio, &class, "0.25"), 0.0);
    assert_eq!(bucket(&m, ratio, &class, "0.5"), 1.0, "the fresh hit");
    assert_eq!(
        bucket(&m, ratio, &class, "1"),
        1.0,
        "only the fresh hit was within its lifetime"
    );
    assert_eq!(bucket(&m, ratio, &class, "5"), 4.0);
    assert_eq!(
        m.sum("verge_cache_served_after_invalidation_total", &[]),
        0.0,
        "no answer came from a purged entry"
    );
}

/// A purge carrying the origin object's new version (`expected_version`: its ETag) removes the
/// entries of older versions and keeps those that already carry it, on every node; a late
/// duplicate of it evicts nothing fetched since, and a redelivery by id counts once in the
/// apply lag.
#[tokio::test]
async fn a_version_guarded_purge_removes_older_entries_and_keeps_newer_ones_on_three_nodes() {
    use crate::support::control_plane::{node, policy, Cp, OPS};
    use serde_json::json;
    let o = Origin::start("o").await;
    o.set_headers("/v", &[("cache-control", "max-age=300")]);
    o.set_etag("/v", "\"v1\"");
    let cp = Cp::start().await;
    let nodes = [
        node(&cp, "n1").await,
        node(&cp, "n2").await,
        node(&cp, "n3").await,
    ];
    let (status, body) = cp.put_policy(policy(&o, json!({})), 0).await;
    assert_eq!(status, 200, "{body}");
    assert!(cp.converged(3).await, "nodes did not apply the policy");
    let get = |i: usize| crate::support::get(&nodes[i], "site.test", "/v");
    // n1 and n2 hold version 1; the origin moves on, and n3 fetches version 2
    for i in [0, 1] {
        assert_eq!(get(i).await.header("etag"), Some("\"v1\""));
    }
    o.set_etag("/v", "\"v2\"");
    assert_eq!(get(2).await.header("etag"), Some("\"v2\""));
    assert_eq!(o.hits("/v"), 3);

    let purge = json!({"kind": "url", "target": "site.test/v", "expected_version": "\"v2\"",
                       "id": "v2-published"});
    let (status, first) = cp
        .send("POST", "/v1/invalidations", OPS, Some(purge.clone()), None)
        .await;
    assert_eq!(status, 202, "{first}");
    assert!(cp.converged(3).await, "nodes did not apply the purge");
    let after: Vec<_> = [get(0).await, get(1).await, get(2).await].into();
    for (i, g) in after.iter().enumerate() {
        assert_eq!(g.header("etag"), Some("\"v2\""), "n{}", i + 1);
    }
    assert!(
        after[0].cache_status.contains("fwd=uri-miss"),
        "{}",
        after[0].cache_status
    );
    assert!(
        after[1].cache_status.contains("fwd=uri-miss"),
        "{}",
        after[1].cache_status
    );
    assert!(
        after[2].cache_status.contains("; hit"),
        "n3 kept version 2: {}",
        after[2].cache_status
    );
    assert_eq!(o.hits("/v"), 5, "n1 and n2 refetched, n3 did not");

    // the pipeline redelivers the event (same id: nothing new), then a late copy without an id
    let (status, again) = cp
        .send("POST", "/v1/invalidations", OPS, Some(purge.clone()), None)
        .await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["duplicate"], json!([true]));
    let late = json!({"kind": "url", "target": "site.test/v", "expected_version": "W/\"v2\""});
    let late_seq = cp.purge(late).await;
    assert_eq!(
        late_seq,
        first["seq"].as_u64().expect("seq") + 1,
        "a new invalidation"
    );
    assert!(cp.converged(3).await, "nodes did not apply the late purge");
    for i in 0..3 {
        let g = get(i).await;
        assert!(
            g.cache_status.contains("; hit"),
            "n{}: {}",
            i + 1,
            g.cache_status
        );
    }
    assert_eq!(o.hits("/v"), 5, "the late purge evicted nothing fresh");

    // an unguarded purge still removes everything
    cp.purge(json!({"kind": "url", "target": "site.test/v"}))
        .await;
    assert!(cp.converged(3).await);
    for i in 0..3 {
        assert!(get(i).await.cache_status.contains("fwd=uri-miss"));
    }
    assert_eq!(o.hits("/v"), 8);

    for n in &nodes {
        let m = n.metrics().await;
        // three invalidations applied, the redelivery not among them
        assert_eq!(
            m.value("verge_invalidation_apply_lag_seconds_count", &[]),
            Some(3.0),
            "{}",
            m.text
        );
        assert_eq!(
            m.sum("verge_cache_served_after_invalidation_total", &[]),
            0.0
        );
    }

    // a guard on anything but one URL is refused, with the reason
    for bad in [
        json!({"kind": "prefix", "target": "site.test/", "expected_version": "\"v2\""}),
        json!({"kind": "url", "targets": ["site.test/a", "site.test/b"], "expected_version": "\"v2\""}),
        json!({"kind": "url", "target": "site.test/v", "expected_version": "\"a b\""}),
    ] {
        let (status, v) = cp
            .send("POST", "/v1/invalidations", OPS, Some(bad.clone()), None)
            .await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
}

/// `verge verify` asks each node's admin listener what it would serve, without any node
/// fetching from the origin, and names the node kept behind on an older version.
#[tokio::test]
async fn verify_names_the_node_that_serves_an_older_version() {
    let o = Origin::start("o").await;
    o.set_headers("/v", &[("cache-control", "max-age=300")]);
    o.set_etag("/v", "\"v1\"");
    let nodes = [
        crate::support::cached_verge(o.addr, RouteCache::new()).await,
        crate::support::cached_verge(o.addr, RouteCache::new()).await,
        crate::support::cached_verge(o.addr, RouteCache::new()).await,
    ];
    // the third node caches version 1; the origin moves on before the others fetch
    assert_eq!(
        fetch(&nodes[2], "/v", &[]).await.header("etag"),
        Some("\"v1\"")
    );
    o.set_etag("/v", "\"v2\"");
    for n in &nodes[..2] {
        assert_eq!(fetch(n, "/v", &[]).await.header("etag"), Some("\"v2\""));
    }
    let hits = o.hits("/v");
    let verify = |extra: &[&str]| {
        let mut cmd = Command::new(verge_bin());
        cmd.args(["verify", "c.test/v", "c.test/never-fetched"]);
        for n in &nodes {
            cmd.args(["--node", &n.admin.to_string()]);
        }
        cmd.args(extra).output().expect("run verge verify")
    };
    for extra in [&[][..], &["--expected-version", "\"v2\""][..]] {
        let out = verify(extra);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stdout}");
        let behind = format!("c.test/v\t{}\tfresh\t\"v1\"", nodes[2].admin);
        let line = stdout.lines().find(|l| l.starts_with(&behind));
        assert!(
            line.is_some_and(|l| l.ends_with("serves version v1, not v2")),
            "{extra:?}: {stdout}"
        );
        for n in &nodes[..2] {
            let ok = format!("c.test/v\t{}\tfresh\t\"v2\"", n.admin);
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(&ok) && l.ends_with("\tok")),
                "{stdout}"
            );
        }
        // a URL no node holds is a miss everywhere, not a divergence
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.starts_with("c.test/never-fetched\t")
                    && l.contains("\tmiss\t")
                    && l.ends_with("\tok"))
                .count(),
            3,
            "{stdout}"
        );
    }
    let out = verify(&["--expected-version", "\"v1\"", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["divergent"], 2, "{doc}");
    assert_eq!(
        o.hits("/v"),
        hits,
        "no node fetched from the origin to answer"
    );
    // all on one version: nothing diverges
    let one = [&nodes[0], &nodes[1]];
    let out = Command::new(verge_bin())
        .args(["verify", "c.test/v", "--node", &one[0].admin.to_string()])
        .args(["--node", &one[1].admin.to_string()])
        .output()
        .expect("run verge verify");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
