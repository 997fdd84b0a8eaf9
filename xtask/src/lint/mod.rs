//! `cargo xtask lint`: rustfmt, the workspace's set-up ([`manifests`]), no
//! import cycles between modules ([`cycles`]), no stale path in sources and
//! docs ([`pointers`]), clippy (the workspace, the
//! eBPF crate for its target, the fuzz crate) and rustdoc, warnings as errors.

mod cycles;
mod manifests;
mod pointers;
mod workspace;

use std::process::Command;

use crate::{docs, ebpf_cargo, fuzz, setup, status_ok, toolchain, workspace_root};

/// Runs every check (with `quick`, only those that need no build),
/// stopping at the first that fails.
pub fn run(quick: bool) -> anyhow::Result<()> {
    if !quick {
        setup()?;
    }
    let root = workspace_root();
    status_ok(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--check"]),
    )?;
    let packages = workspace::packages(&root.join("Cargo.toml"))?;
    manifests::check(&root, &packages)?;
    let fuzz_packages = workspace::packages(&root.join("fuzz/Cargo.toml"))?;
    cycles::check(&root, &[packages, fuzz_packages].concat())?;
    pointers::check()?;
    if quick {
        return Ok(());
    }
    status_ok(
        Command::new("cargo")
            .current_dir(&root)
            .env("PATH", toolchain::path_with_cargo_bin()?)
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
    )?;
    status_ok(ebpf_cargo("clippy")?.args(["--", "-D", "warnings"]))?;
    fuzz::lint()?;
    docs::check()?;
    docs::check_ebpf()
}
