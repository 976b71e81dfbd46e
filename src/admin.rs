//! The admin listener: `/healthz`, `/readyz`, `/status` (JSON), `/metrics` (Prometheus text)
//! and `/cache/HOST/PATH?QUERY` (what the node would serve for a URL, for `verge verify`).

use crate::cache::CacheEngine;
use crate::metrics::METRICS;
use crate::node::readiness::Readiness;
use crate::node::reload::FileReloader;
use crate::snapshot::{SharedSnapshot, Snapshot};
use async_trait::async_trait;
use http::{header, HeaderValue, Response, StatusCode};
use pingora_cache::key::CacheHashKey;
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
            p if p.starts_with("/cache/") => {
                let uri = &session.req_header().uri;
                let target = match uri.query() {
                    Some(q) => format!("{}?{q}", &p["/cache/".len()..]),
                    None => p["/cache/".len()..].to_string(),
                };
                let (status, doc) = cache_entry_json(&snapshot, self.cache, &target);
                let body = serde_json::to_vec_pretty(&doc).unwrap_or_default();
                reply(status, "application/json", body)
            }
            _ => reply(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}

/// What this node would serve for `target` (`host/path?query`) right now, from memory and
/// without asking the origin: the route and class, whether an entry is stored (under `http` or
/// `https`), its `ETag`, age and freshness left, what the applied invalidations say of it, and
/// the node's control-plane position. Only the entry without `Vary` variance is looked at.
pub fn cache_entry_json(snapshot: &Snapshot, cache: &CacheEngine, target: &str) -> (u16, Value) {
    let position = json!({
        "policy_version": snapshot.control.position.policy_version,
        "invalidation_seq": snapshot.control.position.seq,
    });
    let (host, path_query) = match target.find(['/', '?']) {
        Some(i) if target.as_bytes()[i] == b'/' => (&target[..i], &target[i..]),
        _ => (target, "/"),
    };
    let host = crate::http_syntax::host::canonical_host(host).unwrap_or_default();
    let path = path_query.split('?').next().unwrap_or("/");
    let route = snapshot.table.lookup(&host, path);
    let Some((route, rules)) = route.and_then(|r| r.spec.cache.as_ref().map(|c| (r, c))) else {
        let doc = json!({"url": target, "error": "no caching route for this URL",
                         "control": position});
        return (404, doc);
    };
    let pq = crate::proxy::rewrite::key_target(route.spec.edge.rewrite.path.as_ref(), path_query);
    let found = ["http", "https"].into_iter().find_map(|scheme| {
        let key = crate::cache::route_cache_key(scheme, &host, &pq, &rules.key);
        cache
            .storage
            .stored(&key.combined_bin())
            .map(|entry| (scheme, entry))
    });
    let mut doc = json!({
        "url": format!("{host}{path_query}"),
        "route": route.spec.name,
        "class": route.spec.class,
        "stored": found.is_some(),
        "control": position,
    });
    let Some((scheme, entry)) = found else {
        doc["serves"] = json!("miss");
        return (200, doc);
    };
    let meta = entry.meta();
    let now = std::time::SystemTime::now();
    let headers = &meta.header().headers;
    let key_pq = crate::cache::key_rules::key_path_and_query(&pq, &rules.key.query);
    let verdict = crate::cache::invalidation_verdict(
        &snapshot.control.invalidations,
        &host,
        &pq,
        Some(&key_pq),
        headers,
        meta.created(),
        None,
    );
    let ttl = crate::cache::cache_status::ttl_left(meta.fresh_until(), now);
    use crate::cache::invalidation::index::Verdict;
    let (invalidation, serves) = match verdict {
        Verdict::Invalid => ("invalid", "refetch"),
        Verdict::Stale { .. } => ("stale", "stale"),
        Verdict::Valid if ttl >= 0 => ("valid", "fresh"),
        Verdict::Valid => ("valid", "stale"),
    };
    doc["scheme"] = json!(scheme);
    doc["etag"] = json!(headers.get(header::ETAG).and_then(|v| v.to_str().ok()));
    doc["status"] = json!(meta.header().status.as_u16());
    doc["age"] = json!(meta.age(now).as_secs());
    doc["ttl"] = json!(ttl);
    doc["invalidation"] = json!(invalidation);
    doc["serves"] = json!(serves);
    (200, doc)
}

/// When this process started (first asked at start-up by the admin app), for `uptime_seconds`.
fn started() -> std::time::Instant {
    static STARTED: once_cell::sync::Lazy<std::time::Instant> =
        once_cell::sync::Lazy::new(std::time::Instant::now);
    *STARTED
}
