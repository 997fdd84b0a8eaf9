//! The kernels of the matrix and how to get them: Debian's cloud kernel
//! packages, fetched with `apt-get download` (the foreign architecture
//! added to dpkg first), unpacked under `target/vm/`, their modules indexed
//! with `depmod`; and busybox-static for the same CPU.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{dist::Target, status_ok};

/// A kernel and CPU the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// The name `--kernel` takes.
    pub name: &'static str,
    pub target: Target,
    /// `apt-cache search --names-only` pattern of its image package (the
    /// newest ABI that matches is taken).
    package_pattern: &'static str,
    /// The attach mode `--attach auto` must pick on it.
    pub attach_mode: &'static str,
}

/// Every kernel `vm-test` knows, in the order it runs them.
pub const KERNELS: [Kernel; 2] = [
    Kernel {
        name: "debian-6.1-amd64",
        target: Target::X86_64,
        package_pattern: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
        attach_mode: "netlink",
    },
    Kernel {
        name: "debian-6.1-arm64",
        target: Target::Aarch64,
        package_pattern: r"^linux-image-6\.1\.0-[0-9]+-cloud-arm64$",
        attach_mode: "netlink",
    },
];

/// What the guest needs of the kernel's modules (dependencies follow).
pub const MODULES: [&str; 10] = [
    "virtio_pci",
    "virtio_net",
    "veth",
    "sch_ingress",
    "cls_bpf",
    "8021q",
    "macvlan",
    "bridge",
    "dummy",
    "wireguard",
];

/// A kernel unpacked: its image, its release name and its modules' tree.
#[derive(Debug)]
pub struct Unpacked {
    pub package: String,
    pub image: PathBuf,
    pub modules_dir: PathBuf,
}

/// The directory `vm-test` caches into.
pub fn cache_dir() -> PathBuf {
    crate::target_dir().join("vm")
}

/// Adds `arch` to dpkg's architectures (and updates apt's lists) when it
/// is neither the native nor a foreign one yet.
fn ensure_dpkg_arch(arch: &str) -> anyhow::Result<()> {
    let output = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("dpkg")
            .args(args)
            .output()
            .context("cannot run dpkg (vm-test fetches Debian's kernels with apt)")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let native = output(&["--print-architecture"])?;
    let foreign = output(&["--print-foreign-architectures"])?;
    if native.trim() == arch || foreign.lines().any(|l| l.trim() == arch) {
        return Ok(());
    }
    eprintln!("vm-test: adding the {arch} architecture to dpkg (for its kernel package)");
    status_ok(Command::new("dpkg").args(["--add-architecture", arch]))?;
    apt_update()
}

fn apt_update() -> anyhow::Result<()> {
    status_ok(Command::new("apt-get").args(["update", "-q"]))
}

/// The newest package whose name matches `pattern` for `arch`, updating
/// apt's lists once if none does.
fn newest_package(pattern: &str, arch: &str) -> anyhow::Result<String> {
    let search = || -> anyhow::Result<Vec<String>> {
        let out = Command::new("apt-cache")
            .args(["search", "--names-only", pattern])
            .output()
            .context("cannot run apt-cache")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_owned)
            .collect())
    };
    let mut found = search()?;
    if found.is_empty() {
        apt_update()?;
        found = search()?;
    }
    found
        .into_iter()
        .max_by_key(|name| abi_number(name))
        .with_context(|| format!("apt knows no package matching {pattern} for {arch}"))
}

/// The ABI number of `linux-image-6.1.0-<abi>-cloud-<arch>`.
fn abi_number(package: &str) -> u32 {
    package
        .split('-')
        .nth(3)
        .and_then(|abi| abi.parse().ok())
        .unwrap_or(0)
}

/// `apt-get download <package>:<arch>` into the cache (once) and unpacked
/// into `into` (once); the unpacked tree.
fn fetch_unpacked(package: &str, arch: &str, into: &Path) -> anyhow::Result<PathBuf> {
    let debs = cache_dir().join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    let find = || -> anyhow::Result<Option<PathBuf>> {
        let prefix = format!("{package}_");
        let suffix = format!("_{arch}.deb");
        for entry in fs::read_dir(&debs).context("listing the cached packages")? {
            let name = entry.context("a cached package")?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(&suffix) {
                return Ok(Some(debs.join(name.as_ref())));
            }
        }
        Ok(None)
    };
    let deb = match find()? {
        Some(deb) => deb,
        None => {
            eprintln!("vm-test: apt-get download {package}:{arch}");
            status_ok(Command::new("apt-get").current_dir(&debs).args([
                "download",
                "-q",
                &format!("{package}:{arch}"),
            ]))
            .with_context(|| format!("cannot fetch {package}:{arch}"))?;
            find()?.with_context(|| {
                format!("apt-get left no {package} package in {}", debs.display())
            })?
        }
    };
    let done = into.join(".unpacked");
    if !done.exists() {
        if into.exists() {
            fs::remove_dir_all(into).with_context(|| format!("cannot empty {}", into.display()))?;
        }
        fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
        status_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(into))?;
        fs::write(&done, deb.to_string_lossy().as_bytes()).context("marking the unpacked tree")?;
    }
    Ok(into.to_path_buf())
}

