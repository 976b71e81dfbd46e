//! The shared HTTP cache: storage, eviction and miss-collapsing lock (built once per process),
//! the cache key, Vary variants, and the RFC 9111 policy (responses, request directives,
//! invalidation).

pub mod cache_status;
pub mod collapse;
pub mod disk;
pub mod early_refresh;
pub mod eviction;
pub mod fill;
pub mod freshness;
pub mod hit_decision;
pub mod http_date;
pub mod invalidation;
pub mod key_rules;
pub mod pending;
#[cfg(test)]
mod pressure;
pub mod request_directives;
pub mod request_view;
pub mod rfc9111;
pub mod storage;
pub mod stored_meta;
pub mod structured_field;
pub mod unsafe_methods;
#[cfg(test)]
mod xorshift;

/// A hash map keyed by cache-key hashes (or the entry ids derived from them), hashed with
/// foldhash's randomly seeded quality hasher: a hit looks keys up about seven times, and the
/// standard SipHash cost ~150 instructions each (issue #19's hot-hit profile). Still seeded per
/// process, so a client cannot pick URLs that collide in the table.
pub type KeyMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

use crate::cache::invalidation::index::{response_tags, EntryFacts, InvalidationIndex, Verdict};
use crate::config::{CacheKeyRules, CacheSettings};
use crate::metrics::METRICS;
use eviction::S3FifoEviction;
use pingora_cache::eviction::{CacheEntryKeyRef, EvictionManager};
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::predictor::Predictor;
use pingora_cache::{CacheKey, CacheMeta, VarianceBuilder};
use pingora_cache::{ForcedFreshness, HttpCache, NoCacheReason};
use pingora_http::RequestHeader;
use storage::MemoryStorage;

/// Everything `HttpCache::enable` needs, all `'static` as pingora-cache requires.
pub struct CacheEngine {
    /// Entries: meta and body, byte-budgeted.
    pub storage: &'static MemoryStorage,
    /// Which entries to keep when over budget (S3-FIFO with TinyLFU admission).
    pub eviction: &'static S3FifoEviction,
    /// Miss collapsing: one fetch per key, others wait.
    pub lock: &'static CacheKeyLockImpl,
    /// Hit-for-pass: URLs whose last response was uncacheable for a lasting reason skip the
    /// lookup and the miss lock until a response says otherwise (LRU, 16 × 4096 URLs).
    pub predictor: &'static Predictor<16>,
    /// The disk tier under memory (`cache.disk`), if configured.
    pub disk: Option<&'static disk::DiskStore>,
    /// Keys being refreshed early (XFetch) right now: one refresh per key at a time.
    pub refreshing: &'static early_refresh::RefreshSet,
    /// The `cache:` block it was built from.
    pub settings: CacheSettings,
}

impl std::fmt::Debug for CacheEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheEngine")
            .field("settings", &self.settings)
            .finish()
    }
}

