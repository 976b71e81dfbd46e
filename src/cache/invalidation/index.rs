//! The node's invalidation index: latest hard/soft invalidation time per URL, prefix, host, tag.
//!
//! A lookup costs a few hash probes (plus one per byte of the longest prefix purged on that
//! host), however long the invalidation log is: there is no ban list to scan.

use super::{parse_target, Invalidation, Target};
use crate::unix_time::{from_unix_ms, unix_ms};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// The latest hard and soft invalidation times recorded for one target, and the latest
/// version-guarded ones (a purge with `expected_version`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Mark {
    hard: Option<SystemTime>,
    soft: Option<SystemTime>,
    hard_guarded: Option<Guard>,
    soft_guarded: Option<Guard>,
}

/// A version-guarded invalidation: entries fetched before `at` are refused unless they carry
/// `version`. Only the latest is kept: the newest version known is the one to carry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Guard {
    at: SystemTime,
    version: String,
}

/// What an invalidation verdict reads of a stored entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryFacts<'a> {
    /// When its origin fetch started.
    pub created: SystemTime,
    /// Its version: the stored `ETag`, as [`version_of`](super::version_of) gives it.
    pub version: Option<&'a str>,
}

impl Mark {
    fn record(&mut self, soft: bool, at: SystemTime, version: Option<&str>) {
        match version {
            None => {
                let slot = if soft { &mut self.soft } else { &mut self.hard };
                *slot = Some(slot.map_or(at, |t| t.max(at)));
            }
            Some(v) => {
                let slot = if soft {
                    &mut self.soft_guarded
                } else {
                    &mut self.hard_guarded
                };
                if slot.as_ref().is_none_or(|g| g.at <= at) {
                    *slot = Some(Guard {
                        at,
                        version: super::version_of(v).to_string(),
                    });
                }
            }
        }
    }

    /// What this mark says about `entry`, counting only invalidations applied no later than
    /// `as_of` (`None`: all of them).
    fn verdict(&self, entry: &EntryFacts<'_>, as_of: Option<SystemTime>) -> Verdict {
        let applies = |t: &SystemTime| entry.created < *t && as_of.is_none_or(|cut| *t <= cut);
        let refuses = |g: &Guard| applies(&g.at) && entry.version != Some(g.version.as_str());
        if self.hard.as_ref().is_some_and(applies)
            || self.hard_guarded.as_ref().is_some_and(refuses)
        {
            return Verdict::Invalid;
        }
        let soft = self.soft.filter(applies);
        let guarded = self
            .soft_guarded
            .as_ref()
            .filter(|g| refuses(g))
            .map(|g| g.at);
        match soft.max(guarded) {
            Some(since) => Verdict::Stale { since },
            None => Verdict::Valid,
        }
    }
}

/// Whether a stored entry may still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No invalidation applies.
    Valid,
    /// A soft invalidation applies: stale since `since` (revalidate; SWR/SIE may serve it).
    Stale {
        /// When the newest applying invalidation was applied.
        since: SystemTime,
    },
    /// A hard invalidation applies: refetch.
    Invalid,
}

impl Verdict {
    /// The stricter of two verdicts (invalid > stale > valid).
    pub fn stronger(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Invalid, _) | (_, Verdict::Invalid) => Verdict::Invalid,
            (Verdict::Stale { since: a }, Verdict::Stale { since: b }) => {
                Verdict::Stale { since: a.max(b) }
            }
            (s @ Verdict::Stale { .. }, _) | (_, s @ Verdict::Stale { .. }) => s,
            _ => Verdict::Valid,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct HostMarks {
    whole: Mark,
    urls: HashMap<String, Mark>,
    prefixes: HashMap<String, Mark>,
    longest_prefix: usize,
}

/// An invalidation together with the moment this node applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedInvalidation {
    /// The invalidation.
    #[serde(flatten)]
    pub invalidation: Invalidation,
    /// When this node applied it (Unix milliseconds).
    pub applied_ms: u64,
}

/// Every invalidation a node has applied, indexed for lookups on the hit path.
#[derive(Debug, Clone, Default)]
pub struct InvalidationIndex {
    hosts: HashMap<String, HostMarks>,
    tags: HashMap<String, Mark>,
    all: Mark,
    applied: Vec<AppliedInvalidation>,
}

