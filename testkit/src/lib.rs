//! What tally's tests, benchmarks and demo need and the product does not:
//! throwaway PostgreSQL clusters ([`devdb`]), network namespaces and the
//! veth pairs between them ([`netns`]), traffic of a known size between
//! namespaces ([`traffic`]), real `tally-agent` and `tally-collector`
//! processes with their log files ([`process`]), the check every command
//! line's help must pass ([`cli_check`]), the rule for tests that cannot run on this machine
//! ([`skip`]) and test certificates ([`certs`]). Kept out of the product
//! crates so that they carry no test-only code or dependency.

pub mod certs;
pub mod cli_check;
pub mod devdb;
pub mod netns;
pub mod process;
pub mod skip;
pub mod traffic;
