//! Billing periods on a node's own calendar: a period
//! starts at local midnight of its anchor day (1–31) in the node's IANA
//! time zone, and on the month's last day when the month is shorter, so a
//! period anchored on the 31st starts on Feb 28 (29), then on Mar 31.
//! Where local midnight does not exist (a daylight-saving gap at 00:00), the
//! period starts at the first local time that does; where it exists twice,
//! at the first.
//!
//! Pure calendar arithmetic: which period an instant belongs to, and where
//! the next one starts. Periods are contiguous: each ends where the next
//! begins.

use chrono::{
    DateTime, Datelike as _, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone as _, Utc,
};
use chrono_tz::Tz;

use crate::error::Error;

/// When a node's periods start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    day: u32,
    zone: Tz,
}

/// One billing period, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Anchor {
    /// Periods starting on `day` (1–31) of every month in `zone` (an IANA
    /// name such as `Europe/Berlin` or `UTC`).
    pub fn new(day: u32, zone: &str) -> Result<Self, Error> {
        if !(1..=31).contains(&day) {
            return Err(Error::InvalidArgument(format!(
                "anchor day: {day} is not a day of the month (1-31)"
            )));
        }
        let zone: Tz = zone.parse().map_err(|_| {
            Error::InvalidArgument(format!(
                "time zone: {zone:?} is not an IANA time zone name (e.g. Europe/Berlin, UTC)"
            ))
        })?;
        Ok(Self { day, zone })
    }

    pub fn day(&self) -> u32 {
        self.day
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The period `at` belongs to.
    pub fn period_at(&self, at: DateTime<Utc>) -> Period {
        let local = at.with_timezone(&self.zone).date_naive();
        let (year, month) = (local.year(), local.month());
        let this = self.start_in(year, month);
        if at >= this {
            Period {
                start: this,
                end: self.start_in_next(year, month),
            }
        } else {
            let (py, pm) = previous_month(year, month);
            Period {
                start: self.start_in(py, pm),
                end: this,
            }
        }
    }

    /// The period after `period`.
    pub fn next(&self, period: Period) -> Period {
        self.period_at(period.end)
    }

    fn start_in_next(&self, year: i32, month: u32) -> DateTime<Utc> {
        let (year, month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        self.start_in(year, month)
    }

    /// The start of the period that begins in `year`-`month` (local).
    fn start_in(&self, year: i32, month: u32) -> DateTime<Utc> {
        let date = (1..=self.day)
            .rev()
            .find_map(|d| NaiveDate::from_ymd_opt(year, month, d))
            .unwrap_or(NaiveDate::MIN);
        let midnight = date.and_time(chrono::NaiveTime::MIN);
        first_existing(self.zone, midnight).unwrap_or_else(|| midnight.and_utc())
    }
}

/// The first local time at or after `local` that exists in `zone` (the
/// first of two where it exists twice): `local` itself, or the end of the
/// gap it falls in. Gaps are not all whole quarter hours (a zone leaving
/// its local mean time, such as Rangoon's 6:24:47 to 6:30 in 1920, skips
/// 5 min 13 s) and not all shorter than a day (Samoa skipped 30 December
/// 2011), but they begin and end on whole seconds and last less than two
/// days. `None` only at the end of chrono's range.
fn first_existing(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let exists = |local: NaiveDateTime| match zone.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
        LocalResult::None => None,
    };
    if let Some(t) = exists(local) {
        return Some(t);
    }
    // The first quarter hour after the gap began, then the second it ends
    // on between the quarter before (missing) and it (there).
    let quarter = Duration::minutes(15);
    let mut missing = local;
    let mut there = None;
    for _ in 0..2 * 96 {
        let next = missing.checked_add_signed(quarter)?;
        if exists(next).is_some() {
            there = Some(next);
            break;
        }
        missing = next;
    }
    let mut there = there?;
    loop {
        let gap = (there - missing).num_seconds();
        if gap <= 1 {
            return exists(there);
        }
        let middle = missing + Duration::seconds(gap / 2);
        if exists(middle).is_some() {
            there = middle;
        } else {
            missing = middle;
        }
    }
}