impl InvalidationIndex {
    /// Record an invalidation applied at `applied_at`. Fails only for an unusable target.
    pub fn apply(&mut self, inv: &Invalidation, applied_at: SystemTime) -> Result<(), String> {
        let target = parse_target(inv.kind, &inv.target)?;
        let applied_ms = unix_ms(applied_at);
        if matches!(target, Target::Host(_) | Target::All) {
            self.drop_covered(&target, inv.soft, applied_ms);
        }
        self.record(&target, inv, applied_at);
        self.applied.push(AppliedInvalidation {
            invalidation: inv.clone(),
            applied_ms,
        });
        Ok(())
    }

    /// Forget the invalidations that `broad` (a host or everything, applied at `at_ms`) makes
    /// redundant: those it reaches, applied no later, and no harder (a soft one does not cover
    /// a hard one). Verdicts stay the same, and the index stays compact however many URL purges
    /// a host purge follows.
    fn drop_covered(&mut self, broad: &Target, soft: bool, at_ms: u64) {
        let before = self.applied.len();
        self.applied.retain(|a| {
            let inv = &a.invalidation;
            let covered = a.applied_ms <= at_ms
                && (!soft || inv.soft)
                && parse_target(inv.kind, &inv.target).is_ok_and(|t| reaches(broad, &t));
            !covered
        });
        if self.applied.len() != before {
            *self = InvalidationIndex::from_applied(std::mem::take(&mut self.applied));
        }
    }

    fn record(&mut self, target: &Target, inv: &Invalidation, at: SystemTime) {
        let (soft, version) = (inv.soft, inv.expected_version.as_deref());
        match target {
            Target::All => self.all.record(soft, at, version),
            Target::Tag(t) => self
                .tags
                .entry(t.clone())
                .or_default()
                .record(soft, at, version),
            Target::Host(h) => self
                .hosts
                .entry(h.clone())
                .or_default()
                .whole
                .record(soft, at, version),
            Target::Url { host, path_query } => self
                .hosts
                .entry(host.clone())
                .or_default()
                .urls
                .entry(path_query.clone())
                .or_default()
                .record(soft, at, version),
            Target::Prefix { host, prefix } => {
                let marks = self.hosts.entry(host.clone()).or_default();
                marks.longest_prefix = marks.longest_prefix.max(prefix.len());
                marks
                    .prefixes
                    .entry(prefix.clone())
                    .or_default()
                    .record(soft, at, version);
            }
        }
    }

    /// Rebuild from previously applied invalidations (a persisted snapshot), keeping their
    /// original application times. Entries with unusable targets are skipped.
    pub fn from_applied(list: Vec<AppliedInvalidation>) -> InvalidationIndex {
        let mut index = InvalidationIndex::default();
        for a in list {
            if let Ok(target) = parse_target(a.invalidation.kind, &a.invalidation.target) {
                index.record(&target, &a.invalidation, from_unix_ms(a.applied_ms));
                index.applied.push(a);
            }
        }
        index
    }

    /// The same index without invalidations applied more than `retention` before `now`.
    pub fn pruned(&self, now: SystemTime, retention: Duration) -> InvalidationIndex {
        let cutoff = unix_ms(now.checked_sub(retention).unwrap_or(SystemTime::UNIX_EPOCH));
        if self.applied.iter().all(|a| a.applied_ms >= cutoff) {
            return self.clone();
        }
        InvalidationIndex::from_applied(
            self.applied
                .iter()
                .filter(|a| a.applied_ms >= cutoff)
                .cloned()
                .collect(),
        )
    }

    /// Whether an entry for `host` + `path_query`, tagged `tags`, whose origin fetch started
    /// at `created`, may still be used.
    pub fn verdict<'a>(
        &self,
        host: &str,
        path_query: &str,
        tags: impl Iterator<Item = &'a str>,
        created: SystemTime,
    ) -> Verdict {
        let entry = EntryFacts {
            created,
            version: None,
        };
        self.verdict_as_of(host, path_query, tags, &entry, None)
    }

    /// [`verdict`](Self::verdict) counting only the invalidations this node applied no later
    /// than `as_of` (`None`: all): what the index said when a request arrived, for the check
    /// that no answer came from an entry it refused (`cache::freshness`). As marks keep the
    /// latest time per target, a target purged again after `as_of` hides its earlier purge:
    /// the check may miss such an answer, never count a right one.
    pub fn verdict_as_of<'a>(
        &self,
        host: &str,
        path_query: &str,
        tags: impl Iterator<Item = &'a str>,
        entry: &EntryFacts<'_>,
        as_of: Option<SystemTime>,
    ) -> Verdict {
        let mut v = self.all.verdict(entry, as_of);
        if let Some(h) = self.hosts.get(host) {
            v = v.stronger(h.whole.verdict(entry, as_of));
            if let Some(m) = h.urls.get(path_query) {
                v = v.stronger(m.verdict(entry, as_of));
            }
            if !h.prefixes.is_empty() {
                let limit = h.longest_prefix.min(path_query.len());
                for end in (1..=limit).filter(|&e| segment_boundary(path_query, e)) {
                    if let Some(m) = h.prefixes.get(&path_query[..end]) {
                        v = v.stronger(m.verdict(entry, as_of));
                    }
                }
            }
        }
        if !self.tags.is_empty() {
            for t in tags {
                if let Some(m) = self.tags.get(t) {
                    v = v.stronger(m.verdict(entry, as_of));
                }
            }
        }
        v
    }

    /// Invalidations applied so far, oldest first (what a node persists).
    pub fn applied(&self) -> &[AppliedInvalidation] {
        &self.applied
    }

    /// How many invalidations are remembered.
    pub fn len(&self) -> usize {
        self.applied.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty()
    }
}