impl CacheEngine {
    /// Build the engine. Its parts live for the rest of the process (leaked once at startup).
    /// A disk tier that cannot be opened (its directory cannot be created or read) is an error.
    pub fn new(settings: CacheSettings) -> std::io::Result<&'static CacheEngine> {
        let memory = usize::try_from(settings.memory).unwrap_or(usize::MAX);
        let max_object = usize::try_from(settings.max_object_size).unwrap_or(usize::MAX);
        let eviction: &'static S3FifoEviction =
            Box::leak(Box::new(S3FifoEviction::new(memory, max_object)));
        let lock: &'static CacheKeyLockImpl =
            Box::leak(CacheLock::new_boxed(settings.lock_timeout));
        let predictor: &'static Predictor<16> = Box::leak(Box::new(Predictor::new(
            4096,
            Some(rfc9111::transient_no_cache_reason),
        )));
        let disk = match &settings.disk {
            Some(d) => Some(disk::DiskStore::open(d.clone())?),
            None => None,
        };
        let mut storage = MemoryStorage::new(max_object)
            .with_eviction(eviction)
            .with_predictor(predictor);
        if let Some(disk) = disk {
            storage = storage.with_disk(disk);
        }
        let storage: &'static MemoryStorage = Box::leak(Box::new(storage));
        if let Some(disk) = disk {
            disk.promote_into(storage);
        }
        Ok(Box::leak(Box::new(CacheEngine {
            storage,
            eviction,
            lock,
            predictor,
            disk,
            refreshing: Box::leak(Box::default()),
            settings,
        })))
    }

    /// The largest body the cache stores: `cache.max_object_size`, or the disk tier's own cap
    /// when it is larger (such bodies stream to disk).
    pub fn max_stored_body(&self) -> usize {
        let disk = self.disk.map_or(0, |d| d.max_object_size());
        usize::try_from(self.settings.max_object_size.max(disk)).unwrap_or(usize::MAX)
    }

    /// Bytes the eviction manager accounts for (headers + body + overhead).
    pub fn tracked_bytes(&self) -> usize {
        self.eviction.total_size()
    }

    /// Objects evicted so far to stay under the memory budget.
    pub fn evicted_items(&self) -> usize {
        self.eviction.evicted_items()
    }

    /// New objects turned away by admission (less popular than what they would replace, or
    /// larger than a shard's budget); the storage drops them again.
    pub fn rejected_items(&self) -> usize {
        self.eviction.rejected_items()
    }

    /// Remove a URL (the key's primary part) with every stored variant, from storage and from
    /// the eviction manager's accounting. Returns how many entries went.
    pub fn invalidate(&self, key: &CacheKey) -> usize {
        let (removed, on_disk) = self.storage.remove_all_variants(&key.primary_bin());
        for k in &removed {
            self.eviction
                .remove(CacheEntryKeyRef::from_entry_id(k, None));
        }
        // an object may be in both tiers: counted once
        removed.len().max(on_disk)
    }

    /// The response of a request that is filling the cache failed before it reached the client
    /// (an `on_response` filter error): keep it out of the cache. With streaming, the body may
    /// already be complete and stored by then (a small one arrives with its head), so the entry
    /// is removed; a fill still in flight is kept from being stored (pingora also drops its
    /// miss handler when the request fails, which ends the fill with an error for its readers).
    pub fn discard_fill_of(&self, cache: &HttpCache) {
        let writing = matches!(
            cache.phase(),
            pingora_cache::CachePhase::Miss | pingora_cache::CachePhase::Expired
        );
        if !cache.enabled() || !writing {
            return;
        }
        if let Some(k) = self.storage.discard(&cache.cache_key().combined_bin()) {
            self.eviction
                .remove(CacheEntryKeyRef::from_entry_id(&k, None));
        }
    }

    /// Whether a response may be stored under `key` without exceeding `max_variants` for its
    /// URL: always when it replaces an entry already stored there.
    pub fn admits_variant(&self, key: &CacheKey, max_variants: usize) -> bool {
        self.storage.variant_count(&key.primary_bin()) < max_variants
            || self.storage.contains(&key.combined_bin())
    }
}

impl CacheEngine {
    /// Remove from memory and from the disk tier every entry a hard invalidation in `index`
    /// makes unusable, so purged bytes come back without waiting for a request or eviction
    /// (blocking: the disk tier's sweep reads each object's stored headers). Returns how many
    /// went (an object in both tiers counts twice).
    pub fn reclaim(&self, index: &InvalidationIndex) -> usize {
        let invalid = |headers: &http::HeaderMap, created| {
            let Some((host, pq)) = rfc9111::entry_url(headers) else {
                return false;
            };
            invalidation_verdict(index, host, pq, None, headers, created, None) == Verdict::Invalid
        };
        let removed = self
            .storage
            .remove_where(|stored| invalid(&stored.header().headers, stored.created()));
        for k in &removed {
            self.eviction
                .remove(CacheEntryKeyRef::from_entry_id(k, None));
        }
        let on_disk = self.disk.map_or(0, |disk| {
            disk.remove_where(|meta| invalid(meta.headers(), meta.created()))
        });
        removed.len() + on_disk
    }
}

