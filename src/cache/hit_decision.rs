//! May a stored entry answer a request as it is? One decision, called by the hit lane and by the
//! full path alike: invalidations first (a purged entry is never served as fresh, whatever the
//! client asks), then the request's credentials, then its cache directives.

use super::invalidation::index::{InvalidationIndex, Verdict};
use super::key_rules::key_path_and_query;
use super::request_directives::{self, HitVerdict, RequestDirectives};
use super::stored_meta::StoredHead;
use crate::config::RouteCache;
use std::time::{Duration, SystemTime};

/// What a stored entry may do for a request, beyond its own freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitDecision {
    /// Nothing applies: the entry answers by its own freshness (fresh: as it is; stale: the
    /// usual rules, stale-while-revalidate or a refetch).
    AsStored,
    /// A hard invalidation applies: refetch.
    Invalidated,
    /// The request carries credentials and the entry is not marked for sharing with such
    /// requests (RFC 9111 §3.5): fetch for this request, leave the entry for the others.
    NotShared,
    /// A soft invalidation applies: stale since `since` (revalidate; SWR/SIE windows apply).
    SoftInvalidated {
        /// When the newest applying invalidation was applied.
        since: SystemTime,
    },
    /// The request's directives do not accept it without validation.
    Revalidate,
    /// Stale, but within what the request accepts (`max-stale`): serve it as it is.
    ServeStale,
}

/// The stored entry a request found, as the decision reads it.
#[derive(Debug, Clone, Copy)]
pub struct StoredEntry<'a> {
    /// Its stored response head (read only when an invalidation, the request's credentials or
    /// its directives call for it).
    pub header: &'a dyn StoredHead,
    /// When it was admitted (its recorded fetch start counts instead, when there is one).
    pub created: SystemTime,
    /// Its age now.
    pub age: Duration,
    /// When it stops being fresh.
    pub fresh_until: SystemTime,
}

/// Decide for a request for `host` + `path_and_query` on a route with cache `rules`, carrying
/// `directives`. The URL is checked against invalidations both as requested and as the route's
/// key rules normalise it, so a purge of `/a` reaches `/a?utm=1` on a route that ignores the
/// query. Counts nothing.
pub fn decide(
    index: &InvalidationIndex,
    host: &str,
    path_and_query: &str,
    rules: &RouteCache,
    directives: &RequestDirectives,
    entry: StoredEntry<'_>,
    now: SystemTime,
) -> HitDecision {
    if !index.is_empty() {
        let key_pq = key_path_and_query(path_and_query, &rules.key.query);
        let verdict = super::invalidation_verdict(
            index,
            host,
            path_and_query,
            Some(&key_pq),
            &entry.header.header().headers,
            entry.created,
            None,
        );
        match verdict {
            Verdict::Valid => {}
            Verdict::Stale { since } => return HitDecision::SoftInvalidated { since },
            Verdict::Invalid => return HitDecision::Invalidated,
        }
    }
    if directives.credentials && !entry.header.shared_with_credentials() {
        return HitDecision::NotShared;
    }
    if directives.is_empty() {
        return HitDecision::AsStored;
    }
    match request_directives::hit_verdict(
        directives,
        entry.age,
        entry.fresh_until,
        entry.header.forbids_stale(),
        now,
    ) {
        HitVerdict::AsStored => HitDecision::AsStored,
        HitVerdict::Revalidate => HitDecision::Revalidate,
        HitVerdict::ServeStale => HitDecision::ServeStale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::invalidation::{Invalidation, InvalidationKind};
    use crate::cache::request_directives::MaxStale;
    use pingora_http::ResponseHeader;

    fn entry(
        header: &ResponseHeader,
        created: SystemTime,
        fresh_until: SystemTime,
    ) -> StoredEntry<'_> {
        StoredEntry {
            header,
            created,
            age: Duration::from_secs(1),
            fresh_until,
        }
    }

    #[test]
    fn invalidations_come_before_what_the_client_accepts() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let header = ResponseHeader::build(200, None).expect("resp");
        let rules = RouteCache::default();
        let mut index = InvalidationIndex::default();
        let stale_ok = RequestDirectives {
            max_stale: Some(MaxStale::Any),
            ..RequestDirectives::default()
        };
        let e = entry(&header, t0, t0 + Duration::from_secs(60));
        assert_eq!(
            decide(&index, "a", "/x", &rules, &stale_ok, e, t0),
            HitDecision::AsStored
        );
        index
            .apply(
                &Invalidation {
                    seq: 1,
                    kind: InvalidationKind::Url,
                    target: "a/x".into(),
                    soft: false,
                    created_ms: 0,
                    id: None,
                    expected_version: None,
                    nodes: None,
                },
                t0 + Duration::from_secs(1),
            )
            .expect("apply");
        assert_eq!(
            decide(&index, "a", "/x", &rules, &stale_ok, e, t0),
            HitDecision::Invalidated
        );
        let no_cache = RequestDirectives {
            no_cache: true,
            ..RequestDirectives::default()
        };
        assert_eq!(
            decide(&index, "a", "/y", &rules, &no_cache, e, t0),
            HitDecision::Revalidate
        );
        let stale = entry(&header, t0, t0 - Duration::from_secs(5));
        assert_eq!(
            decide(&index, "a", "/y", &rules, &stale_ok, stale, t0),
            HitDecision::ServeStale
        );
        // credentials: only an entry marked for sharing answers, and invalidations still
        // come first
        let credentials = RequestDirectives {
            credentials: true,
            ..RequestDirectives::default()
        };
        assert_eq!(
            decide(&index, "a", "/y", &rules, &credentials, e, t0),
            HitDecision::NotShared
        );
        assert_eq!(
            decide(&index, "a", "/x", &rules, &credentials, e, t0),
            HitDecision::Invalidated
        );
        for cc in [
            "public, max-age=9",
            "s-maxage=9",
            "max-age=9, must-revalidate",
        ] {
            let mut shared = ResponseHeader::build(200, None).expect("resp");
            shared.insert_header("cache-control", cc).expect("h");
            let e = entry(&shared, t0, t0 + Duration::from_secs(60));
            assert_eq!(
                decide(&index, "a", "/y", &rules, &credentials, e, t0),
                HitDecision::AsStored,
                "{cc}"
            );
        }
    }
}
