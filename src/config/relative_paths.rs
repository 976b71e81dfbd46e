//! Paths in a config file are read from that file's directory, as nginx reads its `include`s:
//! `tls: {cert: certs/site.pem}` next to `/etc/verge/verge.yaml` means
//! `/etc/verge/certs/site.pem`, whatever directory verge was started from.

use serde_yaml::Value;
use std::path::Path;

/// The keys of a node's config (`verge serve`) that hold file paths, as key paths (`*` for
/// every item of a list).
pub const NODE_PATHS: &[&[&str]] = &[
    &["server", "pid_file"],
    &["server", "upgrade_sock"],
    &["server", "error_log"],
    &["server", "ca_file"],
    &["control", "token_file"],
    &["control", "state_file"],
    &["control", "verify_keys", "*"],
    &["access_log", "path"],
    &["tier", "secret_file"],
    &["cache", "disk", "path"],
    &["listeners", "*", "tls", "cert"],
    &["listeners", "*", "tls", "key"],
    &["listeners", "*", "tls", "certificates", "*", "cert"],
    &["listeners", "*", "tls", "certificates", "*", "key"],
    &["listeners", "*", "error_pages", "*", "file"],
    &["routes", "*", "error_pages", "*", "file"],
];

/// The keys of the control plane's config (`verge control`) that hold file paths.
pub const CONTROL_PATHS: &[&[&str]] = &[
    &["data_dir"],
    &["seed_policy"],
    &["signing_key"],
    &["audit_log"],
    &["tokens", "*", "token_file"],
    &["store", "etcd", "auth", "password_file"],
    &["store", "etcd", "tls", "ca"],
    &["store", "etcd", "tls", "cert"],
    &["store", "etcd", "tls", "key"],
];

/// Rewrite every relative path at `keys` in `doc` as one under `base`. Absolute paths, `-`
/// (standard output) and values that are not strings are left as they are (validation reports
/// those).
pub fn resolve(doc: &mut Value, base: &Path, keys: &[&[&str]]) {
    for path in keys {
        resolve_at(doc, path, base);
    }
}

fn resolve_at(node: &mut Value, keys: &[&str], base: &Path) {
    let Some((first, rest)) = keys.split_first() else {
        if let Value::String(s) = node {
            if !s.is_empty() && s != "-" && Path::new(s.as_str()).is_relative() {
                *s = base.join(s.as_str()).display().to_string();
            }
        }
        return;
    };
    match (*first, node) {
        ("*", Value::Sequence(items)) => {
            for item in items {
                resolve_at(item, rest, base);
            }
        }
        ("*", Value::Mapping(map)) => {
            for (_, item) in map.iter_mut() {
                resolve_at(item, rest, base);
            }
        }
        (key, Value::Mapping(map)) => {
            if let Some(child) = map.get_mut(key) {
                resolve_at(child, rest, base);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_read_from_the_files_directory() {
        let mut doc: Value = serde_yaml::from_str(
            "server: {pid_file: run/verge.pid, upgrade_sock: /run/verge.sock}\n\
             access_log: {path: '-'}\n\
             cache: {disk: {path: cache/disk}}\n\
             control: {url: 'http://c', state_file: state.json, verify_keys: [k/a.pub, /k/b.pub]}\n\
             listeners:\n\
             - {listen: ':80'}\n\
             - {listen: ':443', tls: {cert: certs/a.pem, key: /k.pem}}\n\
             routes: [{pool: certs/x}]\n",
        )
        .expect("yaml");
        resolve(&mut doc, Path::new("/etc/verge"), NODE_PATHS);
        let at = |p: &str| {
            p.split('.')
                .fold(&doc, |v, k| match k.parse::<usize>() {
                    Ok(i) => &v[i],
                    Err(_) => &v[k],
                })
                .as_str()
                .map(str::to_string)
        };
        assert_eq!(
            at("server.pid_file").as_deref(),
            Some("/etc/verge/run/verge.pid")
        );
        assert_eq!(
            at("server.upgrade_sock").as_deref(),
            Some("/run/verge.sock")
        );
        assert_eq!(at("access_log.path").as_deref(), Some("-"));
        assert_eq!(
            at("cache.disk.path").as_deref(),
            Some("/etc/verge/cache/disk")
        );
        assert_eq!(
            at("control.state_file").as_deref(),
            Some("/etc/verge/state.json")
        );
        assert_eq!(
            at("control.verify_keys.0").as_deref(),
            Some("/etc/verge/k/a.pub")
        );
        assert_eq!(at("control.verify_keys.1").as_deref(), Some("/k/b.pub"));
        assert_eq!(
            at("listeners.1.tls.cert").as_deref(),
            Some("/etc/verge/certs/a.pem")
        );
        assert_eq!(at("listeners.1.tls.key").as_deref(), Some("/k.pem"));
        assert_eq!(
            at("routes.0.pool").as_deref(),
            Some("certs/x"),
            "not a path"
        );
        let mut control: Value =
            serde_yaml::from_str("signing_key: sign.key\naudit_log: log/audit.jsonl\n")
                .expect("yaml");
        resolve(&mut control, Path::new("/etc/vc"), CONTROL_PATHS);
        assert_eq!(control["signing_key"].as_str(), Some("/etc/vc/sign.key"));
        assert_eq!(
            control["audit_log"].as_str(),
            Some("/etc/vc/log/audit.jsonl")
        );
    }
}
