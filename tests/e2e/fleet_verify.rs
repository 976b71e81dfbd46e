//! `verge verify --from-control`: the nodes come from the control plane (their receipts carry
//! their admin address), the expected version from the origin's current `ETag`, and a
//! periodic run exports the divergent nodes per class. A node whose control URL is cut keeps
//! an old version, and the check finds it.

use crate::support::config::Control;
use crate::support::control_plane::{node, Cp, OPS};
use crate::support::process::verge_bin;
use crate::support::{eventually, get, ports, Config, Origin, Verge};
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP relay to `to` that can be cut: while blocked it closes every connection, open or new.
struct Relay {
    addr: SocketAddr,
    blocked: watch::Sender<bool>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (blocked, rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut rx = rx.clone();
                if *rx.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|b| *b) => {}
                    }
                });
            }
        });
        Relay { addr, blocked }
    }

    fn block(&self, on: bool) {
        self.blocked.send_replace(on);
    }
}

/// A child process killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn metrics_text(addr: SocketAddr) -> String {
    match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Three nodes hold version 1 of a `prices` URL. n3 polls through a relay that is then cut; the
/// origin moves to version 2 and the URL is purged. `verge verify --from-control --origin`
/// asks every node the control plane knows, expects the origin's ETag, and names n3 alone;
/// no node fetched from the origin to answer. Run with `--every`, it exports one divergent
/// node for the class, and none once n3's control URL is back and it applied the purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_takes_nodes_from_the_control_plane_and_finds_the_one_kept_behind() {
    let o = Origin::start("o").await;
    o.set_headers("/p", &[("cache-control", "max-age=300")]);
    o.set_etag("/p", "\"v1\"");
    let cp = Cp::start().await;
    let relay = Relay::start(cp.addr).await;
    let n3_control = Control::new(
        &format!("http://{}", relay.addr),
        "n3",
        &cp.dir.path().join("node.token"),
    )
    .state_file("{dir}/snapshot.json")
    .wait("1s");
    let nodes: [Verge; 3] = [
        node(&cp, "n1").await,
        node(&cp, "n2").await,
        Verge::start(&Config::new().control(n3_control)).await,
    ];
    let doc = json!({
        "pools": {"o": {"backends": [o.addr.to_string()]}},
        "classes": {"prices": {"budget": "10m"}},
        "routes": [{"hosts": ["*"], "pool": "o", "class": "prices", "cache": {}}],
    });
    let (status, body) = cp.put_policy(doc, 0).await;
    assert_eq!(status, 200, "{body}");
    assert!(cp.converged(3).await, "nodes did not apply the policy");
    let (_, listed) = cp.send("GET", "/v1/nodes", OPS, None, None).await;
    for (i, n) in nodes.iter().enumerate() {
        let row = &listed["nodes"][i];
        assert_eq!(row["admin"], json!(n.admin.to_string()), "{listed}");
    }
    for n in &nodes {
        assert_eq!(
            get(n, "shop.test", "/p").await.header("etag"),
            Some("\"v1\"")
        );
    }
    assert_eq!(o.hits("/p"), 3);

    // n3 is cut off from the control plane; version 2 is published and purged
    relay.block(true);
    o.set_etag("/p", "\"v2\"");
    let seq = cp
        .purge(json!({"kind": "url", "target": "shop.test/p"}))
        .await;
    let applied = |id: &'static str| {
        let cp = &cp;
        async move {
            let (_, v) = cp.send("GET", "/v1/nodes", OPS, None, None).await;
            v["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["node"] == id && n["seq"].as_u64() >= Some(seq))
        }
    };
    assert!(eventually(Duration::from_secs(15), || applied("n1")).await);
    assert!(eventually(Duration::from_secs(15), || applied("n2")).await);
    for n in &nodes[..2] {
        assert_eq!(
            get(n, "shop.test", "/p").await.header("etag"),
            Some("\"v2\"")
        );
    }
    let hits = o.hits("/p");
    assert_eq!(hits, 5);

    let token = cp.dir.path().join("ops.token");
    let control = format!("http://{}", cp.addr);
    let origin = format!("http://{}", o.addr);
    let base = [
        "verify",
        "shop.test/p",
        "--from-control",
        "--control",
        &control,
        "--token-file",
        token.to_str().expect("path"),
        "--origin",
        &origin,
    ];
    let out = Command::new(verge_bin())
        .args(base)
        .output()
        .expect("run verge verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |id: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("shop.test/p\t{id}\t")))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        line("n3").ends_with("serves version v1, not v2"),
        "{stdout}"
    );
    for id in ["n1", "n2"] {
        assert!(line(id).ends_with("\tok"), "{stdout}");
    }
    assert_eq!(
        o.hits("/p"),
        hits + 1,
        "only verify asked the origin; no node fetched to answer"
    );

    // periodically, with the metric per class
    let metrics_addr = ports::addr();
    let _watch = Running(
        Command::new(verge_bin())
            .args(base)
            .args([
                "--every",
                "500ms",
                "--metrics-listen",
                &metrics_addr.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run verge verify --every"),
    );
    let divergent = |n: u32| {
        let want = format!("verge_verify_divergent_nodes{{class=\"prices\"}} {n}\n");
        move || {
            let want = want.clone();
            async move { metrics_text(metrics_addr).await.contains(&want) }
        }
    };
    assert!(
        eventually(Duration::from_secs(15), divergent(1)).await,
        "{}",
        metrics_text(metrics_addr).await
    );
    relay.block(false);
    assert!(
        eventually(Duration::from_secs(30), || applied("n3")).await,
        "n3 did not catch up"
    );
    assert!(
        eventually(Duration::from_secs(15), divergent(0)).await,
        "{}",
        metrics_text(metrics_addr).await
    );
    let m = metrics_text(metrics_addr).await;
    assert!(
        m.contains("verge_verify_rounds_total{outcome=\"ok\"}"),
        "{m}"
    );
    // n3 refuses its old entry now: its clients get version 2
    assert_eq!(
        get(&nodes[2], "shop.test", "/p").await.header("etag"),
        Some("\"v2\"")
    );
}
