//! Served staleness: how fresh each answer from the cache was, per content class, and the check
//! that no answer came from an entry an applied invalidation had refused. Both are counted in
//! one place, the finish the hit lane and the full path share (`proxy::finish`), from the cache
//! phase that also gives `Cache-Status` and `verge_cache_lookups_total`.

use super::invalidation::index::{InvalidationIndex, Verdict};
use super::stored_meta::StoredHead;
use crate::config::classes::ContentClass;
use crate::metrics::{RouteCounters, CLASS_BUDGET_METRICS, METRICS};
use pingora_cache::CachePhase;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// How fresh an answer from the cache was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedState {
    /// A hit on a fresh entry (or one the request's `max-stale` accepted).
    Fresh,
    /// Stale, served while a background fetch refreshes it.
    StaleWhileRevalidate,
    /// Stale, served because the origin failed (stale-if-error, or stale-if-disconnected).
    StaleIfError,
    /// Stale, and the origin confirmed it (304) before it was served.
    Revalidated,
}

impl ServedState {
    /// The state of an answer that ended in `phase`; `None`: not an answer from the cache.
    pub fn of(phase: CachePhase) -> Option<ServedState> {
        match phase {
            CachePhase::Hit => Some(ServedState::Fresh),
            CachePhase::StaleUpdating => Some(ServedState::StaleWhileRevalidate),
            CachePhase::Stale => Some(ServedState::StaleIfError),
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => {
                Some(ServedState::Revalidated)
            }
            _ => None,
        }
    }

    /// The `state` label of `verge_cache_served_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServedState::Fresh => "fresh",
            ServedState::StaleWhileRevalidate => "stale-while-revalidate",
            ServedState::StaleIfError => "stale-if-error",
            ServedState::Revalidated => "revalidated",
        }
    }

    /// Whether the client got the entry past its expiry.
    fn stale(self) -> bool {
        matches!(
            self,
            ServedState::StaleWhileRevalidate | ServedState::StaleIfError
        )
    }
}

/// An answer from the cache, as its stored entry was when it was served.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// How fresh it was.
    pub state: ServedState,
    /// The entry's stored response head (its URL, tags and fetch time, for the check).
    pub header: &'a dyn StoredHead,
    /// When the entry was admitted.
    pub created: SystemTime,
    /// Its age when served.
    pub age: Duration,
    /// When it stops (or stopped) being fresh.
    pub fresh_until: SystemTime,
    /// When it was served: when the client got its head (and its `Cache-Status`).
    pub at: SystemTime,
}

impl Served<'_> {
    /// How long past its expiry it was served (zero while fresh).
    pub fn past_expiry(&self) -> Duration {
        self.at.duration_since(self.fresh_until).unwrap_or_default()
    }

    /// Its age ÷ its freshness lifetime (from when its age counts to its expiry); `None` for
    /// an entry with no lifetime at all (stored to be revalidated every time).
    pub fn age_ratio(&self) -> Option<f64> {
        let epoch = self.at.checked_sub(self.age)?;
        let lifetime = self.fresh_until.duration_since(epoch).ok()?;
        (!lifetime.is_zero()).then(|| self.age.as_secs_f64() / lifetime.as_secs_f64())
    }
}

/// Whether `served` came from an entry that an invalidation of `index` refuses: a hard one
/// reaching its URL or its tags, fetched before it. Such an answer is a bug;
/// `verge_cache_served_after_invalidation_total` counts them. `index` is the one the decision to
/// serve it read (`received`: `None`, every invalidation counts), or, where that is not known,
/// the node's current one with `received` the moment the request arrived (an invalidation
/// applied while the request was under way does not count).
pub fn refused_by_invalidation(
    index: &InvalidationIndex,
    served: &Served<'_>,
    received: Option<SystemTime>,
) -> bool {
    let headers = &served.header.header().headers;
    let Some((host, path_query)) = super::rfc9111::entry_url(headers) else {
        return false;
    };
    let verdict = super::invalidation_verdict(
        index,
        host,
        path_query,
        None,
        headers,
        served.created,
        received,
    );
    verdict == Verdict::Invalid
}

/// Count one answer from the cache on a route of content class `class` (`"none"`: no class),
/// for a request that arrived at `received`; `budget` is the class's staleness budget;
/// `counters`, the route's kept series (which label `class` too), spare the label lookups.
pub fn record(
    class: &str,
    counters: Option<&RouteCounters>,
    budget: Option<Duration>,
    served: &Served<'_>,
    received: Option<SystemTime>,
    index: &InvalidationIndex,
) {
    let state = served.state.as_str();
    match counters {
        Some(c) if served.state == ServedState::Fresh => c.served_fresh().inc(),
        _ => METRICS
            .cache_served
            .with_label_values(&[class, state])
            .inc(),
    }
    if budget.is_some_and(|b| served.age > b) {
        CLASS_BUDGET_METRICS
            .over_budget
            .with_label_values(&[class])
            .inc();
    }
    if served.state.stale() {
        METRICS
            .cache_served_stale
            .with_label_values(&[class, state])
            .observe(served.past_expiry().as_secs_f64());
    }
    if let Some(ratio) = served.age_ratio() {
        match counters {
            Some(c) => c.age_ratio().observe(ratio),
            None => METRICS
                .cache_served_age_ratio
                .with_label_values(&[class])
                .observe(ratio),
        }
    }
    if !index.is_empty() && refused_by_invalidation(index, served, received) {
        METRICS
            .cache_served_after_invalidation
            .with_label_values(&[class])
            .inc();
        log::error!(
            "served an entry of class {class} that an applied invalidation refuses (state {state})"
        );
    }
}

