//! The shared HTTP cache: storage, eviction and miss-collapsing lock (built once per process),
//! the cache key, Vary variants, and the RFC 9111 policy.

pub mod policy;
pub mod request_directives;
pub mod storage;

use crate::config::CacheSettings;
use pingora_cache::eviction::{lru, EvictionManager};
use pingora_cache::key::HashBinary;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_cache::{CacheKey, CacheMeta, VarianceBuilder};
use pingora_http::RequestHeader;
use storage::MemoryStorage;

/// Everything `HttpCache::enable` needs, all `'static` as pingora-cache requires.
pub struct CacheEngine {
    pub storage: &'static MemoryStorage,
    pub eviction: &'static lru::Manager<16>,
    pub lock: &'static CacheKeyLockImpl,
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
    pub fn new(settings: CacheSettings) -> &'static CacheEngine {
        let memory = usize::try_from(settings.memory).unwrap_or(usize::MAX);
        let max_object = usize::try_from(settings.max_object_size).unwrap_or(usize::MAX);
        let storage: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(max_object)));
        let eviction: &'static lru::Manager<16> =
            Box::leak(Box::new(lru::Manager::with_capacity(memory, 1024)));
        let lock: &'static CacheKeyLockImpl =
            Box::leak(CacheLock::new_boxed(settings.lock_timeout));
        Box::leak(Box::new(CacheEngine {
            storage,
            eviction,
            lock,
            settings,
        }))
    }

    /// Bytes the eviction manager accounts for (headers + body + overhead).
    pub fn tracked_bytes(&self) -> usize {
        self.eviction.total_size()
    }

    /// Objects evicted so far to stay under the memory budget.
    pub fn evicted_items(&self) -> usize {
        self.eviction.evicted_items()
    }
}

/// The cache key: scheme, canonical host and the exact path and query the origin will be asked
/// for. Parts are length-prefixed so no two different requests can collide. HEAD shares GET's key.
/// The host is also the user tag, for host-wide purges.
pub fn cache_key(scheme: &str, host: &str, path_and_query: &str) -> CacheKey {
    let mut primary = Vec::with_capacity(scheme.len() + host.len() + path_and_query.len() + 12);
    for part in [scheme, host, path_and_query] {
        primary.extend_from_slice(&(part.len() as u32).to_be_bytes());
        primary.extend_from_slice(part.as_bytes());
    }
    CacheKey::new(primary, host)
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
    let mut names: Vec<String> = meta
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort_unstable();
    names.dedup();
    let mut builder = VarianceBuilder::new();
    for name in names {
        let values: Vec<&[u8]> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let joined = values.join(&b","[..]);
        let value = if name == "accept-encoding" {
            normalize_accept_encoding(&String::from_utf8_lossy(&joined)).into_bytes()
        } else {
            joined
        };
        builder.add_owned_name_value(name, value);
    }
    builder.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::key::CacheHashKey;
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
    }
}
