//! A typed builder for the verge YAML a test runs with: `server`, `admin` and the listeners
//! are filled in (fresh ports, a fresh state directory), the test adds pools, routes and the
//! top-level `cache`, `control`, `purge` and `access_log` sections. Every builder has `set`
//! (one key, its value as a YAML snippet) and [`Config::raw`] merges whole top-level YAML,
//! for the odd config a test really needs.
//!
//! In strings, `{http}` becomes the main listener's address and `{dir}` the state directory.

use serde_yaml::{Mapping, Value};
use std::net::SocketAddr;
use std::path::Path;

/// A YAML snippet as a value (a test's own text: it must parse).
pub fn yaml(snippet: &str) -> Value {
    serde_yaml::from_str(snippet).unwrap_or_else(|e| panic!("test YAML {snippet:?}: {e}"))
}

fn text(s: &str) -> Value {
    Value::String(s.to_string())
}

fn list<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Sequence(items.iter().map(|s| text(s.as_ref())).collect())
}

/// An ordered YAML map under construction.
#[derive(Clone, Default)]
pub struct Block(Mapping);

impl Block {
    fn put(mut self, key: &str, value: Value) -> Self {
        self.0.insert(text(key), value);
        self
    }

    fn value(self) -> Value {
        Value::Mapping(self.0)
    }
}

macro_rules! block_builder {
    ($name:ident) => {
        impl $name {
            /// Any key, with its value as a YAML snippet.
            #[allow(dead_code)] // an escape hatch: not every block needs it today
            pub fn set(self, key: &str, value_yaml: &str) -> Self {
                Self(self.0.put(key, yaml(value_yaml)))
            }
        }
    };
}

/// The whole config.
#[derive(Clone, Default)]
pub struct Config {
    top: Block,
    listeners: Vec<Listener>,
    pools: Block,
    routes: Vec<Value>,
    raw: Vec<String>,
}

impl Config {
    pub fn new() -> Config {
        Config::default()
    }

    pub fn pool(mut self, pool: Pool) -> Config {
        self.pools = self.pools.put(&pool.name, pool.body.value());
        self
    }

    pub fn route(mut self, route: Route) -> Config {
        self.routes.push(route.0.value());
        self
    }

    /// A listener; the first call replaces the default `{name: http, listen: "{http}"}`.
    pub fn listener(mut self, listener: Listener) -> Config {
        self.listeners.push(listener);
        self
    }

    /// The top-level `cache:` section.
    pub fn cache(mut self, cache: Cache) -> Config {
        self.top = self.top.put("cache", cache.0.value());
        self
    }

    /// The `control:` section (a node of a control plane).
    pub fn control(mut self, control: Control) -> Config {
        self.top = self.top.put("control", control.0.value());
        self
    }

    /// `access_log: {path}`.
    pub fn access_log(mut self, path: &str) -> Config {
        self.top = self.top.put(
            "access_log",
            Block::default().put("path", text(path)).value(),
        );
        self
    }

    /// `purge: {allow}`: who may send `PURGE`.
    pub fn purge_allow(mut self, allow: &[&str]) -> Config {
        self.top = self
            .top
            .put("purge", Block::default().put("allow", list(allow)).value());
        self
    }

    /// `version:`, the config's name in `/status` and metrics.
    pub fn version(mut self, version: &str) -> Config {
        self.top = self.top.put("version", text(version));
        self
    }

    /// Top-level YAML merged in last (its keys replace the builder's).
    pub fn raw(mut self, top_level_yaml: &str) -> Config {
        self.raw.push(top_level_yaml.to_string());
        self
    }

    /// The YAML text for a process whose main listener is `http`, admin `admin`, state `dir`.
    pub fn render(&self, http: SocketAddr, admin: SocketAddr, dir: &Path) -> String {
        let d = dir.display();
        let mut root = Block::default()
            .put(
                "server",
                yaml(&format!(
                    "{{threads: 2, grace_period: 0s, graceful_shutdown_timeout: 1s, \
                     pid_file: \"{d}/verge.pid\", upgrade_sock: \"{d}/upgrade.sock\"}}"
                )),
            )
            .put(
                "admin",
                Block::default()
                    .put("listen", text(&admin.to_string()))
                    .value(),
            );
        let listeners = if self.listeners.is_empty() {
            vec![Listener::new().name("http")]
        } else {
            self.listeners.clone()
        };
        root = root.put(
            "listeners",
            Value::Sequence(listeners.into_iter().map(|l| l.0.value()).collect()),
        );
        for (k, v) in &self.top.0 {
            root.0.insert(k.clone(), v.clone());
        }
        if !self.pools.0.is_empty() {
            root = root.put("pools", self.pools.clone().value());
        }
        if !self.routes.is_empty() {
            root = root.put("routes", Value::Sequence(self.routes.clone()));
        }
        for snippet in &self.raw {
            if let Value::Mapping(m) = yaml(snippet) {
                for (k, v) in m {
                    root.0.insert(k, v);
                }
            } else {
                panic!("Config::raw wants a map: {snippet:?}");
            }
        }
        let mut root = root.value();
        substitute(&mut root, &http.to_string(), &d.to_string());
        serde_yaml::to_string(&root).expect("YAML out")
    }
}

