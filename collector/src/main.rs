//! `tally-collector`: the central service. It receives the agents'
//! heartbeats and keeps exact traffic counters in PostgreSQL; this first
//! version only has its command line (the heartbeat service, the database and
//! the API come next).

use clap::Parser;

/// tally's collector: receives heartbeats from tally agents and keeps exact,
/// restart-proof traffic counters in PostgreSQL. Not implemented yet.
#[derive(Debug, Parser)]
#[command(name = "tally-collector", version)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("tally-collector: the heartbeat service is not implemented yet");
    std::process::ExitCode::FAILURE
}
