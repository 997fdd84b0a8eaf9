//! The billing calendar (`tally_collector::calendar`): any IANA zone
//! (`chrono_tz::TZ_VARIANTS`, by index), any anchor day, any instant in
//! the range the collector stores (years 1 to 9999). Nothing may panic; the
//! period containing an instant starts at or before it and ends after it;
//! consecutive periods abut; a period starts on its anchor day (the month's
//! last day when the month is shorter) at local midnight, or at the first
//! local time that exists after it.

#![no_main]

use arbitrary::Arbitrary;
use chrono::{
    DateTime, Datelike as _, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone as _, Utc,
};
use chrono_tz::TZ_VARIANTS;
use libfuzzer_sys::fuzz_target;
use tally_collector::calendar::Anchor;

#[derive(Debug, Arbitrary)]
struct Input {
    zone: u16,
    day: u8,
    unix_seconds: i64,
    nanos: u32,
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
const FIRST_SECOND: i64 = -62_135_596_800;
const LAST_SECOND: i64 = 253_402_300_799;

fuzz_target!(|input: Input| {
    let zone = TZ_VARIANTS[usize::from(input.zone) % TZ_VARIANTS.len()];
    let day = u32::from(input.day % 33);
    let anchor = match Anchor::new(day, zone.name()) {
        Ok(anchor) => anchor,
        Err(_) => {
            assert!(!(1..=31).contains(&day), "anchor {day} {zone} refused");
            return;
        }
    };
    let seconds = if (FIRST_SECOND..=LAST_SECOND).contains(&input.unix_seconds) {
        input.unix_seconds
    } else {
        FIRST_SECOND
            + input
                .unix_seconds
                .rem_euclid(LAST_SECOND - FIRST_SECOND + 1)
    };
    let Some(at) = DateTime::from_timestamp(seconds, input.nanos % 1_000_000_000) else {
        return;
    };
    let period = anchor.period_at(at);
    assert!(
        period.start <= at && at < period.end,
        "{zone} {day}: {at} not in {period:?}"
    );
    check_start(&anchor, period.start);
    let next = anchor.next(period);
    assert_eq!(
        next.start, period.end,
        "{zone} {day}: {period:?} then {next:?}"
    );
    assert!(next.start < next.end);
    check_start(&anchor, next.start);
    let before = anchor.period_at(period.start - Duration::nanoseconds(1));
    assert_eq!(
        before.end, period.start,
        "{zone} {day}: {before:?} then {period:?}"
    );
    assert_eq!(anchor.period_at(period.start), period);
    assert_eq!(
        anchor.period_at(period.end - Duration::nanoseconds(1)),
        period
    );
    let days = (period.end - period.start).num_days();
    assert!(
        (26..=32).contains(&days),
        "{zone} {day}: {period:?} is {days} days"
    );
});

/// `start` is local midnight of the anchor day (the month's last day when
/// the month is shorter), or, where that does not exist, the first local
/// time after it that does (to the second).
fn check_start(anchor: &Anchor, start: DateTime<Utc>) {
    let zone = anchor.zone();
    let local = start.with_timezone(&zone).naive_local();
    // The anchor day: in the start's month, or in the month before when a
    // gap took the start over a month's end.
    let anchor_date = |date: NaiveDate| {
        (1..=anchor.day())
            .rev()
            .find_map(|d| NaiveDate::from_ymd_opt(date.year(), date.month(), d))
            .expect("every month has a first day")
    };
    let mut day = anchor_date(local.date());
    if day > local.date() {
        let previous = local
            .date()
            .with_day(1)
            .and_then(|d| d.pred_opt())
            .expect("a month before");
        day = anchor_date(previous);
    }
    let midnight = day.and_time(NaiveTime::MIN);
    assert!(
        local >= midnight && local - midnight < Duration::days(2),
        "{zone} {}: a period starts at {local}",
        anchor.day()
    );
    match zone.from_local_datetime(&midnight) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
            assert_eq!(t.with_timezone(&Utc), start, "{zone}: not midnight")
        }
        LocalResult::None => {
            // Nothing between midnight and the start exists.
            assert!(local > midnight);
            let mut probe = midnight;
            while probe < local {
                assert!(
                    matches!(zone.from_local_datetime(&probe), LocalResult::None),
                    "{zone}: {probe} exists before the period's start {local}"
                );
                probe += Duration::minutes(1);
            }
            let just_before = local - Duration::seconds(1);
            assert!(
                matches!(zone.from_local_datetime(&just_before), LocalResult::None),
                "{zone}: {just_before} exists before the period's start {local}"
            );
        }
    }
}
