//! The control plane's HTTP JSON API (`/v1/...`), with bearer-token scopes, on Pingora's HTTP app.

use super::audit::{AuditEntry, AuditLog};
use super::liveness::judge;
use super::plane::{ControlPlane, InvalidationRequest, PlaneError};
use super::purge_scope;
use super::settings::{Scope, Token};
use super::staged_purge::{
    StagedError, StagedPurges, StagedRequest, WaveSpec, DEFAULT_ACK_TIMEOUT, DEFAULT_HOLD,
    DEFAULT_WAVES,
};
use super::wire::{unix_ms, AppliedReport, InvalidationKind, Position, SigningKey, FEATURE_WAVES};
use crate::config::units::parse_duration;
use crate::metrics::METRICS;
use async_trait::async_trait;
use http::{header, HeaderValue, Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Serves the control-plane API for one `ControlPlane`.
pub struct ControlApi {
    plane: Arc<ControlPlane>,
    audit: Option<AuditLog>,
    staged: Arc<StagedPurges>,
}

impl ControlApi {
    /// The API over `plane`, recording every call in `audit` when there is one.
    pub fn new(plane: Arc<ControlPlane>, audit: Option<AuditLog>) -> Self {
        let staged = StagedPurges::new(plane.clone());
        ControlApi {
            plane,
            audit,
            staged,
        }
    }

    /// The staged purges this API starts, for the service that moves them on.
    pub fn staged_purges(&self) -> Arc<StagedPurges> {
        self.staged.clone()
    }

    /// Record a call and its answer in the audit log (probes of `/healthz` and `/metrics` are
    /// not API calls).
    fn audit(&self, req: &ApiRequest, reply: &ApiReply) {
        let Some(log) = &self.audit else { return };
        if req.method == "GET" && matches!(req.path.as_str(), "/healthz" | "/metrics") {
            return;
        }
        let settings = &self.plane.settings;
        let token = match authenticate(&settings.tokens, req.authorization.as_deref()) {
            Ok(t) => Some(t.name.as_str()),
            Err(_) if settings.insecure_no_auth && settings.tokens.is_empty() => Some("anonymous"),
            Err(_) => None,
        };
        log.record(&AuditEntry {
            token,
            client: req.client.as_deref(),
            method: &req.method,
            path: &req.path,
            query: &req.query,
            body: &req.body,
            status: reply.status,
            answer: &reply.body,
        });
    }
}

/// A parsed request: what the handlers need, nothing else.
#[derive(Debug, Default)]
pub struct ApiRequest {
    /// The request method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string, without `?` (empty if none).
    pub query: String,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `If-Match` header (the policy version a write expects to replace).
    pub if_match: Option<String>,
    /// The caller's address (`ip:port`), for the audit log.
    pub client: Option<String>,
    /// The request body.
    pub body: Vec<u8>,
}

/// A reply before it becomes an HTTP response.
#[derive(Debug)]
pub struct ApiReply {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
    /// Its media type.
    pub content_type: &'static str,
    /// The current policy version, sent as `ETag`.
    pub etag: Option<u64>,
    /// Seconds for `Retry-After` (rate-limited purges).
    pub retry_after: Option<u64>,
    /// Whether to send `WWW-Authenticate: Bearer` (401 answers).
    pub www_authenticate: bool,
    /// Whether to send the body's checksum (`verge-checksum`: snapshot messages).
    pub checksum: bool,
}

impl ApiReply {
    fn json(status: u16, v: Value) -> ApiReply {
        let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
        body.push(b'\n');
        ApiReply {
            status,
            body,
            content_type: "application/json",
            etag: None,
            retry_after: None,
            www_authenticate: false,
            checksum: false,
        }
    }

    fn error(status: u16, message: impl Into<String>) -> ApiReply {
        ApiReply::json(status, json!({ "error": message.into() }))
    }

    fn with_etag(mut self, v: u64) -> ApiReply {
        self.etag = Some(v);
        self
    }
}

fn plane_error(e: PlaneError) -> ApiReply {
    match e {
        PlaneError::Conflict { current, given } => ApiReply::json(
            412,
            json!({"error": format!("version {given} is not current"), "current_version": current}),
        )
        .with_etag(current),
        PlaneError::PreconditionRequired => ApiReply::error(
            428,
            "send If-Match with the version you read (0 before the first policy)",
        ),
        PlaneError::Invalid(errs) => ApiReply::json(
            422,
            json!({
                "error": "invalid policy",
                "errors": errs.errors.iter().map(|e| json!({"path": e.path, "message": e.message})).collect::<Vec<_>>(),
            }),
        ),
        PlaneError::BadRequest(m) => ApiReply::error(400, m),
        PlaneError::NotFound(m) => ApiReply::error(404, m),
        PlaneError::RateLimited { retry_after_secs } => {
            let mut r = ApiReply::error(
                429,
                format!("purge rate limit exceeded; retry in {retry_after_secs}s"),
            );
            r.retry_after = Some(retry_after_secs);
            r
        }
        PlaneError::Store(e) => {
            log::error!("control store: {e}");
            ApiReply::error(503, format!("store failed, nothing was written: {e}"))
        }
    }
}

/// Compare secrets without an early exit on the first differing byte.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The token a request presents, or the reply refusing it.
fn authenticate<'a>(
    tokens: &'a [Token],
    authorization: Option<&str>,
) -> Result<&'a Token, ApiReply> {
    let unauthorized = || {
        let mut r = ApiReply::error(401, "missing or unknown bearer token");
        r.www_authenticate = true;
        r
    };
    let presented = authorization
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(unauthorized)?;
    tokens
        .iter()
        .find(|t| same_secret(&t.secret, presented))
        .ok_or_else(unauthorized)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The long-poll wait a node's receipt gives (`?wait=30000ms`): how often it reports.
