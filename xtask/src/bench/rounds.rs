//! The measurements: run-cost rounds (the empty program and ours on the same
//! hooks, the kernel's run statistics) and throughput phases (nothing, the
//! empty program or ours attached).

use std::{fs, time::Duration};

use anyhow::{Context as _, ensure};
use tally_common::IfCounters;

use super::{
    BPF_STATS_SYSCTL, COST_PACKETS, COST_ROUNDS, THROUGHPUT_PHASE, THROUGHPUT_ROUNDS,
    net::TestNet,
    programs::{NOOP_EVERYWHERE, OURS_EVERYWHERE, Programs, RunStats, agent_order},
    traffic::{Exchange, Traffic},
};

/// How long a fixed-count phase may take at most.
const COUNT_PHASE_LIMIT: Duration = Duration::from_secs(30);

/// One run-cost round: ns per run of the empty program and of ours, measured
/// on the same datagrams.
pub(super) struct CostRound {
    pub(super) noop_first: bool,
    pub(super) noop: RunStats,
    pub(super) ingress: RunStats,
    pub(super) egress: RunStats,
}

impl CostRound {
    pub(super) fn ours(&self) -> RunStats {
        self.ingress.add(self.egress)
    }

    pub(super) fn ratio(&self) -> f64 {
        per_run(self.ours()) / per_run(self.noop)
    }
}

pub(super) fn per_run(stats: RunStats) -> f64 {
    stats.ns_per_run().unwrap_or(f64::NAN)
}

pub(super) struct RunCost {
    pub(super) rounds: Vec<CostRound>,
    /// What tally's map counted during the rounds.
    pub(super) counted: IfCounters,
}

/// One round: the empty program and ours on the same hooks, `noop_first`
/// saying which runs first; `COST_PACKETS` datagrams through both.
fn cost_round(
    progs: &mut Programs,
    net: &TestNet,
    traffic: &Traffic,
    noop_first: bool,
) -> anyhow::Result<CostRound> {
    let links = progs.attach_side_by_side(net, noop_first)?;
    let before = progs.side_by_side_stats()?;
    let exchange = traffic.exchange(COST_PACKETS, COUNT_PHASE_LIMIT)?;
    let after = progs.side_by_side_stats()?;
    let delta: [RunStats; 3] = std::array::from_fn(|i| after[i].since(before[i]));
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

pub(super) fn run_cost(
    progs: &mut Programs,
    net: &TestNet,
    traffic: &Traffic,
) -> anyhow::Result<RunCost> {
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
        // The report shows the totals only.
        ..IfCounters::default()
    };
    Ok(RunCost { rounds, counted })
}

/// Throughput phases: each round one without anything, one with the empty
/// program and one with tally (these two in alternating order); one more
/// phase without closes the series.
pub(super) struct Throughput {
    pub(super) without: Vec<Exchange>,
    pub(super) noop: Vec<Exchange>,
    pub(super) with: Vec<Exchange>,
    /// `kernel.bpf_stats_enabled` during the phases.
    pub(super) bpf_stats: String,
}

pub(super) fn throughput(
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
