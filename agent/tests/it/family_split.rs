//! The IPv4/IPv6 split (issue 6, item 5): on a veth pair between two quiet
//! namespaces, IPv4 and IPv6 UDP datagrams and non-IP frames of known sizes
//! are sent both ways; the agent's per-family counters must equal exactly
//! what was sent (computed from the packet sizes, Ethernet header included),
//! and IPv4 + IPv6 + the rest must equal the totals, which must equal the
//! kernel's interface statistics.
//!
//! "Quiet": static IPv4 and IPv6 neighbours (no ARP, no neighbour
//! discovery), IPv6 on the veth only, with no link-local address, no DAD, no
//! router solicitations and MLD reports sped up so they are over before the
//! counting starts; the test also waits until the link carries nothing
//! before it measures.

use crate::common;

use std::{
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use common::{Agent, assert_exact, netns, privileged, veth};
use tally_testkit::netns::{IfStats, Netns};

const ETHERNET: u64 = 14;
const IPV4_UDP: u64 = 20 + 8;
const IPV6_UDP: u64 = 40 + 8;
/// An EtherType for local experiments (IEEE 802): neither IPv4 nor IPv6.
const ETHERTYPE_EXPERIMENTAL: u16 = 0x88B5;

/// What one side sends: datagrams (or frames) and the payload of each. The
/// sizes and counts all differ, so that a mix-up of families or directions
/// cannot come out right by chance.
#[derive(Debug, Clone, Copy)]
struct Burst {
    count: u64,
    payload: usize,
}

const V4_B_TO_A: Burst = Burst {
    count: 300,
    payload: 100,
};
const V4_A_TO_B: Burst = Burst {
    count: 200,
    payload: 333,
};
const V6_B_TO_A: Burst = Burst {
    count: 250,
    payload: 150,
};
const V6_A_TO_B: Burst = Burst {
    count: 150,
    payload: 777,
};
/// Non-IP frames from b to a (the "rest").
const RAW_B_TO_A: Burst = Burst {
    count: 40,
    payload: 50,
};

/// Bytes and packets of one family on one interface, in both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Part {
    pub(crate) rx_bytes: u64,
    pub(crate) tx_bytes: u64,
    pub(crate) rx_packets: u64,
    pub(crate) tx_packets: u64,
}

impl Part {
    fn rx(burst: Burst, overhead: u64) -> Self {
        Self {
            rx_bytes: burst.count * (overhead + burst.payload as u64),
            rx_packets: burst.count,
            ..Self::default()
        }
    }

    fn tx(burst: Burst, overhead: u64) -> Self {
        Self {
            tx_bytes: burst.count * (overhead + burst.payload as u64),
            tx_packets: burst.count,
            ..Self::default()
        }
    }

    pub(crate) fn plus(self, o: Self) -> Self {
        Self {
            rx_bytes: self.rx_bytes + o.rx_bytes,
            tx_bytes: self.tx_bytes + o.tx_bytes,
            rx_packets: self.rx_packets + o.rx_packets,
            tx_packets: self.tx_packets + o.tx_packets,
        }
    }

    fn minus(self, o: Self) -> Self {
        let sub = |a: u64, b: u64, what: &str| {
            a.checked_sub(b)
                .unwrap_or_else(|| panic!("{what} went down: {a} < {b}"))
        };
        Self {
            rx_bytes: sub(self.rx_bytes, o.rx_bytes, "rx_bytes"),
            tx_bytes: sub(self.tx_bytes, o.tx_bytes, "tx_bytes"),
            rx_packets: sub(self.rx_packets, o.rx_packets, "rx_packets"),
            tx_packets: sub(self.tx_packets, o.tx_packets, "tx_packets"),
        }
    }

    fn from_json(value: &serde_json::Value, what: &str) -> Self {
        let n = |k: &str| {
            value[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{what}.{k} in {value}"))
        };
        Self {
            rx_bytes: n("rx_bytes"),
            tx_bytes: n("tx_bytes"),
            rx_packets: n("rx_packets"),
            tx_packets: n("tx_packets"),
        }
    }
}

/// One interface as `status --json` shows it: totals, IPv4, IPv6.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Split {
    pub(crate) total: Part,
    pub(crate) ipv4: Part,
    pub(crate) ipv6: Part,
}

impl Split {
    pub(crate) fn read(agent: &Agent, iface: &str) -> Self {
        let entry = agent
            .iface(iface)
            .unwrap_or_else(|| panic!("{iface} in status; agent log:\n{}", agent.log()));
        Self {
            total: Part::from_json(&entry, iface),
            ipv4: Part::from_json(&entry["ipv4"], "ipv4"),
            ipv6: Part::from_json(&entry["ipv6"], "ipv6"),
        }
    }

    pub(crate) fn since(&self, earlier: &Split) -> Split {
        Split {
            total: self.total.minus(earlier.total),
            ipv4: self.ipv4.minus(earlier.ipv4),
            ipv6: self.ipv6.minus(earlier.ipv6),
        }
    }

