//! The collector's `--period-reset monthly:DAY`: the anchor day, in UTC,
//! of nodes whose billing settings have none.

use std::{fmt, str::FromStr};

/// The collector's `--period-reset`: when periods start for nodes whose
/// billing settings have no anchor day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every month on this day (1–31; in shorter months, the month's last
    /// day), at 00:00 UTC.
    Monthly { day: u32 },
}

impl Schedule {
    /// The anchor day.
    pub fn day(self) -> u32 {
        match self {
            Schedule::Monthly { day } => day,
        }
    }
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("{s:?} is not a schedule; expected monthly:DAY (DAY 1-31), e.g. monthly:1");
        let (kind, day) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "monthly" => {
                let day: u32 = day.parse().map_err(|_| bad())?;
                if !(1..=31).contains(&day) {
                    return Err(bad());
                }
                Ok(Schedule::Monthly { day })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Monthly { day } => write!(f, "monthly:{day}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("monthly:1".parse(), Ok(Schedule::Monthly { day: 1 }));
        assert_eq!(Schedule::Monthly { day: 15 }.to_string(), "monthly:15");
        for bad in ["monthly:0", "monthly:32", "monthly:", "weekly:1", "monthly"] {
            let error = bad.parse::<Schedule>().expect_err(bad);
            assert!(error.contains("expected monthly:DAY"), "{error}");
        }
    }
}
