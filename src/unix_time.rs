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

/// RFC 3339 in UTC, to the second (`2026-12-04T10:17:34Z`), for Unix milliseconds.
pub fn rfc3339(ms: u64) -> String {
    format!("{}Z", date_time(ms / 1000))
}

/// RFC 3339 in UTC, to the millisecond (`2026-12-04T10:17:34.123Z`), for Unix milliseconds.
pub fn rfc3339_millis(ms: u64) -> String {
    format!("{}.{:03}Z", date_time(ms / 1000), ms % 1000)
}

/// `2026-12-04T10:17:34` (UTC) for Unix seconds.
fn date_time(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_379_454_999), "2026-12-04T10:17:34Z");
        assert_eq!(rfc3339(4_102_444_799_000), "2099-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_millis(1_795_343_523_811),
            "2026-11-22T10:32:03.811Z"
        );
    }
}
