//! The one rule for a test that cannot run on this machine (no root, no
//! PostgreSQL, no Chromium, ...): it says `SKIP <test>: <reason>` and
//! passes, unless `TALLY_REQUIRE_PRIVILEGED=1` (as CI sets it) demands
//! that every test runs, when it fails. `cargo xtask test` counts the
//! `SKIP` lines.

use std::io::Write as _;

/// The variable that turns every skip into a failure.
pub const REQUIRE_VARIABLE: &str = "TALLY_REQUIRE_PRIVILEGED";

/// Whether `TALLY_REQUIRE_PRIVILEGED=1` demands that every test runs.
pub fn required() -> bool {
    std::env::var(REQUIRE_VARIABLE).is_ok_and(|v| v == "1")
}

/// Says that `test` is skipped because of `reason`, on the real stderr
/// (past the test harness's capture, so that the run's output shows it).
///
/// # Panics
///
/// When [`required`]: the test must run, and this is its failure.
pub fn skip(test: &str, reason: &str) {
    assert!(!required(), "{test}: {reason}, but {REQUIRE_VARIABLE}=1");
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}
