//! Every Prometheus metric verge exports, declared in one place: a node's on one registry, the
//! control plane's on another.

mod class_budget;
mod disk;
mod route_counters;
mod staged_purge;

pub use class_budget::{ClassBudgetMetrics, CLASS_BUDGET_METRICS};
pub use disk::{DiskMetrics, DISK_METRICS};
use once_cell::sync::Lazy;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
pub use route_counters::RouteCounters;
pub use staged_purge::{StagedPurgeMetrics, STAGED_PURGE_METRICS};

/// All metrics. Names and labels are part of verge's interface: change them with care.
pub struct Metrics {
    /// What a node's admin `/metrics` renders: every series but the control plane's.
    pub node_registry: Registry,
    /// What `verge control`'s `/metrics` renders: `verge_control_*`, `verge_build_info` and the
    /// process's own series.
    pub control_registry: Registry,
    /// `verge_build_info{version,commit}`: always 1.
    pub build_info: IntGaugeVec,
    /// `verge_requests_total{route,status}`: responses sent to clients.
    pub requests: IntCounterVec,
    /// `verge_upstream_response_seconds{pool}`: from sending upstream to its response header.
    pub upstream_latency: HistogramVec,
    /// `verge_upstream_connect_failures_total{pool,backend}`.
    pub connect_failures: IntCounterVec,
    /// `verge_upstream_errors_total{pool,kind}`: origins that failed after the connect
    /// (`timeout`, `closed`, `reset`, `invalid_response`, `other`; see `proxy::upstream_error`).
    pub upstream_errors: IntCounterVec,
    /// `verge_upstream_retries_total{pool}`: retries on another backend after a connect failure.
    pub retries: IntCounterVec,
    /// `verge_backend_ejections_total{pool,backend}`: passive ejections.
    pub ejections: IntCounterVec,
    /// `verge_backend_healthy{pool,backend}`: 1 healthy, 0 not (active checks).
    pub backend_healthy: IntGaugeVec,
    /// `verge_no_healthy_backend_total{pool}`: requests answered 502 because nothing was usable.
    pub no_backend: IntCounterVec,
    /// `verge_tier_requests_total{outcome}`: misses this node sent to the key's owner in its
    /// tier ring: `answered` (the owner's response head came), `connect_failure` and `error`
    /// (the request went on to the origin); `loop`: a miss whose `CDN-Loop` already named verge
    /// twice, sent to the origin instead of an owner.
    pub tier_requests: IntCounterVec,
    /// `verge_tier_hops_received_total{result}`: requests carrying a hop marker: `verified`, or
    /// why it was ignored (`malformed`, `bad_mac`, `expired`, `not_member`, `no_ring`).
    pub tier_hops_received: IntCounterVec,
    /// `verge_tier_owner_behind_total`: verified hops from a member whose invalidation position
    /// is ahead of this node's: a stored copy older than that position was not served to it.
    pub tier_owner_behind: IntCounter,
    /// `verge_tier_origin_fetches_avoided_total`: hops this node, as a key's owner, answered from
    /// its cache (or from a fetch another request started): origin fetches the fleet did not
    /// make.
    pub tier_fetches_avoided: IntCounter,
    /// `verge_tier_member_info{self}`: 1 while this node is a member of a tier ring.
    pub tier_member: IntGaugeVec,
    /// `verge_downstream_connections{listener}`: open client connections.
    pub connections_open: IntGaugeVec,
    /// `verge_downstream_connections_total{listener}`: accepted client connections.
    pub connections_total: IntCounterVec,
    /// `verge_requests_rejected_total{reason}`: requests refused before routing (limits, framing).
    pub rejected: IntCounterVec,
    /// `verge_config_info{version}`: 1 for the version being served.
    pub config_info: IntGaugeVec,
    /// `verge_config_loaded_timestamp_seconds`.
    pub config_loaded: IntGauge,
    /// `verge_config_reloads_total{outcome}`: config file reloads (SIGHUP, `verge reload`):
    /// `success`, `invalid` (the file does not validate), `needs_restart` (it changes what only
    /// a new process can: listeners, admin, server, cache, access log, control), `failed` (its
    /// pools could not be built).
    pub config_reloads: IntCounterVec,
    /// `verge_config_last_reload_success_timestamp_seconds`: Unix time of the last reload that
    /// was applied (0: none since start).
    pub config_last_reload_success: IntGauge,
    /// `verge_cache_lookups_total{route,result}`: hit, miss, stale, stale_error, expired,
    /// revalidated, bypass, uncacheable. Hit ratio = hit / all.
    pub cache_lookups: IntCounterVec,
    /// `verge_cache_fast_hits_total{route}`: the hits among `verge_cache_lookups_total{result=
    /// "hit"}` that the front door answered itself (`proxy::hit_lane`), without Pingora's phases.
    pub cache_fast_hits: IntCounterVec,
    /// `verge_fast_passes_total{route}`: requests on routes that do not cache that the front
    /// door proxied itself (`proxy::pass_lane`), without Pingora's phases.
    pub fast_passes: IntCounterVec,
    /// `verge_cache_bytes`: bytes held by the cache (headers + bodies + per-entry overhead).
    pub cache_bytes: IntGauge,
    /// `verge_cache_inflight_bytes`: body bytes held by responses still being fetched (readers
    /// stream them; not part of `verge_cache_bytes` until stored).
    pub cache_inflight_bytes: IntGauge,
    /// `verge_cache_objects`: entries held by the cache.
    pub cache_objects: IntGauge,
    /// `verge_cache_evictions_total`: entries evicted to stay within `cache.memory`.
    pub cache_evictions: IntCounter,
    /// `verge_cache_invalidated_total{verdict}`: stored entries refused by an invalidation
    /// (`hard`: refetched, `soft`: treated as stale).
    pub cache_invalidated: IntCounterVec,
    /// `verge_cache_reclaimed_total{cause}`: entries removed from memory in the background
    /// (`invalidation`: a hard invalidation made them unusable).
    pub cache_reclaimed: IntCounterVec,
    /// `verge_access_log_dropped_total`: access-log lines dropped because the writer was behind.
    pub access_log_dropped: prometheus::IntCounter,
    /// `verge_policy_version`: control-plane policy version this node serves (0: file config).
    pub policy_version: IntGauge,
    /// `verge_invalidation_seq`: last invalidation sequence this node applied.
    pub invalidation_seq: IntGauge,
    /// `verge_snapshot_age_seconds`: seconds since this node last heard from the control plane
    /// that its snapshot is current (refreshed on scrape); `+Inf` on a node with a `control:`
    /// block that has not heard from it yet, 0 on a node without one.
    pub snapshot_age: Gauge,
    /// `verge_snapshot_applied_total{kind}`: snapshots swapped in (`full`, `delta`, `disk`).
    pub snapshot_applied: IntCounterVec,
    /// `verge_snapshot_rejected_total{reason}`: snapshots or polls refused (`unreachable`,
    /// `http_status`, `too_large`, `checksum`, `signature`, `decode`, `older`, `invalid_policy`,
    /// `invalid_invalidation`, `build`; `state_file` at start).
    pub snapshot_rejected: IntCounterVec,
    /// `verge_snapshot_failovers_total`: times a node with several `control.urls` moved on to
    /// the next replica after a failed or refused poll.
    pub snapshot_failovers: IntCounter,
    /// `verge_control_policy_version` (control plane): head policy version.
    pub control_policy_version: IntGauge,
    /// `verge_control_invalidation_seq` (control plane): head invalidation sequence.
    pub control_invalidation_seq: IntGauge,
    /// `verge_control_writes_total{kind,outcome}` (control plane): policy and purge writes.
    pub control_writes: IntCounterVec,
    /// `verge_control_leader` (control plane on etcd): 1 while this replica is the elected
    /// one doing retention.
    pub control_leader: IntGauge,
    /// `verge_control_store_resyncs_total{reason}` (control plane on etcd): full reads of the
    /// store after its history was compacted past the watch, or after it was wiped or restored.
    pub control_store_resyncs: IntCounterVec,
    /// `verge_control_node_seq_lag{node}` (control plane): invalidations a node has not applied.
    pub control_node_seq_lag: IntGaugeVec,
    /// `verge_control_node_policy_lag{node}` (control plane): policy versions a node is behind.
    pub control_node_policy_lag: IntGaugeVec,
    /// `verge_control_node_rejecting{node}` (control plane): 1 while a node's last report
    /// carries a snapshot it refused (a NACK).
    pub control_node_rejecting: IntGaugeVec,
    /// `verge_control_node_report_age_seconds{node}` (control plane): since the node's last report.
    pub control_node_report_age: IntGaugeVec,
    /// `verge_cache_admission_rejections_total`: new objects not kept, because the
    /// admission filter had seen them less often than what they would replace, or because they
    /// were larger than a shard of `cache.memory`.
    pub cache_rejections: IntCounter,
    /// `verge_cache_capacity_bytes`: the cache's byte budget (`cache.memory`).
    pub cache_capacity: IntGauge,
    /// `verge_response_body_bytes_total{route,source}`: body bytes sent to clients, by where
    /// they came from: `cache` (hits, stale, revalidated), `origin`, or `local` (verge's own
    /// answers). Byte offload = cache / (cache + origin).
    pub response_bytes: IntCounterVec,
    /// `verge_request_duration_seconds{route}`: from the request head to the end of logging.
    pub request_duration: HistogramVec,
    /// `verge_cache_lock_waits_total{route,outcome}`: requests that waited on another
    /// request's fetch of the same key: `collapsed` (served from it: an origin fetch avoided),
    /// `timeout` (gave up after `cache.lock_wait`), `fetched` (went to the origin after all).
    pub cache_lock_waits: IntCounterVec,
    /// `verge_cache_early_refreshes_total{route}`: background refreshes started by a fresh hit
    /// (`routes[].cache.early_refresh`, XFetch).
    pub cache_early_refreshes: IntCounterVec,
    /// `verge_filter_errors_total{filter,phase}`: user filters that failed (answered 500/502);
    /// `phase` is `request`, `upstream_request` or `response`.
    pub filter_errors: IntCounterVec,
    /// `verge_filter_responses_total{filter,status}`: requests a user filter answered itself
    /// in `on_request` (no cache lookup, no origin request).
    pub filter_responses: IntCounterVec,
    /// `verge_rate_limited_total{route}`: requests answered 429 by a route's `rate_limit`.
    pub rate_limited: IntCounterVec,
    /// `verge_cache_served_total{class,state}`: answers from the cache by content class
    /// (`none`: a route without one) and state: `fresh`, `stale-while-revalidate`,
    /// `stale-if-error`, `revalidated` (see `cache::freshness`).
    pub cache_served: IntCounterVec,
    /// `verge_cache_served_stale_seconds{class,state}`: how long past expiry the stale answers
    /// (`stale-while-revalidate`, `stale-if-error`) were.
    pub cache_served_stale: HistogramVec,
    /// `verge_cache_served_age_ratio{class}`: an answer's age ÷ its freshness lifetime (above 1:
    /// served stale).
    pub cache_served_age_ratio: HistogramVec,
    /// `verge_cache_served_after_invalidation_total{class}`: answers from entries that an
    /// invalidation applied before the request arrived should have refused. Must stay 0.
    pub cache_served_after_invalidation: IntCounterVec,
    /// `verge_invalidation_apply_lag_seconds`: from the control plane accepting an invalidation
    /// to this node applying it.
    pub invalidation_apply_lag: Histogram,
    /// `verge_compressed_responses_total{route,coding}`: origin responses verge compressed
    /// before storing them (`routes[].compression`; `coding` is `br` or `gzip`).
    pub compressed_responses: IntCounterVec,
    /// `verge_compression_input_bytes_total{route,coding}`: body bytes of those responses as the
    /// origin sent them (counted when a body ends).
    pub compression_input_bytes: IntCounterVec,
    /// `verge_compression_output_bytes_total{route,coding}`: the same bodies compressed. Saved
    /// = input - output.
    pub compression_output_bytes: IntCounterVec,
    /// `verge_decompressed_responses_total{route,coding}`: responses decoded on the way to a
    /// client whose `Accept-Encoding` does not take the stored coding.
    pub decompressed_responses: IntCounterVec,
}

