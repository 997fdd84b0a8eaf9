//! `cargo xtask dist`: the release artefacts for each CPU tally ships for,
//! built from a clean checkout on this machine (docs/releasing.md).
//!
//! - `tally-<version>-<target>.tar.gz`: both static binaries, their
//!   CycloneDX SBOMs, the systemd units and environment examples, the
//!   OpenRC scripts, INSTALL and install.sh;
//! - `.deb` (cargo-deb) and `.rpm` (cargo-generate-rpm) of `tally-agent`
//!   and `tally-collector`;
//! - `tally-<binary>-<version>-<target>.cdx.json`, the SBOMs beside them;
//! - `tally-<version>-oci.tar`: the OCI image of both CPUs (buildah);
//! - `SHA256SUMS` over all of them.
//!
//! Every artefact depends only on the sources and `SOURCE_DATE_EPOCH` (the
//! last commit's time unless set): two runs give the same bytes.

mod archive;
mod build;
pub mod debian_root;
mod image;
mod linux_packages;
mod sbom;
mod target;
/// The commit the binaries name (shared with their build scripts).
#[path = "../../../common/build/version.rs"]
#[allow(dead_code, reason = "the build scripts use the rest")]
mod version;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};
use clap::Args;

pub use build::BINARIES;
pub use target::Target;

use crate::{
    cargo_tool::{self, CargoTool},
    packages::{self, Need},
    setup, target_dir, workspace_root,
};

/// The release's version: the workspace's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The cargo subcommands a release is built with.
const TOOLS: [CargoTool; 4] = [
    CargoTool {
        krate: "cargo-auditable",
        version: "0.7.7",
    },
    CargoTool {
        krate: "cargo-cyclonedx",
        version: "0.5.9",
    },
    CargoTool {
        krate: "cargo-deb",
        version: "3.8.0",
    },
    CargoTool {
        krate: "cargo-generate-rpm",
        version: "0.21.1",
    },
];

#[derive(Debug, Args)]
pub struct DistArgs {
    /// Build for this target only (a Rust triple, or amd64/arm64/x86_64/
    /// aarch64); repeat for several. Default: every target.
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<Target>,
    /// Where the artefacts go (emptied first). Default: target/tally-dist.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

impl DistArgs {
    /// Every target, into `out_dir`.
    pub fn every_target(out_dir: PathBuf) -> Self {
        DistArgs {
            targets: Vec::new(),
            out_dir: Some(out_dir),
        }
    }
}

/// What one target's build left in the output directory.
struct Built {
    target: Target,
    /// Where its binaries are.
    bin_dir: PathBuf,
    artefacts: Vec<PathBuf>,
}

pub fn run(args: &DistArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut targets = if args.targets.is_empty() {
        Target::ALL.to_vec()
    } else {
        args.targets.clone()
    };
    targets.sort();
    targets.dedup();
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| target_dir().join("tally-dist"));

    let mut needs: Vec<Need> = targets
        .iter()
        .flat_map(|t| t.needs().iter().copied())
        .collect();
    needs.extend(image::NEEDS);
    packages::ensure(&needs)?;
    ensure_rust_targets(&targets)?;
    setup()?;
    cargo_tool::ensure(&TOOLS)?;

    let source_date_epoch = source_date_epoch()?;
    empty_out_dir(&out_dir)?;
    let out_dir = out_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", out_dir.display()))?;

    let mut built = Vec::new();
    for target in targets {
        eprintln!("dist: building for {target}");
        built.push(build_target(target, &out_dir, source_date_epoch)?);
    }
    let mut artefacts: Vec<PathBuf> = built.iter().flat_map(|b| b.artefacts.clone()).collect();
    eprintln!("dist: building the OCI image {}", image::image_name());
    let staged: Vec<(Target, PathBuf)> = built
        .iter()
        .map(|b| (b.target, b.bin_dir.clone()))
        .collect();
    let commit = version::commit(Some(&workspace_root()));
    let oci = image::build(&staged, &commit, &out_dir, source_date_epoch)?;
    artefacts.push(oci.clone());
    let sums = archive::write_sums(&out_dir, &artefacts)?;

