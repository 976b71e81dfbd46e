//! Tiered caching: three verge nodes on loopback in one ring (`tier:`), in front of one
//! counting origin. A miss on a node that does not own the key goes to the owner, which fetches
//! once for the fleet; a dead owner leaves requests to the origin; a client's hop marker is
//! ignored; `Cache-Status` names both hops and `Age` carries through.

use crate::support::control_plane::{policy, Cp};
use crate::support::ports;
use crate::support::{client, Config, Origin, Pool, Route, RouteCache, Verge};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use verge::upstream::hop_marker::{HopKey, Signed};

const SECRET: &str = "a tier key for the e2e fleet, 32+";
const HOST: &str = "c.test";

/// Three nodes `n0`..`n2`, each knowing the others' listeners, and the key file they share.
struct Fleet {
    nodes: Vec<Option<Verge>>,
    _key_dir: tempfile::TempDir,
}

/// A ring of three members `n0`..`n2` not started yet: their listener and admin addresses, and
/// the key file they share.
struct RingPlan {
    addrs: Vec<(SocketAddr, SocketAddr)>,
    key: std::path::PathBuf,
    key_dir: tempfile::TempDir,
}

impl RingPlan {
    fn new() -> RingPlan {
        let key_dir = tempfile::tempdir().expect("tmp");
        let key = key_dir.path().join("tier.key");
        std::fs::write(&key, SECRET).expect("key");
        RingPlan {
            addrs: (0..3).map(|_| (ports::addr(), ports::addr())).collect(),
            key,
            key_dir,
        }
    }

    /// The members as YAML flow maps.
    fn members_yaml(&self) -> Vec<String> {
        self.addrs
            .iter()
            .enumerate()
            .map(|(i, (http, _))| format!("{{id: n{i}, addr: \"{http}\"}}"))
            .collect()
    }

    /// The members as a policy's JSON.
    fn members_json(&self) -> serde_json::Value {
        self.addrs
            .iter()
            .enumerate()
            .map(|(i, (http, _))| serde_json::json!({"id": format!("n{i}"), "addr": http.to_string()}))
            .collect()
    }

    /// A node file's `tier:` block for member `i`, naming only its id and key (the ring comes
    /// with the policy).
    fn self_only(&self, i: usize) -> String {
        format!(
            "tier: {{self: n{i}, secret_file: \"{}\"}}",
            self.key.display()
        )
    }
}

impl Fleet {
    async fn start(origin: SocketAddr) -> Fleet {
        Self::start_with(origin, &[], "{connect: 500ms}").await
    }

    /// Three nodes, with `others` in the ring too (`x0`, `x1`, …: members that are not verge),
    /// and the ring's `timeouts`.
    async fn start_with(origin: SocketAddr, others: &[SocketAddr], timeouts: &str) -> Fleet {
        let plan = RingPlan::new();
        let members: Vec<String> = plan
            .members_yaml()
            .into_iter()
            .chain(
                others
                    .iter()
                    .enumerate()
                    .map(|(i, addr)| format!("{{id: x{i}, addr: \"{addr}\"}}")),
            )
            .collect();
        let mut nodes = Vec::new();
        for (i, (http, admin)) in plan.addrs.iter().enumerate() {
            let config = Config::new()
                .pool(Pool::new("p", &[origin]))
                .route(Route::to("p").cache(RouteCache::new()))
                .route(
                    Route::to("p")
                        .path("/local")
                        .cache(RouteCache::new().set("tier", "false")),
                )
                .raw(&format!(
                    "tier: {{self: n{i}, secret_file: \"{}\", members: [{}], timeouts: {timeouts}}}",
                    plan.key.display(),
                    members.join(", ")
                ));
            nodes.push(Some(Verge::start_on(&config, *http, *admin).await));
        }
        Fleet {
            nodes,
            _key_dir: plan.key_dir,
        }
    }

    fn node(&self, i: usize) -> &Verge {
        self.nodes[i].as_ref().expect("running")
    }

    fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
    }
}