/// Leave the `cache.max_object_size` check of a response without `Content-Length` to
/// [`MemoryStorage`], which streams such a body to the end and simply does not store it.
///
/// Call it from `upstream_response_filter`, which pingora runs before its cache write. Pingora's
/// own check counts body bytes as they arrive and, once over the limit, fails the cache write
/// (pingora-proxy's `cache_http_task`); with a streaming storage the client is served from that
/// write, so pingora then aborts the client's response too (its `h1_response_filter`). A
/// response with a `Content-Length` keeps pingora's check, which decides at the head, before
/// anything is streamed (also in `cache_http_task`). So does a request that bypassed the cache
/// because its URL was too large: pingora measures that response against the limit to learn
/// whether the URL became cacheable again (in `h1_response_filter`).
pub fn defer_body_size_check(cache: &mut HttpCache, resp: &pingora_http::ResponseHeader) {
    if resp.headers.contains_key(http::header::CONTENT_LENGTH) {
        return;
    }
    let applies = cache.enabled()
        || (cache.bypassing()
            && cache
                .predicted_uncacheable_reason()
                .is_some_and(|r| r != NoCacheReason::ResponseTooLarge));
    if applies && cache.max_file_size_bytes().is_some() {
        cache.set_max_file_size_bytes(usize::MAX);
    }
}

/// What the invalidation index says about a stored entry, as pingora's forced freshness:
/// hard → treat as a miss (refetch, collapsed by the lock); soft → stale since the purge, so it
/// is revalidated and SWR/SIE windows still apply. The URL is looked up both as requested and
/// as the route's key rules normalise it (`key_path_query`), so a purge of `/a` reaches
/// `/a?utm=1` on a route that ignores the query.
pub fn invalidation_override(
    index: &InvalidationIndex,
    host: &str,
    path_query: &str,
    key_path_query: Option<&str>,
    meta: &CacheMeta,
) -> Option<ForcedFreshness> {
    if index.is_empty() {
        return None;
    }
    let verdict = invalidation_verdict(
        index,
        host,
        path_query,
        key_path_query,
        meta.headers(),
        meta.created(),
        None,
    );
    match verdict {
        Verdict::Valid => None,
        Verdict::Stale { since } => {
            METRICS.cache_invalidated.with_label_values(&["soft"]).inc();
            Some(ForcedFreshness::ForceExpiredServeStale {
                expired_at: Some(since),
            })
        }
        Verdict::Invalid => {
            METRICS.cache_invalidated.with_label_values(&["hard"]).inc();
            Some(ForcedFreshness::ForceMiss)
        }
    }
}

/// What the invalidation index says about a stored entry with these stored `headers`, admitted
/// at `created` (its fetch start, when recorded, counts instead), counting the invalidations
/// applied no later than `as_of` (`None`: all). Its `ETag` is its version for purges with an
/// `expected_version`. Counts nothing.
pub fn invalidation_verdict(
    index: &InvalidationIndex,
    host: &str,
    path_query: &str,
    key_path_query: Option<&str>,
    headers: &http::HeaderMap,
    created: std::time::SystemTime,
    as_of: Option<std::time::SystemTime>,
) -> Verdict {
    if index.is_empty() {
        return Verdict::Valid;
    }
    let entry = EntryFacts {
        created: rfc9111::fetched_at(headers).unwrap_or(created),
        version: headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(invalidation::version_of),
    };
    let tags = response_tags(headers, &rfc9111::TAG_HEADERS);
    let mut verdict = index.verdict_as_of(host, path_query, tags, &entry, as_of);
    if let Some(k) = key_path_query.filter(|k| *k != path_query) {
        let by_key = index.verdict_as_of(host, k, std::iter::empty(), &entry, as_of);
        verdict = verdict.stronger(by_key);
    }
    verdict
}

/// The cache key: scheme, canonical host and the exact path and query the origin will be asked
/// for. Parts are length-prefixed so no two different requests can collide. HEAD shares GET's key.
/// The host is also the user tag, for host-wide purges.
///
/// The primary hash (BLAKE2) is computed here, once, and kept in the key: pingora-cache and
/// the storage ask a key for it about a dozen times per miss (lookup, lock, predictor, fill,
/// eviction, finish), and would hash the primary anew each time.
pub fn cache_key(scheme: &str, host: &str, path_and_query: &str) -> CacheKey {
    let mut primary = Vec::with_capacity(scheme.len() + host.len() + path_and_query.len() + 12);
    for part in [scheme, host, path_and_query] {
        primary.extend_from_slice(&(part.len() as u32).to_be_bytes());
        primary.extend_from_slice(part.as_bytes());
    }
    let mut key = CacheKey::new(primary, host);
    key.set_primary_bin_override(key.primary_bin());
    key
}

