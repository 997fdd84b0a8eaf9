//! `cargo xtask vm-test`: the agent on the kernels and CPUs users run, in
//! virtual machines. For each kernel of the matrix ([`kernel::KERNELS`]):
//! Debian's kernel package is fetched with apt (cached under
//! `target/vm/`), an initramfs is built with busybox-static for its CPU,
//! the kernel's modules the guest needs, the static `tally-agent` and the
//! guest driver `tally-vm-guest` (vm-guest/, built for that CPU), and the
//! VM boots under QEMU (KVM when it works, TCG otherwise). The guest runs
//! its scenarios (vm-guest/src/scenarios.rs) and reports each on the serial
//! console; its agent reports to a collector on the host (a throwaway
//! PostgreSQL), whose stored totals are checked against what the guest's
//! kernel counted. Any failure, a missing report or a timeout fails the run.
//!
//! `--kernel host` runs the agent's integration tests on this machine's
//! kernel instead (as `cargo xtask test` does).

mod collector;
mod initramfs;
mod kernel;
mod peer;
mod qemu;

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;

use self::{
    collector::HostCollector,
    kernel::{KERNELS, Kernel},
    qemu::Vm,
};
use crate::{
    dist::{self, Target},
    packages::{self, Need},
    status_ok, toolchain, workspace_root,
};

#[derive(Debug, Args)]
pub struct VmTestArgs {
    /// Which kernel to run on: `debian-6.1-amd64`, `debian-6.1-arm64`, or
    /// `host` (the agent's integration tests on this machine's kernel);
    /// repeat for several. Default: both Debian kernels.
    #[arg(
        long = "kernel",
        value_name = "NAME",
        env = "TALLY_VM_KERNELS",
        value_delimiter = ','
    )]
    kernels: Vec<String>,
}

impl VmTestArgs {
    /// Every Debian kernel of the matrix.
    pub fn matrix() -> Self {
        Self {
            kernels: KERNELS.iter().map(|k| k.name.to_owned()).collect(),
        }
    }
}

/// The Debian packages the VMs need on the host.
const NEEDS: &[Need] = &[
    Need {
        package: "qemu-system-x86",
        programs: &["qemu-system-x86_64"],
        files: &[],
        why: "the amd64 virtual machines",
    },
    Need {
        package: "qemu-system-arm",
        programs: &["qemu-system-aarch64"],
        files: &[],
        why: "the arm64 virtual machines",
    },
    Need {
        package: "busybox-static",
        programs: &["busybox"],
        files: &[],
        why: "packing the VMs' initramfs (cpio)",
    },
    Need {
        package: "kmod",
        programs: &["depmod"],
        files: &[],
        why: "indexing the VM kernels' modules",
    },
];

/// How long one VM may take, boot to power-off.
const VM_DEADLINE: Duration = Duration::from_secs(5 * 60);

/// What one VM did.
struct Outcome {
    kernel: Kernel,
    package: String,
    accel: &'static str,
    boot: Duration,
    total: Duration,
    passed: Vec<String>,
    failed: Vec<String>,
    /// The benchmark's pooled ratio and the ratios of its rounds.
    bench: Option<(String, String)>,
}

/// The kernels `names` name, and whether `host` is among them.
fn parse_names(names: &[String]) -> anyhow::Result<(Vec<Kernel>, bool)> {
    let mut kernels = Vec::new();
    let mut host = false;
    for name in names {
        match (name.as_str(), Kernel::by_name(name)) {
            ("host", _) => host = true,
            (_, Some(kernel)) => kernels.push(kernel),
            (other, None) => {
                let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
                bail!(
                    "no kernel named {other}: known are {}, and host",
                    known.join(", ")
                );
            }
        }
    }
    Ok((kernels, host))
}

/// Fetches the kernel and busybox for its CPU; `None` (with the reason
/// printed) when that fails and TALLY_REQUIRE_PRIVILEGED=1 does not make it
/// a failure.
fn fetch(kernel: Kernel) -> anyhow::Result<Option<Fetched>> {
    let required = std::env::var("TALLY_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    match kernel.fetch().and_then(|k| Ok((k, kernel.busybox()?))) {
        Ok((unpacked, busybox)) => Ok(Some(Fetched { unpacked, busybox })),
        Err(error) if !required => {
            eprintln!(
                "SKIP vm-test {}: cannot fetch the kernel or busybox: {error:#}",
                kernel.name
            );
            Ok(None)
        }
        Err(error) => Err(error.context(format!("cannot fetch {}", kernel.name))),
    }
}

/// A kernel and the busybox for its CPU, on disk.
struct Fetched {
    unpacked: kernel::Unpacked,
    busybox: PathBuf,
}

