//! The report: the run-cost and throughput tables, their medians and the
//! verdicts against the targets.

use std::{fmt::Write as _, fs, thread};

use super::{
    BPF_STATS_SYSCTL, COST_PACKETS, COST_ROUNDS, PAYLOAD, THROUGHPUT_PHASE, THROUGHPUT_ROUNDS,
    rounds::{CostRound, RunCost, Throughput, per_run},
    sysctl::Sysctl,
};

/// A throughput round is clean when the phases without anything around it
/// differ by at most this much (percent); only clean rounds make the median
/// when there are at least three.
const CLEAN_ROUND: f64 = 3.0;

/// Target: our programs' average run time against the empty program's.
const RUN_COST_TARGET: f64 = 1.5;
/// Target: throughput lost with our programs attached, in percent.
const THROUGHPUT_LOSS_TARGET: f64 = 2.0;

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

pub(super) fn report(cost: &RunCost, stats: &Sysctl, tp: &Throughput) -> String {
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
