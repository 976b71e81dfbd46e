//! The `verge control` config file: raw serde types and their validation (every error, with its key).

use super::purge_scope::HostPattern;
use super::store_settings::{validate_store, StoreSettings};
use crate::config::keys::{read_signing_key, SigningKey};
use crate::config::secret::{read_secret, SecretSource};
use crate::config::units::{ConfDuration, ConfSize};
use crate::config::{relative_paths, ConfigError, ConfigErrors};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControlSettings {
    listen: Option<String>,
    data_dir: Option<String>,
    #[serde(default)]
    tokens: Vec<RawToken>,
    #[serde(default)]
    insecure_no_auth: bool,
    invalidation_retention: Option<ConfDuration>,
    coalesce_window: Option<ConfDuration>,
    purge_rate: Option<RawRate>,
    max_body: Option<ConfSize>,
    max_wait: Option<ConfDuration>,
    compact_after: Option<usize>,
    policy_history: Option<usize>,
    seed_policy: Option<String>,
    threads: Option<usize>,
    grace_period: Option<ConfDuration>,
    graceful_shutdown_timeout: Option<ConfDuration>,
    signing_key: Option<String>,
    audit_log: Option<String>,
    store: Option<serde_yaml::Value>,
    #[serde(default)]
    tenants: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    token: Option<String>,
    token_file: Option<String>,
    token_env: Option<String>,
    scopes: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    tenants: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    per_second: f64,
    burst: Option<f64>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read policy, history, nodes; poll snapshots; report what a node applied.
    Read,
    /// Write (and roll back) the policy.
    PolicyWrite,
    /// Invalidate URLs, tags, prefixes and whole hosts (as `PurgeHost`).
    Purge,
    /// Invalidate URLs, tags and prefixes below a host's root.
    PurgeUrl,
    /// Invalidate whole hosts (and prefixes covering one), and all `PurgeUrl` may.
    PurgeHost,
    /// Invalidate everything, and all `PurgeHost` may.
    PurgeAll,
}

impl Scope {
    fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "read" => Scope::Read,
            "policy:write" => Scope::PolicyWrite,
            "purge" => Scope::Purge,
            "purge:url" => Scope::PurgeUrl,
            "purge:host" => Scope::PurgeHost,
            "purge:all" => Scope::PurgeAll,
            _ => return None,
        })
    }

    /// The scope as written in the settings file.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::PolicyWrite => "policy:write",
            Scope::Purge => "purge",
            Scope::PurgeUrl => "purge:url",
            Scope::PurgeHost => "purge:host",
            Scope::PurgeAll => "purge:all",
        }
    }
}

/// One bearer token and what it may do.
#[derive(Debug, Clone)]
pub struct Token {
    /// Its name, recorded as the author of writes.
    pub name: String,
    /// The bearer secret.
    pub secret: String,
    /// What it may do.
    pub scopes: HashSet<Scope>,
    /// The hosts it may purge (empty: any): its own `hosts` and those of its `tenants`.
    pub hosts: Vec<HostPattern>,
}

/// Token-bucket rate for purges, per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained purges per second.
    pub per_second: f64,
    /// Purges allowed at once.
    pub burst: f64,
}

