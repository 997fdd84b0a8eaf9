//! `cargo xtask fuzz`: runs the fuzz targets of `fuzz/` (cargo-fuzz,
//! libFuzzer, the nightly toolchain with AddressSanitizer) for a bounded
//! time each, each over a scratch copy of its seed corpus
//! (`fuzz/corpus/<target>/`, which stays as committed), and reports per
//! target how many inputs it ran. A crash (a panic, a broken invariant, a
//! sanitizer report, an input slower than [`INPUT_TIMEOUT_SECONDS`]) fails
//! the task with the path of the input that caused it.
//!
//! The fuzz crate depends on the agent, whose build script builds the eBPF
//! programs: the toolchain set-up of `cargo xtask setup` runs first.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    cargo_tool::{self, CargoTool},
    status_ok, target_dir, toolchain, workspace_root,
};

/// The cargo-fuzz release installed when none (or another) is there.
pub const CARGO_FUZZ: CargoTool = CargoTool {
    krate: "cargo-fuzz",
    version: "0.13.2",
};

/// Every fuzz target (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [&str; 5] = [
    "heartbeat_decode",
    "accounting_decide",
    "journal_parse",
    "event_payload",
    "billing_calendar",
];

/// An input that runs longer than this is reported as a crash (a hang).
pub const INPUT_TIMEOUT_SECONDS: u64 = 10;

/// What `cargo xtask fuzz` is asked to do.
#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// How long each target runs, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Regenerate the seed corpora under fuzz/corpus/ from tally's own
    /// types (fuzz/examples/write_seeds.rs) instead of fuzzing.
    #[arg(long, conflicts_with_all = ["seconds", "targets"])]
    pub write_seeds: bool,
    /// The targets to run (default: all of them).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
}

/// How one target's run went.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    target: String,
    /// Inputs executed (libFuzzer's `number_of_executed_units`).
    runs: Option<u64>,
    /// Inputs in the scratch corpus at the end.
    corpus: usize,
    /// The input that crashed it, when one did.
    crash: Option<String>,
    log: PathBuf,
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// `rustup run <nightly> cargo fuzz <subcommand>` in the workspace root,
/// with cargo's bin directory (cargo-fuzz, bpf-linker) on `PATH`.
fn cargo_fuzz(nightly: &str, subcommand: &str) -> anyhow::Result<Command> {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root())
        .args(["run", nightly, "cargo", "fuzz", subcommand])
        .env("PATH", toolchain::path_with_cargo_bin()?);
    Ok(cmd)
}

/// The build options, the same for `build` and `run` (else `run` builds
/// again): release with debug assertions (and so overflow checks), the
/// default sanitizer (address).
const BUILD_OPTIONS: [&str; 3] = ["--fuzz-dir", "fuzz", "--debug-assertions"];

/// Runs `cargo xtask fuzz`.
pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let nightly = crate::setup()?;
    if args.write_seeds {
        return write_seeds(&nightly.toolchain);
    }
    cargo_tool::ensure(&[CARGO_FUZZ])?;
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| (*t).to_owned()).collect()
    } else {
        args.targets.clone()
    };
    eprintln!("fuzz: building the targets (nightly, AddressSanitizer, debug assertions)");
    status_ok(cargo_fuzz(&nightly.toolchain, "build")?.args(BUILD_OPTIONS))?;
    let scratch = target_dir().join("fuzz");
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(
            &nightly.toolchain,
            target,
            args.seconds,
            &scratch,
        )?);
    }
    eprintln!("\nfuzz: {} s per target", args.seconds);
    eprintln!("{:<20} {:>12} {:>8}  result", "target", "runs", "corpus");
    for o in &outcomes {
        let runs = o.runs.map_or_else(|| "?".to_owned(), |r| r.to_string());
        let result = match &o.crash {
            None => "ok".to_owned(),
            Some(input) => format!("CRASH: {input} (log: {})", o.log.display()),
        };
        eprintln!("{:<20} {runs:>12} {:>8}  {result}", o.target, o.corpus);
    }
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| o.crash.is_some()).collect();
    if !crashed.is_empty() {
        let list: Vec<String> = crashed
            .iter()
            .map(|o| {
                format!(
                    "{}: {} (reproduce: cargo +{} fuzz run --fuzz-dir fuzz --debug-assertions {} {})",
                    o.target,
                    o.crash.as_deref().unwrap_or("?"),
                    nightly.toolchain,
                    o.target,
                    o.crash.as_deref().unwrap_or("?"),
                )
            })
            .collect();
        bail!(
            "{} fuzz target(s) crashed:\n{}",
            crashed.len(),
            list.join("\n")
        );
    }
    Ok(())
}

