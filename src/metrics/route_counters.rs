//! A route's per-request series, each resolved from its vector once and then kept: a label
//! lookup hashes every label value and takes the vector's lock, and a hit counted up to seven of
//! them (issue #19's hot-hit profile: ~1,000 of a hit's ~19,600 instructions).

use super::{Metrics, RequestOutcome, METRICS};
use prometheus::{Histogram, IntCounter};
use std::sync::OnceLock;

/// The `result` values of `verge_cache_lookups_total`.
const LOOKUP_RESULTS: [&str; 8] = [
    "hit",
    "miss",
    "uncacheable",
    "stale",
    "stale_error",
    "expired",
    "revalidated",
    "bypass",
];
/// The `source` values of `verge_response_body_bytes_total`.
const BODY_SOURCES: [&str; 3] = ["cache", "origin", "local"];

/// One route's series (and its content class's, for answers from the cache), resolved on first
/// use. A snapshot's route holds one; a reload builds new ones, which resolve to the same
/// series, so counts carry on.
#[derive(Debug, Default)]
pub struct RouteCounters {
    route: String,
    class: String,
    ok: OnceLock<IntCounter>,
    lookups: [OnceLock<IntCounter>; LOOKUP_RESULTS.len()],
    bytes: [OnceLock<IntCounter>; BODY_SOURCES.len()],
    duration: OnceLock<Histogram>,
    fast_hits: OnceLock<IntCounter>,
    fast_passes: OnceLock<IntCounter>,
    served_fresh: OnceLock<IntCounter>,
    age_ratio: OnceLock<Histogram>,
}

impl RouteCounters {
    /// The series of route `route`, whose content class is `class` (`"none"`: no class).
    pub fn new(route: &str, class: &str) -> RouteCounters {
        RouteCounters {
            route: route.to_owned(),
            class: class.to_owned(),
            ..RouteCounters::default()
        }
    }

    /// Count one finished request of this route: `verge_requests_total` (the 200s' series
    /// kept), `verge_cache_lookups_total`, `verge_response_body_bytes_total` and
    /// `verge_request_duration_seconds`, as [`Metrics::record_request`] does by label.
    pub fn record(&self, m: &Metrics, o: &RequestOutcome<'_>) {
        let route = self.route.as_str();
        if o.status == 200 {
            self.ok
                .get_or_init(|| m.requests.with_label_values(&[route, "200"]))
                .inc();
        } else {
            let mut buf = itoa::Buffer::new();
            m.requests
                .with_label_values(&[route, buf.format(o.status)])
                .inc();
        }
        if let Some(result) = o.lookup {
            match LOOKUP_RESULTS.iter().position(|r| *r == result) {
                Some(i) => self.lookups[i]
                    .get_or_init(|| m.cache_lookups.with_label_values(&[route, result]))
                    .inc(),
                None => m.cache_lookups.with_label_values(&[route, result]).inc(),
            }
        }
        match BODY_SOURCES.iter().position(|s| *s == o.source) {
            Some(i) => self.bytes[i]
                .get_or_init(|| m.response_bytes.with_label_values(&[route, o.source]))
                .inc_by(o.body_bytes),
            None => m
                .response_bytes
                .with_label_values(&[route, o.source])
                .inc_by(o.body_bytes),
        }
        if let Some(elapsed) = o.elapsed {
            self.duration
                .get_or_init(|| m.request_duration.with_label_values(&[route]))
                .observe(elapsed.as_secs_f64());
        }
    }

    /// `verge_cache_fast_hits_total{route}`.
    pub fn fast_hits(&self) -> &IntCounter {
        self.fast_hits
            .get_or_init(|| METRICS.cache_fast_hits.with_label_values(&[&self.route]))
    }

    /// `verge_fast_passes_total{route}`.
    pub fn fast_passes(&self) -> &IntCounter {
        self.fast_passes
            .get_or_init(|| METRICS.fast_passes.with_label_values(&[&self.route]))
    }

    /// `verge_cache_served_total{class,state="fresh"}`.
    pub fn served_fresh(&self) -> &IntCounter {
        self.served_fresh.get_or_init(|| {
            METRICS
                .cache_served
                .with_label_values(&[&self.class, "fresh"])
        })
    }

    /// `verge_cache_served_age_ratio{class}`.
    pub fn age_ratio(&self) -> &Histogram {
        self.age_ratio.get_or_init(|| {
            METRICS
                .cache_served_age_ratio
                .with_label_values(&[&self.class])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_series_are_the_vectors_own() {
        let c = RouteCounters::new("rc-test", "rc-class");
        let outcome = |status, lookup, source| RequestOutcome {
            route: "rc-test",
            counters: None,
            status,
            lookup,
            source,
            body_bytes: 10,
            elapsed: Some(std::time::Duration::from_millis(500)),
        };
        c.record(&METRICS, &outcome(200, Some("hit"), "cache"));
        c.record(&METRICS, &outcome(200, None, "cache"));
        c.record(&METRICS, &outcome(404, Some("something-new"), "elsewhere"));
        c.fast_hits().inc();
        c.served_fresh().inc();
        c.age_ratio().observe(0.25);
        // a second set for the same route (a reload) counts into the same series, and so does
        // the lookup by label
        let again = RouteCounters::new("rc-test", "rc-class");
        again.record(&METRICS, &outcome(200, None, "cache"));
        METRICS.record_request(&outcome(200, None, "cache"));
        let m = &METRICS;
        assert_eq!(m.requests.with_label_values(&["rc-test", "200"]).get(), 4);
        assert_eq!(m.requests.with_label_values(&["rc-test", "404"]).get(), 1);
        assert_eq!(
            m.cache_lookups.with_label_values(&["rc-test", "hit"]).get(),
            1
        );
        let new = m
            .cache_lookups
            .with_label_values(&["rc-test", "something-new"]);
        assert_eq!(new.get(), 1);
        let cache = m.response_bytes.with_label_values(&["rc-test", "cache"]);
        assert_eq!(cache.get(), 40);
        let elsewhere = m
            .response_bytes
            .with_label_values(&["rc-test", "elsewhere"]);
        assert_eq!(elsewhere.get(), 10);
        let duration = m.request_duration.with_label_values(&["rc-test"]);
        assert_eq!(duration.get_sample_count(), 5);
        assert_eq!(m.cache_fast_hits.with_label_values(&["rc-test"]).get(), 1);
        assert_eq!(
            m.cache_served
                .with_label_values(&["rc-class", "fresh"])
                .get(),
            1
        );
        let ratio = m.cache_served_age_ratio.with_label_values(&["rc-class"]);
        assert_eq!(ratio.get_sample_count(), 1);
    }
}
