//! `verge check`: every shipped config validates; a bad one lists every error with its path.

use crate::support::process::verge_bin;
use std::process::Command;

#[test]
fn every_file_in_conf_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("conf dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(verge_bin())
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(["check", "-c"])
                .arg(&path)
                .output()
                .expect("run verge check");
            assert!(
                out.status.success(),
                "{} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "found {checked} configs");
}

#[test]
fn control_plane_examples_validate() {
    let root = env!("CARGO_MANIFEST_DIR");
    for args in [
        ["control", "--check", "-c", "conf/control/control.yaml"],
        ["check", "--policy", "-c", "conf/control/policy.yaml"],
        ["check", "-c", "conf/control/node.yaml", ""],
    ] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let out = Command::new(verge_bin())
            .current_dir(root)
            .args(&args)
            .output()
            .expect("run verge");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // a broken policy lists every error and exits 2
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("policy.yaml");
    std::fs::write(
        &bad,
        "pools: {p: {backends: []}}\nroutes: [{hosts: [\"*\"], pool: q}]\n",
    )
    .expect("write");
    let out = Command::new(verge_bin())
        .args(["check", "--policy", "-c"])
        .arg(&bad)
        .output()
        .expect("run verge");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pools.p.backends") && err.contains("routes[0].pool"),
        "{err}"
    );
}

#[test]
fn check_lists_every_error_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"
listeners: [{listen: "127.0.0.1:8080"}, {listen: "127.0.0.1:8080"}]
pools:
  web: {backends: ["127.0.0.1:9000"], selection: random}
routes:
  - {hosts: [a.com], pool: web}
  - {hosts: [b.com], pool: web}
  - {hosts: [c.com], pool: api}
  - {hosts: [d.com], pool: web, timeouts: {read: forever}}
"#,
    )
    .expect("write");
    let out = Command::new(verge_bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml: 4 errors"), "{err}");
    assert!(
        err.contains("listeners[1].listen: 127.0.0.1:8080 is used by another listener"),
        "{err}"
    );
    assert!(
        err.contains("pools.web.selection: unknown selection \"random\""),
        "{err}"
    );
    assert!(
        err.contains("routes[2].pool: unknown pool \"api\""),
        "{err}"
    );
    assert!(err.contains("routes[3]"), "{err}");
}

#[test]
fn serve_refuses_a_bad_config_and_names_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "listeners: []\n").expect("write");
    let out = Command::new(verge_bin())
        .args(["serve", "-c"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.yaml"), "{err}");
    assert!(
        err.contains("listeners: at least one listener is required"),
        "{err}"
    );
}

#[test]
fn paths_in_a_config_are_read_from_its_directory() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    // started from elsewhere: the certificates, tokens and seed policy are still found
    for args in [
        vec!["check", "-c", "tls-example.yaml"],
        vec!["check", "-c", "control/node.yaml"],
        vec!["control", "--check", "-c", "control/control.yaml"],
    ] {
        let mut cmd = Command::new(verge_bin());
        cmd.current_dir("/").args(&args[..args.len() - 1]);
        let out = cmd
            .arg(format!("{conf}/{}", args[args.len() - 1]))
            .output()
            .expect("run verge");
        assert!(
            out.status.success(),
            "{args:?} from /: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // a relative path that is not there is named as the file's directory reads it
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("verge.yaml");
    std::fs::write(
        &file,
        "listeners: [{listen: \"127.0.0.1:0\", tls: {cert: missing.pem, key: missing.key}}]\n",
    )
    .expect("write");
    let out = Command::new(verge_bin())
        .current_dir("/")
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("run verge check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let expected = dir.path().join("missing.pem");
    assert!(
        stderr.contains(&expected.display().to_string()),
        "names {}: {stderr}",
        expected.display()
    );
}
