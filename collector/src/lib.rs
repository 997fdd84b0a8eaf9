//! tally's collector: authenticates nodes, turns their raw cumulative
//! counters into exact totals in PostgreSQL (README.md, "The counting
//! rules, in the collector"), and serves people.
//!
//! The library is public only as far as its users need: the binary
//! (`src/bin/tally-collector/`), xtask's benchmarks and demo, the
//! integration tests and the fuzz targets. Everything else is
//! `pub(crate)`, so that a module's API can change without looking beyond
//! the crate.

/// The collector's version and the commit it was built from, as
/// `--version` and the start-up log line print them: `0.1.0 (1a2b3c4d5e6f)`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("TALLY_COMMIT"), ")");

pub mod accounting;
pub mod auth;
pub mod billing;
pub(crate) mod connections;
pub mod corrections;
pub mod db;
pub mod error;
pub mod events;
pub(crate) mod grpc;
pub mod http;
pub mod ingest;
pub(crate) mod load;
pub(crate) mod log_pace;
pub mod metrics;
pub(crate) mod node_tokens;
pub mod nodes;
pub mod quota;
pub mod serve;
pub mod token_rotation;
pub mod validate;
pub mod views;
pub mod webhook;

// The old paths of the billing-period modules, for the command line and
// the tests.
pub use billing::period::{self, calendar};
