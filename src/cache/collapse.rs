//! What waiting behind another request's fetch (the cache lock) came to: collapsed onto that
//! fetch, timed out, or fetched anyway; for `Cache-Status` and `verge_cache_lock_waits_total`.

use pingora_cache::{CachePhase, NoCacheReason};

/// How a request that waited on the cache lock was finally served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Served from what the lock holder stored: one origin fetch avoided.
    Collapsed,
    /// Gave up waiting after `cache.lock_wait` and went to the origin uncached.
    Timeout,
    /// Went to the origin after the wait: the holder failed, or its answer was not storable.
    Fetched,
}

impl LockWait {
    /// Classify a request from its final cache phase; `None` when it never waited.
    pub fn of(phase: CachePhase, waited: bool) -> Option<LockWait> {
        if !waited {
            return None;
        }
        Some(match phase {
            CachePhase::Hit
            | CachePhase::Stale
            | CachePhase::StaleUpdating
            | CachePhase::Revalidated
            | CachePhase::RevalidatedNoCache(_) => LockWait::Collapsed,
            CachePhase::Disabled(NoCacheReason::CacheLockTimeout) => LockWait::Timeout,
            _ => LockWait::Fetched,
        })
    }

    /// The `outcome` label of `verge_cache_lock_waits_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockWait::Collapsed => "collapsed",
            LockWait::Timeout => "timeout",
            LockWait::Fetched => "fetched",
        }
    }

    /// The `Cache-Status` detail, for outcomes a client should be told about.
    pub fn detail(self) -> Option<&'static str> {
        match self {
            LockWait::Collapsed => Some("collapsed"),
            LockWait::Timeout => Some("lock-timeout"),
            LockWait::Fetched => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        assert_eq!(LockWait::of(CachePhase::Hit, false), None);
        assert_eq!(LockWait::of(CachePhase::Miss, false), None);
        assert_eq!(
            LockWait::of(CachePhase::Hit, true),
            Some(LockWait::Collapsed)
        );
        assert_eq!(
            LockWait::of(CachePhase::StaleUpdating, true),
            Some(LockWait::Collapsed)
        );
        assert_eq!(
            LockWait::of(CachePhase::Disabled(NoCacheReason::CacheLockTimeout), true),
            Some(LockWait::Timeout)
        );
        assert_eq!(
            LockWait::of(CachePhase::Disabled(NoCacheReason::CacheLockGiveUp), true),
            Some(LockWait::Fetched)
        );
        assert_eq!(
            LockWait::of(CachePhase::Miss, true),
            Some(LockWait::Fetched)
        );
        assert_eq!(LockWait::Collapsed.detail(), Some("collapsed"));
        assert_eq!(LockWait::Fetched.detail(), None);
    }
}
