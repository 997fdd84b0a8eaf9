//! Billing settings as people read and change them: the fleet's defaults
//! (`billing_defaults`, one row), a node's own overrides (`node_settings`,
//! NULL = the fleet's value), a node's effective settings, and the patches
//! an admin applies to either (API and command line alike).
//!
//! A patch names only what changes: per field, keep, clear or set. On a
//! node, clearing removes the override (the fleet's value applies again);
//! on the fleet, clearing `anchorDay` or `quota` means none, and clearing
//! any other field restores the built-in default ([`Settings::default`],
//! time zone `UTC`). Every value is checked before anything is written,
//! and a refused patch changes nothing.
//!
//! Changing an anchor day or a time zone (the node's or the fleet's) does
//! not move the current period's start: the period that runs keeps its
//! `periodStart`, and its end is the new anchor's next boundary after that
//! start, because the store computes boundaries from the settings as they
//! are when it looks ([`crate::ingest`], [`crate::period`]).

use std::{fmt, str::FromStr};

use chrono::NaiveDateTime;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row as _, postgres::PgRow};
use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Type, schema::SchemaType};

use super::{CountRule, Mode, SETTINGS_COLUMNS, SETTINGS_JOIN, Settings, Stored};
use crate::{calendar::Anchor, error::Error};

/// Most thresholds per quota.
pub const MAX_THRESHOLDS: usize = 10;
/// Largest threshold, in percent of the quota.
pub const MAX_THRESHOLD: i64 = 1000;

/// One setting, by its JSON name (`anchorDay`) or its command-line name
/// (`anchor-day`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    AnchorDay,
    TimeZone,
    Mode,
    CountRule,
    Quota,
    Thresholds,
    MaxRate,
}

impl Field {
    pub const ALL: [Field; 7] = [
        Field::AnchorDay,
        Field::TimeZone,
        Field::Mode,
        Field::CountRule,
        Field::Quota,
        Field::Thresholds,
        Field::MaxRate,
    ];

    /// The name in JSON (and in error messages of the API).
    pub fn name(self) -> &'static str {
        match self {
            Field::AnchorDay => "anchorDay",
            Field::TimeZone => "timeZone",
            Field::Mode => "mode",
            Field::CountRule => "countRule",
            Field::Quota => "quota",
            Field::Thresholds => "thresholds",
            Field::MaxRate => "maxRate",
        }
    }

    /// The name on the command line (without `--`).
    pub fn flag(self) -> &'static str {
        match self {
            Field::AnchorDay => "anchor-day",
            Field::TimeZone => "time-zone",
            Field::Mode => "mode",
            Field::CountRule => "count-rule",
            Field::Quota => "quota",
            Field::Thresholds => "thresholds",
            Field::MaxRate => "max-rate",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Field {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Field::ALL
            .into_iter()
            .find(|f| f.name() == s || f.flag() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Field::ALL.iter().map(|f| f.flag()).collect();
                format!("{s:?} is not a setting ({})", names.join(", "))
            })
    }
}

// The checks of single values. They return the reason without the field's
// name, so that the API can prefix its JSON name and the command line its
// flag.

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

/// What a patch does to one setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Change<T> {
    /// Left as it is.
    #[default]
    Keep,
    /// On a node: the override goes (the fleet's value applies). On the
    /// fleet: none (`anchorDay`, `quota`) or the built-in default.
    Clear,
    Set(T),
}

impl<T> Change<T> {
    pub fn is_keep(&self) -> bool {
        matches!(self, Change::Keep)
    }

    /// Whether the setting is written, and the value written (`None` for
    /// NULL).
    fn write(&self) -> (bool, Option<&T>) {
        match self {
            Change::Keep => (false, None),
            Change::Clear => (true, None),
            Change::Set(value) => (true, Some(value)),
        }
    }
}

/// What an admin changes, checked ([`SettingsPatch::check`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    pub anchor_day: Change<u32>,
    /// An IANA name as the time zone database spells it.
    pub time_zone: Change<String>,
    pub mode: Change<Mode>,
    pub count_rule: Change<CountRule>,
    pub quota: Change<i64>,
    pub thresholds: Change<Vec<i32>>,
    pub max_rate: Change<i64>,
}