/// A GET for `path` on `node` with extra fields: status, `Cache-Status` entries, `Age`.
async fn get(node: &Verge, path: &str, fields: &[(&str, &str)]) -> (u16, Vec<String>, Option<u64>) {
    let mut req = client().get(node.url(path)).header("host", HOST);
    for (k, v) in fields {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let entries = r
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(", ")
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    let age = r
        .headers()
        .get("age")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    r.bytes().await.expect("body");
    (status, entries, age)
}

/// The owner of `path` as node 0's first answer for it names it (that answer fetched it).
async fn owner_via_node0(fleet: &Fleet, path: &str) -> usize {
    let (status, entries, _) = get(fleet.node(0), path, &[]).await;
    assert_eq!(status, 200);
    match entries.as_slice() {
        [_own] => 0,
        [owner, _own] => {
            let id = owner
                .split(';')
                .next()
                .and_then(|name| name.strip_prefix("verge/n"))
                .and_then(|n| n.parse().ok());
            id.unwrap_or_else(|| panic!("owner entry names a member: {entries:?}"))
        }
        other => panic!("one or two Cache-Status entries: {other:?}"),
    }
}

/// A path whose owner is not node 0 (each probe fetches it once through node 0).
async fn path_owned_elsewhere(fleet: &Fleet, origin: &Origin, prefix: &str) -> (String, usize) {
    for i in 0..64 {
        let path = format!("{prefix}{i}");
        origin.set_headers(&path, &[("cache-control", "max-age=60")]);
        let owner = owner_via_node0(fleet, &path).await;
        if owner != 0 {
            return (path, owner);
        }
    }
    panic!("node 0 owns every probed key");
}

fn marker(from: &str, seq: u64, path: &str) -> String {
    let at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    HopKey::derive(SECRET.as_bytes())
        .sign(&Signed {
            node: from,
            at,
            seq,
            scheme: "http",
            method: "GET",
            host: HOST,
            target: path,
        })
        .expect("sign")
}

/// `n` concurrent GETs for `path` spread over `nodes`, each with `fields`; each must get a 200.
/// Returns each answer's `Cache-Status` and body.
async fn burst_answers(
    nodes: &[&Verge],
    path: &str,
    n: usize,
    fields: &[(&str, String)],
) -> Vec<(String, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut req = client()
                .get(nodes[i % nodes.len()].url(path))
                .header("host", HOST);
            for (k, v) in fields {
                req = req.header(*k, v);
            }
            tokio::spawn(async move {
                let r = req.send().await?;
                let status = r.status().as_u16();
                let cs = r
                    .headers()
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                r.text().await.map(|body| (status, cs, body))
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        let (status, cs, body) = t.await.expect("join").expect("request");
        assert_eq!(status, 200, "{cs}");
        out.push((cs, body));
    }
    out
}

/// `n` concurrent GETs for `path` spread over `nodes`; each must get a 200. Returns how many
/// came through an owner (two `Cache-Status` entries).
async fn burst(nodes: &[&Verge], path: &str, n: usize) -> usize {
    burst_answers(nodes, path, n, &[])
        .await
        .iter()
        .filter(|(cs, _)| cs.starts_with("verge/n"))
        .count()
}

#[tokio::test]
async fn concurrent_cold_requests_across_the_fleet_fetch_once() {
    let o = Origin::start("o").await;
    o.set_headers("/cold", &[("cache-control", "max-age=60")]);
    o.set_delay_ms(300);
    let fleet = Fleet::start(o.addr).await;
    let nodes: Vec<&Verge> = (0..3).map(|i| fleet.node(i)).collect();
    let through_owner = burst(&nodes, "/cold", 200).await;
    assert_eq!(o.hits("/cold"), 1, "one origin fetch for the whole fleet");
    assert!(
        through_owner >= 1,
        "the children's fetches went to the owner"
    );
    let mut to_owner = 0.0;
    let mut avoided = 0.0;
    for i in 0..3 {
        let m = fleet.node(i).metrics().await;
        to_owner += m.sum("verge_tier_requests_total", &[("outcome", "answered")]);
        avoided += m.sum("verge_tier_origin_fetches_avoided_total", &[]);
    }
    assert!(
        (1.0..=2.0).contains(&to_owner),
        "one fetch per child: {to_owner}"
    );
    assert!(
        avoided >= 1.0,
        "the owner answered a child from its cache: {avoided}"
    );
}

#[tokio::test]
async fn a_child_stores_the_owners_answer_with_both_hops_named_and_its_age() {
    let o = Origin::start("o").await;
    let fleet = Fleet::start(o.addr).await;
    o.set_headers("/aged", &[("cache-control", "max-age=60")]);
    let owner = owner_via_node0(&fleet, "/aged").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let child = (1..3).find(|&n| n != owner).expect("a third node");
    let (status, entries, age) = get(fleet.node(child), "/aged", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries[0].starts_with(&format!("verge/n{owner}; hit; ttl=")),
        "the owner's entry first: {entries:?}"
    );
    assert_eq!(entries[1], "verge; fwd=uri-miss; stored", "{entries:?}");
    assert!(age.is_some_and(|a| a >= 2), "Age carries through: {age:?}");
    assert_eq!(o.hits("/aged"), 1);
    // the child answers from its own copy now, still as old as the object is
    let (_, entries, age) = get(fleet.node(child), "/aged", &[]).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].starts_with("verge; hit"), "{entries:?}");
    assert!(age.is_some_and(|a| a >= 2), "{age:?}");
    assert_eq!(o.hits("/aged"), 1);
    // `/status` and the metrics say which member each node is
    let (_, body) = fleet.node(child).admin_get("/status").await;
    let doc: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(doc["tier"]["self"], format!("n{child}"));
    assert_eq!(doc["tier"]["members"].as_array().map(Vec::len), Some(3));
    let m = fleet.node(child).metrics().await;
    let me = format!("n{child}");
    assert_eq!(
        m.value("verge_tier_member_info", &[("self", &me)]),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_dead_owner_leaves_requests_to_the_origin_without_loops() {
    let o = Origin::start("o").await;
    let mut fleet = Fleet::start(o.addr).await;
    let (_, owner) = path_owned_elsewhere(&fleet, &o, "/dead").await;
    // keys the dead node owned: find some through node 0 before it dies
    let mut owned = Vec::new();
    for i in 0..64 {
        let path = format!("/gone{i}");
        o.set_headers(&path, &[("cache-control", "max-age=60")]);
        if owner_via_node0(&fleet, &path).await == owner {
            owned.push(path);
        }
        if owned.len() == 3 {
            break;
        }
    }
    assert!(!owned.is_empty());
    fleet.kill(owner);
    let survivor = (0..3).find(|&n| n != owner && n != 0).expect("a survivor");
    for path in &owned {
        // node 0 has it; the other survivor asks the dead owner, fails, and fetches itself
        let (status, entries, _) = get(fleet.node(survivor), path, &[]).await;
        assert_eq!(status, 200, "{path}: {entries:?}");
        assert_eq!(entries.len(), 1, "{path}: {entries:?}");
        assert!(entries[0].starts_with("verge; fwd=uri-miss"), "{entries:?}");
    }
    for path in &owned {
        assert_eq!(o.hits(path), 2, "{path}: node 0's fetch and the survivor's");
    }
    let m = fleet.node(survivor).metrics().await;
    assert!(
        m.sum(
            "verge_tier_requests_total",
            &[("outcome", "connect_failure")]
        ) >= 1.0,
        "the failed owner was counted"
    );
    // what reached the origin never carried a marker or verge's CDN-Loop token twice
    for path in &owned {
        for seen in o.seen_for(path) {
            assert_eq!(seen.header("verge-tier-hop"), None, "{seen:?}");
            assert_ne!(seen.header("cdn-loop"), Some("verge, verge"), "{seen:?}");
        }
    }
}

#[tokio::test]
async fn a_verified_hop_is_never_forwarded_again() {
    let o = Origin::start("o").await;
    let fleet = Fleet::start(o.addr).await;
    let (path, owner) = path_owned_elsewhere(&fleet, &o, "/hop").await;
    // a hop (from n0, made with the ring's key) reaching a node that does not own the key and
    // has not stored it: it fetches from the origin itself, under its own hop name
    let other = (1..3).find(|&n| n != owner).expect("a non-owner");
    let hits = o.hits(&path);
    let (status, entries, _) = get(
        fleet.node(other),
        &path,
        &[("verge-tier-hop", &marker("n0", 0, &path))],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(entries, [format!("verge/n{other}; fwd=uri-miss; stored")]);
    assert_eq!(
        o.hits(&path),
        hits + 1,
        "fetched from the origin, not the owner"
    );
    let seen = o.last_seen().expect("seen");
    assert_eq!(seen.header("verge-tier-hop"), None, "{seen:?}");
}

#[tokio::test]
async fn a_forged_hop_marker_is_ignored() {
    let o = Origin::start("o").await;
    let fleet = Fleet::start(o.addr).await;
    o.set_headers("/forged", &[("cache-control", "max-age=60")]);
    let owner = owner_via_node0(&fleet, "/forged").await;
    // the owner has it; a client claims to be a member far ahead in invalidations, which (if
    // believed) would make the owner refetch, and names no valid MAC
    let forged = format!("n0 {} 999999 http {}", 1, "00".repeat(32));
    let (status, entries, _) =
        get(fleet.node(owner), "/forged", &[("verge-tier-hop", &forged)]).await;
    assert_eq!(status, 200);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].starts_with("verge; hit"),
        "an ordinary client's hit: {entries:?}"
    );
    assert_eq!(o.hits("/forged"), 1, "the forged position forced nothing");
    let m = fleet.node(owner).metrics().await;
    assert_eq!(
        m.sum("verge_tier_hops_received_total", &[("result", "malformed")])
            + m.sum("verge_tier_hops_received_total", &[("result", "bad_mac")]),
        1.0
    );
    // a forged marker on a miss reaches neither the origin nor any privilege
    o.set_headers("/forged2", &[("cache-control", "max-age=60")]);
    let (status, _, _) = get(
        fleet.node(owner),
        "/forged2",
        &[("verge-tier-hop", &forged)],
    )
    .await;
    assert_eq!(status, 200);
    let seen = o.last_seen().expect("seen");
    assert_eq!(seen.header("verge-tier-hop"), None, "{seen:?}");
}

#[tokio::test]
async fn an_owner_behind_the_childs_invalidations_does_not_serve_its_copy() {
    let o = Origin::start("o").await;
    let fleet = Fleet::start(o.addr).await;
    o.set_headers("/pos", &[("cache-control", "max-age=60")]);
    let owner = owner_via_node0(&fleet, "/pos").await;
    let hits = o.hits("/pos");
    let from = if owner == 1 { "n2" } else { "n1" };
    // a member at the owner's position (0) gets the stored copy
    let (_, entries, _) = get(
        fleet.node(owner),
        "/pos",
        &[("verge-tier-hop", &marker(from, 0, "/pos"))],
    )
    .await;
    assert!(
        entries[0].starts_with(&format!("verge/n{owner}; hit")),
        "{entries:?}"
    );
    assert_eq!(o.hits("/pos"), hits);
    // one that applied invalidations the owner has not does not: the owner fetches anew
    let (status, entries, _) = get(
        fleet.node(owner),
        "/pos",
        &[("verge-tier-hop", &marker(from, 5, "/pos"))],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        entries[0].starts_with(&format!("verge/n{owner}; fwd=")),
        "{entries:?}"
    );
    assert_eq!(o.hits("/pos"), hits + 1);
    let m = fleet.node(owner).metrics().await;
    assert_eq!(m.sum("verge_tier_owner_behind_total", &[]), 1.0);
}

#[tokio::test]
async fn a_request_that_looped_twice_goes_to_the_origin() {
    let o = Origin::start("o").await;
    let fleet = Fleet::start(o.addr).await;
    let (path, owner) = path_owned_elsewhere(&fleet, &o, "/loop").await;
    let other = (1..3).find(|&n| n != owner).expect("a non-owner");
    let hits = o.hits(&path);
    let (status, entries, _) = get(
        fleet.node(other),
        &path,
        &[("cdn-loop", "verge, other-cdn, verge")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        entries,
        ["verge; fwd=uri-miss; stored"],
        "not sent to the owner"
    );
    assert_eq!(o.hits(&path), hits + 1);
    let m = fleet.node(other).metrics().await;
    assert_eq!(
        m.sum("verge_tier_requests_total", &[("outcome", "loop")]),
        1.0
    );
}

#[tokio::test]
async fn a_silent_owner_times_out_to_the_origin_and_is_skipped_after_a_few() {
    // a ring member that accepts connections and never answers
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let o = Origin::start("o").await;
    let fleet = Fleet::start_with(o.addr, &[silent_addr], "{connect: 500ms, read: 400ms}").await;
    for i in 0..60 {
        let path = format!("/quiet{i}");
        o.set_headers(&path, &[("cache-control", "max-age=60")]);
        let (status, entries, _) = get(fleet.node(0), &path, &[]).await;
        assert_eq!(status, 200, "{path}: {entries:?}");
        assert_eq!(o.hits(&path), 1, "{path}: one fetch, whoever made it");
    }
    let m = fleet.node(0).metrics().await;
    let errors = m.sum("verge_tier_requests_total", &[("outcome", "error")]);
    assert!(errors >= 1.0, "some keys were the silent member's");
    assert!(
        errors <= 3.0,
        "after 3 failures in a row the member is skipped, not asked again: {errors}"
    );
    assert!(
        m.sum("verge_backend_ejections_total", &[("pool", "(tier)")]) >= 1.0,
        "the silent member was ejected"
    );
}

#[tokio::test]
async fn the_ring_comes_with_the_policy_and_a_purged_object_is_fetched_once_for_the_fleet() {
    let o = Origin::start("o").await;
    o.set_headers("/obj", &[("cache-control", "max-age=300")]);
    o.set_delay_ms(300);
    let cp = Cp::start().await;
    let plan = RingPlan::new();
    let mut doc = policy(&o, serde_json::json!({}));
    doc["tier"] = serde_json::json!({"members": plan.members_json()});
    assert_eq!(cp.put_policy(doc, 0).await.0, 200);
    let mut nodes = Vec::new();
    for (i, (http, admin)) in plan.addrs.iter().enumerate() {
        // the node's file names only its id and key: the ring is the policy's
        let config = Config::new()
            .control(cp.control(&format!("n{i}")))
            .raw(&plan.self_only(i));
        nodes.push(Verge::start_on(&config, *http, *admin).await);
    }
    for (i, node) in nodes.iter().enumerate() {
        let (_, body) = node.admin_get("/status").await;
        let doc: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
        assert_eq!(doc["tier"]["self"], format!("n{i}"), "{body}");
        assert_eq!(doc["tier"]["members"].as_array().map(Vec::len), Some(3));
    }
    let refs: Vec<&Verge> = nodes.iter().collect();
    assert!(
        burst(&refs, "/obj", 60).await >= 1,
        "children went to the owner"
    );
    assert_eq!(o.hits("/obj"), 1);
    // a purge every node has applied, then a burst on all of them: one refetch for the fleet
    let seq = cp
        .purge(serde_json::json!({"kind": "url", "target": "c.test/obj"}))
        .await;
    assert!(seq >= 1);
    assert!(cp.converged(3).await, "every node applied the purge");
    burst(&refs, "/obj", 60).await;
    assert_eq!(
        o.hits("/obj"),
        2,
        "one origin fetch per object after the purge"
    );
}

#[tokio::test]
async fn a_head_then_a_get_through_the_owner_get_whole_answers() {
    let o = Origin::start("o").await;
    let fleet = Fleet::start(o.addr).await;
    let head = |path: String| {
        let url = fleet.node(0).url(&path);
        async move {
            let r = client()
                .head(url)
                .header("host", HOST)
                .send()
                .await
                .expect("HEAD");
            let cs = r
                .headers()
                .get("cache-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (r.status().as_u16(), cs)
        }
    };
    // a HEAD that node 0 sent to another member
    let mut found = None;
    for i in 0..64 {
        let path = format!("/head{i}");
        o.set_headers(&path, &[("cache-control", "max-age=60")]);
        let (status, cs) = head(path.clone()).await;
        assert_eq!(status, 200, "{cs}");
        if cs.starts_with("verge/n") {
            found = Some(path);
            break;
        }
    }
    let path = found.expect("a HEAD went through an owner");
    for node in 0..3 {
        let (status, _, _) = get(fleet.node(node), &path, &[]).await;
        assert_eq!(status, 200);
        let body = client()
            .get(fleet.node(node).url(&path))
            .header("host", HOST)
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .expect("body");
        assert!(body.starts_with("origin=o uri="), "node {node}: {body:?}");
    }
}

#[tokio::test]
async fn a_route_that_opts_out_fetches_on_every_node() {
    let o = Origin::start("o").await;
    o.set_headers("/local/x", &[("cache-control", "max-age=60")]);
    o.set_delay_ms(300);
    let fleet = Fleet::start(o.addr).await;
    let nodes: Vec<&Verge> = (0..3).map(|i| fleet.node(i)).collect();
    assert_eq!(
        burst(&nodes, "/local/x", 30).await,
        0,
        "no answer came through an owner"
    );
    assert_eq!(o.hits("/local/x"), 3, "each node fetched for itself");
}

#[tokio::test]
async fn a_burst_of_hops_ahead_of_the_owner_is_one_refetch_whose_copy_serves_the_rest() {
    let o = Origin::start("o").await;
    let fleet = Fleet::start(o.addr).await;
    o.set_headers("/lag", &[("cache-control", "max-age=60")]);
    let owner = owner_via_node0(&fleet, "/lag").await;
    assert_eq!(o.hits("/lag"), 1);
    o.set_delay_ms(300);
    let from = if owner == 1 { "n2" } else { "n1" };
    // members at position 5, the owner at 0: its copy may be older than a purge they applied,
    // so the first hop refetches and the others wait on that fetch and get its answer
    let marker5 = marker(from, 5, "/lag");
    let answers = burst_answers(
        &[fleet.node(owner)],
        "/lag",
        20,
        &[("verge-tier-hop", marker5.clone())],
    )
    .await;
    assert_eq!(o.hits("/lag"), 2, "one refetch for the burst: {answers:?}");
    // later hops at 5 and behind it: the copy was fetched after the owner heard of 5, a hit;
    // one at 6 is ahead of anything the copy reflects: fetched anew
    for (seq, outcome, hits) in [(5, "hit", 2), (3, "hit", 2), (6, "fwd=", 3)] {
        let (_, entries, _) = get(
            fleet.node(owner),
            "/lag",
            &[("verge-tier-hop", &marker(from, seq, "/lag"))],
        )
        .await;
        assert!(
            entries[0].starts_with(&format!("verge/n{owner}; {outcome}")),
            "at {seq}: {entries:?}"
        );
        assert_eq!(o.hits("/lag"), hits, "at {seq}");
    }
}

#[tokio::test]
async fn a_member_passes_on_the_position_a_hop_showed_it() {
    let o = Origin::start("o").await;
    let fleet = Fleet::start(o.addr).await;
    // a key node 1 stores as its owner, and node 0 has not asked for
    let mut path = None;
    for i in 0..64 {
        let p = format!("/pass{i}");
        o.set_headers(&p, &[("cache-control", "max-age=60")]);
        let (_, entries, _) = get(fleet.node(1), &p, &[]).await;
        if entries.len() == 1 {
            path = Some(p);
            break;
        }
    }
    let path = path.expect("node 1 owns one of the probed keys");
    assert_eq!(o.hits(&path), 1);
    // a member at position 5 shows node 0 its position (a hop for another key, which node 0
    // serves itself)
    o.set_headers("/other", &[("cache-control", "max-age=60")]);
    let (status, _, _) = get(
        fleet.node(0),
        "/other",
        &[("verge-tier-hop", &marker("n2", 5, "/other"))],
    )
    .await;
    assert_eq!(status, 200);
    // node 0's own miss on node 1's key: its hop says 5, node 1 (at 0) does not serve its copy
    let (status, entries, _) = get(fleet.node(0), &path, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(entries[0].starts_with("verge/n1; fwd="), "{entries:?}");
    assert_eq!(o.hits(&path), 2, "node 1 fetched anew");
    let m = fleet.node(1).metrics().await;
    assert_eq!(m.sum("verge_tier_owner_behind_total", &[]), 1.0);
}

#[tokio::test]
async fn a_purge_the_owner_has_not_applied_never_reaches_clients_and_is_one_refetch() {
    let o = Origin::start("o").await;
    let cp = Cp::start().await;
    let plan = RingPlan::new();
    let mut doc = policy(&o, serde_json::json!({}));
    doc["tier"] = serde_json::json!({ "members": plan.members_json() });
    assert_eq!(cp.put_policy(doc, 0).await.0, 200);
    // n0 runs from its own file, the same route and ring, and never hears of a purge: an owner
    // that lags; n1 and n2 follow the control plane
    let lagging = Config::new()
        .pool(Pool::new("o", &[o.addr]))
        .route(Route::to("o").cache(RouteCache::new()))
        .raw(&format!(
            "tier: {{self: n0, secret_file: \"{}\", members: [{}]}}",
            plan.key.display(),
            plan.members_yaml().join(", ")
        ));
    let (http, admin) = plan.addrs[0];
    let mut nodes = vec![Verge::start_on(&lagging, http, admin).await];
    for (i, (http, admin)) in plan.addrs.iter().enumerate().skip(1) {
        let config = Config::new()
            .control(cp.control(&format!("n{i}")))
            .raw(&plan.self_only(i));
        nodes.push(Verge::start_on(&config, *http, *admin).await);
    }
    // a key n0 owns, stored on all three
    let mut path = None;
    for i in 0..64 {
        let p = format!("/purged{i}");
        o.set_headers(&p, &[("cache-control", "max-age=300")]);
        o.set_body(&p, "v1");
        let (_, entries, _) = get(&nodes[1], &p, &[]).await;
        if entries.first().is_some_and(|e| e.starts_with("verge/n0;")) {
            path = Some(p);
            break;
        }
    }
    let path = path.expect("n0 owns one of the probed keys");
    let (_, entries, _) = get(&nodes[2], &path, &[]).await;
    assert!(entries[0].starts_with("verge/n0; hit"), "{entries:?}");
    assert_eq!(o.hits(&path), 1);
    // the object changes and is purged; n1 and n2 apply the purge, n0 does not
    o.set_body(&path, "v2");
    o.set_delay_ms(300);
    let seq = cp
        .purge(serde_json::json!({"kind": "url", "target": format!("{HOST}{path}")}))
        .await;
    assert!(seq >= 1);
    assert!(cp.converged(2).await, "n1 and n2 applied the purge");
    for (cs, body) in burst_answers(&[&nodes[1], &nodes[2]], &path, 40, &[]).await {
        assert_eq!(body, "v2", "no client gets the purged copy: {cs}");
    }
    assert_eq!(
        o.hits(&path),
        2,
        "one origin fetch for both children's hops to the lagging owner"
    );
    // n0 itself has not applied the purge, but holds the new copy now
    let answers = burst_answers(&[&nodes[0]], &path, 1, &[]).await;
    assert_eq!(answers[0].1, "v2", "{answers:?}");
    assert_eq!(o.hits(&path), 2);
}

#[tokio::test]
async fn an_owner_killed_during_a_burst_leaves_every_request_answered_without_a_storm() {
    let o = Origin::start("o").await;
    let mut fleet = Fleet::start(o.addr).await;
    let paths: Vec<String> = (0..40).map(|i| format!("/mid{i}")).collect();
    for p in &paths {
        o.set_headers(p, &[("cache-control", "max-age=60")]);
    }
    o.set_delay_ms(600);
    // 5 requests for each of 40 cold keys on node 0; node 1 dies while its keys' fetches run
    let node0 = fleet.node(0);
    let tasks: Vec<_> = paths
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), 5))
        .map(|p| {
            let req = client().get(node0.url(&p)).header("host", HOST);
            tokio::spawn(async move {
                let r = req.send().await?;
                let status = r.status().as_u16();
                r.bytes().await.map(|_| (p, status))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(250)).await;
    fleet.kill(1);
    for t in tasks {
        let (p, status) = t.await.expect("join").expect("request");
        assert_eq!(status, 200, "{p}");
    }
    // each key: at most the dead owner's fetch and node 0's own, whatever the key's owner was
    for p in &paths {
        assert!((1..=2).contains(&o.hits(p)), "{p}: {}", o.hits(p));
    }
    let m = fleet.node(0).metrics().await;
    let failed = m.sum("verge_tier_requests_total", &[("outcome", "error")])
        + m.sum(
            "verge_tier_requests_total",
            &[("outcome", "connect_failure")],
        );
    assert!(failed >= 1.0, "some of the 40 keys were node 1's");
    assert!(
        failed <= 40.0,
        "node 0's waiters did not each try the dead owner: {failed}"
    );
}
