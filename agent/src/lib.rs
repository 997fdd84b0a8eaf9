//! `tally-agent`: the node agent of tally, as a library so that its
//! parsers can be exercised on their own (the fuzz targets under `fuzz/`);
//! the `tally-agent` binary is [`run_from_command_line`].
//!
//! Only what a caller outside the agent needs is public: the command line's
//! entry point, and the reboot journal's and the generation file's formats.

mod cli;
pub mod clock;
mod diagnose;
mod durable;
mod ebpf;
mod filter;
pub mod generation;
mod heartbeat;
pub mod journal;
mod links;
mod netwatch;
mod pins;
mod run;
mod source;
mod state;
mod status;
mod system;

use std::process::ExitCode;

/// The agent's version and the commit it was built from, as `--version`
/// and the start-up log line print them: `0.1.0 (1a2b3c4d5e6f)`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("TALLY_COMMIT"), ")");

use anyhow::Context as _;
use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::{
    cli::{Cli, Command, StatusArgs},
    filter::IfaceFilter,
    pins::PinLayout,
    source::{CounterSource, EbpfSource, ProcfsSource, SourceKind},
};

/// Parses the command line, runs the command it names and says how it
/// went: the whole of the `tally-agent` binary.
pub fn run_from_command_line() -> ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("error: invalid --log filter {:?}: {err}", cli.log);
            return ExitCode::from(2);
        }
    };
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let layout = PinLayout::new(cli.pin_dir);
    match cli.command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(run::run(*args, layout))
        }
        Command::Status(args) => status(args, &layout),
        Command::Detach => {
            let report = ebpf::detach::detach_all(&layout).with_context(|| {
                format!("cannot detach what is pinned in {}", layout.dir().display())
            })?;
            println!(
                "detached: {} links unpinned, {} netlink filters removed, {} maps unpinned{}",
                report.links_unpinned,
                report.netlink_filters_removed,
                report.maps_unpinned,
                if report.dir_removed {
                    format!(", {} removed", layout.dir().display())
                } else {
                    String::new()
                }
            );
            Ok(())
        }
    }
}

fn status(args: StatusArgs, layout: &PinLayout) -> anyhow::Result<()> {
    let mut source: Box<dyn CounterSource> = match args.source {
        SourceKind::Ebpf => Box::new(EbpfSource::new(layout.clone())),
        SourceKind::Procfs => Box::new(ProcfsSource::new(IfaceFilter::new(
            &args.filter.include,
            &args.filter.exclude,
        )?)),
    };
    let mut snapshot = source.snapshot()?;
    // Link kinds and default routes as they are now (the running agent
    // follows them itself); without them the counters are still worth
    // showing.
    match netwatch::current_classes() {
        Ok(mut classes) => classes.classify(&mut snapshot.interfaces),
        Err(error) => tracing::warn!(
            error = %format!("{error:#}"),
            "cannot tell the interfaces' kinds and default routes"
        ),
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        let dir = layout.dir().display().to_string();
        let pin_dir = (args.source == SourceKind::Ebpf).then_some(dir.as_str());
        print!("{}", status::render_table(&snapshot, pin_dir));
    }
    Ok(())
}
