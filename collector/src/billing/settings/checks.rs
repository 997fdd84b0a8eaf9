//! The checks of single setting values. They return the reason without
//! the field's name, so that the API can prefix its JSON name and the
//! command line its flag.

use crate::{
    billing::{CountRule, Mode},
    calendar::Anchor,
};

/// Most thresholds per quota.
pub const MAX_THRESHOLDS: usize = 10;
/// Largest threshold, in percent of the quota.
pub const MAX_THRESHOLD: i64 = 1000;

/// A day of the month that periods start on.
pub fn check_anchor_day(day: i64) -> Result<u32, String> {
    match u32::try_from(day) {
        Ok(day) if (1..=31).contains(&day) => Ok(day),
        _ => Err(format!(
            "{day} is not a day of the month (1-31; a later day than a month has means its last day)"
        )),
    }
}

/// An IANA time zone name, as the time zone database spells it.
pub fn check_time_zone(zone: &str) -> Result<String, String> {
    Anchor::new(1, zone)
        .map(|anchor| anchor.zone().name().to_owned())
        .map_err(|_| format!("{zone:?} is not an IANA time zone name (e.g. Europe/Berlin, UTC)"))
}

pub fn check_mode(mode: &str) -> Result<Mode, String> {
    mode.parse()
        .map_err(|_| format!("{mode:?} is not a billing mode (sum, max, upload, download or p95)"))
}

pub fn check_count_rule(rule: &str) -> Result<CountRule, String> {
    rule.parse()
        .map_err(|_| format!("{rule:?} is not a count rule (all or uplink)"))
}

/// A quota: bytes per period (bytes per second in mode p95), above 0.
pub fn check_quota(bytes: i128) -> Result<i64, String> {
    positive(bytes, "bytes (bytes per second in mode p95)")
}

/// A maximum rate: bytes per second, above 0.
pub fn check_max_rate(bytes_per_second: i128) -> Result<i64, String> {
    positive(bytes_per_second, "bytes per second")
}

fn positive(value: i128, unit: &str) -> Result<i64, String> {
    match i64::try_from(value) {
        Ok(value) if value > 0 => Ok(value),
        _ => Err(format!(
            "{value} is not a whole number of {unit} from 1 to 2^63 - 1"
        )),
    }
}

/// Quota thresholds in percent: each 1 to 1000, at most 10 given (repeats
/// count, as the API's schema has it); returned ascending without
/// repeats. None at all is allowed (no quota events).
pub fn check_thresholds(percents: &[i64]) -> Result<Vec<i32>, String> {
    if percents.len() > MAX_THRESHOLDS {
        return Err(format!(
            "{} thresholds; at most {MAX_THRESHOLDS}",
            percents.len()
        ));
    }
    let mut checked = Vec::with_capacity(percents.len());
    for &percent in percents {
        match i32::try_from(percent) {
            Ok(p) if (1..=MAX_THRESHOLD).contains(&percent) => checked.push(p),
            _ => {
                return Err(format!(
                    "{percent} is not a percentage of the quota from 1 to {MAX_THRESHOLD}"
                ));
            }
        }
    }
    checked.sort_unstable();
    checked.dedup();
    Ok(checked)
}
