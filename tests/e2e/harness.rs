//! Runs the real `verge` binary (or an example embedding verge) on ephemeral loopback ports with
//! a generated config.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
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
    launch: Launch,
    _dir: tempfile::TempDir,
}

pub fn verge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_verge"))
}

/// The binary of example `name` (`examples/NAME.rs`), built first by `cargo build --examples`
/// (once per test process, so a focused `cargo test --test e2e` never runs a stale example).
pub fn example_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    // CARGO_BIN_EXE_verge is <target-dir>/<profile-dir>/verge
    let bin = verge_bin();
    let profile_dir = bin.parent().expect("profile dir");
    let built = BUILT.get_or_init(|| {
        let target_dir = profile_dir.parent().expect("target dir");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--examples", "--profile", &profile, "--target-dir"])
            .arg(target_dir)
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = built {
        panic!("cargo build --examples failed: {e}");
    }
    profile_dir.join("examples").join(name)
}

/// How to start the process under test with a config file.
#[derive(Clone)]
pub struct Launch {
    program: PathBuf,
    /// Arguments before the config path.
    before: Vec<String>,
    /// Arguments after it.
    after: Vec<String>,
    env: Vec<(String, String)>,
}

impl Launch {
    /// `verge serve -c CONFIG`.
    pub fn verge() -> Launch {
        Launch {
            program: verge_bin(),
            before: vec!["serve".into(), "-c".into()],
            after: Vec::new(),
            env: Vec::new(),
        }
    }

    /// An example binary that takes the config path as its first argument.
    pub fn example(name: &str) -> Launch {
        Launch {
            program: example_bin(name),
            before: Vec::new(),
            after: Vec::new(),
            env: Vec::new(),
        }
    }

    /// One more argument after the config path.
    pub fn arg(mut self, arg: &str) -> Launch {
        self.after.push(arg.to_string());
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Start it with `config`, stderr captured.
    pub fn spawn(&self, config: &Path) -> Child {
        Command::new(&self.program)
            .args(&self.before)
            .arg(config)
            .args(&self.after)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()))
    }
}

/// A test config: a fresh state directory, ephemeral listener and admin ports, and `body`
/// (pools and routes, plus anything else) with `{http}` and `{dir}` replaced.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

impl TestConfig {
    /// Write the config; `listeners` replaces the default single plain listener.
    pub fn write(body: &str, listeners: Option<&str>) -> TestConfig {
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
        TestConfig {
            dir,
            path,
            http,
            admin,
        }
    }
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
        Self::launch(Launch::verge(), body, listeners).await
    }

    /// Start `launch` (verge, or an example embedding it) with a generated config.
    pub async fn launch(launch: Launch, body: &str, listeners: Option<&str>) -> Verge {
        let TestConfig {
            dir,
            path,
            http,
            admin,
        } = TestConfig::write(body, listeners);
        let mut v = Verge {
            child: launch.spawn(&path),
            http,
            admin,
            config: path,
            launch,
            _dir: dir,
        };
        v.wait_ready().await;
        v
    }

    /// Kill the process and start it again with the same config, ports and state directory.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = self.launch.spawn(&self.config);
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
                if r.status() == 200 && accepts(self.http).await {
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

/// Send `request` on a new connection and read until the server closes it or `within` passes;
/// returns the bytes read and whether the connection was closed.
pub async fn exchange_until_closed(
    addr: SocketAddr,
    request: &[u8],
    within: Duration,
) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 16384];
    let closed = loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (out, closed)
}

/// Whether something accepts connections on `addr`. `/readyz` answers from the admin service,
/// whose listener may be up before the proxy's. The probe connection is closed and its end
/// awaited, so it is gone from verge's connection count when this returns.
pub async fn accepts(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let _ = conn.shutdown().await;
    let mut sink = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    true
}

/// Lock a test origin's state, even after a panicking thread poisoned it.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
