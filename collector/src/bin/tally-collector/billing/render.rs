//! How `billing show|set|defaults` print settings and the current period
//! for people: each byte count in IEC units and exactly.

use std::fmt::Write as _;

use chrono::NaiveDateTime;
use chrono_tz::Tz;
use tally_collector::billing::{
    Mode,
    settings::{AnchorSource, Defaults, Effective, Field},
    view,
};
use tally_common::units::human_bytes;

/// `1.0 GiB = 1073741824 bytes`.
fn bytes(value: i64) -> String {
    format!("{} = {value} bytes", human_bytes(i128::from(value)))
}

/// `1.0 GiB/s = 1073741824 bytes/s`.
fn rate(value: i64) -> String {
    format!("{}/s = {value} bytes/s", human_bytes(i128::from(value)))
}

fn quota_text(quota: Option<i64>, p95: bool) -> String {
    match quota {
        None => "none".to_owned(),
        Some(q) if p95 => rate(q),
        Some(q) => bytes(q),
    }
}

fn thresholds_text(thresholds: &[i32]) -> String {
    if thresholds.is_empty() {
        return "none (no quota events)".to_owned();
    }
    let percents: Vec<_> = thresholds.iter().map(|t| format!("{t}%")).collect();
    percents.join(", ")
}

/// `2026-11-15 00:00:00 CET (2026-11-14 23:00:00 UTC)`, or only UTC.
fn local(t: NaiveDateTime, zone: Tz) -> String {
    let utc = format!("{} UTC", t.format("%Y-%m-%d %H:%M:%S"));
    if zone == Tz::UTC {
        return utc;
    }
    let local = t.and_utc().with_timezone(&zone);
    format!("{} ({utc})", local.format("%Y-%m-%d %H:%M:%S %Z"))
}

fn line(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(out, "{label:<12}{value}");
}

/// A node's settings (each marked as its own or the fleet's) and current
/// period, as text.
pub fn render_node(name: &str, billing: &view::NodeBilling) -> String {
    let effective: &Effective = &billing.settings;
    let values = &effective.values;
    let own = effective.own.fields();
    let from = |field: Field| {
        if own.contains(&field) {
            " (own)"
        } else {
            " (fleet)"
        }
    };
    let zone = effective.settings.anchor.map_or(Tz::UTC, |a| a.zone());
    let mut out = String::new();
    line(&mut out, "node", &format!("{name} ({})", effective.node_id));
    let anchor = match (effective.anchor_source, effective.settings.anchor) {
        (AnchorSource::PeriodReset, Some(anchor)) => format!(
            "{} in UTC (the collector's --period-reset; neither the node nor the fleet has one)",
            anchor.day()
        ),
        (_, Some(anchor)) => format!("{}{}", anchor.day(), from(Field::AnchorDay)),
        (_, None) => format!(
            "none: periods end only on request{}",
            from(Field::AnchorDay)
        ),
    };
    line(&mut out, "anchor day", &anchor);
    let zone_text = if effective.anchor_source == AnchorSource::PeriodReset {
        format!(
            "UTC for the --period-reset day ({}{} once there is an anchor day)",
            values.time_zone,
            from(Field::TimeZone)
        )
    } else {
        format!("{}{}", values.time_zone, from(Field::TimeZone))
    };
    line(&mut out, "time zone", &zone_text);
    line(
        &mut out,
        "mode",
        &format!("{}{}", values.mode, from(Field::Mode)),
    );
    line(
        &mut out,
        "count rule",
        &format!("{}{}", values.count_rule, from(Field::CountRule)),
    );
    let p95 = values.mode == Mode::P95;
    line(
        &mut out,
        "quota",
        &format!("{}{}", quota_text(values.quota, p95), from(Field::Quota)),
    );
    line(
        &mut out,
        "thresholds",
        &format!(
            "{}{}",
            thresholds_text(&values.thresholds),
            from(Field::Thresholds)
        ),
    );
    line(
        &mut out,
        "max rate",
        &format!("{}{}", rate(values.max_rate), from(Field::MaxRate)),
    );

    let period = &billing.period;
    let _ = writeln!(out, "\ncurrent period");
    line(&mut out, "start", &local(period.start, zone));
    line(
        &mut out,
        "end",
        &period.end.map_or_else(
            || "open: ends on request".to_owned(),
            |end| local(end, zone),
        ),
    );
    line(&mut out, "upload", &bytes(period.upload));
    line(&mut out, "download", &bytes(period.download));
    let usage = if p95 {
        rate(period.usage)
    } else {
        bytes(period.usage)
    };
    line(&mut out, "usage", &format!("{usage} ({})", values.mode));
    if let (Some(_), Some(percent)) = (period.quota, period.percent) {
        line(&mut out, "of quota", &format!("{percent:.2} %"));
    }
    let forecast = match period.forecast {
        None => "none (the period has no end)".to_owned(),
        Some(f) if p95 => format!("{} at the period's end", rate(f)),
        Some(f) => format!("{} at the period's end", bytes(f)),
    };
    line(&mut out, "forecast", &forecast);
    line(&mut out, "peak rate", &rate(period.peak_rate));
    line(&mut out, "p95 rate", &rate(period.p95_rate));
    out
}

/// The fleet's defaults, as text.
pub fn render_defaults(defaults: &Defaults) -> String {
    let values = &defaults.values;
    let mut out = String::new();
    line(
        &mut out,
        "anchor day",
        &values.anchor_day.map_or_else(
            || "none: periods end on request (or on serve --period-reset)".to_owned(),
            |day| day.to_string(),
        ),
    );
    line(&mut out, "time zone", &values.time_zone);
    line(&mut out, "mode", values.mode.as_str());
    line(&mut out, "count rule", values.count_rule.as_str());
    let p95 = values.mode == Mode::P95;
    line(&mut out, "quota", &quota_text(values.quota, p95));
    line(&mut out, "thresholds", &thresholds_text(&values.thresholds));
    line(&mut out, "max rate", &rate(values.max_rate));
    line(
        &mut out,
        "updated",
        &format!("{} UTC", defaults.updated_at.format("%Y-%m-%d %H:%M:%S")),
    );
    out
}
