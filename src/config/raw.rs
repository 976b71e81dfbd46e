//! Raw config types exactly as written in YAML (serde, `deny_unknown_fields`), before validation.

use super::units::{ConfDuration, ConfSize};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The top level of a config file. Each section stays a YAML value here so that a type error in
/// one route or pool does not hide the errors in the others: sections are decoded one by one.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDocument {
    pub version: Option<serde_yaml::Value>,
    pub server: Option<serde_yaml::Value>,
    pub admin: Option<serde_yaml::Value>,
    pub listeners: Option<serde_yaml::Value>,
    pub upstream_defaults: Option<serde_yaml::Value>,
    pub pools: Option<serde_yaml::Value>,
    pub routes: Option<serde_yaml::Value>,
    pub classes: Option<serde_yaml::Value>,
    pub cache: Option<serde_yaml::Value>,
    pub control: Option<serde_yaml::Value>,
    pub purge: Option<serde_yaml::Value>,
    pub access_log: Option<serde_yaml::Value>,
    pub tier: Option<serde_yaml::Value>,
}

/// `access_log: {path: /var/log/verge/access.log, format: json, fields: [time, ...]}` (`-`
/// for stdout).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub path: String,
    /// `json` (default) or `combined`.
    pub format: Option<String>,
    /// JSON fields, in order (`time` is always first).
    pub fields: Option<Vec<String>>,
}

/// The data-plane `PURGE` method: off unless this block lists the clients allowed to use it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPurge {
    pub allow: Vec<String>,
}

/// A policy document as the control plane stores and serves it: the routing and pool part of a
/// node config. Sections stay YAML values so every error is reported (see `RawDocument`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub upstream_defaults: Option<serde_yaml::Value>,
    pub pools: Option<serde_yaml::Value>,
    pub routes: Option<serde_yaml::Value>,
    pub classes: Option<serde_yaml::Value>,
    pub tier: Option<serde_yaml::Value>,
}

/// `classes.<name>: {budget: 30s}`: a content class and its staleness budget.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClass {
    pub budget: ConfDuration,
}

/// The node's `tier:` block: who this node is in the ring of verge nodes that shield each
/// other, the key of the hop marker, and (unless the control plane's policy carries them) the
/// ring's members and how they are reached.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    #[serde(rename = "self")]
    pub self_id: String,
    pub secret_file: String,
    pub members: Option<Vec<RawTierMember>>,
    pub hop_window: Option<ConfDuration>,
    pub timeouts: Option<RawTimeouts>,
    pub health_check: Option<RawHealthCheck>,
    pub passive: Option<RawPassive>,
}

/// A policy's `tier:` block: the ring every node of the fleet shares.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTierRing {
    pub members: Vec<RawTierMember>,
    pub hop_window: Option<ConfDuration>,
    pub timeouts: Option<RawTimeouts>,
    pub health_check: Option<RawHealthCheck>,
    pub passive: Option<RawPassive>,
}

/// `tier.members[]`: a node of the ring and its data-plane listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTierMember {
    pub id: String,
    pub addr: String,
}

/// The node's `control:` block: where its policy and invalidations come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub url: Option<String>,
    pub urls: Option<Vec<String>>,
    pub node_id: Option<String>,
    pub token_file: Option<String>,
    pub token_env: Option<String>,
    pub state_file: Option<String>,
    pub wait: Option<ConfDuration>,
    #[serde(default)]
    pub verify_keys: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub memory: Option<ConfSize>,
    pub max_object_size: Option<ConfSize>,
    pub lock_timeout: Option<ConfDuration>,
    pub lock_wait: Option<ConfDuration>,
    pub hit_lane: Option<bool>,
    pub pass_lane: Option<bool>,
    pub disk: Option<RawDiskCache>,
}

/// `cache.disk`: the disk tier under the memory tier.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDiskCache {
    pub path: Option<String>,
    pub size: Option<ConfSize>,
    pub max_object_size: Option<ConfSize>,
    pub segment_size: Option<ConfSize>,
    pub min_uses: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    pub default_ttl: Option<ConfDuration>,
    pub max_ttl: Option<ConfDuration>,
    pub stale_while_revalidate: Option<ConfDuration>,
    pub stale_if_error: Option<ConfDuration>,
    pub stale_if_disconnected: Option<ConfDuration>,
    pub error_max_ttl: Option<ConfDuration>,
    #[serde(default)]
    pub public: bool,
    pub negative_ttl: Option<ConfDuration>,
    pub force_ttl: Option<ConfDuration>,
    /// `refuse` (default) or `strip`.
    pub set_cookie: Option<String>,
    pub max_variants: Option<usize>,
    pub key: Option<RawCacheKey>,
    pub client_revalidation: Option<bool>,
    pub early_refresh: Option<RawEarlyRefresh>,
    pub tier: Option<bool>,
}

