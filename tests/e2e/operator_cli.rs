//! The operator CLI run as a process against `verge control` and its nodes: tables on a
//! terminal and JSON for scripts, `policy get` pushed back as it is, old versions and diffs,
//! identical pushes that write nothing, `purge --wait`, nodes alive, late or dead, nodes that
//! report again after a control-plane restart, and each process exporting only its own series.

use crate::control::get;
use crate::support::control_plane::{node_polling, policy, Cp, PURGER};
use crate::support::process::verge_bin;
use crate::support::{assert_eventually, eventually, Metrics, Origin};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// What one run of the CLI printed, and its exit code.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) code: Option<i32>,
    pub(crate) out: String,
    pub(crate) err: String,
}

impl Ran {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

fn args_for(cp: &Cp, args: &[&str], token: &str) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.push("--control".into());
    all.push(format!("http://{}", cp.addr));
    all.push("--token-file".into());
    all.push(cp.dir.path().join(token).display().to_string());
    all
}

fn ran(out: std::process::Output) -> Ran {
    Ran {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `verge ARGS` against `cp` with the token in `token` (a file in its directory); stdout is a
/// pipe, as in a script.
pub(crate) fn cli(cp: &Cp, args: &[&str], token: &str) -> Ran {
    ran(Command::new(verge_bin())
        .args(args_for(cp, args, token))
        .env("RUST_LOG", "error")
        .output()
        .expect("run verge"))
}

/// The same with stdout on a terminal: `script` runs it on a pseudo-terminal.
fn cli_on_terminal(cp: &Cp, args: &[&str], token: &str) -> Ran {
    let mut line = format!("'{}'", verge_bin().display());
    for a in args_for(cp, args, token) {
        line.push_str(&format!(" '{a}'"));
    }
    let r = ran(Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("RUST_LOG", "error")
        .output()
        .expect("run script"));
    Ran {
        out: r.out.replace('\r', ""),
        ..r
    }
}

/// A node's row in `verge nodes --json`.
fn node_row(cp: &Cp, id: &str) -> Value {
    let listed = cli(cp, &["nodes", "--json"], "ops.token").json();
    listed["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["node"] == json!(id)).cloned())
        .unwrap_or(Value::Null)
}

/// Whether `text` carries an epoch-milliseconds number (13 digits): times must be readable.
fn has_epoch_ms(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|d| d.len() == 13)
}

#[tokio::test]
async fn nodes_are_alive_late_or_dead_by_report_age_against_their_poll_interval() {
    let o = Origin::start("o").await;
    let cp = Cp::start().await;
    // long polls of 2 s: alive up to 4 s after the last report, late up to 8 s, then dead
    let a = node_polling(&cp, "stays", "2s").await;
    let b = node_polling(&cp, "goes", "2s").await;
    assert_eq!(cp.put_policy(policy(&o, json!({})), 0).await.0, 200);
    assert!(cp.converged(2).await);

    // an idle node keeps reporting: still alive after several poll intervals
    tokio::time::sleep(Duration::from_secs(5)).await;
    let row = node_row(&cp, "stays");
    assert_eq!(row["state"], json!("alive"), "{row}");
    assert_eq!(row["poll_interval_seconds"], json!(2.0), "{row}");
    assert!(
        row["reported"].as_str().is_some_and(|t| t.ends_with('Z')),
        "RFC 3339: {row}"
    );
    assert!(row.get("reported_ms").is_none(), "{row}");

    drop(b);
    assert_eventually(
        Duration::from_secs(15),
        "the stopped node is late",
        || async { node_row(&cp, "goes")["state"].clone() },
        |s| s == "late",
    )
    .await;
    assert_eventually(
        Duration::from_secs(15),
        "the stopped node is dead",
        || async { node_row(&cp, "goes")["state"].clone() },
        |s| s == "dead",
    )
    .await;
    assert_eq!(node_row(&cp, "stays")["state"], json!("alive"));

    // people get a table: piped, times in RFC 3339 ...
    let piped = cli(&cp, &["nodes"], "ops.token");
    assert_eq!(piped.code, Some(0), "{piped:?}");
    let lines: Vec<&str> = piped.out.lines().collect();
    assert!(lines[0].starts_with("head 1.0"), "{}", piped.out);
    assert!(
        lines[1].starts_with("NODE") && lines[1].contains("STATE"),
        "{}",
        piped.out
    );
    let goes = lines.iter().find(|l| l.starts_with("goes")).expect("row");
    let stays = lines.iter().find(|l| l.starts_with("stays")).expect("row");
    assert!(
        goes.contains(" dead ") && stays.contains(" alive "),
        "{}",
        piped.out
    );
    assert!(stays.contains('T') && stays.contains('Z'), "{}", piped.out);
    assert!(!has_epoch_ms(&piped.out), "{}", piped.out);
    // ... and on a terminal, ages
    let tty = cli_on_terminal(&cp, &["nodes"], "ops.token");
    assert_eq!(tty.code, Some(0), "{tty:?}");
    let stays = tty
        .out
        .lines()
        .find(|l| l.starts_with("stays"))
        .expect("row");
    assert!(stays.contains(" ago"), "{}", tty.out);
    assert!(!has_epoch_ms(&tty.out), "{}", tty.out);
    drop(a);
}

#[tokio::test]
async fn nodes_report_again_after_a_control_plane_restart() {
    let o = Origin::start("o").await;
    let mut cp = Cp::start().await;
    let n = node_polling(&cp, "survivor", "5s").await;
    assert_eq!(cp.put_policy(policy(&o, json!({})), 0).await.0, 200);
    assert!(cp.converged(1).await);
    // the control plane forgets its nodes when it restarts; nothing is written afterwards,
    // so only the node's own reports can bring it back into the list
    cp.restart().await;
    let row = assert_eventually(
        Duration::from_secs(15),
        "the node reports to the restarted control plane",
        || async { node_row(&cp, "survivor") },
        |r| r["state"] == "alive",
    )
    .await;
    assert_eq!(
        (row["policy_version"].clone(), row["current"].clone()),
        (json!(1), json!(true))
    );
    assert_eq!(get(&n, "/x").await.0, 200);
}

#[tokio::test]
async fn policy_get_pushes_back_as_it_is_and_old_versions_can_be_read_and_compared() {
    let o1 = Origin::start("o1").await;
    let o2 = Origin::start("o2").await;
    let cp = Cp::start().await;
    let n = node_polling(&cp, "p", "5s").await;
    let dir = cp.dir.path();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let first = file(
        "first.yaml",
        &format!(
            "pools: {{o: {{backends: [\"{}\"]}}}}\nroutes: [{{hosts: [\"*\"], pool: o, cache: {{default_ttl: 300s}}}}]\n",
            o1.addr
        ),
    );
    let pushed = cli(&cp, &["policy", "push", &first], "ops.token");
    assert_eq!(pushed.code, Some(0), "{pushed:?}");
    assert_eq!(pushed.out, "policy version 1 written\n");

    // `policy get` (YAML, with its version in comments) pushed back as it is: nothing written
    let got = cli(&cp, &["policy", "get"], "ops.token");
    assert_eq!(got.code, Some(0), "{got:?}");
    assert!(
        got.out.starts_with("# verge policy version 1, written "),
        "{}",
        got.out
    );
    assert!(!has_epoch_ms(&got.out), "{}", got.out);
    let again = cli(
        &cp,
        &["policy", "push", &file("got.yaml", &got.out)],
        "ops.token",
    );
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(
        again.out.starts_with("policy unchanged: version 1"),
        "{}",
        again.out
    );
    // the same with --json
    let got_json = cli(&cp, &["policy", "get", "--json"], "ops.token");
    assert_eq!(got_json.json()["version"], json!(1));
    assert!(got_json.json()["written"].is_string(), "{}", got_json.out);
    let again = cli(
        &cp,
        &["policy", "push", &file("got.json", &got_json.out), "--json"],
        "ops.token",
    );
    assert_eq!(again.json(), json!({"version": 1, "unchanged": true}));
    let history = cli(&cp, &["policy", "history", "--json"], "ops.token").json();
    assert_eq!(
        history["versions"].as_array().map(Vec::len),
        Some(1),
        "{history}"
    );

    // a real change is a new version; the node follows
    let second = got
        .out
        .replace(&o1.addr.to_string(), &o2.addr.to_string())
        .replace("300s", "60s");
    let pushed = cli(
        &cp,
        &["policy", "push", &file("second.yaml", &second)],
        "ops.token",
    );
    assert_eq!(pushed.out, "policy version 2 written\n", "{pushed:?}");
    assert!(cp.converged(1).await);
    assert_eq!(get(&n, "/via").await.0, 200);
    assert_eq!((o1.hits("/via"), o2.hits("/via")), (0, 1));

    // what `policy get --json` read at version 1 cannot overwrite version 2
    let stale = cli(
        &cp,
        &["policy", "push", &file("got.json", &got_json.out)],
        "ops.token",
    );
    assert_eq!(stale.code, Some(3), "{stale:?}");
    assert!(stale.err.contains("current version 2"), "{}", stale.err);

    // an old version, and what changed since
    let old = cli(&cp, &["policy", "get", "1"], "ops.token");
    assert_eq!(old.code, Some(0), "{old:?}");
    assert_eq!(old.out, got.out, "version 1 reads as it did");
    let d = cli(&cp, &["policy", "diff", "1", "2"], "ops.token");
    assert_eq!(d.code, Some(0), "{d:?}");
    assert_eq!(
        d.out,
        format!(
            "policy version 1 -> 2: 2 change(s)\n\
             ~ pools.o.backends[0]: \"{}\" -> \"{}\"\n\
             ~ routes[0].cache.default_ttl: \"300s\" -> \"60s\"\n",
            o1.addr, o2.addr
        )
    );
    let d = cli(&cp, &["policy", "diff", "1", "--json"], "ops.token").json();
    assert_eq!((d["from"].clone(), d["to"].clone()), (json!(1), json!(2)));
    assert_eq!(
        d["changes"][1]["path"],
        json!("routes[0].cache.default_ttl")
    );
    let none = cli(&cp, &["policy", "get", "7"], "ops.token");
    assert_eq!(none.code, Some(2), "{none:?}");
    assert!(
        none.err.contains("policy version 7 is not kept"),
        "{}",
        none.err
    );

    // rolling back to the version in force writes nothing either
    let back = cli(&cp, &["policy", "rollback", "1"], "ops.token");
    assert_eq!(
        back.out, "policy version 3 written (rollback of 1)\n",
        "{back:?}"
    );
    let back = cli(&cp, &["policy", "rollback", "3"], "ops.token");
    assert!(
        back.out.starts_with("policy unchanged: version 3"),
        "{back:?}"
    );
    let table = cli(&cp, &["policy", "history"], "ops.token");
    let lines: Vec<&str> = table.out.lines().collect();
    assert_eq!(lines.len(), 4, "{}", table.out);
    assert!(
        lines[0].starts_with("VERSION") && lines[0].contains("WRITTEN"),
        "{}",
        table.out
    );
    assert!(
        lines[3].starts_with('3') && lines[3].contains("rollback of 1, current"),
        "{}",
        table.out
    );
    assert!(!has_epoch_ms(&table.out), "{}", table.out);
}

#[tokio::test]
async fn purge_wait_returns_once_every_live_node_applied_and_names_those_that_have_not() {
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    let cp = Cp::start().await;
    let a = node_polling(&cp, "a", "2s").await;
    let b = node_polling(&cp, "b", "2s").await;
    assert_eq!(cp.put_policy(policy(&o, json!({})), 0).await.0, 200);
    assert!(cp.converged(2).await);
    for n in [&a, &b] {
        get(n, "/p").await;
        get(n, "/p").await;
    }
    assert_eq!(o.hits("/p"), 2, "one fetch per node, then hits");

    // every node applied it when the command returns: both refetch at once
    let r = cli(
        &cp,
        &["purge", "url", "site.test/p", "--wait=20s"],
        "ops.token",
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.out, "purge seq 1 applied by every live node (2): a, b\n");
    for n in [&a, &b] {
        get(n, "/p").await;
    }
    assert_eq!(o.hits("/p"), 4, "both nodes had applied the purge");

    // a node that stops is still live (alive, then late) for a while: the wait names it
    drop(b);
    let r = cli(
        &cp,
        &["purge", "url", "site.test/p", "--wait=1s"],
        "ops.token",
    );
    assert_eq!(r.code, Some(6), "{r:?}");
    assert!(
        r.err.contains("purge seq 2 not applied within 1s by: b (") && r.err.contains("at seq 1)"),
        "{}",
        r.err
    );
    assert!(!r.err.contains("a ("), "node a applied it: {}", r.err);
    get(&a, "/p").await;
    assert_eq!(o.hits("/p"), 5, "node a applied purge 2");

    // once dead it is not waited for
    assert!(
        eventually(Duration::from_secs(15), || async {
            node_row(&cp, "b")["state"] == "dead"
        })
        .await
    );
    let r = cli(
        &cp,
        &["purge", "url", "site.test/p", "--wait", "--json"],
        "ops.token",
    );
    assert_eq!(r.code, Some(0), "{r:?}");
    let v = r.json();
    assert_eq!(v["seq"], json!(3));
    assert_eq!(v["wait"]["applied"], json!(true), "{v}");
    assert_eq!(v["wait"]["dead"], json!(["b"]), "{v}");
    assert_eq!(v["wait"]["pending"], json!([]), "{v}");
    assert!(!has_epoch_ms(&r.out), "{}", r.out);

    // a token that may purge but not read: the purge is taken, the wait cannot follow nodes
    std::fs::write(cp.dir.path().join("purger.token"), PURGER).expect("token file");
    let r = cli(
        &cp,
        &["purge", "url", "site.test/p", "--wait"],
        "purger.token",
    );
    assert_eq!(r.code, Some(4), "{r:?}");
    assert!(r.err.contains("purge seq 4 was accepted"), "{}", r.err);
    get(&a, "/p").await;
    assert_eq!(o.hits("/p"), 6, "node a applied purge 3 (waited for above)");
}

#[tokio::test]
async fn nodes_and_the_control_plane_each_export_only_their_own_series() {
    let o = Origin::start("o").await;
    let cp = Cp::start().await;
    let n = node_polling(&cp, "m", "5s").await;
    assert_eq!(cp.put_policy(policy(&o, json!({})), 0).await.0, 200);
    assert!(cp.converged(1).await);
    get(&n, "/m").await;
    // the control plane fills its per-node gauges when listing nodes
    assert_eq!(cli(&cp, &["nodes"], "ops.token").code, Some(0));

    let node = n.metrics().await;
    assert!(node.has("verge_requests_total", &[]), "{}", node.text);
    assert_eq!(node.value("verge_policy_version", &[]), Some(1.0));
    assert!(node.has("verge_build_info", &[]), "{}", node.text);
    assert!(!node.text.contains("verge_control_"), "{}", node.text);

    let text = reqwest::get(format!("http://{}/metrics", cp.addr))
        .await
        .expect("control metrics")
        .text()
        .await
        .expect("body");
    let control = Metrics::parse(&text);
    assert_eq!(
        control.value("verge_control_policy_version", &[]),
        Some(1.0)
    );
    assert!(
        control.has("verge_control_node_report_age_seconds", &[("node", "m")]),
        "{text}"
    );
    assert!(control.has("verge_build_info", &[]), "{text}");
    assert!(control.has("process_start_time_seconds", &[]), "{text}");
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(
            line.starts_with("verge_control_")
                || line.starts_with("verge_build_info")
                || line.starts_with("process_"),
            "a node's series on the control plane: {line}"
        );
    }
}

/// `verge_control_node_rejecting{node}` on the control plane, after `verge nodes` refreshed it.
async fn rejecting(cp: &Cp, node: &str) -> Option<f64> {
    assert_eq!(cli(cp, &["nodes"], "ops.token").code, Some(0));
    let text = reqwest::get(format!("http://{}/metrics", cp.addr))
        .await
        .expect("control metrics")
        .text()
        .await
        .expect("body");
    Metrics::parse(&text).value("verge_control_node_rejecting", &[("node", node)])
}

#[tokio::test]
async fn a_node_that_refuses_a_policy_says_which_and_why_until_it_applies_one() {
    let o = Origin::start("o").await;
    o.set_headers("/r", &[("cache-control", "max-age=300")]);
    let cp = Cp::start().await;
    let n = node_polling(&cp, "picky", "1s").await;
    assert_eq!(cp.put_policy(policy(&o, json!({})), 0).await.0, 200);
    assert!(cp.converged(1).await);
    assert_eq!(get(&n, "/r").await.0, 200);

    // a policy the control plane accepts but this node cannot apply: a filter it does not have
    let mut bad = policy(&o, json!({}));
    bad["routes"][0]["filters"] = json!(["no_such_filter"]);
    assert_eq!(cp.put_policy(bad, 1).await.0, 200);
    let row = assert_eventually(
        Duration::from_secs(10),
        "the node reports its refusal",
        || async { node_row(&cp, "picky") },
        |row| row["rejected"]["policy_version"] == json!(2),
    )
    .await;
    assert_eq!(row["policy_version"], json!(1), "{row}");
    assert_eq!(row["current"], json!(false), "{row}");
    assert_eq!(row["rejected"]["reason"], json!("invalid_policy"), "{row}");
    let error = row["rejected"]["error"].as_str().unwrap_or("");
    assert!(error.contains("no_such_filter"), "{row}");
    let table = cli(&cp, &["nodes"], "ops.token").out;
    assert!(table.contains("REFUSED"), "{table}");
    assert!(table.contains("2.0 invalid_policy: "), "{table}");
    assert_eq!(rejecting(&cp, "picky").await, Some(1.0));
    // it kept serving what it had
    assert_eq!(get(&n, "/r").await.0, 200);
    assert_eq!(o.hits("/r"), 1);

    // a policy it can apply clears the refusal
    assert_eq!(
        cp.put_policy(policy(&o, json!({"max_ttl": "1h"})), 2)
            .await
            .0,
        200
    );
    assert!(cp.converged(1).await);
    assert!(node_row(&cp, "picky")["rejected"].is_null());
    assert_eq!(rejecting(&cp, "picky").await, Some(0.0));
}
