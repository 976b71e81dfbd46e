//! Turns a raw YAML document into a validated `Config`, collecting every error with its key path.

mod cache;
mod classes;
mod compression;
mod decode;
mod edge;
mod error_pages;
mod listeners;
mod locate;
mod pools;
mod routes;
mod server;
mod tier;
mod timeouts;

#[cfg(test)]
pub(crate) use routes::parse_host_pattern;

use super::model::*;
use super::raw::*;
use super::{ConfigError, ConfigErrors};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Collects errors while a document is validated.
#[derive(Default)]
struct Errors {
    /// Every error so far, each with the key path whose line to report (if not its own).
    list: Vec<(ConfigError, Option<String>)>,
    /// Nodes dropped because they did not decode: the checks of what is left do not report
    /// their absence as well.
    dropped: Vec<decode::Dropped>,
}

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        if self.dropped.iter().any(|d| d.covers(&path)) {
            return;
        }
        self.list.push((ConfigError::new(path, message), None));
    }

    /// How many errors so far.
    fn len(&self) -> usize {
        self.list.len()
    }

    /// Decode one YAML value into `T`, recording every type error in it under `path`. What
    /// decodes once the ill-typed nodes are dropped is returned, so its checks still run.
    fn decode<T: DeserializeOwned>(&mut self, path: &str, value: serde_yaml::Value) -> Option<T> {
        let decoded = decode::decode_all::<T>(value);
        for e in decoded.errors {
            let at = e.at.map(|at| join_path(path, &at));
            self.list
                .push((ConfigError::new(join_path(path, &e.path), e.message), at));
        }
        self.dropped
            .extend(decoded.dropped.into_iter().map(|d| d.under(path)));
        decoded.value
    }

    /// The errors, each with its line in `source` when there is one, or the validated value.
    fn finish<T>(self, source: Option<&str>, value: T) -> Result<T, Vec<ConfigError>> {
        if self.list.is_empty() {
            return Ok(value);
        }
        Err(self
            .list
            .into_iter()
            .enumerate()
            .map(|(i, (mut e, at))| {
                if e.line.is_none() && i < MAX_LOCATED {
                    let at = at.as_deref().unwrap_or(&e.path);
                    e.line = source.and_then(|text| locate::line_of(text, at));
                }
                e
            })
            .collect())
    }
}

/// Errors given a line number: each costs a parse of the whole text (about 30ms for 170KB in a
/// debug build), so a document with hundreds of errors gets lines for the first ones only.
const MAX_LOCATED: usize = 100;

/// `prefix` and a path below it: `routes[2]` + `timeouts.read`, `pools` + `[0]`.
fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (_, true) => prefix.to_string(),
        (true, false) => rest.to_string(),
        (false, false) if rest.starts_with('[') => format!("{prefix}{rest}"),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

impl TryFrom<RawDocument> for Config {
    type Error = ConfigErrors;

    fn try_from(doc: RawDocument) -> Result<Config, ConfigErrors> {
        let mut errs = Errors::default();
        let config = validate_document(doc, "", &mut errs);
        errs.finish(None, config).map_err(ConfigErrors::new)
    }
}

/// Parse and validate a config's YAML text; errors carry the line they are on. Relative paths
/// are read from `base`, the config file's directory, when there is one.
pub(super) fn validate_yaml(text: &str, base: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors::default();
    let doc = if text.trim().is_empty() {
        Some(RawDocument::default())
    } else {
        match serde_yaml::from_str::<serde_yaml::Value>(text) {
            Ok(mut value) => {
                if let Some(base) = base {
                    super::relative_paths::resolve(
                        &mut value,
                        base,
                        super::relative_paths::NODE_PATHS,
                    );
                }
                errs.decode::<RawDocument>("", value)
            }
            Err(e) => {
                let mut error = ConfigError::new("", e.to_string());
                error.line = e.location().map(|l| l.line());
                return Err(vec![error]);
            }
        }
    };
    let config = doc.map(|doc| validate_document(doc, text, &mut errs));
    match errs.finish(Some(text), config)? {
        Some(config) => Ok(config),
        // not decoded, so an error was recorded and `finish` returned it
        None => Err(vec![ConfigError::new("", "the document does not decode")]),
    }
}

