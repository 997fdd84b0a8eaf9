//! The agent tests' hosts, named and numbered their way on tally-testkit's
//! [`Netns`] and [`VethPair`]: [`netns`] makes a test host, [`veth`] numbers
//! a veth pair, [`Link`] is the usual scene (two hosts joined by one pair)
//! and [`veth_counted_from_birth`] adds a pair the agent counts from its
//! first packet.

use std::net::Ipv4Addr;

use tally_testkit::netns::{Netns, VethPair};

use super::{Agent, unique};

/// A namespace of this test process (`tally-t<pid>-<n>-<tag>`), with IPv6
/// off and `lo` up; deleted on drop, with its devices.
pub fn netns(tag: &str) -> Netns {
    let name = format!("tally-t{}-{}-{tag}", std::process::id(), unique());
    Netns::create_host(name).expect("a test namespace")
}

/// The veth pair `if_a` — `if_b` of the tests' numbering: addresses
/// 10.213.`subnet`.1 and .2, MAC addresses 02:7a:11:`subnet`:00:01 and
/// :00:02. Made by [`VethPair::create`].
pub fn veth(if_a: &str, if_b: &str, subnet: u8) -> VethPair {
    VethPair::new(if_a, if_b, [10, 213, subnet], [0x02, 0x7a, 0x11, subnet])
}

/// Two namespaces joined by a veth pair (`tva` in a, `tvb` in b, subnet 1)
/// with static neighbours, up.
pub struct Link {
    pub a: Netns,
    pub b: Netns,
    pub if_a: String,
    pub if_b: String,
    pub ip_a: Ipv4Addr,
    pub ip_b: Ipv4Addr,
}

impl Link {
    pub fn new() -> Self {
        let a = netns("a");
        let b = netns("b");
        let pair = veth("tva", "tvb", 1);
        pair.create(&a, &b).expect("the veth pair");
        pair.set_up(&a, &b).expect("the veth pair up");
        Self {
            a,
            b,
            if_a: pair.a.iface,
            if_b: pair.b.iface,
            ip_a: pair.a.addr,
            ip_b: pair.b.addr,
        }
    }
}

/// A veth pair created while `agent` runs in `link.a`, brought up only once
/// the agent counts it (so every packet it ever carried was counted);
/// returns the address of its end in `a`.
pub fn veth_counted_from_birth(
    link: &Link,
    agent: &mut Agent,
    name: &str,
    peer: &str,
    subnet: u8,
) -> Ipv4Addr {
    let pair = veth(name, peer, subnet);
    pair.create(&link.a, &link.b).expect("the veth pair");
    agent.wait_for(name);
    pair.set_up(&link.a, &link.b).expect("the veth pair up");
    pair.a.addr
}
