//! CycloneDX SBOMs (JSON, spec 1.5) of both binaries for one target, by
//! cargo-cyclonedx: every crate each binary is built from, build
//! dependencies included (the eBPF object's crates are among them), with
//! versions, licenses and checksums. `SOURCE_DATE_EPOCH` fixes the time stamp
//! and drops the random serial number, so the same sources give the same
//! bytes.
//!
//! cargo-cyclonedx writes `<binary>_bin.cdx.json` beside every workspace
//! member's `Cargo.toml`; the two wanted are moved out, the rest removed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{BINARIES, Target, build::crate_dir};
use crate::{status_ok, toolchain, workspace_root};

/// The suffix cargo-cyclonedx gives a binary's SBOM.
const SUFFIX: &str = "_bin.cdx.json";

/// Writes `<dir>/<binary>.cdx.json` for both binaries; returns them.
pub fn generate(
    target: Target,
    dir: &Path,
    source_date_epoch: u64,
) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let root = workspace_root();
    remove_written(&root)?;
    let generated = status_ok(
        Command::new("cargo")
            .current_dir(&root)
            .env("PATH", toolchain::path_with_cargo_bin()?)
            .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string())
            .args([
                "cyclonedx",
                "--quiet",
                "--format",
                "json",
                "--spec-version",
                "1.5",
            ])
            .args(["--describe", "binaries", "--target", target.triple()]),
    );
    let moved = generated.and_then(|()| {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        BINARIES
            .iter()
            .map(|&binary| {
                let from = root
                    .join(crate_dir(binary))
                    .join(format!("{binary}{SUFFIX}"));
                let to = dir.join(format!("{binary}.cdx.json"));
                if !from.exists() {
                    bail!("cargo cyclonedx wrote no {}", from.display());
                }
                fs::rename(&from, &to).with_context(|| {
                    format!("cannot move {} to {}", from.display(), to.display())
                })?;
                Ok((binary, to))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    });
    // Whatever happened, no SBOM stays in the source tree.
    remove_written(&root)?;
    moved.with_context(|| format!("the SBOMs for {target}"))
}

/// Removes the `*_bin.cdx.json` files beside the workspace's manifests (one
/// directory level below the root, where every member is).
fn remove_written(root: &Path) -> anyhow::Result<()> {
    let members = fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))?;
    for member in members.flatten() {
        let Ok(files) = fs::read_dir(member.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name();
            if name.to_str().is_some_and(|n| n.ends_with(SUFFIX)) {
                fs::remove_file(file.path())
                    .with_context(|| format!("cannot remove {}", file.path().display()))?;
            }
        }
    }
    Ok(())
}
