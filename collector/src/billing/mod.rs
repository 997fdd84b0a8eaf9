//! Billing settings and what they make of a period's traffic:
//! the fleet's defaults (`billing_defaults`, one row) and each node's
//! overrides (`node_settings`), the billing modes, usage, and the forecast
//! at the period's end. When periods start and end, and what happens when
//! one ends, is [`period`].

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod period;
pub mod rates;
pub mod settings;

/// The billing view's old path (the view is part of [`period`]).
pub use period::view;

use crate::{
    billing::period::calendar::{Anchor, Period},
    error::Error,
};

/// How a period's traffic is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Upload + download.
    Sum,
    /// The larger of upload and download.
    Max,
    /// Upload only.
    Upload,
    /// Download only.
    Download,
    /// The 95th percentile of the period's 5-minute rates (bytes per second,
    /// the larger direction).
    P95,
}

/// Which interfaces a node's counted traffic comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CountRule {
    /// Every interface but loopback (the seed's rule).
    All,
    /// Physical interfaces and those carrying a default route only, so
    /// that container and bridge traffic is not counted twice.
    Uplink,
}

macro_rules! names {
    ($type:ty, $what:literal, $($variant:path => $name:literal),+ $(,)?) => {
        impl $type {
            pub fn as_str(self) -> &'static str {
                match self { $($variant => $name),+ }
            }
        }

        impl FromStr for $type {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                match s {
                    $($name => Ok($variant),)+
                    _ => Err(Error::InvalidArgument(format!(
                        concat!($what, ": {:?} is not one of ", $($name, " "),+),
                        s
                    ))),
                }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names!(Mode, "mode", Mode::Sum => "sum", Mode::Max => "max", Mode::Upload => "upload",
    Mode::Download => "download", Mode::P95 => "p95");
names!(CountRule, "count rule", CountRule::All => "all", CountRule::Uplink => "uplink");

/// A node's effective settings: its own where it has them, else the
/// fleet's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `None`: periods end only on request.
    pub anchor: Option<Anchor>,
    pub mode: Mode,
    pub count_rule: CountRule,
    /// Bytes per period (bytes per second for [`Mode::P95`]).
    pub quota: Option<i64>,
    /// Percentages of the quota, ascending.
    pub thresholds: Vec<i32>,
    /// Bytes per second one interface carries at most in one direction.
    pub max_rate: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            anchor: None,
            mode: Mode::Sum,
            count_rule: CountRule::All,
            quota: None,
            thresholds: vec![80, 100],
            max_rate: 12_500_000_000,
        }
    }
}

/// The settings columns as stored (a node's, after COALESCE with the
/// fleet's), turned into [`Settings`]. `fallback_day` is the collector's
/// `--period-reset monthly:DAY`, used (in UTC) where neither has a day.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
#[sqlx(rename_all = "camelCase")]
pub struct Stored {
    pub anchor_day: Option<i32>,
    pub time_zone: String,
    pub mode: String,
    pub count_rule: String,
    pub quota: Option<i64>,
    pub thresholds: Vec<i32>,
    pub max_rate: i64,
}

impl Stored {
    pub fn resolve(&self, fallback_day: Option<u32>) -> Result<Settings, Error> {
        let anchor = match (self.anchor_day, fallback_day) {
            (Some(day), _) => Some(Anchor::new(
                u32::try_from(day).unwrap_or(0),
                &self.time_zone,
            )?),
            (None, Some(day)) => Some(Anchor::new(day, "UTC")?),
            (None, None) => None,
        };
        let mut thresholds = self.thresholds.clone();
        thresholds.sort_unstable();
        thresholds.dedup();
        Ok(Settings {
            anchor,
            mode: self.mode.parse()?,
            count_rule: self.count_rule.parse()?,
            quota: self.quota,
            thresholds,
            max_rate: self.max_rate,
        })
    }
}

/// The SQL that selects a node's effective settings columns (for
/// [`Stored`]) given `n` = "nodes" and a join on the fleet's row `d`
/// and the node's `s`: see [`SETTINGS_JOIN`].
pub const SETTINGS_COLUMNS: &str = r#"COALESCE(s."anchorDay", d."anchorDay") AS "anchorDay",
    COALESCE(s."timeZone", d."timeZone") AS "timeZone",
    COALESCE(s."mode", d."mode") AS "mode",
    COALESCE(s."countRule", d."countRule") AS "countRule",
    COALESCE(s."quota", d."quota") AS "quota",
    COALESCE(s."thresholds", d."thresholds") AS "thresholds",
    COALESCE(s."maxRate", d."maxRate") AS "maxRate""#;

/// The joins [`SETTINGS_COLUMNS`] needs, after `FROM "nodes" n`.
pub const SETTINGS_JOIN: &str = r#"CROSS JOIN "billing_defaults" d
    LEFT JOIN "node_settings" s ON s."nodeId" = n."id""#;

impl Stored {
    /// Reads the columns of [`SETTINGS_COLUMNS`] from `row`.
    pub fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        <Self as sqlx::FromRow<_>>::from_row(row)
    }
}

/// A period's usage under `mode`: bytes, or bytes per second for
/// [`Mode::P95`] (then `p95_rate` is used).
pub fn usage(mode: Mode, upload: i64, download: i64, p95_rate: i64) -> i64 {
    match mode {
        Mode::Sum => upload.saturating_add(download),
        Mode::Max => upload.max(download),
        Mode::Upload => upload,
        Mode::Download => download,
        Mode::P95 => p95_rate,
    }
}

