//! The `tier:` section: a node's id and hop key in its fleet's ring, and the ring itself (in a
//! node's file or a control-plane policy).

use super::listeners::resolve_addr;
use super::pools::validate_pool;
use super::{valid_name, Errors};
use crate::config::model::*;
use crate::config::raw::*;
use crate::config::secret::{read_secret, SecretSource};
use crate::config::tier::*;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A node file's `tier:` block.
pub(super) fn validate_node_tier(raw: RawTier, errs: &mut Errors) -> Option<TierSpec> {
    let before = errs.len();
    if !valid_name(&raw.self_id) {
        errs.push(
            "tier.self",
            "use letters, digits, '-', '_' and '.' only (at most 128)",
        );
    }
    let secret = match read_secret(SecretSource::File(Path::new(&raw.secret_file))) {
        Ok(s) if s.len() >= MIN_SECRET_LEN => Some(TierSecret(Arc::from(s.into_bytes()))),
        Ok(_) => {
            errs.push(
                "tier.secret_file",
                format!("the key must be at least {MIN_SECRET_LEN} bytes"),
            );
            None
        }
        Err(e) => {
            errs.push("tier.secret_file", e.to_string());
            None
        }
    };
    let ring = match raw.members {
        Some(members) => {
            // the file's ring, as a policy would write it
            let parts = RawTierRing {
                members,
                hop_window: raw.hop_window,
                timeouts: raw.timeouts,
                health_check: raw.health_check,
                passive: raw.passive,
            };
            let ring = validate_ring("tier", parts, errs);
            if let Some(r) = &ring {
                if r.member(&raw.self_id).is_none() {
                    errs.push(
                        "tier.self",
                        format!("{:?} is not one of tier.members", raw.self_id),
                    );
                }
            }
            ring
        }
        None => {
            for (set, key) in [
                (raw.hop_window.is_some(), "hop_window"),
                (raw.timeouts.is_some(), "timeouts"),
                (raw.health_check.is_some(), "health_check"),
                (raw.passive.is_some(), "passive"),
            ] {
                if set {
                    errs.push(
                        format!("tier.{key}"),
                        "only with tier.members (without them the ring, these included, comes \
                         from the control plane's policy)",
                    );
                }
            }
            None
        }
    };
    let secret = secret?;
    (errs.len() == before).then_some(TierSpec {
        self_id: raw.self_id,
        secret,
        ring,
    })
}

/// A policy's `tier:` block.
pub(super) fn validate_policy_tier(
    value: serde_yaml::Value,
    errs: &mut Errors,
) -> Option<TierRing> {
    let raw = errs.decode::<RawTierRing>("tier", value)?;
    validate_ring("tier", raw, errs)
}