/// Validate a raw document. `content_tag` seeds the version label when the file has none.
fn validate_document(doc: RawDocument, content_tag: &str, errs: &mut Errors) -> Config {
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
    let server = server::validate_server(server, errs);

    let admin = doc
        .admin
        .and_then(|v| errs.decode::<RawAdmin>("admin", v))
        .unwrap_or_default();
    let admin = server::validate_admin(admin, errs);

    let listeners = listeners::validate_listeners(doc.listeners, admin.listen, errs);

    let control = doc
        .control
        .and_then(|v| errs.decode::<RawControl>("control", v))
        .and_then(|c| server::validate_control(c, errs));
    let purge = doc
        .purge
        .and_then(|v| errs.decode::<RawPurge>("purge", v))
        .map(|raw| server::validate_purge(raw, errs));
    let access_log = doc
        .access_log
        .and_then(|v| errs.decode::<RawAccessLog>("access_log", v))
        .and_then(|raw| server::validate_access_log(raw, errs));
    // A node fed by a control plane may start without any routes of its own.
    let policy_optional = control.is_some() && doc.pools.is_none() && doc.routes.is_none();
    let sections = if policy_optional {
        PolicySections::default()
    } else {
        validate_policy_sections(
            doc.upstream_defaults,
            doc.pools,
            doc.routes,
            doc.classes,
            errs,
        )
    };

    let cache = doc
        .cache
        .and_then(|v| errs.decode::<RawCache>("cache", v))
        .unwrap_or_default();
    let cache = cache::validate_cache(cache, errs);
    let tier = doc
        .tier
        .and_then(|v| errs.decode::<RawTier>("tier", v))
        .and_then(|raw| tier::validate_node_tier(raw, errs));

    Config {
        cache,
        version,
        server,
        admin,
        listeners,
        pools: sections.pools,
        routes: sections.routes,
        classes: sections.classes,
        control,
        purge,
        access_log,
        tier,
        source: None,
    }
}

/// Validate a policy document (what `verge control` stores) with the node's own rules.
pub(super) fn validate_policy(value: serde_yaml::Value) -> Result<Policy, Vec<ConfigError>> {
    let mut errs = Errors::default();
    let policy = errs.decode::<RawPolicy>("", value).map(|raw| {
        let sections = validate_policy_sections(
            raw.upstream_defaults,
            raw.pools,
            raw.routes,
            raw.classes,
            &mut errs,
        );
        let tier = raw
            .tier
            .and_then(|v| tier::validate_policy_tier(v, &mut errs));
        Policy {
            pools: sections.pools,
            routes: sections.routes,
            classes: sections.classes,
            tier,
        }
    });
    match errs.finish(None, policy)? {
        Some(policy) => Ok(policy),
        None => Err(vec![ConfigError::new("", "the policy does not decode")]),
    }
}

/// What a node config and a policy document share, validated.
#[derive(Default)]
struct PolicySections {
    pools: BTreeMap<String, PoolSpec>,
    routes: Vec<RouteSpec>,
    classes: BTreeMap<String, crate::config::classes::ContentClass>,
}

/// The sections a node config and a policy document share: defaults, pools, routes and
/// content classes.
fn validate_policy_sections(
    upstream_defaults: Option<serde_yaml::Value>,
    pools: Option<serde_yaml::Value>,
    routes: Option<serde_yaml::Value>,
    classes: Option<serde_yaml::Value>,
    errs: &mut Errors,
) -> PolicySections {
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
    let mut declared_classes = HashSet::new();
    let classes = classes::validate_classes(classes, &mut declared_classes, errs);
    // Routes are checked against every declared pool and class, valid or not, so that one
    // broken pool is reported once rather than again for each route that uses it.
    let declared = routes::Declared {
        pools: &declared_pools,
        classes: &declared_classes,
    };
    let routes = routes::validate_routes(routes, &declared, errs);
    PolicySections {
        pools,
        routes,
        classes,
    }
}

fn fnv_hex(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:012x}", h >> 16)
}

/// A list of addresses or CIDR blocks (`purge.allow`, a route's `allow`/`deny`, trusted
/// proxies), each error at its index under `path`.
fn address_blocks(path: &str, texts: &[String], errs: &mut Errors) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match IpNet::parse(text) {
            Ok(n) => out.push(n),
            Err(e) => errs.push(format!("{path}[{i}]"), e),
        }
    }
    out
}

/// A pool, route or filter name: 1-128 ASCII letters, digits, `-`, `_` or `.`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
