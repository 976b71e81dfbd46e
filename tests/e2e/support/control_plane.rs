//! `verge control` as a process ([`Cp`]) with its own data directory, restartable on the same
//! port; the three tokens most tests use (`ops`, `node`, `purger`), more from a
//! [`CpConfig`]; nodes fed by it ([`node`]); Ed25519 key files ([`key_pair`]); and, for a
//! [`RawOrigin`](super::RawOrigin) posing as a control plane, a snapshot answer with exactly the
//! fields a test chooses ([`sends_snapshot`]).

use super::config::{Config, Control};
use super::fetch::client;
use super::origin::Origin;
use super::process::{Launch, Verge};
use super::raw_origin::{Script, Step};
use super::{eventually, ports};
use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, EncodePublicKey};
use serde_json::{json, Value};
use serde_yaml::{Mapping, Value as Yaml};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

/// Every scope.
pub const OPS: &str = "ops-token-0123456789abcdef";
/// `read`: what a node polls with.
pub const NODE: &str = "node-token-0123456789abcdef";
/// `purge`.
pub const PURGER: &str = "purge-token-0123456789abcdef";

/// A control plane's config beyond its address and data directory.
#[derive(Clone)]
pub struct CpConfig {
    tokens: Vec<Yaml>,
    top: Mapping,
}

impl Default for CpConfig {
    fn default() -> Self {
        CpConfig::new()
    }
}

impl CpConfig {
    /// The `ops`, `node` and `purger` tokens.
    pub fn new() -> CpConfig {
        CpConfig {
            tokens: Vec::new(),
            top: Mapping::new(),
        }
        .token(
            "ops",
            OPS,
            &["read", "policy:write", "purge", "purge:all"],
            &[],
        )
        .token("node", NODE, &["read"], &[])
        .token("purger", PURGER, &["purge"], &[])
    }

    /// One more token, limited to `hosts` when there are any.
    pub fn token(self, name: &str, secret: &str, scopes: &[&str], hosts: &[&str]) -> CpConfig {
        self.token_with(name, secret, scopes, &[("hosts", hosts)])
    }

    /// One more token, limited to the hosts of `tenants` (defined with [`CpConfig::yaml`]).
    pub fn tenant_token(
        self,
        name: &str,
        secret: &str,
        scopes: &[&str],
        tenants: &[&str],
    ) -> CpConfig {
        self.token_with(name, secret, scopes, &[("tenants", tenants)])
    }

    fn token_with(
        mut self,
        name: &str,
        secret: &str,
        scopes: &[&str],
        limits: &[(&str, &[&str])],
    ) -> CpConfig {
        let strings =
            |items: &[&str]| Yaml::Sequence(items.iter().map(|s| Yaml::from(*s)).collect());
        let mut t = Mapping::new();
        t.insert("name".into(), name.into());
        t.insert("token".into(), secret.into());
        t.insert("scopes".into(), strings(scopes));
        for (key, items) in limits {
            if !items.is_empty() {
                t.insert((*key).into(), strings(items));
            }
        }
        self.tokens.push(Yaml::Mapping(t));
        self
    }

    /// `signing_key`: snapshots are signed with this private key.
    pub fn signing_key(self, path: &Path) -> CpConfig {
        self.put("signing_key", &path.display().to_string())
    }

    /// `audit_log`, relative to the control plane's directory.
    pub fn audit_log(self, path: &str) -> CpConfig {
        self.put("audit_log", path)
    }

    /// More top-level settings, given as a YAML mapping (e.g. a `store:` block).
    pub fn yaml(mut self, doc: &str) -> CpConfig {
        let extra: Mapping = serde_yaml::from_str(doc).expect("extra control config YAML");
        self.top.extend(extra);
        self
    }

    fn put(mut self, key: &str, value: &str) -> CpConfig {
        self.top.insert(key.into(), value.into());
        self
    }

    fn render(&self, addr: SocketAddr, dir: &Path) -> String {
        let mut doc = self.top.clone();
        doc.insert("listen".into(), addr.to_string().into());
        doc.insert(
            "data_dir".into(),
            dir.join("data").display().to_string().into(),
        );
        doc.insert("tokens".into(), Yaml::Sequence(self.tokens.clone()));
        serde_yaml::to_string(&doc).expect("control config YAML")
    }
}

