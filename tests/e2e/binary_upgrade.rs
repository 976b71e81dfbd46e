//! Process lifecycle: `verge upgrade` replaces a running node by the binary on disk while
//! clients keep sending requests, and none of them fails; `verge control` stops within its
//! bounded grace period on SIGTERM.

use crate::support::process::{verge_bin, Launch, TestConfig};
use crate::support::{client, ports, Config, Origin, Pool, Route};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) fn signal(name: &str, pid: u32) -> bool {
    Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Run `verge upgrade -c config` (it signals the node named by the config's pid file and
/// follows the handover) and return what it printed and its status.
pub(crate) async fn upgrade(config: &std::path::Path) -> std::process::Output {
    let path = config.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Command::new(verge_bin())
            .args(["upgrade", "-c"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .output()
            .expect("verge upgrade")
    })
    .await
    .expect("join")
}

/// Kills the processes it names when the test ends, whatever happened (the new process of an
/// upgrade is not the test's child).
pub(crate) struct Reaper {
    pub(crate) child: Child,
    pub(crate) pid_file: std::path::PathBuf,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            if pid != self.child.id() {
                signal("KILL", pid);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_fails_no_request() {
    let o = Origin::start("o").await;
    // Requests in flight when the old process stops get a grace period, as in production
    // (the kit's 0 s would cancel them).
    let cfg = TestConfig::write(
        &Config::new()
            .pool(Pool::new("o", &[o.addr]))
            .route(Route::to("o").hosts(&["site.test"]))
            .raw(
                "server: {threads: 2, grace_period: 2s, graceful_shutdown_timeout: 1s, \
                 pid_file: \"{dir}/verge.pid\", upgrade_sock: \"{dir}/upgrade.sock\"}",
            ),
    );
    let mut node = Reaper {
        child: Launch::verge().spawn(&cfg.path),
        pid_file: cfg.dir.path().join("verge.pid"),
    };
    let old = node.child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = client()
            .get(format!("http://{}/readyz", cfg.admin))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "verge not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Clients that open a new connection for every request, all through the handover.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let url = format!("http://{}/load", cfg.http);
        load.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            while !stop.load(Ordering::Relaxed) {
                let outcome = match c.get(&url).header("host", "site.test").send().await {
                    Ok(r) if r.status() == 200 => {
                        r.text().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(format!("{e:?}")),
                };
                match outcome {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut all) = errors.lock() {
                            all.push(e);
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ok.load(Ordering::Relaxed);

    let out = upgrade(&cfg.path).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new: u32 = std::fs::read_to_string(&node.pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert_ne!(new, old);
    assert!(
        stdout.contains(&format!("process {new} serves")),
        "{stdout}"
    );

    // The old process drains and exits by itself, with status 0; load goes on meanwhile.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = node.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    let at_exit = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    eprintln!(
        "upgrade under load: {} requests answered, {} failed ({before} before the upgrade, {at_exit} when the old process exited)",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests: {errors:?}"
    );
    assert!(before > 0, "requests before the upgrade");
    assert!(
        ok.load(Ordering::Relaxed) > at_exit,
        "the new process serves after the old exited"
    );
    assert!(signal("0", new), "the new process runs");
}

#[tokio::test]
async fn verge_control_stops_within_its_grace_period_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = ports::addr();
    let config = dir.path().join("control.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"{addr}\"\ndata_dir: {}/data\ntokens:\n  - {{name: ops, token: secret-ops-token-0123456789, scopes: [read]}}\n",
            dir.path().display()
        ),
    )
    .expect("write");
    let mut child = Launch::verge_with(&["control", "-c"]).spawn(&config);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(child.try_wait().expect("wait").is_none(), "control exited");
        assert!(Instant::now() < deadline, "control not up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(signal("TERM", child.id()));
    // 5 s grace + up to 5 s for the runtime, not Pingora's 300 s default.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("verge control still running 20 s after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), Some(0));
}