/// `{http}` and `{dir}` in every string.
fn substitute(v: &mut Value, http: &str, dir: &str) {
    match v {
        Value::String(s) => *s = s.replace("{http}", http).replace("{dir}", dir),
        Value::Sequence(items) => items.iter_mut().for_each(|i| substitute(i, http, dir)),
        Value::Mapping(m) => m.iter_mut().for_each(|(_, i)| substitute(i, http, dir)),
        _ => {}
    }
}

/// One entry of `pools:`.
#[derive(Clone)]
pub struct Pool {
    name: String,
    body: Block,
}

impl Pool {
    /// Pool `name` with these backends (`host:port`), equal weights.
    pub fn new<A: ToString>(name: &str, backends: &[A]) -> Pool {
        let backends: Vec<String> = backends.iter().map(ToString::to_string).collect();
        Pool {
            name: name.to_string(),
            body: Block::default().put("backends", list(&backends)),
        }
    }

    /// Pool `name` with weighted backends.
    pub fn weighted<A: ToString>(name: &str, backends: &[(A, u32)]) -> Pool {
        let backends = backends
            .iter()
            .map(|(a, w)| {
                Block::default()
                    .put("addr", text(&a.to_string()))
                    .put("weight", Value::from(*w))
                    .value()
            })
            .collect();
        Pool {
            name: name.to_string(),
            body: Block::default().put("backends", Value::Sequence(backends)),
        }
    }

    pub fn timeouts(self, t: Timeouts) -> Pool {
        self.with("timeouts", t.0.value())
    }

    pub fn health_check(self, h: HealthCheck) -> Pool {
        self.with("health_check", h.0.value())
    }

    /// `passive: {max_connect_failures, eject_for?}`.
    pub fn passive(self, max_connect_failures: u32, eject_for: Option<&str>) -> Pool {
        let mut p = Block::default().put("max_connect_failures", Value::from(max_connect_failures));
        if let Some(e) = eject_for {
            p = p.put("eject_for", text(e));
        }
        self.with("passive", p.value())
    }

    pub fn retries(self, n: u32) -> Pool {
        self.with("retries", Value::from(n))
    }

    /// `selection: consistent` with this `hash_key`.
    pub fn consistent(self, hash_key: &str) -> Pool {
        self.with("selection", text("consistent"))
            .with("hash_key", text(hash_key))
    }

    /// Upstream TLS with this SNI, certificate not verified.
    pub fn tls_unverified(self, sni: &str) -> Pool {
        self.set("tls", &format!("{{sni: {sni}, verify: false}}"))
    }

    /// Any key, with its value as a YAML snippet.
    pub fn set(self, key: &str, value_yaml: &str) -> Pool {
        self.with(key, yaml(value_yaml))
    }

    fn with(mut self, key: &str, value: Value) -> Pool {
        self.body = self.body.put(key, value);
        self
    }
}

/// One entry of `routes:`.
#[derive(Clone)]
pub struct Route(Block);
block_builder!(Route);

impl Route {
    /// A route to `pool` for every host (`hosts: ["*"]`).
    pub fn to(pool: &str) -> Route {
        Route(
            Block::default()
                .put("hosts", list(&["*"]))
                .put("pool", text(pool)),
        )
    }

    pub fn name(self, name: &str) -> Route {
        Route(self.0.put("name", text(name)))
    }

    pub fn hosts(self, hosts: &[&str]) -> Route {
        Route(self.0.put("hosts", list(hosts)))
    }

    pub fn path(self, prefix: &str) -> Route {
        Route(self.0.put("path", text(prefix)))
    }

    pub fn strip_prefix(self) -> Route {
        Route(self.0.put("strip_prefix", Value::Bool(true)))
    }

    pub fn cache(self, cache: RouteCache) -> Route {
        Route(self.0.put("cache", cache.0.value()))
    }

    pub fn filters(self, filters: &[&str]) -> Route {
        Route(self.0.put("filters", list(filters)))
    }

    pub fn timeouts(self, t: Timeouts) -> Route {
        Route(self.0.put("timeouts", t.0.value()))
    }

