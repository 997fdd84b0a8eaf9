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
//! - throughput: datagrams per second that reach the receiving socket with
//!   nothing attached, with the empty program and with tally's programs on
//!   both hooks of both veths, in short alternating phases (the median of the
//!   rounds whose phases without anything agree sheds the machine's noise).
//!
//! Figures are printed, never asserted. Everything the benchmark makes is
//! undone when it ends, also on error or Ctrl-C: the programs, maps and links
//! only live in this process's file descriptors (nothing is pinned), and
//! guards delete the namespaces (with their veth) and restore the sysctl.

use std::{
    fmt::Write as _,
    fs, io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use tally_common::{IfCounters, maps, programs};

/// UDP payload of every datagram.
const PAYLOAD: usize = 64;
/// The receiver's UDP port in namespace A.
const PORT: u16 = 47_213;
/// Datagrams per run-cost phase.
const COST_PACKETS: u64 = 200_000;
/// Run-cost rounds (the empty program first in even ones, ours in odd ones).
const COST_ROUNDS: usize = 4;
/// Length of a throughput phase.
const THROUGHPUT_PHASE: Duration = Duration::from_secs(1);
/// Throughput rounds (each one phase without anything, one with the empty
/// program, one with ours; one more phase without closes the series).
const THROUGHPUT_ROUNDS: usize = 12;
/// A throughput round is clean when the phases without anything around it
/// differ by at most this much (percent); only clean rounds make the median
/// when there are at least three.
const CLEAN_ROUND: f64 = 3.0;
/// Upper bound of datagrams in any phase, whatever the clock says.
const MAX_PACKETS: u64 = 50_000_000;
/// How long a fixed-count phase may take at most.
const COUNT_PHASE_LIMIT: Duration = Duration::from_secs(30);
/// Where the sending thread runs (with the softirq work of both veth hooks:
/// veth hands packets over on the sender's CPU) and where the receiver runs.
const SENDER_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;
/// How long the receiver waits for a straggler before it calls a phase done.
const RECV_TIMEOUT: Duration = Duration::from_millis(20);

/// Target: our programs' average run time against the empty program's.
const RUN_COST_TARGET: f64 = 1.5;
/// Target: throughput lost with our programs attached, in percent.
const THROUGHPUT_LOSS_TARGET: f64 = 2.0;

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
const VETH_A: &str = "veth-a";
const VETH_B: &str = "veth-b";
const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

/// Runs the whole benchmark and prints its table.
pub fn ebpf() -> anyhow::Result<()> {
    let object = build_object()?;
    catch_interrupts();
    let mut net = TestNet::create()?;
    let result = measure(&object, &net);
    // Undo everything before reporting, and say so if any of it failed.
    let deleted = net.delete();
    let leftovers = leftover_namespaces(&net.prefix);
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
    let mut text = report(&cost, &stats, &throughput);
    let _ = writeln!(
        text,
        "load average (1 min) before/after: {load_before} / {}; other work on the machine \
         shows up as noisy rounds",
        load_average()
    );
    Ok(text)
}

/// A sysctl set for the benchmark and put back afterwards.
struct Sysctl {
    path: &'static str,
    previous: String,
    restored: bool,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> anyhow::Result<Self> {
        let previous = fs::read_to_string(path)
            .with_context(|| format!("cannot read {path}"))?
            .trim()
            .to_owned();
        fs::write(path, value).with_context(|| format!("cannot write {value} to {path}"))?;
        Ok(Self {
            path,
            previous,
            restored: false,
        })
    }

    fn restore(&mut self) -> anyhow::Result<()> {
        if !self.restored {
            fs::write(self.path, &self.previous)
                .with_context(|| format!("cannot restore {} to {}", self.path, self.previous))?;
            self.restored = true;
        }
        Ok(())
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(error) = self.restore() {
            eprintln!("bench: {error:#}");
        }
    }
}

/// A network namespace made by the benchmark, deleted when dropped.
struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    fn create(name: String) -> anyhow::Result<Self> {
        run_ip(&["netns", "add", &name])?;
        Ok(Self {
            name,
            deleted: false,
        })
    }

    /// `ip -n <name> <args>`.
    fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Runs `f` on a thread that has entered this namespace: interface names
    /// it resolves and sockets it creates are this namespace's.
    fn enter<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        let path = Path::new("/run/netns").join(&self.name);
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = fs::File::open(&path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    // SAFETY: a valid namespace descriptor; setns changes the
                    // network namespace of this (short-lived) thread only.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error())
                            .with_context(|| format!("cannot enter {}", path.display()));
                    }
                    f()
                })
                .join()
                .map_err(|_| anyhow!("the thread in namespace {} panicked", self.name))?
        })
    }

    fn delete(&mut self) -> anyhow::Result<()> {
        if !self.deleted {
            run_ip(&["netns", "delete", &self.name])?;
            self.deleted = true;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = self.delete() {
            eprintln!("bench: {error:#}");
        }
    }
}

