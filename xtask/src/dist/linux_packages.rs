//! The `.deb` and `.rpm` of each binary, from the metadata in its crate's
//! `Cargo.toml` (`[package.metadata.deb]`, `[package.metadata.generate-rpm]`):
//! cargo-deb and cargo-generate-rpm package the `dist` build (already
//! stripped) without building again.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use super::{Target, VERSION, build::crate_dir};
use crate::{status_ok, toolchain, workspace_root};

/// The package revision (`-1` of `0.1.0-1`), the same for both formats.
pub const REVISION: &str = "1";

/// A `cargo <subcommand>` for packaging, in the workspace root.
fn packager(subcommand: &str, source_date_epoch: u64) -> anyhow::Result<Command> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env("PATH", toolchain::path_with_cargo_bin()?)
        .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string())
        .arg(subcommand);
    Ok(cmd)
}

/// The file name of `binary`'s `.deb` for `target`.
pub fn deb_name(binary: &str, target: Target) -> String {
    format!("{binary}_{VERSION}-{REVISION}_{}.deb", target.deb_arch())
}

/// The file name of `binary`'s `.rpm` for `target`.
pub fn rpm_name(binary: &str, target: Target) -> String {
    format!("{binary}-{VERSION}-{REVISION}.{}.rpm", target.rpm_arch())
}

/// Makes `binary`'s `.deb` for `target` in `out_dir`.
pub fn deb(
    binary: &str,
    target: Target,
    out_dir: &Path,
    source_date_epoch: u64,
) -> anyhow::Result<PathBuf> {
    let out = out_dir.join(deb_name(binary, target));
    let mut cmd = packager("deb", source_date_epoch)?;
    cmd.args(["--package", binary, "--target", target.triple()])
        .args(["--profile", "dist", "--no-build", "--no-strip"])
        .args(["--deb-revision", REVISION])
        .arg("--output")
        .arg(&out);
    status_ok(&mut cmd).with_context(|| format!("packaging {binary} for {target} (.deb)"))?;
    Ok(out)
}

/// Makes `binary`'s `.rpm` for `target` in `out_dir`.
pub fn rpm(
    binary: &str,
    target: Target,
    out_dir: &Path,
    source_date_epoch: u64,
) -> anyhow::Result<PathBuf> {
    let out = out_dir.join(rpm_name(binary, target));
    let mut cmd = packager("generate-rpm", source_date_epoch)?;
    // cargo-generate-rpm takes the crate's directory for --package.
    cmd.args(["--package", crate_dir(binary), "--target", target.triple()])
        .args(["--profile", "dist", "--payload-compress", "zstd"])
        .args(["--set-metadata", &format!("release = \"{REVISION}\"")])
        .arg("--output")
        .arg(&out);
    status_ok(&mut cmd).with_context(|| format!("packaging {binary} for {target} (.rpm)"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_follow_each_format() {
        assert_eq!(
            deb_name("tally-agent", Target::Aarch64),
            format!("tally-agent_{VERSION}-1_arm64.deb")
        );
        assert_eq!(
            rpm_name("tally-collector", Target::X86_64),
            format!("tally-collector-{VERSION}-1.x86_64.rpm")
        );
    }
}
