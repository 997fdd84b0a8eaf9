//! Shared helpers of the collector's integration tests: a throwaway
//! PostgreSQL cluster per test, and what to do when there can be none.
//!
//! The tests need the PostgreSQL 15 binaries (`apt install postgresql-15`, or
//! `TALLY_PG_BIN`), and, when run as root, the `postgres` OS user. Without
//! them they skip and say why; with `TALLY_REQUIRE_PRIVILEGED=1` (as CI sets
//! it) they fail instead.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::io::Write as _;

use tally_collector::devdb::TempCluster;

fn say(text: &str) {
    // Written to the real stderr, past the test harness's capture, so that a
    // skip is visible in the run's output.
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// A fresh, running cluster for `test`, or `None` (after saying why) when
/// this machine has no PostgreSQL to run; panics instead when
/// `TALLY_REQUIRE_PRIVILEGED=1` demands the test, or when a cluster that
/// should work fails to start.
pub fn cluster(test: &str) -> Option<TempCluster> {
    match TempCluster::start() {
        Ok(cluster) => Some(cluster),
        Err(e) if e.is_unavailable() => {
            if std::env::var("TALLY_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
                panic!("{test}: PostgreSQL test cannot run ({e}) but TALLY_REQUIRE_PRIVILEGED=1");
            }
            say(&format!("SKIP {test}: needs PostgreSQL 15 binaries ({e})"));
            None
        }
        Err(e) => panic!("{test}: cannot start a temporary PostgreSQL: {e}"),
    }
}

pub mod fleet;