fn run_ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("cannot run ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Our namespaces still listed by `ip netns list`.
fn leftover_namespaces(prefix: &str) -> anyhow::Result<Vec<String>> {
    Ok(run_ip(&["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// One end of the test network.
struct Side {
    ns: Netns,
    veth: &'static str,
    addr: Ipv4Addr,
    ifindex: u32,
}

/// Two namespaces joined by a veth pair, 10.213.0.1/24 (A) and .2 (B).
struct TestNet {
    prefix: String,
    a: Side,
    b: Side,
}

impl TestNet {
    fn create() -> anyhow::Result<Self> {
        let prefix = format!("tallyb-{}-", std::process::id());
        // Each namespace is deleted by its guard if a later step fails.
        let ns_a = Netns::create(format!("{prefix}a"))?;
        let ns_b = Netns::create(format!("{prefix}b"))?;
        // Distinct ifindexes, so that each veth has its own counters (fresh
        // namespaces would give both the same one).
        ns_a.ip(&[
            "link", "add", VETH_A, "index", "11", "type", "veth", "peer", "name", VETH_B, "index",
            "12", "netns", &ns_b.name,
        ])?;
        let a = Side::configure(ns_a, VETH_A, ADDR_A)?;
        let b = Side::configure(ns_b, VETH_B, ADDR_B)?;
        eprintln!(
            "bench: namespaces {} ({}, {}) and {} ({}, {})",
            a.ns.name, a.veth, a.addr, b.ns.name, b.veth, b.addr
        );
        Ok(Self { prefix, a, b })
    }

    fn side(&self, which: End) -> &Side {
        match which {
            End::A => &self.a,
            End::B => &self.b,
        }
    }

    fn delete(&mut self) -> anyhow::Result<()> {
        let a = self.a.ns.delete();
        let b = self.b.ns.delete();
        a.and(b)
    }
}

impl Side {
    fn configure(ns: Netns, veth: &'static str, addr: Ipv4Addr) -> anyhow::Result<Self> {
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", veth])?;
        ns.ip(&["link", "set", veth, "up"])?;
        let json = ns.ip(&["-j", "link", "show", "dev", veth])?;
        let links: serde_json::Value =
            serde_json::from_str(&json).with_context(|| format!("cannot parse `ip -j`: {json}"))?;
        let ifindex = links
            .get(0)
            .and_then(|link| link.get("ifindex"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .with_context(|| format!("no ifindex for {veth} in `ip -j`: {json}"))?;
        Ok(Self {
            ns,
            veth,
            addr,
            ifindex,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum End {
    A,
    B,
}

/// Where to attach which program.
#[derive(Debug, Clone, Copy)]
struct Hook {
    end: End,
    attach: TcAttachType,
    program: &'static str,
}

const fn hook(end: End, attach: TcAttachType, program: &'static str) -> Hook {
    Hook {
        end,
        attach,
        program,
    }
}

/// Ours where each datagram from B to A passes: egress of B, ingress of A.
const OURS_ON_PATH: [Hook; 2] = [
    hook(End::A, TcAttachType::Ingress, programs::INGRESS),
    hook(End::B, TcAttachType::Egress, programs::EGRESS),
];
/// The empty program on the same two hooks.
const NOOP_ON_PATH: [Hook; 2] = [
    hook(End::A, TcAttachType::Ingress, programs::NOOP),
    hook(End::B, TcAttachType::Egress, programs::NOOP),
];
/// Ours as the agent attaches it: both hooks of both veths (with the agent's
/// TCX order, see [`agent_order`]).
const OURS_EVERYWHERE: [Hook; 4] = [
    hook(End::A, TcAttachType::Ingress, programs::INGRESS),
    hook(End::A, TcAttachType::Egress, programs::EGRESS),
    hook(End::B, TcAttachType::Ingress, programs::INGRESS),
    hook(End::B, TcAttachType::Egress, programs::EGRESS),
];

/// The empty program on the same four hooks.
const NOOP_EVERYWHERE: [Hook; 4] = [
    hook(End::A, TcAttachType::Ingress, programs::NOOP),
    hook(End::A, TcAttachType::Egress, programs::NOOP),
    hook(End::B, TcAttachType::Ingress, programs::NOOP),
    hook(End::B, TcAttachType::Egress, programs::NOOP),
];

/// The agent's TCX order (`tcx_order` in agent/src/ebpf/engine.rs): first on
/// ingress, last on egress.
fn agent_order(attach: TcAttachType) -> LinkOrder {
    match attach {
        TcAttachType::Ingress => LinkOrder::first(),
        _ => LinkOrder::last(),
    }
}

/// After whatever is on the hook already.
fn append(_: TcAttachType) -> LinkOrder {
    LinkOrder::last()
}

/// The object's three classifiers, loaded (nothing pinned).
struct Programs {
    ebpf: Ebpf,
}

/// A program's cumulative run count and run time (`bpf_prog_info`).
#[derive(Debug, Clone, Copy, Default)]
struct RunStats {
    count: u64,
    time_ns: u64,
}

impl RunStats {
    fn since(self, before: Self) -> Self {
        Self {
            count: self.count.saturating_sub(before.count),
            time_ns: self.time_ns.saturating_sub(before.time_ns),
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            count: self.count.saturating_add(other.count),
            time_ns: self.time_ns.saturating_add(other.time_ns),
        }
    }

    fn ns_per_run(self) -> Option<f64> {
        (self.count > 0).then(|| self.time_ns as f64 / self.count as f64)
    }
}

impl Programs {
    fn load(object: &Path) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load_file(object)
            .with_context(|| format!("cannot load {}", object.display()))?;
        for name in [programs::INGRESS, programs::EGRESS, programs::NOOP] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("{} has no program {name}", object.display()))?
                .try_into()
                .with_context(|| format!("{name} is not a classifier"))?;
            program
                .load()
                .with_context(|| format!("cannot load {name} into the kernel"))?;
        }
        Ok(Self { ebpf })
    }

    fn classifier(&mut self, name: &str) -> anyhow::Result<&mut SchedClassifier> {
        self.ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()
            .with_context(|| format!("{name} is not a classifier"))
    }

    /// Zeroed counters for `ifindex`, as the agent makes them: without an
    /// entry our programs do not count (and would not do their real work).
    /// Fast-array slots (ifindex below `FAST_SLOTS`) always exist.
    fn create_counters(&mut self, ifindex: u32) -> anyhow::Result<()> {
        if tally_common::is_fast(ifindex) {
            return Ok(());
        }
        let map = self
            .ebpf
            .map_mut(maps::COUNTERS)
            .with_context(|| format!("no map {}", maps::COUNTERS))?;
        let mut counters: PerCpuHashMap<_, u32, IfCounters> =
            PerCpuHashMap::try_from(map).context("the counters map has an unexpected type")?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let zeroes = PerCpuValues::try_from(vec![IfCounters::default(); cpus])
            .context("cannot make per-CPU values")?;
        counters
            .insert(ifindex, zeroes, 0)
            .with_context(|| format!("cannot create the counters of ifindex {ifindex}"))
    }

    /// Everything the programs counted, summed over interfaces and CPUs.
    fn counted(&mut self) -> anyhow::Result<IfCounters> {
        let map = self
            .ebpf
            .map_mut(maps::COUNTERS)
            .with_context(|| format!("no map {}", maps::COUNTERS))?;
        let counters: PerCpuHashMap<_, u32, IfCounters> =
            PerCpuHashMap::try_from(map).context("the counters map has an unexpected type")?;
        let mut total = IfCounters::default();
        for entry in counters.iter() {
            let (_, per_cpu) = entry.context("cannot read the counters map")?;
            for value in per_cpu.iter() {
                total.accumulate(value);
            }
        }
        let map = self
            .ebpf
            .map_mut(maps::FAST)
            .with_context(|| format!("no map {}", maps::FAST))?;
        let fast: PerCpuArray<_, IfCounters> =
            PerCpuArray::try_from(map).context("the fast counters map has an unexpected type")?;
        for per_cpu in fast.iter() {
            for value in per_cpu.context("cannot read the fast counters map")?.iter() {
                total.accumulate(value);
            }
        }
        Ok(total)
    }

    fn stats(&self, name: &str) -> anyhow::Result<RunStats> {
        let info = self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .info()
            .with_context(|| format!("cannot read the info of {name}"))?;
        Ok(RunStats {
            count: info.run_count(),
            time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
        })
    }

    /// Attaches with TCX; dropping the returned links detaches them.
    fn attach(
        &mut self,
        net: &TestNet,
        hooks: &[Hook],
        order: fn(TcAttachType) -> LinkOrder,
    ) -> anyhow::Result<Vec<SchedClassifierLink>> {
        let mut links = Vec::with_capacity(hooks.len());
        for hook in hooks {
            let side = net.side(hook.end);
            let program = self.classifier(hook.program)?;
            // aya resolves the interface name in the caller's namespace.
            let link = side.ns.enter(|| {
                let id = program
                    .attach_with_options(
                        side.veth,
                        hook.attach,
                        TcAttachOptions::TcxOrder(order(hook.attach)),
                    )
                    .with_context(|| {
                        format!(
                            "cannot attach {} to {} {:?} in {}",
                            hook.program, side.veth, hook.attach, side.ns.name
                        )
                    })?;
                program
                    .take_link(id)
                    .with_context(|| format!("cannot take the link of {}", hook.program))
            })?;
            links.push(link);
        }
        Ok(links)
    }
}

/// The two sockets: a receiver in A, a sender in B connected to it.
struct Traffic {
    receiver: UdpSocket,
    sender: UdpSocket,
}

/// What one phase of sending did.
#[derive(Debug, Clone, Copy)]
struct Exchange {
    sent: u64,
    received: u64,
    elapsed: Duration,
}

impl Exchange {
    fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }

    fn received_pps(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64()
    }
}

impl Traffic {
    fn open(net: &TestNet) -> anyhow::Result<Self> {
        let to = SocketAddrV4::new(net.a.addr, PORT);
        let receiver = net.a.ns.enter(|| {
            let socket = UdpSocket::bind(to).with_context(|| format!("cannot bind {to}"))?;
            socket
                .set_read_timeout(Some(RECV_TIMEOUT))
                .context("cannot set a read timeout")?;
            Ok(socket)
        })?;
        let sender = net.b.ns.enter(|| {
            let from = SocketAddrV4::new(net.b.addr, 0);
            let socket = UdpSocket::bind(from).with_context(|| format!("cannot bind {from}"))?;
            socket
                .connect(to)
                .with_context(|| format!("cannot connect to {to}"))?;
            Ok(socket)
        })?;
        Ok(Self { receiver, sender })
    }

    /// Sends until `max` datagrams are out or `duration` is over, while a
    /// second thread counts what arrives. Sender and receiver each have a CPU
    /// of their own (where there are two), so that the scheduler's placement
    /// does not change the figures from one phase to the next.
    fn exchange(&self, max: u64, duration: Duration) -> anyhow::Result<Exchange> {
        check_interrupted()?;
        let max = max.min(MAX_PACKETS);
        let done = AtomicBool::new(false);
        let start = Instant::now();
        let deadline = start + duration;
        thread::scope(|scope| {
            let receiver = scope.spawn(|| {
                pin_to_cpu(RECEIVER_CPU);
                receive(&self.receiver, &done, deadline)
            });
            let sender = scope.spawn(|| {
                pin_to_cpu(SENDER_CPU);
                let sent = send(&self.sender, max, deadline);
                let elapsed = start.elapsed();
                done.store(true, Ordering::Release);
                sent.map(|sent| (sent, elapsed))
            });
            let sent = sender
                .join()
                .map_err(|_| anyhow!("the sending thread panicked"));
            // Whatever the sender did, the receiver stops now.
            done.store(true, Ordering::Release);
            let received = receiver
                .join()
                .map_err(|_| anyhow!("the receiving thread panicked"))??;
            let (sent, elapsed) = sent??;
            Ok(Exchange {
                sent,
                received,
                elapsed,
            })
        })
    }
}

/// Binds the calling thread to `cpu` if the machine has more than one and
/// the benchmark may use it; otherwise (or if the kernel refuses) leaves the
/// placement to the scheduler.
fn pin_to_cpu(cpu: usize) {
    let allowed = thread::available_parallelism().map_or(1, usize::from);
    if allowed < 2 || cpu >= allowed {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within
    // it for cpu < CPU_SETSIZE; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn send(socket: &UdpSocket, max: u64, deadline: Instant) -> anyhow::Result<u64> {
    let payload = [0x5a_u8; PAYLOAD];
    let mut sent = 0;
    let mut refused = 0_u64;
    let mut tries = 0_u64;
    while sent < max {
        if tries.is_multiple_of(256) {
            check_interrupted()?;
            if Instant::now() >= deadline {
                break;
            }
        }
        tries += 1;
        match socket.send(&payload) {
            Ok(_) => sent += 1,
            // A full queue somewhere: try again, within bounds.
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                refused += 1;
                ensure!(
                    refused < 1_000_000,
                    "the kernel keeps refusing datagrams: {e}"
                );
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("cannot send a datagram"),
        }
    }
    Ok(sent)
}

/// Counts datagrams until the sender is done and the queue is empty.
fn receive(socket: &UdpSocket, done: &AtomicBool, deadline: Instant) -> anyhow::Result<u64> {
    let hard_stop = deadline + Duration::from_secs(2);
    let mut buf = [0_u8; 2048];
    let mut received = 0_u64;
    loop {
        match socket.recv(&mut buf) {
            Ok(_) => {
                received += 1;
                if received.is_multiple_of(4096) && Instant::now() >= hard_stop {
                    return Ok(received);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if done.load(Ordering::Acquire)
                    || Instant::now() >= hard_stop
                    || INTERRUPTED.load(Ordering::Relaxed)
                {
                    return Ok(received);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("cannot receive a datagram"),
        }
    }
}

/// One run-cost round: ns per run of the empty program and of ours, measured
/// on the same datagrams.
struct CostRound {
    noop_first: bool,
    noop: RunStats,
    ingress: RunStats,
    egress: RunStats,
}

impl CostRound {
    fn ours(&self) -> RunStats {
        self.ingress.add(self.egress)
    }

    fn ratio(&self) -> f64 {
        per_run(self.ours()) / per_run(self.noop)
    }
}

fn per_run(stats: RunStats) -> f64 {
    stats.ns_per_run().unwrap_or(f64::NAN)
}

struct RunCost {
    rounds: Vec<CostRound>,
    /// What tally's map counted during the rounds.
    counted: IfCounters,
}

/// One round: the empty program and ours on the same hooks, `noop_first`
/// saying which runs first; `COST_PACKETS` datagrams through both.
fn cost_round(
    progs: &mut Programs,
    net: &TestNet,
    traffic: &Traffic,
    noop_first: bool,
) -> anyhow::Result<CostRound> {
    let (first, second) = if noop_first {
        (&NOOP_ON_PATH, &OURS_ON_PATH)
    } else {
        (&OURS_ON_PATH, &NOOP_ON_PATH)
    };
    let mut links = progs.attach(net, first, append)?;
    links.extend(progs.attach(net, second, append)?);
    let names = [programs::NOOP, programs::INGRESS, programs::EGRESS];
    let mut before = [RunStats::default(); 3];
    for (slot, name) in before.iter_mut().zip(names) {
        *slot = progs.stats(name)?;
    }
    let exchange = traffic.exchange(COST_PACKETS, COUNT_PHASE_LIMIT)?;
    let mut delta = [RunStats::default(); 3];
    for ((slot, name), before) in delta.iter_mut().zip(names).zip(before) {
        *slot = progs.stats(name)?.since(before);
    }
    drop(links);
    let [noop, ingress, egress] = delta;
    let round = CostRound {
        noop_first,
        noop,
        ingress,
        egress,
    };
    eprintln!(
        "bench:   {} first: {} datagrams sent, {} received; runs noop {} ingress {} egress {}; \
         ns/run noop {:.1} tally {:.1}",
        if noop_first { "noop" } else { "tally" },
        exchange.sent,
        exchange.received,
        noop.count,
        ingress.count,
        egress.count,
        per_run(noop),
        per_run(round.ours())
    );
    ensure!(
        noop.time_ns > 0 && round.ours().time_ns > 0,
        "the kernel reported no run time: is kernel.bpf_stats_enabled really on?"
    );
    // Both sets sit on the same two hooks: unless one ended the TCX chain,
    // they ran equally often (give or take an ARP packet).
    let ours = round.ours().count;
    ensure!(
        ours >= exchange.sent && noop.count.abs_diff(ours) <= ours / 100,
        "the programs did not all see every datagram (noop {}, tally {ours}, sent {}): \
         does one of them end the TCX chain (return something else than TCX_NEXT)?",
        noop.count,
        exchange.sent
    );
    Ok(round)
}

fn run_cost(progs: &mut Programs, net: &TestNet, traffic: &Traffic) -> anyhow::Result<RunCost> {
    eprintln!(
        "bench: run cost, {COST_ROUNDS} rounds of {COST_PACKETS} datagrams through noop and tally"
    );
    let counted_before = progs.counted()?;
    let mut rounds = Vec::with_capacity(COST_ROUNDS);
    for round in 0..COST_ROUNDS {
        rounds.push(cost_round(progs, net, traffic, round % 2 == 0)?);
    }
    let after = progs.counted()?;
    let counted = IfCounters {
        rx_bytes: after.rx_bytes.saturating_sub(counted_before.rx_bytes),
        rx_packets: after.rx_packets.saturating_sub(counted_before.rx_packets),
        tx_bytes: after.tx_bytes.saturating_sub(counted_before.tx_bytes),
        tx_packets: after.tx_packets.saturating_sub(counted_before.tx_packets),
    };
    Ok(RunCost { rounds, counted })
}

/// Throughput phases: each round one without anything, one with the empty
/// program and one with tally (these two in alternating order); one more
/// phase without closes the series.
struct Throughput {
    without: Vec<Exchange>,
    noop: Vec<Exchange>,
    with: Vec<Exchange>,
    /// `kernel.bpf_stats_enabled` during the phases.
    bpf_stats: String,
}

fn throughput(
    progs: &mut Programs,
    net: &TestNet,
    traffic: &Traffic,
) -> anyhow::Result<Throughput> {
    let bpf_stats = fs::read_to_string(BPF_STATS_SYSCTL)
        .with_context(|| format!("cannot read {BPF_STATS_SYSCTL}"))?
        .trim()
        .to_owned();
    eprintln!(
        "bench: throughput, {THROUGHPUT_ROUNDS} rounds of {THROUGHPUT_PHASE:?} phases: \
         without, empty program, tally (bpf_stats_enabled={bpf_stats})"
    );
    let phase = |label: &str| -> anyhow::Result<Exchange> {
        let exchange = traffic.exchange(u64::MAX, THROUGHPUT_PHASE)?;
        eprintln!(
            "bench:   {label:<8} sent {:>9.0}/s received {:>9.0}/s",
            exchange.sent_pps(),
            exchange.received_pps()
        );
        Ok(exchange)
    };
    let mut without = vec![phase("without")?];
    let mut noop = Vec::with_capacity(THROUGHPUT_ROUNDS);
    let mut with = Vec::with_capacity(THROUGHPUT_ROUNDS);
    for round in 0..THROUGHPUT_ROUNDS {
        for tally_turn in [round % 2 == 0, round % 2 != 0] {
            if tally_turn {
                let links = progs.attach(net, &OURS_EVERYWHERE, agent_order)?;
                with.push(phase("tally")?);
                drop(links);
            } else {
                let links = progs.attach(net, &NOOP_EVERYWHERE, agent_order)?;
                noop.push(phase("noop")?);
                drop(links);
            }
        }
        without.push(phase("without")?);
    }
    Ok(Throughput {
        without,
        noop,
        with,
        bpf_stats,
    })
}

/// The one-minute load average, as /proc/loadavg says it.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

fn report(cost: &RunCost, stats: &Sysctl, tp: &Throughput) -> String {
    let mut out = String::new();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, usize::from);
    let _ = writeln!(
        out,
        "\ntally eBPF benchmark: kernel {}, {cpus} CPUs, {PAYLOAD}-byte UDP datagrams \
         from ns B to ns A over a veth pair, TCX",
        kernel.trim()
    );
    report_run_cost(&mut out, cost);
    let _ = writeln!(
        out,
        "  ({} was 1 for these rounds only, then back to {})",
        BPF_STATS_SYSCTL, stats.previous
    );
    report_throughput(&mut out, tp);
    out
}

fn report_run_cost(out: &mut String, cost: &RunCost) {
    let _ = writeln!(
        out,
        "\nrun cost (kernel bpf_stats, ns per run; tally_noop and tally attached together on \
         ingress A + egress B, {COST_ROUNDS} rounds of {COST_PACKETS} datagrams)"
    );
    let _ = writeln!(
        out,
        "  {:<7} {:<6} {:>8} {:>14} {:>13} {:>8} {:>12}",
        "round", "first", "noop", "tally_ingress", "tally_egress", "tally", "tally/noop"
    );
    for (i, r) in cost.rounds.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:<7} {:<6} {:>8.1} {:>14.1} {:>13.1} {:>8.1} {:>11.2}x",
            i + 1,
            if r.noop_first { "noop" } else { "tally" },
            per_run(r.noop),
            per_run(r.ingress),
            per_run(r.egress),
            per_run(r.ours()),
            r.ratio()
        );
    }
    let column = |f: fn(&CostRound) -> f64| median(cost.rounds.iter().map(f).collect());
    let ratio = column(CostRound::ratio);
    let _ = writeln!(
        out,
        "  {:<14} {:>8.1} {:>14.1} {:>13.1} {:>8.1} {:>11.2}x",
        "median",
        column(|r| per_run(r.noop)),
        column(|r| per_run(r.ingress)),
        column(|r| per_run(r.egress)),
        column(|r| per_run(r.ours())),
        ratio
    );
    let _ = writeln!(
        out,
        "  run cost tally/noop {ratio:.2}x   target <= {RUN_COST_TARGET:.2}x   {}",
        verdict(ratio <= RUN_COST_TARGET)
    );
    let noop_runs: u64 = cost.rounds.iter().map(|r| r.noop.count).sum();
    let ours_runs: u64 = cost.rounds.iter().map(|r| r.ours().count).sum();
    let _ = writeln!(
        out,
        "  every datagram passed both (noop ran {noop_runs} times, tally {ours_runs}); \
         tally's map counted {} rx + {} tx packets",
        cost.counted.rx_packets, cost.counted.tx_packets
    );
}

fn report_throughput(out: &mut String, tp: &Throughput) {
    let _ = writeln!(
        out,
        "\nthroughput (datagrams/s received in ns A; {THROUGHPUT_ROUNDS} rounds of {:?} phases: \
         nothing attached, the empty program or tally on both hooks of both veths; \
         bpf_stats_enabled={})",
        THROUGHPUT_PHASE, tp.bpf_stats
    );
    let _ = writeln!(
        out,
        "  {:<6} {:>9} {:>9} {:>9} {:>13} {:>11} {:>12} {:>11}",
        "round", "without", "noop", "tally", "next without", "noop/wo", "tally/wo", "tally/noop"
    );
    let mut rounds = Vec::new();
    let phases = tp.with.iter().zip(&tp.noop).zip(tp.without.windows(2));
    for (i, ((with, noop), pair)) in phases.enumerate() {
        let [before, after] = pair else { continue };
        let baseline = (before.received_pps() + after.received_pps()) / 2.0;
        let round = ThroughputRound {
            noop: noop.received_pps() / baseline,
            tally: with.received_pps() / baseline,
            vs_noop: with.received_pps() / noop.received_pps(),
            noise: (after.received_pps() / before.received_pps() - 1.0).abs() * 100.0,
        };
        let _ = writeln!(
            out,
            "  {:<6} {:>9.0} {:>9.0} {:>9.0} {:>13.0} {:>11.3} {:>12.3} {:>11.3}{}",
            i + 1,
            before.received_pps(),
            noop.received_pps(),
            with.received_pps(),
            after.received_pps(),
            round.noop,
            round.tally,
            round.vs_noop,
            if round.noise <= CLEAN_ROUND {
                ""
            } else {
                "  noisy"
            }
        );
        rounds.push(round);
    }
    let clean: Vec<&ThroughputRound> = rounds.iter().filter(|r| r.noise <= CLEAN_ROUND).collect();
    let (used, which) = if clean.len() >= 3 {
        (clean, "clean rounds")
    } else {
        (rounds.iter().collect(), "all rounds: too few clean ones")
    };
    let column = |f: fn(&ThroughputRound) -> f64| median(used.iter().map(|r| f(r)).collect());
    let ratio = column(|r| r.tally);
    let noop_ratio = column(|r| r.noop);
    let _ = writeln!(
        out,
        "  {:<50} {:>11.3} {:>12.3} {:>11.3}",
        format!("median of {} {which}", used.len()),
        noop_ratio,
        ratio,
        column(|r| r.vs_noop)
    );
    let loss = (1.0 - ratio) * 100.0;
    let _ = writeln!(
        out,
        "  throughput loss with tally {loss:.1}%   target <= {THROUGHPUT_LOSS_TARGET:.0}%   {}",
        verdict(loss <= THROUGHPUT_LOSS_TARGET)
    );
    let _ = writeln!(
        out,
        "  (with the empty program instead: {:.1}%, the price of running any TCX program there)",
        (1.0 - noop_ratio) * 100.0
    );
    let noise: Vec<f64> = rounds.iter().map(|r| r.noise).collect();
    let _ = writeln!(
        out,
        "  noise: the phases without anything around a round differ by {:.1}% (median), \
         {:.1}% (max); a round is noisy above {CLEAN_ROUND:.0}%",
        median(noise.clone()),
        noise.iter().copied().fold(0.0, f64::max)
    );
}

/// One throughput round, against the mean of the phases without around it.
struct ThroughputRound {
    noop: f64,
    tally: f64,
    vs_noop: f64,
    /// How much the phases without differ (percent).
    noise: f64,
}
