//! Validated config types: what the rest of verge consumes. Built only by `validate`.

pub use super::listener::{
    ForwardingTrust, H2Limits, Limits, ListenerSpec, ProxyProtocol, TlsSpec,
};

use super::edge::{ErrorPages, HeaderOps, Rewrite};
use http::HeaderName;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Version label shown in `/status` and metrics: the file's `version`, or a content hash.
    pub version: String,
    /// Process settings (`server:`).
    pub server: ServerSettings,
    /// The admin listener (`admin:`).
    pub admin: AdminSettings,
    /// Client-facing listeners (`listeners:`).
    pub listeners: Vec<ListenerSpec>,
    /// Backend pools by name (`pools:`).
    pub pools: BTreeMap<String, PoolSpec>,
    /// Routes in config order (`routes:`); matching picks the longest path prefix.
    pub routes: Vec<RouteSpec>,
    /// Content classes by name (`classes:`), with their staleness budgets.
    pub classes: BTreeMap<String, super::classes::ContentClass>,
    /// The shared cache (`cache:`).
    pub cache: CacheSettings,
    /// Where policy and invalidations come from; `None` runs from this file alone.
    pub control: Option<ControlSpec>,
    /// The `PURGE` method on listeners; `None`: refused with 405.
    pub purge: Option<PurgeSpec>,
    /// Where the access log goes and its format; `None`: no access log.
    pub access_log: Option<super::log_format::AccessLogSpec>,
    /// This node's place in its fleet's ring (`tier:`); `None`: it shields no one and asks no
    /// other node.
    pub tier: Option<super::tier::TierSpec>,
    /// The file this config was loaded from (`None`: built from text), for error messages.
    pub source: Option<PathBuf>,
}

/// Who may send `PURGE` requests to the data plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeSpec {
    /// Client address blocks allowed to purge.
    pub allow: Vec<IpNet>,
}

/// An address block such as `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The network address.
    pub addr: std::net::IpAddr,
    /// Prefix length in bits (32 or 128 for a single address).
    pub prefix: u8,
}

impl IpNet {
    /// Parse `ip/len` (or a bare ip, meaning the one address).
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (ip, len) = match text.trim().split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (text.trim(), None),
        };
        let addr: std::net::IpAddr = ip
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: prefix length must be 0 to {max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` is inside this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                (u128::from(u32::from(n)), u128::from(u32::from(i)), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        if shift >= 128 {
            return true;
        }
        (net >> shift) == (ip >> shift)
    }
}

/// The routing part of a config, which a control plane may own: pools and the routes to them.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Backend pools by name.
    pub pools: BTreeMap<String, PoolSpec>,
    /// Routes in policy order.
    pub routes: Vec<RouteSpec>,
    /// Content classes by name.
    pub classes: BTreeMap<String, super::classes::ContentClass>,
    /// The fleet's ring (`tier:`), which replaces the one in a node's file.
    pub tier: Option<super::tier::TierRing>,
}

/// A node's link to `verge control`.
#[derive(Debug, Clone)]
pub struct ControlSpec {
    /// Base URLs of the control plane's replicas, e.g. `http://127.0.0.1:9900`, in the order
    /// they are tried; a node fails over to the next on any failed or refused poll.
    pub urls: Vec<String>,
    /// This node's name in the control plane's `/v1/nodes`.
    pub node_id: String,
    /// Bearer token with the `read` scope, if the control plane requires one.
    pub token: Option<String>,
    /// Where the last good snapshot is persisted.
    pub state_file: PathBuf,
    /// How long one long-poll waits for news.
    pub wait: Duration,
    /// The control plane's public keys: when any is set, a snapshot (and the state file) must
    /// carry a signature one of them verifies. Several keys let a key be rotated.
    pub verify_keys: Vec<crate::config::keys::VerifyingKey>,
}

/// The shared cache: one memory budget for every route that caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Bytes of headers + bodies + per-entry overhead kept in memory.
    pub memory: u64,
    /// Larger responses are served but not stored.
    pub max_object_size: u64,
    /// How long the one request fetching a missing object may hold others waiting.
    pub lock_timeout: Duration,
    /// How long a waiting request waits in total before going to the origin itself.
    pub lock_wait: Duration,
    /// Answer plain fresh hits in the front door, without Pingora's per-request session (the
    /// hit lane). `false` sends every request through Pingora's phases; the responses are the
    /// same but for `Date`.
    pub hit_lane: bool,
    /// Proxy plain requests on routes that do not cache in the front door, without Pingora's
    /// per-request session (the pass lane). `false` sends them through Pingora's phases; the
    /// responses and what the origin receives are the same.
    pub pass_lane: bool,
    /// The disk tier under memory (`cache.disk`); `None`: memory only.
    pub disk: Option<DiskSettings>,
}