/// `routes[].cache.early_refresh`: XFetch probabilistic refresh of fresh entries.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEarlyRefresh {
    /// Eagerness, above 0 and at most 1000 (default 1.0).
    pub beta: Option<f64>,
    /// XFetch's `delta` (default: the entry's measured fetch time).
    pub delta: Option<ConfDuration>,
}

/// `routes[].cache.key`. `query` stays a YAML value: it is a word (`all`, `sorted`, `ignore`)
/// or a map (`{allow: [..]}` / `{deny: [..]}`), checked by the validator with clear messages.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCacheKey {
    pub query: Option<serde_yaml::Value>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub cookies: Vec<String>,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub threads: Option<usize>,
    pub grace_period: Option<ConfDuration>,
    pub graceful_shutdown_timeout: Option<ConfDuration>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub error_log: Option<String>,
    pub ca_file: Option<String>,
    pub client_ip: Option<RawClientIp>,
    pub log_level: Option<String>,
}

/// `server.client_ip: {header: X-Forwarded-For, trusted_proxies: [10.0.0.0/8]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientIp {
    pub header: Option<String>,
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub listen: String,
    #[serde(default)]
    pub h2c: bool,
    pub tls: Option<RawListenerTls>,
    pub limits: Option<RawLimits>,
    pub trusted_forwarding: Option<RawTrustedForwarding>,
    pub proxy_protocol: Option<RawProxyProtocol>,
    pub error_pages: Option<BTreeMap<StatusKey, RawErrorPage>>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `listeners[].trusted_forwarding: {from: [CIDR], fields: [name]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedForwarding {
    pub from: Vec<String>,
    pub fields: Vec<String>,
}

/// `listeners[].proxy_protocol: {from: [CIDR]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyProtocol {
    pub from: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub cert: String,
    pub key: String,
    pub h2: Option<bool>,
    /// `[h2, http/1.1]` (default), `[http/1.1]` or `[h2]`.
    pub alpn: Option<Vec<String>>,
    /// `"1.2"` (default) or `"1.3"`.
    pub min_version: Option<String>,
    /// More certificates, chosen by SNI.
    #[serde(default)]
    pub certificates: Vec<RawSniCertificate>,
}

/// `listeners[].tls.certificates[]: {hosts: [a.example, "*.a.example"], cert, key}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniCertificate {
    pub hosts: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_request_line: Option<ConfSize>,
    pub max_header_line: Option<ConfSize>,
    pub max_headers_size: Option<ConfSize>,
    pub max_headers: Option<usize>,
    pub header_timeout: Option<ConfDuration>,
    pub keepalive_timeout: Option<ConfDuration>,
    pub keepalive_requests: Option<u32>,
    pub max_body: Option<ConfSize>,
    pub body_timeout: Option<ConfDuration>,
    /// Bytes per second (`512`, `1KiB`); `0` turns the minimum off.
    pub body_min_rate: Option<ConfSize>,
    pub send_timeout: Option<ConfDuration>,
    pub max_connections: Option<u32>,
    pub h2: Option<RawH2Limits>,
}

/// `listeners[].limits.h2`: what an HTTP/2 client may use of one connection.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawH2Limits {
    pub max_concurrent_streams: Option<u32>,
    pub max_header_list_size: Option<ConfSize>,
    pub stream_window: Option<ConfSize>,
    pub connection_window: Option<ConfSize>,
    pub max_pending_resets: Option<usize>,
    pub max_error_resets: Option<usize>,
    pub frame_budget: Option<u32>,
    pub frame_rate: Option<u32>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<ConfDuration>,
    pub read: Option<ConfDuration>,
    pub write: Option<ConfDuration>,
    pub idle: Option<ConfDuration>,
    /// Whole origin response deadline; `0s` turns it off.
    pub total: Option<ConfDuration>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamDefaults {
    pub timeouts: Option<RawTimeouts>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub backends: Vec<RawBackend>,
    pub selection: Option<String>,
    pub hash_key: Option<String>,
    pub tls: Option<RawUpstreamTls>,
    pub health_check: Option<RawHealthCheck>,
    pub passive: Option<RawPassive>,
    pub timeouts: Option<RawTimeouts>,
    pub retries: Option<usize>,
}

