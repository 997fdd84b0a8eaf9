//! Cargo subcommands from crates.io that the tasks run (cargo-fuzz,
//! cargo-auditable, cargo-deb, ...), each at a pinned version, installed
//! with `cargo install --locked` when it is missing or another version is
//! there.

use std::process::{Command, Stdio};

use anyhow::Context as _;

use crate::{status_ok, toolchain};

/// A crate that installs a cargo subcommand, at the version the tasks use.
#[derive(Debug, Clone, Copy)]
pub struct CargoTool {
    pub krate: &'static str,
    pub version: &'static str,
}

/// The versions `cargo install --list` reports: lines `<crate> v<version>:`.
fn installed_version(list: &str, krate: &str) -> Option<String> {
    list.lines()
        .filter(|line| !line.starts_with(char::is_whitespace))
        .find_map(|line| {
            let (name, rest) = line.split_once(' ')?;
            let version = rest.strip_prefix('v')?;
            let version = version.split([':', ' ']).next()?;
            (name == krate).then(|| version.to_owned())
        })
}

/// Installs each of `tools` that is missing or at another version.
pub fn ensure(tools: &[CargoTool]) -> anyhow::Result<()> {
    let out = Command::new("cargo")
        .args(["install", "--list"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run cargo install --list")?;
    let list = String::from_utf8_lossy(&out.stdout);
    for tool in tools {
        let installed = installed_version(&list, tool.krate);
        if installed.as_deref() == Some(tool.version) {
            continue;
        }
        eprintln!(
            "setup: installing {} {} (was: {})",
            tool.krate,
            tool.version,
            installed.as_deref().unwrap_or("not installed")
        );
        status_ok(
            Command::new("cargo")
                .args(["install", "--locked", "--force", tool.krate])
                .args(["--version", tool.version])
                .env("PATH", toolchain::path_with_cargo_bin()?),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cargo_install_list() {
        let list = "bpf-linker v0.10.3:\n    bpf-linker\n\
                    cargo-deb v3.8.0:\n    cargo-deb\n\
                    cargo-fuzz v0.13.2 (/src/cargo-fuzz):\n    cargo-fuzz\n";
        assert_eq!(
            installed_version(list, "cargo-deb").as_deref(),
            Some("3.8.0")
        );
        assert_eq!(
            installed_version(list, "cargo-fuzz").as_deref(),
            Some("0.13.2")
        );
        assert_eq!(installed_version(list, "cargo-generate-rpm"), None);
        assert_eq!(installed_version(list, "cargo"), None);
    }
}