/// `cache.disk`: where and how much the disk tier keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSettings {
    /// The directory holding the segment files (created if missing).
    pub path: PathBuf,
    /// Bytes of segment files on disk, never exceeded.
    pub size: u64,
    /// Larger objects are not written to disk.
    pub max_object_size: u64,
    /// Bytes after which a segment is closed and the next one started; the budget is kept by
    /// deleting the oldest segment.
    pub segment_size: u64,
    /// Requests an object must have had (the fetch counts as the first) before it is written to
    /// disk, as nginx's `proxy_cache_min_uses`: 1 writes every stored object through; 2 (the
    /// default) keeps one-time requests, such as a crawler's sweep, from pushing the warm set
    /// out of the disk tier.
    pub min_uses: u32,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            memory: 256 << 20,
            max_object_size: 8 << 20,
            lock_timeout: Duration::from_secs(10),
            lock_wait: Duration::from_secs(5),
            hit_lane: true,
            pass_lane: true,
            disk: None,
        }
    }
}

/// A route's cache rules. A route without them does not cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCache {
    /// Freshness for heuristically cacheable responses that carry no freshness information.
    pub default_ttl: Option<Duration>,
    /// Upper bound on any freshness lifetime.
    pub max_ttl: Option<Duration>,
    /// Default stale-while-revalidate window when the origin gives none.
    pub stale_while_revalidate: Duration,
    /// Default stale-if-error window when the origin gives none.
    pub stale_if_error: Duration,
    /// How long after going stale an entry may still answer when its origin gives no response
    /// at all (unreachable, closed or reset before a head, timed out, not HTTP): RFC 9111
    /// §4.2.4. Never for responses that refuse to be served stale. `0` turns it off.
    pub stale_if_disconnected: Duration,
    /// The longest a server error (5xx) with explicit freshness from its origin is kept.
    pub error_max_ttl: Duration,
    /// Requests with Cookie or Authorization may use the cache (the content is public).
    pub public: bool,
    /// Freshness for 404 and 410 responses that carry no freshness information.
    pub negative_ttl: Option<Duration>,
    /// Freshness that replaces the origin's for storable 2xx/3xx responses.
    pub force_ttl: Option<Duration>,
    /// What to do with a response that carries `Set-Cookie`.
    pub set_cookie: SetCookiePolicy,
    /// At most this many Vary/key variants per URL; a new variant beyond it is not stored.
    pub max_variants: usize,
    /// What besides scheme, host and path makes up the key.
    pub key: CacheKeyRules,
    /// Obey request `no-cache`, `Pragma: no-cache`, `max-age` and `min-fresh` (clients may force
    /// a revalidation). `false` ignores them, as nginx and Varnish do by default.
    pub client_revalidation: bool,
    /// Refresh fresh entries in the background before they expire (XFetch); `None`: off.
    pub early_refresh: Option<EarlyRefresh>,
    /// On a node in a tier ring, misses for keys another member owns go to that owner
    /// (`tier: false`: this route's misses go to the origin).
    pub tier: bool,
}

/// XFetch early refresh (`routes[].cache.early_refresh`): a fresh hit refreshes its entry in
/// the background with a probability that rises as expiry nears.
#[derive(Debug, Clone, Copy)]
pub struct EarlyRefresh {
    /// Eagerness: 1.0 is XFetch's optimum; larger refreshes earlier.
    pub beta: f64,
    /// How long a fetch takes, as XFetch's `delta`; `None`: the time the entry's own fetch took
    /// (request sent to response head).
    pub delta: Option<Duration>,
}

impl Default for EarlyRefresh {
    fn default() -> Self {
        EarlyRefresh {
            beta: 1.0,
            delta: None,
        }
    }
}

impl PartialEq for EarlyRefresh {
    fn eq(&self, other: &Self) -> bool {
        self.beta.to_bits() == other.beta.to_bits() && self.delta == other.delta
    }
}

