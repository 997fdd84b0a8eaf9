//! The guest side of `cargo xtask vm-test`: started by the initramfs's
//! init (after it mounted proc, sys, bpffs and loaded the modules), it runs
//! the scenarios against `/bin/tally-agent` and the kernel it boots, and
//! reports on the console, one line each, that xtask reads:
//!
//! - `tally-vm: pass <scenario> (<seconds>s)`
//! - `tally-vm: FAIL <scenario>` after the reason, each of its lines
//!   prefixed with `  | `
//! - `tally-vm: peer tcp <to guest> <from guest>` and `tally-vm: peer udp
//!   <datagrams> <size>`: the host is to send that traffic through the
//!   port forwards (see [`mod@nic`])
//! - `tally-vm: e2e <rx bytes> <tx bytes>`: what the kernel counted on the
//!   reported interface since before the agent started; the host checks
//!   that the collector stored exactly that
//! - `tally-vm: bench run-cost <median> <ratios>`: in benchmark mode, the
//!   run cost of tally's programs against the empty one (see [`mod@bench`])
//! - `tally-vm: done <passed> <failed>` at the end.

mod agent;
mod bench;
mod ethtool;
mod gro;
mod net;
mod nic;
mod scenarios;
mod stats;
mod traffic;

use std::{io::Write as _, process::ExitCode, time::Instant};

use anyhow::Context as _;

/// What the host tells the guest (`/etc/tally-vm/config.json`).
pub struct Config {
    /// Run the run-cost benchmark ([`mod@bench`]) instead of the scenarios.
    pub bench: bool,
    /// The attach mode `--attach auto` must pick on this kernel
    /// (`netlink` or `tcx`).
    pub attach_mode: String,
    /// The collector's URL as the guest reaches it (through QEMU's guest
    /// forward, `http://10.0.2.100:50051`).
    pub collector: String,
    /// The file holding the node's token.
    pub token_file: String,
}

impl Config {
    fn read(path: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{path} is not JSON"))?;
        let field = |name: &str| {
            json[name]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{path} has no string {name}"))
        };
        Ok(Self {
            bench: json["bench"].as_bool().unwrap_or(false),
            attach_mode: field("attach_mode")?,
            collector: field("collector")?,
            token_file: field("token_file")?,
        })
    }
}

/// Counts and prints the outcome of each scenario.
#[derive(Default)]
pub struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    /// Runs one scenario and prints its outcome.
    pub fn run(&mut self, name: &str, scenario: impl FnOnce() -> anyhow::Result<()>) {
        say(&format!("tally-vm: start {name}"));
        let started = Instant::now();
        match scenario() {
            Ok(()) => {
                self.passed += 1;
                say(&format!(
                    "tally-vm: pass {name} ({:.1}s)",
                    started.elapsed().as_secs_f64()
                ));
            }
            Err(error) => {
                self.failed += 1;
                for line in format!("{error:#}").lines() {
                    say(&format!("  | {line}"));
                }
                say(&format!("tally-vm: FAIL {name}"));
            }
        }
    }
}

/// One line on the console, at once.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/etc/tally-vm/config.json".to_owned());
    let mut report = Report::default();
    match Config::read(&path) {
        Ok(config) if config.bench => report.run("bench-run-cost", bench::run_cost),
        Ok(config) => scenarios::run_all(&config, &mut report),
        Err(error) => report.run("config", || Err(error)),
    }
    say(&format!(
        "tally-vm: done {} {}",
        report.passed, report.failed
    ));
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
