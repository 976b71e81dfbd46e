//! The admin listener: `/healthz`, `/readyz`, `/status` (JSON) and `/metrics` (Prometheus text).

use crate::cache::CacheEngine;
use crate::metrics::METRICS;
use crate::node::readiness::Readiness;
use crate::node::reload::FileReloader;
use crate::snapshot::{SharedSnapshot, Snapshot};
use async_trait::async_trait;
use http::{header, HeaderValue, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// Serves the admin endpoints from the current snapshot.
pub struct AdminApp {
    snapshot: SharedSnapshot,
    cache: &'static CacheEngine,
    readiness: Arc<Readiness>,
    reloader: Arc<FileReloader>,
}

impl AdminApp {
    /// The admin app over the node's live snapshot and cache, its readiness facts and its
    /// config reloader (for `/status`).
    pub fn new(
        snapshot: SharedSnapshot,
        cache: &'static CacheEngine,
        readiness: Arc<Readiness>,
        reloader: Arc<FileReloader>,
    ) -> Self {
        started(); // uptime counts from here
        AdminApp {
            snapshot,
            cache,
            readiness,
            reloader,
        }
    }

    /// The `/status` document: [`status_json`] plus the process, readiness and reloads.
    fn status(&self, snapshot: &Snapshot) -> Value {
        let mut doc = status_json(snapshot);
        let verdict = self.readiness.verdict(snapshot);
        doc["pid"] = json!(std::process::id());
        doc["version"] = json!(crate::metrics::VERSION);
        doc["commit"] = json!(crate::metrics::COMMIT);
        doc["uptime_seconds"] = json!(started().elapsed().as_secs());
        doc["cache"] = json!({
            "bytes": self.cache.storage.bytes(),
            "objects": self.cache.storage.objects(),
            "capacity": self.cache.settings.memory,
            "evictions": self.cache.evicted_items(),
            "admission_rejections": self.cache.rejected_items(),
        });
        doc["ready"] = json!(verdict.is_ok());
        doc["readiness"] = json!({
            "listeners_bound": self.readiness.listeners_bound(),
            "snapshot_received": self.readiness.snapshot_received(),
            "first_health_checks_done": snapshot.ready(),
        });
        doc["reload"] = self.reloader.status_json();
        doc
    }

    fn refresh_cache_gauges(&self) {
        METRICS.cache_bytes.set(self.cache.storage.bytes() as i64);
        METRICS
            .cache_inflight_bytes
            .set(i64::try_from(self.cache.storage.inflight_bytes()).unwrap_or(i64::MAX));
        METRICS
            .cache_capacity
            .set(i64::try_from(self.cache.settings.memory).unwrap_or(i64::MAX));
        METRICS
            .cache_objects
            .set(self.cache.storage.objects() as i64);
        crate::metrics::catch_up(&METRICS.cache_evictions, self.cache.evicted_items() as u64);
        crate::metrics::catch_up(
            &METRICS.cache_rejections,
            self.cache.rejected_items() as u64,
        );
    }
}

fn reply(status: u16, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The `/status` document for a snapshot.
pub fn status_json(snapshot: &Snapshot) -> Value {
    let routes: Vec<Value> = snapshot
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.spec.name,
                "hosts": r.spec.hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                "path": r.spec.path_prefix,
                "pool": r.spec.pool,
                "strip_prefix": r.spec.strip_prefix,
            })
        })
        .collect();
    let pools: serde_json::Map<String, Value> = snapshot
        .pools
        .iter()
        .map(|(name, pool)| {
            let backends: Vec<Value> = pool
                .slots()
                .iter()
                .map(|s| {
                    json!({
                        "backend": s.label,
                        "addr": s.addr.to_string(),
                        "weight": s.weight,
                        "healthy": pool.is_healthy(&s.addr),
                        "ejected": pool.is_ejected(&s.addr),
                    })
                })
                .collect();
            let selection = match &pool.spec.selection {
                crate::config::Selection::RoundRobin => "round_robin",
                crate::config::Selection::Consistent(_) => "consistent",
            };
            (
                name.clone(),
                json!({
                    "selection": selection,
                    "health_checked": pool.spec.health_check.is_some(),
                    "first_check_done": pool.has_been_checked(),
                    "backends": backends,
                }),
            )
        })
        .collect();
    let built = snapshot
        .built_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "config_version": snapshot.version,
        "loaded_at_unix": built,
        "ready": snapshot.ready(),
        "routes": routes,
        "pools": pools,
        "tier": snapshot.tier.as_deref().map(tier_json),
        "control": {
            "policy_version": snapshot.control.position.policy_version,
            "invalidation_seq": snapshot.control.position.seq,
            "invalidations": snapshot.control.invalidations.len(),
            "from_control_plane": snapshot.control.policy.is_some(),
        },
    })
}

/// The tier ring as `/status` shows it: this node's id and every member with its state.
fn tier_json(ring: &crate::upstream::tier::Ring) -> Value {
    let members: Vec<Value> = ring
        .spec
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "addr": m.addr.to_string(),
                "self": m.id == ring.self_id,
                "healthy": ring.pool.is_healthy(&m.addr),
                "ejected": ring.pool.is_ejected(&m.addr),
            })
        })
        .collect();
    json!({
        "self": ring.self_id,
        "hop_window_secs": ring.hop_window().as_secs(),
        "members": members,
    })
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let snapshot = self.snapshot.load();
        match path.as_str() {
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => match self.readiness.verdict(&snapshot) {
                Ok(()) => reply(200, "text/plain", b"ready\n".to_vec()),
                Err(why) => reply(503, "text/plain", format!("{why}\n").into_bytes()),
            },
            "/status" => {
                let body = serde_json::to_vec_pretty(&self.status(&snapshot)).unwrap_or_default();
                reply(200, "application/json", body)
            }
            "/metrics" => {
                self.refresh_cache_gauges();
                crate::node::poller::refresh_age_gauge();
                reply(200, "text/plain; version=0.0.4", METRICS.render_node())
            }
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

/// When this process started (first asked at start-up by the admin app), for `uptime_seconds`.
fn started() -> std::time::Instant {
    static STARTED: once_cell::sync::Lazy<std::time::Instant> =
        once_cell::sync::Lazy::new(std::time::Instant::now);
    *STARTED
}
