//! A short soak of stale-while-revalidate and stale-if-error traffic through an origin outage:
//! the served-staleness metrics must match what the clients saw, computed on the client side
//! from each response's `Age` and `Cache-Status` alone.

use crate::support::metrics::sum_eventually;
use crate::support::{fetch, Config, Got, Metrics, Origin, Pool, Route, RouteCache, Verge};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The freshness lifetime every URL gets (`max-age`), and the route's stale-while-revalidate.
const MAX_AGE: u64 = 1;
const SWR: u64 = 2;
const URLS: usize = 4;
/// The class's staleness budget: the later stale-if-error answers are older than it.
const BUDGET: u64 = 3;

/// How the client classes one answer, from its `Cache-Status` and `Age` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Fresh,
    /// Stale, this many whole seconds past expiry (`ttl=-N`, and `Age` minus `max-age`).
    Swr(u64),
    Sie(u64),
    Revalidated,
    /// Not an answer from the cache (a miss, or a refetch).
    Fetched,
}

fn classify(g: &Got) -> Seen {
    let cs = &g.cache_status;
    assert_eq!(g.status, 200, "every answer is served: {cs}");
    if cs.contains("fwd-status=304") {
        return Seen::Revalidated;
    }
    if !cs.contains("; hit") {
        return Seen::Fetched;
    }
    let ttl: i64 = cs
        .split("ttl=")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("a hit carries ttl: {cs}"));
    let age = g.age.unwrap_or_else(|| panic!("a hit carries Age: {cs}"));
    if !cs.contains("fwd=stale") {
        assert!(ttl >= 0, "{cs}");
        return Seen::Fresh;
    }
    let past = u64::try_from(-ttl).unwrap_or_else(|_| panic!("stale with ttl {ttl}"));
    assert_eq!(
        age - MAX_AGE,
        past,
        "Age and Cache-Status tell the same staleness: {cs}, Age {age}"
    );
    if past < SWR {
        Seen::Swr(past)
    } else {
        Seen::Sie(past)
    }
}

fn bucket(m: &Metrics, state: &str, le: &str) -> f64 {
    let name = "verge_cache_served_stale_seconds_bucket";
    m.value(name, &[("class", "soak"), ("state", state), ("le", le)])
        .unwrap_or(0.0)
}

