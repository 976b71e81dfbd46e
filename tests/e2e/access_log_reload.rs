//! The access log's destination across reloads, through a real process under steady traffic:
//! another file, off and on again, each request's line in exactly one file; a path that cannot
//! be opened refuses the reload and the old file keeps its lines; logrotate's `mv` (with or
//! without `create`) followed by a reload sends the next line to the new file at once.

use crate::support::{
    assert_eventually, client, fetch, Config, Origin, Pool, Route, RouteCache, Verge,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A caching route (`/c` is stored, so its repeats are hit-lane hits) whose log, when `log`
/// names a file in the state directory, records each request's path and user agent.
fn config(o: &Origin, version: &str, log: Option<&str>) -> Config {
    let mut c = Config::new()
        .version(version)
        .pool(Pool::new("p", &[o.addr]))
        .route(Route::to("p").cache(RouteCache::new()));
    if let Some(file) = log {
        c = c.raw(&format!(
            "access_log: {{path: \"{{dir}}/{file}\", fields: [path, user_agent, cache]}}"
        ));
    }
    c
}

/// Every line of `file` (none when it does not exist), each checked to be one whole JSON
/// object: the user agents they name.
fn agents(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a torn line in {}: {e}: {line}", path.display()));
            v["user_agent"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

/// The files the process holds open.
fn open_files(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// One request of the steady traffic: its user agent (`r<n>`) and when it was in flight.
struct Sent {
    agent: String,
    start: Instant,
    end: Instant,
}

/// `workers` clients sending requests one after another until `stop`, every other one a hit on
/// `/c` (answered by the hit lane), the others misses on paths of their own. Each carries a
/// user agent of its own.
async fn steady_traffic(addr: SocketAddr, workers: usize, stop: Arc<AtomicBool>) -> Vec<Sent> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let http = client();
            let mut sent = Vec::new();
            let mut n = 0;
            // bounded: a few seconds of traffic at most
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                let agent = format!("r{w}-{n}");
                let path = if n % 2 == 0 {
                    "/c".to_string()
                } else {
                    format!("/m/{w}/{n}")
                };
                let start = Instant::now();
                let r = http
                    .get(format!("http://{addr}{path}"))
                    .header("user-agent", &agent)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 200, "{path}");
                r.bytes().await.expect("body");
                sent.push(Sent {
                    agent,
                    start,
                    end: Instant::now(),
                });
                n += 1;
            }
            sent
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("traffic task"));
    }
    all
}

