//! The read model: the SQL that reads the fleet for people, shared by the
//! JSON API (`http/`) and `tally-collector top`. Every function returns
//! plain structs with the stored values (BIGINT counters as `i64`, times as
//! UTC `NaiveDateTime`); turning them into JSON or text is the caller's job.

pub(crate) mod history;
pub mod nodes;
pub mod rankings;

/// The largest BIGINT: sums of BIGINT columns are clamped to it when read
/// back as `i64` (PostgreSQL sums BIGINTs as NUMERIC).
const BIGINT_MAX: &str = "9223372036854775807";
