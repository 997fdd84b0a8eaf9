//! `cargo xtask test`: runs `cargo test` on the workspace, passes its output
//! through, and ends with one plain summary line over every test binary
//! (`tally: N passed, N failed, N skipped`), so that the last line of a run
//! speaks for the whole run rather than for the last (often empty) doc-test
//! binary.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    thread,
};

use anyhow::{Context as _, bail};

/// Totals over the `test result:` lines of a cargo test run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// Adds one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
pub fn add_result_line(totals: &mut Totals, line: &str) {
    let Some(rest) = line.trim().strip_prefix("test result:") else {
        return;
    };
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(kind), Some(count)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(count) = count.trim_end_matches('.').parse::<u64>() else {
            continue;
        };
        match kind {
            "passed" => totals.passed += count,
            "failed" => totals.failed += count,
            _ => {}
        }
    }
}

/// Runs the command, echoing its output, and returns its totals (a test
/// printing `SKIP ` on stderr counts as skipped).
pub fn run(cmd: &mut Command) -> anyhow::Result<Totals> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let skips = thread::spawn(move || {
        let mut skipped = 0;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("SKIP ") {
                skipped += 1;
            }
            let _ = writeln!(std::io::stderr(), "{line}");
        }
        skipped
    });
    let mut totals = Totals::default();
    let stdout = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        add_result_line(&mut totals, &line);
        println!("{line}");
    }
    totals.skipped = skips.join().unwrap_or(0);
    // A test that skips returns early and so reports "ok": count it once.
    totals.passed = totals.passed.saturating_sub(totals.skipped);
    let status = child.wait().context("cannot wait for cargo test")?;
    println!(
        "tally: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.skipped
    );
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_summed() {
        let mut totals = Totals::default();
        add_result_line(
            &mut totals,
            "test result: ok. 32 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        );
        add_result_line(
            &mut totals,
            "test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        add_result_line(&mut totals, "running 7 tests");
        add_result_line(
            &mut totals,
            "test result: ok. 0 passed; 0 failed; 0 ignored",
        );
        assert_eq!(
            totals,
            Totals {
                passed: 37,
                failed: 2,
                skipped: 0
            }
        );
    }
}
