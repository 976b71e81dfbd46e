//! Probabilistic early refresh of fresh entries (XFetch: Vattani, Chierichetti, Lowenstein,
//! "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015), per route
//! (`routes[].cache.early_refresh`).
//!
//! A fresh hit refreshes its entry in the background when
//! `now − delta · beta · ln(rand) ≥ expiry`, with `rand` uniform in (0, 1]: the closer the entry
//! is to expiring, and the longer it took to fetch (`delta`), the likelier. The client is
//! always answered from the entry at once. [`RefreshSet`] keeps it to one refresh per key at a
//! time, whatever the number of hits.

use parking_lot::Mutex;
use pingora_cache::key::HashBinary;
use std::collections::HashSet;
use std::time::Duration;

/// `delta` for an entry whose fetch time was not recorded and whose route names none.
pub const DEFAULT_DELTA: Duration = Duration::from_millis(100);

/// XFetch: refresh now? `time_left` is how long the entry stays fresh, `delta` how long a fetch
/// takes, `beta` the route's eagerness (1.0 is the paper's optimum; larger refreshes earlier),
/// `rand` a uniform draw in (0, 1] (1 never refreshes a fresh entry; values outside count as
/// 1). Pure, so tests choose the draw.
pub fn should_refresh(time_left: Duration, delta: Duration, beta: f64, rand: f64) -> bool {
    if time_left.is_zero() {
        return true;
    }
    // NaN fails every comparison, so it lands here too
    let usable = rand > 0.0 && rand < 1.0 && beta > 0.0;
    if !usable {
        return false;
    }
    // −ln(rand) ≥ 0: how many "fetch times" early this draw allows
    let early = delta.as_secs_f64() * beta * -rand.ln();
    early >= time_left.as_secs_f64()
}

/// The draw XFetch needs: uniform in (0, 1], from the standard library's randomly keyed hasher
/// (not for secrets; only spreads refreshes over time).
pub fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    h.write_u32(nanos);
    // 53 random bits, shifted into (0, 1]
    let bits = h.finish() >> 11;
    (bits as f64 + 1.0) / (1u64 << 53) as f64
}

/// Keys being refreshed early right now.
#[derive(Debug, Default)]
pub struct RefreshSet {
    keys: Mutex<HashSet<HashBinary>>,
}

impl RefreshSet {
    /// Claim the refresh of `key`: `None` when one is already running. The claim lasts until
    /// the returned guard is dropped.
    pub fn try_start(&'static self, key: HashBinary) -> Option<RefreshClaim> {
        let claimed = self.keys.lock().insert(key);
        // built only when claimed: dropping a claim removes its key (and takes the lock)
        claimed.then(|| RefreshClaim { set: self, key })
    }

    /// How many refreshes are running.
    pub fn running(&self) -> usize {
        self.keys.lock().len()
    }
}

/// One running early refresh of a key; dropping it lets the next one start.
#[derive(Debug)]
pub struct RefreshClaim {
    set: &'static RefreshSet,
    key: HashBinary,
}

impl Drop for RefreshClaim {
    fn drop(&mut self) {
        self.set.keys.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    #[test]
    fn the_nearer_expiry_the_likelier() {
        let delta = secs(1.0);
        // rand = e^-1: −ln(rand) = 1, so the refresh comes delta·beta before expiry
        let r = (-1.0f64).exp();
        assert!(should_refresh(secs(0.9), delta, 1.0, r));
        assert!(should_refresh(secs(1.0), delta, 1.0, r));
        assert!(!should_refresh(secs(1.1), delta, 1.0, r));
        // beta scales how early
        assert!(should_refresh(secs(2.9), delta, 3.0, r));
        assert!(!should_refresh(secs(3.1), delta, 3.0, r));
        // so does delta (a slow origin is refreshed earlier)
        assert!(should_refresh(secs(9.0), secs(10.0), 1.0, r));
        // a small draw refreshes far ahead, a draw of 1 never refreshes a fresh entry
        assert!(should_refresh(secs(60.0), delta, 1.0, 1e-30));
        assert!(!should_refresh(secs(0.001), delta, 1000.0, 1.0));
        // an expired entry always
        assert!(should_refresh(Duration::ZERO, delta, 1.0, 1.0));
    }

    #[test]
    fn bad_draws_or_beta_never_refresh() {
        for r in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(!should_refresh(secs(1.0), secs(1.0), 1.0, r), "{r}");
        }
        for beta in [0.0, -1.0, f64::NAN] {
            assert!(!should_refresh(secs(1.0), secs(1.0), beta, 0.01), "{beta}");
        }
    }

    #[test]
    fn the_share_of_refreshes_matches_xfetch() {
        // P(refresh) = P(−ln r ≥ t/(δβ)) = e^(−t/(δβ)); with t = δβ that is 1/e ≈ 0.368
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| should_refresh(secs(1.0), secs(1.0), 1.0, unit_random()))
            .count();
        let share = hits as f64 / n as f64;
        assert!((0.33..0.41).contains(&share), "{share}");
    }

    #[test]
    fn draws_are_in_the_unit_interval() {
        for _ in 0..10_000 {
            let r = unit_random();
            assert!(r > 0.0 && r <= 1.0, "{r}");
        }
    }

    #[test]
    fn one_refresh_per_key_at_a_time() {
        let set: &'static RefreshSet = Box::leak(Box::default());
        let a = set.try_start([1; 16]).expect("first");
        assert!(set.try_start([1; 16]).is_none(), "already running");
        let b = set.try_start([2; 16]).expect("another key");
        assert_eq!(set.running(), 2);
        drop(a);
        let again = set.try_start([1; 16]).expect("done, may start again");
        drop((b, again));
        assert_eq!(set.running(), 0);
    }
}
