//! Assembles a Pingora `Server` from a validated config: listeners, admin, health checks.

use crate::access_log::LogSink;
use crate::admin::AdminApp;
use crate::cache::CacheEngine;
use crate::config::{Config, H2Limits, ListenerSpec};
use crate::control::api::ControlApi;
use crate::control::etcd_store::EtcdStore;
use crate::control::plane::ControlPlane;
use crate::control::settings::ControlSettings;
use crate::control::store::{FileStore, Store};
use crate::control::store_settings::StoreSettings;
use crate::ingress::{Ingress, TlsHandshake};
use crate::metrics::METRICS;
use crate::node::disk_flush::DiskFlush;
use crate::node::health_checks::HealthService;
use crate::node::listeners::{check_bindable, BindError, ListenAddr, ListenerWatch};
use crate::node::poller::{publish_position, ControlPoller};
use crate::node::readiness::Readiness;
use crate::node::reclaim::ReclaimService;
use crate::node::reload::{FileReloader, ReloadService};
use crate::node::state_file::StateJournal;
use crate::node::tls_certificates::{CertificateReload, ListenerCertificates};
use crate::node::writer::SnapshotWriter;
use crate::proxy::filter::Filters;
use crate::proxy::hit_lane::HitLane;
use crate::proxy::lane_route::LaneRoutes;
use crate::proxy::pass_lane::PassLane;
use crate::proxy::{EdgeProxy, ListenerInfo};
use crate::snapshot::{ControlState, SharedSnapshot, Snapshot};
use arc_swap::ArcSwap;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::apps::HttpServerOptions;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig, Listeners};
use pingora_core::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why verge could not be assembled (validation passed, but a runtime resource failed).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A pool's backends or health checks could not be set up.
    #[error(transparent)]
    Pool(#[from] crate::upstream::pool::PoolBuildError),
    /// The access log could not be opened.
    #[error("access log {0}")]
    AccessLog(String),
    /// A listener's certificate or key could not be loaded.
    #[error("listener {listener}: TLS setup failed: {reason}")]
    Tls {
        /// The listener's name.
        listener: String,
        /// What failed.
        reason: String,
    },
    /// Routes select filters this binary does not register.
    #[error("{0}")]
    Filters(crate::config::ConfigErrors),
    /// A listener's certificate or key does not load, does not match, or is not valid now.
    #[error("{0}")]
    Certificates(crate::config::ConfigErrors),
    /// The disk tier's directory cannot be created or read.
    #[error("cache.disk: {0}")]
    DiskCache(std::io::Error),
    /// A listening address cannot be bound (in use, or not permitted).
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// How the process was started (Pingora's own flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Take over listening sockets from a running verge (graceful upgrade).
    pub upgrade: bool,
    /// Detach into the background.
    pub daemon: bool,
}

/// The snapshot a node starts from: with a `control:` block, the one its state file comes to
/// when that file verifies (so a restart with the control plane down serves what it had,
/// invalidations included); otherwise the file config. A control-fed node without a good
/// state file starts `awaiting` its control plane.
fn starting_snapshot(
    config: &Config,
    filters: &Filters,
    readiness: &Readiness,
) -> Result<Snapshot, ServeError> {
    let Some(spec) = &config.control else {
        return Ok(Snapshot::build(config, None)?);
    };
    let restored = StateJournal::load(&spec.state_file, &spec.verify_keys)
        .map_err(|e| e.to_string())
        .and_then(|journal| journal.replay(config, &filters.names()));
    match restored {
        Ok(s) => {
            log::info!(
                "restored snapshot {} from {}",
                s.control.position,
                spec.state_file.display()
            );
            METRICS.snapshot_applied.with_label_values(&["disk"]).inc();
            publish_position(s.control.position);
            readiness.mark_received();
            return Ok(s);
        }
        Err(e) if !spec.state_file.exists() => log::info!("{e}: waiting for the control plane"),
        Err(e) => {
            METRICS
                .snapshot_rejected
                .with_label_values(&["state_file"])
                .inc();
            log::error!("state file refused, waiting for the control plane: {e}");
        }
    }
    let awaiting = ControlState {
        awaiting: true,
        ..ControlState::default()
    };
    Ok(Snapshot::build_with(config, None, awaiting)?)
}