/// The cache key under a route's key rules: the query enters as the rules say (`key.query`).
/// With the default rules this is exactly [`cache_key`].
pub fn route_cache_key(
    scheme: &str,
    host: &str,
    path_and_query: &str,
    rules: &CacheKeyRules,
) -> CacheKey {
    cache_key(
        scheme,
        host,
        &key_rules::key_path_and_query(path_and_query, &rules.query),
    )
}

/// Normalise `Accept-Encoding` to the encodings that matter, so `gzip, deflate, br` and
/// `br;q=1, gzip` share a variant.
fn normalize_accept_encoding(value: &str) -> String {
    let mut found: Vec<&str> = value
        .split(',')
        .filter_map(|part| {
            let mut it = part.split(';');
            let name = it.next()?.trim();
            let rejected = it.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            let name = match name.to_ascii_lowercase().as_str() {
                "gzip" | "x-gzip" => "gzip",
                "br" => "br",
                "zstd" => "zstd",
                _ => return None,
            };
            (!rejected).then_some(name)
        })
        .collect();
    found.sort_unstable();
    found.dedup();
    found.join(",")
}

/// The variant a request selects for a stored response that carries `Vary`, or `None` when the
/// response does not vary.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    vary_builder(meta, req, AcceptEncodingVary::Normalised).finalize()
}

/// How a stored response's `Vary: Accept-Encoding` selects variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptEncodingVary {
    /// By the codings the request accepts (`gzip, deflate, br` and `br;q=1, gzip` share one).
    Normalised,
    /// Not at all: the route stores one encoding and serves every client from it
    /// (`routes[].compression`).
    Ignored,
}

/// The variant a request selects: the stored response's `Vary` plus the route's key headers and
/// cookies. `None` when neither applies.
pub fn variance_with_rules(
    meta: &CacheMeta,
    req: &RequestHeader,
    rules: &CacheKeyRules,
) -> Option<HashBinary> {
    request_variance(meta, req, Some(rules), &[], AcceptEncodingVary::Normalised)
}

/// The variant a request selects: the stored response's `Vary`, the route's key headers and
/// cookies, and the `(name, value)` parts user filters added to the key
/// (`FilterCtx::add_cache_key`). `None` when nothing varies. Filter parts are named
/// `filter:NAME`, which no header name can collide with.
pub fn request_variance(
    meta: &CacheMeta,
    req: &RequestHeader,
    rules: Option<&CacheKeyRules>,
    filter_parts: &[(String, String)],
    coding: AcceptEncodingVary,
) -> Option<HashBinary> {
    let mut builder = vary_builder(meta, req, coding);
    if let Some(rules) = rules {
        key_rules::add_key_inputs(&mut builder, rules, req);
    }
    for (name, value) in filter_parts {
        builder.add_owned_name_value(format!("filter:{name}"), value.as_bytes().to_vec());
    }
    builder.finalize()
}

fn vary_builder(
    meta: &CacheMeta,
    req: &RequestHeader,
    coding: AcceptEncodingVary,
) -> VarianceBuilder<'static> {
    let mut names: Vec<String> = meta
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .filter(|n| coding == AcceptEncodingVary::Normalised || n != "accept-encoding")
        .collect();
    let mut builder = VarianceBuilder::new();
    if names.is_empty() {
        return builder;
    }
    names.sort_unstable();
    names.dedup();
    for name in names {
        let lines = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes());
        let value = if name == "accept-encoding" {
            let joined = lines.collect::<Vec<_>>().join(&b","[..]);
            normalize_accept_encoding(&String::from_utf8_lossy(&joined)).into_bytes()
        } else {
            normalize_vary_value(&name, lines)
        };
        builder.add_owned_name_value(name, value);
    }
    builder
}

