//! The OCI image: `FROM scratch` with the two static binaries in
//! /usr/local/bin, one image per CPU under one image index named
//! `tally:<version>`, built by buildah (no container engine, no daemon) in
//! storage of its own under the target directory, written as an OCI layout
//! and packed as `tally-<version>-oci.tar` (an OCI archive: `skopeo copy
//! --all oci-archive:… docker://registry/tally:<version>` pushes it).
//!
//! buildah's `--timestamp` fixes every time stamp inside the image, so the
//! same binaries give the same blobs; the archive is packed like the
//! tarballs (sorted, owner 0/0, fixed times).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use super::{BINARIES, Target, VERSION, archive};
use crate::{packages::Need, target_dir};

pub const NEEDS: [Need; 1] = [Need {
    package: "buildah",
    programs: &["buildah"],
    files: &[],
    why: "building the OCI image without a container engine",
}];

/// The image's name (and tag) in the archive.
pub fn image_name() -> String {
    format!("tally:{VERSION}")
}

/// The archive's file name.
pub fn archive_name() -> String {
    format!("tally-{VERSION}-oci.tar")
}

/// The uid:gid the image runs as by default (the collector's; the agent's
/// DaemonSet runs it as root with two capabilities).
const USER: &str = "65532:65532";

/// `buildah` with storage of its own.
struct Buildah {
    storage: PathBuf,
}

impl Buildah {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(self.storage.join("root"))
            .arg("--runroot")
            .arg(self.storage.join("run"))
            .args(["--storage-driver", "vfs"]);
        cmd
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.cmd();
        cmd.args(args);
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        if !out.status.success() {
            anyhow::bail!(
                "{cmd:?} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// Builds the image for `staged` (each target with the directory holding
/// its binaries) and writes the archive into `out_dir`.
pub fn build(
    staged: &[(Target, PathBuf)],
    commit: &str,
    out_dir: &Path,
    source_date_epoch: u64,
) -> anyhow::Result<PathBuf> {
    let work = target_dir().join("dist-stage").join("image");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot empty {}", work.display()))?;
    }
    let buildah = Buildah {
        storage: work.join("storage"),
    };
    let name = image_name();
    let timestamp = source_date_epoch.to_string();
    for (target, bin_dir) in staged {
        let arch = target.deb_arch();
        let container = buildah.run(&["from", "--arch", arch, "--os", "linux", "scratch"])?;
        let mut copy = vec!["copy", "--chmod", "0755", container.as_str()];
        let binaries: Vec<String> = BINARIES
            .iter()
            .map(|b| bin_dir.join(b).to_string_lossy().into_owned())
            .collect();
        copy.extend(binaries.iter().map(String::as_str));
        copy.push("/usr/local/bin/");
        buildah.run(&copy)?;
        let labels = [
            "org.opencontainers.image.title=tally".to_owned(),
            format!("org.opencontainers.image.version={VERSION}"),
            format!("org.opencontainers.image.revision={commit}"),
            "org.opencontainers.image.licenses=Apache-2.0".to_owned(),
            "org.opencontainers.image.description=tally-agent and tally-collector, static"
                .to_owned(),
        ];
        let mut config = vec![
            "config",
            "--arch",
            arch,
            "--os",
            "linux",
            "--env",
            "PATH=/usr/local/bin",
            "--user",
            USER,
            "--entrypoint",
            "[]",
            "--cmd",
            r#"["tally-collector","--help"]"#,
        ];
        for label in &labels {
            config.extend(["--label", label.as_str()]);
        }
        config.push(&container);
        buildah.run(&config)?;
        buildah.run(&[
            "commit",
            "--quiet",
            "--format",
            "oci",
            "--timestamp",
            &timestamp,
            "--manifest",
            &name,
            &container,
        ])?;
        buildah.run(&["rm", &container])?;
    }
    let layout = work.join("layout");
    let destination = format!("oci:{}:{name}", layout.display());
    buildah.run(&[
        "manifest",
        "push",
        "--all",
        "--quiet",
        "--format",
        "oci",
        &name,
        &destination,
    ])?;
    let out = out_dir.join(archive_name());
    archive::tar_contents(&layout, &out, source_date_epoch)?;
    // The storage holds a copy of every layer: gone once the archive is.
    fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    Ok(out)
}
