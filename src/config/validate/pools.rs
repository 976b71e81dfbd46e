//! The `pools` section: backends, selection, upstream TLS, health checks and retries.

use super::listeners::resolve_addr;
use super::timeouts::merge_timeouts;
use super::valid_name;
use super::Errors;
use crate::config::model::*;
use crate::config::raw::*;
use http::HeaderName;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

pub(super) fn validate_pools(
    value: Option<serde_yaml::Value>,
    default_timeouts: Timeouts,
    declared: &mut HashSet<String>,
    errs: &mut Errors,
) -> BTreeMap<String, PoolSpec> {
    let mut out = BTreeMap::new();
    let Some(value) = value else {
        errs.push("pools", "at least one pool is required");
        return out;
    };
    let Some(items) = errs.decode::<BTreeMap<String, serde_yaml::Value>>("pools", value) else {
        return out;
    };
    for (name, item) in items {
        declared.insert(name.clone());
        let path = format!("pools.{name}");
        if !valid_name(&name) {
            errs.push(
                &path,
                "pool names use letters, digits, '-', '_' and '.' only",
            );
        }
        let Some(raw) = errs.decode::<RawPool>(&path, item) else {
            continue;
        };
        if let Some(p) = validate_pool(&name, &path, raw, default_timeouts, errs) {
            out.insert(name, p);
        }
    }
    out
}

pub(super) fn validate_pool(
    name: &str,
    path: &str,
    raw: RawPool,
    default_timeouts: Timeouts,
    errs: &mut Errors,
) -> Option<PoolSpec> {
    let before = errs.len();
    if raw.backends.is_empty() {
        errs.push(
            format!("{path}.backends"),
            "a pool needs at least one backend",
        );
    }
    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    for (i, b) in raw.backends.iter().enumerate() {
        let bpath = format!("{path}.backends[{i}]");
        let (label, weight) = match b {
            RawBackend::Addr(a) => (a.clone(), 1),
            RawBackend::Full(f) => (f.addr.clone(), f.weight.unwrap_or(1)),
        };
        if !(1..=1000).contains(&weight) {
            errs.push(format!("{bpath}.weight"), "must be between 1 and 1000");
        }
        match resolve_addr(&label) {
            Ok(addr) => {
                if !seen.insert(addr) {
                    errs.push(&bpath, format!("duplicate backend {addr}"));
                }
                backends.push(BackendSpec {
                    label,
                    addr,
                    weight,
                })
            }
            Err(e) => errs.push(&bpath, e),
        }
    }

    let selection = match (raw.selection.as_deref(), raw.hash_key.as_deref()) {
        (None | Some("round_robin"), None) => Selection::RoundRobin,
        (None | Some("round_robin"), Some(_)) => {
            errs.push(
                format!("{path}.hash_key"),
                "only used with selection: consistent",
            );
            Selection::RoundRobin
        }
        (Some("consistent"), key) => match parse_hash_key(key.unwrap_or("uri")) {
            Ok(k) => Selection::Consistent(k),
            Err(e) => {
                errs.push(format!("{path}.hash_key"), e);
                Selection::RoundRobin
            }
        },
        (Some(other), _) => {
            errs.push(
                format!("{path}.selection"),
                format!("unknown selection {other:?}: use round_robin or consistent"),
            );
            Selection::RoundRobin
        }
    };

    let tls = raw.tls.as_ref().and_then(|t| {
        let verify = t.verify.unwrap_or(true);
        let sni = t.sni.clone().unwrap_or_default();
        if verify && sni.is_empty() {
            errs.push(
                format!("{path}.tls.sni"),
                "required when verify is on (set verify: false to skip certificate checks)",
            );
            None
        } else {
            Some(UpstreamTls { sni, verify })
        }
    });

    let health_check = raw.health_check.as_ref().and_then(|h| {
        validate_health_check(&format!("{path}.health_check"), h, tls.as_ref(), errs)
    });

    let passive = match &raw.passive {
        None => PassiveSpec::default(),
        Some(p) => {
            let d = PassiveSpec::default();
            let eject_for = p.eject_for.map_or(d.eject_for, |x| x.0);
            if eject_for.is_zero() {
                errs.push(
                    format!("{path}.passive.eject_for"),
                    "must be greater than zero",
                );
            }
            PassiveSpec {
                max_connect_failures: p.max_connect_failures.unwrap_or(d.max_connect_failures),
                eject_for,
            }
        }
    };

    let timeouts = merge_timeouts(
        default_timeouts,
        raw.timeouts.as_ref(),
        &format!("{path}.timeouts"),
        errs,
    );
    let retries = raw.retries.unwrap_or(2);
    if retries > 16 {
        errs.push(format!("{path}.retries"), "must be at most 16");
    }

    (errs.len() == before).then(|| PoolSpec {
        name: name.to_string(),
        backends,
        selection,
        tls,
        health_check,
        passive,
        timeouts,
        retries,
    })
}

