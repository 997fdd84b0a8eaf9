//! `veth-gro`: IPv6 and VLAN-tagged traffic in packets of several frames.
//! A second veth pair `tw0` (root namespace, counted) – `tw1` (its own
//! namespace) has GRO on at both ends and no segmentation offload
//! ([`ethtool::WIRE_LIKE`]: the kernel segments after the egress hook), an
//! IPv6 address at each end, and a VLAN device (id 10) on each end with an
//! IPv4 address. TCP over IPv6 and over the VLAN, and UDP with
//! segmentation offload (`UDP_SEGMENT`, received with `UDP_GRO`) over
//! IPv6, both ways: the egress hook sees IPv6 packets of up to 64 KiB, the
//! ingress hook IPv6 and VLAN-tagged frames that GRO merged. The agent counting `tw0` must equal
//! the kernel's statistics of `tw0`.
//!
//! A veth with GRO on receives through NAPI, where its statistics leave
//! the 14-byte Ethernet header out of every frame's bytes; the scenario
//! first shows that with datagrams of a known size, then compares with the
//! kernel's bytes plus 14 per frame (the host's `wire_frames` test does the
//! same).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, ensure};

use crate::{
    agent::Agent,
    ethtool,
    net::{Netns, Rtnl, sysctl},
    say,
    stats::{Counts, expect_exact},
    traffic::{Direction, Ends},
};

const COUNTED: &str = "tw0";
const PEER: &str = "tw1";
const COUNTED_VLAN: &str = "tw0.10";
const PEER_VLAN: &str = "tw1.10";
const ROOT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
const PEER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);
const ROOT_VLAN_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const PEER_VLAN_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const ETHERNET: u64 = 14;

pub fn veth_gro() -> anyhow::Result<()> {
    let peer_ns = Netns::create()?;
    let root = Rtnl::open()?;
    root.add_veth(COUNTED, PEER, &peer_ns)?;
    root.add_kind("vlan", COUNTED_VLAN, COUNTED)?;
    let mut features = ethtool::WIRE_LIKE.to_vec();
    features.push(("rx-gro", true));
    // Addresses usable at once (no duplicate address detection).
    sysctl(&format!("net/ipv6/conf/{COUNTED}/accept_dad"), "0")?;
    ethtool::set(COUNTED, &features)?;
    root.up(COUNTED)?;
    root.up(COUNTED_VLAN)?;
    root.address_v6(COUNTED, ROOT_V6)?;
    root.address(COUNTED_VLAN, ROOT_VLAN_IP)?;
    peer_ns.run(|| {
        let peer = Rtnl::open()?;
        peer.add_kind("vlan", PEER_VLAN, PEER)?;
        sysctl(&format!("net/ipv6/conf/{PEER}/accept_dad"), "0")?;
        ethtool::set(PEER, &features)?;
        peer.up(PEER)?;
        peer.up(PEER_VLAN)?;
        peer.up("lo")?;
        peer.address_v6(PEER, PEER_V6)?;
        peer.address(PEER_VLAN, PEER_VLAN_IP)
    })?;
    let v6 = Ends {
        root: IpAddr::from(ROOT_V6),
        peer: IpAddr::from(PEER_V6),
        peer_ns: &peer_ns,
    };
    let vlan = Ends {
        root: IpAddr::from(ROOT_VLAN_IP),
        peer: IpAddr::from(PEER_VLAN_IP),
        peer_ns: &peer_ns,
    };
    // Neighbours found, carrier up: one exchange each before counting.
    v6.tcp(Direction::Out, 1024)?;
    vlan.tcp(Direction::Out, 1024)?;
    say(&format!(
        "  {COUNTED}: {}",
        ethtool::Features::of(COUNTED)?.describe(&["rx-gro", "tx-tcp6-segmentation"])
    ));

    let mut agent = Agent::start(
        "agent-gro",
        "/sys/fs/bpf/tally-gro",
        &["--include", COUNTED, "--interval", "1s"],
    )?;
    agent.wait_attached(&[COUNTED])?;
    let result = (|| {
        napi_quirk(&agent, &vlan)?;
        let start = agent.readings(COUNTED)?;
        v6.tcp(Direction::In, 4 << 20)?;
        v6.tcp(Direction::Out, 4 << 20)?;
        check(&agent, start, "TCP over IPv6 both ways")?;
        let start = agent.readings(COUNTED)?;
        vlan.tcp(Direction::In, 4 << 20)?;
        vlan.tcp(Direction::Out, 4 << 20)?;
        check(&agent, start, "TCP over VLAN 10 both ways")?;
        let start = agent.readings(COUNTED)?;
        for (direction, way) in [(Direction::In, "in"), (Direction::Out, "out")] {
            let (datagrams, reads) = v6.udp_segmented(direction, 100, 20, 1_200)?;
            say(&format!(
                "  UDP GSO over IPv6 {way}: {datagrams} datagrams in {reads} reads"
            ));
            ensure!(
                reads < datagrams,
                "GRO merged no datagrams {way}; the case needs merged packets"
            );
        }
        check(&agent, start, "UDP GSO over IPv6 both ways")
    })();
    agent.stop_and_detach()?;
    result
}

/// 100 datagrams of 100 bytes in over the VLAN (the tag travels beside
/// the data): tally counts 14 + 20 + 8 + 100 bytes for each, the kernel 14
/// fewer. The pair's own chatter (IPv6 router solicitations and the like)
/// may add a frame or two, counted by both the same way.
fn napi_quirk(agent: &Agent, vlan: &Ends<'_>) -> anyhow::Result<()> {
    let (ours0, kernel0) = agent.readings(COUNTED)?;
    vlan.udp(Direction::In, 100, 100)?;
    let (ours, kernel) = agent.readings(COUNTED)?;
    let ours = ours.since(ours0)?;
    let kernel = kernel.since(kernel0)?;
    say(&format!(
        "  100 datagrams of 100 bytes in: kernel {kernel}; tally {ours}"
    ));
    let frame = ETHERNET + 20 + 8 + 100;
    ensure!(
        ours.rx_packets >= 100 && ours.rx_bytes >= 100 * frame,
        "tally counted less than 100 frames of {frame} bytes: {ours}"
    );
    ensure!(
        kernel.rx_packets == ours.rx_packets
            && kernel.rx_bytes + ETHERNET * kernel.rx_packets == ours.rx_bytes,
        "a veth receiving through NAPI was expected to count 14 bytes less per frame \
         than tally: kernel {kernel}, tally {ours}"
    );
    Ok(())
}

fn check(agent: &Agent, start: (Counts, Counts), what: &str) -> anyhow::Result<()> {
    let (ours, kernel) = agent.readings(COUNTED)?;
    let ours = ours.since(start.0).context("tally's counters")?;
    let kernel = kernel.since(start.1).context("the kernel's statistics")?;
    let wire = Counts {
        rx_bytes: kernel.rx_bytes + ETHERNET * kernel.rx_packets,
        tx_bytes: kernel.tx_bytes + ETHERNET * kernel.tx_packets,
        ..kernel
    };
    say(&format!(
        "  {what}: kernel {kernel} (+14 B per frame: {wire}); tally {ours}"
    ));
    expect_exact(what, ours, wire)
}