    /// What is neither IPv4 nor IPv6.
    fn rest(&self) -> Part {
        self.total.minus(self.ipv4).minus(self.ipv6)
    }
}

/// Two namespaces joined by a quiet veth pair with IPv4 and IPv6 addresses.
pub(crate) struct DualStack {
    pub(crate) a: Netns,
    pub(crate) b: Netns,
    pub(crate) v4: (Ipv4Addr, Ipv4Addr),
    pub(crate) v6: (Ipv6Addr, Ipv6Addr),
    mac_a: [u8; 6],
}

pub(crate) const IF_A: &str = "tfa";
pub(crate) const IF_B: &str = "tfb";
const SUBNET: u8 = 61;

impl DualStack {
    pub(crate) fn new() -> Self {
        let a = netns("fa");
        let b = netns("fb");
        // IPv4 addresses and static neighbours; still down.
        let pair = veth(IF_A, IF_B, SUBNET);
        pair.create(&a, &b).expect("the veth pair");
        let v6 = (
            Ipv6Addr::new(0xfd7a, 0x11, u16::from(SUBNET), 0, 0, 0, 0, 1),
            Ipv6Addr::new(0xfd7a, 0x11, u16::from(SUBNET), 0, 0, 0, 0, 2),
        );
        for (ns, iface, ip, peer_ip, peer_mac) in [
            (&a, IF_A, v6.0, v6.1, pair.b.mac_text()),
            (&b, IF_B, v6.1, v6.0, pair.a.mac_text()),
        ] {
            quiet_ipv6(ns, iface);
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                iface,
                "nodad",
            ])
            .expect("IPv6 address");
            ns.ip(&[
                "-6",
                "neigh",
                "replace",
                &peer_ip.to_string(),
                "lladdr",
                &peer_mac,
                "dev",
                iface,
                "nud",
                "permanent",
            ])
            .expect("IPv6 neighbour");
        }
        pair.set_up(&a, &b).expect("the veth pair up");
        let net = Self {
            a,
            b,
            v4: (pair.a.addr, pair.b.addr),
            v6,
            mac_a: pair.a.mac,
        };
        net.wait_quiet();
        net
    }

    /// Waits until nothing crosses the link for a whole second (what the
    /// link's coming up set off, MLD reports above all, is over by then).
    fn wait_quiet(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = self.a.kernel_stats(IF_A).expect("stats");
        let mut still_since = Instant::now();
        while still_since.elapsed() < Duration::from_secs(1) {
            assert!(
                Instant::now() < deadline,
                "the link did not fall quiet within 20 s: {last:?}"
            );
            thread::sleep(Duration::from_millis(100));
            let now = self.a.kernel_stats(IF_A).expect("stats");
            if now != last {
                last = now;
                still_since = Instant::now();
            }
        }
    }
}

/// IPv6 on `iface` only, with nothing sent unasked: no link-local address,
/// no duplicate address detection, no router solicitations, no router
/// advertisements taken, and MLD's unsolicited reports (sent when a group is
/// joined) within milliseconds instead of up to a second apart. Set while
/// the interface is down and IPv6 still off on it.
fn quiet_ipv6(ns: &Netns, iface: &str) {
    for (name, value) in [
        ("addr_gen_mode", "1"),
        ("accept_ra", "0"),
        ("router_solicitations", "0"),
        ("accept_dad", "0"),
        ("dad_transmits", "0"),
        ("mldv1_unsolicited_report_interval", "10"),
        ("mldv2_unsolicited_report_interval", "10"),
        ("disable_ipv6", "0"),
    ] {
        ns.sysctl(&format!("net.ipv6.conf.{iface}.{name}"), value)
            .expect("sysctl");
    }
}

