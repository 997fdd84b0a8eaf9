//! The packages of a workspace and the root files of their targets, from
//! `cargo metadata --no-deps` (which needs no network).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// A package of the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub manifest: PathBuf,
    /// The root file of each target (lib, bins, tests, build script…).
    pub targets: Vec<PathBuf>,
}

/// Reads the packages out of `cargo metadata`'s JSON.
fn parse(json: &serde_json::Value) -> anyhow::Result<Vec<Package>> {
    let Some(packages) = json.get("packages").and_then(|p| p.as_array()) else {
        bail!("cargo metadata gave no packages");
    };
    let text = |value: &serde_json::Value, key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .with_context(|| format!("cargo metadata: a package without {key}"))
    };
    packages
        .iter()
        .map(|package| {
            let targets = package
                .get("targets")
                .and_then(|t| t.as_array())
                .into_iter()
                .flatten()
                .map(|target| text(target, "src_path").map(PathBuf::from))
                .collect::<anyhow::Result<_>>()?;
            Ok(Package {
                name: text(package, "name")?,
                manifest: PathBuf::from(text(package, "manifest_path")?),
                targets,
            })
        })
        .collect()
}

/// The packages of the workspace whose manifest is `manifest`.
pub fn packages(manifest: &Path) -> anyhow::Result<Vec<Package>> {
    let out = Command::new("cargo")
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata --manifest-path {} failed: {}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cargo metadata gave no JSON")?;
    parse(&json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_packages_and_targets() {
        let json = serde_json::json!({
            "packages": [{
                "name": "tally-common",
                "manifest_path": "/w/common/Cargo.toml",
                "targets": [{"kind": ["lib"], "src_path": "/w/common/src/lib.rs"}]
            }]
        });
        assert_eq!(
            parse(&json).expect("parses"),
            vec![Package {
                name: "tally-common".to_owned(),
                manifest: PathBuf::from("/w/common/Cargo.toml"),
                targets: vec![PathBuf::from("/w/common/src/lib.rs")],
            }]
        );
    }
}
