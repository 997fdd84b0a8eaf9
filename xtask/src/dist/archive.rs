//! Reproducible tarballs and the checksum list: GNU tar with sorted entries,
//! every mtime at `SOURCE_DATE_EPOCH`, owner and group 0 by number, modes set
//! when staging; `gzip -n` (no name, no time stamp in the header).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::status_ok;

/// Copies `from` to `to` with `mode`, making the parent directories (0755).
pub fn stage_file(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        make_dir(parent)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", to.display()))
}

/// Makes `dir` and its missing parents, each 0755 whatever the umask.
fn make_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
}

/// Packs the directory `top` (its name becomes the archive's top directory)
/// into `archive` (`.tar.gz`).
pub fn tar_gz(top: &Path, archive: &Path, source_date_epoch: u64) -> anyhow::Result<()> {
    let parent = top.parent().context("the staged directory has no parent")?;
    let name = top
        .file_name()
        .context("the staged directory has no name")?;
    fs::set_permissions(top, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot set the mode of {}", top.display()))?;
    let out = fs::File::create(archive)
        .with_context(|| format!("cannot create {}", archive.display()))?;
    let mut tar = Command::new("tar")
        .arg("--create")
        .args(tar_options(source_date_epoch))
        .arg("--directory")
        .arg(parent)
        .arg(name)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let tar_out = tar.stdout.take().context("tar has no stdout")?;
    let gzip = Command::new("gzip")
        .args(["-9", "--no-name"])
        .stdin(tar_out)
        .stdout(out)
        .status()
        .context("cannot run gzip")?;
    let tar = tar.wait().context("cannot wait for tar")?;
    if !tar.success() || !gzip.success() {
        bail!(
            "packing {} failed (tar: {tar}, gzip: {gzip})",
            archive.display()
        );
    }
    Ok(())
}

/// Packs what `dir` holds (its entries at the archive's root, as an OCI
/// archive has them) into the uncompressed tar `archive`.
pub fn tar_contents(dir: &Path, archive: &Path, source_date_epoch: u64) -> anyhow::Result<()> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    names.sort();
    status_ok(
        Command::new("tar")
            .arg("--create")
            .args(tar_options(source_date_epoch))
            .arg("--file")
            .arg(archive)
            .arg("--directory")
            .arg(dir)
            .arg("--")
            .args(&names),
    )
}

/// GNU tar's options for an archive that depends only on the files' names,
/// contents and modes.
fn tar_options(source_date_epoch: u64) -> Vec<String> {
    vec![
        "--format=gnu".to_owned(),
        "--sort=name".to_owned(),
        format!("--mtime=@{source_date_epoch}"),
        "--owner=0".to_owned(),
        "--group=0".to_owned(),
        "--numeric-owner".to_owned(),
    ]
}

/// Writes `SHA256SUMS` in `dir` for `files` (names in `dir`), in name order,
/// in the format `sha256sum --check` reads.
pub fn write_sums(dir: &Path, files: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let mut names: Vec<String> = files
        .iter()
        .map(|f| {
            f.file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
                .with_context(|| format!("{} has no UTF-8 name", f.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    names.sort();
    let sums = dir.join("SHA256SUMS");
    let out =
        fs::File::create(&sums).with_context(|| format!("cannot create {}", sums.display()))?;
    status_ok(
        Command::new("sha256sum")
            .arg("--")
            .args(&names)
            .current_dir(dir)
            .stdout(out),
    )?;
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` to `to` with `mode`, making the parent directories (0755).
    fn stage_text(text: &str, to: &Path, mode: u32) -> anyhow::Result<()> {
        if let Some(parent) = to.parent() {
            make_dir(parent)?;
        }
        fs::write(to, text).with_context(|| format!("cannot write {}", to.display()))?;
        fs::set_permissions(to, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", to.display()))
    }

    #[test]
    fn the_same_tree_packs_to_the_same_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let top = dir.path().join("tally-test");
        stage_text("b\n", &top.join("b"), 0o644).expect("stage");
        stage_text("a\n", &top.join("sub/a"), 0o755).expect("stage");
        for name in ["m", "z", "c"] {
            stage_text(name, &top.join(name), 0o644).expect("stage");
        }
        let first = dir.path().join("1.tar.gz");
        tar_gz(&top, &first, 1_700_000_000).expect("pack");
        // Other mtimes, another creation order: the same archive.
        fs::remove_dir_all(&top).expect("remove");
        stage_text("a\n", &top.join("sub/a"), 0o755).expect("stage");
        stage_text("b\n", &top.join("b"), 0o644).expect("stage");
        for name in ["z", "c", "m"] {
            stage_text(name, &top.join(name), 0o644).expect("stage");
        }
        let second = dir.path().join("2.tar.gz");
        tar_gz(&top, &second, 1_700_000_000).expect("pack");
        assert_eq!(
            fs::read(&first).expect("read"),
            fs::read(&second).expect("read")
        );
        let listing = Command::new("tar")
            .args(["--list", "--verbose", "--full-time", "--file"])
            .arg(&first)
            .output()
            .expect("tar --list");
        let listing = String::from_utf8_lossy(&listing.stdout);
        let names: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split_whitespace().last())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "entries in name order");
        assert!(listing.contains("0/0"), "{listing}");
        assert!(listing.contains("2023-11-14 22:13:20"), "{listing}");
        assert!(listing.contains("-rwxr-xr-x"), "{listing}");
    }

    #[test]
    fn sums_are_checked_by_sha256sum() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = ["b.tar.gz", "a.deb"].map(|name| {
            let path = dir.path().join(name);
            fs::write(&path, name).expect("write");
            path
        });
        let sums = write_sums(dir.path(), &files).expect("sums");
        let text = fs::read_to_string(&sums).expect("read");
        let names: Vec<&str> = text.lines().filter_map(|l| l.split("  ").nth(1)).collect();
        assert_eq!(names, ["a.deb", "b.tar.gz"]);
        let check = Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(dir.path())
            .output()
            .expect("sha256sum --check");
        assert!(check.status.success());
    }
}
