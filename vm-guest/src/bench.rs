//! `cargo xtask bench ebpf --kernel NAME` inside the VM: the run cost of
//! tally's programs against the empty classifier `tally_noop`, from the
//! kernel's own run statistics (`kernel.bpf_stats_enabled`), as the host's
//! benchmark measures it, but with netlink (`cls_bpf`) filters, which every
//! kernel has: on the counted veth, ours and the empty one on the same hook
//! (ingress for datagrams in, egress for datagrams out), which one runs
//! first (the lower priority) alternating by round. Only the ratio means
//! something in a VM; it shows what this kernel's verifier and JIT made of
//! the programs on this CPU.

use std::fs;

use anyhow::{Context as _, ensure};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use tally_common::programs;

use crate::{
    say,
    scenarios::{COUNTED, Lab},
    traffic::Direction,
};

/// Where the initramfs puts the eBPF object.
pub const OBJECT: &str = "/lib/tally/tally.bpf.o";
/// 64-byte datagrams per direction and round.
const DATAGRAMS: usize = 20_000;
/// Rounds; the empty program runs first in the even ones.
const ROUNDS: usize = 6;

/// A program's run count and run time, summed.
#[derive(Debug, Clone, Copy, Default)]
struct RunStats {
    count: u64,
    time_ns: u64,
}

impl RunStats {
    fn of(ebpf: &Ebpf, name: &str) -> anyhow::Result<Self> {
        let info = ebpf
            .program(name)
            .with_context(|| format!("no program {name}"))?
            .info()
            .with_context(|| format!("the info of {name}"))?;
        Ok(Self {
            count: info.run_count(),
            time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
        })
    }

    fn since(self, before: Self) -> Self {
        Self {
            count: self.count.saturating_sub(before.count),
            time_ns: self.time_ns.saturating_sub(before.time_ns),
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            count: self.count + other.count,
            time_ns: self.time_ns + other.time_ns,
        }
    }

    fn ns_per_run(self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.time_ns as f64 / self.count as f64
        }
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("the object has no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not a classifier"))
}

/// One round: both programs on both hooks of the counted veth (`noop_first`
/// says which runs first), datagrams both ways; the run statistics of the
/// empty program and of ours.
fn round(ebpf: &mut Ebpf, lab: &Lab, noop_first: bool) -> anyhow::Result<(RunStats, RunStats)> {
    let (noop_priority, ours_priority) = if noop_first { (1, 2) } else { (2, 1) };
    let mut attached = Vec::new();
    for (hook, ours) in [
        (TcAttachType::Ingress, programs::INGRESS),
        (TcAttachType::Egress, programs::EGRESS),
    ] {
        for (name, priority) in [(programs::NOOP, noop_priority), (ours, ours_priority)] {
            let options = TcAttachOptions::Netlink(NlOptions {
                priority,
                ..NlOptions::default()
            });
            let id = classifier(ebpf, name)?
                .attach_with_options(COUNTED, hook, options)
                .with_context(|| format!("attaching {name} to {COUNTED} {hook:?}"))?;
            attached.push((name, id));
        }
    }
    let names = [programs::NOOP, programs::INGRESS, programs::EGRESS];
    let before: Vec<RunStats> = names
        .iter()
        .map(|name| RunStats::of(ebpf, name))
        .collect::<anyhow::Result<_>>()?;
    let ends = lab.ends();
    ends.udp(Direction::In, DATAGRAMS, 64)?;
    ends.udp(Direction::Out, DATAGRAMS, 64)?;
    let mut delta = [RunStats::default(); 3];
    for ((slot, name), before) in delta.iter_mut().zip(names).zip(before) {
        *slot = RunStats::of(ebpf, name)?.since(before);
    }
    for (name, id) in attached {
        classifier(ebpf, name)?
            .detach(id)
            .with_context(|| format!("detaching {name}"))?;
    }
    let [noop, ingress, egress] = delta;
    let ours = ingress.add(egress);
    ensure!(
        noop.count >= 2 * DATAGRAMS as u64 && ours.count >= 2 * DATAGRAMS as u64,
        "the programs did not see every datagram: empty {} runs, ours {} runs",
        noop.count,
        ours.count
    );
    let ratio = ours.ns_per_run() / noop.ns_per_run();
    say(&format!(
        "  round ({} first): empty {:.1} ns/run, ours {:.1} ns/run (ingress {:.1}, egress {:.1}), ratio {ratio:.2}",
        if noop_first { "empty" } else { "ours" },
        noop.ns_per_run(),
        ours.ns_per_run(),
        ingress.ns_per_run(),
        egress.ns_per_run(),
    ));
    Ok((noop, ours))
}

/// Runs the rounds and prints `tally-vm: bench run-cost <ratio> <ratios>`:
/// the ratio of the time per run pooled over all rounds, and each round's.
pub fn run_cost() -> anyhow::Result<()> {
    let lab = Lab::build()?;
    let mut ebpf = EbpfLoader::new()
        .load_file(OBJECT)
        .with_context(|| format!("loading {OBJECT}"))?;
    for name in [programs::INGRESS, programs::EGRESS, programs::NOOP] {
        classifier(&mut ebpf, name)?
            .load()
            .with_context(|| format!("the kernel refused {name}"))?;
    }
    let ifindex = lab.counted_ifindex()?;
    // Our programs count only interfaces with counters; the agent makes a
    // slot for each, and slots below FAST_SLOTS always exist.
    ensure!(
        tally_common::is_fast(ifindex),
        "{COUNTED} has ifindex {ifindex}, beyond the fast slots"
    );
    // An existing clsact qdisc is fine.
    let _ = tc::qdisc_add_clsact(COUNTED);
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
        .context("turning on the kernel's BPF run statistics")?;
    // Whichever program runs first on a hook pays for the first touch of
    // the packet (measured: about twice the time per run of the second), so
    // the figure is pooled over rounds of both orders, in equal numbers.
    let (mut noop, mut ours) = (RunStats::default(), RunStats::default());
    let mut ratios = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let (round_noop, round_ours) = round(&mut ebpf, &lab, i % 2 == 0)?;
        ratios.push(format!(
            "{:.3}",
            round_ours.ns_per_run() / round_noop.ns_per_run()
        ));
        noop = noop.add(round_noop);
        ours = ours.add(round_ours);
    }
    say(&format!(
        "tally-vm: bench run-cost {:.3} {}",
        ours.ns_per_run() / noop.ns_per_run(),
        ratios.join(",")
    ));
    Ok(())
}