fn parse_hash_key(text: &str) -> Result<HashKey, String> {
    match text.split_once(':') {
        None if text == "uri" => Ok(HashKey::Uri),
        None if text == "client_ip" => Ok(HashKey::ClientIp),
        Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
            .map(HashKey::Header)
            .map_err(|_| format!("invalid header name {name:?}")),
        Some(("cookie", name)) if !name.trim().is_empty() => {
            Ok(HashKey::Cookie(name.trim().to_string()))
        }
        _ => Err(format!(
            "unknown hash_key {text:?}: use uri, client_ip, header:NAME or cookie:NAME"
        )),
    }
}

fn validate_health_check(
    path: &str,
    raw: &RawHealthCheck,
    tls: Option<&UpstreamTls>,
    errs: &mut Errors,
) -> Option<HealthCheckSpec> {
    let before = errs.len();
    let probe = match raw.kind.as_deref().unwrap_or("http") {
        "http" => {
            let p = raw.path.clone().unwrap_or_else(|| "/".into());
            if !p.starts_with('/') {
                errs.push(format!("{path}.path"), "must start with '/'");
            }
            let expect_status = raw.expect_status.unwrap_or(200);
            if !(100..=599).contains(&expect_status) {
                errs.push(
                    format!("{path}.expect_status"),
                    "must be an HTTP status (100-599)",
                );
            }
            let host = raw
                .host
                .clone()
                .or_else(|| tls.map(|t| t.sni.clone()).filter(|s| !s.is_empty()))
                .unwrap_or_else(|| "localhost".into());
            HealthProbe::Http {
                path: p,
                host,
                expect_status,
            }
        }
        "tcp" => {
            if raw.path.is_some() || raw.expect_status.is_some() || raw.host.is_some() {
                errs.push(
                    path,
                    "path, host and expect_status apply to type: http only",
                );
            }
            HealthProbe::Tcp
        }
        other => {
            errs.push(
                format!("{path}.type"),
                format!("unknown health check type {other:?}: use http or tcp"),
            );
            HealthProbe::Tcp
        }
    };
    let interval = raw.interval.map_or(Duration::from_secs(5), |d| d.0);
    if interval < Duration::from_millis(100) {
        errs.push(format!("{path}.interval"), "must be at least 100ms");
    }
    let timeout = raw.timeout.map_or(Duration::from_secs(1), |d| d.0);
    if timeout.is_zero() {
        errs.push(format!("{path}.timeout"), "must be greater than zero");
    }
    let healthy_after = raw.healthy_after.unwrap_or(1);
    let unhealthy_after = raw.unhealthy_after.unwrap_or(2);
    for (key, v) in [
        ("healthy_after", healthy_after),
        ("unhealthy_after", unhealthy_after),
    ] {
        if !(1..=100).contains(&v) {
            errs.push(format!("{path}.{key}"), "must be between 1 and 100");
        }
    }
    (errs.len() == before).then_some(HealthCheckSpec {
        probe,
        interval,
        timeout,
        healthy_after,
        unhealthy_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys() {
        assert_eq!(parse_hash_key("uri"), Ok(HashKey::Uri));
        assert_eq!(parse_hash_key("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(
            parse_hash_key("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert!(matches!(
            parse_hash_key("header:x-user"),
            Ok(HashKey::Header(_))
        ));
        assert!(parse_hash_key("header:bad header").is_err());
        assert!(parse_hash_key("body").is_err());
    }
}
