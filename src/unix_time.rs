//! Unix-millisecond timestamps, as the control plane's messages and state files carry times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds for a time (0 before the epoch).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time for Unix milliseconds.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}
