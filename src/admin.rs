//! The admin listener: `/healthz`, `/readyz`, `/status` (JSON) and `/metrics` (Prometheus text).

use crate::cache::CacheEngine;
use crate::metrics::METRICS;
use crate::snapshot::{SharedSnapshot, Snapshot};
use async_trait::async_trait;
use http::{header, HeaderValue, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::time::UNIX_EPOCH;

/// Serves the admin endpoints from the current snapshot.
pub struct AdminApp {
    snapshot: SharedSnapshot,
    cache: &'static CacheEngine,
}

impl AdminApp {
    /// The admin app over the node's live snapshot and cache.
    pub fn new(snapshot: SharedSnapshot, cache: &'static CacheEngine) -> Self {
        AdminApp { snapshot, cache }
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
        METRICS
            .cache_evictions
            .set(self.cache.evicted_items() as i64);
        METRICS
            .cache_rejections
            .set(self.cache.rejected_items() as i64);
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
        "control": {
            "policy_version": snapshot.control.position.policy_version,
            "invalidation_seq": snapshot.control.position.seq,
            "invalidations": snapshot.control.invalidations.len(),
            "from_control_plane": snapshot.control.policy.is_some(),
        },
    })
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let snapshot = self.snapshot.load();
        match path.as_str() {
            "/healthz" => reply(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" if snapshot.ready() => reply(200, "text/plain", b"ready\n".to_vec()),
            "/readyz" => reply(
                503,
                "text/plain",
                b"not ready: waiting for first health checks\n".to_vec(),
            ),
            "/status" => {
                let body = serde_json::to_vec_pretty(&status_json(&snapshot)).unwrap_or_default();
                reply(200, "application/json", body)
            }
            "/metrics" => {
                self.refresh_cache_gauges();
                crate::node::poller::refresh_age_gauge();
                reply(200, "text/plain; version=0.0.4", METRICS.render())
            }
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
