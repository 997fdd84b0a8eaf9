//! Shared helpers of the collector's integration tests: a throwaway
//! PostgreSQL cluster per test, and what to do when there can be none.
//!
//! The tests need the PostgreSQL 15 binaries (`apt install postgresql-15`, or
//! `TALLY_PG_BIN`), and, when run as root, the `postgres` OS user. Without
//! them they skip and say why; with `TALLY_REQUIRE_PRIVILEGED=1` (as CI sets
//! it) they fail instead.

use tally_testkit::devdb::{self, TempCluster};

/// A fresh, running cluster for `test`, or `None` after saying why there
/// can be none ([`devdb::start_or_skip`]).
pub fn cluster(test: &str) -> Option<TempCluster> {
    devdb::start_or_skip(test)
}

pub mod browser;
pub mod fleet;
pub mod http;
