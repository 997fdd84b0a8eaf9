//! The release build of both binaries for one target: `cargo auditable
//! build` (the dependency list embedded in a `.dep-v0` section) in the
//! `dist` profile (release, stripped), fully static with musl.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::Target;
use crate::{status_ok, target_dir, toolchain, workspace_root};

/// The two binaries, in the order they are listed everywhere.
pub const BINARIES: [&str; 2] = ["tally-agent", "tally-collector"];

/// The directory of the crate that builds `binary`, in the workspace.
pub fn crate_dir(binary: &str) -> &'static str {
    if binary == "tally-agent" {
        "agent"
    } else {
        "collector"
    }
}

/// Builds both binaries for `target` and returns the directory holding them.
pub fn build(target: Target) -> anyhow::Result<PathBuf> {
    build_binaries(target, &BINARIES)
}

/// Builds `binaries` (each the binary of the package of the same name) for
/// `target` as the release is built, and returns the directory holding
/// them. (`vm-test` builds its guest driver this way, on its own: building
/// it together with the release's binaries could change their features.)
pub fn build_binaries(target: Target, binaries: &[&str]) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env("PATH", toolchain::path_with_cargo_bin()?)
        .args(["auditable", "build", "--locked", "--profile", "dist"])
        .args(["--target", target.triple()]);
    for binary in binaries {
        cmd.args(["--package", binary, "--bin", binary]);
    }
    cmd.envs(target.cross_env());
    // What `cargo run` told xtask about itself is not the build's business:
    // build scripts that watch CARGO_PKG_NAME and the like (ring's) would
    // otherwise see other values than in a plain `cargo build` and rebuild.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_MANIFEST_") {
            cmd.env_remove(name.as_ref());
        }
    }
    // Paths in the binaries (panic locations) name neither this checkout's
    // directory nor cargo's home: the same sources build the same bytes
    // wherever they are checked out.
    let rustflags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        target.triple().replace('-', "_").to_uppercase()
    );
    cmd.env(
        rustflags_var,
        remap_flags(&workspace_root(), &cargo_home()?)?,
    );
    status_ok(&mut cmd)
        .with_context(|| format!("building {} for {target}", binaries.join(" and ")))?;
    Ok(target_dir().join(target.triple()).join("dist"))
}

fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// `--remap-path-prefix` for the checkout and cargo's home, space-separated
/// (the form `CARGO_TARGET_<triple>_RUSTFLAGS` takes, so neither path may
/// hold white space).
fn remap_flags(checkout: &Path, cargo_home: &Path) -> anyhow::Result<String> {
    let mut flags = Vec::new();
    for (path, to) in [(checkout, "/tally"), (cargo_home, "/cargo")] {
        let path = path.to_str().context("a non-UTF-8 path")?;
        if path.contains(char::is_whitespace) {
            bail!("cannot build release artefacts under {path:?}: the path holds white space");
        }
        flags.push(format!("--remap-path-prefix={path}={to}"));
    }
    Ok(flags.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaps_the_checkout_and_cargo_home() {
        let flags =
            remap_flags(Path::new("/work/tally"), Path::new("/root/.cargo")).expect("plain paths");
        assert_eq!(
            flags,
            "--remap-path-prefix=/work/tally=/tally --remap-path-prefix=/root/.cargo=/cargo"
        );
        assert!(remap_flags(Path::new("/my work"), Path::new("/root/.cargo")).is_err());
    }
}
