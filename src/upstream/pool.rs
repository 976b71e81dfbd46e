//! A pool of backends: weighted round robin or Ketama selection over health-checked backends,
//! with passive ejection after consecutive connect failures.

use crate::config::{HealthProbe, PoolSpec, Selection};
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_error::{Error, ErrorType};
use pingora_http::RequestHeader;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One backend of a pool and its passive-ejection state.
#[derive(Debug)]
pub struct BackendSlot {
    /// As written in the config, for display.
    pub label: String,
    /// The resolved address.
    pub addr: SocketAddr,
    /// Its share of requests.
    pub weight: u32,
    connect_failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which this backend is skipped (0: not ejected).
    ejected_until_ms: AtomicU64,
}

enum Selector {
    RoundRobin(LoadBalancer<RoundRobin>),
    Consistent(LoadBalancer<Consistent>),
}

impl Selector {
    fn backends(&self) -> &Backends {
        match self {
            Selector::RoundRobin(lb) => lb.backends(),
            Selector::Consistent(lb) => lb.backends(),
        }
    }

    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        const MAX_ITERATIONS: usize = 256;
        match self {
            Selector::RoundRobin(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
            Selector::Consistent(lb) => lb.select_with(key, MAX_ITERATIONS, accept),
        }
    }
}

/// A pool built from a validated `PoolSpec`. Lives inside a snapshot; shared by `Arc`.
pub struct Pool {
    /// The validated spec it was built from.
    pub spec: PoolSpec,
    selector: Selector,
    slots: Vec<BackendSlot>,
    epoch: Instant,
    /// True once the first active health-check pass finished (or there is no health check).
    checked: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.spec.name)
            .field("slots", &self.slots)
            .finish()
    }
}

/// Errors building a pool that validation could not catch (e.g. a health request that Pingora
/// refuses to build).
#[derive(Debug, thiserror::Error)]
#[error("pool {pool}: {reason}")]
pub struct PoolBuildError {
    /// The pool's name.
    pub pool: String,
    /// What could not be built.
    pub reason: String,
}