/// Export each class's budget (`verge_content_class_budget_seconds`), the classes of the
/// snapshot in force only.
pub fn publish_budgets(classes: &BTreeMap<String, ContentClass>) {
    let gauge = &CLASS_BUDGET_METRICS.budget;
    gauge.reset();
    for (name, class) in classes {
        gauge
            .with_label_values(&[name])
            .set(class.budget.as_secs_f64());
        // the counter is exported (at 0) from the start, for every class
        CLASS_BUDGET_METRICS.over_budget.with_label_values(&[name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::invalidation::{Invalidation, InvalidationKind};
    use pingora_http::ResponseHeader;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn stored(url: &str) -> ResponseHeader {
        let mut h = ResponseHeader::build(200, None).expect("head");
        h.insert_header(super::super::rfc9111::ENTRY_URL, url)
            .expect("entry url");
        h
    }

    fn purge(seq: u64, target: &str, soft: bool) -> Invalidation {
        Invalidation {
            seq,
            kind: InvalidationKind::Url,
            target: target.into(),
            soft,
            created_ms: 0,
            id: None,
            expected_version: None,
            nodes: None,
        }
    }

    #[test]
    fn states_follow_the_cache_phase() {
        use pingora_cache::NoCacheReason;
        let of = |p| ServedState::of(p).map(ServedState::as_str);
        assert_eq!(of(CachePhase::Hit), Some("fresh"));
        assert_eq!(
            of(CachePhase::StaleUpdating),
            Some("stale-while-revalidate")
        );
        assert_eq!(of(CachePhase::Stale), Some("stale-if-error"));
        assert_eq!(of(CachePhase::Revalidated), Some("revalidated"));
        assert_eq!(
            of(CachePhase::RevalidatedNoCache(
                NoCacheReason::OriginNotCache
            )),
            Some("revalidated")
        );
        for p in [CachePhase::Miss, CachePhase::Expired, CachePhase::Bypass] {
            assert_eq!(of(p), None);
        }
    }

    #[test]
    fn age_ratio_and_time_past_expiry() {
        let header = stored("a.com/x");
        // fetched at t(0) with an upstream Age of 10 s and max-age 60: fresh until t(50)
        let served = |age: u64, now: u64| {
            let s = Served {
                state: ServedState::StaleWhileRevalidate,
                header: &header,
                created: t(0),
                age: Duration::from_secs(age),
                fresh_until: t(50),
                at: t(now),
            };
            (s.age_ratio(), s.past_expiry())
        };
        assert_eq!(served(40, 30), (Some(40.0 / 60.0), Duration::ZERO));
        assert_eq!(served(90, 80), (Some(1.5), Duration::from_secs(30)));
        // no lifetime at all: no ratio
        let none = Served {
            state: ServedState::Revalidated,
            header: &header,
            created: t(0),
            age: Duration::ZERO,
            fresh_until: t(0) - Duration::from_secs(1),
            at: t(0),
        };
        assert_eq!(none.age_ratio(), None);
    }

    /// The counter of answers an applied invalidation should have refused can count: an entry
    /// fetched before a hard purge applied before the request arrived is such an answer.
    #[test]
    fn an_entry_older_than_an_applied_hard_purge_is_counted() {
        let header = stored("a.com/x");
        let served = Served {
            state: ServedState::Fresh,
            header: &header,
            created: t(0),
            age: Duration::from_secs(5),
            fresh_until: t(60),
            at: t(20),
        };
        let mut index = InvalidationIndex::default();
        assert!(!refused_by_invalidation(&index, &served, Some(t(20))));
        index
            .apply(&purge(1, "a.com/x", false), t(10))
            .expect("apply");
        // the purge was applied before the request arrived: a refused answer
        assert!(refused_by_invalidation(&index, &served, Some(t(20))));
        // a request that arrived before it was applied was right to get the entry
        assert!(!refused_by_invalidation(&index, &served, Some(t(5))));
        // judged by the index its decision read, every invalidation in it counts
        assert!(refused_by_invalidation(&index, &served, None));
        // an entry fetched after the purge is what the purge asked for
        let fresh = Served {
            created: t(11),
            ..served
        };
        assert!(!refused_by_invalidation(&index, &fresh, Some(t(20))));
        // another URL, or a soft purge (stale entries may answer), is not counted
        let other = stored("a.com/y");
        let other = Served {
            header: &other,
            ..served
        };
        assert!(!refused_by_invalidation(&index, &other, Some(t(20))));
        let mut soft = InvalidationIndex::default();
        soft.apply(&purge(1, "a.com/x", true), t(10))
            .expect("apply");
        assert!(!refused_by_invalidation(&soft, &served, Some(t(20))));

        // and `record` counts it in the metric, under the route's class
        let before = METRICS
            .cache_served_after_invalidation
            .with_label_values(&["test-refused"])
            .get();
        record("test-refused", None, None, &served, Some(t(20)), &index);
        record("test-refused", None, None, &fresh, Some(t(20)), &index);
        let after = METRICS
            .cache_served_after_invalidation
            .with_label_values(&["test-refused"])
            .get();
        assert_eq!(after - before, 1);
    }
}