/// Four URLs of one class, each fetched, then asked for every quarter second while fresh, while
/// stale with the origin stopped (stale-while-revalidate for 2 s past expiry, stale-if-error
/// after), and once the origin is back (revalidated with a 304). The metrics count each answer
/// in the state the client inferred, with the staleness the client read, bucket by bucket.
#[tokio::test]
async fn staleness_metrics_match_what_clients_saw_through_an_origin_outage() {
    let o = Origin::start("o").await;
    let paths: Vec<String> = (0..URLS).map(|i| format!("/s/{i}")).collect();
    for (i, p) in paths.iter().enumerate() {
        o.set_headers(p, &[("cache-control", &format!("max-age={MAX_AGE}"))]);
        o.set_etag(p, &format!("\"e{i}\""));
    }
    let v = Verge::start(
        &Config::new()
            .raw(&format!("classes: {{soak: {{budget: {BUDGET}s}}}}"))
            .pool(Pool::new("p", &[o.addr]))
            .route(
                Route::to("p")
                    .name("soak")
                    .cache(
                        RouteCache::new()
                            .set("stale_while_revalidate", &format!("{SWR}s"))
                            .set("stale_if_error", "60s")
                            .set("stale_if_disconnected", "60s"),
                    )
                    .set("class", "soak"),
            ),
    )
    .await;
    // each URL stored, its expiry counted from when its answer came back
    let mut stored = Vec::new();
    for p in &paths {
        assert_eq!(classify(&fetch(&v, p, &[]).await), Seen::Fetched);
        stored.push(Instant::now());
    }
    // every URL asked at these offsets from its store time: two fresh, twenty stale (a
    // quarter second apart, never on a whole second), two after the outage
    let outage_at = 0.85;
    let back_at = 5.0 + MAX_AGE as f64;
    let mut offsets: Vec<f64> = vec![0.25, 0.6];
    offsets.extend((0..20).map(|k| MAX_AGE as f64 + 0.12 + 0.25 * k as f64));
    offsets.extend([back_at + 0.2, back_at + 0.5]);
    let mut events: Vec<(Instant, usize)> = Vec::new();
    for (i, at) in stored.iter().enumerate() {
        for off in &offsets {
            events.push((*at + Duration::from_secs_f64(*off), i));
        }
    }
    events.sort();
    let start = stored[0];
    let (mut stopped, mut restarted) = (false, false);
    let mut seen: Vec<Seen> = Vec::new();
    // the Age of every answer from the cache, for the time budget
    let mut ages: Vec<u64> = Vec::new();
    let (mut before_outage, mut during_outage) = (0, 0);
    for (at, i) in events {
        if !stopped && at >= start + Duration::from_secs_f64(outage_at) {
            tokio::time::sleep_until((start + Duration::from_secs_f64(outage_at)).into()).await;
            o.stop();
            before_outage = o.total();
            stopped = true;
        }
        if !restarted && at >= start + Duration::from_secs_f64(back_at) {
            during_outage = o.total() - before_outage;
            o.restart().await;
            restarted = true;
        }
        tokio::time::sleep_until(at.into()).await;
        let got = fetch(&v, &paths[i], &[]).await;
        let s = classify(&got);
        if s != Seen::Fetched {
            ages.push(got.age.unwrap_or(0));
        }
        seen.push(s);
    }
    assert_eq!(during_outage, 0, "nothing reached the stopped origin");

    // what the clients saw, by state
    let mut count: BTreeMap<&str, u64> = BTreeMap::new();
    let mut stale: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for s in &seen {
        let state = match s {
            Seen::Fresh => "fresh",
            Seen::Swr(p) => {
                stale.entry("stale-while-revalidate").or_default().push(*p);
                "stale-while-revalidate"
            }
            Seen::Sie(p) => {
                stale.entry("stale-if-error").or_default().push(*p);
                "stale-if-error"
            }
            Seen::Revalidated => "revalidated",
            Seen::Fetched => continue,
        };
        *count.entry(state).or_default() += 1;
    }
    let served: u64 = count.values().sum();
    eprintln!("soak: answers by state as the clients saw them: {count:?}");
    assert!(
        count["stale-while-revalidate"] >= 4 * URLS as u64,
        "{seen:?}"
    );
    assert!(count["stale-if-error"] >= 8 * URLS as u64, "{seen:?}");
    // each revalidated answer is a 304 the origin sent (a background refresh that got one
    // answers no client)
    let not_modified: u64 = paths.iter().map(|p| o.not_modified(p)).sum();
    assert!(
        count.get("revalidated").copied().unwrap_or(0) <= not_modified,
        "{count:?}, {not_modified} 304s"
    );

    let m = sum_eventually(
        &v,
        Duration::from_secs(5),
        "verge_cache_served_total",
        &[("class", "soak")],
        |n| n == served as f64,
    )
    .await;
    for state in [
        "fresh",
        "stale-while-revalidate",
        "stale-if-error",
        "revalidated",
    ] {
        assert_eq!(
            m.value(
                "verge_cache_served_total",
                &[("class", "soak"), ("state", state)]
            )
            .unwrap_or(0.0),
            count.get(state).copied().unwrap_or(0) as f64,
            "{state}: {seen:?}"
        );
    }
    // A client reading N whole seconds past expiry knows the answer was N to N+1 seconds
    // stale: every whole-second bucket is exact, the half-second one is bounded.
    for (state, pasts) in &stale {
        for le in [1u64, 2, 5, 10, 30] {
            let want = pasts.iter().filter(|p| **p < le).count() as f64;
            assert_eq!(bucket(&m, state, &le.to_string()), want, "{state} le={le}");
        }
        let half = bucket(&m, state, "0.5");
        let at_most = pasts.iter().filter(|p| **p == 0).count() as f64;
        assert!((0.0..=at_most).contains(&half), "{state} le=0.5: {half}");
        assert_eq!(bucket(&m, state, "+Inf"), pasts.len() as f64, "{state}");
        let sum = m
            .value(
                "verge_cache_served_stale_seconds_sum",
                &[("class", "soak"), ("state", state)],
            )
            .unwrap_or(0.0);
        let low: u64 = pasts.iter().sum();
        let high = low + pasts.len() as u64;
        assert!(
            (low as f64..high as f64).contains(&sum),
            "{state}: sum {sum} not in [{low}, {high})"
        );
    }
    assert_eq!(
        m.value("verge_cache_served_age_ratio_count", &[("class", "soak")]),
        Some(served as f64)
    );
    // the time budget: an answer whose Age read N was N to N+1 seconds old
    let soak = [("class", "soak")];
    assert_eq!(
        m.value("verge_content_class_budget_seconds", &soak),
        Some(BUDGET as f64)
    );
    let over = m
        .value("verge_cache_served_over_budget_total", &soak)
        .unwrap_or(0.0);
    let surely = ages.iter().filter(|a| **a > BUDGET).count() as f64;
    let maybe = ages.iter().filter(|a| **a >= BUDGET).count() as f64;
    assert!(
        (surely..=maybe).contains(&over) && surely > 0.0,
        "over budget {over}, clients saw {surely} to {maybe}"
    );
    assert_eq!(
        m.sum("verge_cache_served_after_invalidation_total", &[]),
        0.0
    );
}