fn validate_ring(path: &str, raw: RawTierRing, errs: &mut Errors) -> Option<TierRing> {
    let before = errs.len();
    if raw.members.is_empty() {
        errs.push(
            format!("{path}.members"),
            "a ring needs at least one member",
        );
    }
    let (mut ids, mut addrs) = (HashSet::new(), HashSet::new());
    let mut members = Vec::new();
    for (i, m) in raw.members.iter().enumerate() {
        let at = format!("{path}.members[{i}]");
        if !valid_name(&m.id) {
            errs.push(
                format!("{at}.id"),
                "use letters, digits, '-', '_' and '.' only (at most 128)",
            );
        } else if !ids.insert(m.id.clone()) {
            errs.push(format!("{at}.id"), format!("{:?} is listed twice", m.id));
        }
        match resolve_addr(&m.addr) {
            Ok(addr) if !addrs.insert(addr) => {
                errs.push(format!("{at}.addr"), format!("{addr} is listed twice"))
            }
            Ok(addr) => members.push(TierMember {
                id: m.id.clone(),
                addr,
            }),
            Err(e) => errs.push(format!("{at}.addr"), e),
        }
    }
    let hop_window = raw.hop_window.map_or(DEFAULT_HOP_WINDOW, |d| d.0);
    if hop_window < Duration::from_secs(1) || hop_window > Duration::from_secs(300) {
        errs.push(format!("{path}.hop_window"), "must be between 1s and 300s");
    }
    // with no usable member, a stand-in backend lets the rest of the pool's settings be checked
    // (the missing members are reported above)
    let mut backends: Vec<RawBackend> = members
        .iter()
        .map(|m| RawBackend::Addr(m.addr.to_string()))
        .collect();
    if backends.is_empty() {
        backends.push(RawBackend::Addr("127.0.0.1:1".into()));
    }
    let pool = RawPool {
        backends,
        selection: Some("consistent".into()),
        hash_key: None,
        tls: None,
        health_check: raw.health_check,
        passive: raw.passive,
        timeouts: raw.timeouts,
        retries: Some(0),
    };
    let defaults = Timeouts {
        connect: Duration::from_secs(1),
        ..Timeouts::default()
    };
    let pool = validate_pool(TIER_POOL, path, pool, defaults, errs);
    let pool = pool.filter(|_| errs.len() == before && !members.is_empty())?;
    Some(TierRing {
        members,
        hop_window,
        pool,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Policy};
    use std::time::Duration;

    fn key_file(dir: &tempfile::TempDir, text: &str) -> String {
        let path = dir.path().join("tier.key");
        std::fs::write(&path, text).expect("write key");
        path.display().to_string()
    }

    const BASE: &str = "listeners: [{listen: \"127.0.0.1:8080\"}]\npools: {p: {backends: [\"127.0.0.1:1\"]}}\nroutes: [{hosts: [a.com], pool: p}]\n";

    #[test]
    fn a_ring_in_the_node_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = key_file(&dir, "0123456789abcdef0123\n");
        let text = format!(
            "{BASE}tier:\n  self: b\n  secret_file: {key}\n  members:\n    - {{id: a, addr: \"127.0.0.1:7001\"}}\n    - {{id: b, addr: \"127.0.0.1:7002\"}}\n  hop_window: 5s\n  timeouts: {{connect: 200ms}}\n"
        );
        let c = Config::from_yaml_str(&text).expect("valid");
        let tier = c.tier.expect("tier");
        assert_eq!(tier.self_id, "b");
        assert_eq!(&*tier.secret.0, b"0123456789abcdef0123");
        let ring = tier.ring.expect("ring");
        assert_eq!(ring.members.len(), 2);
        assert_eq!(ring.hop_window, Duration::from_secs(5));
        assert_eq!(ring.pool.timeouts.connect, Duration::from_millis(200));
        assert_eq!(ring.pool.retries, 0);
        assert_eq!(ring.member("a").map(|m| m.addr.port()), Some(7001));
    }

    #[test]
    fn every_tier_error_has_its_key_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let short = key_file(&dir, "short");
        let text = format!(
            "{BASE}tier:\n  self: c\n  secret_file: {short}\n  members:\n    - {{id: a, addr: \"127.0.0.1:7001\"}}\n    - {{id: a, addr: nowhere}}\n    - {{id: \"b c\", addr: \"127.0.0.1:7001\"}}\n  hop_window: 0s\n  passive: {{eject_for: 0s}}\n"
        );
        let errs = Config::from_yaml_str(&text).expect_err("invalid").errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "tier.secret_file",
                "tier.members[1].id",
                "tier.members[1].addr",
                "tier.members[2].id",
                "tier.members[2].addr",
                "tier.hop_window",
                "tier.passive.eject_for",
            ],
            "{errs:#?}"
        );
        let missing = format!("{BASE}tier: {{self: a, secret_file: /nonexistent/key, hop_window: 3s, members: [{{id: b, addr: \"127.0.0.1:1\"}}]}}\n");
        let errs = Config::from_yaml_str(&missing).expect_err("invalid").errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["tier.secret_file", "tier.self"], "{errs:#?}");
        let unknown = format!("{BASE}tier: {{self: a, secret_file: {short}, size: 3}}\n");
        let errs = Config::from_yaml_str(&unknown).expect_err("invalid").errors;
        assert!(
            errs[0].message.starts_with("unknown field `size`"),
            "{errs:#?}"
        );
    }

    #[test]
    fn ring_settings_need_members_in_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = key_file(&dir, "0123456789abcdef");
        let text = format!("{BASE}tier: {{self: a, secret_file: {key}, hop_window: 3s}}\n");
        let errs = Config::from_yaml_str(&text).expect_err("invalid").errors;
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "tier.hop_window");
        let text = format!("{BASE}tier: {{self: a, secret_file: {key}}}\n");
        let c = Config::from_yaml_str(&text).expect("valid: the ring comes from the policy");
        assert!(c.tier.expect("tier").ring.is_none());
    }

    #[test]
    fn a_policy_carries_the_ring_and_the_node_keeps_its_id_and_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = key_file(&dir, "0123456789abcdef");
        let node = Config::from_yaml_str(&format!("{BASE}tier: {{self: b, secret_file: {key}}}\n"))
            .expect("node");
        let policy = Policy::from_json(&serde_json::json!({
            "pools": {"p": {"backends": ["127.0.0.1:1"]}},
            "routes": [{"hosts": ["a.com"], "pool": "p"}],
            "tier": {"members": [{"id": "a", "addr": "127.0.0.1:7001"}, {"id": "b", "addr": "127.0.0.1:7002"}]},
        }))
        .expect("policy");
        let merged = node.with_policy(&policy);
        let tier = merged.tier.expect("tier");
        assert_eq!(tier.self_id, "b");
        assert_eq!(tier.ring.expect("ring").members.len(), 2);

        let bad = Policy::from_json(&serde_json::json!({
            "pools": {"p": {"backends": ["127.0.0.1:1"]}},
            "routes": [{"hosts": ["a.com"], "pool": "p"}],
            "tier": {"members": [{"id": "a", "addr": "x"}], "self": "a"},
        }))
        .expect_err("invalid")
        .errors;
        let paths: Vec<&str> = bad.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["tier", "tier.members[0].addr"], "{bad:#?}");
        assert!(
            bad[0].message.starts_with("unknown field `self`"),
            "{bad:#?}"
        );
        let bad = Policy::from_json(&serde_json::json!({
            "pools": {"p": {"backends": ["127.0.0.1:1"]}},
            "routes": [{"hosts": ["a.com"], "pool": "p"}],
            "tier": {"members": [{"id": "a", "addr": "x"}]},
        }))
        .expect_err("invalid")
        .errors;
        let paths: Vec<&str> = bad.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["tier.members[0].addr"], "{bad:#?}");
    }
}
