//! `tally-collector period reset`: ends the current period of one node or
//! of every node now.

use clap::Subcommand;
use sqlx::PgPool;
use tally_collector::period::{self, Target};

#[derive(Debug, Subcommand)]
pub enum PeriodCommand {
    /// Reset period counters now (periodUpload/periodDownload to 0,
    /// periodStart to now).
    Reset {
        /// The node whose period to reset: its id or its name (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        node: Option<String>,
        /// Reset the period of every node instead of one.
        #[arg(long)]
        all: bool,
    },
}

pub async fn run(pool: &PgPool, command: PeriodCommand) -> anyhow::Result<()> {
    let PeriodCommand::Reset { node, all } = command;
    let target = match node {
        Some(node) if !all => Target::Node(node),
        _ => Target::All,
    };
    let reset = period::reset_now(pool, &target).await?;
    println!("period reset for {reset} node(s)");
    Ok(())
}