/// Sends `burst` as UDP datagrams from `from_ip` in `from` to a socket on
/// `to_ip` in `to`, paced so that the veth's backlog never overflows. The
/// receiving socket is returned: it must stay open until the counting is
/// over (a datagram to a closed port would bring an ICMP error back).
fn udp(from: &Netns, to: &Netns, from_ip: IpAddr, to_ip: IpAddr, burst: Burst) -> UdpSocket {
    let receiver = to
        .run(move || UdpSocket::bind(SocketAddr::new(to_ip, 0)).expect("bind"))
        .expect("run in the namespace");
    let target = receiver.local_addr().expect("addr");
    let sender = from
        .run(move || UdpSocket::bind(SocketAddr::new(from_ip, 0)).expect("bind"))
        .expect("run in the namespace");
    let payload = vec![0x5a_u8; burst.payload];
    for i in 0..burst.count {
        let sent = sender.send_to(&payload, target).expect("send");
        assert_eq!(sent, burst.payload);
        if i % 100 == 99 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    receiver
}

/// Sends `burst` as Ethernet frames of an experimental EtherType out of
/// `iface` in `from` to `dst_mac` (an AF_PACKET socket; they cross the link
/// and are dropped by the receiving stack after its statistics and our
/// ingress hook counted them).
fn raw_frames(from: &Netns, iface: &'static str, dst_mac: [u8; 6], burst: Burst) {
    from.run(move || {
        let ifname = std::ffi::CString::new(iface).expect("name");
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        assert_ne!(ifindex, 0, "{iface}: {}", std::io::Error::last_os_error());
        let protocol = ETHERTYPE_EXPERIMENTAL.to_be();
        // SAFETY: plain socket creation.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: all-zero is a valid sockaddr_ll to fill in.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&dst_mac);
        let mut frame = Vec::with_capacity(14 + burst.payload);
        frame.extend_from_slice(&dst_mac);
        frame.extend_from_slice(&[0x02, 0x7a, 0x11, SUBNET, 0x00, 0x02]);
        frame.extend_from_slice(&ETHERTYPE_EXPERIMENTAL.to_be_bytes());
        frame.resize(14 + burst.payload, 0xa5);
        for _ in 0..burst.count {
            // SAFETY: frame and addr are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const addr).cast(),
                    mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                sent,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: closing the socket made above.
        unsafe { libc::close(fd) };
    })
    .expect("run in the namespace");
}

#[test]
fn ipv4_and_ipv6_of_known_sizes_are_split_exactly() {
    if !privileged("ipv4_and_ipv6_of_known_sizes_are_split_exactly") {
        return;
    }
    let net = DualStack::new();
    let mut agent_a = Agent::start(&net.a, &[]);
    let mut agent_b = Agent::start(&net.b, &[]);
    agent_a.wait_for(IF_A);
    agent_b.wait_for(IF_B);
    net.wait_quiet();

    let kernel_a0 = net.a.kernel_stats(IF_A).expect("stats of a");
    let kernel_b0 = net.b.kernel_stats(IF_B).expect("stats of b");
    let ours_a0 = Split::read(&agent_a, IF_A);
    let ours_b0 = Split::read(&agent_b, IF_B);

    let (v4_a, v4_b) = (IpAddr::V4(net.v4.0), IpAddr::V4(net.v4.1));
    let (v6_a, v6_b) = (IpAddr::V6(net.v6.0), IpAddr::V6(net.v6.1));
    let _receivers = [
        udp(&net.b, &net.a, v4_b, v4_a, V4_B_TO_A),
        udp(&net.a, &net.b, v4_a, v4_b, V4_A_TO_B),
        udp(&net.b, &net.a, v6_b, v6_a, V6_B_TO_A),
        udp(&net.a, &net.b, v6_a, v6_b, V6_A_TO_B),
    ];
    raw_frames(&net.b, IF_B, net.mac_a, RAW_B_TO_A);

    let grown = "counters only grow";
    let kernel_a = net.a.settle(IF_A).expect("stats of a");
    let kernel_a = kernel_a.checked_since(&kernel_a0).expect(grown);
    let kernel_b = net.b.settle(IF_B).expect("stats of b");
    let kernel_b = kernel_b.checked_since(&kernel_b0).expect(grown);
    let ours_a = Split::read(&agent_a, IF_A).since(&ours_a0);
    let ours_b = Split::read(&agent_b, IF_B).since(&ours_b0);

    // What was sent, seen from a: rx is what b sent, tx what a sent.
    let ipv4_a =
        Part::rx(V4_B_TO_A, ETHERNET + IPV4_UDP).plus(Part::tx(V4_A_TO_B, ETHERNET + IPV4_UDP));
    let ipv6_a =
        Part::rx(V6_B_TO_A, ETHERNET + IPV6_UDP).plus(Part::tx(V6_A_TO_B, ETHERNET + IPV6_UDP));
    let rest_a = Part::rx(RAW_B_TO_A, ETHERNET);
    // And from b, the other way round.
    let ipv4_b =
        Part::tx(V4_B_TO_A, ETHERNET + IPV4_UDP).plus(Part::rx(V4_A_TO_B, ETHERNET + IPV4_UDP));
    let ipv6_b =
        Part::tx(V6_B_TO_A, ETHERNET + IPV6_UDP).plus(Part::rx(V6_A_TO_B, ETHERNET + IPV6_UDP));
    let rest_b = Part::tx(RAW_B_TO_A, ETHERNET);

    for (side, ours, ipv4, ipv6, rest, kernel) in [
        ("namespace a", ours_a, ipv4_a, ipv6_a, rest_a, kernel_a),
        ("namespace b", ours_b, ipv4_b, ipv6_b, rest_b, kernel_b),
    ] {
        assert_eq!(ours.ipv4, ipv4, "{side}: IPv4 counted vs sent");
        assert_eq!(ours.ipv6, ipv6, "{side}: IPv6 counted vs sent");
        assert_eq!(
            ours.rest(),
            rest,
            "{side}: neither IPv4 nor IPv6, counted vs sent"
        );
        assert_eq!(
            ours.total,
            ipv4.plus(ipv6).plus(rest),
            "{side}: totals = IPv4 + IPv6 + rest"
        );
        assert_exact(
            side,
            &IfStats {
                rx_bytes: ours.total.rx_bytes,
                tx_bytes: ours.total.tx_bytes,
                rx_packets: ours.total.rx_packets,
                tx_packets: ours.total.tx_packets,
                ..IfStats::default()
            },
            &kernel,
        );
    }
}
