//! The VM's initramfs: busybox-static for the CPU, the kernel's modules the
//! guest needs (in load order), the static `tally-agent` and
//! `tally-vm-guest`, the guest's settings, and `init` (init.sh), packed as
//! an uncompressed newc cpio archive by the host's busybox.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// The guest's settings, and the node token it reports with.
pub struct GuestFiles<'a> {
    pub busybox: &'a Path,
    pub agent: &'a Path,
    pub guest: &'a Path,
    /// The modules' tree and the files to load from it, in order.
    pub modules_dir: &'a Path,
    pub modules: &'a [PathBuf],
    /// `/etc/tally-vm/config.json`.
    pub config: &'a serde_json::Value,
    pub token: &'a str,
    /// The eBPF object, for the run-cost benchmark.
    pub ebpf_object: Option<&'a Path>,
}

const INIT: &str = include_str!("init.sh");

/// Builds the tree in `stage` (emptied first) and packs it into `archive`.
pub fn build(files: &GuestFiles<'_>, stage: &Path, archive: &Path) -> anyhow::Result<()> {
    if stage.exists() {
        fs::remove_dir_all(stage).with_context(|| format!("cannot empty {}", stage.display()))?;
    }
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "lib/modules",
        "lib/tally",
        "etc/tally-vm",
    ] {
        fs::create_dir_all(stage.join(dir)).with_context(|| format!("cannot create {dir}"))?;
    }
    put(stage, "init", INIT.as_bytes(), 0o755)?;
    for (from, to) in [
        (files.busybox, "bin/busybox"),
        (files.agent, "bin/tally-agent"),
        (files.guest, "bin/tally-vm-guest"),
    ] {
        let bytes = fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        put(stage, to, &bytes, 0o755)?;
    }
    if let Some(object) = files.ebpf_object {
        let bytes =
            fs::read(object).with_context(|| format!("cannot read {}", object.display()))?;
        // The path the guest's benchmark loads it from.
        put(stage, "lib/tally/tally.bpf.o", &bytes, 0o644)?;
    }
    let mut order = String::new();
    for module in files.modules {
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .context("a module's file name")?;
        if !name.ends_with(".ko") {
            bail!("{name}: compressed modules are not supported (busybox insmod loads .ko only)");
        }
        let from = files.modules_dir.join(module);
        let bytes = fs::read(&from).with_context(|| format!("cannot read {}", from.display()))?;
        put(stage, &format!("lib/modules/{name}"), &bytes, 0o644)?;
        order.push_str(name);
        order.push('\n');
    }
    put(stage, "etc/tally-vm/modules", order.as_bytes(), 0o644)?;
    let config = serde_json::to_vec_pretty(files.config).context("the guest's settings")?;
    put(stage, "etc/tally-vm/config.json", &config, 0o644)?;
    put(stage, "etc/tally-vm/token", files.token.as_bytes(), 0o600)?;
    pack(stage, archive)
}

fn put(stage: &Path, path: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let to = stage.join(path);
    fs::write(&to, bytes).with_context(|| format!("cannot write {}", to.display()))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", to.display()))
}

/// Every path under `dir`, relative, sorted, directories before their
/// contents.
fn listing(dir: &Path, prefix: &Path, into: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let relative = prefix.join(entry.file_name());
        into.push(relative.clone());
        if entry.file_type().context("an entry's type")?.is_dir() {
            listing(&entry.path(), &relative, into)?;
        }
    }
    Ok(())
}

/// `busybox cpio -o -H newc` over the tree, into `archive`.
fn pack(stage: &Path, archive: &Path) -> anyhow::Result<()> {
    let mut paths = Vec::new();
    listing(stage, Path::new("."), &mut paths)?;
    let list: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    let out = fs::File::create(archive)
        .with_context(|| format!("cannot create {}", archive.display()))?;
    let mut child = Command::new("busybox")
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(stage)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run busybox (Debian's busybox-static) to pack the initramfs")?;
    child
        .stdin
        .take()
        .context("cpio's stdin")?
        .write_all(list.as_bytes())
        .context("writing the file list to cpio")?;
    let done = child.wait_with_output().context("waiting for cpio")?;
    if !done.status.success() {
        bail!(
            "busybox cpio failed ({}): {}",
            done.status,
            String::from_utf8_lossy(&done.stderr)
        );
    }
    Ok(())
}