impl Eq for EarlyRefresh {}

/// Default `stale_if_disconnected`: a day.
pub const DEFAULT_STALE_IF_DISCONNECTED: Duration = Duration::from_secs(86_400);

/// Default `error_max_ttl`: a minute.
pub const DEFAULT_ERROR_MAX_TTL: Duration = Duration::from_secs(60);

/// Default cap on variants per URL.
pub const DEFAULT_MAX_VARIANTS: usize = 32;

impl Default for RouteCache {
    /// `cache: {}`: obey the origin alone.
    fn default() -> Self {
        RouteCache {
            default_ttl: None,
            max_ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            stale_if_disconnected: DEFAULT_STALE_IF_DISCONNECTED,
            error_max_ttl: DEFAULT_ERROR_MAX_TTL,
            public: false,
            negative_ttl: None,
            force_ttl: None,
            set_cookie: SetCookiePolicy::Refuse,
            max_variants: DEFAULT_MAX_VARIANTS,
            key: CacheKeyRules::default(),
            client_revalidation: true,
            early_refresh: None,
            tier: true,
        }
    }
}

/// A cacheable response with `Set-Cookie`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetCookiePolicy {
    /// Never store it (the default; nginx and Varnish do the same).
    #[default]
    Refuse,
    /// Store it without `Set-Cookie`, and remove `Set-Cookie` from what the client that caused
    /// the fetch receives too, so every client gets the same response.
    Strip,
}

/// Per-route cache-key rules. The origin always receives the request as the client sent it;
/// only the key changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheKeyRules {
    /// How the query string enters the key.
    pub query: QueryKey,
    /// Request headers whose values select a variant (lowercase names).
    pub headers: Vec<HeaderName>,
    /// Request cookies whose values select a variant.
    pub cookies: Vec<String>,
}

impl CacheKeyRules {
    /// Headers or cookies add to the variant key.
    pub fn has_variant_inputs(&self) -> bool {
        !self.headers.is_empty() || !self.cookies.is_empty()
    }
}

/// How the query string enters the cache key. Parameter names are compared after
/// percent-decoding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QueryKey {
    /// The query exactly as requested.
    #[default]
    All,
    /// Parameters sorted by name (a stable sort: repeated names keep their order).
    Sorted,
    /// No query at all.
    Ignore,
    /// Only these parameters, in request order.
    Allow(Vec<String>),
    /// Every parameter except these, in request order.
    Deny(Vec<String>),
}

/// Process-level settings handed to Pingora's `ServerConf`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Worker threads (Pingora `threads`).
    pub threads: usize,
    /// How long an old process keeps serving after a graceful upgrade hands over its listeners.
    pub grace_period: Duration,
    /// How long a graceful shutdown waits for in-flight requests.
    pub graceful_shutdown_timeout: Duration,
    /// Where the process id is written.
    pub pid_file: String,
    /// The Unix socket a graceful upgrade hands listeners over.
    pub upgrade_sock: String,
    /// Pingora's error log file (`None`: stderr).
    pub error_log: Option<String>,
    /// CA bundle for verifying TLS backends (`None`: the system store).
    pub ca_file: Option<String>,
    /// Where routes' edge rules read the client's address when a trusted proxy connects
    /// (`None`: always the connection's).
    pub client_ip: Option<ClientIpSpec>,
    /// The process log's level (`RUST_LOG`, when set, wins).
    pub log_level: log::LevelFilter,
}

/// `server.client_ip`: a client address from a header written by trusted proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIpSpec {
    /// The header listing addresses, nearest hop last (`X-Forwarded-For`).
    pub header: HeaderName,
    /// Proxies whose header is believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// The admin listener (`/healthz`, `/readyz`, `/status`, `/metrics`).
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Where the admin endpoints listen.
    pub listen: SocketAddr,
}

/// Whether `deny` or `allow` refuse `client`: a denied address, or one outside a non-empty
/// `allow`; with rules and no address to check (not TCP), refused.
pub(super) fn refused_by(
    deny: &[IpNet],
    allow: &[IpNet],
    client: Option<std::net::IpAddr>,
) -> bool {
    if deny.is_empty() && allow.is_empty() {
        return false;
    }
    let Some(ip) = client else {
        return true;
    };
    deny.iter().any(|n| n.contains(ip))
        || (!allow.is_empty() && !allow.iter().any(|n| n.contains(ip)))
}

