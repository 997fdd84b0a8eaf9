//! `tally-agent`: the node agent of tally (the library's
//! [`tally_agent::run_from_command_line`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    tally_agent::run_from_command_line()
}