/// A patch as the API receives it: a JSON object whose members are the
/// settings to change (absent: unchanged; `null`: cleared).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonPatch {
    /// The day of the month periods start on, 1 to 31, at local midnight in
    /// `timeZone` (the month's last day when it is shorter). `null`: on a
    /// node, the fleet's day; on the fleet, none (periods end only on
    /// request, or on the collector's `--period-reset` day in UTC).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 31, example = 1)]
    pub anchor_day: Option<Value>,
    /// An IANA time zone name. `null`: on a node, the fleet's; on the
    /// fleet, `UTC`.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = time_zone_schema)]
    pub time_zone: Option<Value>,
    /// `sum`, `max`, `upload`, `download` or `p95`. `null`: on a node, the
    /// fleet's; on the fleet, `sum`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Mode>)]
    pub mode: Option<Value>,
    /// `all` (every interface but loopback) or `uplink` (physical ones and
    /// those carrying a default route). `null`: on a node, the fleet's; on
    /// the fleet, `all`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CountRule>)]
    pub count_rule: Option<Value>,
    /// Bytes per period (bytes per second in mode `p95`), above 0, as a
    /// JSON integer or a decimal string. `null`: on a node, the fleet's; on
    /// the fleet, none.
    /// The pattern is that of the string form up to 18 digits (values up to
    /// 2^63 - 1 are taken).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^0{0,12}[1-9][0-9]{0,17}$", example = "1099511627776")]
    pub quota: Option<Value>,
    /// Percentages of the quota at which a quota event fires (once per
    /// period each): at most 10, each 1 to 1000; `[]` for none. `null`: on
    /// a node, the fleet's; on the fleet, `[80, 100]`.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = thresholds_schema)]
    pub thresholds: Option<Value>,
    /// The most bytes per second one interface carries in one direction
    /// (larger deltas are held as anomalies), above 0, as a JSON integer or
    /// a decimal string. `null`: on a node, the fleet's; on the fleet,
    /// 12500000000 (100 Gbit/s).
    /// The pattern is that of the string form up to 18 digits (values up to
    /// 2^63 - 1 are taken).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^0{0,12}[1-9][0-9]{0,17}$", example = "12500000000")]
    pub max_rate: Option<Value>,
}

/// The schema of [`JsonPatch::time_zone`]: a name of the time zone
/// database, exactly as `check_time_zone` takes them, or null.
fn time_zone_schema() -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .enum_values(Some(
            chrono_tz::TZ_VARIANTS
                .iter()
                .map(|zone| Value::from(zone.name()))
                .chain([Value::Null]),
        ))
        .description(Some(
            "An IANA time zone name. `null`: on a node, the fleet's; on the fleet, `UTC`.",
        ))
        .examples(["Europe/Berlin"])
        .build()
}

/// The schema of [`JsonPatch::thresholds`], as `check_thresholds` takes
/// them (repeats count once), or null.
fn thresholds_schema() -> utoipa::openapi::Array {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(MAX_THRESHOLD)),
        )
        .max_items(Some(MAX_THRESHOLDS))
        .description(Some(
            "Percentages of the quota at which a quota event fires (once per period each): at \
             most 10, each 1 to 1000; `[]` for none. `null`: on a node, the fleet's; on the \
             fleet, `[80, 100]`.",
        ))
        .examples([serde_json::json!([80, 100])])
        .build()
}

/// A member that is present, `null` included (absent members stay `None`
/// through `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// One member of a [`JsonPatch`], checked by `parse`.
fn change<T>(
    field: Field,
    value: Option<&Value>,
    parse: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<Change<T>, Error> {
    match value {
        None => Ok(Change::Keep),
        Some(Value::Null) => Ok(Change::Clear),
        Some(value) => parse(value)
            .map(Change::Set)
            .map_err(|reason| Error::InvalidArgument(format!("{field}: {reason}"))),
    }
}

fn integer(value: &Value) -> Option<i128> {
    value
        .as_i64()
        .map(i128::from)
        .or_else(|| value.as_u64().map(i128::from))
}

/// A small whole number (a day, a percentage) as JSON Schema's `integer`
/// has it: a number without a fractional part, written `4` or `4.0` alike.
/// (Byte counts stay [`integer`]s or decimal strings: no exponents.)
fn whole(value: &Value) -> Option<i128> {
    integer(value).or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 1e9)
            .map(|f| f as i128)
    })
}

