//! `tally-collector`: the central service (see `tally-collector --help`).
//!
//! The command tree is `cli`; each command is a module of its own that
//! owns its options and runs them (`serve`, `migrate`, `node`, `period`,
//! `top`, `billing`, `periods`, and `calibrate`, `calibrations` and
//! `anomalies` under `corrections`). Commands share nothing but
//! `durations`, and import nothing of `cli`; the work itself is the
//! library's ([`tally_collector`]).

use std::{io::IsTerminal as _, process::ExitCode};

use anyhow::Context as _;
use tally_collector::db;

mod billing;
mod cli;
mod corrections;
mod durations;
mod migrate;
mod node;
mod period;
mod periods;
mod serve;
mod top;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = cli::parse();
    init_logging(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("tally-collector: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tally-collector: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli.db.database_url.as_deref().context(
        "no database given: set DATABASE_URL or --database-url (e.g. postgres://tally@localhost/tally)",
    )?;
    // `serve` makes its own pools (writers, readers, upkeep) from this
    // one's settings; this one only migrates and checks the way there.
    let connections = 2;
    // Flags are checked before anything else happens.
    let checked = match &cli.command {
        Command::Serve(args) => Some(serve::check(args)?),
        _ => None,
    };
    // sqlx's message already ends with its cause: print it once.
    let pool = db::connect(url, connections).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot connect to the database {}: {error}",
            db::describe(url)
        )
    })?;
    match cli.command {
        Command::Serve(args) => {
            let checked = checked.context("the serve flags were not checked")?;
            serve::run(pool, *args, checked).await
        }
        Command::Migrate(args) => migrate::run(&pool, args).await,
        Command::Node(command) => node::run(&pool, command).await,
        Command::Period(command) => period::run(&pool, command).await,
        Command::Top(args) => top::run(&pool, &args).await,
        Command::Billing(command) => billing::run(&pool, command).await,
        Command::Periods(args) => periods::run(&pool, &args).await,
        Command::Calibrate(args) => corrections::calibrate::run(&pool, args).await,
        Command::Calibrations { node } => corrections::calibrations::run(&pool, &node).await,
        Command::Anomalies(command) => corrections::anomalies::run(&pool, command).await,
    }
}