    /// `get_body:` (`drop`, `reject`, `forward`).
    pub fn get_body(self, what: &str) -> Route {
        Route(self.0.put("get_body", text(what)))
    }
}

/// A route's `cache:` block (`RouteCache::new()` is `{}`: obey the origin).
#[derive(Clone, Default)]
pub struct RouteCache(Block);
block_builder!(RouteCache);

impl RouteCache {
    pub fn new() -> RouteCache {
        RouteCache::default()
    }

    pub fn default_ttl(self, ttl: &str) -> RouteCache {
        RouteCache(self.0.put("default_ttl", text(ttl)))
    }

    pub fn negative_ttl(self, ttl: &str) -> RouteCache {
        RouteCache(self.0.put("negative_ttl", text(ttl)))
    }

    pub fn force_ttl(self, ttl: &str) -> RouteCache {
        RouteCache(self.0.put("force_ttl", text(ttl)))
    }

    pub fn public(self) -> RouteCache {
        RouteCache(self.0.put("public", Value::Bool(true)))
    }

    pub fn max_variants(self, n: u32) -> RouteCache {
        RouteCache(self.0.put("max_variants", Value::from(n)))
    }
}

/// The top-level `cache:` section.
#[derive(Clone, Default)]
pub struct Cache(Block);
block_builder!(Cache);

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    /// How long a miss holds its URL's lock, and how long others wait on it.
    pub fn lock(self, timeout: &str, wait: &str) -> Cache {
        Cache(
            self.0
                .put("lock_timeout", text(timeout))
                .put("lock_wait", text(wait)),
        )
    }

    pub fn lock_wait(self, wait: &str) -> Cache {
        Cache(self.0.put("lock_wait", text(wait)))
    }

    /// `memory:` in bytes.
    pub fn memory(self, bytes: u64) -> Cache {
        Cache(self.0.put("memory", Value::from(bytes)))
    }

    pub fn max_object_size(self, size: &str) -> Cache {
        Cache(self.0.put("max_object_size", text(size)))
    }
}

/// `timeouts:` of a pool or a route.
#[derive(Clone, Default)]
pub struct Timeouts(Block);
block_builder!(Timeouts);

impl Timeouts {
    pub fn new() -> Timeouts {
        Timeouts::default()
    }

    pub fn read(self, d: &str) -> Timeouts {
        Timeouts(self.0.put("read", text(d)))
    }

    /// The whole-response deadline.
    pub fn total(self, d: &str) -> Timeouts {
        Timeouts(self.0.put("total", text(d)))
    }
}

/// A pool's `health_check:`.
#[derive(Clone)]
pub struct HealthCheck(Block);
block_builder!(HealthCheck);

impl HealthCheck {
    /// A TCP connect check every `interval`.
    pub fn tcp(interval: &str) -> HealthCheck {
        HealthCheck(
            Block::default()
                .put("type", text("tcp"))
                .put("interval", text(interval)),
        )
    }

    /// An HTTP GET of `path` every `interval`.
    pub fn http(path: &str, interval: &str) -> HealthCheck {
        HealthCheck(
            Block::default()
                .put("type", text("http"))
                .put("path", text(path))
                .put("interval", text(interval)),
        )
    }

    pub fn timeout(self, d: &str) -> HealthCheck {
        HealthCheck(self.0.put("timeout", text(d)))
    }

    pub fn expect_status(self, status: u16) -> HealthCheck {
        HealthCheck(self.0.put("expect_status", Value::from(status)))
    }

    pub fn unhealthy_after(self, n: u32) -> HealthCheck {
        HealthCheck(self.0.put("unhealthy_after", Value::from(n)))
    }

    pub fn healthy_after(self, n: u32) -> HealthCheck {
        HealthCheck(self.0.put("healthy_after", Value::from(n)))
    }
}

/// One entry of `listeners:`, listening on `{http}` (the address the kit hands out).
#[derive(Clone)]
pub struct Listener(Block);
block_builder!(Listener);

impl Listener {
    /// `{listen: "{http}"}`, without a name (verge calls it `listener<i>`).
    pub fn new() -> Listener {
        Listener(Block::default().put("listen", text("{http}")))
    }

    pub fn name(self, name: &str) -> Listener {
        let mut b = Block::default().put("name", text(name));
        for (k, v) in self.0 .0 {
            b.0.insert(k, v);
        }
        Listener(b)
    }

    /// HTTP/2 with prior knowledge on this plain listener.
    pub fn h2c(self) -> Listener {
        Listener(self.0.put("h2c", Value::Bool(true)))
    }

