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
    /// Client TLS with client certificates (`--client-cert-auth`), when started so.
    tls: Option<EtcdCerts>,
    /// What the kit reaches the members' HTTP gateway with (trusting their CA when on TLS).
    http: reqwest::Client,
}

/// PEM files for an etcd on TLS, made with the `openssl` command in a temporary directory: a
/// CA, the members' certificate (for `127.0.0.1`) and a client certificate it signed, and a
/// second CA that signed nothing of this cluster.
pub struct EtcdCerts {
    dir: tempfile::TempDir,
}

impl EtcdCerts {
    /// Generate them (EC P-256 keys, valid two days).
    pub fn generate() -> EtcdCerts {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("the openssl command (scripts/setup installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let subject = format!("/CN=verge test {ca}");
            let (key, crt) = (format!("{ca}.key"), format!("{ca}.crt"));
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subject,
            ]);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(&args);
        }
        // the members' certificate is also their client certificate (the gateway dials itself)
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
            ),
            (
                "client",
                "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
            ),
        ] {
            let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
            let extfile = format!("{name}.ext");
            std::fs::write(d.join(&extfile), ext).expect("extension file");
            let subject = format!("/CN=verge test {name}");
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
            openssl(&args);
            openssl(&[
                "x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", &crt, "-days", "2", "-extfile", &extfile,
            ]);
        }
        EtcdCerts { dir }
    }

    /// The path of one of the files (`ca.crt`, `server.key`, `client.crt`, `other-ca.crt`, ...).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A client trusting the CA and presenting the client certificate.
    fn http_client(&self) -> reqwest::Client {
        let read = |f: &str| std::fs::read(self.path(f)).expect("certificate file");
        let ca = reqwest::Certificate::from_pem(&read("ca.crt")).expect("CA");
        let mut identity = read("client.crt");
        identity.extend(read("client.key"));
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .add_root_certificate(ca)
            .identity(reqwest::Identity::from_pem(&identity).expect("client identity"))
            .build()
            .expect("client")
    }
}

/// The etcd binary: `$VERGE_ETCD`, else `etcd` on the `PATH`, else `/usr/bin/etcd`.
fn etcd_bin() -> Option<PathBuf> {
    find_binary("VERGE_ETCD", "etcd")
}

/// The etcdctl binary: `$VERGE_ETCDCTL`, else `etcdctl` on the `PATH`, else `/usr/bin/etcdctl`.
fn etcdctl_bin() -> Option<PathBuf> {
    find_binary("VERGE_ETCDCTL", "etcdctl")
}

/// `$var`, else `name` on the `PATH`, else `/usr/bin/<name>`.
fn find_binary(var: &str, name: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(var) {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/bin").join(name)).filter(|p| p.is_file()))
}

/// Whether `etcdctl` is there; without it (outside CI) a message says the test was skipped, in
/// CI (`CI` set) a missing one fails the test.
pub fn have_etcdctl() -> bool {
    if etcdctl_bin().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "etcdctl not found, and CI runs this test: scripts/setup installs etcd-client"
    );
    eprintln!("skipped: no etcdctl (scripts/setup installs Debian's etcd-client)");
    false
}

impl EtcdCluster {
    /// Start `n` members and wait until each answers `/health`. `None` (with a message) when
    /// there is no etcd binary outside CI; in CI (`CI` set) a missing binary fails the test.
    pub async fn start(n: usize) -> Option<EtcdCluster> {
        Self::start_with(n, None).await
    }

    /// Start `n` members serving clients on TLS only, asking them for a certificate signed by
    /// `certs`' CA.
    pub async fn start_tls(n: usize, certs: EtcdCerts) -> Option<EtcdCluster> {
        Self::start_with(n, Some(certs)).await
    }

    async fn start_with(n: usize, tls: Option<EtcdCerts>) -> Option<EtcdCluster> {
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
            http: tls
                .as_ref()
                .map_or_else(super::client, EtcdCerts::http_client),
            tls,
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
            .map(|m| format!("\"{}://127.0.0.1:{}\"", self.scheme(), m.client))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// `https` on TLS, else `http`.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
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
        let client_url = format!("{}://127.0.0.1:{}", self.scheme(), m.client);
        let peer_url = format!("http://127.0.0.1:{}", m.peer);
        let data_dir = self.dir.path().join(&m.name);
        let mut command = Command::new(bin);
        if let Some(certs) = &self.tls {
            command
                .arg("--cert-file")
                .arg(certs.path("server.crt"))
                .arg("--key-file")
                .arg(certs.path("server.key"))
                .arg("--trusted-ca-file")
                .arg(certs.path("ca.crt"))
                .arg("--client-cert-auth");
        }
        let child = command
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
        let url = format!(
            "{}://127.0.0.1:{}/health",
            self.scheme(),
            self.members[i].client
        );
        let ok = eventually(Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                match self.http.get(url).send().await {
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
        format!("{}://127.0.0.1:{}{path}", self.scheme(), m.client)
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
            let r = self
                .http
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
        let range: serde_json::Value = self
            .http
            .post(self.gateway("/v3/kv/range"))
            .json(&serde_json::json!({"key": "AA=="}))
            .send()
            .await
            .expect("range")
            .json()
            .await
            .expect("range answer");
        let revision = range["header"]["revision"].clone();
        let r = self
            .http
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

impl EtcdCluster {
    fn etcdctl(&self, args: &[&str]) {
        let out = Command::new(etcdctl_bin().expect("etcdctl"))
            .env("ETCDCTL_API", "3")
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `etcdctl snapshot save` from the first running member into `file`.
    pub fn snapshot_save(&self, file: &std::path::Path) {
        let m = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a running member");
        let endpoint = format!("http://127.0.0.1:{}", m.client);
        let file = file.to_str().expect("a UTF-8 path");
        self.etcdctl(&["--endpoints", &endpoint, "snapshot", "save", file]);
    }

    /// Stop every member, delete their data, `etcdctl snapshot restore` `file` into a new data
    /// directory for each (same names and peer URLs, a new cluster token as etcd's recovery
    /// guide asks: a new cluster id), and start them on it: etcd restored from a backup, its
    /// revision back at the snapshot's.
    pub async fn restore(&mut self, file: &std::path::Path) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        self.token = format!("{}-restored", self.token);
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let file = file.to_str().expect("a UTF-8 path");
        for m in &self.members {
            let data_dir = self.dir.path().join(&m.name);
            let _ = std::fs::remove_dir_all(&data_dir);
            let peer = format!("http://127.0.0.1:{}", m.peer);
            self.etcdctl(&[
                "snapshot",
                "restore",
                file,
                "--name",
                &m.name,
                "--data-dir",
                data_dir.to_str().expect("a UTF-8 path"),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                &self.token,
                "--initial-advertise-peer-urls",
                &peer,
            ]);
        }
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
