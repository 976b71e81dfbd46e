//! Failing fast and telling the truth: a port in use or a certificate that does not match its
//! key stops verge at once with the cause named (no process stays up serving nothing), and
//! `/readyz` stays 503 on a node fed by a control plane it has never heard from.

use crate::harness::{client, free_port, spawn_verge, verge_bin, TestConfig};
use std::io::Read;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// One pool and one route, so that only what a test breaks is wrong.
const ROUTES: &str =
    "pools: {o: {backends: [\"127.0.0.1:9\"]}}\nroutes: [{hosts: [site.test], pool: o}]\n";

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
        let cfg = TestConfig::write(ROUTES, None);
        let busy = if which == "listener" {
            cfg.http
        } else {
            cfg.admin
        };
        let _holder = std::net::TcpListener::bind(busy).expect("hold the port");
        let mut child = spawn_verge(&["serve", "-c"], &cfg.path);
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
    let certs = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/test-certs");
    for (cert, key, expected) in [
        ("server.crt", "other.key", "does not match the certificate"),
        ("expired.crt", "expired.key", "expired on 2020-02-01"),
    ] {
        let listeners = format!(
            "listeners:\n  - name: https\n    listen: \"{{http}}\"\n    tls: {{cert: {certs}/{cert}, key: {certs}/{key}}}\n"
        );
        let cfg = TestConfig::write(ROUTES, Some(&listeners));
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

        let mut child = spawn_verge(&["serve", "-c"], &cfg.path);
        let (code, err) = exit_of(&mut child, Duration::from_secs(10));
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(expected), "{err}");
    }
}

#[tokio::test]
async fn a_node_that_never_heard_from_its_control_plane_is_not_ready() {
    let dead = format!("127.0.0.1:{}", free_port());
    let cfg = TestConfig::write(
        &format!(
            "control:\n  url: http://{dead}\n  node_id: lonely\n  state_file: \"{{dir}}/snapshot.json\"\n  wait: 1s\n"
        ),
        None,
    );
    let mut child = spawn_verge(&["serve", "-c"], &cfg.path);
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
    let (_, metrics) = admin("/metrics").await.expect("metrics");
    // The prometheus crate writes +Inf as `inf`, which Prometheus parses as +Inf.
    let age = metrics
        .lines()
        .find_map(|l| l.strip_prefix("verge_snapshot_age_seconds "))
        .and_then(|v| {
            v.trim_start_matches('+')
                .to_ascii_lowercase()
                .parse::<f64>()
                .ok()
        });
    assert_eq!(
        age,
        Some(f64::INFINITY),
        "a snapshot never received is not 0 s old"
    );
    let _ = child.kill();
    let _ = child.wait();
}
