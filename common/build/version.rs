//! The commit a binary is built from, for `--version` and the start-up log
//! line: a build-script helper shared by the agent's and the collector's
//! `build.rs` (included with `#[path]`; build scripts cannot depend on a
//! workspace crate's code without building it twice).
//!
//! It sets `TALLY_COMMIT` for the crate: `git describe --always --dirty
//! --abbrev=12 --match 'v[0-9]*'` of the checkout (a 12-digit commit, after
//! the nearest release tag when there is one, `-dirty` with uncommitted
//! changes), or `unknown` outside a git checkout. `TALLY_COMMIT` set in the
//! build's environment wins (a build from a source tarball, or a packager
//! who knows the commit).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The environment variable the crate reads with `env!`.
pub const COMMIT_ENV: &str = "TALLY_COMMIT";

/// Tells cargo the crate's commit and when to look again.
pub fn emit_commit() {
    println!("cargo:rerun-if-env-changed={COMMIT_ENV}");
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    if let Some(dir) = manifest.as_deref() {
        watch_git(dir);
    }
    let commit = commit(manifest.as_deref());
    println!("cargo:rustc-env={COMMIT_ENV}={commit}");
}

/// The commit a build in `dir` names: `TALLY_COMMIT` when set, else `git
/// describe` there, else `unknown`. (xtask's `dist` labels its image with
/// it too.)
pub fn commit(dir: Option<&Path>) -> String {
    match std::env::var(COMMIT_ENV) {
        Ok(given) if !given.trim().is_empty() => given.trim().to_owned(),
        _ => describe(dir).unwrap_or_else(|| "unknown".to_owned()),
    }
}

/// `git describe` run in `dir`; `None` when git or the checkout is missing.
fn describe(dir: Option<&Path>) -> Option<String> {
    let mut git = Command::new("git");
    if let Some(dir) = dir {
        git.current_dir(dir);
    }
    let output = git
        .args([
            "describe",
            "--always",
            "--dirty",
            "--abbrev=12",
            "--match",
            "v[0-9]*",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}

/// Asks cargo to run the build script again when the checked-out commit
/// changes: the checkout's `HEAD`, the branch it names and the packed refs.
/// Not the index: git rewrites it on many reads (`git status`), which would
/// rebuild both binaries each time; so `-dirty` tells the state when the
/// script last ran. Only files that exist are named: cargo reruns on every
/// build for a missing one.
fn watch_git(dir: &Path) {
    let Some(git_dir) = git_path(dir, "--git-dir") else {
        return;
    };
    let common_dir = git_path(dir, "--git-common-dir").unwrap_or_else(|| git_dir.clone());
    let mut watched = vec![git_dir.join("HEAD")];
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD"))
        && let Some(branch) = head.trim().strip_prefix("ref: ")
    {
        watched.push(common_dir.join(branch));
    }
    watched.push(common_dir.join("packed-refs"));
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// An absolute path `git rev-parse <flag>` prints in `dir`.
fn git_path(dir: &Path, flag: &str) -> Option<PathBuf> {
    let output = Command::new("git")
        .current_dir(dir)
        .args(["rev-parse", "--path-format=absolute", flag])
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| PathBuf::from(text.trim()))
}
