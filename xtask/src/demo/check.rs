//! `cargo xtask demo --check`: after the traffic stopped and every agent
//! sent its last heartbeat, the JSON API must show each demo node with
//! totals equal, to the byte, to what its host's kernel counted on the
//! counted interface (upload = tx, download = rx), none of them zero, every
//! node online while the traffic ran, and the ranking by total traffic in
//! the order of the traffic plan. Every figure is printed; any mismatch is
//! an error.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::{
    api::Api,
    netns::{COUNTED_IF, IfStats},
    summary::{self, NodeView},
};

/// How long the API may take to show the last heartbeats (they are
/// committed before the agents exit, so this is only a margin).
const SETTLE: Duration = Duration::from_secs(10);

/// One node and what its host's kernel counted while the demo ran.
pub struct Expected {
    pub node: String,
    pub kernel: IfStats,
}

/// Runs the check; `planned` is the node names in the plan's order,
/// `online` whether each node was online in the last look while the
/// traffic ran.
pub fn run(
    api: &Api,
    expected: &[Expected],
    planned: &[String],
    online: &[(String, bool)],
) -> anyhow::Result<()> {
    let names: Vec<String> = expected.iter().map(|e| e.node.clone()).collect();
    let deadline = Instant::now() + SETTLE;
    let nodes = loop {
        let nodes = summary::fetch(api, &names)?;
        if expected.iter().all(|e| matches(&nodes, e)) || Instant::now() > deadline {
            break nodes;
        }
        std::thread::sleep(Duration::from_millis(250));
    };

    let mut failures = Vec::new();
    for e in expected {
        let Some(node) = nodes.iter().find(|n| n.name == e.node) else {
            println!("check: {:<13} MISSING from GET /api/v1/nodes", e.node);
            failures.push(format!("{} is not listed", e.node));
            continue;
        };
        let ok = matches(&nodes, e);
        println!(
            "check: {:<13} kernel {COUNTED_IF} tx {:>11} rx {:>11} | API upload {:>11} download {:>11}  {}",
            e.node,
            e.kernel.tx_bytes,
            e.kernel.rx_bytes,
            node.upload,
            node.download,
            if ok { "equal" } else { "MISMATCH" }
        );
        if !ok {
            failures.push(format!(
                "{}: API (upload, download) = ({}, {}), kernel (tx, rx) = ({}, {}) \
                 (kernel drops: tx {}, rx {}; a packet dropped after the egress hook is \
                 counted by tally and not by the kernel)",
                e.node,
                node.upload,
                node.download,
                e.kernel.tx_bytes,
                e.kernel.rx_bytes,
                e.kernel.tx_dropped,
                e.kernel.rx_dropped
            ));
        }
        if e.kernel.tx_bytes == 0 || e.kernel.rx_bytes == 0 {
            failures.push(format!("{}: no traffic each way", e.node));
        }
    }

    for (node, was_online) in online {
        println!(
            "check: {node:<13} {} while the traffic ran",
            if *was_online { "online" } else { "NOT ONLINE" }
        );
        if !was_online {
            failures.push(format!("{node} was not online while the traffic ran"));
        }
    }

    let ranking: Vec<(String, u64)> = summary::ranking(api)?
        .into_iter()
        .filter(|(name, _)| names.contains(name))
        .collect();
    let ranked: Vec<&str> = ranking.iter().map(|(name, _)| name.as_str()).collect();
    let ok = ranked == planned.iter().map(String::as_str).collect::<Vec<_>>();
    println!(
        "check: ranking by total, both ways: {} (plan: {})  {}",
        ranking
            .iter()
            .map(|(name, value)| format!("{name} {value}"))
            .collect::<Vec<_>>()
            .join(" > "),
        planned.join(" > "),
        if ok { "as planned" } else { "NOT AS PLANNED" }
    );
    if !ok {
        failures.push(format!(
            "the ranking is {ranked:?}, the plan says {planned:?}"
        ));
    }
    for (name, value) in &ranking {
        let total = nodes
            .iter()
            .find(|n| &n.name == name)
            .map(|n| n.upload + n.download);
        if total != Some(*value) {
            failures.push(format!(
                "{name}: ranked with {value}, its totals add up to {total:?}"
            ));
        }
    }

    if !failures.is_empty() {
        bail!("the check failed:\n  {}", failures.join("\n  "));
    }
    println!("check: passed");
    Ok(())
}

fn matches(nodes: &[NodeView], e: &Expected) -> bool {
    nodes.iter().any(|n| {
        n.name == e.node && n.upload == e.kernel.tx_bytes && n.download == e.kernel.rx_bytes
    })
}
