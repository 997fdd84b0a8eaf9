//! Explaining why eBPF cannot be used, and what to do about it.

use std::error::Error as StdError;

use crate::{
    ebpf::engine::EngineError,
    pins::PinDirError,
    system::{Probe, caps},
};

/// The oldest kernel the programs are known to load on (per-CPU hash maps
/// without preallocation, `cls_bpf` direct action).
pub const MIN_KERNEL: (u32, u32) = (5, 4);

/// Why eBPF could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// Neither CAP_BPF nor CAP_SYS_ADMIN: the kernel refuses to load programs.
    NoCapBpf,
    /// No CAP_NET_ADMIN: the kernel refuses to attach to the TC hooks.
    NoCapNetAdmin,
    /// A kernel older than [`MIN_KERNEL`].
    KernelTooOld((u32, u32)),
    /// The pin directory is not on a bpf filesystem (and none could be mounted).
    NoBpffs,
    /// The kernel has no BTF and the load failed over it.
    NoBtf,
}

impl Cause {
    fn describe(&self) -> String {
        match self {
            Cause::NoCapBpf => "the agent lacks CAP_BPF (and CAP_SYS_ADMIN), so the kernel refuses to load eBPF programs".into(),
            Cause::NoCapNetAdmin => "the agent lacks CAP_NET_ADMIN, so the kernel refuses to attach to the TC hooks".into(),
            Cause::KernelTooOld((major, minor)) => format!(
                "kernel {major}.{minor} is too old (tally needs {}.{} or newer; TCX needs 6.6, older kernels use the clsact qdisc)",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
            Cause::NoBpffs => "no bpf filesystem is mounted where the counters are pinned".into(),
            Cause::NoBtf => "the kernel has no BTF (/sys/kernel/btf/vmlinux is missing)".into(),
        }
    }

    fn remedy(&self) -> &'static str {
        match self {
            Cause::NoCapBpf | Cause::NoCapNetAdmin => {
                "run it as root, or grant CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN on kernels before 5.8), as the shipped systemd unit does"
            }
            Cause::KernelTooOld(_) => "upgrade the kernel",
            Cause::NoBpffs => {
                "mount it with `mount -t bpf bpf /sys/fs/bpf`, or choose a --pin-dir on a bpffs mount"
            }
            Cause::NoBtf => "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        }
    }
}

/// The OS error number somewhere in an error's chain, if any.
pub fn errno(err: &(dyn StdError + 'static)) -> Option<i32> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        current = e.source();
    }
    None
}

/// The likely causes of `err` on a machine described by `probe`.
pub fn causes(err: &EngineError, probe: &Probe) -> Vec<Cause> {
    let mut out = Vec::new();
    if matches!(
        err,
        EngineError::PinDir(PinDirError::NotBpffs { .. } | PinDirError::Mount { .. })
    ) {
        out.push(Cause::NoBpffs);
    }
    if let Some(kernel) = probe.kernel
        && kernel < MIN_KERNEL
    {
        out.push(Cause::KernelTooOld(kernel));
    }
    let denied = matches!(errno(err), Some(libc::EPERM | libc::EACCES));
    let pin_denied = matches!(
        err,
        EngineError::PinDir(PinDirError::Mount { .. } | PinDirError::Create { .. })
    );
    if denied || pin_denied || matches!(err, EngineError::Load(_) | EngineError::LoadProgram { .. })
    {
        if !probe.has_cap(caps::CAP_BPF) && !probe.has_cap(caps::CAP_SYS_ADMIN) {
            out.push(Cause::NoCapBpf);
        }
        if (matches!(err, EngineError::Attach { .. }) || denied)
            && !probe.has_cap(caps::CAP_NET_ADMIN)
        {
            out.push(Cause::NoCapNetAdmin);
        }
    }
    let text = chain_text(err);
    if !probe.btf && text.contains("BTF") {
        out.push(Cause::NoBtf);
    }
    out.dedup();
    out
}

/// The error and its causes as one line each.
pub fn chain_text(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// The message `run` prints when eBPF cannot be used.
pub fn explain(err: &EngineError, probe: &Probe) -> String {
    let mut msg = format!("eBPF cannot be used here: {}", chain_text(err));
    let causes = causes(err, probe);
    for cause in &causes {
        msg.push_str(&format!(
            "\n  - why: {}; fix: {}",
            cause.describe(),
            cause.remedy()
        ));
    }
    if causes.is_empty() {
        msg.push_str("\n  - the cause is not one tally recognises; the kernel's words are above");
    }
    msg.push_str(
        "\nTo count anyway from the kernel's interface statistics (/proc/net/dev: no eBPF, not \
         restart-proof across reboots of the counters' epoch), run with `--source procfs`.",
    );
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn probe(cap_eff: u64, kernel: (u32, u32), btf: bool) -> Probe {
        Probe {
            kernel: Some(kernel),
            cap_eff: Some(cap_eff),
            btf,
        }
    }

    fn eperm_load() -> EngineError {
        EngineError::Io(std::io::Error::from_raw_os_error(libc::EPERM))
    }

    #[test]
    fn missing_capabilities_are_named() {
        let msg = explain(&eperm_load(), &probe(0, (6, 18), true));
        assert!(msg.contains("lacks CAP_BPF"), "{msg}");
        assert!(msg.contains("lacks CAP_NET_ADMIN"), "{msg}");
        assert!(msg.contains("--source procfs"), "{msg}");
    }

    #[test]
    fn root_is_not_blamed_on_capabilities() {
        let all = u64::MAX >> 23;
        let causes = causes(&eperm_load(), &probe(all, (6, 18), true));
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn old_kernels_are_named() {
        let msg = explain(&eperm_load(), &probe(u64::MAX, (4, 19), true));
        assert!(msg.contains("kernel 4.19 is too old"), "{msg}");
    }

    #[test]
    fn missing_bpffs_is_named() {
        let err = EngineError::PinDir(PinDirError::NotBpffs {
            dir: PathBuf::from("/tmp/x"),
        });
        let msg = explain(&err, &probe(u64::MAX, (6, 18), true));
        assert!(msg.contains("no bpf filesystem"), "{msg}");
        assert!(msg.contains("mount -t bpf bpf /sys/fs/bpf"), "{msg}");
    }

    #[test]
    fn errno_is_found_in_the_chain() {
        let err = eperm_load();
        assert_eq!(errno(&err), Some(libc::EPERM));
    }
}
