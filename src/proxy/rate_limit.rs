//! Rate limits per route (`routes[].rate_limit`): a token bucket per key (client IP, a header's
//! value, or the route), kept as GCRA arrival times in a fixed-size sketch, so memory stays the
//! same whatever the number of keys, and shared by every thread and listener of the process.
//!
//! Each bucket is two slots, one per row of the sketch, each row with its own hash. A slot
//! shared by several keys holds the latest arrival time of them all, and a key reads the less
//! loaded of its two slots: under a flood of keys a bucket can only fill sooner, never later.
//! Requests for one key are decided one at a time (a lock striped by key), so no burst gets
//! more than the bucket holds.

use crate::config::{RateKey, RateLimitSpec};
use once_cell::sync::Lazy;
use parking_lot::{Mutex, RwLock};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows of the sketch.
const ROWS: usize = 2;
/// Slots per row: with two rows, 128 KiB per rate-limited route.
const WIDTH: usize = 8192;
/// Locks that decide the requests of one key one at a time.
const STRIPES: usize = 64;

/// What a limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: a token was taken.
    Allow,
    /// Over it: a token is there again after this long.
    Deny(Duration),
}

/// One route's limiter.
pub struct Limiter {
    spec: RateLimitSpec,
    /// Nanoseconds per token.
    interval: u64,
    /// Nanoseconds of tokens a full bucket holds.
    capacity: u64,
    rows: [RandomState; ROWS],
    /// Per slot: when the bucket is empty again (the GCRA "theoretical arrival time"), in
    /// nanoseconds since `epoch`; 0 is a full bucket.
    slots: Box<[AtomicU64]>,
    stripes: Box<[Mutex<()>]>,
    epoch: Instant,
}

impl Limiter {
    /// A limiter with every bucket full.
    pub fn new(spec: &RateLimitSpec) -> Limiter {
        let per = u64::try_from(spec.per.as_nanos()).unwrap_or(u64::MAX);
        let interval = (per / u64::from(spec.rate.max(1))).max(1);
        Limiter {
            spec: spec.clone(),
            interval,
            capacity: interval.saturating_mul(u64::from(spec.burst.max(1))),
            rows: [RandomState::new(), RandomState::new()],
            slots: (0..ROWS * WIDTH).map(|_| AtomicU64::new(0)).collect(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            epoch: Instant::now(),
        }
    }

    /// Take a token from `key`'s bucket at `now`, if there is one.
    pub fn check(&self, key: &[u8], now: Instant) -> Verdict {
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let hashes = [self.rows[0].hash_one(key), self.rows[1].hash_one(key)];
        let slots = [
            &self.slots[(hashes[0] as usize) % WIDTH],
            &self.slots[WIDTH + (hashes[1] as usize) % WIDTH],
        ];
        let _one_at_a_time = self.stripes[(hashes[0] as usize) % STRIPES].lock();
        let least = slots
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        let next = least.max(now).saturating_add(self.interval);
        let ahead = next - now;
        if ahead > self.capacity {
            return Verdict::Deny(Duration::from_nanos(ahead - self.capacity));
        }
        for slot in slots {
            slot.fetch_max(next, Ordering::AcqRel);
        }
        Verdict::Allow
    }
}

/// The bucket a request belongs to under `key`: the client's address, the header's first
/// value (empty when it is missing), or one for the whole route.
pub fn bucket_key<'a>(
    key: &RateKey,
    client: Option<IpAddr>,
    headers: &'a http::HeaderMap,
    buf: &'a mut [u8; 16],
) -> &'a [u8] {
    match key {
        RateKey::ClientIp => match client.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => {
                buf[..4].copy_from_slice(&v4.octets());
                &buf[..4]
            }
            Some(IpAddr::V6(v6)) => {
                *buf = v6.octets();
                &buf[..]
            }
            None => &[],
        },
        RateKey::Header(name) => headers.get(name).map_or(&[], |v| v.as_bytes()),
        RateKey::Route => &[],
    }
}