impl Kernel {
    pub fn by_name(name: &str) -> Option<Self> {
        KERNELS.into_iter().find(|k| k.name == name)
    }

    /// Fetches and unpacks the kernel, and indexes its modules.
    pub fn fetch(&self) -> anyhow::Result<Unpacked> {
        let arch = self.target.deb_arch();
        ensure_dpkg_arch(arch)?;
        let package = newest_package(self.package_pattern, arch)?;
        let root = fetch_unpacked(&package, arch, &cache_dir().join(self.name).join("kernel"))?;
        let release = package
            .strip_prefix("linux-image-")
            .context("an image package's name")?;
        let image = root.join("boot").join(format!("vmlinuz-{release}"));
        let modules_dir = root.join("lib/modules").join(release);
        if !modules_dir.join("modules.dep").exists() {
            // The package leaves the index to its postinst.
            status_ok(Command::new("depmod").arg("-b").arg(&root).arg(release))
                .context("indexing the kernel's modules (depmod, Debian's kmod)")?;
        }
        Ok(Unpacked {
            package,
            image,
            modules_dir,
        })
    }

    /// busybox-static for this kernel's CPU: the binary.
    pub fn busybox(&self) -> anyhow::Result<PathBuf> {
        let arch = self.target.deb_arch();
        let root = fetch_unpacked(
            "busybox-static",
            arch,
            &cache_dir().join(format!("busybox-{arch}")),
        )?;
        Ok(root.join("bin/busybox"))
    }
}

/// The module files to load for `wanted`, each after those it depends on
/// (paths relative to `modules_dir`), from `modules.dep`; built-in modules
/// (`modules.builtin`) need none.
pub fn modules_in_order(modules_dir: &Path, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let read = |name: &str| {
        let path = modules_dir.join(name);
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let deps = parse_modules_dep(&read("modules.dep")?);
    let builtin = read("modules.builtin")?;
    let mut order = Vec::new();
    for name in wanted {
        let Some(path) = deps.keys().find(|p| module_name(p) == *name).cloned() else {
            if builtin.lines().any(|p| module_name(p) == *name) {
                continue;
            }
            bail!("the kernel has no module {name}");
        };
        visit(&path, &deps, &mut order)?;
    }
    Ok(order.into_iter().map(PathBuf::from).collect())
}

/// `path: dep dep ...` per line.
fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((
                module.trim().to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect()
}

/// The module's name in a path (`kernel/net/8021q/8021q.ko` -> `8021q`).
fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split_once(".ko").map_or(file, |(name, _)| name)
}

fn visit(
    path: &str,
    deps: &BTreeMap<String, Vec<String>>,
    order: &mut Vec<String>,
) -> anyhow::Result<()> {
    if order.iter().any(|p| p == path) {
        return Ok(());
    }
    let needs = deps
        .get(path)
        .with_context(|| format!("modules.dep does not list {path}"))?;
    for dep in needs {
        visit(dep, deps, order)?;
    }
    order.push(path.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_once() {
        let dep = "kernel/net/8021q/8021q.ko: kernel/net/802/garp.ko kernel/net/llc/llc.ko\n\
                   kernel/net/802/garp.ko: kernel/net/llc/llc.ko\n\
                   kernel/net/llc/llc.ko:\n\
                   kernel/drivers/net/veth.ko:\n";
        let deps = parse_modules_dep(dep);
        let mut order = Vec::new();
        visit("kernel/net/8021q/8021q.ko", &deps, &mut order).expect("known");
        visit("kernel/drivers/net/veth.ko", &deps, &mut order).expect("known");
        assert_eq!(
            order,
            [
                "kernel/net/llc/llc.ko",
                "kernel/net/802/garp.ko",
                "kernel/net/8021q/8021q.ko",
                "kernel/drivers/net/veth.ko"
            ]
        );
        assert_eq!(module_name("kernel/net/8021q/8021q.ko"), "8021q");
        assert_eq!(module_name("kernel/x/virtio_net.ko.xz"), "virtio_net");
    }

    #[test]
    fn the_newest_abi_wins() {
        assert_eq!(abi_number("linux-image-6.1.0-57-cloud-amd64"), 57);
        assert_eq!(abi_number("linux-image-6.1.0-9-cloud-arm64"), 9);
    }
}