/// Upstream timeouts (all set: Pingora's own defaults are "none").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time to establish a connection (TCP and TLS).
    pub connect: Duration,
    /// Longest wait for each read from the backend.
    pub read: Duration,
    /// Longest wait for each write to the backend.
    pub write: Duration,
    /// How long an idle pooled connection is kept.
    pub idle: Duration,
    /// Deadline for a whole origin response, from the first connect attempt to its last byte
    /// (retries included); `None`: no deadline beyond the per-read ones.
    pub total: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            read: Duration::from_secs(30),
            write: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            total: None,
        }
    }
}

/// Per-route timeout overrides; unset fields fall back to the pool's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTimeouts {
    /// Overrides the pool's connect timeout.
    pub connect: Option<Duration>,
    /// Overrides the pool's read timeout.
    pub read: Option<Duration>,
    /// Overrides the pool's write timeout.
    pub write: Option<Duration>,
    /// Overrides the pool's idle timeout.
    pub idle: Option<Duration>,
    /// `Some(0)`: no whole-response deadline on this route, whatever the pool says.
    pub total: Option<Duration>,
}

/// A pool of backends with its selection, health checking and upstream settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// The pool's name, as routes refer to it.
    pub name: String,
    /// Its backends, in config order.
    pub backends: Vec<BackendSpec>,
    /// How a backend is picked.
    pub selection: Selection,
    /// TLS towards the backends; `None`: plain HTTP.
    pub tls: Option<UpstreamTls>,
    /// Active health checking; `None`: every backend counts as healthy.
    pub health_check: Option<HealthCheckSpec>,
    /// Passive ejection after connect failures.
    pub passive: PassiveSpec,
    /// Upstream timeouts for this pool.
    pub timeouts: Timeouts,
    /// Extra attempts on other backends after a connect failure (idempotent requests only).
    pub retries: usize,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// As written in the config (`localhost:9000`), for display.
    pub label: String,
    /// The resolved address.
    pub addr: SocketAddr,
    /// Relative share of requests under round robin (and of the ring under consistent hashing).
    pub weight: u32,
}

/// How a pool picks a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Weighted round robin.
    RoundRobin,
    /// Ketama consistent hashing on the given key.
    Consistent(HashKey),
}

/// What a consistent-hash pool hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Path and query.
    Uri,
    /// The value of this request header.
    Header(HeaderName),
    /// The value of this request cookie.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

/// TLS towards the backends of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name sent in the TLS handshake and checked against the certificate.
    pub sni: String,
    /// Whether the backend's certificate is verified.
    pub verify: bool,
}

/// Active health checking of a pool's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSpec {
    /// What a probe sends.
    pub probe: HealthProbe,
    /// Time between probes of one backend.
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// Consecutive successes that mark a backend healthy.
    pub healthy_after: usize,
    /// Consecutive failures that mark a backend unhealthy.
    pub unhealthy_after: usize,
}

/// The kind of active probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// An HTTP request; healthy when the status is `expect_status`.
    Http {
        /// Request path.
        path: String,
        /// `Host` header sent.
        host: String,
        /// The status that counts as healthy.
        expect_status: u16,
    },
    /// A TCP connect; healthy when it succeeds.
    Tcp,
}

/// Passive ejection: a backend that fails `max_connect_failures` connects in a row is skipped for
/// `eject_for`. `max_connect_failures == 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveSpec {
    /// Consecutive connect failures that eject a backend (0: never).
    pub max_connect_failures: u32,
    /// How long an ejected backend is skipped.
    pub eject_for: Duration,
}

impl Default for PassiveSpec {
    fn default() -> Self {
        PassiveSpec {
            max_connect_failures: 3,
            eject_for: Duration::from_secs(10),
        }
    }
}