    eprintln!(
        "dist: done in {:.0} s (SOURCE_DATE_EPOCH={source_date_epoch}):",
        started.elapsed().as_secs_f64()
    );
    for b in &built {
        for artefact in &b.artefacts {
            let size = fs::metadata(artefact).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "  {:<10} {:>12} bytes  {}",
                b.target.deb_arch(),
                size,
                artefact.display()
            );
        }
    }
    let size = fs::metadata(&oci).map(|m| m.len()).unwrap_or(0);
    eprintln!("  {:<10} {:>12} bytes  {}", "image", size, oci.display());
    eprintln!("  {}", sums.display());
    Ok(())
}

/// The static binaries of `binaries` (packages of the same names) for
/// `target`, built as the release's are, with everything that needs
/// installed first; the directory holding them. The release's two binaries
/// and anything else (`vm-test`'s guest driver) are built separately.
pub fn build_static(target: Target, binaries: &[&str]) -> anyhow::Result<PathBuf> {
    packages::ensure(target.needs())?;
    ensure_rust_targets(&[target])?;
    setup()?;
    cargo_tool::ensure(&TOOLS)?;
    let release: Vec<&str> = binaries
        .iter()
        .copied()
        .filter(|b| BINARIES.contains(b))
        .collect();
    let others: Vec<&str> = binaries
        .iter()
        .copied()
        .filter(|b| !BINARIES.contains(b))
        .collect();
    let mut dir = None;
    if !release.is_empty() {
        dir = Some(build::build(target)?);
    }
    if !others.is_empty() {
        dir = Some(build::build_binaries(target, &others)?);
    }
    dir.context("no binary asked for")
}

/// Builds both binaries for `target` and makes its artefacts in `out_dir`.
fn build_target(target: Target, out_dir: &Path, source_date_epoch: u64) -> anyhow::Result<Built> {
    let bin_dir = build::build(target)?;
    let stage_dir = target_dir().join("dist-stage").join(target.triple());
    if stage_dir.exists() {
        fs::remove_dir_all(&stage_dir)
            .with_context(|| format!("cannot empty {}", stage_dir.display()))?;
    }
    let mut artefacts = Vec::new();

    // The SBOMs, beside the tarballs and inside them.
    let sbom_dir = stage_dir.join("sbom");
    let sboms = sbom::generate(target, &sbom_dir, source_date_epoch)?;
    for (binary, path) in &sboms {
        let beside = out_dir.join(format!("{binary}-{VERSION}-{target}.cdx.json"));
        fs::copy(path, &beside).with_context(|| format!("cannot copy {}", path.display()))?;
        artefacts.push(beside);
    }

    let top = stage_dir.join(format!("tally-{VERSION}-{target}"));
    stage_tarball(&top, &bin_dir, &sboms)?;
    let tarball = out_dir.join(format!("tally-{VERSION}-{target}.tar.gz"));
    archive::tar_gz(&top, &tarball, source_date_epoch)?;
    artefacts.push(tarball);

    for binary in BINARIES {
        artefacts.push(linux_packages::deb(
            binary,
            target,
            out_dir,
            source_date_epoch,
        )?);
        artefacts.push(linux_packages::rpm(
            binary,
            target,
            out_dir,
            source_date_epoch,
        )?);
    }
    Ok(Built {
        target,
        bin_dir,
        artefacts,
    })
}

/// The files of the tarball, under `top`.
fn stage_tarball(top: &Path, bin_dir: &Path, sboms: &[(&str, PathBuf)]) -> anyhow::Result<()> {
    let root = workspace_root();
    for binary in BINARIES {
        archive::stage_file(&bin_dir.join(binary), &top.join(binary), 0o755)?;
    }
    for (binary, path) in sboms {
        archive::stage_file(
            path,
            &top.join("sbom").join(format!("{binary}.cdx.json")),
            0o644,
        )?;
    }
    for name in SYSTEMD_FILES {
        let from = root.join("deploy/systemd").join(name);
        archive::stage_file(&from, &top.join("systemd").join(name), 0o644)?;
    }
    for name in OPENRC_FILES {
        let from = root.join("deploy/openrc").join(name);
        archive::stage_file(&from, &top.join("openrc").join(name), 0o755)?;
    }
    for (name, mode) in [("INSTALL", 0o644), ("install.sh", 0o755)] {
        let from = root.join("deploy/tarball").join(name);
        archive::stage_file(&from, &top.join(name), mode)?;
    }
    Ok(())
}

