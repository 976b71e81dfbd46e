//! The extension API: the examples run as processes (auth gate, canary, device key, embed), and
//! verge built in-process with test filters (errors in every phase, per-route selection and
//! order, route and pool overrides); unknown filter names refused at startup.

use crate::support::fetch::send;
use crate::support::process::{example_bin, verge_bin, wait_until_serving, TestConfig};
use crate::support::{
    eventually, Config as TestYaml, Launch, Metrics, Origin, Pool, Route, RouteCache, Verge,
};
use pingora_core::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use verge::{
    async_trait, Config, Decision, Filter, FilterCtx, FilterError, RequestHeader, ResponseHeader,
    StartError, VergeBuilder,
};

/// The value of the series `name` with exactly `labels` on `admin`'s `/metrics` (0 when
/// absent).
async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> u64 {
    Metrics::scrape(admin)
        .await
        .value(name, labels)
        .map_or(0, |v| v as u64)
}

/// GET with extra headers; returns status, headers and body.
async fn fetch(
    http: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let g = send(http, reqwest::Method::GET, Some(host), path, headers).await;
    (g.status, g.headers, g.body)
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// The examples, as processes

#[tokio::test]
async fn auth_gate_answers_401_before_cache_and_origin() {
    let origin = Origin::start("app").await;
    origin.set_headers("/doc", &[("cache-control", "max-age=60")]);
    let config = TestYaml::new()
        .access_log("{dir}/access.log")
        .pool(Pool::new("app", &[origin.addr]))
        .route(Route::to("app").name("public").path("/public").filters(&[]))
        .route(
            Route::to("app")
                .name("api")
                .path("/")
                .filters(&["auth"])
                .cache(RouteCache::new().default_ttl("60s").public()),
        );
    let launch =
        Launch::example("auth_gate").env("VERGE_API_KEYS", "alice:alice-key-1,bob:bob-key-22");
    let v = Verge::launch(launch, &config).await;

    let (status, h, text) = fetch(v.http, "a.test", "/doc", &[]).await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(header(&h, "www-authenticate"), "Bearer realm=\"verge\"");
    let (status, h, _) = fetch(v.http, "a.test", "/doc", &[("x-api-key", "wrong-key!")]).await;
    assert_eq!(status, 401);
    assert!(header(&h, "www-authenticate").contains("error=\"invalid_token\""));
    assert_eq!(origin.total(), 0, "refused requests never reach the origin");
    assert_eq!(
        metric(v.admin, "verge_cache_objects", &[]).await,
        0,
        "nothing cached"
    );

    // a valid key: fetched once, then served from cache; the origin never sees the key
    let (status, h, _) = fetch(v.http, "a.test", "/doc", &[("x-api-key", "alice-key-1")]).await;
    assert_eq!(status, 200);
    assert!(header(&h, "cache-status").contains("stored"), "{h:?}");
    let seen = origin.last_seen().expect("origin saw the request");
    assert_eq!(seen.header("x-api-client"), Some("alice"));
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("authorization"), None);
    let bearer = [("authorization", "Bearer bob-key-22")];
    let (status, h, _) = fetch(v.http, "a.test", "/doc", &bearer).await;
    assert_eq!(status, 200);
    assert!(header(&h, "cache-status").contains("hit"), "{h:?}");
    assert_eq!(origin.hits("/doc"), 1);

    // cached now, and still refused without a key: the gate runs before the cache lookup
    let (status, _, _) = fetch(v.http, "a.test", "/doc", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(origin.hits("/doc"), 1);

    // the open route selects no filter
    let (status, _, _) = fetch(v.http, "a.test", "/public/x", &[]).await;
    assert_eq!(status, 200);

    // verge's own background refresh of a stale copy (stale-while-revalidate) passes the gate
    origin.set_headers_stale(
        "/swr",
        &[("cache-control", "max-age=1, stale-while-revalidate=30")],
    );
    let key = [("x-api-key", "alice-key-1")];
    assert_eq!(fetch(v.http, "a.test", "/swr", &key).await.0, 200);
    let (status, h, _) = fetch(v.http, "a.test", "/swr", &key).await;
    assert_eq!(status, 200);
    assert!(header(&h, "cache-status").contains("fwd=stale"), "{h:?}");
    let refreshed = eventually(Duration::from_secs(5), || async {
        origin.hits("/swr") == 2
    })
    .await;
    assert!(refreshed, "the background refresh passed the gate");

    let responses = [("filter", "auth"), ("status", "401")];
    assert_eq!(
        metric(v.admin, "verge_filter_responses_total", &responses).await,
        3
    );
    let requests = [("route", "api"), ("status", "401")];
    assert_eq!(metric(v.admin, "verge_requests_total", &requests).await, 3);
    let lookups = [("result", "uncacheable"), ("route", "api")];
    assert_eq!(
        metric(v.admin, "verge_cache_lookups_total", &lookups).await,
        0,
        "a refusal is no lookup"
    );
    // refusals are in the access log like any other request
    let log = v.dir().join("access.log");
    let logged = eventually(Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|j| j["status"] == 401 && j["route"] == "api")
            .count()
            == 3
    })
    .await;
    assert!(logged, "three 401 lines in the access log");
}

