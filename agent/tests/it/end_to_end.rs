//! End to end in namespaces: the real agent (eBPF, in host `a`) reports to
//! the real collector (in host `b`), which stores into a real PostgreSQL.
//! Traffic flows between the hosts while the agent, the collector and
//! PostgreSQL are each killed with SIGKILL and restarted, one at a time. At
//! the end the node's stored totals equal the kernel's rx/tx byte counts of
//! the counted interface over the whole run, exactly.
//!
//! The heartbeats travel over a second veth pair that the agent is told not
//! to count (`--exclude`), so the counted interface carries only the test's
//! traffic and the kernel's statistics of it are the ground truth.

use crate::common;

use std::{thread, time::Duration};

use common::{Agent, Link, Store, control_link, privileged, reporting_args, tail};
use tally_testkit::{netns::IfStats, traffic::tcp_transfer};

const COLLECTOR_PORT: u16 = 50_051;

/// Traffic both ways over the counted link (16 MiB paced over ~4 s, with
/// its acknowledgements) while `during` runs.
fn with_traffic(link: &Link, during: impl FnOnce()) {
    thread::scope(|scope| {
        scope.spawn(|| {
            tcp_transfer(
                &link.b,
                &link.a,
                link.ip_a,
                16 * 1024 * 1024,
                Duration::from_millis(15),
            )
            .expect("TCP b to a")
        });
        during();
    });
}

#[test]
fn totals_equal_the_kernel_counts_across_kills_of_agent_collector_and_postgres() {
    let test = "totals_equal_the_kernel_counts_across_kills_of_agent_collector_and_postgres";
    if !privileged(test) {
        return;
    }
    let Some(mut store) = Store::start_or_skip(test) else {
        return;
    };
    let (node, token_file) = store.add_node("e2e");

    // Host a (agent) and host b (collector, peer); tva-tvb carries the
    // counted traffic, tca-tcb the heartbeats.
    let link = Link::new();
    let mut collector = store.collector(&link.b, control_link(&link, COLLECTOR_PORT));

    let kernel_start = link.a.settle(&link.if_a).expect("stats");
    let collector_url = collector.url();
    let mut agent = Agent::start(&link.a, &reporting_args(&collector_url, &token_file));
    agent.wait_for(&link.if_a);

    // Each is away for longer than the heartbeat interval, while traffic
    // flows: the agent, the collector, PostgreSQL.
    let (before, away) = (Duration::from_millis(500), Duration::from_millis(2500));
    with_traffic(&link, || {
        thread::sleep(before);
        agent.kill9();
        thread::sleep(away);
        agent.restart();
    });
    with_traffic(&link, || {
        thread::sleep(before);
        collector.kill9();
        thread::sleep(away);
        collector.restart();
    });
    with_traffic(&link, || {
        thread::sleep(before);
        store.pg.kill9().expect("kill postgres");
        thread::sleep(away);
        store.pg.restart().expect("restart postgres");
    });

    // Traffic has stopped: the kernel's counts are final.
    let kernel: IfStats = link
        .a
        .settle(&link.if_a)
        .expect("stats")
        .checked_since(&kernel_start)
        .expect("counters only grow");
    assert!(kernel.rx_bytes > 3 * 16 * 1024 * 1024, "{kernel:?}");
    let expected = (kernel.rx_bytes, kernel.tx_bytes);

    // The agent's next heartbeats carry everything; then a clean stop sends
    // the last one.
    store.reconnect();
    let stored = store.wait_for_totals(&node.id, expected, Duration::from_secs(60));
    agent.stop();
    let after_stop = store.totals(&node.id);
    let context = || {
        format!(
            "agent log:\n{}\ncollector log (tail):\n{}",
            agent.log(),
            tail(&collector.log(), 60)
        )
    };
    assert_eq!(
        stored,
        Some(expected),
        "stored (download, upload) must equal the kernel's (rx, tx) of {}\n{}",
        link.if_a,
        context()
    );
    assert_eq!(
        after_stop,
        Some(expected),
        "nothing more after the stop\n{}",
        context()
    );
    let log = agent.log();
    assert!(
        log.contains("adopted"),
        "the restarted agent adopted its counters\n{log}"
    );
    // The outages really happened: the agent had to retry while the
    // collector was away.
    assert!(
        log.contains("collector reachable again"),
        "the agent saw the collector's outage\n{}",
        context()
    );
    assert!(
        log.contains("last heartbeat delivered"),
        "SIGTERM sends a last heartbeat\n{}",
        context()
    );
    // Both say at start which version (and commit) runs.
    let version = concat!("version=", env!("CARGO_PKG_VERSION"), " (");
    assert!(
        log.contains("tally-agent starting") && log.contains(version),
        "the agent logs its version at start\n{log}"
    );
    let collector_log = collector.log();
    assert!(
        collector_log.contains("tally-collector serving") && collector_log.contains(version),
        "the collector logs its version at start\n{}",
        tail(&collector_log, 60)
    );
}
