//! HTTP dates as RFC 9110 §5.6.7 has recipients accept them: IMF-fixdate
//! (`Sun, 06 Nov 1994 08:49:37 GMT`) and the obsolete RFC 850
//! (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`) formats.
//! Names of days and months and `GMT` in any case; the day name must be one, but is not
//! checked against the date. Anything else (another zone, extra spaces, a one-digit hour, a
//! two-digit year in IMF-fixdate, years before 1970) is no date. Pure; never panics.

use std::time::{Duration, SystemTime};

const DAYS: [&[u8]; 7] = [
    b"monday",
    b"tuesday",
    b"wednesday",
    b"thursday",
    b"friday",
    b"saturday",
    b"sunday",
];
const MONTHS: [&[u8; 3]; 12] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
];

/// The time `value` names, or `None` when it is no HTTP date. `now` places the two-digit
/// years of RFC 850 dates: one more than 50 years ahead is taken from the past century.
pub fn parse(value: &[u8], now: SystemTime) -> Option<SystemTime> {
    let v = value.trim_ascii();
    let (year, month, day, time) = if v.len() == 29 && v.get(3) == Some(&b',') {
        // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`
        short_day(&v[..3])?;
        expect(
            v,
            &[(4, b' '), (7, b' '), (11, b' '), (16, b' '), (25, b' ')],
        )?;
        gmt(&v[26..])?;
        (
            digits(&v[12..16])?,
            month(&v[8..11])?,
            digits(&v[5..7])?,
            &v[17..25],
        )
    } else if v.len() == 24 && v.get(3) == Some(&b' ') {
        // asctime: `Sun Nov  6 08:49:37 1994`
        short_day(&v[..3])?;
        expect(v, &[(7, b' '), (10, b' '), (19, b' ')])?;
        let day = match v[8] {
            b' ' => digits(&v[9..10])?,
            _ => digits(&v[8..10])?,
        };
        (digits(&v[20..24])?, month(&v[4..7])?, day, &v[11..19])
    } else {
        // RFC 850: `Sunday, 06-Nov-94 08:49:37 GMT`
        let comma = v.iter().position(|b| *b == b',')?;
        if !DAYS.iter().any(|d| d.eq_ignore_ascii_case(&v[..comma])) {
            return None;
        }
        let rest = &v[comma + 1..];
        if rest.len() != 23 {
            return None;
        }
        expect(
            rest,
            &[(0, b' '), (3, b'-'), (7, b'-'), (10, b' '), (19, b' ')],
        )?;
        gmt(&rest[20..])?;
        let yy = digits(&rest[8..10])?;
        (
            two_digit_year(yy, now),
            month(&rest[4..7])?,
            digits(&rest[1..3])?,
            &rest[11..19],
        )
    };
    let (hour, minute, second) = time_of_day(time)?;
    let days_in_month = match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1970..=9999).contains(&year) || !(1..=days_in_month).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn expect(v: &[u8], at: &[(usize, u8)]) -> Option<()> {
    at.iter().all(|(i, b)| v.get(*i) == Some(b)).then_some(())
}

fn short_day(v: &[u8]) -> Option<()> {
    DAYS.iter()
        .any(|d| d[..3].eq_ignore_ascii_case(v))
        .then_some(())
}

fn gmt(v: &[u8]) -> Option<()> {
    v.eq_ignore_ascii_case(b"gmt").then_some(())
}

/// 1 to 12.
fn month(v: &[u8]) -> Option<u64> {
    let i = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(v))?;
    u64::try_from(i + 1).ok()
}

fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `HH:MM:SS`, two digits each (a leap second allowed).
fn time_of_day(v: &[u8]) -> Option<(u64, u64, u64)> {
    if v.len() != 8 {
        return None;
    }
    expect(v, &[(2, b':'), (5, b':')])?;
    let (h, m, s) = (digits(&v[0..2])?, digits(&v[3..5])?, digits(&v[6..8])?);
    (h < 24 && m < 60 && s <= 60).then_some((h, m, s))
}

fn two_digit_year(yy: u64, now: SystemTime) -> u64 {
    // the year `now` falls in, to within a day (good enough for a 50-year rule)
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let this_year = 1970 + secs / 31_556_952;
    let year = this_year / 100 * 100 + yy;
    if year > this_year + 50 {
        year.saturating_sub(100)
    } else {
        year
    }
}

/// Days from 1970-01-01 to a date from 1970 on (Hinnant's `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_in_every_format_recipients_accept() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000); // 2026
        let at = |s: &str| {
            parse(s.as_bytes(), now)
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        let nov_1994 = Some(784_111_777);
        for ok in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun Nov 06 08:49:37 1994",
            "SUN, 06 NOV 1994 08:49:37 gmt",
            "sunday, 06-nov-94 08:49:37 Gmt",
            // the day name is not checked against the date
            "Thu, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(at(ok), nov_1994, "{ok:?}");
        }
        // every httpdate rendering reads back
        for secs in [0, 951_782_400, 1_700_000_000, 2_147_483_648, 9_999_999_999] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(at(&httpdate::fmt_http_date(t)), Some(secs));
        }
        // RFC 850's two-digit years: more than 50 years ahead means the past century
        assert_eq!(at("Thursday, 18-Aug-50 02:01:18 GMT"), Some(2_544_400_878));
        assert_eq!(at("Friday, 18-Aug-80 02:01:18 GMT"), Some(335_412_078));
        assert_eq!(at("Thu Aug  8 02:01:18 2050"), Some(2_543_536_878));
        assert_eq!(at("Tue, 29 Feb 2028 00:00:00 GMT"), Some(1_835_395_200));
        for bad in [
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18 Aug 2050 02:01:18 AEST",
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 18 Aug 2050 24:00:00 GMT",
            "Thu, 31 Apr 2050 00:00:00 GMT",
            "Thu, 29 Feb 2100 00:00:00 GMT",
            "Xyz, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 Aug 1969 02:01:18 GMT",
            "Thurs, 18-Aug-50 02:01:18 GMT",
            "Thu Aug 8 02:01:18 2050",
            "",
            "0",
            "Thu, 18 Aug 2050 02:01:18 GM\u{e9}",
        ] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
    }
}
