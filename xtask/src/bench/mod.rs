//! `cargo xtask bench ebpf`: what tally's TC programs cost the packets they
//! see.
//!
//! The benchmark builds the eBPF object, makes two network namespaces (A and
//! B) joined by a veth pair, and sends 64-byte UDP datagrams from B to A:
//!
//! - run cost: the kernel's own accounting (`kernel.bpf_stats_enabled`) of
//!   the average run time of `tally_ingress` (on A's veth) and `tally_egress`
//!   (on B's veth), against the empty classifier `tally_noop` attached at the
//!   same time on the same hooks (all TCX; the programs return `TCX_NEXT`, so
//!   every datagram passes both), which position goes first alternating;
//! - GRO case: the same comparison on large TCP transfers whose packets
//!   stand for several frames (GRO on at A, segmentation after the egress
//!   hook at B): time per run, per frame and per KiB counted;
//! - throughput: datagrams per second that reach the receiving socket with
//!   nothing attached, with the empty program and with tally's programs on
//!   both hooks of both veths, in short alternating phases (the median of the
//!   rounds whose phases without anything agree sheds the machine's noise).
//!
//! Figures are printed, never asserted. Everything the benchmark makes is
//! undone when it ends, also on error or Ctrl-C: the programs, maps and links
//! only live in this process's file descriptors (nothing is pinned), and
//! guards delete the namespaces (with their veth) and restore the sysctl.
//!
//! Layout: this file holds the entry point, the top-level flow and the
//! figures shared by the parts; [`net`] the namespaces and the veth pair,
//! [`sysctl`] the sysctl guard, [`programs`] loading, attaching and the run
//! statistics of the programs, [`traffic`] the UDP sockets and the sending
//! and receiving threads, [`rounds`] the run-cost rounds and throughput
//! phases, [`mod@report`] the tables and verdicts, [`gro`] the GRO case
//! (large TCP transfers in packets of several frames).
//!
//! `cargo xtask bench ingest` is a benchmark of its own, in [`ingest`].

mod gro;
pub(crate) mod ingest;
mod net;
mod programs;
mod report;
mod rounds;
mod sysctl;
mod traffic;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::ensure;

use self::{
    net::TestNet,
    programs::Programs,
    report::report,
    rounds::{run_cost, throughput},
    sysctl::Sysctl,
    traffic::Traffic,
};

/// UDP payload of every datagram.
const PAYLOAD: usize = 64;
/// Datagrams per run-cost phase.
const COST_PACKETS: u64 = 200_000;
/// Run-cost rounds (the empty program first in even ones, ours in odd ones).
const COST_ROUNDS: usize = 4;
/// Length of a throughput phase.
const THROUGHPUT_PHASE: Duration = Duration::from_secs(1);
/// Throughput rounds (each one phase without anything, one with the empty
/// program, one with ours; one more phase without closes the series).
const THROUGHPUT_ROUNDS: usize = 12;

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

#[derive(Debug, clap::Args)]
pub struct EbpfArgs {
    /// Where to measure: `host` (this machine, the default) or a kernel of
    /// `cargo xtask vm-test` (`debian-6.1-amd64`, `debian-6.1-arm64`: the
    /// run cost only, inside the VM); repeat for several.
    #[arg(long = "kernel", value_name = "NAME", value_delimiter = ',')]
    kernels: Vec<String>,
}

/// Runs the benchmark where `args` says and prints its tables.
pub fn ebpf(args: &EbpfArgs) -> anyhow::Result<()> {
    let object = build_object()?;
    // The object is the same for every CPU: the programs use nothing that
    // depends on the architecture (no `bpf_target_arch`).
    if args.kernels.is_empty() || args.kernels.iter().any(|k| k == "host") {
        on_host(&object)?;
    }
    crate::vm::bench(&args.kernels, &object)
}

/// The benchmark on this machine's kernel.
fn on_host(object: &Path) -> anyhow::Result<()> {
    catch_interrupts();
    let mut net = TestNet::create()?;
    let result = measure(object, &net);
    // Undo everything before reporting, and say so if any of it failed.
    let deleted = net.delete();
    let leftovers = tally_testkit::netns::namespaces_named(&net.prefix);
    let report = result?;
    deleted?;
    let leftovers = leftovers?;
    ensure!(
        leftovers.is_empty(),
        "namespaces left behind: {}",
        leftovers.join(", ")
    );
    print!("{report}");
    println!(
        "cleanup: namespaces {} and {} deleted (`ip netns list` has none of them), \
         programs, maps and links closed (nothing was pinned)",
        net.a.ns.name, net.b.ns.name
    );
    Ok(())
}

/// Set by SIGINT or SIGTERM: the benchmark stops at the next check and
/// cleans up as after an error.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_interrupts() {
    let handler: extern "C" fn(libc::c_int) = on_interrupt;
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    ensure!(
        !INTERRUPTED.load(Ordering::Relaxed),
        "interrupted; cleaning up"
    );
    Ok(())
}

/// `cargo xtask build-ebpf`, then the path of the object it made.
fn build_object() -> anyhow::Result<PathBuf> {
    crate::setup()?;
    crate::status_ok(&mut crate::ebpf_cargo("build")?)?;
    let object = crate::workspace_root().join("target/bpfel-unknown-none/release/tally");
    ensure!(
        object.is_file(),
        "the eBPF build did not produce {}",
        object.display()
    );
    eprintln!("bench: using {}", object.display());
    Ok(object)
}

/// Attaches, sends and reads the figures; the report as text.
fn measure(object: &Path, net: &TestNet) -> anyhow::Result<String> {
    let load_before = load_average();
    let mut progs = Programs::load(object)?;
    for side in [&net.a, &net.b] {
        progs.create_counters(side.ifindex)?;
    }
    let traffic = Traffic::open(net)?;
    // Resolve ARP and wake the path up before anything is measured.
    traffic.exchange(u64::MAX, Duration::from_millis(500))?;

    // Run-time statistics cost every program run two clock reads: on for
    // the run-cost rounds only, not for the throughput.
    let mut stats = Sysctl::set(BPF_STATS_SYSCTL, "1")?;
    let cost = run_cost(&mut progs, net, &traffic)?;
    stats.restore()?;
    let throughput = throughput(&mut progs, net, &traffic)?;
    // Last: it turns GRO on and segmentation offload off on the pair.
    let mut gro_stats = Sysctl::set(BPF_STATS_SYSCTL, "1")?;
    let gro = gro::gro_cost(&mut progs, net)?;
    gro_stats.restore()?;
    let mut text = report(&cost, &stats, &throughput);
    text.push_str(&gro::gro_report(&gro));
    let _ = writeln!(
        text,
        "load average (1 min) before/after: {load_before} / {}; other work on the machine \
         shows up as noisy rounds",
        load_average()
    );
    Ok(text)
}

/// The one-minute load average, as /proc/loadavg says it.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}