/// Validated control-plane settings.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Where the durable log lives.
    pub data_dir: PathBuf,
    /// Bearer tokens and their scopes.
    pub tokens: Vec<Token>,
    /// No tokens: every request is allowed (only for a loopback-only lab setup).
    pub insecure_no_auth: bool,
    /// Invalidations older than this are compacted away; nodes forget them after it too.
    pub invalidation_retention: Duration,
    /// The same invalidation repeated within this window returns the first one's `seq`.
    pub coalesce_window: Duration,
    /// Purge rate per token.
    pub purge_rate: Rate,
    /// Largest request body the API reads.
    pub max_body: usize,
    /// Longest long-poll a node may ask for.
    pub max_wait: Duration,
    /// Compact once this many invalidations were appended since the last compaction.
    pub compact_after: usize,
    /// Policy versions kept for history and rollback.
    pub policy_history: usize,
    /// Policy file written as version 1 when the store is empty.
    pub seed_policy: Option<PathBuf>,
    /// Worker threads.
    pub threads: usize,
    /// How long requests in flight may keep running after SIGTERM (5 s, as a node's).
    pub grace_period: Duration,
    /// How long the runtime may take to stop after that (5 s).
    pub graceful_shutdown_timeout: Duration,
    /// Signs every snapshot message (`verge-signature`), for nodes with `control.verify_keys`.
    pub signing_key: Option<SigningKey>,
    /// Where every API call is recorded (JSON lines), if anywhere.
    pub audit_log: Option<PathBuf>,
    /// Where policy and invalidations are kept (`store:`).
    pub store: StoreSettings,
}

impl ControlSettings {
    /// Read and validate a control-plane config file; errors name the file and every key.
    pub fn load(path: &Path) -> Result<ControlSettings, ConfigErrors> {
        let with_file = |errors: Vec<ConfigError>| ConfigErrors {
            file: Some(path.to_path_buf()),
            errors,
        };
        let one = |message: String| with_file(vec![ConfigError::new("", message)]);
        let text = std::fs::read_to_string(path).map_err(|e| one(format!("cannot read: {e}")))?;
        // paths in the file are read from its directory
        let base = path.parent().filter(|d| !d.as_os_str().is_empty());
        Self::parse(&text, base).map_err(|e| with_file(e.errors))
    }

    /// Parse and validate YAML text (relative paths as they stand).
    pub fn from_yaml_str(text: &str) -> Result<ControlSettings, ConfigErrors> {
        Self::parse(text, None)
    }

    fn parse(text: &str, base: Option<&Path>) -> Result<ControlSettings, ConfigErrors> {
        let fail =
            |e: serde_yaml::Error| ConfigErrors::new(vec![ConfigError::new("", e.to_string())]);
        let mut doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(fail)?;
        if let Some(base) = base {
            relative_paths::resolve(&mut doc, base, relative_paths::CONTROL_PATHS);
        }
        let raw: RawControlSettings = serde_yaml::from_value(doc).map_err(fail)?;
        validate(raw).map_err(ConfigErrors::new)
    }
}

/// Host patterns from a list at `path`, each bad one reported at `path[j]`.
fn host_patterns(
    push: &mut dyn FnMut(&str, String),
    path: &str,
    list: &[String],
) -> Vec<HostPattern> {
    let mut hosts = Vec::new();
    for (j, h) in list.iter().enumerate() {
        match HostPattern::parse(h) {
            Some(p) => hosts.push(p),
            None => push(
                &format!("{path}[{j}]"),
                format!("{h:?} is not a host or *.domain"),
            ),
        }
    }
    hosts
}