/// A JSON integer or a string of decimal digits.
fn amount(value: &Value, unit: &str) -> Result<i128, String> {
    let parsed = match value {
        Value::String(text)
            if !text.is_empty() && text.len() <= 30 && text.bytes().all(|b| b.is_ascii_digit()) =>
        {
            text.parse().ok()
        }
        _ => integer(value),
    };
    parsed.ok_or_else(|| {
        format!("{value} is not a whole number of {unit} (a JSON integer or a decimal string)")
    })
}

fn text(value: &Value) -> Result<&str, String> {
    value
        .as_str()
        .ok_or_else(|| format!("{value} is not a string"))
}

impl JsonPatch {
    /// The patch, every present value checked; the first bad one refused
    /// with a message that starts with its JSON name.
    pub fn parse(&self) -> Result<SettingsPatch, Error> {
        Ok(SettingsPatch {
            anchor_day: change(Field::AnchorDay, self.anchor_day.as_ref(), |v| {
                let day =
                    whole(v).ok_or_else(|| format!("{v} is not a day of the month (1-31)"))?;
                check_anchor_day(i64::try_from(day).unwrap_or(i64::MAX))
            })?,
            time_zone: change(Field::TimeZone, self.time_zone.as_ref(), |v| {
                check_time_zone(text(v)?)
            })?,
            mode: change(Field::Mode, self.mode.as_ref(), |v| check_mode(text(v)?))?,
            count_rule: change(Field::CountRule, self.count_rule.as_ref(), |v| {
                check_count_rule(text(v)?)
            })?,
            quota: change(Field::Quota, self.quota.as_ref(), |v| {
                check_quota(amount(v, "bytes")?)
            })?,
            thresholds: change(Field::Thresholds, self.thresholds.as_ref(), |v| {
                let bad = || format!("{v} is not a list of whole percentages such as [80, 100]");
                let list = v.as_array().ok_or_else(bad)?;
                let percents = list
                    .iter()
                    .map(|p| whole(p).map(|p| i64::try_from(p).unwrap_or(i64::MAX)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(bad)?;
                check_thresholds(&percents)
            })?,
            max_rate: change(Field::MaxRate, self.max_rate.as_ref(), |v| {
                check_max_rate(amount(v, "bytes per second")?)
            })?,
        })
    }
}

impl SettingsPatch {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.anchor_day.is_keep()
            && self.time_zone.is_keep()
            && self.mode.is_keep()
            && self.count_rule.is_keep()
            && self.quota.is_keep()
            && self.thresholds.is_keep()
            && self.max_rate.is_keep()
    }

    /// Marks `field` to be cleared.
    pub fn clear(&mut self, field: Field) {
        match field {
            Field::AnchorDay => self.anchor_day = Change::Clear,
            Field::TimeZone => self.time_zone = Change::Clear,
            Field::Mode => self.mode = Change::Clear,
            Field::CountRule => self.count_rule = Change::Clear,
            Field::Quota => self.quota = Change::Clear,
            Field::Thresholds => self.thresholds = Change::Clear,
            Field::MaxRate => self.max_rate = Change::Clear,
        }
    }

    /// Whether the patch changes when periods start.
    pub fn moves_the_calendar(&self) -> bool {
        !self.anchor_day.is_keep() || !self.time_zone.is_keep()
    }

    /// Checks every value set (however the patch was made), naming the
    /// first bad field by its JSON name; returns the patch with time zones
    /// spelled as the time zone database does and thresholds in order.
    pub fn check(&self) -> Result<SettingsPatch, Error> {
        fn set<T, U>(
            field: Field,
            change: &Change<T>,
            check: impl FnOnce(&T) -> Result<U, String>,
        ) -> Result<Change<U>, Error> {
            match change {
                Change::Keep => Ok(Change::Keep),
                Change::Clear => Ok(Change::Clear),
                Change::Set(value) => check(value)
                    .map(Change::Set)
                    .map_err(|reason| Error::InvalidArgument(format!("{field}: {reason}"))),
            }
        }
        Ok(SettingsPatch {
            anchor_day: set(Field::AnchorDay, &self.anchor_day, |d| {
                check_anchor_day(i64::from(*d))
            })?,
            time_zone: set(Field::TimeZone, &self.time_zone, |z| check_time_zone(z))?,
            mode: set(Field::Mode, &self.mode, |m| Ok(*m))?,
            count_rule: set(Field::CountRule, &self.count_rule, |r| Ok(*r))?,
            quota: set(Field::Quota, &self.quota, |q| check_quota(i128::from(*q)))?,
            thresholds: set(Field::Thresholds, &self.thresholds, |t| {
                check_thresholds(&t.iter().map(|&p| i64::from(p)).collect::<Vec<_>>())
            })?,
            max_rate: set(Field::MaxRate, &self.max_rate, |r| {
                check_max_rate(i128::from(*r))
            })?,
        })
    }

    /// The patch for the fleet's row: clearing a setting that cannot be
    /// NULL there sets the built-in default.
    fn for_fleet(self) -> SettingsPatch {
        let builtin = Settings::default();
        fn or<T>(change: Change<T>, default: T) -> Change<T> {
            match change {
                Change::Clear => Change::Set(default),
                other => other,
            }
        }
        SettingsPatch {
            time_zone: or(self.time_zone, "UTC".to_owned()),
            mode: or(self.mode, builtin.mode),
            count_rule: or(self.count_rule, builtin.count_rule),
            thresholds: or(self.thresholds, builtin.thresholds),
            max_rate: or(self.max_rate, builtin.max_rate),
            ..self
        }
    }
}

/// A whole set of settings as stored: the fleet's, or a node's after
/// COALESCE with the fleet's (before the `--period-reset` fallback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values {
    pub anchor_day: Option<u32>,
    pub time_zone: String,
    pub mode: Mode,
    pub count_rule: CountRule,
    pub quota: Option<i64>,
    pub thresholds: Vec<i32>,
    pub max_rate: i64,
}

