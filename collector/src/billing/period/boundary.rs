//! Period boundaries met by a heartbeat: which of the node's
//! periods have ended by now, and how the heartbeat's bytes are shared
//! between them and the current period, by the time it covers. Pure; times
//! are UTC.

use chrono::{NaiveDateTime, TimeDelta};

use super::calendar::Anchor;

/// Most periods closed at once (a node silent for longer is closed up to
/// the latest ones; the earlier span goes to the first closed period).
const MOST_CLOSED: usize = 1200;

/// A period that ended, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
}

/// The periods that ended between the node's current `period_start` and
/// `now`, oldest first, and the start of the period `now` is in. `None`
/// when the current period has not ended.
pub fn ended(
    anchor: &Anchor,
    period_start: NaiveDateTime,
    now: NaiveDateTime,
) -> Option<(Vec<Ended>, NaiveDateTime)> {
    let current = anchor.period_at(now.and_utc()).start.naive_utc();
    if period_start >= current {
        return None;
    }
    let mut ended = Vec::new();
    let mut start = period_start;
    while start < current {
        let mut end = anchor.period_at(start.and_utc()).end.naive_utc();
        if end > current || ended.len() + 1 >= MOST_CLOSED {
            end = current;
        }
        ended.push(Ended { start, end });
        start = end;
    }
    Some((ended, current))
}

/// Shares `bytes` (upload, download), counted over `[from, to]`, between
/// the `ended` periods by the time of the span each covers; the rest (at
/// least the rounding remainder) goes to the current period. Returns the
/// shares of the ended periods and the current period's part.
pub fn share(
    bytes: (i64, i64),
    from: Option<NaiveDateTime>,
    to: NaiveDateTime,
    ended: &[Ended],
) -> (Vec<(i64, i64)>, (i64, i64)) {
    let span = from.map(|from| (from, to - from));
    let Some((from, length)) = span.filter(|(_, length)| *length > TimeDelta::zero()) else {
        return (vec![(0, 0); ended.len()], bytes);
    };
    let total = i128::from(length.num_milliseconds().max(1));
    let mut rest = bytes;
    let shares = ended
        .iter()
        .map(|period| {
            let start = period.start.max(from);
            let end = period.end.min(to);
            if end <= start {
                return (0, 0);
            }
            let part = i128::from((end - start).num_milliseconds());
            let of = |b: i64| i64::try_from(i128::from(b) * part / total).unwrap_or(0);
            let (up, down) = (of(bytes.0), of(bytes.1));
            rest = (rest.0 - up, rest.1 - down);
            (up, down)
        })
        .collect();
    (shares, rest)
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|d| d.and_hms_opt(h, min, 0))
            .expect("valid")
    }

    fn anchor(day: u32, zone: &str) -> Anchor {
        Anchor::new(day, zone).expect("valid")
    }

    #[test]
    fn nothing_ends_within_a_period() {
        let a = anchor(1, "UTC");
        assert_eq!(
            ended(&a, at(2026, 11, 1, 0, 0), at(2026, 11, 30, 23, 59)),
            None
        );
        // A manual reset mid-period: the period runs to the anchor.
        assert_eq!(
            ended(&a, at(2026, 11, 20, 8, 0), at(2026, 11, 30, 0, 0)),
            None
        );
    }

    #[test]
    fn one_or_several_periods_end() {
        let a = anchor(31, "UTC");
        let (closed, current) =
            ended(&a, at(2026, 1, 31, 0, 0), at(2026, 3, 2, 0, 0)).expect("ended");
        assert_eq!(
            closed,
            vec![Ended {
                start: at(2026, 1, 31, 0, 0),
                end: at(2026, 2, 28, 0, 0)
            }]
        );
        assert_eq!(current, at(2026, 2, 28, 0, 0));
        // Mid-period reset start, then two boundaries.
        let a = anchor(15, "Europe/Berlin");
        let (closed, current) =
            ended(&a, at(2026, 1, 20, 9, 0), at(2026, 3, 16, 0, 0)).expect("ended");
        assert_eq!(closed.len(), 2);
        assert_eq!(closed[0].start, at(2026, 1, 20, 9, 0));
        assert_eq!(closed[0].end, at(2026, 2, 14, 23, 0)); // 00:00 CET
        assert_eq!(closed[1].end, current);
        assert_eq!(current, at(2026, 3, 14, 23, 0));
    }

    #[test]
    fn a_straddling_heartbeat_is_shared_by_time() {
        let closed = [Ended {
            start: at(2026, 10, 1, 0, 0),
            end: at(2026, 11, 1, 0, 0),
        }];
        // 10 minutes before the boundary to 30 minutes after: a quarter.
        let (shares, rest) = share(
            (4_001, 400),
            Some(at(2026, 10, 31, 23, 50)),
            at(2026, 11, 1, 0, 30),
            &closed,
        );
        assert_eq!(shares, vec![(1_000, 100)]);
        assert_eq!(rest, (3_001, 300));
        // No previous heartbeat: all to the current period.
        let (shares, rest) = share((7, 8), None, at(2026, 11, 1, 0, 30), &closed);
        assert_eq!((shares, rest), (vec![(0, 0)], (7, 8)));
    }

    #[test]
    fn shares_always_add_up() {
        let closed = [
            Ended {
                start: at(2026, 9, 1, 0, 0),
                end: at(2026, 10, 1, 0, 0),
            },
            Ended {
                start: at(2026, 10, 1, 0, 0),
                end: at(2026, 11, 1, 0, 0),
            },
        ];
        for bytes in [(0, 0), (1, 1), (999_999_937, 3), (i64::MAX / 2, 17)] {
            let (shares, rest) = share(
                bytes,
                Some(at(2026, 9, 17, 3, 7)),
                at(2026, 11, 3, 5, 11),
                &closed,
            );
            let up: i64 = shares.iter().map(|s| s.0).sum::<i64>() + rest.0;
            let down: i64 = shares.iter().map(|s| s.1).sum::<i64>() + rest.1;
            assert_eq!((up, down), bytes);
            assert!(rest.0 >= 0 && rest.1 >= 0);
        }
    }
}