/// A route: hosts × path prefix → pool.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Label in metrics and `/status`; unique.
    pub name: String,
    /// The hosts it answers for.
    pub hosts: Vec<HostPattern>,
    /// Path prefix matched on segment boundaries (`/` matches everything).
    pub path_prefix: String,
    /// The pool it forwards to.
    pub pool: String,
    /// Remove `path_prefix` from the forwarded path.
    pub strip_prefix: bool,
    /// Edits to the forwarded request's headers.
    pub request_headers: HeaderOps,
    /// Edits to the response's headers before they reach the client.
    pub response_headers: HeaderOps,
    /// Timeout overrides for this route.
    pub timeouts: RouteTimeouts,
    /// Cache rules; `None`: the route does not cache.
    pub cache: Option<RouteCache>,
    /// Its content class (a key of `classes`), the `class` label of its freshness metrics.
    pub class: Option<String>,
    /// Which registered `Filter`s run on this route, by name, in registration order:
    /// `None` (no `filters:` key) runs every registered filter, `Some([])` none.
    pub filters: Option<Vec<String>>,
    /// What to do with a body sent with GET or HEAD.
    pub get_body: GetBodyPolicy,
    /// Answers verge gives at the edge before the cache: access rules, rate limit, redirects,
    /// request ids, rewrites.
    pub edge: EdgeRules,
    /// Pages for verge's own error answers on this route, by status (before the listener's).
    pub error_pages: ErrorPages,
    /// Compression of stored responses and decompression for clients (`None`: off).
    pub compression: Option<super::CompressionSpec>,
}

/// A route's edge rules, applied after routing and before the cache, in this order: access
/// rules (403), rate limit (429), HTTPS redirect, redirect. Request ids are given first, so
/// every one of those answers carries one.
#[derive(Debug, Clone, Default)]
pub struct EdgeRules {
    /// Client addresses refused with 403 (`deny` wins over `allow`).
    pub deny: Vec<IpNet>,
    /// When not empty: only these client addresses get through; others get 403.
    pub allow: Vec<IpNet>,
    /// Over this rate, requests get 429 with `Retry-After`.
    pub rate_limit: Option<RateLimitSpec>,
    /// A request that came in on a plain listener is redirected to `https://` (308).
    pub https_redirect: bool,
    /// Every request is answered with this redirect; nothing goes to the pool.
    pub redirect: Option<Redirect>,
    /// Each request gets an `X-Request-Id`; `None`: requests carry none of verge's.
    pub request_id: Option<RequestIdSpec>,
    /// What the upstream is asked for instead (path and `Host`); the cache key follows the
    /// rewritten path.
    pub rewrite: Rewrite,
}

impl EdgeRules {
    /// Whether the client address is refused by `allow`/`deny`.
    pub fn refuses(&self, client: Option<std::net::IpAddr>) -> bool {
        refused_by(&self.deny, &self.allow, client)
    }
}

/// `routes[].redirect`: answer every request with a redirect to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// Where to: literal text and request variables.
    pub to: Vec<TemplatePart>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// A piece of a redirect target (`to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text copied as written.
    Literal(String),
    /// `${scheme}`: `http` or `https`, as the request came in.
    Scheme,
    /// `${host}`: the canonical host (lowercase, no port).
    Host,
    /// `${path}`: the request's path.
    Path,
    /// `${query}`: `?` and the query when there is one, else nothing.
    Query,
}

/// `routes[].request_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestIdSpec {
    /// Keep a well-formed `X-Request-Id` the client sent (set this when the hop in front of
    /// verge writes it); otherwise verge always makes its own.
    pub trust_client: bool,
}

/// `routes[].rate_limit`: a token bucket per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimitSpec {
    /// Tokens added per `per`.
    pub rate: u32,
    /// The period `rate` is counted over.
    pub per: Duration,
    /// Bucket size: requests allowed at once after an idle spell.
    pub burst: u32,
    /// What a bucket belongs to.
    pub key: RateKey,
}

/// What a rate-limit bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The client's IP address.
    ClientIp,
    /// The value of this request header (requests without it share one bucket).
    Header(HeaderName),
    /// The route as a whole: one bucket.
    Route,
}

/// A request body on GET or HEAD has no defined meaning (RFC 9110 §9.3.1), and a shared cache
/// keys those requests without it: an origin that read it could make one client's body decide
/// what every other client is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GetBodyPolicy {
    /// Read and discard it; the origin gets the request with `Content-Length: 0`.
    #[default]
    Drop,
    /// Answer 400 and close the connection.
    Reject,
    /// Pass it to the origin (routes without a cache only).
    Forward,
}

/// A host a route answers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `example.com` (lowercase, no port).
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`; matches one or more labels.
    Wildcard(String),
    /// `*`: any host not matched otherwise.
    Any,
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}