/// The fleet's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    pub values: Values,
    pub updated_at: NaiveDateTime,
}

/// A node's own settings: `None` where the fleet's value applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub anchor_day: Option<u32>,
    pub time_zone: Option<String>,
    pub mode: Option<Mode>,
    pub count_rule: Option<CountRule>,
    pub quota: Option<i64>,
    pub thresholds: Option<Vec<i32>>,
    pub max_rate: Option<i64>,
    /// When they last changed; `None`: never set.
    pub updated_at: Option<NaiveDateTime>,
}

impl Overrides {
    /// The settings the node has its own value of, in [`Field::ALL`]'s
    /// order.
    pub fn fields(&self) -> Vec<Field> {
        let own = [
            self.anchor_day.is_some(),
            self.time_zone.is_some(),
            self.mode.is_some(),
            self.count_rule.is_some(),
            self.quota.is_some(),
            self.thresholds.is_some(),
            self.max_rate.is_some(),
        ];
        Field::ALL
            .into_iter()
            .zip(own)
            .filter_map(|(field, own)| own.then_some(field))
            .collect()
    }
}

/// Where a node's period anchor comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorSource {
    /// The node's own `anchorDay`.
    Node,
    /// The fleet's `anchorDay`.
    Fleet,
    /// Neither has one: the collector's `--period-reset monthly:DAY`, in
    /// UTC.
    PeriodReset,
    /// No anchor at all: periods end only on request.
    None,
}

impl AnchorSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AnchorSource::Node => "node",
            AnchorSource::Fleet => "fleet",
            AnchorSource::PeriodReset => "periodReset",
            AnchorSource::None => "none",
        }
    }
}

/// A node's settings: what applies, and which are its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub node_id: String,
    /// COALESCE(node, fleet).
    pub values: Values,
    pub own: Overrides,
    /// As the store uses them (the `--period-reset` day applied).
    pub settings: Settings,
    pub anchor_source: AnchorSource,
}

/// A stored value this collector cannot read (written by a newer
/// version?): reported as a database error, not as the caller's fault.
fn unreadable(what: String) -> Error {
    Error::Database(sqlx::Error::Decode(what.into()))
}

fn stored_day(day: Option<i32>) -> Result<Option<u32>, Error> {
    day.map(|d| u32::try_from(d).map_err(|_| unreadable(format!("stored anchor day {d}"))))
        .transpose()
}

fn stored<T: FromStr>(what: &str, value: Option<String>) -> Result<Option<T>, Error> {
    value
        .map(|v| {
            v.parse()
                .map_err(|_| unreadable(format!("stored {what} {v:?} is unknown")))
        })
        .transpose()
}

