//! `tally-collector calibrate`, `calibrations` and `anomalies`: the
//! command line's side of [`tally_collector::corrections`], printed for
//! people (exact byte counts).

pub mod anomalies;
pub mod calibrate;
pub mod calibrations;

use chrono::NaiveDateTime;

/// When a correction was made or an anomaly seen: RFC 3339 in UTC, to the
/// millisecond.
fn time(t: NaiveDateTime) -> String {
    t.and_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