#[tokio::test]
async fn canary_sends_a_stable_share_of_ids_to_the_canary_pool() {
    let stable = Origin::start("stable").await;
    let canary = Origin::start("canary").await;
    let config = TestYaml::new()
        .pool(Pool::new("stable", &[stable.addr]))
        .pool(Pool::new("canary", &[canary.addr]))
        .route(Route::to("stable").name("site").filters(&["canary"]));
    let v = Verge::launch(Launch::example("canary").arg("30"), &config).await;

    let (_, h, text) = fetch(v.http, "a.test", "/", &[]).await;
    assert!(text.contains("origin=stable"), "no cookie: stable ({text})");
    assert_eq!(header(&h, "x-canary-track"), "stable");
    let (_, h, text) = fetch(v.http, "a.test", "/", &[("x-canary", "always")]).await;
    assert!(text.contains("origin=canary"), "{text}");
    assert_eq!(header(&h, "x-canary-track"), "canary");

    let mut canary_ids = 0;
    for round in 0..2 {
        for i in 0..40 {
            let id = format!("user-{i}");
            let expect_canary = verge::percent_bucket(&id) < 30;
            let cookie = format!("theme=dark; uid={id}");
            let (status, h, text) = fetch(v.http, "a.test", "/", &[("cookie", &cookie)]).await;
            assert_eq!(status, 200);
            let want = if expect_canary { "canary" } else { "stable" };
            assert!(text.contains(&format!("origin={want}")), "{id}: {text}");
            assert_eq!(header(&h, "x-canary-track"), want, "{id}");
            if expect_canary && round == 0 {
                canary_ids += 1;
            }
        }
    }
    assert!(
        (4..=20).contains(&canary_ids),
        "30% of 40 ids: {canary_ids}"
    );
    // a canary id forced off the canary
    let canary_id = (0..40)
        .map(|i| format!("user-{i}"))
        .find(|id| verge::percent_bucket(id) < 30)
        .expect("some canary id");
    let cookie = format!("uid={canary_id}");
    let (_, _, text) = fetch(
        v.http,
        "a.test",
        "/",
        &[("cookie", &cookie), ("x-canary", "never")],
    )
    .await;
    assert!(text.contains("origin=stable"), "{text}");
    // per-pool origin counts: 1 forced + 2 rounds of the canary ids
    assert_eq!(canary.total(), 1 + 2 * canary_ids);
    assert_eq!(stable.total(), 1 + 2 * (40 - canary_ids) + 1);
}

#[tokio::test]
async fn device_key_caches_one_copy_per_device_class() {
    let origin = Origin::start("app").await;
    origin.set_headers("/page", &[("cache-control", "max-age=60")]);
    let config = TestYaml::new()
        .purge_allow(&["127.0.0.1"])
        .pool(Pool::new("app", &[origin.addr]))
        .route(Route::to("app").name("pages").cache(RouteCache::new()));
    let v = Verge::launch(Launch::example("device_key"), &config).await;
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148";
    let android = "Mozilla/5.0 (Linux; Android 14; Pixel 8) Chrome/120.0 Mobile Safari/537.36";
    let windows = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0 Safari/537.36";
    let mac = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) Safari/605.1.15";
    let ipad = "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) Safari/604.1";
    // (user agent, class, origin fetches after it, served from cache)
    let steps = [
        (iphone, "mobile", 1, false),
        (android, "mobile", 1, true),
        (windows, "desktop", 2, false),
        (mac, "desktop", 2, true),
        (ipad, "tablet", 3, false),
        (iphone, "mobile", 3, true),
        (windows, "desktop", 3, true),
    ];
    for (ua, class, fetches, hit) in steps {
        let (status, h, _) = fetch(v.http, "a.test", "/page", &[("user-agent", ua)]).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "x-device-class"), class, "{ua}");
        assert_eq!(origin.hits("/page"), fetches, "{ua}");
        assert_eq!(
            header(&h, "cache-status").contains("hit"),
            hit,
            "{ua}: {:?}",
            h.get("cache-status")
        );
        if !hit {
            let seen = origin.last_seen().expect("seen");
            assert_eq!(seen.header("x-device-class"), Some(class));
        }
    }
    // the class is in the key's variant: one purge of the URL removes every class's copy
    let purge = reqwest::Method::from_bytes(b"PURGE").expect("method");
    let r = send(v.http, purge, Some("a.test"), "/page", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("purged 3 entries"), "{}", r.body);
    let (_, h, _) = fetch(v.http, "a.test", "/page", &[("user-agent", android)]).await;
    assert!(!header(&h, "cache-status").contains("hit"));
    assert_eq!(origin.hits("/page"), 4);
}