#[tokio::test]
async fn access_log_moves_to_another_file_off_and_on_again_across_reloads_under_traffic() {
    let o = Origin::start("o").await;
    o.set_headers("/c", &[("cache-control", "max-age=600")]);
    let v = Verge::start(&config(&o, "a", Some("a.log"))).await;
    fetch(&v, "/c", &[("user-agent", "warm")]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(steady_traffic(v.http, 4, stop.clone()));

    // a → b (another file), b → off, off → c; each reload timed from the test's side
    let mut reloads = Vec::new();
    for (version, log) in [("b", Some("b.log")), ("off", None), ("c", Some("c.log"))] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let start = Instant::now();
        let (code, err) = v.verge_reload_with(&config(&o, version, log));
        assert_eq!(code, Some(0), "reload to {version}: {err}");
        reloads.push((start, Instant::now()));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.await.expect("traffic");
    let last = sent.iter().map(|s| s.end).max().expect("requests");
    assert!(sent.len() > 100, "steady traffic: {} requests", sent.len());

    // lines are written when responses end: wait for the last one's
    let dir = v.dir().to_path_buf();
    let in_c = |s: &Sent| s.start > reloads[2].1;
    let expected_c = sent.iter().filter(|s| in_c(s)).count();
    assert_eventually(
        Duration::from_secs(10),
        "the last requests' lines in c.log",
        || async { agents(&dir.join("c.log")).len() },
        |n| *n >= expected_c,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut found: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for file in ["a.log", "b.log", "c.log"] {
        for agent in agents(&dir.join(file)) {
            found.entry(agent).or_default().push(file);
        }
    }
    let files = |agent: &str| found.get(agent).cloned().unwrap_or_default();
    // a line is written just after its response ends, by the snapshot in force then (or, on
    // the hit lane, the one that decided): a request is pinned to a file only when it ran
    // wholly inside one phase's bounds as the test saw them
    for s in &sent {
        let at = files(&s.agent);
        assert!(at.len() <= 1, "{} written twice: {at:?}", s.agent);
        let before = |i: usize| s.end < reloads[i].0;
        let after = |i: usize| s.start > reloads[i].1;
        // across a → b the log is on all along: each request is in exactly one of the two
        if before(1) {
            assert_eq!(at.len(), 1, "{} in exactly one file: {at:?}", s.agent);
        }
        if after(0) && before(1) {
            assert_eq!(at, ["b.log"], "{}: served while b.log was the log", s.agent);
        }
        if after(1) && before(2) {
            assert!(at.is_empty(), "{}: served while the log was off", s.agent);
        }
        if after(2) {
            assert_eq!(at, ["c.log"], "{}: served after it was turned on", s.agent);
        }
        // no line reaches a file before its reload began or after the next one was applied
        match at.first().copied() {
            Some("a.log") => assert!(!after(0), "{} in a.log after the switch", s.agent),
            Some("b.log") => assert!(
                s.end > reloads[0].0 && !after(1),
                "{} in b.log outside its phase",
                s.agent
            ),
            Some(_) => assert!(s.end > reloads[2].0, "{} in c.log too early", s.agent),
            None => {}
        }
    }
    for file in ["a.log", "b.log", "c.log"] {
        assert!(!agents(&dir.join(file)).is_empty(), "{file} got lines");
    }
    assert!(
        sent.iter().any(|s| s.end < reloads[0].0)
            && sent
                .iter()
                .any(|s| s.start > reloads[0].1 && s.end < reloads[1].0)
            && sent
                .iter()
                .any(|s| s.start > reloads[1].1 && s.end < reloads[2].0)
            && sent.iter().any(|s| s.start > reloads[2].1),
        "traffic in every phase"
    );
    assert!(last > reloads[2].1);
    let lane = v.metrics().await.sum("verge_cache_fast_hits_total", &[]);
    assert!(lane > 0.0, "the hit lane wrote lines too");

    // the files no snapshot writes to any more are closed; c.log stays open
    let pid = v.pid();
    assert_eventually(
        Duration::from_secs(10),
        "a.log and b.log closed",
        || async { open_files(pid) },
        |open| {
            !open
                .iter()
                .any(|p| p.ends_with("a.log") || p.ends_with("b.log"))
                && open.iter().any(|p| p.ends_with("c.log"))
        },
    )
    .await;
}

#[tokio::test]
async fn access_log_path_that_cannot_be_opened_refuses_the_reload_and_the_old_file_keeps_its_lines()
{
    let o = Origin::start("o").await;
    let v = Verge::start(&config(&o, "one", Some("a.log"))).await;
    fetch(&v, "/m/1", &[("user-agent", "before")]).await;

    // a path `verge check` passes (its directory exists) that cannot be opened: a directory
    // (the test runs as root, so permissions would not stop it)
    let taken = v.dir().join("taken.log");
    std::fs::create_dir(&taken).expect("mkdir");
    let (code, err) = v.verge_reload_with(&config(&o, "two", Some("taken.log")));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("access_log.path")
            && err.contains(&taken.display().to_string())
            && err.contains("Is a directory"),
        "the key, the file and the reason: {err}"
    );
    let (_, status) = v.admin_get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("status");
    assert_eq!(status["config_version"], "one", "nothing changed");
    assert_eq!(status["reload"]["last"]["outcome"], "failed", "{status}");

    fetch(&v, "/m/2", &[("user-agent", "after")]).await;
    let a = v.dir().join("a.log");
    assert_eventually(
        Duration::from_secs(5),
        "the old file keeps getting lines",
        || async { agents(&a) },
        |got| got == &["before", "after"],
    )
    .await;
}

/// `verge reload` with the same config (log at `access.log`), then one request with user agent
/// `agent`: its line must be the only one in the file at the path.
async fn reload_then_request(v: &Verge, o: &Origin, agent: &str) {
    let (code, err) = v.verge_reload_with(&config(o, "one", Some("access.log")));
    assert_eq!(code, Some(0), "{err}");
    fetch(v, &format!("/m/{agent}"), &[("user-agent", agent)]).await;
    let path = v.dir().join("access.log");
    assert_eventually(
        Duration::from_secs(5),
        "the line in the file at the path",
        || async { agents(&path) },
        |got| got == &[agent],
    )
    .await;
}

#[tokio::test]
async fn access_log_rotated_by_mv_and_reload_goes_to_the_new_file_at_once() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let o = Origin::start("o").await;
    let v = Verge::start(&config(&o, "one", Some("access.log"))).await;
    let path = v.dir().join("access.log");
    let rotated = v.dir().join("access.log.1");
    fetch(&v, "/m/1", &[("user-agent", "first")]).await;
    assert_eventually(
        Duration::from_secs(5),
        "the first line",
        || async { agents(&path) },
        |got| got == &["first"],
    )
    .await;

    // logrotate's `create` mode: move the file, create the new one with its mode, then reload
    std::fs::rename(&path, &rotated).expect("mv");
    std::fs::File::create(&path).expect("create");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let created = std::fs::metadata(&path).expect("created").ino();
    reload_then_request(&v, &o, "second").await;
    let meta = std::fs::metadata(&path).expect("new file");
    assert_eq!(meta.ino(), created, "the file logrotate created is written");
    assert_eq!(meta.mode() & 0o777, 0o640, "with the mode it was given");
    assert_eq!(agents(&rotated), ["first"]);

    // without `create`: the reload creates it
    std::fs::rename(&path, &rotated).expect("mv again");
    reload_then_request(&v, &o, "third").await;
    assert_eq!(agents(&rotated), ["second"]);

    // the rotated file is closed once nothing writes to it
    let pid = v.pid();
    assert_eventually(
        Duration::from_secs(10),
        "the rotated file closed",
        || async { open_files(pid) },
        |open| !open.iter().any(|p| p.ends_with("access.log.1")),
    )
    .await;
}