/// Runs `target` for `seconds` over a fresh copy of its seed corpus.
fn run_target(
    nightly: &str,
    target: &str,
    seconds: u64,
    scratch: &Path,
) -> anyhow::Result<Outcome> {
    let corpus = scratch.join("corpus").join(target);
    let artifacts = scratch.join("artifacts").join(target);
    let log = scratch.join("logs").join(format!("{target}.log"));
    for dir in [&corpus, &artifacts] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let logs = scratch.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let seeds = fuzz_dir().join("corpus").join(target);
    let mut copied = 0;
    for entry in fs::read_dir(&seeds).with_context(|| format!("cannot read {}", seeds.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", seeds.display()))?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), corpus.join(entry.file_name()))
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
            copied += 1;
        }
    }
    eprintln!("fuzz: {target}: {seconds} s from {copied} seeds");
    let started = Instant::now();
    let mut child = cargo_fuzz(nightly, "run")?
        .args(BUILD_OPTIONS)
        .arg(target)
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run cargo fuzz run {target}"))?;
    // libFuzzer talks on stderr; the target's own output (and cargo's) is
    // kept in the log too.
    let stdout = child.stdout.take().context("no stdout")?;
    let out_thread = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    let status = child
        .wait()
        .with_context(|| format!("cargo fuzz run {target}"))?;
    lines.extend(out_thread.join().unwrap_or_default());
    fs::write(&log, lines.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", log.display()))?;
    let runs = stat(&lines, "stat::number_of_executed_units:");
    let mut crash = crash_input(&lines);
    if !status.success() && crash.is_none() {
        crash = Some(format!(
            "none written; the run failed ({status}), see the log"
        ));
    }
    let corpus_size = fs::read_dir(&corpus).map_or(0, |d| d.count());
    let took = started.elapsed().as_secs();
    match &crash {
        None => eprintln!(
            "fuzz: {target}: {} runs in {took} s, corpus {copied} -> {corpus_size}",
            runs.map_or_else(|| "?".to_owned(), |r| r.to_string())
        ),
        Some(input) => {
            let tail: Vec<&String> = lines.iter().rev().take(40).collect();
            for line in tail.into_iter().rev() {
                eprintln!("  | {line}");
            }
            eprintln!(
                "fuzz: {target}: CRASH, input {input} (log: {})",
                log.display()
            );
        }
    }
    Ok(Outcome {
        target: target.to_owned(),
        runs,
        corpus: corpus_size,
        crash,
        log,
    })
}

/// The number after `name` in libFuzzer's final statistics.
fn stat(lines: &[String], name: &str) -> Option<u64> {
    lines
        .iter()
        .find_map(|line| line.trim().strip_prefix(name))
        .and_then(|value| value.trim().parse().ok())
}

/// Where libFuzzer wrote the input that crashed or hung the target.
fn crash_input(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|line| {
        line.split_once("Test unit written to ")
            .map(|(_, path)| path.trim().to_owned())
    })
}

/// `cargo fmt --check` and clippy (warnings are errors) on the fuzz crate,
/// which `cargo xtask lint` checks beside the workspace.
pub fn lint() -> anyhow::Result<()> {
    let nightly = toolchain::toolchain_name()?;
    let manifest = fuzz_dir().join("Cargo.toml");
    status_ok(
        Command::new("cargo")
            .current_dir(workspace_root())
            .arg("fmt")
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--check"),
    )?;
    status_ok(
        Command::new("rustup")
            .current_dir(workspace_root())
            .args(["run", &nightly, "cargo", "clippy", "--all-targets"])
            .arg("--manifest-path")
            .arg(&manifest)
            .args(["--", "-D", "warnings"])
            .env("PATH", toolchain::path_with_cargo_bin()?),
    )
}

/// Writes the seed corpora (fuzz/examples/write_seeds.rs).
fn write_seeds(nightly: &str) -> anyhow::Result<()> {
    let root = workspace_root();
    status_ok(
        Command::new("rustup")
            .current_dir(&root)
            .args(["run", nightly, "cargo", "run"])
            .args([
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--example",
                "write_seeds",
                "--",
            ])
            .arg(fuzz_dir().join("corpus"))
            .env("PATH", toolchain::path_with_cargo_bin()?),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn reads_libfuzzer_statistics_and_crashes() {
        let out = lines(
            "#1048576\tpulse  cov: 120 ft: 300 corp: 40/2Kb exec/s: 34952 rss: 60Mb\n\
             Done 2097152 runs in 61 second(s)\n\
             stat::number_of_executed_units: 2097152\n\
             stat::average_exec_per_sec:     34381\n",
        );
        assert_eq!(
            stat(&out, "stat::number_of_executed_units:"),
            Some(2_097_152)
        );
        assert_eq!(crash_input(&out), None);
        let crashed = lines(
            "thread '<unnamed>' panicked at fuzz_targets/x.rs:3:5:\n\
             ==123== ERROR: libFuzzer: deadly signal\n\
             artifact_prefix='/t/fuzz/artifacts/x/'; Test unit written to /t/fuzz/artifacts/x/crash-da39a3ee\n\
             Base64: AA==\n",
        );
        assert_eq!(
            crash_input(&crashed).as_deref(),
            Some("/t/fuzz/artifacts/x/crash-da39a3ee")
        );
    }

    #[test]
    fn every_target_has_a_source_and_seeds() {
        for target in TARGETS {
            let source = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
            assert!(source.is_file(), "{}", source.display());
            let seeds = fuzz_dir().join("corpus").join(target);
            let count = fs::read_dir(&seeds)
                .map(|d| d.count())
                .unwrap_or_else(|e| panic!("{}: {e}", seeds.display()));
            assert!(count > 0, "no seeds in {}", seeds.display());
        }
    }
}