impl Pool {
    /// Build a pool and its selector. Health state starts "healthy" until the first check.
    pub fn build(spec: &PoolSpec) -> std::result::Result<Pool, PoolBuildError> {
        let err = |reason: String| PoolBuildError {
            pool: spec.name.clone(),
            reason,
        };
        let set: BTreeSet<Backend> = spec
            .backends
            .iter()
            .map(|b| Backend {
                addr: PingoraAddr::Inet(b.addr),
                weight: b.weight as usize,
                ext: http::Extensions::new(),
            })
            .collect();
        let mut backends = Backends::new(Static::new(set));
        if let Some(hc) = &spec.health_check {
            backends.set_health_check(build_health_check(spec, hc).map_err(err)?);
        }
        let selector = match &spec.selection {
            Selection::RoundRobin => Selector::RoundRobin(LoadBalancer::from_backends(backends)),
            Selection::Consistent(_) => Selector::Consistent(LoadBalancer::from_backends(backends)),
        };
        // Static discovery answers immediately; this fills the selector before first use.
        let update = match &selector {
            Selector::RoundRobin(lb) => futures::FutureExt::now_or_never(lb.update()),
            Selector::Consistent(lb) => futures::FutureExt::now_or_never(lb.update()),
        };
        match update {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(err(format!("backend discovery failed: {e}"))),
            None => return Err(err("backend discovery did not complete".into())),
        }
        let slots = spec
            .backends
            .iter()
            .map(|b| BackendSlot {
                label: b.label.clone(),
                addr: b.addr,
                weight: b.weight,
                connect_failures: AtomicU32::new(0),
                ejected_until_ms: AtomicU64::new(0),
            })
            .collect();
        Ok(Pool {
            spec: spec.clone(),
            selector,
            slots,
            epoch: Instant::now(),
            checked: AtomicBool::new(spec.health_check.is_none()),
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its backends with their ejection state, in config order.
    pub fn slots(&self) -> &[BackendSlot] {
        &self.slots
    }

    fn slot(&self, addr: &SocketAddr) -> Option<&BackendSlot> {
        self.slots.iter().find(|s| &s.addr == addr)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the active health check currently considers this backend healthy.
    pub fn is_healthy(&self, addr: &SocketAddr) -> bool {
        self.slot(addr).is_some_and(|s| {
            self.selector.backends().ready(&Backend {
                addr: PingoraAddr::Inet(s.addr),
                weight: s.weight as usize,
                ext: http::Extensions::new(),
            })
        })
    }

    /// Whether passive ejection currently skips this backend.
    pub fn is_ejected(&self, addr: &SocketAddr) -> bool {
        self.slot(addr)
            .is_some_and(|s| s.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms())
    }

    /// Pick a healthy, non-ejected backend not in `exclude`. `key` feeds consistent hashing.
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<SocketAddr> {
        let now = self.now_ms();
        let usable = |addr: &SocketAddr| {
            !exclude.contains(addr)
                && self
                    .slot(addr)
                    .is_some_and(|s| s.ejected_until_ms.load(Ordering::Relaxed) <= now)
        };
        let picked = self.selector.select_with(key, |b, healthy| {
            healthy && b.addr.as_inet().is_some_and(&usable)
        });
        if let Some(addr) = picked.and_then(|b| b.addr.as_inet().copied()) {
            return Some(addr);
        }
        // The selector's iteration is bounded; sweep the rest deterministically so a usable
        // backend is never missed.
        self.slots
            .iter()
            .map(|s| s.addr)
            .find(|a| usable(a) && self.is_healthy(a))
    }

    /// Record a failed connect; returns true when this failure ejected the backend.
    pub fn report_connect_failure(&self, addr: &SocketAddr) -> bool {
        let Some(slot) = self.slot(addr) else {
            return false;
        };
        let limit = self.spec.passive.max_connect_failures;
        let n = slot.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if limit > 0 && n >= limit {
            slot.connect_failures.store(0, Ordering::Relaxed);
            let until = self.now_ms() + self.spec.passive.eject_for.as_millis() as u64;
            slot.ejected_until_ms.store(until, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Record a successful connect: the failure streak ends.
    pub fn report_connect_success(&self, addr: &SocketAddr) {
        if let Some(slot) = self.slot(addr) {
            slot.connect_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Run one active health-check pass over every backend (no-op without a health check).
    pub async fn run_health_check(&self) {
        if self.spec.health_check.is_some() {
            self.selector.backends().run_health_check(true).await;
        }
        self.checked.store(true, Ordering::Release);
    }

    /// True once the first health-check pass finished, or when the pool has no health check.
    pub fn has_been_checked(&self) -> bool {
        self.checked.load(Ordering::Acquire)
    }

    /// The active health-check interval, if any.
    pub fn health_interval(&self) -> Option<Duration> {
        self.spec.health_check.as_ref().map(|h| h.interval)
    }
}

fn build_health_check(
    spec: &PoolSpec,
    hc: &crate::config::HealthCheckSpec,
) -> std::result::Result<
    Box<dyn pingora_load_balancing::health_check::HealthCheck + Send + Sync>,
    String,
> {
    let tls = spec.tls.as_ref();
    match &hc.probe {
        HealthProbe::Tcp => {
            let mut check = match tls {
                Some(t) => TcpHealthCheck::new_tls(&t.sni),
                None => TcpHealthCheck::new(),
            };
            check.consecutive_success = hc.healthy_after;
            check.consecutive_failure = hc.unhealthy_after;
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            if let Some(t) = tls {
                check.peer_template.options.verify_cert = t.verify;
                check.peer_template.options.verify_hostname = t.verify;
            }
            Ok(check)
        }
        HealthProbe::Http {
            path,
            host,
            expect_status,
        } => {
            let mut check = HttpHealthCheck::new(host, tls.is_some());
            let mut req = RequestHeader::build("GET", path.as_bytes(), None)
                .map_err(|e| format!("health check request: {e}"))?;
            req.insert_header("Host", host.as_str())
                .map_err(|e| format!("health check host: {e}"))?;
            req.insert_header("User-Agent", "verge-health-check")
                .map_err(|e| format!("health check header: {e}"))?;
            check.req = req;
            check.consecutive_success = hc.healthy_after;
            check.consecutive_failure = hc.unhealthy_after;
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.peer_template.options.read_timeout = Some(hc.timeout);
            check.peer_template.options.write_timeout = Some(hc.timeout);
            if let Some(t) = tls {
                check.peer_template.sni = t.sni.clone();
                check.peer_template.options.verify_cert = t.verify;
                check.peer_template.options.verify_hostname = t.verify;
            }
            let expected = *expect_status;
            check.validator = Some(Box::new(move |resp| {
                if resp.status.as_u16() == expected {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::CustomCode("unexpected health status", resp.status.as_u16()),
                        format!("expected {expected}"),
                    )
                }
            }));
            Ok(Box::new(check))
        }
    }
}

/// Compute the hash key for consistent selection; empty for round robin.
pub fn hash_input(
    selection: &Selection,
    req: &RequestHeader,
    client_ip: Option<std::net::IpAddr>,
) -> Vec<u8> {
    use crate::config::HashKey;
    use crate::http_syntax::fields::cookie_value;
    let Selection::Consistent(key) = selection else {
        return Vec::new();
    };
    match key {
        HashKey::Uri => crate::http_syntax::path_and_query(&req.uri)
            .as_bytes()
            .to_vec(),
        HashKey::Header(name) => req
            .headers
            .get(name)
            .map_or(Vec::new(), |v| v.as_bytes().to_vec()),
        HashKey::Cookie(name) => cookie_value(&req.headers, name).unwrap_or_default(),
        HashKey::ClientIp => client_ip.map_or(Vec::new(), |ip| ip.to_string().into_bytes()),
    }
}

/// Build an error that names the pool, for the 502 a client sees when nothing is usable. It is
/// an upstream failure, so stale-if-error may answer instead.
pub fn no_backend_error(pool: &str) -> Box<Error> {
    let mut e = Error::explain(
        ErrorType::HTTPStatus(502),
        format!("no healthy backend in pool {pool:?}"),
    );
    e.as_up();
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendSpec, HashKey, PassiveSpec, Timeouts};

    fn spec(n: usize, selection: Selection) -> PoolSpec {
        PoolSpec {
            name: "p".into(),
            backends: (0..n)
                .map(|i| BackendSpec {
                    label: format!("127.0.0.1:{}", 10000 + i),
                    addr: SocketAddr::from(([127, 0, 0, 1], 10000 + i as u16)),
                    weight: 1,
                })
                .collect(),
            selection,
            tls: None,
            health_check: None,
            passive: PassiveSpec {
                max_connect_failures: 2,
                eject_for: Duration::from_secs(60),
            },
            timeouts: Timeouts::default(),
            retries: 2,
        }
    }

    #[test]
    fn select_skips_excluded_and_ejected() {
        let pool = Pool::build(&spec(3, Selection::RoundRobin)).expect("pool");
        let all: Vec<SocketAddr> = pool.slots().iter().map(|s| s.addr).collect();
        let a = pool.select(b"", &all[..2]).expect("one left");
        assert_eq!(a, all[2]);
        assert!(pool.select(b"", &all).is_none());
        assert!(!pool.report_connect_failure(&all[2]));
        assert!(pool.report_connect_failure(&all[2]));
        assert!(pool.is_ejected(&all[2]));
        assert!(pool.select(b"", &all[..2]).is_none());
    }

    #[test]
    fn success_resets_failure_streak() {
        let pool = Pool::build(&spec(1, Selection::RoundRobin)).expect("pool");
        let a = pool.slots()[0].addr;
        pool.report_connect_failure(&a);
        pool.report_connect_success(&a);
        assert!(!pool.report_connect_failure(&a));
        assert!(!pool.is_ejected(&a));
    }

    #[test]
    fn consistent_is_stable() {
        let pool = Pool::build(&spec(5, Selection::Consistent(HashKey::Uri))).expect("pool");
        for key in ["/a", "/b", "/c/d?x=1"] {
            let first = pool.select(key.as_bytes(), &[]);
            for _ in 0..10 {
                assert_eq!(pool.select(key.as_bytes(), &[]), first);
            }
        }
    }
}