impl Values {
    fn from_stored(stored: &Stored) -> Result<Values, Error> {
        let unknown = |what: &str, v: &str| unreadable(format!("stored {what} {v:?} is unknown"));
        Ok(Values {
            anchor_day: stored_day(stored.anchor_day)?,
            time_zone: stored.time_zone.clone(),
            mode: stored
                .mode
                .parse()
                .map_err(|_| unknown("mode", &stored.mode))?,
            count_rule: stored
                .count_rule
                .parse()
                .map_err(|_| unknown("count rule", &stored.count_rule))?,
            quota: stored.quota,
            thresholds: stored.thresholds.clone(),
            max_rate: stored.max_rate,
        })
    }
}

/// The id of the node with this id or name (an id wins over a name).
pub async fn node_id(pool: &PgPool, node: &str) -> Result<String, Error> {
    sqlx::query_scalar(
        r#"SELECT "id" FROM "nodes" WHERE "id" = $1 OR "name" = $1
           ORDER BY ("id" = $1) DESC LIMIT 1"#,
    )
    .bind(node)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| Error::NoSuchNode(node.to_owned()))
}

const DEFAULTS_COLUMNS: &str = r#""anchorDay", "timeZone", "mode", "countRule", "quota",
    "thresholds", "maxRate", "updatedAt""#;

fn defaults_of(row: &PgRow) -> Result<Defaults, Error> {
    let stored = Stored::from_row(row)?;
    Ok(Defaults {
        values: Values::from_stored(&stored)?,
        updated_at: row.try_get("updatedAt")?,
    })
}

fn missing_defaults() -> Error {
    unreadable("the billing_defaults row is missing (run `tally-collector migrate`)".into())
}

/// Binds a patch's fields in the order the update statements take them:
/// for each field, whether it is written, then its value.
trait BindPatch<'q> {
    fn bind_patch(self, patch: &'q SettingsPatch) -> Self;
}

impl<'q> BindPatch<'q> for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_patch(self, patch: &'q SettingsPatch) -> Self {
        let (anchor_set, anchor) = patch.anchor_day.write();
        let (zone_set, zone) = patch.time_zone.write();
        let (mode_set, mode) = patch.mode.write();
        let (rule_set, rule) = patch.count_rule.write();
        let (quota_set, quota) = patch.quota.write();
        let (thresholds_set, thresholds) = patch.thresholds.write();
        let (rate_set, rate) = patch.max_rate.write();
        self.bind(anchor_set)
            .bind(anchor.map(|&d| d as i32))
            .bind(zone_set)
            .bind(zone)
            .bind(mode_set)
            .bind(mode.map(|m| m.as_str()))
            .bind(rule_set)
            .bind(rule.map(|r| r.as_str()))
            .bind(quota_set)
            .bind(quota)
            .bind(thresholds_set)
            .bind(thresholds)
            .bind(rate_set)
            .bind(rate)
    }
}

/// The fleet's defaults.
pub async fn defaults(pool: &PgPool) -> Result<Defaults, Error> {
    let row = sqlx::query(AssertSqlSafe(format!(
        r#"SELECT {DEFAULTS_COLUMNS} FROM "billing_defaults""#
    )))
    .fetch_optional(pool)
    .await?
    .ok_or_else(missing_defaults)?;
    defaults_of(&row)
}