/// Whether a host or all-purge `broad` reaches every entry `other` reaches.
fn reaches(broad: &Target, other: &Target) -> bool {
    match (broad, other) {
        (Target::All, _) => true,
        (Target::Host(h), Target::Host(o)) => h == o,
        (Target::Host(h), Target::Url { host, .. } | Target::Prefix { host, .. }) => h == host,
        _ => false,
    }
}

/// Whether `path_query[..end]` ends on a path-segment boundary, so that a prefix purge of it
/// reaches this URL as routing would: `/static` reaches `/static`, `/static/a` and
/// `/static?v=1`, never `/static-private/a`; a prefix ending in `/` reaches what is under it.
fn segment_boundary(path_query: &str, end: usize) -> bool {
    if !path_query.is_char_boundary(end) {
        return false;
    }
    let (prefix, rest) = path_query.split_at(end);
    prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?'])
}

/// Tags a stored response carries, from `Surrogate-Key` (space separated), `Cache-Tag` (comma
/// separated) or `Cache-Groups` (RFC 9875, a list of quoted strings).
pub fn response_tags<'a>(
    headers: &'a http::HeaderMap,
    names: &'a [http::HeaderName],
) -> impl Iterator<Item = &'a str> + 'a {
    names
        .iter()
        .flat_map(move |n| headers.get_all(n).iter())
        // UTF-8, not only visible ASCII (`to_str`): the control plane accepts such tags
        .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
        .flat_map(|v| v.split([',', ' ', '\t']))
        .map(|t| t.trim().trim_matches('"'))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::invalidation::InvalidationKind;

    fn inv(seq: u64, kind: InvalidationKind, target: &str, soft: bool) -> Invalidation {
        Invalidation {
            seq,
            kind,
            target: target.into(),
            soft,
            created_ms: 0,
            id: None,
            expected_version: None,
            nodes: None,
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn only_entries_fetched_before_the_invalidation_are_hit() {
        let mut ix = InvalidationIndex::default();
        ix.apply(&inv(1, InvalidationKind::Url, "a.com/x?1", false), t(10))
            .unwrap();
        let none = std::iter::empty();
        assert_eq!(
            ix.verdict("a.com", "/x?1", none.clone(), t(9)),
            Verdict::Invalid
        );
        assert_eq!(
            ix.verdict("a.com", "/x?1", none.clone(), t(11)),
            Verdict::Valid
        );
        assert_eq!(
            ix.verdict("a.com", "/x?2", none.clone(), t(9)),
            Verdict::Valid
        );
        assert_eq!(ix.verdict("b.com", "/x?1", none, t(9)), Verdict::Valid);
    }

    #[test]
    fn kinds_match_what_they_should() {
        let mut ix = InvalidationIndex::default();
        ix.apply(
            &inv(1, InvalidationKind::Prefix, "a.com/img/", false),
            t(10),
        )
        .unwrap();
        ix.apply(&inv(2, InvalidationKind::Host, "B.com", true), t(10))
            .unwrap();
        ix.apply(&inv(3, InvalidationKind::Tag, "product-1", false), t(10))
            .unwrap();
        let none = || std::iter::empty();
        assert_eq!(
            ix.verdict("a.com", "/img/1.png", none(), t(1)),
            Verdict::Invalid
        );
        assert_eq!(ix.verdict("a.com", "/img", none(), t(1)), Verdict::Valid);
        // on path-segment boundaries, as routing matches prefixes
        ix.apply(
            &inv(5, InvalidationKind::Prefix, "a.com/static", false),
            t(10),
        )
        .unwrap();
        for hit in ["/static", "/static/a.css", "/static?v=1"] {
            assert_eq!(
                ix.verdict("a.com", hit, none(), t(1)),
                Verdict::Invalid,
                "{hit}"
            );
        }
        for miss in ["/static-private/a", "/staticx", "/stat"] {
            assert_eq!(
                ix.verdict("a.com", miss, none(), t(1)),
                Verdict::Valid,
                "{miss}"
            );
        }
        assert_eq!(ix.verdict("a.com", "/css/x", none(), t(1)), Verdict::Valid);
        assert_eq!(
            ix.verdict("b.com", "/anything", none(), t(1)),
            Verdict::Stale { since: t(10) }
        );
        let tags = ["x", "product-1"];
        assert_eq!(
            ix.verdict("c.com", "/", tags.into_iter(), t(1)),
            Verdict::Invalid
        );
        assert_eq!(
            ix.verdict("c.com", "/", ["y"].into_iter(), t(1)),
            Verdict::Valid
        );
        ix.apply(&inv(4, InvalidationKind::All, "", false), t(20))
            .unwrap();
        assert_eq!(ix.verdict("z.com", "/", none(), t(15)), Verdict::Invalid);
        assert_eq!(ix.verdict("z.com", "/", none(), t(25)), Verdict::Valid);
    }

    #[test]
    fn a_broader_later_purge_replaces_what_it_covers() {
        let mut ix = InvalidationIndex::default();
        for (i, url) in ["a.com/1", "a.com/2", "b.com/1"].iter().enumerate() {
            ix.apply(&inv(i as u64 + 1, InvalidationKind::Url, url, false), t(10))
                .unwrap();
        }
        ix.apply(&inv(4, InvalidationKind::Prefix, "a.com/p", true), t(10))
            .unwrap();
        ix.apply(&inv(5, InvalidationKind::Tag, "x", false), t(10))
            .unwrap();
        // a soft host purge covers the soft prefix, not the hard URLs
        ix.apply(&inv(6, InvalidationKind::Host, "a.com", true), t(20))
            .unwrap();
        assert_eq!(ix.len(), 5);
        // a hard one covers every earlier purge of the host
        ix.apply(&inv(7, InvalidationKind::Host, "a.com", false), t(30))
            .unwrap();
        let seqs: Vec<u64> = ix.applied().iter().map(|a| a.invalidation.seq).collect();
        assert_eq!(seqs, [3, 5, 7]);
        let none = || std::iter::empty();
        assert_eq!(ix.verdict("a.com", "/1", none(), t(25)), Verdict::Invalid);
        assert_eq!(ix.verdict("a.com", "/1", none(), t(35)), Verdict::Valid);
        assert_eq!(ix.verdict("b.com", "/1", none(), t(5)), Verdict::Invalid);
        assert_eq!(
            ix.verdict("c.com", "/", ["x"].into_iter(), t(5)),
            Verdict::Invalid
        );
        // everything, hard, leaves itself alone
        ix.apply(&inv(8, InvalidationKind::All, "", false), t(40))
            .unwrap();
        let seqs: Vec<u64> = ix.applied().iter().map(|a| a.invalidation.seq).collect();
        assert_eq!(seqs, [8]);
        assert_eq!(ix.verdict("b.com", "/1", none(), t(35)), Verdict::Invalid);
    }

    #[test]
    fn a_version_guarded_purge_keeps_entries_that_carry_the_version() {
        let guarded = |seq, version: &str, soft| Invalidation {
            expected_version: Some(version.into()),
            nodes: None,
            ..inv(seq, InvalidationKind::Url, "a.com/x", soft)
        };
        let entry = |created, version| EntryFacts { created, version };
        let verdict = |ix: &InvalidationIndex, e: EntryFacts<'_>| {
            ix.verdict_as_of("a.com", "/x", std::iter::empty(), &e, None)
        };
        let mut ix = InvalidationIndex::default();
        ix.apply(&guarded(1, "\"v2\"", false), t(10)).unwrap();
        // older versions, and entries without one, go
        assert_eq!(verdict(&ix, entry(t(5), Some("v1"))), Verdict::Invalid);
        assert_eq!(verdict(&ix, entry(t(5), None)), Verdict::Invalid);
        // an entry that already carries the new version stays, however old its fetch
        assert_eq!(verdict(&ix, entry(t(5), Some("v2"))), Verdict::Valid);
        assert_eq!(verdict(&ix, entry(t(15), Some("v1"))), Verdict::Valid);
        // a late duplicate of the same purge does not evict what was fetched since
        ix.apply(&guarded(2, "W/\"v2\"", false), t(20)).unwrap();
        assert_eq!(verdict(&ix, entry(t(15), Some("v2"))), Verdict::Valid);
        assert_eq!(verdict(&ix, entry(t(15), Some("v1"))), Verdict::Invalid);
        // a newer version supersedes it
        ix.apply(&guarded(3, "v3", false), t(30)).unwrap();
        assert_eq!(verdict(&ix, entry(t(25), Some("v2"))), Verdict::Invalid);
        assert_eq!(verdict(&ix, entry(t(25), Some("v3"))), Verdict::Valid);
        // the guard survives a rebuild from what was applied (the state file)
        let again = InvalidationIndex::from_applied(ix.applied().to_vec());
        assert_eq!(verdict(&again, entry(t(25), Some("v3"))), Verdict::Valid);
        assert_eq!(verdict(&again, entry(t(25), Some("v2"))), Verdict::Invalid);
        // soft: stale unless it carries the version; a plain purge ignores versions
        let mut soft = InvalidationIndex::default();
        soft.apply(&guarded(1, "v2", true), t(10)).unwrap();
        assert_eq!(
            verdict(&soft, entry(t(5), Some("v1"))),
            Verdict::Stale { since: t(10) }
        );
        assert_eq!(verdict(&soft, entry(t(5), Some("v2"))), Verdict::Valid);
        soft.apply(&inv(2, InvalidationKind::Url, "a.com/x", false), t(12))
            .unwrap();
        assert_eq!(verdict(&soft, entry(t(5), Some("v2"))), Verdict::Invalid);
    }

    #[test]
    fn hard_beats_soft_and_latest_time_wins() {
        let mut ix = InvalidationIndex::default();
        ix.apply(&inv(1, InvalidationKind::Url, "a.com/x", true), t(30))
            .unwrap();
        ix.apply(&inv(2, InvalidationKind::Url, "a.com/x", false), t(10))
            .unwrap();
        let none = || std::iter::empty();
        assert_eq!(ix.verdict("a.com", "/x", none(), t(5)), Verdict::Invalid);
        assert_eq!(
            ix.verdict("a.com", "/x", none(), t(20)),
            Verdict::Stale { since: t(30) }
        );
        assert_eq!(ix.verdict("a.com", "/x", none(), t(31)), Verdict::Valid);
    }

    #[test]
    fn rebuild_and_prune_keep_application_times() {
        let mut ix = InvalidationIndex::default();
        ix.apply(&inv(1, InvalidationKind::Host, "a.com", false), t(10))
            .unwrap();
        ix.apply(&inv(2, InvalidationKind::Host, "b.com", false), t(100))
            .unwrap();
        let again = InvalidationIndex::from_applied(ix.applied().to_vec());
        let none = || std::iter::empty();
        assert_eq!(again.verdict("a.com", "/", none(), t(5)), Verdict::Invalid);
        assert_eq!(again.verdict("a.com", "/", none(), t(15)), Verdict::Valid);
        let pruned = ix.pruned(t(120), Duration::from_secs(50));
        assert_eq!(pruned.len(), 1);
        assert_eq!(pruned.verdict("a.com", "/", none(), t(5)), Verdict::Valid);
        assert_eq!(pruned.verdict("b.com", "/", none(), t(5)), Verdict::Invalid);
    }

    #[test]
    fn tags_from_all_three_headers() {
        let mut h = http::HeaderMap::new();
        h.insert("surrogate-key", "a b  c".parse().unwrap());
        h.insert("cache-tag", "d,e".parse().unwrap());
        h.insert("cache-groups", "\"f\", \"g\"".parse().unwrap());
        let names = [
            http::HeaderName::from_static("surrogate-key"),
            http::HeaderName::from_static("cache-tag"),
            http::HeaderName::from_static("cache-groups"),
        ];
        let tags: Vec<&str> = response_tags(&h, &names).collect();
        assert_eq!(tags, ["a", "b", "c", "d", "e", "f", "g"]);
    }

    /// Found by the `snapshot` fuzz target (fuzz/corpus/snapshot/bug-*): the control plane
    /// accepts a purge of tag "café", which used to never match, because non-ASCII header
    /// values were skipped.
    #[test]
    fn utf8_tags_can_be_purged() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "surrogate-key",
            http::HeaderValue::from_bytes("café x".as_bytes()).unwrap(),
        );
        let names = [http::HeaderName::from_static("surrogate-key")];
        assert_eq!(response_tags(&h, &names).collect::<Vec<_>>(), ["café", "x"]);
        let mut ix = InvalidationIndex::default();
        ix.apply(&inv(1, InvalidationKind::Tag, "café", false), t(10))
            .unwrap();
        assert_eq!(
            ix.verdict("a.com", "/", response_tags(&h, &names), t(5)),
            Verdict::Invalid
        );
    }
}