/// A request field's value as it selects a variant (RFC 9111 §4.1 lets a cache normalise what
/// has identical semantics): the members of all its lines, split at commas outside quoted
/// strings, without the whitespace around them, empty ones dropped, joined with `,`. So
/// `1, 2`, ` 1,2 ` and the two lines `1` and `2` select one variant. `Accept-Language`
/// members (`name` in lower case) also lose the whitespace inside them and their case, and
/// are sorted: language ranges are case-insensitive, and the weights, not the order, carry
/// the preference (RFC 9110 §12.4.2, §12.5.4).
fn normalize_vary_value<'a>(name: &str, lines: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut members: Vec<Vec<u8>> = Vec::new();
    for line in lines {
        let mut quoted = false;
        let mut escaped = false;
        let mut start = 0;
        for (i, b) in line.iter().enumerate() {
            match (*b, quoted, escaped) {
                (_, true, true) => escaped = false,
                (b'\\', true, false) => escaped = true,
                (b'"', _, false) => quoted = !quoted,
                (b',', false, _) => {
                    members.push(line[start..i].to_vec());
                    start = i + 1;
                }
                _ => {}
            }
        }
        members.push(line[start..].to_vec());
    }
    let language = name == "accept-language";
    let mut members: Vec<Vec<u8>> = members
        .into_iter()
        .map(|m| {
            if language {
                m.iter()
                    .filter(|b| !matches!(b, b' ' | b'\t'))
                    .map(u8::to_ascii_lowercase)
                    .collect()
            } else {
                m.trim_ascii().to_vec()
            }
        })
        .filter(|m| !m.is_empty())
        .collect();
    if language {
        members.sort_unstable();
        members.dedup();
    }
    members.join(&b","[..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::storage::Storage;
    use pingora_http::ResponseHeader;
    use std::time::{Duration, SystemTime};

    #[test]
    fn keys_are_framed() {
        let a = cache_key("http", "a.com", "/x?y");
        let b = cache_key("http", "a.co", "m/x?y");
        assert_ne!(a.combined_bin(), b.combined_bin());
        let c = cache_key("https", "a.com", "/x?y");
        assert_ne!(a.combined_bin(), c.combined_bin());
        assert_eq!(
            a.combined_bin(),
            cache_key("http", "a.com", "/x?y").combined_bin()
        );
    }

    #[test]
    fn the_kept_primary_hash_is_pingoras_hash_of_the_primary() {
        // entries on disk and in the eviction manager are found by this hash: computing it
        // once must give what pingora-cache would compute from the primary each time
        let key = cache_key("https", "a.com", "/x?y");
        assert_eq!(
            key.primary_bin(),
            pingora_cache::key::hash_key(key.primary_key())
        );
        let mut varied = key.clone();
        varied.set_variance_key([3; 16]);
        assert_eq!(varied.primary_bin(), key.primary_bin());
        assert_ne!(varied.combined_bin(), key.combined_bin());
    }

    #[tokio::test]
    async fn invalidate_removes_every_variant_and_its_accounting() {
        use pingora_cache::eviction::CacheEntryKey;
        let engine = CacheEngine::new(CacheSettings::default()).expect("engine");
        let span = pingora_cache::trace::Span::inactive().handle();
        let now = SystemTime::now();
        let meta = || {
            let h = ResponseHeader::build(200, None).expect("h");
            CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
        };
        let url = cache_key("http", "a.com", "/x");
        let mut variant = cache_key("http", "a.com", "/x");
        variant.set_variance_key([7; 16]);
        let other = cache_key("http", "a.com", "/y");
        for key in [&url, &variant, &other] {
            let mut miss = engine
                .storage
                .get_miss_handler(key, &meta(), &span)
                .await
                .expect("miss");
            miss.write_body(bytes::Bytes::from_static(b"body"), true)
                .await
                .expect("write");
            // the storage admits the entry itself; what pingora is told to add is nothing
            assert!(matches!(
                miss.finish().await.expect("finish"),
                pingora_cache::storage::MissFinishType::Appended(0, Some(0))
            ));
            assert!(engine
                .eviction
                .peek(&CacheEntryKey::key_only(key.to_compact())));
        }
        assert_eq!(engine.tracked_bytes() as u64, engine.storage.bytes());
        let before = engine.tracked_bytes();
        // the variant cap counts stored variants of the URL; a stored slot may always refresh
        assert!(engine.admits_variant(&url, 2) && engine.admits_variant(&variant, 2));
        let mut third = cache_key("http", "a.com", "/x");
        third.set_variance_key([8; 16]);
        assert!(!engine.admits_variant(&third, 2));
        assert!(engine.admits_variant(&third, 3));

        assert_eq!(engine.invalidate(&cache_key("http", "a.com", "/x")), 2);
        assert_eq!(engine.storage.objects(), 1);
        assert!(engine.tracked_bytes() < before);
        assert_eq!(engine.tracked_bytes() as u64, engine.storage.bytes());
        assert_eq!(engine.invalidate(&url), 0);
    }

    #[test]
    fn route_keys_apply_query_rules_and_default_to_the_plain_key() {
        use crate::config::QueryKey;
        let plain = CacheKeyRules::default();
        assert_eq!(
            route_cache_key("http", "a.com", "/x?b=1&a=2", &plain).combined_bin(),
            cache_key("http", "a.com", "/x?b=1&a=2").combined_bin()
        );
        let sorted = CacheKeyRules {
            query: QueryKey::Sorted,
            ..CacheKeyRules::default()
        };
        assert_eq!(
            route_cache_key("http", "a.com", "/x?b=1&a=2", &sorted).combined_bin(),
            route_cache_key("http", "a.com", "/x?a=2&b=1", &sorted).combined_bin()
        );
        let ignore = CacheKeyRules {
            query: QueryKey::Ignore,
            ..CacheKeyRules::default()
        };
        assert_eq!(
            route_cache_key("http", "a.com", "/x?z=9", &ignore).combined_bin(),
            cache_key("http", "a.com", "/x").combined_bin()
        );
        // framing still separates host and path under any rule
        assert_ne!(
            route_cache_key("http", "a.co", "m/x", &ignore).combined_bin(),
            route_cache_key("http", "a.com", "/x", &ignore).combined_bin()
        );
    }

    #[test]
    fn key_headers_add_to_vary() {
        let now = SystemTime::now();
        let mut h = ResponseHeader::build(200, None).expect("h");
        h.insert_header("vary", "accept-language").expect("h");
        let varying = CacheMeta::new(now, now, 0, 0, h);
        let plain = CacheMeta::new(now, now, 0, 0, ResponseHeader::build(200, None).expect("h"));
        let rules = CacheKeyRules {
            headers: vec![http::HeaderName::from_static("x-device")],
            ..CacheKeyRules::default()
        };
        let req = |lang: &str, dev: &str| {
            let mut r = RequestHeader::build("GET", b"/", None).expect("r");
            r.insert_header("accept-language", lang).expect("h");
            r.insert_header("x-device", dev).expect("h");
            r
        };
        // key headers vary even when the response has no Vary
        assert!(variance_with_rules(&plain, &req("en", "m"), &rules).is_some());
        assert_ne!(
            variance_with_rules(&plain, &req("en", "m"), &rules),
            variance_with_rules(&plain, &req("en", "d"), &rules)
        );
        // both Vary and key headers count
        assert_ne!(
            variance_with_rules(&varying, &req("en", "m"), &rules),
            variance_with_rules(&varying, &req("fr", "m"), &rules)
        );
        // no key rules: the same as plain Vary
        assert_eq!(
            variance_with_rules(&varying, &req("en", "m"), &CacheKeyRules::default()),
            variance(&varying, &req("en", "m"))
        );
    }

    #[test]
    fn filter_key_parts_select_variants() {
        let now = SystemTime::now();
        let plain = CacheMeta::new(now, now, 0, 0, ResponseHeader::build(200, None).expect("h"));
        let req = RequestHeader::build("GET", b"/", None).expect("r");
        let part = |v: &str| vec![("device".to_string(), v.to_string())];
        let rules = CacheKeyRules::default();
        assert_eq!(
            request_variance(
                &plain,
                &req,
                Some(&rules),
                &[],
                AcceptEncodingVary::Normalised
            ),
            None
        );
        let mobile = request_variance(
            &plain,
            &req,
            Some(&rules),
            &part("mobile"),
            AcceptEncodingVary::Normalised,
        );
        assert!(mobile.is_some());
        assert_eq!(
            mobile,
            request_variance(
                &plain,
                &req,
                None,
                &part("mobile"),
                AcceptEncodingVary::Normalised
            )
        );
        assert_ne!(
            mobile,
            request_variance(
                &plain,
                &req,
                None,
                &part("desktop"),
                AcceptEncodingVary::Normalised
            )
        );
        // a filter part never equals a header of the same name
        let mut with_header = RequestHeader::build("GET", b"/", None).expect("r");
        with_header.insert_header("device", "mobile").expect("h");
        let by_header = CacheKeyRules {
            headers: vec![http::HeaderName::from_static("device")],
            ..CacheKeyRules::default()
        };
        assert_ne!(
            mobile,
            request_variance(
                &plain,
                &with_header,
                Some(&by_header),
                &[],
                AcceptEncodingVary::Normalised
            )
        );
    }

    #[test]
    fn vary_values_lose_whitespace_and_accept_language_its_order_and_case() {
        let norm = |name: &str, lines: &[&str]| {
            String::from_utf8(normalize_vary_value(
                name,
                lines.iter().map(|l| l.as_bytes()),
            ))
            .expect("utf-8")
        };
        for lines in [
            &["1, 2"][..],
            &[" 1,2 "],
            &["1", "2"],
            &["1 ,\t2", ""],
            &["1,,2"],
        ] {
            assert_eq!(norm("foo", lines), "1,2", "{lines:?}");
        }
        // commas and spaces inside a quoted string are the value's own
        assert_eq!(norm("foo", &[r#"a="x, y" , b"#]), r#"a="x, y",b"#);
        assert_eq!(norm("foo", &[r#""a\", b", c"#]), r#""a\", b",c"#);
        // other fields keep their order and case
        assert_eq!(norm("foo", &["B, a"]), "B,a");
        assert_ne!(norm("foo", &["en, de"]), norm("foo", &["de, en"]));
        for lines in [
            &["en, de"][..],
            &["de, en"],
            &["eN, De"],
            &[" en ,   de"],
            &["de", "en"],
        ] {
            assert_eq!(norm("accept-language", lines), "de,en", "{lines:?}");
        }
        assert_eq!(
            norm("accept-language", &["fr; q=0.5, DE;Q=1.0"]),
            "de;q=1.0,fr;q=0.5"
        );
        assert_ne!(
            norm("accept-language", &["en;q=0.5, de"]),
            norm("accept-language", &["en, de;q=0.5"])
        );
    }

    #[test]
    fn accept_encoding_normalised() {
        assert_eq!(normalize_accept_encoding("gzip, deflate, br"), "br,gzip");
        assert_eq!(normalize_accept_encoding("br;q=1.0, gzip;q=0.8"), "br,gzip");
        assert_eq!(normalize_accept_encoding("gzip;q=0, identity"), "");
    }

    #[test]
    fn vary_selects_variants() {
        let now = SystemTime::now();
        let mut h = ResponseHeader::build(200, None).expect("h");
        h.insert_header("vary", "Accept-Language, accept-encoding")
            .expect("h");
        let meta = CacheMeta::new(now + Duration::from_secs(5), now, 0, 0, h);
        let req = |lang: &str, ae: &str| {
            let mut r = RequestHeader::build("GET", b"/", None).expect("r");
            r.insert_header("accept-language", lang).expect("h");
            r.insert_header("accept-encoding", ae).expect("h");
            r
        };
        let en = variance(&meta, &req("en", "gzip, br")).expect("varies");
        assert_eq!(Some(en), variance(&meta, &req("en", "br, gzip")));
        assert_ne!(Some(en), variance(&meta, &req("fr", "gzip, br")));
        let plain = CacheMeta::new(now, now, 0, 0, ResponseHeader::build(200, None).expect("h"));
        assert_eq!(variance(&plain, &req("en", "gzip")), None);
        // a compressing route: one variant whatever the client accepts
        let ignored =
            |r: &RequestHeader| request_variance(&meta, r, None, &[], AcceptEncodingVary::Ignored);
        let en_any = ignored(&req("en", "gzip")).expect("varies on the language");
        assert_eq!(Some(en_any), ignored(&req("en", "identity")));
        assert_ne!(Some(en_any), ignored(&req("fr", "gzip")));
        let mut only = ResponseHeader::build(200, None).expect("h");
        only.insert_header("vary", "Accept-Encoding").expect("h");
        let only = CacheMeta::new(now, now, 0, 0, only);
        let r = req("en", "br");
        assert_eq!(
            request_variance(&only, &r, None, &[], AcceptEncodingVary::Ignored),
            None
        );
    }
}
