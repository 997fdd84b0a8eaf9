//! Booting a kernel and initramfs under QEMU with the serial console on
//! stdout: KVM when it works (same CPU as the host, `/dev/kvm` usable, and
//! the guest's first line within a few seconds), TCG otherwise; each
//! console line is handed over as it comes, with deadlines.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::dist::Target;

/// How the CPU is emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The guest's network: QEMU's user network with `restrict=on` (the guest
/// reaches nothing but these forwards, so nothing leaves the host): the
/// host's loopback ports `tcp` and `udp` forward to the guest's
/// [`GUEST_TCP_PORT`] and [`GUEST_UDP_PORT`] (the traffic of
/// `nic-offloads`), and the guest's connections to
/// [`GUEST_COLLECTOR`] reach the collector on the host's loopback port
/// `collector`, each through a `busybox nc` that QEMU starts.
#[derive(Debug, Clone, Copy)]
pub struct Forwards {
    pub tcp: u16,
    pub udp: u16,
    pub collector: Option<u16>,
}

/// The guest ports of `vm-guest`'s `nic-offloads`.
pub const GUEST_TCP_PORT: u16 = 5201;
pub const GUEST_UDP_PORT: u16 = 5202;
/// Where the guest finds the collector (an address of QEMU's user network
/// that only the guest forward answers).
pub const GUEST_COLLECTOR: &str = "10.0.2.100:50051";

impl Forwards {
    fn nic(&self) -> String {
        let mut nic = format!(
            "user,model=virtio-net-pci,restrict=on,\
             hostfwd=tcp:127.0.0.1:{}-10.0.2.15:{GUEST_TCP_PORT},\
             hostfwd=udp:127.0.0.1:{}-10.0.2.15:{GUEST_UDP_PORT}",
            self.tcp, self.udp
        );
        if let Some(port) = self.collector {
            nic.push_str(&format!(
                ",guestfwd=tcp:{GUEST_COLLECTOR}-cmd:busybox nc 127.0.0.1 {port}"
            ));
        }
        nic
    }
}

