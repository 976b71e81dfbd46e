//! The one immutable value the hot path reads: routing table and pools, swapped whole via `ArcSwap`.

use crate::access_log::LogSink;
use crate::cache::invalidation::index::InvalidationIndex;
use crate::config::{Config, LogField, LogFormat, RouteSpec};
use crate::control::wire::Position;
use crate::metrics::RouteCounters;
use crate::routing::RouteTable;
use crate::upstream::pool::{Pool, PoolBuildError};
use crate::upstream::tier::Ring;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

/// A compiled route: its spec plus the pool it sends to. The spec is shared, so a filter's
/// pool override (`FilterCtx::use_pool`) is a new `Route` around the same spec.
#[derive(Debug)]
pub struct Route {
    /// The validated route.
    pub spec: Arc<RouteSpec>,
    /// The pool it forwards to.
    pub pool: Arc<Pool>,
    /// Its per-request series, resolved once.
    pub counters: Arc<RouteCounters>,
}

/// Everything a request needs from configuration, built once and never mutated.
#[derive(Debug)]
pub struct Snapshot {
    /// The config (or control-plane policy) version it was built from.
    pub version: String,
    /// When it was built.
    pub built_at: SystemTime,
    /// Host and longest-prefix lookup.
    pub table: RouteTable<Route>,
    /// Routes in config order (for `/status`).
    pub routes: Vec<Arc<Route>>,
    /// Pools by name, with their live health state.
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// The config this snapshot was built from (file config, with a control-plane policy).
    pub config: Arc<Config>,
    /// What came from the control plane (defaults when the node runs from its file alone).
    pub control: ControlState,
    /// The tier ring this node is a member of (`tier:`), if any.
    pub tier: Option<Arc<Ring>>,
    /// Where access-log lines of the requests it serves go (`None`: the log is off). Opened at
    /// start and by each reload (before the swap); every other snapshot keeps its previous's
    /// while `access_log.path` is the same. The sink closes when no snapshot holds it.
    pub access_log: Option<Arc<LogSink>>,
}

/// The control plane's part of a snapshot: its position, the policy document, invalidations.
#[derive(Debug, Clone, Default)]
pub struct ControlState {
    /// The policy version and invalidation sequence this snapshot reflects.
    pub position: Position,
    /// The control plane's store epoch that position belongs to (`None`: it has none).
    pub epoch: Option<Arc<str>>,
    /// The policy document in force (`None`: the file's pools and routes).
    pub policy: Option<Arc<serde_json::Value>>,
    /// Invalidations applied and still remembered, for the cache to consult on lookups.
    pub invalidations: Arc<InvalidationIndex>,
    /// How long applied invalidations are remembered.
    pub retention: std::time::Duration,
    /// A node fed by a control plane that has neither heard from it nor restored a good state
    /// file: a request no route takes is answered 503 (not ready), not 404.
    pub awaiting: bool,
}

/// The shared handle: readers `load()`, the writer `store()`s a whole new snapshot.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    /// Build a snapshot from a validated config. Pools whose spec did not change since
    /// `previous` are reused, so they keep their health state and upstream connections.
    pub fn build(config: &Config, previous: Option<&Snapshot>) -> Result<Snapshot, PoolBuildError> {
        Self::build_with(config, previous, ControlState::default())
    }

    /// Build with the control plane's state (position, policy, invalidations) attached.
    pub fn build_with(
        config: &Config,
        previous: Option<&Snapshot>,
        control: ControlState,
    ) -> Result<Snapshot, PoolBuildError> {
        let mut pools = BTreeMap::new();
        for (name, spec) in &config.pools {
            let reused = previous
                .and_then(|p| p.pools.get(name))
                .filter(|p| &p.spec == spec)
                .cloned();
            let pool = match reused {
                Some(p) => p,
                None => Arc::new(Pool::build(spec)?),
            };
            pools.insert(name.clone(), pool);
        }
        let mut table = RouteTable::default();
        let mut routes = Vec::new();
        for spec in &config.routes {
            let Some(pool) = pools.get(&spec.pool).cloned() else {
                return Err(PoolBuildError {
                    pool: spec.pool.clone(),
                    reason: format!("route {:?} names a pool that does not exist", spec.name),
                });
            };
            let class = spec
                .class
                .as_deref()
                .unwrap_or(crate::config::classes::NO_CLASS);
            let route = Arc::new(Route {
                spec: Arc::new(spec.clone()),
                pool,
                counters: Arc::new(RouteCounters::new(&spec.name, class)),
            });
            table.insert(&spec.hosts, &spec.path_prefix, route.clone());
            routes.push(route);
        }
        let tier = match &config.tier {
            Some(spec) => {
                Ring::build(spec, previous.and_then(|p| p.tier.as_deref()))?.map(Arc::new)
            }
            None => None,
        };
        // the same destination as before: the sink already open (a reload opens its own)
        let access_log = previous.and_then(|p| p.access_log.clone()).filter(|sink| {
            config
                .access_log
                .as_ref()
                .is_some_and(|spec| &spec.target == sink.target())
        });
        Ok(Snapshot {
            tier,
            access_log,
            version: config.version.clone(),
            built_at: SystemTime::now(),
            table,
            routes,
            pools,
            control,
            config: Arc::new(config.clone()),
        })
    }

    /// The access log's destination and the format of its lines, when the log is on.
    pub fn log(&self) -> Option<(&LogSink, &LogFormat)> {
        let spec = self.config.access_log.as_ref()?;
        Some((self.access_log.as_deref()?, &spec.format))
    }

    /// Whether the access log is on and its lines carry `field`.
    pub fn logs_field(&self, field: LogField) -> bool {
        self.log().is_some_and(|(_, format)| format.writes(field))
    }

    /// The route with this `name` (names are unique in a validated config).
    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.spec.name == name)
    }

    /// True when every pool has finished its first health-check pass.
    pub fn ready(&self) -> bool {
        self.pools.values().all(|p| p.has_been_checked())
    }

    /// Every pool with live health state: the routes' pools, and the tier ring's members.
    pub fn all_pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values().chain(self.tier.iter().map(|t| &t.pool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"
listeners: [{listen: "127.0.0.1:1"}]
pools:
  a: {backends: ["127.0.0.1:2"]}
  b: {backends: ["127.0.0.1:3"], health_check: {type: tcp}}
routes:
  - {hosts: [x.com], pool: a}
  - {hosts: [x.com], path: /b, pool: b}
"#;

    #[test]
    fn builds_and_reuses_unchanged_pools() {
        let c = Config::from_yaml_str(CONF).expect("config");
        let s1 = Snapshot::build(&c, None).expect("snapshot");
        assert_eq!(
            s1.table.lookup("x.com", "/b/1").map(|r| r.pool.name()),
            Some("b")
        );
        assert!(!s1.ready(), "pool b has not been checked yet");
        assert_eq!(
            s1.route("x.com/b").map(|r| r.pool.name()),
            Some("b"),
            "routes are found by name"
        );
        assert!(s1.route("nope").is_none());
        let c2 = Config::from_yaml_str(&CONF.replace("127.0.0.1:3", "127.0.0.1:4")).expect("c2");
        let s2 = Snapshot::build(&c2, Some(&s1)).expect("snapshot");
        assert!(Arc::ptr_eq(&s1.pools["a"], &s2.pools["a"]));
        assert!(!Arc::ptr_eq(&s1.pools["b"], &s2.pools["b"]));
    }
}