fn previous_month(year: i32, month: u32) -> (i32, u32) {
    if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("RFC 3339")
            .with_timezone(&Utc)
    }

    fn anchor(day: u32, zone: &str) -> Anchor {
        Anchor::new(day, zone).expect("valid anchor")
    }

    #[test]
    fn bad_anchors_are_refused_with_the_reason() {
        for day in [0, 32] {
            let error = Anchor::new(day, "UTC").expect_err("out of range");
            assert!(error.to_string().contains("1-31"), "{error}");
        }
        let error = Anchor::new(1, "Mars/Olympus").expect_err("unknown zone");
        assert!(error.to_string().contains("IANA"), "{error}");
    }

    /// Anchors 1, 15, 28, 29, 30, 31 around a leap and a non-leap
    /// February: where the period that contains Feb 20 starts and ends.
    #[test]
    fn anchors_clamp_to_short_months() {
        let cases = [
            // (day, year, start, end)
            (1, 2024, "2024-02-01", "2024-03-01"),
            (15, 2024, "2024-02-15", "2024-03-15"),
            (28, 2024, "2024-01-28", "2024-02-28"),
            (29, 2024, "2024-01-29", "2024-02-29"),
            (30, 2024, "2024-01-30", "2024-02-29"),
            (31, 2024, "2024-01-31", "2024-02-29"),
            (1, 2025, "2025-02-01", "2025-03-01"),
            (15, 2025, "2025-02-15", "2025-03-15"),
            (28, 2025, "2025-01-28", "2025-02-28"),
            (29, 2025, "2025-01-29", "2025-02-28"),
            (30, 2025, "2025-01-30", "2025-02-28"),
            (31, 2025, "2025-01-31", "2025-02-28"),
        ];
        for (day, year, start, end) in cases {
            let period = anchor(day, "UTC").period_at(utc(&format!("{year}-02-20T12:00:00Z")));
            assert_eq!(
                period,
                Period {
                    start: utc(&format!("{start}T00:00:00Z")),
                    end: utc(&format!("{end}T00:00:00Z")),
                },
                "anchor {day} in {year}"
            );
        }
        // The 31st: Jan 31, Feb 28/29, Mar 31, Apr 30.
        let a = anchor(31, "UTC");
        let feb = a.period_at(utc("2025-03-01T00:00:00Z"));
        assert_eq!(feb.start, utc("2025-02-28T00:00:00Z"));
        assert_eq!(feb.end, utc("2025-03-31T00:00:00Z"));
        assert_eq!(a.next(feb).end, utc("2025-04-30T00:00:00Z"));
    }

    #[test]
    fn periods_are_contiguous_and_contain_their_instants() {
        for zone in [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
        ] {
            for day in [1, 15, 28, 29, 30, 31] {
                let a = anchor(day, zone);
                let mut period = a.period_at(utc("2023-12-20T00:00:00Z"));
                for _ in 0..30 {
                    let next = a.next(period);
                    assert_eq!(next.start, period.end, "{zone} {day}");
                    assert!(period.start < period.end);
                    let days = (period.end - period.start).num_hours();
                    assert!(
                        (27 * 24..=31 * 24 + 1).contains(&days),
                        "{zone} {day}: {days} h"
                    );
                    for at in [period.start, period.end - Duration::seconds(1)] {
                        assert_eq!(a.period_at(at), period, "{zone} {day} at {at}");
                    }
                    period = next;
                }
            }
        }
    }

    #[test]
    fn local_midnight_follows_daylight_saving_time() {
        // Berlin: CET (+01:00) in March until the 30th, CEST (+02:00) after.
        let a = anchor(1, "Europe/Berlin");
        let march = a.period_at(utc("2025-03-15T12:00:00Z"));
        assert_eq!(march.start, utc("2025-02-28T23:00:00Z"));
        assert_eq!(march.end, utc("2025-03-31T22:00:00Z"));
        assert_eq!(
            (march.end - march.start).num_hours(),
            31 * 24 - 1,
            "a March with the spring change is an hour short"
        );
        // New York, anchored on the DST change days themselves.
        let a = anchor(10, "America/New_York");
        assert_eq!(
            a.period_at(utc("2024-03-20T00:00:00Z")).start,
            utc("2024-03-10T05:00:00Z"),
            "midnight EST, before the 02:00 change"
        );
    }

    #[test]
    fn a_missing_midnight_starts_at_the_first_local_time_that_exists() {
        // Santiago de Chile moves its clocks from 00:00 to 01:00 on the
        // first Sunday of September (2024-09-08): that day has no midnight.
        let a = anchor(8, "America/Santiago");
        let start = a.period_at(utc("2024-09-20T00:00:00Z")).start;
        let local = start.with_timezone(&a.zone());
        assert_eq!(
            local.date_naive(),
            NaiveDate::from_ymd_opt(2024, 9, 8).expect("date")
        );
        assert_eq!(local.format("%H:%M").to_string(), "01:00");
        assert_eq!(start, utc("2024-09-08T04:00:00Z"));
    }

    /// Found by the `billing_calendar` fuzz target: gaps that are not whole
    /// quarter hours, and a gap of a whole day, where the period started at
    /// the next quarter hour (10 min late) or at midnight UTC.
    #[test]
    fn a_gap_of_odd_length_ends_where_it_ends() {
        // Rangoon left its mean time (+6:24:47) for +6:30 at midnight on
        // 1 January 1920: the day began at 00:05:13.
        let a = anchor(1, "Asia/Yangon");
        let start = a.period_at(utc("1920-01-15T00:00:00Z")).start;
        assert_eq!(start, utc("1919-12-31T17:35:13Z"));
        assert_eq!(
            start.with_timezone(&a.zone()).format("%F %T").to_string(),
            "1920-01-01 00:05:13"
        );
        // Samoa skipped 30 December 2011 (from -10 to +14): a period
        // anchored on the 30th began with 31 December.
        let a = anchor(30, "Pacific/Apia");
        let period = a.period_at(utc("2012-01-05T00:00:00Z"));
        assert_eq!(period.start, utc("2011-12-30T10:00:00Z"));
        assert_eq!(
            period
                .start
                .with_timezone(&a.zone())
                .format("%F %T")
                .to_string(),
            "2011-12-31 00:00:00"
        );
        assert_eq!(
            a.period_at(period.start - Duration::seconds(1)).end,
            period.start
        );
    }
}