/// A backend: either `"host:port"` or `{addr: "host:port", weight: 3}`.
///
/// Not `#[serde(untagged)]`: that decodes the backend before trying its forms, so its errors
/// lose their place (the list, not the backend, and no word on what is wrong in the map).
#[derive(Debug)]
pub enum RawBackend {
    Addr(String),
    Full(RawBackendFull),
}

impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Backend;
        impl<'de> serde::de::Visitor<'de> for Backend {
            type Value = RawBackend;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"host:port\" or {addr: \"host:port\", weight: N}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawBackend, E> {
                Ok(RawBackend::Addr(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawBackend, A::Error> {
                RawBackendFull::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawBackend::Full)
            }
        }
        deserializer.deserialize_any(Backend)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendFull {
    pub addr: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub sni: Option<String>,
    pub verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect_status: Option<u16>,
    pub interval: Option<ConfDuration>,
    pub timeout: Option<ConfDuration>,
    pub healthy_after: Option<usize>,
    pub unhealthy_after: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub max_connect_failures: Option<u32>,
    pub eject_for: Option<ConfDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub hosts: Vec<String>,
    pub path: Option<String>,
    pub pool: String,
    #[serde(default)]
    pub strip_prefix: bool,
    pub request_headers: Option<RawHeaderOps>,
    pub response_headers: Option<RawHeaderOps>,
    pub timeouts: Option<RawTimeouts>,
    pub cache: Option<RawRouteCache>,
    /// The content class (a key of `classes:`) its responses belong to.
    pub class: Option<String>,
    /// A body on GET or HEAD: `drop` (default), `reject` or `forward`.
    pub get_body: Option<String>,
    /// Names of the registered filters that run on this route (absent: all of them).
    pub filters: Option<Vec<String>>,
    /// Client addresses or CIDR blocks refused with 403.
    #[serde(default)]
    pub deny: Vec<String>,
    /// When present: the only client addresses or CIDR blocks let through.
    #[serde(default)]
    pub allow: Vec<String>,
    pub rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub https_redirect: bool,
    pub redirect: Option<RawRedirect>,
    pub request_id: Option<RawRequestId>,
    pub rewrite: Option<RawRewrite>,
    pub error_pages: Option<BTreeMap<StatusKey, RawErrorPage>>,
    pub compression: Option<RawCompression>,
}

/// `routes[].compression: {algorithm: br, level: 5, min_size: 1KiB, types: [text/*]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// `br` (default) or `gzip`: the coding an uncompressed response is stored in.
    pub algorithm: Option<String>,
    pub level: Option<u32>,
    pub min_size: Option<ConfSize>,
    /// Media types (`type/subtype` or `type/*`) compressed; absent: the default list.
    pub types: Option<Vec<String>>,
}

/// `routes[].rewrite: {path: {from: "^/old/(.*)$", to: "/new/$1"}, host: origin.internal}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    pub path: Option<RawPathRewrite>,
    pub host: Option<String>,
}

/// `routes[].rewrite.path`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPathRewrite {
    pub from: String,
    pub to: String,
}

/// A status as a map key: `502` in YAML, `"502"` in JSON (whose keys are strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StatusKey(pub u16);

impl<'de> Deserialize<'de> for StatusKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Status;
        impl serde::de::Visitor<'_> for Status {
            type Value = StatusKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an HTTP status such as 502")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusKey, E> {
                u16::try_from(v)
                    .map(StatusKey)
                    .map_err(|_| E::custom(format!("{v} is not an HTTP status")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StatusKey, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} is not an HTTP status")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusKey, E> {
                v.trim()
                    .parse::<u16>()
                    .map(StatusKey)
                    .map_err(|_| E::custom(format!("{v:?} is not an HTTP status")))
            }
        }
        deserializer.deserialize_any(Status)
    }
}

/// One `error_pages` entry: `{file: errors/502.html}` or `{body: "...", content_type: ...}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawErrorPage {
    pub file: Option<String>,
    pub body: Option<String>,
    pub content_type: Option<String>,
}

/// `routes[].redirect: {to: "https://new.example${path}${query}", status: 301}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub to: String,
    pub status: Option<u16>,
}

/// `routes[].request_id: {}` or `{trust_client: true}`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRequestId {
    #[serde(default)]
    pub trust_client: bool,
}

/// `routes[].rate_limit: {rate: 10, per: 1s, burst: 20, key: client_ip}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub rate: u32,
    pub per: Option<ConfDuration>,
    pub burst: Option<u32>,
    /// `client_ip` (default), `route` or `header:NAME`.
    pub key: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}
