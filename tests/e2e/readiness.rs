//! Failing fast and telling the truth: a port in use or a certificate that does not match its
//! key stops verge at once with the cause named (no process stays up serving nothing), and
//! `/readyz` stays 503 on a node fed by a control plane it has never heard from.

use crate::support::config::Control;
use crate::support::process::{verge_bin, Launch, TestConfig};
use crate::support::{client, ports, Config, Listener, Metrics, Pool, Route};
use std::io::Read;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// One pool and one route, so that only what a test breaks is wrong.
fn routed() -> Config {
    Config::new()
        .pool(Pool::new("o", &[ports::addr()]))
        .route(Route::to("o").hosts(&["site.test"]))
}

/// Wait for `child` to exit (at most `within`); its status code and stderr.
fn exit_of(child: &mut Child, within: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_port_in_use_ends_verge_at_once_with_the_address() {
    for which in ["listener", "admin"] {
        let cfg = TestConfig::write(&routed());
        let busy = if which == "listener" {
            cfg.http
        } else {
            cfg.admin
        };
        let _holder = std::net::TcpListener::bind(busy).expect("hold the port");
        let mut child = Launch::verge().spawn(&cfg.path);
        // Pingora alone retries a busy port for 30 s and then stays up without it.
        let (code, err) = exit_of(&mut child, Duration::from_secs(10));
        assert_eq!(code, Some(1), "{which}: {err}");
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains(&busy.to_string()))
            .collect();
        assert_eq!(lines.len(), 1, "{which}: one line names {busy}: {err}");
        assert!(lines[0].contains("in use"), "{}", lines[0]);
    }
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused_by_check_and_serve() {
    let certs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/test-certs");
    for (cert, key, expected) in [
        ("server.crt", "other.key", "does not match the certificate"),
        ("expired.crt", "expired.key", "expired on 2020-02-01"),
    ] {
        let cfg = TestConfig::write(
            &routed().listener(
                Listener::new()
                    .name("https")
                    .tls(&certs.join(cert), &certs.join(key)),
            ),
        );
        let out = Command::new(verge_bin())
            .args(["check", "-c"])
            .arg(&cfg.path)
            .output()
            .expect("verge check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("listeners[0].tls") && err.contains(expected),
            "{err}"
        );

        let mut child = Launch::verge().spawn(&cfg.path);
        let (code, err) = exit_of(&mut child, Duration::from_secs(10));
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

#[tokio::test]
async fn a_node_that_never_heard_from_its_control_plane_is_not_ready() {
    // nothing listens there
    let dead = ports::addr();
    let tokens = tempfile::tempdir().expect("tempdir");
    let token = tokens.path().join("node.token");
    std::fs::write(&token, "node-token-0123456789abcdef").expect("token");
    let cfg = TestConfig::write(
        &Config::new().control(
            Control::new(&format!("http://{dead}"), "lonely", &token)
                .state_file("{dir}/snapshot.json")
                .wait("1s"),
        ),
    );
    let mut child = Launch::verge().spawn(&cfg.path);
    let admin = |path: &str| {
        let url = format!("http://{}{path}", cfg.admin);
        async move {
            let r = client().get(url).send().await.ok()?;
            let status = r.status().as_u16();
            Some((status, r.text().await.unwrap_or_default()))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = admin("/readyz").await;
        if answer.is_some_and(|(_, why)| !why.contains("listeners")) {
            break;
        }
        assert!(Instant::now() < deadline, "listeners never bound");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Alive, listening, polling in vain: not ready, for as long as it lasts.
    for _ in 0..10 {
        let (status, why) = admin("/readyz").await.expect("readyz");
        assert_eq!(status, 503, "{why}");
        assert!(why.contains("control plane"), "{why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, status) = admin("/status").await.expect("status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["ready"], false);
    assert_eq!(status["readiness"]["listeners_bound"], true, "{status}");
    assert_eq!(status["readiness"]["snapshot_received"], false, "{status}");
    // The prometheus crate writes +Inf as `inf`, which Prometheus parses as +Inf.
    let age = Metrics::scrape(cfg.admin)
        .await
        .value("verge_snapshot_age_seconds", &[]);
    assert_eq!(
        age,
        Some(f64::INFINITY),
        "a snapshot never received is not 0 s old"
    );
    let _ = child.kill();
    let _ = child.wait();
}
