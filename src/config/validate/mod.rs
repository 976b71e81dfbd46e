//! Turns a raw YAML document into a validated `Config`, collecting every error with its key path.

mod cache;
mod listeners;
mod pools;
mod routes;
mod server;
mod timeouts;

#[cfg(test)]
pub(crate) use routes::parse_host_pattern;

use super::model::*;
use super::raw::*;
use super::{ConfigError, ConfigErrors};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashSet};

/// Collects errors while a document is validated.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Decode one YAML value into `T`, recording a decode error under `path`.
    fn decode<T: DeserializeOwned>(&mut self, path: &str, value: serde_yaml::Value) -> Option<T> {
        match serde_yaml::from_value::<T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(path, clean_serde_message(&e.to_string()));
                None
            }
        }
    }
}

/// serde_yaml messages end in "at line X column Y" relative to a sub-value, which is
/// misleading once we decode sections separately; the key path says where instead.
fn clean_serde_message(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

impl TryFrom<RawDocument> for Config {
    type Error = ConfigErrors;

    fn try_from(doc: RawDocument) -> Result<Config, ConfigErrors> {
        validate_document(doc, "").map_err(ConfigErrors::new)
    }
}

/// Validate a raw document. `content_tag` seeds the version label when the file has none.
pub(super) fn validate_document(
    doc: RawDocument,
    content_tag: &str,
) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors::default();

    let version = match doc.version {
        None | Some(serde_yaml::Value::Null) => format!("sha-{}", fnv_hex(content_tag)),
        Some(serde_yaml::Value::String(s)) if !s.trim().is_empty() => s,
        Some(serde_yaml::Value::Number(n)) => n.to_string(),
        Some(_) => {
            errs.push("version", "must be a non-empty string or a number");
            String::new()
        }
    };

    let server = doc
        .server
        .and_then(|v| errs.decode::<RawServer>("server", v))
        .unwrap_or_default();
    let server = server::validate_server(server, &mut errs);

    let admin = doc
        .admin
        .and_then(|v| errs.decode::<RawAdmin>("admin", v))
        .unwrap_or_default();
    let admin = server::validate_admin(admin, &mut errs);

    let listeners = listeners::validate_listeners(doc.listeners, admin.listen, &mut errs);

    let control = doc
        .control
        .and_then(|v| errs.decode::<RawControl>("control", v))
        .and_then(|c| server::validate_control(c, &mut errs));
    let purge = doc
        .purge
        .and_then(|v| errs.decode::<RawPurge>("purge", v))
        .map(|raw| server::validate_purge(raw, &mut errs));
    let access_log = doc
        .access_log
        .and_then(|v| errs.decode::<RawAccessLog>("access_log", v))
        .and_then(|raw| server::validate_access_log(raw, &mut errs));
    // A node fed by a control plane may start without any routes of its own.
    let policy_optional = control.is_some() && doc.pools.is_none() && doc.routes.is_none();
    let (pools, routes) = if policy_optional {
        (BTreeMap::new(), Vec::new())
    } else {
        validate_policy_sections(doc.upstream_defaults, doc.pools, doc.routes, &mut errs)
    };

    let cache = doc
        .cache
        .and_then(|v| errs.decode::<RawCache>("cache", v))
        .unwrap_or_default();
    let cache = cache::validate_cache(cache, &mut errs);

    if errs.0.is_empty() {
        Ok(Config {
            cache,
            version,
            server,
            admin,
            listeners,
            pools,
            routes,
            control,
            purge,
            access_log,
            source: None,
        })
    } else {
        Err(errs.0)
    }
}

/// Validate a policy document (what `verge control` stores) with the node's own rules.
pub(super) fn validate_policy(raw: RawPolicy) -> Result<Policy, Vec<ConfigError>> {
    let mut errs = Errors::default();
    let (pools, routes) =
        validate_policy_sections(raw.upstream_defaults, raw.pools, raw.routes, &mut errs);
    if errs.0.is_empty() {
        Ok(Policy { pools, routes })
    } else {
        Err(errs.0)
    }
}

/// The sections a node config and a policy document share: defaults, pools and routes.
fn validate_policy_sections(
    upstream_defaults: Option<serde_yaml::Value>,
    pools: Option<serde_yaml::Value>,
    routes: Option<serde_yaml::Value>,
    errs: &mut Errors,
) -> (BTreeMap<String, PoolSpec>, Vec<RouteSpec>) {
    let defaults = upstream_defaults
        .and_then(|v| errs.decode::<RawUpstreamDefaults>("upstream_defaults", v))
        .unwrap_or_default();
    let default_timeouts = timeouts::merge_timeouts(
        Timeouts::default(),
        defaults.timeouts.as_ref(),
        "upstream_defaults.timeouts",
        errs,
    );
    let mut declared_pools = HashSet::new();
    let pools = pools::validate_pools(pools, default_timeouts, &mut declared_pools, errs);
    // Routes are checked against every declared pool, valid or not, so that one broken pool
    // is reported once rather than again for each route that uses it.
    let routes = routes::validate_routes(routes, &declared_pools, errs);
    (pools, routes)
}

fn fnv_hex(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", h >> 16)
}

/// A pool, route or filter name: 1-128 ASCII letters, digits, `-`, `_` or `.`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
