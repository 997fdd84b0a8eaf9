//! `tally-collector billing show|set|defaults` and `tally-collector
//! periods`: billing settings and archived periods from the command line,
//! read and changed in the database through the same functions as the
//! HTTP API; `--json` prints what the API answers. Also the parsers of the
//! settings' values (byte sizes with units, threshold lists).

use std::fmt::Write as _;

use anyhow::Context as _;
use chrono::{NaiveDateTime, Utc};
use chrono_tz::Tz;
use sqlx::PgPool;
use tally_collector::{
    billing::{
        settings::{self, AnchorSource, Change, Defaults, Effective, Field, SettingsPatch},
        view,
    },
    http::billing as api,
    views,
};

use crate::{
    cli::{BillingCommand, BillingOutput, PeriodsArgs, SettingsArgs},
    top::human,
};

/// Runs `billing show|set|defaults`.
pub async fn run(pool: &PgPool, command: BillingCommand) -> anyhow::Result<()> {
    match command {
        BillingCommand::Show { node, output } => {
            let id = settings::node_id(pool, &node).await?;
            print_node(pool, &id, &output).await
        }
        BillingCommand::Set {
            node,
            settings: args,
            output,
        } => {
            let patch = args.patch().map_err(anyhow::Error::msg)?;
            let id = settings::node_id(pool, &node).await?;
            settings::patch_node(pool, &id, &patch)
                .await
                .with_context(|| format!("cannot change the billing settings of {node}"))?;
            if !output.json {
                println!("billing settings of {node} changed");
                if patch.moves_the_calendar() {
                    println!(
                        "note: the current period keeps its start; it now ends at the new anchor's next boundary"
                    );
                }
                println!();
            }
            print_node(pool, &id, &output).await
        }
        BillingCommand::Defaults {
            settings: args,
            json,
        } => {
            let patch = args.patch().map_err(anyhow::Error::msg)?;
            let defaults = if patch.is_empty() {
                settings::defaults(pool).await?
            } else {
                let defaults = settings::update_defaults(pool, &patch)
                    .await
                    .context("cannot change the fleet's billing defaults")?;
                if !json {
                    println!("fleet billing defaults changed");
                    if patch.moves_the_calendar() {
                        println!(
                            "note: current periods keep their starts; they end at the new anchor's next boundary"
                        );
                    }
                    println!();
                }
                defaults
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&api::BillingDefaults::from(&defaults))?
                );
            } else {
                print!("{}", render_defaults(&defaults));
            }
            Ok(())
        }
    }
}

/// Runs `periods NODE`.
pub async fn periods(pool: &PgPool, args: &PeriodsArgs) -> anyhow::Result<()> {
    let id = settings::node_id(pool, &args.node).await?;
    let periods = view::periods(pool, &id, args.limit).await?;
    if args.json {
        let list = api::PeriodList {
            node_id: id,
            periods: periods.iter().map(api::ArchivedPeriod::from).collect(),
        };
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", render_periods(&periods));
    }
    Ok(())
}

async fn print_node(pool: &PgPool, id: &str, output: &BillingOutput) -> anyhow::Result<()> {
    let fallback = output.period_reset.map(|schedule| schedule.day());
    let billing = view::node(pool, id, fallback, Utc::now()).await?;
    if output.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&api::NodeBilling::from(&billing))?
        );
    } else {
        let node = views::nodes::get(pool, id).await?;
        print!("{}", render_node(&node.name, &billing));
    }
    Ok(())
}

/// `1.0 GiB = 1073741824 bytes`.
fn bytes(value: i64) -> String {
    format!("{} = {value} bytes", human(i128::from(value)))
}

