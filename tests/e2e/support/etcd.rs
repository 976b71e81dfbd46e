//! A 3-member etcd cluster on loopback for the control plane's etcd store: the `etcd` binary
//! (Debian's `etcd-server`, installed by `scripts/setup`) in a temporary directory, members
//! stopped and started one at a time.

use super::ports;
use super::wait::eventually;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One member: its name, client and peer ports, and its process while it runs.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A running etcd cluster; every member is stopped when it is dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    token: String,
}

/// The etcd binary: `$VERGE_ETCD`, else `etcd` on the `PATH`, else `/usr/bin/etcd`.
fn etcd_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("VERGE_ETCD") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
}

impl EtcdCluster {
    /// Start `n` members and wait until each answers `/health`. `None` (with a message) when
    /// there is no etcd binary outside CI; in CI (`CI` set) a missing binary fails the test.
    pub async fn start(n: usize) -> Option<EtcdCluster> {
        if etcd_bin().is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "etcd not found, and CI runs these tests: scripts/setup installs etcd-server"
            );
            eprintln!("skipped: no etcd binary (scripts/setup installs Debian's etcd-server)");
            return None;
        }
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports::port(),
                peer: ports::port(),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            dir: tempfile::tempdir().expect("tempdir"),
            token: format!("verge-test-{}-{}", std::process::id(), ports::port()),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_healthy(i).await;
        }
        Some(cluster)
    }

    /// The `endpoints` list for a control plane's `store.etcd`, as YAML flow.
    pub fn endpoints_yaml(&self) -> String {
        let urls: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("\"http://127.0.0.1:{}\"", m.client))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name)))
            .expect("etcd log file");
        let bin = etcd_bin().expect("etcd binary");
        let client_url = format!("http://127.0.0.1:{}", m.client);
        let peer_url = format!("http://127.0.0.1:{}", m.peer);
        let data_dir = self.dir.path().join(&m.name);
        let child = Command::new(bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            // a loaded 2-core machine: leader elections should not flap
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            // a client that stops answering pings loses its streams within seconds
            .args([
                "--grpc-keepalive-interval",
                "1s",
                "--grpc-keepalive-timeout",
                "1s",
            ])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    async fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/health", self.members[i].client);
        let ok = eventually(Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                match super::client().get(url).send().await {
                    Ok(r) => r.text().await.is_ok_and(|t| t.contains("\"true\"")),
                    Err(_) => false,
                }
            }
        })
        .await;
        assert!(
            ok,
            "etcd member {i} not healthy; see {}",
            self.dir.path().display()
        );
    }

    /// Stop member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start every stopped member again on its data directory, and wait until each is healthy
    /// (which needs a quorum).
    pub async fn start_stopped(&mut self) {
        let stopped: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_none())
            .collect();
        for &i in &stopped {
            self.spawn(i);
        }
        for i in stopped {
            self.wait_healthy(i).await;
        }
    }
}

impl EtcdCluster {
    /// The URL of `path` on the first running member (the v3 JSON gateway).
    fn gateway(&self, path: &str) -> String {
        let m = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a running member");
        format!("http://127.0.0.1:{}{path}", m.client)
    }

    /// Turn authentication on: user `root` (with the root role) and `password`; from then on
    /// every client must log in.
    pub async fn enable_auth(&self, password: &str) {
        use serde_json::json;
        for (path, body) in [
            (
                "/v3/auth/user/add",
                json!({"name": "root", "password": password}),
            ),
            (
                "/v3/auth/user/grant",
                json!({"user": "root", "role": "root"}),
            ),
            ("/v3/auth/enable", json!({})),
        ] {
            let r = super::client()
                .post(self.gateway(path))
                .json(&body)
                .send()
                .await
                .expect("auth call");
            assert_eq!(r.status(), 200, "{path}");
        }
    }

    /// Compact etcd's history up to its current revision (physically: a watch from before it
    /// gets `compact_revision`).
    pub async fn compact(&self) {
        let range: serde_json::Value = super::client()
            .post(self.gateway("/v3/kv/range"))
            .json(&serde_json::json!({"key": "AA=="}))
            .send()
            .await
            .expect("range")
            .json()
            .await
            .expect("range answer");
        let revision = range["header"]["revision"].clone();
        let r = super::client()
            .post(self.gateway("/v3/kv/compaction"))
            .json(&serde_json::json!({"revision": revision, "physical": true}))
            .send()
            .await
            .expect("compaction");
        assert_eq!(r.status(), 200, "compaction at {revision}");
    }

    /// Stop every member, delete their data, and start a new cluster (a new cluster id) on the
    /// same ports: etcd wiped.
    pub async fn wipe(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        for m in &self.members {
            let _ = std::fs::remove_dir_all(self.dir.path().join(&m.name));
        }
        self.token = format!("{}-wiped", self.token);
        self.start_stopped().await;
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