/// What a VM is booted for.
enum Job<'a> {
    /// The scenarios, reporting to this collector.
    Scenarios(&'a HostCollector),
    /// The run-cost benchmark with this eBPF object.
    Bench(&'a Path),
}

pub fn run(args: &VmTestArgs) -> anyhow::Result<()> {
    let names = if args.kernels.is_empty() {
        VmTestArgs::matrix().kernels
    } else {
        args.kernels.clone()
    };
    let (kernels, host) = parse_names(&names)?;
    if host {
        run_host()?;
    }
    if kernels.is_empty() {
        return Ok(());
    }
    packages::ensure(NEEDS)?;

    let host_target = if cfg!(target_arch = "aarch64") {
        Target::Aarch64
    } else {
        Target::X86_64
    };
    let host_bins = dist::build_static(host_target, &dist::BINARIES)?;
    let run_dir = kernel::cache_dir().join("run");
    fs::create_dir_all(&run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    // PostgreSQL runs as `postgres` and must reach its directory in here.
    fs::set_permissions(&run_dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod {}", run_dir.display()))?;
    let collector = HostCollector::start(&host_bins, &run_dir)?;

    let mut outcomes = Vec::new();
    for kernel in kernels {
        eprintln!("vm-test: {}", kernel.name);
        let Some(fetched) = fetch(kernel)? else {
            continue;
        };
        let outcome = run_kernel(kernel, &fetched, &Job::Scenarios(&collector))
            .with_context(|| format!("vm-test {}", kernel.name))?;
        outcomes.push(outcome);
    }
    report(&outcomes)
}

/// `cargo xtask bench ebpf --kernel NAME` for the Debian kernels among
/// `names` (`host` is the caller's): the run-cost ratios measured in a VM.
pub fn bench(names: &[String], object: &Path) -> anyhow::Result<()> {
    let (kernels, _) = parse_names(names)?;
    if kernels.is_empty() {
        return Ok(());
    }
    packages::ensure(NEEDS)?;
    let mut outcomes = Vec::new();
    for kernel in kernels {
        eprintln!("bench: run cost in a VM, {}", kernel.name);
        let Some(fetched) = fetch(kernel)? else {
            continue;
        };
        let outcome = run_kernel(kernel, &fetched, &Job::Bench(object))
            .with_context(|| format!("bench in {}", kernel.name))?;
        outcomes.push(outcome);
    }
    println!(
        "run cost of tally's programs against the empty one (time per run, ratio; in a VM only the ratio means something):"
    );
    println!(
        "  {:<18} {:<5} {:>8}  rounds (empty first, ours first, ...)",
        "kernel", "accel", "pooled"
    );
    for o in &outcomes {
        let (pooled, rounds) = o
            .bench
            .as_ref()
            .map_or(("-", "-"), |(p, r)| (p.as_str(), r.as_str()));
        println!(
            "  {:<18} {:<5} {:>8}  {rounds}",
            o.kernel.name, o.accel, pooled
        );
    }
    report(&outcomes)
}

fn run_kernel(kernel: Kernel, fetched: &Fetched, job: &Job<'_>) -> anyhow::Result<Outcome> {
    let Fetched { unpacked, busybox } = fetched;
    let modules = kernel::modules_in_order(&unpacked.modules_dir, &kernel::MODULES)?;
    let bin_dir = dist::build_static(kernel.target, &["tally-agent"])?;
    let guest_dir = dist::build_static(kernel.target, &["tally-vm-guest"])?;

    let node = format!("vm-{}", kernel.name);
    let (config, token, object) = match job {
        Job::Scenarios(collector) => (
            serde_json::json!({
                "attach_mode": kernel.attach_mode,
                "collector": collector.url_for_guests(),
                "token_file": "/etc/tally-vm/token",
            }),
            collector.add_node(&node)?,
            None,
        ),
        Job::Bench(object) => (
            serde_json::json!({
                "bench": true,
                "attach_mode": kernel.attach_mode,
                "collector": "",
                "token_file": "",
            }),
            String::new(),
            Some(*object),
        ),
    };
    let dir = kernel::cache_dir().join(kernel.name);
    let archive = dir.join("initramfs.cpio");
    initramfs::build(
        &initramfs::GuestFiles {
            busybox,
            agent: &bin_dir.join("tally-agent"),
            guest: &guest_dir.join("tally-vm-guest"),
            modules_dir: &unpacked.modules_dir,
            modules: &modules,
            config: &config,
            token: &token,
            ebpf_object: object,
        },
        &dir.join("initramfs"),
        &archive,
    )?;

    let forwards = qemu::Forwards {
        tcp: crate::demo::free_port(Ipv4Addr::LOCALHOST)?.port(),
        udp: free_udp_port()?,
        collector: match job {
            Job::Scenarios(collector) => Some(collector.grpc_port()),
            Job::Bench(_) => None,
        },
    };
    let mut peers = Vec::new();
    let started = Instant::now();
    let (mut vm, first) = Vm::boot(
        kernel.target,
        &qemu::accels(kernel.target)?,
        &unpacked.image,
        &archive,
        &forwards,
    )?;
    let boot = started.elapsed();
    let mut outcome = Outcome {
        kernel,
        package: unpacked.package.clone(),
        accel: vm.accel.name(),
        boot,
        total: Duration::ZERO,
        passed: Vec::new(),
        failed: Vec::new(),
        bench: None,
    };
    eprintln!("  [{}] {first}", kernel.name);
    let deadline = started + VM_DEADLINE;
    let mut done = false;
    while let Some(line) = vm
        .next_line(deadline)
        .with_context(|| format!("the guest did not finish within {VM_DEADLINE:?}"))?
    {
        eprintln!("  [{}] {line}", kernel.name);
        let Some(at) = line.find("tally-vm: ") else {
            continue;
        };
        let message = &line[at + "tally-vm: ".len()..];
        let mut words = message.split_whitespace();
        match (words.next(), words.next()) {
            (Some("pass"), Some(name)) => outcome.passed.push(name.to_owned()),
            (Some("FAIL"), Some(name)) => outcome.failed.push(name.to_owned()),
            (Some("bench"), Some("run-cost")) => {
                let pooled = words.next().unwrap_or_default().to_owned();
                let rounds = words.next().unwrap_or_default().to_owned();
                outcome.bench = Some((pooled, rounds));
            }
            (Some("e2e"), Some(rx)) => {
                let Job::Scenarios(collector) = job else {
                    continue;
                };
                let check = e2e(collector, &node, rx, words.next());
                match check {
                    Ok(()) => outcome.passed.push("collector-totals".to_owned()),
                    Err(error) => {
                        eprintln!("  [{}] host: {error:#}", kernel.name);
                        outcome.failed.push("collector-totals".to_owned());
                    }
                }
            }
            (Some("peer"), Some(kind)) => {
                peers.push(peer::start(forwards, std::iter::once(kind).chain(words)));
            }
            (Some("done"), _) => {
                done = true;
                break;
            }
            _ => {}
        }
    }
    for peer in peers {
        let result = peer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the host's peer thread panicked")));
        if let Err(error) = result {
            eprintln!("  [{}] host peer: {error:#}", kernel.name);
            outcome.failed.push("host-peer".to_owned());
        }
    }
    if !done {
        outcome
            .failed
            .push("the guest stopped before reporting all scenarios".to_owned());
    }
    vm.wait(Instant::now() + Duration::from_secs(30))?;
    outcome.total = started.elapsed();
    Ok(outcome)
}

/// A UDP port on the host's loopback that is free now.
fn free_udp_port() -> anyhow::Result<u16> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("a free UDP port")?;
    Ok(socket.local_addr().context("its address")?.port())
}

/// The host's half of the end-to-end check: the collector stored exactly
/// what the guest's kernel counted (download = rx, upload = tx).
fn e2e(collector: &HostCollector, node: &str, rx: &str, tx: Option<&str>) -> anyhow::Result<()> {
    let parse = |text: Option<&str>| -> anyhow::Result<u64> {
        text.and_then(|t| t.parse().ok())
            .with_context(|| format!("not a byte count: {text:?}"))
    };
    collector.expect_totals(node, parse(Some(rx))?, parse(tx)?)
}

fn report(outcomes: &[Outcome]) -> anyhow::Result<()> {
    eprintln!("vm-test:");
    eprintln!(
        "  {:<18} {:<34} {:<5} {:>7} {:>7} {:>6} {:>6}",
        "kernel", "package", "accel", "boot", "total", "passed", "failed"
    );
    for o in outcomes {
        eprintln!(
            "  {:<18} {:<34} {:<5} {:>6.1}s {:>6.1}s {:>6} {:>6}",
            o.kernel.name,
            o.package,
            o.accel,
            o.boot.as_secs_f64(),
            o.total.as_secs_f64(),
            o.passed.len(),
            o.failed.len()
        );
    }
    let failed: Vec<String> = outcomes
        .iter()
        .flat_map(|o| o.failed.iter().map(|f| format!("{}: {f}", o.kernel.name)))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("failed in the VMs: {}", failed.join(", "))
    }
}

/// `--kernel host`: the agent's integration tests on this machine.
fn run_host() -> anyhow::Result<()> {
    crate::setup()?;
    status_ok(
        Command::new("cargo")
            .current_dir(workspace_root())
            .env("PATH", toolchain::path_with_cargo_bin()?)
            .args(["test", "-p", "tally-agent", "--test", "it"]),
    )
}