    /// TLS with this certificate and key.
    pub fn tls(self, cert: &Path, key: &Path) -> Listener {
        let tls = Block::default()
            .put("cert", text(&cert.display().to_string()))
            .put("key", text(&key.display().to_string()));
        Listener(self.0.put("tls", tls.value()))
    }

    pub fn limits(self, limits: Limits) -> Listener {
        Listener(self.0.put("limits", limits.0.value()))
    }
}

/// A listener's `limits:`.
#[derive(Clone, Default)]
pub struct Limits(Block);
block_builder!(Limits);

impl Limits {
    pub fn new() -> Limits {
        Limits::default()
    }

    pub fn header_timeout(self, d: &str) -> Limits {
        Limits(self.0.put("header_timeout", text(d)))
    }

    pub fn max_headers(self, n: u32) -> Limits {
        Limits(self.0.put("max_headers", Value::from(n)))
    }

    pub fn max_body(self, size: &str) -> Limits {
        Limits(self.0.put("max_body", text(size)))
    }

    pub fn max_connections(self, n: u32) -> Limits {
        Limits(self.0.put("max_connections", Value::from(n)))
    }

    pub fn keepalive_requests(self, n: u32) -> Limits {
        Limits(self.0.put("keepalive_requests", Value::from(n)))
    }
}

/// The `control:` section of a node.
#[derive(Clone)]
pub struct Control(Block);
block_builder!(Control);

impl Control {
    /// A node `node_id` of the control plane at `url`, reading its token from `token_file`.
    /// Its last good snapshot is kept in the test's own state directory, never in the
    /// machine-wide default (which would leak one test's snapshot into the next run).
    pub fn new(url: &str, node_id: &str, token_file: &Path) -> Control {
        Control(
            Block::default()
                .put("url", text(url))
                .put("node_id", text(node_id))
                .put("token_file", text(&token_file.display().to_string()))
                .put(
                    "state_file",
                    text(&format!("{{dir}}/{node_id}.snapshot.json")),
                ),
        )
    }

    /// `urls` in place of `url`: the control plane's replicas, in the order the node tries them.
    pub fn urls(mut self, urls: &[&str]) -> Control {
        self.0 .0.remove("url");
        Control(self.0.put("urls", list(urls)))
    }

    pub fn state_file(self, path: &str) -> Control {
        Control(self.0.put("state_file", text(path)))
    }

    /// How long the node waits for its first snapshot.
    pub fn wait(self, d: &str) -> Control {
        Control(self.0.put("wait", text(d)))
    }

    /// `verify_keys`: the public keys a snapshot's signature must verify with (any of them).
    pub fn verify_keys(self, paths: &[&Path]) -> Control {
        let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        Control(self.0.put("verify_keys", list(&paths)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_yaml_has_every_section_with_addresses_filled_in() {
        let http: SocketAddr = "127.0.0.1:10001".parse().expect("addr");
        let admin: SocketAddr = "127.0.0.1:10002".parse().expect("addr");
        let out = Config::new()
            .access_log("{dir}/access.log")
            .cache(Cache::new().lock("60s", "60s"))
            .pool(Pool::new("p", &["127.0.0.1:9"]).timeouts(Timeouts::new().read("1s")))
            .route(
                Route::to("p")
                    .hosts(&["c.test"])
                    .cache(RouteCache::new().public()),
            )
            .raw("version: v7")
            .render(http, admin, Path::new("/state"));
        let doc: Value = serde_yaml::from_str(&out).expect("YAML");
        let at = |path: &str| {
            path.split('.').fold(&doc, |v, k| match k.parse::<usize>() {
                Ok(i) => &v[i],
                Err(_) => &v[k],
            })
        };
        assert_eq!(at("admin.listen"), &text("127.0.0.1:10002"), "{out}");
        assert_eq!(at("listeners.0.name"), &text("http"), "{out}");
        assert_eq!(at("listeners.0.listen"), &text("127.0.0.1:10001"), "{out}");
        assert_eq!(at("server.pid_file"), &text("/state/verge.pid"), "{out}");
        assert_eq!(at("access_log.path"), &text("/state/access.log"), "{out}");
        assert_eq!(at("cache.lock_wait"), &text("60s"), "{out}");
        assert_eq!(at("pools.p.backends.0"), &text("127.0.0.1:9"), "{out}");
        assert_eq!(at("pools.p.timeouts.read"), &text("1s"), "{out}");
        assert_eq!(at("routes.0.hosts.0"), &text("c.test"), "{out}");
        assert_eq!(at("routes.0.cache.public"), &Value::Bool(true), "{out}");
        assert_eq!(at("version"), &text("v7"), "{out}");
    }
}