/// `Retry-After` in whole seconds, rounded up (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Every route's limiter, by route name: kept across snapshot swaps while the route's limit
/// stays the same.
static LIMITERS: Lazy<RwLock<HashMap<String, Arc<Limiter>>>> = Lazy::new(RwLock::default);

/// The limiter of route `route` with `spec` (a new one, full, when the spec changed).
pub fn limiter(route: &str, spec: &RateLimitSpec) -> Arc<Limiter> {
    if let Some(l) = LIMITERS.read().get(route).filter(|l| &l.spec == spec) {
        return l.clone();
    }
    let mut all = LIMITERS.write();
    let entry = all
        .entry(route.to_string())
        .or_insert_with(|| Arc::new(Limiter::new(spec)));
    if &entry.spec != spec {
        *entry = Arc::new(Limiter::new(spec));
    }
    entry.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rate: u32, per: Duration, burst: u32) -> RateLimitSpec {
        RateLimitSpec {
            rate,
            per,
            burst,
            key: RateKey::ClientIp,
        }
    }

    #[test]
    fn a_bucket_holds_its_burst_then_refills_at_the_rate() {
        let l = Limiter::new(&spec(2, Duration::from_secs(1), 3));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(b"a", t0), Verdict::Allow);
        }
        assert_eq!(
            l.check(b"a", t0),
            Verdict::Deny(Duration::from_millis(500)),
            "one token every 500ms"
        );
        assert_eq!(
            l.check(b"b", t0),
            Verdict::Allow,
            "another key, another bucket"
        );
        let later = t0 + Duration::from_millis(500);
        assert_eq!(l.check(b"a", later), Verdict::Allow);
        assert!(matches!(l.check(b"a", later), Verdict::Deny(_)));
        let idle = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.check(b"a", idle), Verdict::Allow, "full again, not more");
        }
        assert!(matches!(l.check(b"a", idle), Verdict::Deny(_)));
    }

    #[test]
    fn threads_share_the_bucket() {
        let l = Arc::new(Limiter::new(&spec(10, Duration::from_secs(3600), 10)));
        let now = Instant::now();
        let allowed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let l = l.clone();
                    s.spawn(move || {
                        (0..100)
                            .filter(|_| l.check(b"k", now) == Verdict::Allow)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(allowed, 10);
    }

    #[test]
    fn a_flood_of_keys_keeps_the_memory_and_never_lets_a_key_over_its_limit() {
        let l = Limiter::new(&spec(1, Duration::from_secs(3600), 2));
        let now = Instant::now();
        for i in 0u32..200_000 {
            l.check(&i.to_be_bytes(), now);
        }
        assert_eq!(l.slots.len(), ROWS * WIDTH, "memory is fixed");
        let k = b"victim";
        let allowed = (0..10)
            .filter(|_| l.check(k, now) == Verdict::Allow)
            .count();
        assert!(allowed <= 2, "{allowed}");
    }

    #[test]
    fn keys_and_retry_after() {
        let mut h = http::HeaderMap::new();
        h.insert("x-api-key", http::HeaderValue::from_static("k1"));
        let mut buf = [0; 16];
        let header = RateKey::Header(http::HeaderName::from_static("x-api-key"));
        assert_eq!(bucket_key(&header, None, &h, &mut buf), b"k1");
        let ip: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(
            bucket_key(&RateKey::ClientIp, Some(ip), &h, &mut buf),
            &[10, 0, 0, 1],
            "an IPv4-mapped address is its IPv4 address"
        );
        assert_eq!(bucket_key(&RateKey::Route, Some(ip), &h, &mut buf), b"");
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }

    #[test]
    fn limiters_outlive_a_swap_unless_their_limit_changed() {
        let a = limiter("rl-test", &spec(5, Duration::from_secs(1), 5));
        let same = limiter("rl-test", &spec(5, Duration::from_secs(1), 5));
        assert!(Arc::ptr_eq(&a, &same));
        let changed = limiter("rl-test", &spec(6, Duration::from_secs(1), 5));
        assert!(!Arc::ptr_eq(&a, &changed));
    }
}