/// The usage expected at the period's end: for byte modes, the usage so far
/// extrapolated linearly over the rest of the period; for [`Mode::P95`],
/// the current percentile. `None` for a period without an end.
pub fn forecast(mode: Mode, usage: i64, period: Option<Period>, now: DateTime<Utc>) -> Option<i64> {
    let period = period?;
    if mode == Mode::P95 {
        return Some(usage);
    }
    let elapsed = (now - period.start).num_milliseconds();
    let length = (period.end - period.start).num_milliseconds();
    if elapsed <= 0 || length <= 0 {
        return Some(usage);
    }
    if elapsed >= length {
        return Some(usage);
    }
    let projected = i128::from(usage) * i128::from(length) / i128::from(elapsed);
    Some(i64::try_from(projected).unwrap_or(i64::MAX))
}

/// The nearest-rank 95th percentile of `rates` (the ceil(0.95 n)-th
/// smallest; 0 for no slots).
pub fn p95(rates: &mut [i64]) -> i64 {
    if rates.is_empty() {
        return 0;
    }
    rates.sort_unstable();
    let rank = (rates.len() * 95).div_ceil(100);
    rates[rank.max(1) - 1]
}

/// The thresholds (percent of `quota`) that usage crossed going from
/// `before` to `after`: reached now and not before.
pub fn crossed(thresholds: &[i32], quota: i64, before: i64, after: i64) -> Vec<i32> {
    let reached = |usage: i64, percent: i32| {
        i128::from(usage) * 100 >= i128::from(quota) * i128::from(percent)
    };
    thresholds
        .iter()
        .copied()
        .filter(|&t| reached(after, t) && !reached(before, t))
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    #[test]
    fn usage_by_mode() {
        assert_eq!(usage(Mode::Sum, 3, 4, 99), 7);
        assert_eq!(usage(Mode::Max, 3, 4, 99), 4);
        assert_eq!(usage(Mode::Upload, 3, 4, 99), 3);
        assert_eq!(usage(Mode::Download, 3, 4, 99), 4);
        assert_eq!(usage(Mode::P95, 3, 4, 99), 99);
        assert_eq!(usage(Mode::Sum, i64::MAX, 1, 0), i64::MAX);
    }

    #[test]
    fn names_round_trip_and_bad_ones_say_what_is_allowed() {
        for mode in [
            Mode::Sum,
            Mode::Max,
            Mode::Upload,
            Mode::Download,
            Mode::P95,
        ] {
            assert_eq!(mode.as_str().parse::<Mode>().ok(), Some(mode));
        }
        let error = "median"
            .parse::<Mode>()
            .expect_err("not a mode")
            .to_string();
        assert!(error.contains("sum") && error.contains("p95"), "{error}");
        assert_eq!("uplink".parse::<CountRule>().ok(), Some(CountRule::Uplink));
        assert!("physical".parse::<CountRule>().is_err());
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut twenty: Vec<i64> = (1..=20).collect();
        assert_eq!(p95(&mut twenty), 19);
        let mut hundred: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(p95(&mut hundred), 95);
        assert_eq!(p95(&mut [7]), 7);
        assert_eq!(p95(&mut []), 0);
    }

    #[test]
    fn forecast_is_linear_over_the_elapsed_part() {
        let period = Period {
            start: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
        };
        let ten_days = Utc.with_ymd_and_hms(2026, 11, 11, 0, 0, 0).unwrap();
        assert_eq!(forecast(Mode::Sum, 100, Some(period), ten_days), Some(300));
        assert_eq!(forecast(Mode::P95, 100, Some(period), ten_days), Some(100));
        assert_eq!(forecast(Mode::Sum, 100, None, ten_days), None);
        assert_eq!(forecast(Mode::Sum, 0, Some(period), period.start), Some(0));
    }

    #[test]
    fn thresholds_cross_once() {
        assert_eq!(crossed(&[80, 100], 1000, 0, 799), Vec::<i32>::new());
        assert_eq!(crossed(&[80, 100], 1000, 0, 800), vec![80]);
        assert_eq!(crossed(&[80, 100], 1000, 790, 1500), vec![80, 100]);
        assert_eq!(crossed(&[80, 100], 1000, 800, 900), Vec::<i32>::new());
    }

    #[test]
    fn stored_settings_resolve_with_the_fallback_day() {
        let stored = Stored {
            time_zone: "Europe/Berlin".into(),
            mode: "max".into(),
            count_rule: "uplink".into(),
            thresholds: vec![100, 80, 80],
            max_rate: 10,
            ..Stored::default()
        };
        let settings = stored.resolve(None).expect("valid");
        assert_eq!(settings.anchor, None);
        assert_eq!(settings.thresholds, vec![80, 100]);
        let settings = stored.resolve(Some(15)).expect("valid");
        assert_eq!(settings.anchor.map(|a| a.day()), Some(15));
        let own = Stored {
            anchor_day: Some(31),
            ..stored
        };
        let anchor = own
            .resolve(Some(15))
            .expect("valid")
            .anchor
            .expect("anchor");
        assert_eq!((anchor.day(), anchor.zone().name()), (31, "Europe/Berlin"));
    }
}
