//! Unix-millisecond timestamps and UTC calendar times, as the control plane's messages, state files and access logs carry them.

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
    let c = Civil::of_unix_secs(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// A UTC time split into its calendar parts.
pub struct Civil {
    /// Year (1970 onwards).
    pub year: u64,
    /// Month, 1 to 12.
    pub month: u64,
    /// Day of the month, 1 to 31.
    pub day: u64,
    /// Hour, 0 to 23.
    pub hour: u64,
    /// Minute, 0 to 59.
    pub minute: u64,
    /// Second, 0 to 59.
    pub second: u64,
}

impl Civil {
    /// The calendar parts of Unix seconds.
    pub fn of_unix_secs(secs: u64) -> Civil {
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
        Civil {
            year: yoe + era * 400 + u64::from(month <= 2),
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }
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
