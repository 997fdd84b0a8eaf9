//! The GRO case of `cargo xtask bench ebpf`: TCP transfers of
//! [`GRO_BYTES`] from B to A with GRO on at A and segmentation left to the
//! kernel after the egress hook (`WIRE_LIKE`), so that tally's egress
//! program on B sees packets of up to 64 KiB (the `wire_len` path) and its
//! ingress program on A sees frames that GRO merged (the path that reads
//! the headers). As in the run-cost rounds, the empty program and ours sit
//! on the same hooks, alternating which goes first; the figures are the
//! time per run of each, their ratio, and ours per packet and per KiB it
//! counted.

use std::{fmt::Write as _, time::Duration};

use tally_testkit::{netns::WIRE_LIKE, traffic::tcp_transfer};

use super::{
    net::TestNet,
    programs::{Programs, RunStats},
    rounds::per_run,
};

/// Bytes of one round's transfer.
const GRO_BYTES: usize = 64 << 20;
const GRO_ROUNDS: usize = 4;

pub(super) struct GroRound {
    noop_first: bool,
    noop: RunStats,
    ours: RunStats,
    /// What ours counted (wire bytes, both hooks).
    bytes: u64,
    /// Wire frames those runs stood for.
    frames: u64,
}

pub(super) fn gro_cost(progs: &mut Programs, net: &TestNet) -> anyhow::Result<Vec<GroRound>> {
    let mut a_features = WIRE_LIKE.to_vec();
    a_features.push(("gro", true));
    net.a.ns.set_features(net.a.veth, &a_features)?;
    net.b.ns.set_features(net.b.veth, WIRE_LIKE)?;
    eprintln!(
        "bench: GRO case, {GRO_ROUNDS} rounds of {} MiB of TCP from B to A (GRO on at A, \
         segmentation after the egress hook at B)",
        GRO_BYTES >> 20
    );
    let mut rounds = Vec::with_capacity(GRO_ROUNDS);
    for round in 0..GRO_ROUNDS {
        let noop_first = round % 2 == 0;
        let links = progs.attach_side_by_side(net, noop_first)?;
        let before = progs.side_by_side_stats()?;
        let counted_before = progs.counted()?;
        tcp_transfer(&net.b.ns, &net.a.ns, net.a.addr, GRO_BYTES, Duration::ZERO)?;
        let counted = progs.counted()?;
        let after = progs.side_by_side_stats()?;
        let delta: [RunStats; 3] = std::array::from_fn(|i| after[i].since(before[i]));
        drop(links);
        let [noop, ingress, egress] = delta;
        // Ours on the path: ingress at A (rx), egress at B (tx).
        let bytes = (counted.rx_bytes + counted.tx_bytes)
            .saturating_sub(counted_before.rx_bytes + counted_before.tx_bytes);
        let frames = (counted.rx_packets + counted.tx_packets)
            .saturating_sub(counted_before.rx_packets + counted_before.tx_packets);
        let round = GroRound {
            noop_first,
            noop,
            ours: ingress.add(egress),
            bytes,
            frames,
        };
        eprintln!(
            "bench:   {} first: runs noop {} tally {} (for {} frames); ns/run noop {:.1} tally {:.1}",
            if noop_first { "noop" } else { "tally" },
            noop.count,
            round.ours.count,
            frames,
            per_run(noop),
            per_run(round.ours)
        );
        rounds.push(round);
    }
    Ok(rounds)
}

/// The GRO case's table: per round and pooled.
pub(super) fn gro_report(rounds: &[GroRound]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "GRO case ({} MiB of TCP per round; tally's two programs against the empty one on the \
         same hooks):",
        GRO_BYTES >> 20
    );
    let _ = writeln!(
        text,
        "  {:<12} {:>10} {:>10} {:>7} {:>12} {:>10} {:>12}",
        "first", "noop ns", "tally ns", "ratio", "bytes/run", "frames/run", "tally ns/KiB"
    );
    let mut pooled = GroRound {
        noop_first: false,
        noop: RunStats::default(),
        ours: RunStats::default(),
        bytes: 0,
        frames: 0,
    };
    for round in rounds {
        line(
            &mut text,
            if round.noop_first { "noop" } else { "tally" },
            round,
        );
        pooled.noop = pooled.noop.add(round.noop);
        pooled.ours = pooled.ours.add(round.ours);
        pooled.bytes += round.bytes;
        pooled.frames += round.frames;
    }
    line(&mut text, "pooled", &pooled);
    text
}

fn line(text: &mut String, label: &str, round: &GroRound) {
    let runs = round.ours.count.max(1) as f64;
    let _ = writeln!(
        text,
        "  {label:<12} {:>10.1} {:>10.1} {:>6.2}× {:>12.0} {:>10.1} {:>12.3}",
        per_run(round.noop),
        per_run(round.ours),
        per_run(round.ours) / per_run(round.noop),
        round.bytes as f64 / runs,
        round.frames as f64 / runs,
        round.ours.time_ns as f64 / (round.bytes.max(1) as f64 / 1024.0),
    );
}