#[tokio::test]
async fn embed_example_runs_its_filter() {
    let origin = Origin::start("app").await;
    let config = TestYaml::new()
        .pool(Pool::new("app", &[origin.addr]))
        .route(Route::to("app"));
    let v = Verge::launch(Launch::example("embed"), &config).await;
    let (status, h, text) = fetch(v.http, "a.test", "/hello", &[]).await;
    assert_eq!(status, 200);
    assert!(text.contains("origin=app"));
    assert_eq!(header(&h, "x-powered-by"), "verge-embed");
}

/// Start `program` with a config whose route selects `filters`; it must exit non-zero.
/// Returns the config path and stderr.
fn refused_start(program: &std::path::Path, args: &[&str], filters: &[&str]) -> (String, String) {
    let config = TestConfig::write(
        &TestYaml::new()
            .pool(Pool::new("p", &["127.0.0.1:1"]))
            .route(Route::to("p").filters(filters)),
    );
    let out = Command::new(program)
        .args(args)
        .arg(&config.path)
        .output()
        .expect("run");
    assert!(!out.status.success(), "{} started", program.display());
    (
        config.path.display().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_filter_names_are_startup_errors() {
    // the plain binary registers none: serve and check both refuse, naming file and key
    let verge = verge_bin();
    let (file, err) = refused_start(&verge, &["serve", "-c"], &["auth"]);
    assert!(err.contains(&file), "{err}");
    assert!(
        err.contains(
            "routes[0].filters[0]: unknown filter \"auth\"; this binary registers no filters"
        ),
        "{err}"
    );
    let (file, err) = refused_start(&verge, &["check", "-c"], &["auth"]);
    assert!(
        err.contains(&file) && err.contains("routes[0].filters[0]"),
        "{err}"
    );
    // a custom binary lists what it has
    let embed = example_bin("embed");
    let (file, err) = refused_start(&embed, &[], &["powered-by", "nope"]);
    assert!(err.contains(&file), "{err}");
    assert!(
        err.contains("routes[0].filters[1]: unknown filter \"nope\"; registered: powered-by"),
        "{err}"
    );
}

#[test]
fn example_configs_validate_with_their_filters() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/examples");
    for (file, filters) in [
        ("canary.yaml", &["canary"][..]),
        ("auth_gate.yaml", &["auth"]),
        ("device_key.yaml", &["device-key"]),
        ("embed.yaml", &["powered-by"]),
    ] {
        let path = std::path::Path::new(dir).join(file);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        config
            .check_filters(filters)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// verge built in-process with test filters

/// Stops an in-process server when notified.
struct StopSignal(Arc<Notify>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// verge built with `Verge::builder` in this process, serving on ephemeral ports.
struct InProcess {
    http: SocketAddr,
    admin: SocketAddr,
    stop: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
    _config: TestConfig,
}

impl InProcess {
    async fn start(
        config: &TestYaml,
        filters: impl FnOnce(VergeBuilder) -> VergeBuilder,
    ) -> InProcess {
        let config = TestConfig::write(config);
        let loaded = Config::load(&config.path).unwrap_or_else(|e| panic!("{e}"));
        let node = filters(verge::Verge::builder(loaded))
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let server = node.server().unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(Notify::new());
        let signal = StopSignal(stop.clone());
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signal),
            })
        });
        let ready = wait_until_serving(config.admin, config.http).await;
        assert!(ready, "in-process verge not ready");
        InProcess {
            http: config.http,
            admin: config.admin,
            stop,
            thread: Some(thread),
            _config: config,
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn req_header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Where `Boom` fails, from the request's `x-fail` header (kept in the extensions).
#[derive(Clone)]
struct FailAt(String);

/// Fails in the phase the client asks for.
struct Boom;

#[async_trait]
impl Filter for Boom {
    fn name(&self) -> &str {
        "boom"
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<Decision, FilterError> {
        let at = req_header(req, "x-fail").unwrap_or("").to_string();
        match at.as_str() {
            "request" => return Err(FilterError::internal("failing on purpose")),
            "request-502" => return Err(FilterError::bad_gateway("auth service down")),
            _ => {}
        }
        ctx.extensions_mut().insert(FailAt(at));
        Ok(Decision::Continue)
    }

    async fn on_upstream_request(
        &self,
        _upstream: &mut RequestHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<(), FilterError> {
        match ctx.extensions().get::<FailAt>() {
            Some(FailAt(at)) if at == "upstream" => Err(FilterError::bad_gateway("token fetch")),
            // too late to re-route: an error, not a silent no-op
            Some(FailAt(at)) if at == "late-override" => ctx.use_pool("web"),
            _ => Ok(()),
        }
    }

    async fn on_response(
        &self,
        _resp: &mut ResponseHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<(), FilterError> {
        match ctx.extensions().get::<FailAt>() {
            Some(FailAt(at)) if at == "response" => Err(FilterError::internal("failing late")),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn filter_errors_become_plain_5xx_and_metrics_in_every_phase() {
    let origin = Origin::start("web").await;
    origin.set_headers("/r", &[("cache-control", "max-age=60")]);
    let config = TestYaml::new()
        .pool(Pool::new("web", &[origin.addr]))
        .route(Route::to("web").name("boom-route").cache(RouteCache::new()));
    let v = InProcess::start(&config, |b| b.filter(Boom)).await;
    let fail = |at: &'static str| [("x-fail", at)];

    let (status, h, text) = fetch(v.http, "a.test", "/r", &fail("request")).await;
    assert_eq!((status, text.as_str()), (500, "verge: internal error\n"));
    assert_eq!(header(&h, "content-type"), "text/plain; charset=utf-8");
    let (status, _, text) = fetch(v.http, "a.test", "/r", &fail("request-502")).await;
    assert_eq!((status, text.as_str()), (502, "verge: bad gateway\n"));
    let (status, _, text) = fetch(v.http, "a.test", "/r", &fail("upstream")).await;
    assert_eq!((status, text.as_str()), (502, "verge: bad gateway\n"));
    let (status, _, text) = fetch(v.http, "a.test", "/r", &fail("late-override")).await;
    assert_eq!((status, text.as_str()), (500, "verge: internal error\n"));
    assert_eq!(origin.hits("/r"), 0, "nothing reached the origin yet");

    // on_response failing on a miss: the origin answered, the client gets a 500, nothing stored
    let (status, _, text) = fetch(v.http, "a.test", "/r", &fail("response")).await;
    assert_eq!((status, text.as_str()), (500, "verge: internal error\n"));
    assert_eq!(origin.hits("/r"), 1);
    let (status, h, _) = fetch(v.http, "a.test", "/r", &[]).await;
    assert_eq!(status, 200);
    assert!(header(&h, "cache-status").contains("stored"), "{h:?}");
    assert_eq!(origin.hits("/r"), 2, "the failed response was not cached");
    // ... and on a cache hit
    let (status, _, text) = fetch(v.http, "a.test", "/r", &fail("response")).await;
    assert_eq!((status, text.as_str()), (500, "verge: internal error\n"));
    let (status, h, _) = fetch(v.http, "a.test", "/r", &[]).await;
    assert_eq!(status, 200);
    assert!(header(&h, "cache-status").contains("hit"), "{h:?}");
    assert_eq!(origin.hits("/r"), 2);

    let errors = "verge_filter_errors_total";
    for phase in ["request", "upstream_request", "response"] {
        let labels = [("filter", "boom"), ("phase", phase)];
        assert_eq!(metric(v.admin, errors, &labels).await, 2, "{phase}");
    }
    let served_500 = [("route", "boom-route"), ("status", "500")];
    assert_eq!(
        metric(v.admin, "verge_requests_total", &served_500).await,
        4
    );
}

/// Appends its name to `x-chain` on the request (the origin sees it) and on the response.
struct Chain(&'static str);

fn append(current: Option<&str>, name: &str) -> String {
    match current {
        Some(c) => format!("{c},{name}"),
        None => name.to_string(),
    }
}

#[async_trait]
impl Filter for Chain {
    fn name(&self) -> &str {
        self.0
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        _ctx: &mut FilterCtx<'_>,
    ) -> Result<Decision, FilterError> {
        let next = append(req_header(req, "x-chain"), self.0);
        req.insert_header("x-chain", next)
            .map_err(|e| FilterError::internal(e.to_string()))?;
        Ok(Decision::Continue)
    }

    async fn on_response(
        &self,
        resp: &mut ResponseHeader,
        _ctx: &mut FilterCtx<'_>,
    ) -> Result<(), FilterError> {
        let current = resp.headers.get("x-chain").and_then(|v| v.to_str().ok());
        let next = append(current, self.0);
        resp.insert_header("x-chain", next)
            .map_err(|e| FilterError::internal(e.to_string()))
    }
}

#[tokio::test]
async fn routes_select_filters_which_run_in_registration_order() {
    let origin = Origin::start("web").await;
    let config = TestYaml::new()
        .pool(Pool::new("web", &[origin.addr]))
        .route(Route::to("web").hosts(&["all.test"]))
        .route(Route::to("web").hosts(&["b.test"]).filters(&["second"]))
        .route(Route::to("web").hosts(&["none.test"]).filters(&[]))
        .route(
            Route::to("web")
                .hosts(&["reversed.test"])
                .filters(&["second", "first"]),
        );
    let v = InProcess::start(&config, |b| {
        b.filter(Chain("first")).filter(Chain("second"))
    })
    .await;
    for (host, want) in [
        ("all.test", Some("first,second")),
        ("b.test", Some("second")),
        ("none.test", None),
        ("reversed.test", Some("first,second")),
    ] {
        let (status, h, _) = fetch(v.http, host, "/x", &[]).await;
        assert_eq!(status, 200, "{host}");
        assert_eq!(
            h.get("x-chain").and_then(|v| v.to_str().ok()),
            want,
            "{host}"
        );
        let seen = origin.last_seen().expect("seen");
        assert_eq!(seen.header("x-chain"), want, "{host}: what the origin got");
    }
}

/// Re-routes by request header (`x-route`, `x-pool`) and reports what it saw on the response.
struct Steer;

/// What `Steer` saw in `on_request`, after its overrides.
#[derive(Clone)]
struct Seen {
    route: String,
    pool: String,
    host: String,
    client: String,
}

#[async_trait]
impl Filter for Steer {
    fn name(&self) -> &str {
        "steer"
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<Decision, FilterError> {
        if let Some(route) = req_header(req, "x-route") {
            ctx.use_route(route)?;
        }
        if let Some(pool) = req_header(req, "x-pool") {
            ctx.use_pool(pool)?;
        }
        let seen = Seen {
            route: ctx.route().to_string(),
            pool: ctx.pool().to_string(),
            host: ctx.host().to_string(),
            client: ctx.client_ip().map(|ip| ip.to_string()).unwrap_or_default(),
        };
        ctx.extensions_mut().insert(seen);
        Ok(Decision::Continue)
    }

    async fn on_response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<(), FilterError> {
        let seen = ctx
            .extensions()
            .get::<Seen>()
            .cloned()
            .ok_or_else(|| FilterError::internal("nothing seen"))?;
        for (name, value) in [
            ("x-route", seen.route),
            ("x-pool", seen.pool),
            ("x-host", seen.host),
            ("x-client", seen.client),
        ] {
            resp.insert_header(name, value)
                .map_err(|e| FilterError::internal(e.to_string()))?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn filters_override_route_and_pool_by_name() {
    let main = Origin::start("main").await;
    let alt = Origin::start("alt").await;
    let config = TestYaml::new()
        .pool(Pool::new("main", &[main.addr]))
        .pool(Pool::new("alt", &[alt.addr]))
        .route(Route::to("main").name("main-route").hosts(&["main.test"]))
        .route(
            Route::to("alt")
                .name("alt-route")
                .hosts(&["alt.test"])
                .path("/alt")
                .strip_prefix(),
        );
    let v = InProcess::start(&config, |b| b.filter(Steer)).await;

    let (status, h, text) = fetch(v.http, "main.test:8080", "/x", &[]).await;
    assert_eq!(status, 200);
    assert!(text.contains("origin=main"));
    assert_eq!(header(&h, "x-route"), "main-route");
    assert_eq!(header(&h, "x-pool"), "main");
    assert_eq!(header(&h, "x-host"), "main.test");
    assert_eq!(header(&h, "x-client"), "127.0.0.1");

    // another pool: the route (and its rules) stay
    let (_, h, text) = fetch(v.http, "main.test", "/x", &[("x-pool", "alt")]).await;
    assert!(text.contains("origin=alt"), "{text}");
    assert_eq!(header(&h, "x-route"), "main-route");
    assert_eq!(header(&h, "x-pool"), "alt");

    // another route: its pool and its rules (prefix strip)
    let (_, h, text) = fetch(v.http, "main.test", "/alt/y", &[("x-route", "alt-route")]).await;
    assert!(text.contains("origin=alt uri=/y "), "{text}");
    assert_eq!(header(&h, "x-route"), "alt-route");
    assert_eq!(header(&h, "x-pool"), "alt");
    assert_eq!((main.total(), alt.total()), (1, 2));

    // unknown names: 500, counted, and nothing sent anywhere
    let (status, _, text) = fetch(v.http, "main.test", "/x", &[("x-pool", "nope")]).await;
    assert_eq!((status, text.as_str()), (500, "verge: internal error\n"));
    let (status, _, _) = fetch(v.http, "main.test", "/x", &[("x-route", "nope")]).await;
    assert_eq!(status, 500);
    assert_eq!((main.total(), alt.total()), (1, 2));
    let errors = [("filter", "steer"), ("phase", "request")];
    assert_eq!(
        metric(v.admin, "verge_filter_errors_total", &errors).await,
        2
    );
}

#[test]
fn the_builder_refuses_bad_registrations_and_unknown_names() {
    let config = Config::from_yaml_str(
        "listeners: [{listen: \"127.0.0.1:1\"}]\npools: {p: {backends: [\"127.0.0.1:2\"]}}\nroutes: [{hosts: [\"*\"], pool: p, filters: [boom, steer]}]\n",
    )
    .expect("config");
    let twice = verge::Verge::builder(config.clone())
        .filter(Boom)
        .filter(Boom)
        .build();
    assert!(
        matches!(&twice, Err(StartError::Registration(e)) if e.to_string() == "two filters are named \"boom\""),
        "{:?}",
        twice.err()
    );
    let missing = verge::Verge::builder(config.clone()).filter(Boom).build();
    let text = missing.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        text.contains("routes[0].filters[1]: unknown filter \"steer\"; registered: boom"),
        "{text}"
    );
    let ok = verge::Verge::builder(config)
        .filter(Steer)
        .filter(Boom)
        .build();
    let names = ok.as_ref().map(|v| v.filters().names()).unwrap_or_default();
    assert_eq!(names, vec!["steer", "boom"]);
}

/// Counts `on_request` calls: client requests and verge's own background refreshes.
struct Counting {
    clients: Arc<AtomicU64>,
    refreshes: Arc<AtomicU64>,
}

#[async_trait]
impl Filter for Counting {
    fn name(&self) -> &str {
        "counting"
    }

    async fn on_request(
        &self,
        _req: &mut RequestHeader,
        ctx: &mut FilterCtx<'_>,
    ) -> Result<Decision, FilterError> {
        let counter = if ctx.is_background_refresh() {
            &self.refreshes
        } else {
            &self.clients
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(Decision::Continue)
    }
}

#[tokio::test]
async fn background_refreshes_are_told_apart() {
    let origin = Origin::start("web").await;
    origin.set_headers_stale(
        "/swr",
        &[("cache-control", "max-age=1, stale-while-revalidate=30")],
    );
    let config = TestYaml::new()
        .pool(Pool::new("web", &[origin.addr]))
        .route(Route::to("web").cache(RouteCache::new()));
    let clients = Arc::new(AtomicU64::new(0));
    let refreshes = Arc::new(AtomicU64::new(0));
    let filter = Counting {
        clients: clients.clone(),
        refreshes: refreshes.clone(),
    };
    let v = InProcess::start(&config, |b| b.filter(filter)).await;
    assert_eq!(fetch(v.http, "a.test", "/swr", &[]).await.0, 200);
    let (status, h, _) = fetch(v.http, "a.test", "/swr", &[]).await;
    assert_eq!(status, 200);
    assert!(header(&h, "cache-status").contains("fwd=stale"), "{h:?}");
    let refreshed = eventually(Duration::from_secs(5), || async {
        origin.hits("/swr") == 2
    })
    .await;
    assert!(refreshed, "refreshed in the background");
    assert_eq!(clients.load(Ordering::Relaxed), 2);
    assert_eq!(refreshes.load(Ordering::Relaxed), 1);
}