/// Registers a metric built from the constant names and labels in this file. Building fails
/// only for an invalid name or label: a programming error that the unit test below catches and
/// no input can cause, so it panics at start-up.
#[allow(clippy::panic)]
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    built: prometheus::Result<C>,
) -> C {
    let c = built.unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(
        registry,
        name,
        IntCounterVec::new(Opts::new(name, help), labels),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(
        registry,
        name,
        IntGaugeVec::new(Opts::new(name, help), labels),
    )
}

fn plain_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, name, IntGauge::new(name, help))
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, name, IntCounter::new(name, help))
}

/// The version and the commit this binary was built from (`verge_build_info`, `/status`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this binary was built from (`unknown` outside a checkout).
pub const COMMIT: &str = env!("VERGE_COMMIT");

/// Raise a counter that mirrors a monotonic count kept elsewhere (the eviction manager's) to
/// `total`; it never goes down.
pub fn catch_up(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

impl Metrics {
    fn new() -> Metrics {
        // a node's series and the control plane's, each on its own registry: a node's
        // `/metrics` never shows `verge_control_*`, the control plane's shows nothing else
        let node = Registry::new();
        let control = Registry::new();
        let upstream_latency = registered(
            &node,
            "verge_upstream_response_seconds",
            HistogramVec::new(
                HistogramOpts::new(
                    "verge_upstream_response_seconds",
                    "Time from sending a request upstream to receiving its response header",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ]),
                &["pool"],
            ),
        );
        let request_duration = registered(
            &node,
            "verge_request_duration_seconds",
            HistogramVec::new(
                HistogramOpts::new(
                    "verge_request_duration_seconds",
                    "Time from reading a request head to having sent the whole response",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
                &["route"],
            ),
        );
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            registered(
                &node,
                name,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                ),
            )
        };
        let stale_buckets = [
            0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
        ];
        let cache_served_stale = histogram(
            "verge_cache_served_stale_seconds",
            "How long past expiry stale answers from the cache were, by class and state",
            &["class", "state"],
            &stale_buckets,
        );
        let ratio_buckets = [0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.5, 2.0, 5.0, 10.0, 100.0];
        let cache_served_age_ratio = histogram(
            "verge_cache_served_age_ratio",
            "Age of answers from the cache divided by their freshness lifetime, by class",
            &["class"],
            &ratio_buckets,
        );
        let invalidation_apply_lag = registered(
            &node,
            "verge_invalidation_apply_lag_seconds",
            Histogram::with_opts(
                HistogramOpts::new(
                    "verge_invalidation_apply_lag_seconds",
                    "Time from the control plane accepting an invalidation to this node applying it",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
                ]),
            ),
        );
        let config_loaded = plain_gauge(
            &node,
            "verge_config_loaded_timestamp_seconds",
            "Unix time the serving config was loaded",
        );
        let build_info = gauge(
            &node,
            "verge_build_info",
            "Always 1: the version and the commit this binary was built from",
            &["version", "commit"],
        );
        build_info.with_label_values(&[VERSION, COMMIT]).set(1);
        // both processes say what they are and export the process's CPU, memory, file
        // descriptors and start time (`process_*`)
        let _ = control.register(Box::new(build_info.clone()));
        for registry in [&node, &control] {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = registry.register(Box::new(process)) {
                log::warn!("process metrics unavailable: {e}");
            }
        }
        Metrics {
            build_info,
            config_reloads: counter(
                &node,
                "verge_config_reloads_total",
                "Config file reloads, by outcome",
                &["outcome"],
            ),
            config_last_reload_success: plain_gauge(
                &node,
                "verge_config_last_reload_success_timestamp_seconds",
                "Unix time of the last config reload that was applied (0: none)",
            ),
            requests: counter(
                &node,
                "verge_requests_total",
                "Responses sent to clients, by route and status",
                &["route", "status"],
            ),
            upstream_latency,
            connect_failures: counter(
                &node,
                "verge_upstream_connect_failures_total",
                "Failed connects to a backend",
                &["pool", "backend"],
            ),
            upstream_errors: counter(
                &node,
                "verge_upstream_errors_total",
                "Origin failures after the connect: timeouts, closes, resets, invalid responses",
                &["pool", "kind"],
            ),
            retries: counter(
                &node,
                "verge_upstream_retries_total",
                "Retries on another backend after a connect failure",
                &["pool"],
            ),
            ejections: counter(
                &node,
                "verge_backend_ejections_total",
                "Backends ejected after consecutive connect failures",
                &["pool", "backend"],
            ),
            backend_healthy: gauge(
                &node,
                "verge_backend_healthy",
                "1 when the active health check passes for the backend",
                &["pool", "backend"],
            ),
            no_backend: counter(
                &node,
                "verge_no_healthy_backend_total",
                "Requests answered 502 because no backend of the pool was usable",
                &["pool"],
            ),
            tier_requests: counter(
                &node,
                "verge_tier_requests_total",
                "Misses sent to the key's owner in the tier ring, by outcome",
                &["outcome"],
            ),
            tier_hops_received: counter(
                &node,
                "verge_tier_hops_received_total",
                "Requests carrying a tier hop marker, by whether it verified",
                &["result"],
            ),
            tier_owner_behind: plain_counter(
                &node,
                "verge_tier_owner_behind_total",
                "Hops from a member ahead of this node's invalidation position (older copies not served)",
            ),
            tier_fetches_avoided: plain_counter(
                &node,
                "verge_tier_origin_fetches_avoided_total",
                "Hops this node answered as owner from its cache: origin fetches avoided",
            ),
            tier_member: gauge(
                &node,
                "verge_tier_member_info",
                "1 while this node is a member of a tier ring",
                &["self"],
            ),
            connections_open: gauge(
                &node,
                "verge_downstream_connections",
                "Open client connections",
                &["listener"],
            ),
            connections_total: counter(
                &node,
                "verge_downstream_connections_total",
                "Accepted client connections",
                &["listener"],
            ),
            rejected: counter(
                &node,
                "verge_requests_rejected_total",
                "Requests refused before routing, by reason",
                &["reason"],
            ),
            config_info: gauge(
                &node,
                "verge_config_info",
                "1 for the config version being served",
                &["version"],
            ),
            config_loaded,
            cache_lookups: counter(
                &node,
                "verge_cache_lookups_total",
                "Cache lookups by route and result",
                &["route", "result"],
            ),
            cache_fast_hits: counter(
                &node,
                "verge_cache_fast_hits_total",
                "Cache hits answered by the front door's hit lane, by route",
                &["route"],
            ),
            fast_passes: counter(
                &node,
                "verge_fast_passes_total",
                "Requests proxied by the front door's pass lane, by route",
                &["route"],
            ),
            cache_bytes: plain_gauge(&node, "verge_cache_bytes", "Bytes held by the cache"),
            cache_inflight_bytes: plain_gauge(
                &node,
                "verge_cache_inflight_bytes",
                "Body bytes held by responses still being fetched",
            ),
            cache_objects: plain_gauge(&node, "verge_cache_objects", "Entries held by the cache"),
            cache_evictions: plain_counter(
                &node,
                "verge_cache_evictions_total",
                "Entries evicted to stay within the memory budget",
            ),
            cache_invalidated: counter(
                &node,
                "verge_cache_invalidated_total",
                "Stored entries refused by an invalidation, by verdict",
                &["verdict"],
            ),
            access_log_dropped: registered(
                &node,
                "verge_access_log_dropped_total",
                prometheus::IntCounter::new(
                    "verge_access_log_dropped_total",
                    "Access-log lines dropped because the writer was behind",
                ),
            ),
            cache_reclaimed: counter(
                &node,
                "verge_cache_reclaimed_total",
                "Entries removed from memory in the background, by cause",
                &["cause"],
            ),
            policy_version: plain_gauge(
                &node,
                "verge_policy_version",
                "Control-plane policy version served (0: file config only)",
            ),
            invalidation_seq: plain_gauge(
                &node,
                "verge_invalidation_seq",
                "Last invalidation sequence applied",
            ),
            snapshot_age: registered(
                &node,
                "verge_snapshot_age_seconds",
                Gauge::new(
                    "verge_snapshot_age_seconds",
                    "Seconds since the control plane last confirmed this node's snapshot \
                     (+Inf: never, on a node with a control block)",
                ),
            ),
            snapshot_applied: counter(
                &node,
                "verge_snapshot_applied_total",
                "Snapshots swapped in, by kind",
                &["kind"],
            ),
            snapshot_rejected: counter(
                &node,
                "verge_snapshot_rejected_total",
                "Snapshots or polls refused, by reason",
                &["reason"],
            ),
            snapshot_failovers: plain_counter(
                &node,
                "verge_snapshot_failovers_total",
                "Times this node moved on to the next control-plane replica",
            ),
            control_policy_version: plain_gauge(
                &control,
                "verge_control_policy_version",
                "Head policy version of the control plane",
            ),
            control_invalidation_seq: plain_gauge(
                &control,
                "verge_control_invalidation_seq",
                "Head invalidation sequence of the control plane",
            ),
            control_writes: counter(
                &control,
                "verge_control_writes_total",
                "Control-plane writes by kind and outcome",
                &["kind", "outcome"],
            ),
            control_leader: plain_gauge(
                &control,
                "verge_control_leader",
                "1 while this control-plane replica is the elected one doing retention (etcd store)",
            ),
            control_store_resyncs: counter(
                &control,
                "verge_control_store_resyncs_total",
                "Full reads of the control plane's shared store, by reason",
                &["reason"],
            ),
            control_node_seq_lag: gauge(
                &control,
                "verge_control_node_seq_lag",
                "Invalidations a node has not applied yet",
                &["node"],
            ),
            control_node_policy_lag: gauge(
                &control,
                "verge_control_node_policy_lag",
                "Policy versions a node is behind",
                &["node"],
            ),
            control_node_rejecting: gauge(
                &control,
                "verge_control_node_rejecting",
                "1 while a node reports a snapshot it refused",
                &["node"],
            ),
            control_node_report_age: gauge(
                &control,
                "verge_control_node_report_age_seconds",
                "Seconds since a node last reported what it applied",
                &["node"],
            ),
            cache_rejections: plain_counter(
                &node,
                "verge_cache_admission_rejections_total",
                "New objects the admission filter did not keep",
            ),
            cache_capacity: plain_gauge(
                &node,
                "verge_cache_capacity_bytes",
                "The cache's byte budget (cache.memory)",
            ),
            response_bytes: counter(
                &node,
                "verge_response_body_bytes_total",
                "Response body bytes sent to clients, by route and source (cache, origin, local)",
                &["route", "source"],
            ),
            request_duration,
            cache_lock_waits: counter(
                &node,
                "verge_cache_lock_waits_total",
                "Requests that waited on another request's fetch of the same key, by outcome",
                &["route", "outcome"],
            ),
            cache_early_refreshes: counter(
                &node,
                "verge_cache_early_refreshes_total",
                "Background refreshes started by a fresh hit (XFetch), by route",
                &["route"],
            ),
            filter_errors: counter(
                &node,
                "verge_filter_errors_total",
                "User filters that failed, by filter and phase",
                &["filter", "phase"],
            ),
            filter_responses: counter(
                &node,
                "verge_filter_responses_total",
                "Requests a user filter answered itself, by filter and status",
                &["filter", "status"],
            ),
            rate_limited: counter(
                &node,
                "verge_rate_limited_total",
                "Requests answered 429 by a route's rate limit, by route",
                &["route"],
            ),
            cache_served: counter(
                &node,
                "verge_cache_served_total",
                "Answers from the cache, by content class and freshness state",
                &["class", "state"],
            ),
            cache_served_stale,
            cache_served_age_ratio,
            cache_served_after_invalidation: counter(
                &node,
                "verge_cache_served_after_invalidation_total",
                "Answers from entries an invalidation applied before the request should have \
                 refused (must stay 0)",
                &["class"],
            ),
            invalidation_apply_lag,
            compressed_responses: counter(
                &node,
                "verge_compressed_responses_total",
                "Origin responses compressed before they were stored, by route and coding",
                &["route", "coding"],
            ),
            compression_input_bytes: counter(
                &node,
                "verge_compression_input_bytes_total",
                "Body bytes of compressed responses before compression, by route and coding",
                &["route", "coding"],
            ),
            compression_output_bytes: counter(
                &node,
                "verge_compression_output_bytes_total",
                "Body bytes of compressed responses after compression, by route and coding",
                &["route", "coding"],
            ),
            decompressed_responses: counter(
                &node,
                "verge_decompressed_responses_total",
                "Responses decoded for clients that do not accept their coding, by route and coding",
                &["route", "coding"],
            ),
            node_registry: node,
            control_registry: control,
        }
    }

    /// A node's metrics in the Prometheus text format (the admin listener's `/metrics`).
    pub fn render_node(&self) -> Vec<u8> {
        render(&self.node_registry)
    }

    /// The control plane's metrics in the Prometheus text format (`verge control`'s `/metrics`).
    pub fn render_control(&self) -> Vec<u8> {
        render(&self.control_registry)
    }
}

fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut out) {
        log::error!("metrics encoding failed: {e}");
    }
    out
}

/// The process-wide metrics.
pub static METRICS: Lazy<Metrics> = Lazy::new(Metrics::new);

/// How one finished request counts in the per-route request metrics, whichever path answered it
/// (Pingora's phases, or the front door's hit lane).
#[derive(Debug, Clone, Copy)]
pub struct RequestOutcome<'a> {
    /// The route's name (`""` when none matched).
    pub route: &'a str,
    /// The route's kept series (`None`: counted by label).
    pub counters: Option<&'a RouteCounters>,
    /// The status sent (0: none).
    pub status: u16,
    /// The `verge_cache_lookups_total` result, on routes that cache and that a filter did not
    /// answer.
    pub lookup: Option<&'static str>,
    /// The `verge_response_body_bytes_total` source.
    pub source: &'static str,
    /// Body bytes sent to the client.
    pub body_bytes: u64,
    /// Since the request head arrived.
    pub elapsed: Option<std::time::Duration>,
}

impl Metrics {
    /// Count one finished request.
    pub fn record_request(&self, o: &RequestOutcome<'_>) {
        if let Some(c) = o.counters {
            return c.record(self, o);
        }
        let mut buf = itoa::Buffer::new();
        self.requests
            .with_label_values(&[o.route, buf.format(o.status)])
            .inc();
        if let Some(result) = o.lookup {
            self.cache_lookups
                .with_label_values(&[o.route, result])
                .inc();
        }
        self.response_bytes
            .with_label_values(&[o.route, o.source])
            .inc_by(o.body_bytes);
        if let Some(elapsed) = o.elapsed {
            self.request_duration
                .with_label_values(&[o.route])
                .observe(elapsed.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_metrics_register_and_render() {
        METRICS.requests.with_label_values(&["r", "200"]).inc();
        let text = String::from_utf8(METRICS.render_node()).expect("utf8");
        assert!(text.contains("verge_requests_total{route=\"r\",status=\"200\"} 1"));
        let families = METRICS.node_registry.gather();
        assert!(families.iter().any(|f| f.name() == "verge_requests_total"));
        // (the disk tier's unit tests, running beside this one, count hits on the same counter)
        DISK_METRICS.hits.inc();
        let text = String::from_utf8(METRICS.render_node()).expect("utf8");
        let hits = text
            .lines()
            .find_map(|l| l.strip_prefix("verge_cache_disk_hits_total "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(hits.is_some_and(|n| n >= 1), "{text}");
    }

    /// Every series on the registry, vectors included once they have a child.
    fn names(registry: &Registry) -> Vec<String> {
        registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect()
    }

    #[test]
    fn control_plane_series_appear_only_on_the_control_registry() {
        METRICS
            .control_writes
            .with_label_values(&["policy", "ok"])
            .inc();
        METRICS
            .control_node_seq_lag
            .with_label_values(&["n"])
            .set(0);
        METRICS.requests.with_label_values(&["r", "200"]).inc();
        let node = names(&METRICS.node_registry);
        let control = names(&METRICS.control_registry);
        let shared = |n: &str| n == "verge_build_info" || n.starts_with("process_");
        assert!(node.iter().any(|n| n == "verge_requests_total"), "{node:?}");
        assert!(
            control.iter().any(|n| n == "verge_control_writes_total"),
            "{control:?}"
        );
        for n in &node {
            assert!(!n.starts_with("verge_control_"), "{n} on a node");
        }
        for n in &control {
            assert!(
                n.starts_with("verge_control_") || shared(n),
                "{n} on the control plane"
            );
        }
        for n in ["verge_build_info", "process_start_time_seconds"] {
            assert!(
                node.iter().any(|x| x == n) && control.iter().any(|x| x == n),
                "{n}"
            );
        }
    }
}