/// The files of `deploy/systemd` every tarball carries.
const SYSTEMD_FILES: [&str; 7] = [
    "tally-agent.service",
    "tally-agent-pin-dir.service",
    "tally-agent.sysusers",
    "tally-agent.tmpfiles",
    "tally-agent.env.example",
    "tally-collector.service",
    "tally-collector.env.example",
];

/// Whether `name` is one of the files `dist` writes into its output.
fn is_artefact(name: &str) -> bool {
    name == "SHA256SUMS"
        || [".tar.gz", ".deb", ".rpm", ".cdx.json", "-oci.tar"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
}

/// Creates `dir`, or removes the artefacts of an earlier run from it. Refuses
/// a directory that holds anything else (another directory given to
/// `--out-dir` by mistake is left alone).
fn empty_out_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()));
    }
    let entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    if let Some(other) = entries.iter().find(|entry| {
        !entry.file_type().is_ok_and(|t| t.is_file())
            || !entry.file_name().to_str().is_some_and(is_artefact)
    }) {
        bail!(
            "{} holds {:?}, which `cargo xtask dist` did not make: give an empty or new --out-dir",
            dir.display(),
            other.file_name()
        );
    }
    for entry in entries {
        fs::remove_file(entry.path())
            .with_context(|| format!("cannot remove {}", entry.path().display()))?;
    }
    Ok(())
}

/// The OpenRC scripts of `deploy/openrc` (install.sh installs them).
const OPENRC_FILES: [&str; 2] = ["tally-agent", "tally-collector"];

/// `SOURCE_DATE_EPOCH` when set, else the time of the checkout's last commit.
fn source_date_epoch() -> anyhow::Result<u64> {
    if let Ok(given) = std::env::var("SOURCE_DATE_EPOCH") {
        return given
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={given:?} is not a number of seconds"));
    }
    let out = Command::new("git")
        .current_dir(workspace_root())
        .args(["log", "-1", "--format=%ct"])
        .output()
        .context("cannot run git log")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("outside a git checkout, set SOURCE_DATE_EPOCH (seconds since 1970)");
    }
    text.trim()
        .parse()
        .with_context(|| format!("git log printed {text:?}, not a time"))
}

/// Adds the Rust targets that rustup lacks.
fn ensure_rust_targets(targets: &[Target]) -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .current_dir(workspace_root())
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup target list")?;
    let installed = String::from_utf8_lossy(&out.stdout);
    for target in targets {
        if !installed.lines().any(|line| line.trim() == target.triple()) {
            eprintln!("setup: adding the Rust target {target}");
            crate::status_ok(Command::new("rustup").current_dir(workspace_root()).args([
                "target",
                "add",
                target.triple(),
            ]))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_earlier_output_is_emptied() {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("out");
        empty_out_dir(&out).expect("created");
        for name in [
            "SHA256SUMS",
            "tally-0.1.0-x.tar.gz",
            "a.deb",
            "a.rpm",
            "a.cdx.json",
        ] {
            fs::write(out.join(name), name).expect("write");
        }
        empty_out_dir(&out).expect("emptied");
        assert_eq!(fs::read_dir(&out).expect("list").count(), 0);

        fs::write(out.join("notes.txt"), "mine").expect("write");
        let err = empty_out_dir(&out).expect_err("refused");
        assert!(err.to_string().contains("notes.txt"), "{err}");
        assert!(out.join("notes.txt").exists());
        fs::remove_file(out.join("notes.txt")).expect("remove");
        fs::create_dir(out.join("deps")).expect("mkdir");
        empty_out_dir(&out).expect_err("a directory is refused");
    }
}