/// Applies `patch` to the fleet's defaults; returns them as they are now.
pub async fn update_defaults(pool: &PgPool, patch: &SettingsPatch) -> Result<Defaults, Error> {
    let patch = patch.check()?.for_fleet();
    let row = sqlx::query(AssertSqlSafe(format!(
        r#"UPDATE "billing_defaults" SET
             "anchorDay" = CASE WHEN $1 THEN $2 ELSE "anchorDay" END,
             "timeZone" = CASE WHEN $3 THEN $4 ELSE "timeZone" END,
             "mode" = CASE WHEN $5 THEN $6 ELSE "mode" END,
             "countRule" = CASE WHEN $7 THEN $8 ELSE "countRule" END,
             "quota" = CASE WHEN $9 THEN $10 ELSE "quota" END,
             "thresholds" = CASE WHEN $11 THEN $12 ELSE "thresholds" END,
             "maxRate" = CASE WHEN $13 THEN $14 ELSE "maxRate" END,
             "updatedAt" = date_trunc('milliseconds', now() AT TIME ZONE 'UTC')
           RETURNING {DEFAULTS_COLUMNS}"#
    )))
    .bind_patch(&patch)
    .fetch_optional(pool)
    .await?
    .ok_or_else(missing_defaults)?;
    let defaults = defaults_of(&row)?;
    tracing::info!(
        anchor_day = ?defaults.values.anchor_day,
        time_zone = %defaults.values.time_zone,
        mode = %defaults.values.mode,
        count_rule = %defaults.values.count_rule,
        quota = ?defaults.values.quota,
        thresholds = ?defaults.values.thresholds,
        max_rate = defaults.values.max_rate,
        "fleet billing defaults changed"
    );
    Ok(defaults)
}

/// The node's own settings (all `None` when it has none); `NoSuchNode`
/// when there is no node of this id.
pub async fn overrides(pool: &PgPool, node_id: &str) -> Result<Overrides, Error> {
    let mut conn = pool.acquire().await?;
    Ok(effective_in(&mut conn, node_id, None).await?.own)
}

/// The node's effective settings; `fallback_day` is the collector's
/// `--period-reset monthly:DAY`, if any.
pub async fn effective(
    pool: &PgPool,
    node_id: &str,
    fallback_day: Option<u32>,
) -> Result<Effective, Error> {
    let mut conn = pool.acquire().await?;
    effective_in(&mut conn, node_id, fallback_day).await
}

/// As [`effective`], on `conn` (e.g. in a transaction).
pub async fn effective_in(
    conn: &mut PgConnection,
    node_id: &str,
    fallback_day: Option<u32>,
) -> Result<Effective, Error> {
    let row = sqlx::query(AssertSqlSafe(format!(
        r#"SELECT {SETTINGS_COLUMNS},
                  s."anchorDay" AS "ownAnchorDay", s."timeZone" AS "ownTimeZone",
                  s."mode" AS "ownMode", s."countRule" AS "ownCountRule",
                  s."quota" AS "ownQuota", s."thresholds" AS "ownThresholds",
                  s."maxRate" AS "ownMaxRate", s."updatedAt" AS "ownUpdatedAt"
           FROM "nodes" n {SETTINGS_JOIN}
           WHERE n."id" = $1"#
    )))
    .bind(node_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(Error::NoSuchNode(node_id.to_owned()));
    };
    let stored_values = Stored::from_row(&row)?;
    let values = Values::from_stored(&stored_values)?;
    let own = Overrides {
        anchor_day: stored_day(row.try_get("ownAnchorDay")?)?,
        time_zone: row.try_get("ownTimeZone")?,
        mode: stored("mode", row.try_get("ownMode")?)?,
        count_rule: stored("count rule", row.try_get("ownCountRule")?)?,
        quota: row.try_get("ownQuota")?,
        thresholds: row.try_get("ownThresholds")?,
        max_rate: row.try_get("ownMaxRate")?,
        updated_at: row.try_get("ownUpdatedAt")?,
    };
    let settings = stored_values
        .resolve(fallback_day)
        .map_err(|error| unreadable(format!("stored settings of node {node_id}: {error}")))?;
    let anchor_source = match (own.anchor_day, values.anchor_day, fallback_day) {
        (Some(_), _, _) => AnchorSource::Node,
        (None, Some(_), _) => AnchorSource::Fleet,
        (None, None, Some(_)) => AnchorSource::PeriodReset,
        (None, None, None) => AnchorSource::None,
    };
    Ok(Effective {
        node_id: node_id.to_owned(),
        values,
        own,
        settings,
        anchor_source,
    })
}

