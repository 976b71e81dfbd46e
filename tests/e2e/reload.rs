//! In-place reload: SIGHUP and `verge reload` re-read the config file and swap the routes and
//! pools in without a new process, so cached objects keep being hits; a file that does not
//! validate, or that changes what only a new process can (listeners), is refused and the old
//! config keeps serving. The outcome shows in `/status` and in `verge_config_reloads_total`.

use crate::support::process::{verge_bin, Launch, TestConfig};
use crate::support::{client, ports, Config, Listener, Metrics, Origin, Pool, Route, RouteCache};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A verge process started on a config file the test rewrites; killed on drop.
struct Node {
    child: Child,
    cfg: TestConfig,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    async fn start(config: &Config) -> Node {
        Node::start_with(Launch::verge(), config).await
    }

    async fn start_with(launch: Launch, config: &Config) -> Node {
        let cfg = TestConfig::write(config);
        let child = launch.spawn(&cfg.path);
        let mut node = Node { child, cfg };
        let deadline = Instant::now() + Duration::from_secs(20);
        while get_status(node.cfg.admin, "/readyz").await != Some(200) {
            assert!(
                node.child.try_wait().expect("wait").is_none(),
                "verge exited"
            );
            assert!(Instant::now() < deadline, "verge not ready in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    }

    /// Write `config` over the file the node was started with (same ports and directory).
    fn rewrite(&self, config: &Config) {
        let text = config.render(self.cfg.http, self.cfg.admin, self.cfg.dir.path());
        std::fs::write(&self.cfg.path, text).expect("write config");
    }

    fn hangup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "SIGHUP sent");
    }

    async fn status(&self) -> Value {
        let r = client()
            .get(format!("http://{}/status", self.cfg.admin))
            .send()
            .await
            .expect("status");
        r.json().await.expect("status json")
    }

    /// Wait until `/status` shows `n` reload attempts; returns the last one.
    async fn reload_attempt(&self, n: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status().await;
            if s["reload"]["attempts"] == n {
                return s["reload"]["last"].clone();
            }
            assert!(Instant::now() < deadline, "no reload attempt {n}: {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        Metrics::scrape(self.cfg.admin).await.value(name, labels)
    }

    /// GET `path` with `host`: status and `Cache-Status`.
    async fn get(&self, host: &str, path: &str) -> (u16, String) {
        let r = client()
            .get(format!("http://{}{path}", self.cfg.http))
            .header("host", host)
            .send()
            .await
            .expect("request");
        let cache = r
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (r.status().as_u16(), cache)
    }

    fn verge_reload(&self) -> (Option<i32>, String, String) {
        let out = Command::new(verge_bin())
            .args(["reload", "-c"])
            .arg(&self.cfg.path)
            .env("RUST_LOG", "warn")
            .output()
            .expect("verge reload");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

async fn get_status(admin: SocketAddr, path: &str) -> Option<u16> {
    let r = client()
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

/// Version `version`: pool `o`, a caching route for site.test, and one for each of `more`
/// (to pool `pool`).
fn config(origin: &Origin, version: &str, pool: &str, more: &[&str]) -> Config {
    let mut c = Config::new()
        .version(version)
        .pool(Pool::new("o", &[origin.addr]));
    for host in more {
        c = c.route(Route::to(pool).hosts(&[host]).cache(RouteCache::new()));
    }
    c.route(
        Route::to("o")
            .hosts(&["site.test"])
            .cache(RouteCache::new()),
    )
}

#[tokio::test]
async fn sighup_applies_a_good_file_keeps_the_cache_and_refuses_a_bad_one() {
    let o = Origin::start("o").await;
    o.set_headers("/kept", &[("cache-control", "max-age=300")]);
    let mut node = Node::start(&config(&o, "one", "o", &[])).await;
    assert_eq!(node.get("site.test", "/kept").await.0, 200);
    let (status, cache) = node.get("site.test", "/kept").await;
    assert_eq!((status, o.hits("/kept")), (200, 1));
    assert!(cache.contains("hit"), "{cache}");
    assert_eq!(node.get("new.test", "/kept").await.0, 404);

    // A good file: a new version with one more route.
    node.rewrite(&config(&o, "two", "o", &["new.test"]));
    node.hangup();
    let last = node.reload_attempt(1).await;
    assert_eq!(last["outcome"], "success", "{last}");
    assert_eq!(last["version"], "two");
    assert_eq!(node.status().await["config_version"], "two");
    // The new route serves, and the object cached before the reload is still a hit.
    assert_eq!(node.get("new.test", "/fresh").await.0, 200);
    let (status, cache) = node.get("site.test", "/kept").await;
    assert_eq!(status, 200);
    assert!(
        cache.contains("hit"),
        "still a hit after the reload: {cache}"
    );
    assert_eq!(o.hits("/kept"), 1, "the origin was not asked again");
    assert_eq!(
        node.metric("verge_config_reloads_total", &[("outcome", "success")])
            .await,
        Some(1.0)
    );
    assert!(node
        .metric("verge_config_last_reload_success_timestamp_seconds", &[])
        .await
        .is_some_and(|t| t > 0.0));

    // A bad file: a route to a pool that does not exist. Refused; version two keeps serving.
    node.rewrite(&config(&o, "bad", "nope", &["new.test"]));
    node.hangup();
    let last = node.reload_attempt(2).await;
    assert_eq!(last["outcome"], "invalid", "{last}");
    let errors = last["errors"].to_string();
    assert!(errors.contains("routes[0].pool"), "{errors}");
    assert_eq!(node.status().await["config_version"], "two");
    assert_eq!(node.get("new.test", "/fresh").await.0, 200);
    assert_eq!(
        node.metric("verge_config_reloads_total", &[("outcome", "invalid")])
            .await,
        Some(1.0)
    );
    assert!(
        node.child.try_wait().expect("wait").is_none(),
        "SIGHUP never ends the process"
    );
}

#[tokio::test]
async fn verge_reload_reports_the_outcome_and_refuses_socket_changes() {
    let o = Origin::start("o").await;
    let node = Node::start(&config(&o, "one", "o", &[])).await;

    node.rewrite(&config(&o, "three", "o", &[]));
    let (code, out, err) = node.verge_reload();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("serves config three"), "{out}");

    // A listener on another port needs a new process: refused, with the way to do it.
    let moved = ports::addr().to_string();
    node.rewrite(
        &config(&o, "four", "o", &[]).listener(
            Listener::new()
                .name("http")
                .set("listen", &format!("\"{moved}\"")),
        ),
    );
    let (code, _, err) = node.verge_reload();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("listeners[0]") && err.contains("verge upgrade"),
        "{err}"
    );
    let last = node.reload_attempt(2).await;
    assert_eq!(last["outcome"], "needs_restart", "{last}");
    assert_eq!(node.status().await["config_version"], "three");
    assert_eq!(node.get("site.test", "/still").await.0, 200);

    // A file that does not parse is not even signalled.
    std::fs::write(&node.cfg.path, "routes: [").expect("write");
    let (code, _, err) = node.verge_reload();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nothing was signalled"), "{err}");
    assert_eq!(node.status().await["reload"]["attempts"], 2);
}

/// A `server:` block with `log_level: LEVEL` (the kit's own settings otherwise).
fn server_logging(level: &str) -> String {
    format!(
        "server: {{threads: 2, grace_period: 0s, graceful_shutdown_timeout: 1s, pid_file: \
         \"{{dir}}/verge.pid\", upgrade_sock: \"{{dir}}/upgrade.sock\", log_level: {level}}}"
    )
}

#[tokio::test]
async fn server_log_level_sets_the_process_log_and_a_reload_changes_it() {
    let o = Origin::start("o").await;
    let at = |level: &str| config(&o, level, "o", &[]).raw(&server_logging(level));
    // without RUST_LOG, the file's level rules
    let mut node = Node::start_with(Launch::verge().env("RUST_LOG", ""), &at("warn")).await;
    let stderr = node.child.stderr.take().expect("stderr");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });
    let read =
        |seen: &std::sync::mpsc::Receiver<String>| -> Vec<String> { seen.try_iter().collect() };
    node.rewrite(&at("info"));
    node.hangup();
    assert_eq!(node.reload_attempt(1).await["outcome"], "success");
    // the SIGHUP line is logged at info before the reload, the outcome at info after it
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = read(&seen);
    while !log.iter().any(|l| l.contains("config reloaded from")) {
        assert!(Instant::now() < deadline, "no reload line at info: {log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.extend(read(&seen));
    }
    assert!(
        !log.iter().any(|l| l.contains("SIGHUP received")),
        "at warn, the info line before the reload is not written: {log:?}"
    );
    // back to warn: a reload's own info line is no longer written
    node.rewrite(&at("warn"));
    node.hangup();
    assert_eq!(node.reload_attempt(2).await["outcome"], "success");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<String> = read(&seen);
    assert!(
        !after.iter().any(|l| l.contains("config reloaded from")),
        "at warn again: {after:?}"
    );
    assert!(
        after.iter().any(|l| l.contains("SIGHUP received")),
        "the SIGHUP line came while the level was still info: {after:?}"
    );
}