/// A `verge control` process with its own data directory, restartable on the same port.
pub struct Cp {
    child: Child,
    pub addr: SocketAddr,
    config: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Cp {
    /// A control plane with the `ops`, `node` and `purger` tokens.
    pub async fn start() -> Cp {
        Cp::start_with(&CpConfig::new()).await
    }

    pub async fn start_with(cfg: &CpConfig) -> Cp {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = ports::addr();
        let config = dir.path().join("control.yaml");
        std::fs::write(&config, cfg.render(addr, dir.path())).expect("write control config");
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

    /// The process id (to stop and continue it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.child = Launch::verge_with(&["control", "-c"]).spawn(&self.config);
        self.wait_ready().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn send(
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

    pub async fn put_policy(&self, doc: Value, if_match: u64) -> (u16, Value) {
        self.send("PUT", "/v1/policy", OPS, Some(doc), Some(if_match))
            .await
    }

    pub async fn purge(&self, body: Value) -> u64 {
        let (status, v) = self
            .send("POST", "/v1/invalidations", OPS, Some(body), None)
            .await;
        assert_eq!(status, 202, "{v}");
        v["seq"].as_u64().expect("seq")
    }

    /// [`Cp::purge`], retried while the store answers 503 (a store coming back from a lost
    /// quorum: its watch may lag for a moment, and such a refusal wrote nothing), for up to 15 s.
    pub async fn purge_once_the_store_answers(&self, body: Value) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (status, v) = self
                .send("POST", "/v1/invalidations", OPS, Some(body.clone()), None)
                .await;
            if status != 503 || std::time::Instant::now() > deadline {
                assert_eq!(status, 202, "{v}");
                return v["seq"].as_u64().expect("seq");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until every one of `n` nodes reports the control plane's head.
    pub async fn converged(&self, n: usize) -> bool {
        eventually(Duration::from_secs(15), || async {
            let (_, v) = self.send("GET", "/v1/nodes", OPS, None, None).await;
            let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
            nodes.len() == n && nodes.iter().all(|x| x["current"] == json!(true))
        })
        .await
    }

    /// The `control:` block of node `id` of this control plane (its state file in the node's
    /// own directory).
    pub fn control(&self, id: &str) -> Control {
        Control::new(
            &format!("http://{}", self.addr),
            id,
            &self.dir.path().join("node.token"),
        )
        .state_file("{dir}/snapshot.json")
        .wait("5s")
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A policy of one pool (`origin`) and one route for every host, caching by `route_cache`.
pub fn policy(origin: &Origin, route_cache: Value) -> Value {
    json!({
        "pools": {"o": {"backends": [origin.addr.to_string()]}},
        "routes": [{"hosts": ["*"], "pool": "o", "cache": route_cache}],
    })
}

/// A node of `cp` with no routes of its own, started once ready.
pub async fn node(cp: &Cp, id: &str) -> Verge {
    Verge::start(&Config::new().control(cp.control(id))).await
}

/// A node of `cp` whose long polls wait `wait`.
pub async fn node_polling(cp: &Cp, id: &str, wait: &str) -> Verge {
    Verge::start(&Config::new().control(cp.control(id).wait(wait))).await
}

/// An Ed25519 key pair from `seed`, written to `dir` as `NAME.key` (PKCS#8 PEM) and `NAME.pub`
/// (SPKI PEM), as `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` write them.
pub fn key_pair(dir: &Path, name: &str, seed: u8) -> (ed25519_dalek::SigningKey, PathBuf, PathBuf) {
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let pem = key.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 PEM");
    std::fs::write(&private, pem.as_bytes()).expect("write private key");
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("SPKI PEM");
    std::fs::write(&public, pem).expect("write public key");
    (key, private, public)
}

/// A control plane that always answers a snapshot poll with `body`, the `checksum` field and,
/// when given, the `signature` field, whatever they are.
pub fn sends_snapshot(body: Vec<u8>, checksum: String, signature: Option<String>) -> Script {
    Script::new(move |_| {
        let signature = signature
            .as_ref()
            .map(|s| format!("verge-signature: {s}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nverge-checksum: {checksum}\r\n{signature}\r\n",
            body.len()
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        vec![Step::Write(bytes), Step::Sleep(Duration::from_millis(200))]
    })
}
