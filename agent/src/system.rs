//! Facts about the host that travel with the counters: the kernel's boot id,
//! the load average, and what the kernel offers for eBPF.

use std::{fs, path::Path};

use procfs::Current as _;
use serde::Serialize;

/// The load average from `/proc/loadavg`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoadAvg {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// Reads `/proc/loadavg`.
pub fn load_average() -> Result<LoadAvg, procfs::ProcError> {
    let load = procfs::LoadAverage::current()?;
    Ok(LoadAvg {
        one: load.one.into(),
        five: load.five.into(),
        fifteen: load.fifteen.into(),
    })
}

/// The environment variable naming a file to read the boot id from instead
/// of the kernel's. **For tests only**: it lets a test play a reboot (a new
/// boot id) without one. An agent in production must never have it set, or
/// the collector would take a restart for a reboot or miss one.
pub const BOOT_ID_FILE_ENV: &str = "TALLY_BOOT_ID_FILE";

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): a new value on
/// every boot. Read from the file [`BOOT_ID_FILE_ENV`] names when it is set
/// (tests only).
pub fn boot_id() -> Result<String, procfs::ProcError> {
    match std::env::var_os(BOOT_ID_FILE_ENV) {
        Some(path) if !path.is_empty() => boot_id_from(Path::new(&path)),
        _ => Ok(procfs::sys::kernel::random::boot_id()?.trim().to_owned()),
    }
}

/// The boot id in `path` (surrounding white space ignored; empty is an error).
fn boot_id_from(path: &Path) -> Result<String, procfs::ProcError> {
    match fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
        Ok(_) => Err(procfs::ProcError::Other(format!(
            "{} ({BOOT_ID_FILE_ENV}) is empty",
            path.display()
        ))),
        Err(error) => Err(procfs::ProcError::Io(error, Some(path.to_owned()))),
    }
}

/// Linux capability numbers the agent cares about.
pub mod caps {
    pub const CAP_NET_ADMIN: u32 = 12;
    pub const CAP_SYS_ADMIN: u32 = 21;
    pub const CAP_BPF: u32 = 39;
}

/// What the kernel and this process offer for loading and attaching the
/// programs; gathered to explain a failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Probe {
    /// `(major, minor)` of the running kernel, if readable.
    pub kernel: Option<(u32, u32)>,
    /// The effective capability set (`CapEff` of `/proc/self/status`).
    pub cap_eff: Option<u64>,
    /// Whether `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
}

impl Probe {
    /// Reads the probe from this machine.
    pub fn current() -> Self {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .and_then(|release| parse_kernel_release(&release));
        let cap_eff = fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| parse_cap_eff(&status));
        let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
        Self {
            kernel,
            cap_eff,
            btf,
        }
    }

    /// Whether the effective set holds capability `cap` (unknown counts as yes).
    pub fn has_cap(&self, cap: u32) -> bool {
        self.cap_eff.is_none_or(|set| set & (1u64 << cap) != 0)
    }

    /// Whether the kernel has TCX (6.6 and later).
    pub fn has_tcx(&self) -> bool {
        self.kernel.is_some_and(|version| version >= (6, 6))
    }
}

/// `"6.18.44-fc-v782"` → `(6, 18)`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The `CapEff:` line of `/proc/self/status`.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_is_parsed() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v782\n"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.4.0"), Some((5, 4)));
        assert_eq!(parse_kernel_release("garbage"), None);
    }

    #[test]
    fn cap_eff_is_parsed() {
        let status = "Name:\ttally-agent\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(status).expect("present");
        let probe = Probe {
            cap_eff: Some(caps),
            ..Default::default()
        };
        assert!(probe.has_cap(caps::CAP_BPF));
        let none = Probe {
            cap_eff: Some(0),
            ..Default::default()
        };
        assert!(!none.has_cap(caps::CAP_NET_ADMIN));
    }

    #[test]
    fn tcx_needs_6_6() {
        let probe = |kernel| Probe {
            kernel: Some(kernel),
            ..Default::default()
        };
        assert!(probe((6, 6)).has_tcx());
        assert!(probe((7, 0)).has_tcx());
        assert!(!probe((6, 5)).has_tcx());
        assert!(!Probe::default().has_tcx());
    }

    #[test]
    fn a_boot_id_file_is_read_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("boot_id");
        fs::write(&path, "6a1c0c0e-0000-4000-8000-000000000001\n").expect("write");
        assert_eq!(
            boot_id_from(&path).expect("read"),
            "6a1c0c0e-0000-4000-8000-000000000001"
        );
        fs::write(&path, " \n").expect("write");
        let empty = boot_id_from(&path).expect_err("empty");
        assert!(empty.to_string().contains("is empty"), "{empty}");
        let missing = boot_id_from(&dir.path().join("missing")).expect_err("missing");
        assert!(matches!(missing, procfs::ProcError::Io(..)), "{missing:?}");
    }

    #[test]
    fn reads_this_machine() {
        let load = load_average().expect("/proc/loadavg");
        assert!(load.one >= 0.0 && load.five >= 0.0 && load.fifteen >= 0.0);
        let id = boot_id().expect("boot id");
        assert_eq!(id.len(), 36, "{id}");
    }
}