/// Build the shared snapshot for a config and publish config metrics.
pub fn initial_snapshot(config: &Config) -> Result<SharedSnapshot, ServeError> {
    shared_snapshot(
        config,
        &Filters::default(),
        &Readiness::new(config.control.is_some()),
    )
}

fn shared_snapshot(
    config: &Config,
    filters: &Filters,
    readiness: &Readiness,
) -> Result<SharedSnapshot, ServeError> {
    let mut snapshot = starting_snapshot(config, filters, readiness)?;
    // the access log is opened once here; a reload opens its destination anew
    if let Some(spec) = &config.access_log {
        let sink = LogSink::open(&spec.target)
            .map_err(|e| ServeError::AccessLog(format!("{}: {e}", spec.target)))?;
        snapshot.access_log = Some(sink);
    }
    METRICS
        .config_info
        .with_label_values(&[&config.version])
        .set(1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    METRICS.config_loaded.set(now);
    Ok(Arc::new(ArcSwap::from_pointee(snapshot)))
}

fn server_conf(config: &Config, opts: RunOptions) -> ServerConf {
    let s = &config.server;
    let mut conf = ServerConf {
        threads: s.threads,
        daemon: opts.daemon,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        error_log: s.error_log.clone(),
        ca_file: s.ca_file.clone(),
        ..ServerConf::default()
    };
    conf.grace_period_seconds = Some(s.grace_period.as_secs_f64().ceil() as u64);
    conf.graceful_shutdown_timeout_seconds =
        Some(s.graceful_shutdown_timeout.as_secs_f64().ceil() as u64);
    conf
}

/// The HTTP/2 settings a listener advertises and enforces, from its `limits.h2`.
fn h2_options(limits: &H2Limits) -> H2Options {
    let mut options = default_h2_options();
    options
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .initial_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_pending_accept_reset_streams(limits.max_pending_resets)
        .max_local_error_reset_streams(Some(limits.max_error_resets));
    options
}

fn listener_service(
    conf: &Arc<ServerConf>,
    spec: &ListenerSpec,
    snapshot: &SharedSnapshot,
    cache: &'static CacheEngine,
    filters: &Filters,
    certificates: &mut Vec<Arc<ListenerCertificates>>,
) -> Result<Service<Ingress>, ServeError> {
    let info = ListenerInfo {
        name: spec.name.clone(),
        tls: spec.tls.is_some(),
        max_body: spec.limits.max_body,
        send_timeout: spec.limits.send_timeout,
        body_timeout: spec.limits.body_timeout,
        body_min_rate: spec.limits.body_min_rate,
    };
    let edge = EdgeProxy::new(snapshot.clone(), info, cache)
        .with_forwarding_trust(spec.trusted_forwarding.clone())
        .with_filters(filters.clone());
    let mut proxy = pingora_proxy::http_proxy(conf, edge);
    let mut options = HttpServerOptions::default();
    options.h2c = spec.h2c;
    options.keepalive_request_limit = Some(spec.limits.keepalive_requests);
    options.h2_idle_timeout = Some(spec.limits.keepalive_timeout);
    proxy.server_options = Some(options);
    proxy.h2_options = Some(h2_options(&spec.limits.h2));
    let mut ingress = Ingress::new(proxy, spec.limits, spec.name.clone(), spec.h2c)
        .with_proxy_protocol(spec.proxy_protocol.clone());
    if cache.settings.hit_lane || cache.settings.pass_lane {
        let tls = spec.tls.is_some();
        ingress = ingress.with_lane_routes(LaneRoutes::new(snapshot.clone(), &spec.name, tls));
    }
    if cache.settings.hit_lane {
        ingress = ingress.with_hit_lane(
            HitLane::new(cache, filters.clone(), spec.tls.is_some()).with_listener_name(&spec.name),
        );
    }
    if cache.settings.pass_lane {
        let options = ConnectorOptions::from_server_conf(conf);
        ingress = ingress.with_pass_lane(
            PassLane::new(
                snapshot.clone(),
                filters.clone(),
                options,
                conf.max_retries,
                spec.trusted_forwarding.clone(),
                spec.tls.is_some(),
            )
            .with_listener_name(&spec.name),
        );
    }
    let endpoint = ListenerConfig::tcp(spec.addr.to_string()).l4_buffer(L4BufferSettings {
        read: Some(CLIENT_READ_BUFFER),
        write: None,
    });
    if let Some(tls) = &spec.tls {
        // the certificate of each handshake comes from the listener's set (SNI, reloads); the
        // ingress runs the handshake, so the ALPN of a reload applies too
        let resolver =
            ListenerCertificates::load(&spec.name, tls).map_err(|reason| ServeError::Tls {
                listener: spec.name.clone(),
                reason,
            })?;
        certificates.push(resolver.clone());
        ingress = ingress.with_tls(TlsHandshake::new(resolver, spec.limits.header_timeout));
    }
    let mut listeners = Listeners::new();
    listeners.add_listener(endpoint);
    let service =
        Service::with_listeners(format!("verge listener {}", spec.name), listeners, ingress);
    Ok(service)
}

/// Read buffer of each client connection. Pingora's default is 64 KiB, allocated when the
/// connection is accepted, so idle connections cost ~73 KiB each; request heads are read by the
/// ingress into its own buffer, and 16 KiB is one TLS record, so bodies lose little.
const CLIENT_READ_BUFFER: usize = 16 << 10;

/// How long after start every listening socket must be held by the process, or it exits.
const LISTENER_DEADLINE: Duration = Duration::from_secs(10);

/// Every socket the node listens on: its listeners, then the admin listener.
fn listen_addrs(config: &Config) -> Vec<ListenAddr> {
    config
        .listeners
        .iter()
        .map(|l| ListenAddr {
            what: format!("listener {}", l.name),
            addr: l.addr,
        })
        .chain(std::iter::once(ListenAddr {
            what: "admin".into(),
            addr: config.admin.listen,
        }))
        .collect()
}

/// Build the whole server for `config`, with no user filters (the plain `verge` binary): a route
/// that selects filters is an error. Nothing listens until `run_forever`.
pub fn build_server(config: &Config, opts: RunOptions) -> Result<Server, ServeError> {
    build_server_with_filters(config, opts, &Filters::default())
}

/// Build the whole server for `config` with these user filters (see [`crate::Verge`]). Every
/// `routes[].filters` name must be registered. Nothing listens until `run_forever`.
pub fn build_server_with_filters(
    config: &Config,
    opts: RunOptions,
    filters: &Filters,
) -> Result<Server, ServeError> {
    config
        .check_filters(&filters.names())
        .map_err(ServeError::Filters)?;
    crate::config::certificates::check_certificates(config, SystemTime::now())
        .map_err(ServeError::Certificates)?;
    let sockets = listen_addrs(config);
    if !opts.upgrade {
        // With --upgrade the sockets come from the running process, which still holds them.
        check_bindable(&sockets)?;
    }
    crate::node::log_level::apply(config.server.log_level);
    // an HTTP/2 stream reset inside pingora-proxy for `send_timeout` counts as an HTTP/1
    // connection cut off for it does (src/ingress/body_guard.rs)
    pingora_proxy::on_h2_send_timeout(|| {
        crate::metrics::METRICS
            .rejected
            .with_label_values(&["send_timeout"])
            .inc();
    });
    let readiness = Arc::new(Readiness::new(config.control.is_some()));
    let snapshot = shared_snapshot(config, filters, &readiness)?;
    let writer = SnapshotWriter::new(
        snapshot.clone(),
        config.clone(),
        filters.names().into_iter().map(String::from).collect(),
    );
    let reloader = FileReloader::new(writer.clone());
    let pingora_opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(pingora_opt, server_conf(config, opts));
    server.bootstrap();
    let conf = server.configuration.clone();
    let cache = CacheEngine::new(config.cache.clone()).map_err(ServeError::DiskCache)?;
    let mut certificates = Vec::new();
    for spec in &config.listeners {
        server.add_service(listener_service(
            &conf,
            spec,
            &snapshot,
            cache,
            filters,
            &mut certificates,
        )?);
    }
    if !certificates.is_empty() {
        server.add_service(background_service(
            "verge certificate reload",
            CertificateReload::new(snapshot.clone(), certificates),
        ));
    }
    let mut admin = Service::new(
        "verge admin".to_string(),
        HttpServer::new_app(AdminApp::new(
            snapshot.clone(),
            cache,
            readiness.clone(),
            reloader.clone(),
        )),
    );
    admin.add_tcp(&config.admin.listen.to_string());
    server.add_service(admin);
    server.add_service(background_service(
        "verge cache reclaim",
        ReclaimService::new(snapshot.clone(), cache),
    ));
    if let Some(disk) = cache.disk {
        server.add_service(background_service(
            "verge disk cache flush",
            DiskFlush::new(disk, cache.storage),
        ));
    }
    if let Some(spec) = &config.control {
        server.add_service(background_service(
            "verge control poller",
            ControlPoller::new(spec.clone(), writer, readiness.clone()),
        ));
    }
    server.add_service(background_service(
        "verge config reload",
        ReloadService::new(reloader),
    ));
    server.add_service(background_service(
        "verge listener watch",
        ListenerWatch::new(sockets, readiness, LISTENER_DEADLINE),
    ));
    server.add_service(background_service(
        "verge health checks",
        HealthService::new(snapshot),
    ));
    Ok(server)
}

/// How `verge control` stops on SIGTERM: its API listener closes at once, requests already
/// being answered get `grace_period`, then the runtime gets `graceful_shutdown_timeout`.
/// (Pingora's own default grace period is 300 s.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlShutdown {
    /// How long requests in flight may keep running after SIGTERM.
    pub grace_period: Duration,
    /// How long the runtime may take to stop after that.
    pub graceful_shutdown_timeout: Duration,
}