fn report_wait(query: &str) -> Result<Option<Duration>, ApiReply> {
    match query_param(query, "wait") {
        None | Some("") => Ok(None),
        Some(v) => parse_duration(v)
            .map(Some)
            .map_err(|e| ApiReply::error(400, format!("wait: {e}"))),
    }
}

/// `If-Match: "7"`, `W/"7"` or `7` → 7.
fn parse_if_match(v: &str) -> Option<u64> {
    v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// A policy body: JSON, or YAML text (JSON is YAML too).
fn parse_document(body: &[u8]) -> Result<Value, ApiReply> {
    let text = std::str::from_utf8(body).map_err(|_| ApiReply::error(400, "body is not UTF-8"))?;
    crate::config::Policy::document_from_text(text)
        .map_err(|e| ApiReply::error(400, format!("body is not a JSON or YAML document: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    kind: Option<InvalidationKind>,
    target: Option<String>,
    targets: Option<Vec<String>>,
    #[serde(default)]
    soft: bool,
    confirm: Option<String>,
    invalidations: Option<Vec<PurgeItem>>,
    /// The client's id for a single-target purge (idempotent redelivery).
    id: Option<String>,
    /// The origin object's new version (`ETag`), for a single URL purge.
    expected_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeItem {
    kind: InvalidationKind,
    #[serde(default)]
    target: String,
    #[serde(default)]
    soft: bool,
    id: Option<String>,
    expected_version: Option<String>,
}

/// Turn any of the accepted purge bodies into requests. `all` needs `"confirm": "all"`.
fn purge_requests(body: &[u8]) -> Result<Vec<InvalidationRequest>, ApiReply> {
    let b: PurgeBody = serde_json::from_slice(body)
        .map_err(|e| ApiReply::error(400, format!("invalid purge body: {e}")))?;
    let mut out = Vec::new();
    match (b.kind, b.invalidations) {
        (Some(kind), None) => {
            let targets = match (b.target, b.targets) {
                (Some(t), None) => vec![t],
                (None, Some(ts)) => ts,
                (None, None) if kind == InvalidationKind::All => vec![String::new()],
                _ => return Err(ApiReply::error(400, "give either target or targets")),
            };
            if b.id.is_some() && targets.len() != 1 {
                return Err(ApiReply::error(
                    400,
                    "an id names one invalidation: give one per item of \"invalidations\"",
                ));
            }
            if b.expected_version.is_some() && targets.len() != 1 {
                return Err(ApiReply::error(
                    400,
                    "an expected_version is one URL's: give one per item of \"invalidations\"",
                ));
            }
            out.extend(targets.into_iter().map(|target| InvalidationRequest {
                kind,
                target,
                soft: b.soft,
                id: b.id.clone(),
                expected_version: b.expected_version.clone(),
                nodes: None,
            }));
        }
        (None, Some(items)) if b.id.is_none() && b.expected_version.is_none() => {
            out.extend(items.into_iter().map(|i| InvalidationRequest {
                kind: i.kind,
                target: i.target,
                soft: i.soft,
                id: i.id,
                expected_version: i.expected_version,
                nodes: None,
            }))
        }
        _ => {
            return Err(ApiReply::error(
                400,
                "give kind (+ target/targets) or invalidations",
            ))
        }
    }
    if out.iter().any(|r| r.kind == InvalidationKind::All) && b.confirm.as_deref() != Some("all") {
        return Err(ApiReply::error(400, "kind all needs \"confirm\": \"all\""));
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StagedBody {
    kind: InvalidationKind,
    #[serde(default)]
    target: String,
    #[serde(default)]
    soft: bool,
    confirm: Option<String>,
    waves: Option<Vec<WaveSpec>>,
    hold: Option<String>,
    ack_timeout: Option<String>,
}

/// A staged purge's body as a request, and the invalidation its waves share (for the scope
/// check). `all` needs `"confirm": "all"`, as an immediate one does.
fn staged_request(body: &[u8]) -> Result<(StagedRequest, InvalidationRequest), ApiReply> {
    let b: StagedBody = serde_json::from_slice(body)
        .map_err(|e| ApiReply::error(400, format!("invalid staged purge body: {e}")))?;
    if b.kind == InvalidationKind::All && b.confirm.as_deref() != Some("all") {
        return Err(ApiReply::error(400, "kind all needs \"confirm\": \"all\""));
    }
    let duration = |name: &str, v: Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(t) => parse_duration(&t).map_err(|e| ApiReply::error(400, format!("{name}: {e}"))),
    };
    let request = StagedRequest {
        kind: b.kind,
        target: b.target.clone(),
        soft: b.soft,
        waves: b
            .waves
            .unwrap_or_else(|| vec![WaveSpec::Share(DEFAULT_WAVES.into())]),
        hold: duration("hold", b.hold, DEFAULT_HOLD)?,
        ack_timeout: duration("ack_timeout", b.ack_timeout, DEFAULT_ACK_TIMEOUT)?,
    };
    let invalidation = InvalidationRequest {
        kind: b.kind,
        target: b.target,
        soft: b.soft,
        id: None,
        expected_version: None,
        nodes: None,
    };
    Ok((request, invalidation))
}

fn staged_error(e: StagedError) -> ApiReply {
    match e {
        StagedError::BadRequest(m) => ApiReply::error(400, m),
        e @ StagedError::NotFound(_) => ApiReply::error(404, e.to_string()),
        e @ StagedError::Conflict { .. } => ApiReply::error(409, e.to_string()),
        StagedError::Plane(e) => plane_error(e),
    }
}

fn policy_json(p: &super::store::PolicyVersion) -> Value {
    json!({
        "version": p.version,
        "written_ms": p.written_ms,
        "author": p.author,
        "rollback_of": p.rollback_of,
        "policy": p.document,
    })
}

impl ControlApi {
    /// Answer one request (the HTTP layer only reads and writes bytes around this).
    pub async fn handle(&self, req: &ApiRequest) -> ApiReply {
        let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        let method = req.method.as_str();
        match (method, segments.as_slice()) {
            ("GET", ["healthz"]) => return ApiReply::json(200, json!({"ok": true})),
            ("GET", ["metrics"]) => {
                self.plane.nodes();
                let mut r = ApiReply::json(200, Value::Null);
                r.body = METRICS.render_control();
                r.content_type = "text/plain; version=0.0.4";
                return r;
            }
            _ => {}
        }
        let token = if self.plane.settings.insecure_no_auth && self.plane.settings.tokens.is_empty()
        {
            None
        } else {
            match authenticate(&self.plane.settings.tokens, req.authorization.as_deref()) {
                Ok(t) => Some(t),
                Err(reply) => return reply,
            }
        };
        let who = token.map_or("anonymous", |t| t.name.as_str());
        let need = |scope: Scope| -> Result<(), ApiReply> {
            match token {
                Some(t) if !t.scopes.contains(&scope) => Err(ApiReply::error(
                    403,
                    format!("token {:?} lacks the {} scope", t.name, scope.as_str()),
                )),
                _ => Ok(()),
            }
        };
        let result = match (method, segments.as_slice()) {
            ("GET", ["v1", "policy"]) => need(Scope::Read).map(|()| match self.plane.policy() {
                Some(p) => ApiReply::json(200, policy_json(&p)).with_etag(p.version),
                None => ApiReply::json(200, json!({"version": 0, "policy": null})).with_etag(0),
            }),
            ("PUT", ["v1", "policy"]) => match need(Scope::PolicyWrite).and_then(|()| parse_document(&req.body)) {
                Err(r) => Err(r),
                Ok(doc) => {
                    let if_match = req.if_match.as_deref().and_then(parse_if_match);
                    let who = who.to_string();
                    self.write(move |plane| plane.put_policy(doc, if_match, &who))
                        .await
                        .map(|p| ApiReply::json(200, json!({"version": p.version, "unchanged": if_match == Some(p.version)})).with_etag(p.version))
                }
            },
            ("GET", ["v1", "policy", "history"]) => need(Scope::Read).map(|()| {
                let versions: Vec<Value> = self
                    .plane
                    .history()
                    .iter()
                    .map(|p| json!({"version": p.version, "written_ms": p.written_ms, "author": p.author, "rollback_of": p.rollback_of}))
                    .collect();
                ApiReply::json(200, json!({ "versions": versions }))
            }),
            ("GET", ["v1", "policy", "versions", v]) => need(Scope::Read).and_then(|()| {
                let p = v
                    .parse::<u64>()
                    .ok()
                    .and_then(|v| self.plane.policy_version(v))
                    .ok_or_else(|| ApiReply::error(404, format!("policy version {v} is not kept")))?;
                Ok(ApiReply::json(200, policy_json(&p)).with_etag(p.version))
            }),
            ("POST", ["v1", "policy", "rollback"]) => match need(Scope::PolicyWrite).and_then(|()| {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Rollback {
                    version: u64,
                }
                serde_json::from_slice::<Rollback>(&req.body)
                    .map_err(|e| ApiReply::error(400, format!("expected {{\"version\": N}}: {e}")))
            }) {
                Err(r) => Err(r),
                Ok(body) => {
                    let (version, who) = (body.version, who.to_string());
                    let if_match = req.if_match.as_deref().and_then(parse_if_match);
                    self.write(move |plane| plane.rollback(version, if_match, &who))
                        .await
                        .map(|p| ApiReply::json(200, json!({"version": p.version, "rollback_of": version, "unchanged": if_match == Some(p.version)})).with_etag(p.version))
                }
            },
            ("POST", ["v1", "invalidations"]) => match purge_requests(&req.body).and_then(|requests| {
                if let Some(t) = token {
                    purge_scope::authorize(t, &requests).map_err(|e| ApiReply::error(403, e))?;
                }
                Ok(requests)
            }) {
                Err(r) => Err(r),
                Ok(requests) => {
                    let who = who.to_string();
                    self.write(move |plane| plane.invalidate(&requests, &who)).await.map(|accepted| {
                let seq = accepted.iter().map(|a| a.seq).max().unwrap_or(0);
                ApiReply::json(
                    202,
                    json!({
                        "seq": seq,
                        "seqs": accepted.iter().map(|a| a.seq).collect::<Vec<_>>(),
                        "coalesced": accepted.iter().map(|a| a.coalesced).collect::<Vec<_>>(),
                        "duplicate": accepted.iter().map(|a| a.duplicate).collect::<Vec<_>>(),
                    }),
                )
                    })
                }
            },
            ("POST", ["v1", "staged-purges"]) => match staged_request(&req.body).and_then(|(request, invalidation)| {
                if let Some(t) = token {
                    purge_scope::authorize(t, &[invalidation]).map_err(|e| ApiReply::error(403, e))?;
                }
                Ok(request)
            }) {
                Err(r) => Err(r),
                Ok(request) => {
                    // its first wave is a store write: off the API workers, as every write
                    let (staged, who) = (self.staged.clone(), who.to_string());
                    blocking(move || staged.start(request, &who))
                        .await
                        .and_then(|r| r.map_err(staged_error))
                        .map(|shown| ApiReply::json(202, shown))
                }
            },
            ("GET", ["v1", "staged-purges"]) => need(Scope::Read)
                .map(|()| ApiReply::json(200, json!({"staged_purges": self.staged.list()}))),
            ("GET", ["v1", "staged-purges", id]) => need(Scope::Read).and_then(|()| {
                id.parse::<u64>()
                    .ok()
                    .and_then(|id| self.staged.get(id))
                    .map(|p| ApiReply::json(200, p))
                    .ok_or_else(|| ApiReply::error(404, format!("no staged purge {id}")))
            }),
            ("POST", ["v1", "staged-purges", id, op]) => {
                // the scope that may start it may stop it
                let checked = id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| Some((id, self.staged.request_of(id)?)))
                    .ok_or_else(|| ApiReply::error(404, format!("no staged purge {id}")))
                    .and_then(|(id, r)| match token {
                        Some(t) => purge_scope::authorize(t, std::slice::from_ref(&r))
                            .map(|()| id)
                            .map_err(|e| ApiReply::error(403, e)),
                        None => Ok(id),
                    });
                match checked {
                    Err(r) => Err(r),
                    Ok(id) => {
                        // a store write: off the API workers, as every write
                        let (staged, op) = (self.staged.clone(), op.to_string());
                        blocking(move || staged.operate(id, &op))
                            .await
                            .and_then(|r| r.map_err(staged_error))
                            .map(|p| ApiReply::json(200, p))
                    }
                }
            }
            ("GET", ["v1", "invalidations"]) => need(Scope::Read).and_then(|()| {
                let after = match query_param(&req.query, "after") {
                    None => 0,
                    Some(v) => v.parse().map_err(|_| ApiReply::error(400, "after must be a number"))?,
                };
                Ok(ApiReply::json(200, json!({"invalidations": self.plane.invalidations_after(after)})))
            }),
            ("GET", ["v1", "snapshot"]) => match need(Scope::Read) {
                Err(r) => Err(r),
                Ok(()) => self.snapshot(req).await,
            },
            ("POST", ["v1", "nodes", id, "applied"]) => need(Scope::Read).and_then(|()| {
                if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                    return Err(ApiReply::error(400, "node id: letters, digits, '-', '_', '.'"));
                }
                let mut report: AppliedReport = serde_json::from_slice(&req.body)
                    .map_err(|e| ApiReply::error(400, format!("invalid report: {e}")))?;
                let peer = req.client.as_deref().and_then(|c| c.parse::<std::net::SocketAddr>().ok());
                report.admin = report.reachable_admin(peer.map(|p| p.ip()));
                let poll_interval = report_wait(&req.query)?;
                self.plane.report_polling(id, report, poll_interval);
                Ok(ApiReply::json(200, json!({"ok": true})))
            }),
            ("GET", ["v1", "nodes"]) => need(Scope::Read).map(|()| {
                let (head, nodes) = self.plane.nodes();
                let now = unix_ms(SystemTime::now());
                let list: Vec<Value> = nodes
                    .iter()
                    .map(|(id, n)| {
                        let reported_ms = unix_ms(n.reported);
                        json!({
                            "node": id,
                            "policy_version": n.applied.policy_version,
                            "seq": n.applied.seq,
                            "applied_at_ms": n.applied.applied_at_ms,
                            "reported_ms": reported_ms,
                            "report_age_ms": now.saturating_sub(reported_ms),
                            "state": judge(Duration::from_millis(now.saturating_sub(reported_ms)), self.plane.expected_interval(n)).as_str(),
                            "poll_interval_ms": u64::try_from(self.plane.expected_interval(n).as_millis()).unwrap_or(u64::MAX),
                            "policy_lag": head.policy_version.saturating_sub(n.applied.policy_version),
                            "seq_lag": head.seq.saturating_sub(n.applied.seq),
                            "current": n.applied.policy_version == head.policy_version && n.applied.seq == head.seq,
                            "rejected": n.applied.rejected,
                            "staged": self.staged.for_node(id, n.applied.seq),
                            "admin": n.applied.admin,
                        })
                    })
                    .collect();
                ApiReply::json(200, json!({"head": {"policy_version": head.policy_version, "seq": head.seq}, "nodes": list}))
            }),
            (_, ["v1", ..]) | (_, ["healthz"]) | (_, ["metrics"]) => {
                Err(ApiReply::error(405, format!("{method} is not allowed on {}", req.path)))
            }
            _ => Err(ApiReply::error(404, format!("no such endpoint {}", req.path))),
        };
        result.unwrap_or_else(|r| r)
    }

    /// Run a write on a blocking thread, off the API's async workers: it waits for the store
    /// (an fsync, or etcd for up to `store.etcd.timeout`), and a burst of writes while etcd has
    /// no quorum must not hold the workers that answer long-polls and reads.
    async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&ControlPlane) -> Result<T, PlaneError> + Send + 'static,
    ) -> Result<T, ApiReply> {
        let plane = self.plane.clone();
        blocking(move || write(&plane))
            .await
            .and_then(|r| r.map_err(plane_error))
    }

    async fn snapshot(&self, req: &ApiRequest) -> Result<ApiReply, ApiReply> {
        let after = match query_param(&req.query, "after") {
            None | Some("") => None,
            Some(v) => Some(v.parse::<Position>().map_err(|e| ApiReply::error(400, e))?),
        };
        let wait = match query_param(&req.query, "wait") {
            None | Some("") => Duration::ZERO,
            Some(v) => parse_duration(v).map_err(|e| ApiReply::error(400, e))?,
        };
        let epoch = query_param(&req.query, "epoch").filter(|e| !e.is_empty());
        // a node older than staged purges does not say it skips waves not naming it
        let applies_waves = query_param(&req.query, "features")
            .is_some_and(|f| f.split(',').any(|f| f == FEATURE_WAVES));
        match self.plane.wait_snapshot(after, epoch, wait).await {
            Some(msg) => {
                let msg = if applies_waves {
                    msg
                } else {
                    msg.without_named_waves()
                };
                let mut r = ApiReply::json(200, serde_json::to_value(&msg).unwrap_or(Value::Null));
                r.checksum = true;
                Ok(r)
            }
            None => {
                let mut r = ApiReply::json(204, Value::Null);
                r.body.clear();
                Ok(r)
            }
        }
    }
}

/// Run `work` (a store write: it may wait on etcd) on a blocking thread, not an API worker.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiReply> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiReply::error(500, format!("the write did not finish: {e}")))
}

/// The HTTP response for `reply`; a snapshot message is signed with `key` when there is one.
fn into_response(reply: ApiReply, key: Option<&SigningKey>) -> Response<Vec<u8>> {
    let len = reply.body.len();
    let sum = reply
        .checksum
        .then(|| super::wire::checksum(&reply.body))
        .and_then(|s| HeaderValue::from_str(&s).ok());
    let signature = key
        .filter(|_| reply.checksum)
        .map(|k| super::wire::signature(k, &reply.body))
        .and_then(|s| HeaderValue::from_str(&s).ok());
    let mut resp = Response::new(reply.body);
    *resp.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    if reply.status != 204 {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(reply.content_type),
        );
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(v) = reply.etag {
        if let Ok(v) = HeaderValue::from_str(&format!("\"{v}\"")) {
            h.insert(header::ETAG, v);
        }
    }
    if let Some(s) = reply.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if reply.www_authenticate {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(sum) = sum {
        h.insert(super::wire::CHECKSUM_FIELD, sum);
    }
    if let Some(sig) = signature {
        h.insert(super::wire::SIGNATURE_FIELD, sig);
    }
    resp
}

#[async_trait]
impl ServeHttp for ControlApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let head = session.req_header();
        let header_text = |name: header::HeaderName| {
            head.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let mut req = ApiRequest {
            method: head.method.as_str().to_string(),
            path: head.uri.path().to_string(),
            query: head.uri.query().unwrap_or("").to_string(),
            authorization: header_text(header::AUTHORIZATION),
            if_match: header_text(header::IF_MATCH),
            client: session.client_addr().map(|a| a.to_string()),
            body: Vec::new(),
        };
        let reply = match read_body(session, &mut req.body, self.plane.settings.max_body).await {
            Ok(()) => self.handle(&req).await,
            Err(refused) => {
                session.set_keepalive(None);
                refused
            }
        };
        self.audit(&req, &reply);
        into_response(reply, self.plane.settings.signing_key.as_ref())
    }
}

/// Read the request body into `body`, refusing one over `limit` bytes (413) or unreadable (400).
async fn read_body(
    session: &mut ServerSession,
    body: &mut Vec<u8>,
    limit: usize,
) -> Result<(), ApiReply> {
    let too_large = || ApiReply::error(413, format!("body larger than {limit} bytes"));
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(ApiReply::error(400, format!("cannot read body: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_bodies() {
        let one = purge_requests(br#"{"kind":"url","target":"a.com/x"}"#).unwrap();
        assert_eq!(one.len(), 1);
        assert!(!one[0].soft);
        let many = purge_requests(br#"{"kind":"tag","targets":["a","b"],"soft":true}"#).unwrap();
        assert_eq!(many.len(), 2);
        assert!(many[1].soft);
        let mixed = purge_requests(
            br#"{"invalidations":[{"kind":"host","target":"a.com"},{"kind":"prefix","target":"b.com/x"}]}"#,
        )
        .unwrap();
        assert_eq!(mixed[1].kind, InvalidationKind::Prefix);
        assert_eq!(
            purge_requests(br#"{"kind":"all"}"#).unwrap_err().status,
            400
        );
        assert_eq!(
            purge_requests(br#"{"kind":"all","confirm":"all"}"#)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            purge_requests(br#"{"kind":"url"}"#).unwrap_err().status,
            400
        );
        assert_eq!(
            purge_requests(br#"{"kind":"nope","target":"x"}"#)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn tokens_and_headers() {
        let tokens = vec![Token {
            name: "ops".into(),
            secret: "s3cret-s3cret-s3cret".into(),
            scopes: [Scope::Read].into_iter().collect(),
            hosts: Vec::new(),
        }];
        assert!(authenticate(&tokens, Some("Bearer s3cret-s3cret-s3cret")).is_ok());
        assert_eq!(
            authenticate(&tokens, Some("Bearer nope"))
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(authenticate(&tokens, None).unwrap_err().status, 401);
        assert_eq!(parse_if_match("\"7\""), Some(7));
        assert_eq!(parse_if_match("W/\"7\""), Some(7));
        assert_eq!(parse_if_match("x"), None);
        assert_eq!(query_param("after=1.2&wait=5s", "wait"), Some("5s"));
        assert_eq!(query_param("after", "after"), Some(""));
    }

    #[test]
    fn openapi_document_lists_every_endpoint() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/control/openapi.yaml");
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let paths = doc["paths"].as_mapping().unwrap();
        for p in [
            "/healthz",
            "/metrics",
            "/v1/policy",
            "/v1/policy/history",
            "/v1/policy/versions/{version}",
            "/v1/policy/rollback",
            "/v1/invalidations",
            "/v1/snapshot",
            "/v1/nodes/{id}/applied",
            "/v1/nodes",
            "/v1/staged-purges",
            "/v1/staged-purges/{id}",
            "/v1/staged-purges/{id}/{op}",
        ] {
            assert!(paths.contains_key(p), "{p} missing from openapi.yaml");
        }
    }
}
