//! Runs the real `verge` binary (or an example embedding verge) with a config from
//! [`Config`], on ports from [`ports`](super::ports), and waits until it is ready.

use super::config::Config;
use super::metrics::Metrics;
use super::ports;
use super::wait::eventually;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
        Launch::verge_with(&["serve", "-c"])
    }

    /// `verge ARGS CONFIG` (`&["control", "-c"]`: the control plane).
    pub fn verge_with(args: &[&str]) -> Launch {
        Launch {
            program: verge_bin(),
            before: args.iter().map(|a| a.to_string()).collect(),
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
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()))
    }
}

/// A config written to a fresh state directory, with the listener and admin addresses it
/// was given.
pub struct TestConfig {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub http: SocketAddr,
    pub admin: SocketAddr,
}

impl TestConfig {
    pub fn write(config: &Config) -> TestConfig {
        Self::write_on(config, ports::addr(), ports::addr())
    }

    /// [`TestConfig::write`] for listener and admin addresses chosen beforehand (nodes that
    /// must know each other's addresses before any starts).
    pub fn write_on(config: &Config, http: SocketAddr, admin: SocketAddr) -> TestConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("verge.yaml");
        std::fs::write(&path, config.render(http, admin, dir.path())).expect("write config");
        TestConfig {
            dir,
            path,
            http,
            admin,
        }
    }
}

/// A running verge process; killed when dropped.
pub struct Verge {
    child: Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    config: PathBuf,
    launch: Launch,
    dir: tempfile::TempDir,
}

impl Verge {
    /// Start `verge serve` with `config`. Waits until `/readyz` answers 200.
    pub async fn start(config: &Config) -> Verge {
        Self::launch(Launch::verge(), config).await
    }

    /// Start `launch` (verge, or an example embedding it) with `config`.
    pub async fn launch(launch: Launch, config: &Config) -> Verge {
        let mut v = Self::spawned(launch, config);
        v.wait_ready().await;
        v
    }

    /// Start `verge serve` with `config` on a listener and an admin address chosen beforehand
    /// (see [`ports::addr`]). Waits until `/readyz` answers 200.
    pub async fn start_on(config: &Config, http: SocketAddr, admin: SocketAddr) -> Verge {
        let mut v = Self::from_written(Launch::verge(), TestConfig::write_on(config, http, admin));
        v.wait_ready().await;
        v
    }

    /// `launch` started with `config`, not waited for.
    fn spawned(launch: Launch, config: &Config) -> Verge {
        Self::from_written(launch, TestConfig::write(config))
    }

    fn from_written(launch: Launch, written: TestConfig) -> Verge {
        let TestConfig {
            dir,
            path,
            http,
            admin,
        } = written;
        Verge {
            child: launch.spawn(&path),
            http,
            admin,
            config: path,
            launch,
            dir,
        }
    }

    /// Kill the process and start it again with the same config, ports and state directory.
    pub async fn restart(&mut self) {
        self.restart_unready().await;
        self.wait_ready().await;
    }

    /// Start `verge serve` with `config` and wait only until it listens (its admin listener
    /// answers `/readyz`, whatever the answer, and its listener accepts): for a node that is
    /// meant not to be ready.
    pub async fn start_unready(config: &Config) -> Verge {
        let mut v = Self::spawned(Launch::verge(), config);
        v.wait_listening().await;
        v
    }

    /// [`Verge::restart`] without waiting for `/readyz` to say ready.
    pub async fn restart_unready(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = self.launch.spawn(&self.config);
        self.wait_listening().await;
    }

    /// `/readyz` as it answers now: status and reason.
    pub async fn readyz(&self) -> (u16, String) {
        self.admin_get("/readyz").await
    }

    async fn wait_listening(&mut self) {
        self.wait_until(|status, body| status == 200 || !body.contains("listeners"))
            .await;
    }

    /// Stop the process as an operator would (SIGTERM) and wait until it has exited.
    pub fn stop_graceful(&mut self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "SIGTERM sent");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "verge still running 20 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the process again (after [`Verge::stop_graceful`]) with the same config, ports
    /// and state directory.
    pub async fn start_again(&mut self) {
        self.child = self.launch.spawn(&self.config);
        self.wait_ready().await;
    }

    /// SIGTERM, then start again with the same config, ports and state directory.
    pub async fn restart_graceful(&mut self) {
        self.stop_graceful();
        self.start_again().await;
    }

    async fn wait_ready(&mut self) {
        self.wait_until(|status, _| status == 200).await;
    }

    /// Wait until `/readyz` answers something `done` accepts and the listener accepts.
    async fn wait_until(&mut self, done: impl Fn(u16, &str) -> bool) {
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
                let status = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                if done(status, &body) && accepts(self.http).await {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "verge not ready in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Write `config` over this instance's config file (same ports and directory) and send
    /// SIGHUP: the running process reloads it in place.
    pub fn reload_with(&self, config: &Config) {
        let text = config.render(self.http, self.admin, self.dir.path());
        std::fs::write(&self.config, text).expect("write config");
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "SIGHUP sent");
    }

    /// Write `config` over this instance's config file and run `verge reload -c` on it, which
    /// returns once the running process has applied or refused it: its exit code and stderr.
    pub fn verge_reload_with(&self, config: &Config) -> (Option<i32>, String) {
        let text = config.render(self.http, self.admin, self.dir.path());
        std::fs::write(&self.config, text).expect("write config");
        let out = Command::new(verge_bin())
            .args(["reload", "-c"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .output()
            .expect("verge reload");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory holding this instance's config (and anything `{dir}` pointed at).
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

    /// `/metrics`, parsed.
    pub async fn metrics(&self) -> Metrics {
        Metrics::scrape(self.admin).await
    }
}

impl Drop for Verge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Wait until `admin` says ready and `http` accepts connections (an in-process verge).
pub async fn wait_until_serving(admin: SocketAddr, http: SocketAddr) -> bool {
    eventually(Duration::from_secs(20), || async {
        reqwest::get(format!("http://{admin}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
            && accepts(http).await
    })
    .await
}
