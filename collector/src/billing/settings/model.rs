//! The billing settings as people see them (the fleet's defaults, a node's
//! own values and what applies to it) and a patch of them: what it changes
//! and how it is checked, however it was made (API or command line).

use std::{fmt, str::FromStr};

use chrono::NaiveDateTime;

use super::checks::{
    check_anchor_day, check_max_rate, check_quota, check_thresholds, check_time_zone,
};
use crate::{
    billing::{CountRule, Mode, Settings},
    error::Error,
};

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
    pub(super) fn write(&self) -> (bool, Option<&T>) {
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
    pub(super) fn for_fleet(self) -> SettingsPatch {
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

#[cfg(test)]
mod tests {
    use super::*;

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
