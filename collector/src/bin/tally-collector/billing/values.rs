//! The values of `billing set|defaults`' options: byte sizes with units,
//! threshold lists, days and time zones, checked as the API checks them.

use tally_collector::billing::settings;

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