/// The QEMU program and arguments for a guest of `target`.
fn command(
    target: Target,
    accel: Accel,
    kernel: &Path,
    initramfs: &Path,
    forwards: &Forwards,
) -> Command {
    let (program, machine, console): (&str, &[&str], &str) = match target {
        Target::X86_64 => ("qemu-system-x86_64", &[], "ttyS0"),
        // pauth-impdef: QEMU's own pointer-authentication algorithm, much
        // cheaper to emulate than the architected one.
        Target::Aarch64 => (
            "qemu-system-aarch64",
            &["-machine", "virt", "-cpu", "max,pauth-impdef=on"],
            "ttyAMA0",
        ),
    };
    let mut cmd = Command::new(program);
    cmd.args(["-accel", accel.name()])
        .args(machine)
        .args(["-m", "1024", "-smp", "2"])
        .args([
            "-display",
            "none",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .args(["-nic", &forwards.nic()])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &format!("console={console} panic=-1 quiet")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Whether to try KVM for `target`: same CPU as the host and /dev/kvm
/// there, unless TALLY_VM_ACCEL says `tcg` (or `kvm`: no fallback).
pub fn accels(target: Target) -> anyhow::Result<Vec<Accel>> {
    match std::env::var("TALLY_VM_ACCEL").as_deref() {
        Ok("tcg") => return Ok(vec![Accel::Tcg]),
        Ok("kvm") => return Ok(vec![Accel::Kvm]),
        Ok("" | "auto") | Err(_) => {}
        Ok(other) => bail!("TALLY_VM_ACCEL={other}: expected auto, kvm or tcg"),
    }
    let native = (target == Target::X86_64 && cfg!(target_arch = "x86_64"))
        || (target == Target::Aarch64 && cfg!(target_arch = "aarch64"));
    if native && Path::new("/dev/kvm").exists() {
        Ok(vec![Accel::Kvm, Accel::Tcg])
    } else {
        Ok(vec![Accel::Tcg])
    }
}

/// A running VM and its console.
pub struct Vm {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub accel: Accel,
}

/// How long the first console line may take: under KVM (where a hang
/// shows here, before TCG is tried) and under TCG (3.5 s measured).
fn first_line_within(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(10),
        Accel::Tcg => Duration::from_secs(60),
    }
}

impl Vm {
    /// Boots with the first accelerator in `accels` that brings up the
    /// guest (its first `tally-vm: ` line in time); the boot's first
    /// line is returned with it.
    pub fn boot(
        target: Target,
        accels: &[Accel],
        kernel: &Path,
        initramfs: &Path,
        forwards: &Forwards,
    ) -> anyhow::Result<(Self, String)> {
        let mut why = Vec::new();
        // Under TCG a boot once hung before the guest's first line (on a
        // fresh clone in CI; the same run again booted in 4 s): one more
        // TCG attempt, said in the log with what the console showed.
        let attempts = accels
            .iter()
            .copied()
            .chain(accels.last().copied().filter(|a| *a == Accel::Tcg));
        for accel in attempts {
            let mut vm = Self::start(target, accel, kernel, initramfs, forwards)?;
            let mut console = Vec::new();
            let deadline = Instant::now() + first_line_within(accel);
            match vm.next_line_with("tally-vm: ", deadline, &mut console) {
                Ok(Some(line)) => return Ok((vm, line)),
                Ok(None) => why.push(format!(
                    "{}: QEMU exited before the guest's first line{}",
                    accel.name(),
                    vm.stderr_tail()
                )),
                Err(error) => why.push(format!("{}: {error:#}", accel.name())),
            }
            vm.kill();
            let tail = console[console.len().saturating_sub(10)..].join("\n  | ");
            eprintln!(
                "vm-test: {} did not boot the guest ({}); its console's last lines:\n  | {tail}",
                accel.name(),
                why.last().map_or("", String::as_str)
            );
        }
        bail!("the VM did not boot: {}", why.join("; "))
    }

    fn start(
        target: Target,
        accel: Accel,
        kernel: &Path,
        initramfs: &Path,
        forwards: &Forwards,
    ) -> anyhow::Result<Self> {
        let mut cmd = command(target, accel, kernel, initramfs, forwards);
        let mut child = cmd.spawn().with_context(|| {
            format!("cannot start {cmd:?} (Debian's qemu-system-x86 / qemu-system-arm)")
        })?;
        let stdout = child.stdout.take().context("QEMU's stdout")?;
        let (send, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line).replace('\r', "");
                if send.send(text).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            lines,
            accel,
        })
    }

    /// The next console line (printed as it comes); `None` when QEMU
    /// closed its console; an error at `deadline`.
    pub fn next_line(&mut self, deadline: Instant) -> anyhow::Result<Option<String>> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => Ok(Some(line)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("timed out"),
        }
    }

    /// Skips to the next line holding `marker`, from the marker on; the
    /// lines skipped go to `skipped`.
    fn next_line_with(
        &mut self,
        marker: &str,
        deadline: Instant,
        skipped: &mut Vec<String>,
    ) -> anyhow::Result<Option<String>> {
        while let Some(line) = self.next_line(deadline)? {
            if let Some(at) = line.find(marker) {
                return Ok(Some(line[at..].to_owned()));
            }
            skipped.push(line);
        }
        Ok(None)
    }

    /// What QEMU said on stderr, if it exited.
    pub fn stderr_tail(&mut self) -> String {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            return String::new();
        }
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        }
        if text.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", text.trim())
        }
    }

    /// Waits (until `deadline`) for QEMU to exit after the guest powered
    /// off; kills it otherwise.
    pub fn wait(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for QEMU")? {
                if !status.success() {
                    bail!("QEMU exited with {status}{}", self.stderr_tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("the guest did not power off");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}
