//! A patch as the API receives it: a JSON object whose members are the
//! settings to change, each absent (unchanged), `null` (cleared) or a
//! value. The tri-state is the type (`Option<Option<_>>`); a value stays
//! JSON until it is checked, so that a refusal quotes it as it was sent
//! and names its member (a 400 `invalid_argument`, not a body that does
//! not parse).

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Type, schema::SchemaType};

use super::{
    checks::{
        MAX_THRESHOLD, MAX_THRESHOLDS, check_anchor_day, check_count_rule, check_max_rate,
        check_mode, check_quota, check_thresholds, check_time_zone,
    },
    model::{Change, Field, SettingsPatch},
};
use crate::{
    billing::{CountRule, Mode},
    error::Error,
};

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
    pub anchor_day: Option<Option<Value>>,
    /// An IANA time zone name. `null`: on a node, the fleet's; on the
    /// fleet, `UTC`.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = time_zone_schema)]
    pub time_zone: Option<Option<Value>>,
    /// `sum`, `max`, `upload`, `download` or `p95`. `null`: on a node, the
    /// fleet's; on the fleet, `sum`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Mode>)]
    pub mode: Option<Option<Value>>,
    /// `all` (every interface but loopback) or `uplink` (physical ones and
    /// those carrying a default route). `null`: on a node, the fleet's; on
    /// the fleet, `all`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CountRule>)]
    pub count_rule: Option<Option<Value>>,
    /// Bytes per period (bytes per second in mode `p95`), above 0, as a
    /// JSON integer or a decimal string. `null`: on a node, the fleet's; on
    /// the fleet, none.
    /// The pattern is that of the string form up to 18 digits (values up to
    /// 2^63 - 1 are taken).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^0{0,12}[1-9][0-9]{0,17}$", example = "1099511627776")]
    pub quota: Option<Option<Value>>,
    /// Percentages of the quota at which a quota event fires (once per
    /// period each): at most 10, each 1 to 1000; `[]` for none. `null`: on
    /// a node, the fleet's; on the fleet, `[80, 100]`.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = thresholds_schema)]
    pub thresholds: Option<Option<Value>>,
    /// The most bytes per second one interface carries in one direction
    /// (larger deltas are held as anomalies), above 0, as a JSON integer or
    /// a decimal string. `null`: on a node, the fleet's; on the fleet,
    /// 12500000000 (100 Gbit/s).
    /// The pattern is that of the string form up to 18 digits (values up to
    /// 2^63 - 1 are taken).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^0{0,12}[1-9][0-9]{0,17}$", example = "12500000000")]
    pub max_rate: Option<Option<Value>>,
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

/// A member that is present: `Some(None)` for `null`, else its value
/// (an absent member stays `None` through `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<Value>>, D::Error> {
    Option::<Value>::deserialize(deserializer).map(Some)
}

/// One member of a [`JsonPatch`], checked by `parse`.
fn change<T>(
    field: Field,
    member: &Option<Option<Value>>,
    parse: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<Change<T>, Error> {
    match member {
        None => Ok(Change::Keep),
        Some(None) => Ok(Change::Clear),
        Some(Some(value)) => parse(value)
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
            anchor_day: change(Field::AnchorDay, &self.anchor_day, |v| {
                let day =
                    whole(v).ok_or_else(|| format!("{v} is not a day of the month (1-31)"))?;
                check_anchor_day(i64::try_from(day).unwrap_or(i64::MAX))
            })?,
            time_zone: change(Field::TimeZone, &self.time_zone, |v| {
                check_time_zone(text(v)?)
            })?,
            mode: change(Field::Mode, &self.mode, |v| check_mode(text(v)?))?,
            count_rule: change(Field::CountRule, &self.count_rule, |v| {
                check_count_rule(text(v)?)
            })?,
            quota: change(Field::Quota, &self.quota, |v| {
                check_quota(amount(v, "bytes")?)
            })?,
            thresholds: change(Field::Thresholds, &self.thresholds, |v| {
                let bad = || format!("{v} is not a list of whole percentages such as [80, 100]");
                let list = v.as_array().ok_or_else(bad)?;
                let percents = list
                    .iter()
                    .map(|p| whole(p).map(|p| i64::try_from(p).unwrap_or(i64::MAX)))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(bad)?;
                check_thresholds(&percents)
            })?,
            max_rate: change(Field::MaxRate, &self.max_rate, |v| {
                check_max_rate(amount(v, "bytes per second")?)
            })?,
        })
    }
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
}