fn validate(raw: RawControlSettings) -> Result<ControlSettings, Vec<ConfigError>> {
    let mut errs = Vec::new();
    let mut push = |path: &str, message: String| errs.push(ConfigError::new(path, message));
    let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:9900".into());
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        push("listen", format!("{listen_text:?} is not ip:port"));
        SocketAddr::from(([127, 0, 0, 1], 9900))
    });
    let mut tenants = BTreeMap::new();
    for (name, list) in &raw.tenants {
        let path = format!("tenants.{name}");
        if list.is_empty() {
            push(&path, "a tenant needs at least one host".into());
        }
        tenants.insert(name.clone(), host_patterns(&mut push, &path, list));
    }
    let mut tokens = Vec::new();
    let mut names = HashSet::new();
    for (i, t) in raw.tokens.into_iter().enumerate() {
        let path = format!("tokens[{i}]");
        if !names.insert(t.name.clone()) {
            push(
                &format!("{path}.name"),
                format!("duplicate token name {:?}", t.name),
            );
        }
        let secret = match (t.token, t.token_file, t.token_env) {
            (Some(s), None, None) => Some(s),
            (None, Some(f), None) => read_secret(SecretSource::File(Path::new(&f)))
                .map_err(|e| push(&format!("{path}.token_file"), e.to_string()))
                .ok(),
            (None, None, Some(v)) => read_secret(SecretSource::Env(&v))
                .map_err(|e| push(&format!("{path}.token_env"), e.to_string()))
                .ok(),
            _ => {
                push(
                    &path,
                    "set exactly one of token, token_file, token_env".into(),
                );
                None
            }
        };
        if let Some(s) = &secret {
            if s.len() < 16 {
                push(&path, "a token must be at least 16 characters".into());
            }
        }
        let mut scopes = HashSet::new();
        for (j, s) in t.scopes.iter().enumerate() {
            match Scope::parse(s) {
                Some(sc) => {
                    scopes.insert(sc);
                }
                None => push(
                    &format!("{path}.scopes[{j}]"),
                    format!(
                        "unknown scope {s:?} (read, policy:write, purge, purge:url, purge:host, purge:all)"
                    ),
                ),
            }
        }
        let mut hosts = host_patterns(&mut push, &format!("{path}.hosts"), &t.hosts);
        for (j, name) in t.tenants.iter().enumerate() {
            match tenants.get(name) {
                Some(patterns) => hosts.extend(patterns.iter().cloned()),
                None => push(
                    &format!("{path}.tenants[{j}]"),
                    format!("unknown tenant {name:?} (tenants: defines them)"),
                ),
            }
        }
        if (!t.hosts.is_empty() || !t.tenants.is_empty()) && scopes.contains(&Scope::PurgeAll) {
            push(
                &format!("{path}.hosts"),
                "a token limited to hosts or tenants cannot have purge:all (it reaches every host)"
                    .into(),
            );
        }
        if let Some(secret) = secret {
            tokens.push(Token {
                name: t.name,
                secret,
                scopes,
                hosts,
            });
        }
    }
    if tokens.is_empty() && !raw.insecure_no_auth {
        push(
            "tokens",
            "configure at least one token (or set insecure_no_auth: true for a lab)".into(),
        );
    }
    let positive = |push: &mut dyn FnMut(&str, String), key: &str, d: Option<ConfDuration>, def| {
        let v = d.map_or(def, |d| d.0);
        if v.is_zero() {
            push(key, "must be greater than zero".into());
        }
        v
    };
    let invalidation_retention = positive(
        &mut push,
        "invalidation_retention",
        raw.invalidation_retention,
        Duration::from_secs(7 * 86400),
    );
    let coalesce_window = raw.coalesce_window.map_or(Duration::from_secs(1), |d| d.0);
    let max_wait = positive(&mut push, "max_wait", raw.max_wait, Duration::from_secs(60));
    let purge_rate = match raw.purge_rate {
        None => Rate {
            per_second: 100.0,
            burst: 1000.0,
        },
        Some(r) => {
            let burst = r.burst.unwrap_or(r.per_second.max(1.0));
            if !(r.per_second.is_finite() && r.per_second > 0.0) {
                push("purge_rate.per_second", "must be a positive number".into());
            }
            if !(burst.is_finite() && burst >= 1.0) {
                push("purge_rate.burst", "must be at least 1".into());
            }
            Rate {
                per_second: r.per_second,
                burst,
            }
        }
    };
    let max_body = raw.max_body.map_or(4 << 20, |s| s.0);
    if !(1024..=(64 << 20)).contains(&max_body) {
        push("max_body", "must be between 1KiB and 64MiB".into());
    }
    let threads = raw.threads.unwrap_or(2);
    if threads == 0 || threads > 64 {
        push("threads", "must be between 1 and 64".into());
    }
    let store = validate_store(raw.store, &mut push);
    let seed_policy = raw.seed_policy.map(PathBuf::from);
    if let Some(p) = &seed_policy {
        if !p.is_file() {
            push("seed_policy", format!("{} does not exist", p.display()));
        }
    }
    let signing_key = raw.signing_key.and_then(|p| {
        read_signing_key(Path::new(&p))
            .map_err(|e| push("signing_key", e))
            .ok()
    });
    let settings = ControlSettings {
        listen,
        data_dir: raw
            .data_dir
            .map_or_else(|| PathBuf::from("/var/lib/verge-control"), PathBuf::from),
        tokens,
        insecure_no_auth: raw.insecure_no_auth,
        invalidation_retention,
        coalesce_window,
        purge_rate,
        max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
        max_wait,
        compact_after: raw.compact_after.unwrap_or(10_000).max(1),
        policy_history: raw.policy_history.unwrap_or(100).max(1),
        seed_policy,
        threads,
        grace_period: raw.grace_period.map_or(Duration::from_secs(5), |d| d.0),
        graceful_shutdown_timeout: raw
            .graceful_shutdown_timeout
            .map_or(Duration::from_secs(5), |d| d.0),
        signing_key,
        audit_log: raw.audit_log.map(PathBuf::from),
        store,
    };
    if errs.is_empty() {
        Ok(settings)
    } else {
        Err(errs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_settings() {
        let s = ControlSettings::from_yaml_str(
            "listen: 127.0.0.1:7000\ndata_dir: /tmp/x\ntokens:\n  - {name: ops, token: aaaaaaaaaaaaaaaaaaaa, scopes: [read, purge]}\n",
        )
        .unwrap();
        assert_eq!(s.listen.port(), 7000);
        assert!(s.tokens[0].scopes.contains(&Scope::Purge));
        assert!(!s.tokens[0].scopes.contains(&Scope::PurgeAll));
        assert_eq!(s.invalidation_retention, Duration::from_secs(7 * 86400));
    }

    #[test]
    fn every_error_named() {
        let e = ControlSettings::from_yaml_str(
            "listen: nope\ntokens:\n  - {name: a, token: short, scopes: [read, root]}\n  - {name: a, scopes: []}\nmax_wait: 0s\n",
        )
        .unwrap_err();
        let text = e.to_string();
        for needle in [
            "listen:",
            "tokens[0]: a token must be at least 16",
            "tokens[0].scopes[1]: unknown scope",
            "tokens[1].name: duplicate",
            "tokens[1]: set exactly one",
            "max_wait: must be greater",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        let e = ControlSettings::from_yaml_str(
            "tokens:\n  - {name: a, token: aaaaaaaaaaaaaaaaaaaa, scopes: [purge:all], hosts: [ok.test, 'bad host']}\nsigning_key: /nonexistent/key.pem\n",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "tokens[0].hosts[1]: \"bad host\" is not a host",
            "tokens[0].hosts: a token limited to hosts or tenants cannot have purge:all",
            "signing_key: /nonexistent/key.pem",
        ] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
        let e = ControlSettings::from_yaml_str(
            "tenants: {shop: [shop.test, '*.shop.test'], empty: [], bad: ['no such host']}\ntokens:\n  - {name: a, token: aaaaaaaaaaaaaaaaaaaa, scopes: [purge], tenants: [shop, nope]}\n",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "tenants.empty: a tenant needs at least one host",
            "tenants.bad[0]: \"no such host\" is not a host",
            "tokens[0].tenants[1]: unknown tenant \"nope\"",
        ] {
            assert!(e.contains(needle), "{needle} missing in {e}");
        }
        let ok = ControlSettings::from_yaml_str(
            "tenants: {shop: [shop.test, '*.shop.test']}\ntokens:\n  - {name: a, token: aaaaaaaaaaaaaaaaaaaa, scopes: [purge], hosts: [blog.test], tenants: [shop]}\n",
        )
        .expect("valid");
        assert_eq!(ok.tokens[0].hosts.len(), 3, "its hosts and its tenant's");
        let e = ControlSettings::from_yaml_str("tokens: []\n").unwrap_err();
        assert!(e.to_string().contains("insecure_no_auth"));
        let e = ControlSettings::from_yaml_str("bogus: 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"));
    }
}
