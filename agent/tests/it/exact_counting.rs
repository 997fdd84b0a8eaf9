//! Promise 1 (exact): on an interface the agent is attached to, its byte and
//! packet counters equal the kernel's interface statistics over the same
//! interval, exactly; loopback is never counted.

use crate::common;

use std::time::Duration;

use common::{Agent, Link, assert_exact, privileged, tcx_programs};
use tally_testkit::traffic::{tcp_transfer, udp_burst};

const TCP_BYTES: usize = 20 * 1024 * 1024;
const UDP_DATAGRAMS: usize = 25_000;

#[test]
fn counts_equal_the_kernel_statistics_both_ways() {
    if !privileged("counts_equal_the_kernel_statistics_both_ways") {
        return;
    }
    let link = Link::new();
    let mut agent_a = Agent::start(&link.a, &[]);
    let mut agent_b = Agent::start(&link.b, &[]);
    agent_a.wait_for(&link.if_a);
    agent_b.wait_for(&link.if_b);

    let kernel_a0 = link.a.settle(&link.if_a).expect("stats of a");
    let kernel_b0 = link.b.settle(&link.if_b).expect("stats of b");
    let ours_a0 = agent_a.counters(&link.if_a);
    let ours_b0 = agent_b.counters(&link.if_b);

    // At least 20 MB of TCP and 50,000 small UDP datagrams, each way.
    tcp_transfer(&link.b, &link.a, link.ip_a, TCP_BYTES, Duration::ZERO).expect("TCP b to a");
    tcp_transfer(&link.a, &link.b, link.ip_b, TCP_BYTES, Duration::ZERO).expect("TCP a to b");
    udp_burst(&link.b, link.ip_b, &link.a, link.ip_a, UDP_DATAGRAMS, 32).expect("UDP b to a");
    udp_burst(&link.a, link.ip_a, &link.b, link.ip_b, UDP_DATAGRAMS, 32).expect("UDP a to b");

    let grown = "counters only grow";
    let kernel_a = link.a.settle(&link.if_a).expect("stats of a");
    let kernel_a = kernel_a.checked_since(&kernel_a0).expect(grown);
    let kernel_b = link.b.settle(&link.if_b).expect("stats of b");
    let kernel_b = kernel_b.checked_since(&kernel_b0).expect(grown);
    let ours_a = agent_a
        .counters(&link.if_a)
        .checked_since(&ours_a0)
        .expect(grown);
    let ours_b = agent_b
        .counters(&link.if_b)
        .checked_since(&ours_b0)
        .expect(grown);

    assert!(
        kernel_a.rx_bytes >= TCP_BYTES as u64 && kernel_a.tx_bytes >= TCP_BYTES as u64,
        "{kernel_a:?}"
    );
    assert!(kernel_a.rx_packets >= UDP_DATAGRAMS as u64, "{kernel_a:?}");
    assert_exact("namespace a", &ours_a, &kernel_a);
    assert_exact("namespace b", &ours_b, &kernel_b);
}

#[test]
fn loopback_is_not_counted() {
    if !privileged("loopback_is_not_counted") {
        return;
    }
    let link = Link::new();
    let mut agent = Agent::start(&link.a, &[]);
    agent.wait_for(&link.if_a);
    let before = agent.status().expect("status");

    // Traffic over lo inside the namespace.
    let lo = std::net::Ipv4Addr::LOCALHOST;
    tcp_transfer(&link.a, &link.a, lo, 4 * 1024 * 1024, Duration::ZERO).expect("TCP over lo");
    udp_burst(&link.a, lo, &link.a, lo, 1_000, 64).expect("UDP over lo");
    let kernel_lo = link.a.settle("lo").expect("stats of lo");
    assert!(
        kernel_lo.rx_bytes >= 4 * 1024 * 1024,
        "the kernel saw the loopback traffic"
    );

    let after = agent.status().expect("status");
    let names: Vec<&str> = after["interfaces"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("lo")),
        "no loopback entry: {names:?}"
    );
    assert_eq!(
        before["interfaces"], after["interfaces"],
        "nothing moved on the counted interfaces"
    );
    assert!(
        tcx_programs(&link.a, "lo").is_empty(),
        "no program on lo (kernel's view)"
    );
    let on_veth = tcx_programs(&link.a, &link.if_a);
    let names: Vec<&str> = on_veth.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["tally_ingress", "tally_egress"],
        "kernel's view of the veth"
    );
}