impl Default for ControlShutdown {
    /// 5 s each, like a node's `server.grace_period` and `server.graceful_shutdown_timeout`.
    fn default() -> Self {
        ControlShutdown {
            grace_period: Duration::from_secs(5),
            graceful_shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// Build the `verge control` server: the API on its listener, backed by the file store.
pub fn build_control_server(
    settings: ControlSettings,
    shutdown: ControlShutdown,
) -> Result<Server, ControlStartError> {
    let store: Box<dyn Store> = match &settings.store {
        StoreSettings::File => Box::new(FileStore::open(&settings.data_dir)?),
        StoreSettings::Etcd(etcd) => Box::new(EtcdStore::connect(etcd)?),
    };
    let listen = settings.listen;
    let threads = settings.threads;
    check_bindable(&[ListenAddr {
        what: "control api".into(),
        addr: listen,
    }])?;
    let audit = match &settings.audit_log {
        Some(path) => Some(crate::control::audit::AuditLog::open(path).map_err(|e| {
            ControlStartError::Audit {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?),
        None => None,
    };
    let plane = ControlPlane::open(settings, store)?;
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(shutdown.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(
            shutdown.graceful_shutdown_timeout.as_secs_f64().ceil() as u64,
        ),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let app = ControlApi::new(plane, audit);
    let staged = crate::control::staged_purge::StagedPurgeDriver(app.staged_purges());
    let mut api = Service::new("verge control api".to_string(), HttpServer::new_app(app));
    api.add_tcp(&listen.to_string());
    server.add_service(api);
    server.add_service(background_service("verge staged purges", staged));
    Ok(server)
}

/// Why `verge control` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlStartError {
    /// The durable store could not be opened or read.
    #[error(transparent)]
    Store(#[from] crate::control::store::StoreError),
    /// The stored state could not be turned into a serving plane.
    #[error(transparent)]
    Plane(#[from] crate::control::plane::PlaneError),
    /// The API address cannot be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The audit log cannot be opened for appending.
    #[error("audit_log {}: {reason}", path.display())]
    Audit {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}
