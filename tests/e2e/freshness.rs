//! Freshness you can prove: content classes and their budgets (`verge check` warnings), the
//! served-staleness metrics per class, and version-guarded purges across nodes.

use crate::support::process::verge_bin;
use std::process::Command;

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
