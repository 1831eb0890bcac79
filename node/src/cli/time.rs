//! Times for humans: RFC 3339 in UTC with the age beside it
//! ("2026-12-03T16:40:00.120Z (2 s ago)"). Text output shows times this way
//! only; `--json` keeps the protocol's milliseconds since the Unix epoch.

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// `at` (ms since the epoch) in RFC 3339, with its age at `now` (ms): how
/// long ago, or how far ahead.
pub(super) fn when(at: u64, now: u64) -> String {
    let age = if now >= at {
        format!("{} ago", span(now.saturating_sub(at)))
    } else {
        format!("in {}", span(at.saturating_sub(now)))
    };
    format!("{} ({age})", rfc3339(at))
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub(super) fn rfc3339(ms: u64) -> String {
    let days = ms / DAY_MS;
    let in_day = ms % DAY_MS;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// A duration in the largest unit that keeps it at least 1: "850 ms",
/// "2 s", "3 min", "5 h", "12 d".
fn span(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{} s", ms / 1000),
        60_000..3_600_000 => format!("{} min", ms / 60_000),
        3_600_000..DAY_MS => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / DAY_MS),
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01, by eras of
/// 400 years (146,097 days each) counted from 0000-03-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339_with_their_age() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_796_316_000_120, "2026-12-03T16:40:00.120Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339(ms), text);
        }
        assert_eq!(
            when(1_796_316_000_000, 1_796_316_002_500),
            "2026-12-03T16:40:00.000Z (2 s ago)"
        );
        assert_eq!(
            when(1_796_316_000_000, 1_796_316_000_000),
            "2026-12-03T16:40:00.000Z (0 ms ago)"
        );
        assert_eq!(
            when(1_796_316_000_000 + 7_200_000, 1_796_316_000_000),
            "2026-12-03T18:40:00.000Z (in 2 h)"
        );
        assert_eq!(span(90_061_000), "1 d");
    }
}