/// Applies `patch` to the node's own settings (`Change::Clear` removes an
/// override); returns them as they are now. `NoSuchNode` when there is no
/// node of this id. The current period keeps its start whatever changes.
pub async fn patch_node(
    pool: &PgPool,
    node_id: &str,
    patch: &SettingsPatch,
) -> Result<Overrides, Error> {
    let patch = patch.check()?;
    let mut tx = pool.begin().await?;
    let found: Option<String> =
        sqlx::query_scalar(r#"SELECT "id" FROM "nodes" WHERE "id" = $1 FOR SHARE"#)
            .bind(node_id)
            .fetch_optional(&mut *tx)
            .await?;
    if found.is_none() {
        return Err(Error::NoSuchNode(node_id.to_owned()));
    }
    if !patch.is_empty() {
        // A node without a row gets one: what the patch does not set is
        // NULL there, i.e. the fleet's.
        sqlx::query(
            r#"INSERT INTO "node_settings" ("nodeId", "anchorDay", "timeZone", "mode",
                   "countRule", "quota", "thresholds", "maxRate", "updatedAt")
               VALUES ($1, $3, $5, $7, $9, $11, $13, $15,
                       date_trunc('milliseconds', now() AT TIME ZONE 'UTC'))
               ON CONFLICT ("nodeId") DO UPDATE SET
                 "anchorDay" = CASE WHEN $2 THEN $3 ELSE "node_settings"."anchorDay" END,
                 "timeZone" = CASE WHEN $4 THEN $5 ELSE "node_settings"."timeZone" END,
                 "mode" = CASE WHEN $6 THEN $7 ELSE "node_settings"."mode" END,
                 "countRule" = CASE WHEN $8 THEN $9 ELSE "node_settings"."countRule" END,
                 "quota" = CASE WHEN $10 THEN $11 ELSE "node_settings"."quota" END,
                 "thresholds" = CASE WHEN $12 THEN $13 ELSE "node_settings"."thresholds" END,
                 "maxRate" = CASE WHEN $14 THEN $15 ELSE "node_settings"."maxRate" END,
                 "updatedAt" = EXCLUDED."updatedAt""#,
        )
        .bind(node_id)
        .bind_patch(&patch)
        .execute(&mut *tx)
        .await?;
    }
    let own = effective_in(&mut tx, node_id, None).await?.own;
    tx.commit().await?;
    tracing::info!(
        node = %node_id,
        own = ?own.fields().iter().map(|f| f.name()).collect::<Vec<_>>(),
        calendar_changed = patch.moves_the_calendar(),
        "node billing settings changed"
    );
    Ok(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SettingsPatch, Error> {
        let patch: JsonPatch = serde_json::from_str(json).expect("a JSON patch");
        patch.parse()
    }

    fn refused(json: &str) -> String {
        parse(json).expect_err(json).to_string()
    }

    #[test]
    fn absent_keeps_null_clears_a_value_sets() {
        let patch = parse(
            r#"{"anchorDay": 15, "timeZone": "Europe/Berlin", "mode": "p95",
                "countRule": null, "quota": "1099511627776", "thresholds": [100, 80, 80],
                "maxRate": 125000000}"#,
        )
        .expect("valid");
        assert_eq!(
            patch,
            SettingsPatch {
                anchor_day: Change::Set(15),
                time_zone: Change::Set("Europe/Berlin".into()),
                mode: Change::Set(Mode::P95),
                count_rule: Change::Clear,
                quota: Change::Set(1 << 40),
                thresholds: Change::Set(vec![80, 100]),
                max_rate: Change::Set(125_000_000),
            }
        );
        let empty = parse("{}").expect("empty");
        assert!(empty.is_empty() && !empty.moves_the_calendar());
        assert_eq!(
            parse(r#"{"quota": 5}"#).expect("number").quota,
            Change::Set(5)
        );
        assert_eq!(
            parse(r#"{"thresholds": []}"#).expect("none").thresholds,
            Change::Set(vec![])
        );
        // A JSON Schema integer may be written with a zero fraction.
        let whole = parse(r#"{"anchorDay": 4.0, "thresholds": [80.0, 1e2]}"#).expect("whole");
        assert_eq!(whole.anchor_day, Change::Set(4));
        assert_eq!(whole.thresholds, Change::Set(vec![80, 100]));
    }

    #[test]
    fn each_bad_value_is_refused_naming_its_field() {
        for (json, field) in [
            (
                r#"{"anchorDay": 0}"#,
                "anchorDay: 0 is not a day of the month",
            ),
            (r#"{"anchorDay": 32}"#, "anchorDay: 32"),
            (r#"{"anchorDay": "1"}"#, "anchorDay: \"1\""),
            (r#"{"anchorDay": 1.5}"#, "anchorDay: 1.5"),
            (
                r#"{"timeZone": "Mars/Olympus"}"#,
                "timeZone: \"Mars/Olympus\" is not an IANA",
            ),
            (r#"{"timeZone": 1}"#, "timeZone: 1 is not a string"),
            (
                r#"{"mode": "median"}"#,
                "mode: \"median\" is not a billing mode",
            ),
            (r#"{"countRule": "physical"}"#, "countRule: \"physical\""),
            (r#"{"quota": 0}"#, "quota: 0 is not"),
            (r#"{"quota": -5}"#, "quota: -5"),
            (
                r#"{"quota": "9223372036854775808"}"#,
                "quota: 9223372036854775808",
            ),
            (r#"{"quota": "1TB"}"#, "quota: \"1TB\""),
            (r#"{"quota": 1e3}"#, "quota: 1000.0"),
            (
                r#"{"thresholds": [0]}"#,
                "thresholds: 0 is not a percentage",
            ),
            (r#"{"thresholds": [1001]}"#, "thresholds: 1001"),
            (r#"{"thresholds": 80}"#, "thresholds: 80 is not a list"),
            (r#"{"thresholds": ["80"]}"#, "thresholds: [\"80\"]"),
            (
                r#"{"thresholds": [1,2,3,4,5,6,7,8,9,10,11]}"#,
                "thresholds: 11 thresholds; at most 10",
            ),
            (
                r#"{"thresholds": [1,1,1,1,1,1,1,1,1,1,1]}"#,
                "thresholds: 11 thresholds; at most 10",
            ),
            (r#"{"maxRate": 0}"#, "maxRate: 0 is not"),
        ] {
            let error = refused(json);
            assert!(error.starts_with(field), "{json}: {error}");
        }
        // The first bad one is named even when others are fine.
        assert!(refused(r#"{"mode": "sum", "maxRate": -1}"#).starts_with("maxRate:"));
    }

    #[test]
    fn unknown_members_are_refused() {
        let error = serde_json::from_str::<JsonPatch>(r#"{"anchor_day": 1}"#)
            .expect_err("unknown")
            .to_string();
        assert!(error.contains("unknown field `anchor_day`"), "{error}");
    }

    #[test]
    fn check_refuses_what_parsing_would_refuse() {
        let bad = SettingsPatch {
            anchor_day: Change::Set(0),
            ..SettingsPatch::default()
        };
        assert!(
            bad.check()
                .expect_err("0")
                .to_string()
                .starts_with("anchorDay:")
        );
        let zone = SettingsPatch {
            time_zone: Change::Set("europe/nowhere".into()),
            ..SettingsPatch::default()
        };
        assert!(
            zone.check()
                .expect_err("zone")
                .to_string()
                .starts_with("timeZone:")
        );
        let ok = SettingsPatch {
            thresholds: Change::Set(vec![100, 50, 50]),
            ..SettingsPatch::default()
        };
        assert_eq!(
            ok.check().expect("ok").thresholds,
            Change::Set(vec![50, 100])
        );
    }

    #[test]
    fn the_fleet_clears_to_built_in_defaults() {
        let mut patch = SettingsPatch::default();
        for field in Field::ALL {
            patch.clear(field);
        }
        let fleet = patch.for_fleet();
        assert_eq!(fleet.anchor_day, Change::Clear);
        assert_eq!(fleet.quota, Change::Clear);
        assert_eq!(fleet.time_zone, Change::Set("UTC".into()));
        assert_eq!(fleet.mode, Change::Set(Mode::Sum));
        assert_eq!(fleet.count_rule, Change::Set(CountRule::All));
        assert_eq!(fleet.thresholds, Change::Set(vec![80, 100]));
        assert_eq!(fleet.max_rate, Change::Set(12_500_000_000));
    }

    #[test]
    fn fields_have_two_names() {
        for field in Field::ALL {
            assert_eq!(field.name().parse(), Ok(field));
            assert_eq!(field.flag().parse(), Ok(field));
        }
        assert!(
            "anchor"
                .parse::<Field>()
                .expect_err("unknown")
                .contains("anchor-day")
        );
        let own = Overrides {
            quota: Some(1),
            anchor_day: Some(3),
            ..Overrides::default()
        };
        assert_eq!(own.fields(), vec![Field::AnchorDay, Field::Quota]);
    }
}
