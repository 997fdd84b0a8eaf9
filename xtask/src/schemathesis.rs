//! schemathesis (PyPI), which the HTTP API's schema test runs
//! (`collector/tests/it/api_schemathesis.rs`): a Python virtual environment
//! under the target directory with the exact versions of
//! `xtask/schemathesis-requirements.txt`, made with Debian's `python3 -m
//! venv` (package `python3-venv`, see [`crate::packages`]) when missing or
//! when the list changed. Does nothing when it is there.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

/// The pinned versions, as pip reads them.
const REQUIREMENTS: &str = include_str!("../schemathesis-requirements.txt");

/// The Python that makes the environment: Debian's, whatever `python3` a
/// developer's `PATH` finds first.
const PYTHON: &str = "/usr/bin/python3";

/// Where the environment is made, in `target`.
pub fn venv(target: &Path) -> PathBuf {
    target.join("schemathesis-venv")
}

/// The `schemathesis` program of the environment in `target`.
pub fn program(target: &Path) -> PathBuf {
    venv(target).join("bin/schemathesis")
}

/// The copy of the requirements an environment was made from, written last:
/// an environment without it (half made) or with another list is made again.
fn stamp(venv: &Path) -> PathBuf {
    venv.join("tally-requirements.txt")
}

/// Makes the environment in `target` unless it is there with these
/// versions; the `schemathesis` program.
pub fn ensure(target: &Path) -> anyhow::Result<PathBuf> {
    // Absolute: the tests run in their package's folder.
    let target = &std::path::absolute(target)
        .with_context(|| format!("cannot make {} absolute", target.display()))?;
    let venv = venv(target);
    let program = program(target);
    if program.is_file() && fs::read_to_string(stamp(&venv)).is_ok_and(|s| s == REQUIREMENTS) {
        return Ok(program);
    }
    eprintln!(
        "setup: making {} (pinned in xtask/schemathesis-requirements.txt)",
        venv.display()
    );
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("cannot remove {}", venv.display()))?;
    }
    fs::create_dir_all(target).with_context(|| format!("cannot create {}", target.display()))?;
    crate::status_ok(Command::new(PYTHON).arg("-m").arg("venv").arg(&venv))?;
    let requirements = venv.join("requirements.txt");
    fs::write(&requirements, REQUIREMENTS)
        .with_context(|| format!("cannot write {}", requirements.display()))?;
    crate::status_ok(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--no-input",
                "--disable-pip-version-check",
            ])
            .args(["--no-deps", "--requirement"])
            .arg(&requirements),
    )?;
    crate::status_ok(Command::new(&program).arg("--version"))?;
    fs::write(stamp(&venv), REQUIREMENTS)
        .with_context(|| format!("cannot write {}", stamp(&venv).display()))?;
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_requirement_is_pinned_and_schemathesis_is_one() {
        let pins: Vec<&str> = REQUIREMENTS
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        assert!(
            pins.iter().all(|l| l.split_once("==").is_some()),
            "{pins:?}"
        );
        assert!(pins.iter().any(|l| l.starts_with("schemathesis==")));
    }
}