/// `1.0 GiB/s = 1073741824 bytes/s`.
fn rate(value: i64) -> String {
    format!("{}/s = {value} bytes/s", human(i128::from(value)))
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
    let p95 = values.mode == tally_collector::billing::Mode::P95;
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
    let p95 = values.mode == tally_collector::billing::Mode::P95;
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

/// Closed periods as a table (exact bytes; rates in bytes per second).
pub fn render_periods(periods: &[view::Archived]) -> String {
    if periods.is_empty() {
        return "no closed periods\n".to_owned();
    }
    let time = |t: NaiveDateTime| t.format("%Y-%m-%d %H:%M:%S").to_string();
    let mut rows = vec![[
        "START (UTC)".to_owned(),
        "END (UTC)".to_owned(),
        "CLOSED BY".to_owned(),
        "MODE".to_owned(),
        "UPLOAD".to_owned(),
        "DOWNLOAD".to_owned(),
        "USAGE".to_owned(),
        "PEAK B/S".to_owned(),
        "P95 B/S".to_owned(),
    ]];
    for p in periods {
        rows.push([
            time(p.start),
            time(p.end),
            p.closed_by.clone(),
            p.mode.clone(),
            p.upload.to_string(),
            p.download.to_string(),
            p.usage.map_or_else(|| "?".to_owned(), |u| u.to_string()),
            p.peak_rate
                .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            p.p95_rate.map_or_else(|| "-".to_owned(), |r| r.to_string()),
        ]);
    }
    let mut widths = [0; 9];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut text = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            // Times and names to the left, numbers to the right.
            if i < 4 {
                let _ = write!(text, "{cell:<width$}");
            } else {
                let _ = write!(text, "{cell:>width$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

impl SettingsArgs {
    /// The patch these options make; refuses a setting both given and
    /// cleared.
    pub fn patch(&self) -> Result<SettingsPatch, String> {
        fn given<T: Clone>(value: &Option<T>) -> Change<T> {
            value.clone().map_or(Change::Keep, Change::Set)
        }
        let mut patch = SettingsPatch {
            anchor_day: given(&self.anchor_day),
            time_zone: given(&self.time_zone),
            mode: given(&self.mode),
            count_rule: given(&self.count_rule),
            quota: given(&self.quota),
            thresholds: given(&self.thresholds.as_ref().map(|t| t.0.clone())),
            max_rate: given(&self.max_rate),
        };
        for &field in &self.clear {
            let set = match field {
                Field::AnchorDay => self.anchor_day.is_some(),
                Field::TimeZone => self.time_zone.is_some(),
                Field::Mode => self.mode.is_some(),
                Field::CountRule => self.count_rule.is_some(),
                Field::Quota => self.quota.is_some(),
                Field::Thresholds => self.thresholds.is_some(),
                Field::MaxRate => self.max_rate.is_some(),
            };
            if set {
                return Err(format!(
                    "--clear {0} cannot be used with --{0}: set it or clear it",
                    field.flag()
                ));
            }
            patch.clear(field);
        }
        Ok(patch)
    }
}

/// `--thresholds`: percentages of the quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Percents(pub Vec<i32>);

/// `80,100` (or `none` for no thresholds): each 1 to 1000, at most 10.
pub fn parse_thresholds(text: &str) -> Result<Percents, String> {
    if text.trim() == "none" {
        return Ok(Percents(Vec::new()));
    }
    let percents = text
        .split(',')
        .map(|p| {
            p.trim()
                .trim_end_matches('%')
                .parse::<i64>()
                .map_err(|_| format!("{p:?} is not a whole percentage (e.g. 80,100, or none)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    settings::check_thresholds(&percents).map(Percents)
}

pub fn parse_anchor_day(text: &str) -> Result<u32, String> {
    let day = text
        .parse::<i64>()
        .map_err(|_| format!("{text:?} is not a day of the month (1-31)"))?;
    settings::check_anchor_day(day)
}

pub fn parse_time_zone(text: &str) -> Result<String, String> {
    settings::check_time_zone(text)
}

/// `--quota`: a byte size above 0 ([`parse_bytes`]).
pub fn parse_quota(text: &str) -> Result<i64, String> {
    settings::check_quota(parse_bytes(text)?)
}

/// `--max-rate`: bytes per second above 0 ([`parse_bytes`]).
pub fn parse_max_rate(text: &str) -> Result<i64, String> {
    settings::check_max_rate(parse_bytes(text)?)
}

/// A number of bytes (or bytes per second), exactly: digits with an
/// optional fraction, then an optional unit (any case): `B`; `kB`, `MB`,
/// `GB`, `TB`, `PB`, `EB` (powers of 1000); `KiB` … `EiB` (powers of 1024);
/// `bit`, `kbit`, `Mbit`, `Gbit`, `Tbit`, `Pbit` (bits: an eighth of the
/// byte unit); then an optional `/s`. The result must be a whole number of
/// bytes: `1.5KiB` is 1536, `0.1B` is refused.
pub fn parse_bytes(text: &str) -> Result<i128, String> {
    let bad = |why: &str| {
        format!("{text:?} is not a byte size ({why}); e.g. 500GiB, 1.5TB, 10Gbit, 1000000")
    };
    let trimmed = text.trim();
    let trimmed = trimmed.strip_suffix("/s").unwrap_or(trimmed).trim_end();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("no number"));
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) || number.ends_with('.') {
        return Err(bad("a malformed fraction"));
    }
    if whole.len() + fraction.len() > 24 {
        return Err(bad("too many digits"));
    }
    let (multiplier, divisor): (i128, i128) = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => (1, 1),
        "kb" => (1_000, 1),
        "mb" => (1_000_000, 1),
        "gb" => (1_000_000_000, 1),
        "tb" => (1_000_000_000_000, 1),
        "pb" => (1_000_000_000_000_000, 1),
        "eb" => (1_000_000_000_000_000_000, 1),
        "kib" => (1 << 10, 1),
        "mib" => (1 << 20, 1),
        "gib" => (1 << 30, 1),
        "tib" => (1 << 40, 1),
        "pib" => (1 << 50, 1),
        "eib" => (1 << 60, 1),
        "bit" => (1, 8),
        "kbit" => (1_000, 8),
        "mbit" => (1_000_000, 8),
        "gbit" => (1_000_000_000, 8),
        "tbit" => (1_000_000_000_000, 8),
        "pbit" => (1_000_000_000_000_000, 8),
        _ => return Err(bad("an unknown unit")),
    };
    // whole.fraction × multiplier / divisor, as (digits × multiplier) /
    // (10^len(fraction) × divisor), in i128 (24 digits × 2^60 fits).
    let digits: i128 = format!("{whole}{fraction}")
        .parse()
        .map_err(|_| bad("no number"))?;
    let scale = 10_i128.pow(fraction.len() as u32) * divisor;
    let scaled = digits
        .checked_mul(multiplier)
        .ok_or_else(|| bad("too large"))?;
    if scaled % scale != 0 {
        return Err(bad("not a whole number of bytes"));
    }
    Ok(scaled / scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_are_exact() {
        for (text, bytes) in [
            ("0", 0),
            ("1000000", 1_000_000),
            ("500GiB", 500 << 30),
            ("500 GiB", 500 << 30),
            ("1TB", 1_000_000_000_000),
            ("1tb", 1_000_000_000_000),
            ("1.5TB", 1_500_000_000_000),
            ("1.5KiB", 1536),
            ("100Gbit", 12_500_000_000),
            ("100Gbit/s", 12_500_000_000),
            ("1Mbit", 125_000),
            ("12B", 12),
            ("8EiB", 8 << 60),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for text in [
            "",
            "GiB",
            "1.5",
            "0.1B",
            "1bit",
            "1..5KiB",
            "1.KiB",
            "-1",
            "1 parsec",
            "1e9",
            "99999999999999999999999999",
        ] {
            let error = parse_bytes(text).expect_err(text);
            assert!(error.contains("is not a byte size"), "{text}: {error}");
        }
        assert_eq!(parse_quota("8EiB").ok(), None, "above 2^63 - 1");
        assert_eq!(parse_quota("0").ok(), None, "above 0");
        assert_eq!(parse_max_rate("10Gbit").ok(), Some(1_250_000_000));
    }

    #[test]
    fn thresholds_and_days_are_checked() {
        assert_eq!(parse_thresholds("100,80"), Ok(Percents(vec![80, 100])));
        assert_eq!(parse_thresholds("50%, 90%"), Ok(Percents(vec![50, 90])));
        assert_eq!(parse_thresholds("none"), Ok(Percents(vec![])));
        assert!(parse_thresholds("80,,100").is_err());
        assert!(parse_thresholds("0").is_err());
        assert_eq!(parse_anchor_day("31"), Ok(31));
        assert!(parse_anchor_day("32").is_err());
        assert!(parse_anchor_day("first").is_err());
        assert_eq!(
            parse_time_zone("Europe/Berlin").as_deref(),
            Ok("Europe/Berlin")
        );
        assert!(parse_time_zone("Berlin").is_err());
    }
}
