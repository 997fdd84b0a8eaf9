//! Byte counts for people, the one way tally writes them in Rust (the
//! agent's `status`, the collector's `top` and `billing`): IEC units with
//! one decimal. Only with the `units` feature: it needs an allocator, which
//! the eBPF programs have not.

use alloc::{format, string::String};

/// The units after bytes, each 1024 times the one before.
const UNITS: [&str; 7] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"];

/// A byte count in IEC units: exact below 1 KiB (`512 B`), else with one
/// decimal (`1.5 KiB`, `3.0 GiB`, `-2.0 KiB`). A value that would round to
/// 1024.0 of a unit is written in the next one (`1.0 MiB`, not
/// `1024.0 KiB`).
pub fn human_bytes(bytes: i128) -> String {
    if -1024 < bytes && bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.95 and up would print as 1024.0: use the next unit.
    while (value >= 1023.95 || value <= -1023.95) && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_iec_units() {
        let cases: [(i128, &str); 16] = [
            (0, "0 B"),
            (1, "1 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (1024 * 1024 - 1, "1.0 MiB"),
            (10 * 1024 * 1024 + 512 * 1024, "10.5 MiB"),
            (20 * 1024 * 1024, "20.0 MiB"),
            (3 << 30, "3.0 GiB"),
            (1 << 40, "1.0 TiB"),
            (5 << 50, "5.0 PiB"),
            (i128::from(i64::MAX), "8.0 EiB"),
            (i128::from(u64::MAX), "16.0 EiB"),
            (1 << 80, "1024.0 ZiB"),
            (-1023, "-1023 B"),
            (-2048, "-2.0 KiB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(human_bytes(bytes), text, "{bytes}");
        }
    }
}
