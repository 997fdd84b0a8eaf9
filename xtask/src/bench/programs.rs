//! tally's TC programs through aya: which program goes on which hook, in
//! which TCX order; loading, attaching, the counters map and the kernel's
//! run statistics.

use std::path::Path;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use tally_common::{IfCounters, maps, programs};

use super::net::{End, TestNet};

/// Where to attach which program.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hook {
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
pub(super) const OURS_ON_PATH: [Hook; 2] = [
    hook(End::A, TcAttachType::Ingress, programs::INGRESS),
    hook(End::B, TcAttachType::Egress, programs::EGRESS),
];
/// The empty program on the same two hooks.
pub(super) const NOOP_ON_PATH: [Hook; 2] = [
    hook(End::A, TcAttachType::Ingress, programs::NOOP),
    hook(End::B, TcAttachType::Egress, programs::NOOP),
];
/// Ours as the agent attaches it: both hooks of both veths (with the agent's
/// TCX order, see [`agent_order`]).
pub(super) const OURS_EVERYWHERE: [Hook; 4] = [
    hook(End::A, TcAttachType::Ingress, programs::INGRESS),
    hook(End::A, TcAttachType::Egress, programs::EGRESS),
    hook(End::B, TcAttachType::Ingress, programs::INGRESS),
    hook(End::B, TcAttachType::Egress, programs::EGRESS),
];

/// The empty program on the same four hooks.
pub(super) const NOOP_EVERYWHERE: [Hook; 4] = [
    hook(End::A, TcAttachType::Ingress, programs::NOOP),
    hook(End::A, TcAttachType::Egress, programs::NOOP),
    hook(End::B, TcAttachType::Ingress, programs::NOOP),
    hook(End::B, TcAttachType::Egress, programs::NOOP),
];

/// The agent's TCX order (`tcx_order` in agent/src/ebpf/engine.rs): first on
/// ingress, last on egress.
pub(super) fn agent_order(attach: TcAttachType) -> LinkOrder {
    match attach {
        TcAttachType::Ingress => LinkOrder::first(),
        _ => LinkOrder::last(),
    }
}

/// After whatever is on the hook already.
pub(super) fn append(_: TcAttachType) -> LinkOrder {
    LinkOrder::last()
}

/// The object's three classifiers, loaded (nothing pinned).
pub(super) struct Programs {
    ebpf: Ebpf,
}

/// A program's cumulative run count and run time (`bpf_prog_info`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RunStats {
    pub(super) count: u64,
    pub(super) time_ns: u64,
}

impl RunStats {
    pub(super) fn since(self, before: Self) -> Self {
        Self {
            count: self.count.saturating_sub(before.count),
            time_ns: self.time_ns.saturating_sub(before.time_ns),
        }
    }

    pub(super) fn add(self, other: Self) -> Self {
        Self {
            count: self.count.saturating_add(other.count),
            time_ns: self.time_ns.saturating_add(other.time_ns),
        }
    }

    pub(super) fn ns_per_run(self) -> Option<f64> {
        (self.count > 0).then(|| self.time_ns as f64 / self.count as f64)
    }
}

impl Programs {
    pub(super) fn load(object: &Path) -> anyhow::Result<Self> {
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
    pub(super) fn create_counters(&mut self, ifindex: u32) -> anyhow::Result<()> {
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
    pub(super) fn counted(&mut self) -> anyhow::Result<IfCounters> {
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

    pub(super) fn stats(&self, name: &str) -> anyhow::Result<RunStats> {
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

    /// The empty program and ours on the same hooks of the path
    /// (`NOOP_ON_PATH`, `OURS_ON_PATH`), `noop_first` saying which set runs
    /// first; dropping the returned links detaches them.
    pub(super) fn attach_side_by_side(
        &mut self,
        net: &TestNet,
        noop_first: bool,
    ) -> anyhow::Result<Vec<SchedClassifierLink>> {
        let (first, second) = if noop_first {
            (&NOOP_ON_PATH, &OURS_ON_PATH)
        } else {
            (&OURS_ON_PATH, &NOOP_ON_PATH)
        };
        let mut links = self.attach(net, first, append)?;
        links.extend(self.attach(net, second, append)?);
        Ok(links)
    }

    /// The run statistics of the empty program, ours on ingress and ours on
    /// egress, in that order.
    pub(super) fn side_by_side_stats(&self) -> anyhow::Result<[RunStats; 3]> {
        Ok([
            self.stats(programs::NOOP)?,
            self.stats(programs::INGRESS)?,
            self.stats(programs::EGRESS)?,
        ])
    }

    /// Attaches with TCX; dropping the returned links detaches them.
    pub(super) fn attach(
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
