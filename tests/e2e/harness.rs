//! Runs the real `verge` binary on ephemeral loopback ports with a generated config.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound then released; the race is harmless on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Verge {
    child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

pub fn verge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_verge"))
}

/// Start the verge binary with `args` followed by `config`, stderr captured.
pub fn spawn_verge(args: &[&str], config: &std::path::Path) -> Child {
    Command::new(verge_bin())
        .args(args)
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn verge")
}

impl Verge {
    /// Start verge with `body` (pools and routes, plus anything else); `{http}` in it is replaced
    /// by the main listener address. Waits until `/readyz` answers 200.
    pub async fn start(body: &str) -> Verge {
        Self::start_with_listeners(body, None).await
    }

    /// Like `start`, with the `listeners:` section given (`{http}` still available).
    pub async fn start_with_listeners(body: &str, listeners: Option<&str>) -> Verge {
        let dir = tempfile::tempdir().expect("tempdir");
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let listeners = listeners
            .map(str::to_string)
            .unwrap_or_else(|| "listeners:\n  - name: http\n    listen: \"{http}\"\n".to_string());
        let yaml = format!(
            "server:\n  threads: 2\n  grace_period: 0s\n  graceful_shutdown_timeout: 1s\n  pid_file: {d}/verge.pid\n  upgrade_sock: {d}/upgrade.sock\nadmin:\n  listen: \"{admin}\"\n{listeners}{body}",
            d = dir.path().display(),
        )
        .replace("{http}", &http.to_string())
        .replace("{dir}", &dir.path().display().to_string());
        let path = dir.path().join("verge.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let mut v = Verge {
            child: spawn_verge(&["serve", "-c"], &path),
            http,
            admin,
            config: path,
            _dir: dir,
        };
        v.wait_ready().await;
        v
    }

    /// Kill the process and start it again with the same config, ports and state directory.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_verge(&["serve", "-c"], &self.config);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("verge exited early ({status}): {err}");
            }
            let url = format!("http://{}/readyz", self.admin);
            if let Ok(r) = client.get(&url).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "verge not ready in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The directory holding this instance's config (and anything `{dir}` pointed at).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{}", self.admin, path))
            .await
            .expect("admin request");
        let status = r.status().as_u16();
        (status, r.text().await.expect("admin body"))
    }
}

impl Drop for Verge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that never reuses connections across tests and has a short timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// GET `path` on verge with a Host header; returns status, `x-origin` and body.
pub async fn get(v: &Verge, host: &str, path: &str) -> (u16, String, String) {
    let r = client()
        .get(v.url(path))
        .header("host", host)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let origin = r
        .headers()
        .get("x-origin")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, origin, r.text().await.unwrap_or_default())
}

/// Send raw bytes, read until the server closes (or `wait` passes with no byte); returns what
/// came back, with `<no close>` appended when the connection stayed open.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                out.extend_from_slice(b"<no close>");
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Poll `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
