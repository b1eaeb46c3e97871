//! Wall-clock time as fcsup records and shows it: milliseconds since the epoch (the ledger,
//! instance snapshots) and their RFC 3339 form with milliseconds, in UTC (log lines, Async
//! tasks, the admin API, bench reports).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for now.
pub fn now_rfc3339() -> String {
    rfc3339_ms(now_ms())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time in ms since the epoch (UTC, proleptic Gregorian).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    // A u64 of ms is fewer than 2^38 days: it fits.
    let days = i64::try_from(secs / 86400).expect("days since the epoch fit in i64");
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem / 60 % 60, rem % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_462_496_123), "2026-11-23T19:34:56.123Z");
        // A leap day and the last millisecond of a year.
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(946_684_799_999), "1999-12-31T23:59:59.999Z");
    }
}
