//! Turning a reading into a `tally.v1.HeartbeatRequest`.

use std::ffi::CStr;

use tally_proto::{
    limits,
    v1::{self, HeartbeatRequest, InterfaceState, LoadAverage},
};

use super::reading::Reading;
use crate::{
    ebpf::maps::RETIRED_NAME,
    source::{FamilyCounters, InterfaceCounters},
};

/// What a heartbeat says about the node besides its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub hostname: String,
    pub kernel_release: String,
    pub agent_version: String,
}

impl NodeInfo {
    /// This host, now (`uname`): the host name may change while the agent runs.
    pub fn current() -> Self {
        // SAFETY: utsname is plain old data; uname fills it in.
        let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `uts` is a valid utsname to write to.
        let ok = unsafe { libc::uname(&mut uts) } == 0;
        let field = |chars: &[libc::c_char]| {
            if !ok {
                return String::new();
            }
            // SAFETY: uname NUL-terminates every field within its array.
            unsafe { CStr::from_ptr(chars.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        };
        Self {
            hostname: field(&uts.nodename),
            kernel_release: field(&uts.release),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// The heartbeat for one reading of the counter set of `generation`.
pub fn build(reading: &Reading, node: &NodeInfo, generation: u64) -> HeartbeatRequest {
    let snapshot = &reading.snapshot;
    HeartbeatRequest {
        boot_id: clip(&snapshot.boot_id, limits::MAX_BOOT_ID),
        epoch: clip(&snapshot.epoch, limits::MAX_EPOCH),
        epoch_created_unix_ns: snapshot.epoch_created_unix_ns,
        counters_start_at_zero: snapshot.starts_at_zero,
        sequence: reading.sequence,
        agent_time_unix_ns: reading.taken_unix_ns,
        interfaces: snapshot.interfaces.iter().map(interface).collect(),
        load: Some(LoadAverage {
            one: snapshot.load.one,
            five: snapshot.load.five,
            fifteen: snapshot.load.fifteen,
        }),
        hostname: clip(&node.hostname, limits::MAX_HOSTNAME),
        kernel_release: clip(&node.kernel_release, limits::MAX_KERNEL_RELEASE),
        agent_version: clip(&node.agent_version, limits::MAX_AGENT_VERSION),
        source: snapshot.source.as_str().to_owned(),
        last_of_boot: false,
        generation,
    }
}

fn interface(counters: &InterfaceCounters) -> v1::InterfaceCounters {
    let state = state(counters);
    // The retired entry is no link: it has no kind, carries no route and is
    // stacked on nothing.
    let retired = state == InterfaceState::Retired;
    v1::InterfaceCounters {
        name: clip(&counters.name, limits::MAX_INTERFACE_NAME),
        ifindex: counters.ifindex,
        rx_bytes: counters.rx_bytes,
        rx_packets: counters.rx_packets,
        tx_bytes: counters.tx_bytes,
        tx_packets: counters.tx_packets,
        state: state.into(),
        kind: if retired {
            v1::LinkKind::Unspecified
        } else {
            counters.kind
        }
        .into(),
        default_route: counters.default_route && !retired,
        master_ifindex: if retired { 0 } else { counters.master_ifindex },
        link_ifindex: if retired { 0 } else { counters.link_ifindex },
        ipv4: counters.ipv4.as_ref().map(family),
        ipv6: counters.ipv6.as_ref().map(family),
    }
}

/// One address family's part of an interface's counters.
fn family(counters: &FamilyCounters) -> v1::FamilyCounters {
    v1::FamilyCounters {
        rx_bytes: counters.rx_bytes,
        rx_packets: counters.rx_packets,
        tx_bytes: counters.tx_bytes,
        tx_packets: counters.tx_packets,
    }
}

/// The retired entry (ifindex 0, named `(retired)`), an interface that went
/// away, or one that is counted.
fn state(counters: &InterfaceCounters) -> InterfaceState {
    if counters.ifindex == 0 && counters.name == RETIRED_NAME {
        InterfaceState::Retired
    } else if !counters.attached || counters.ifindex == 0 {
        // ifindex 0 otherwise: a procfs interface that vanished mid-reading.
        InterfaceState::Gone
    } else {
        InterfaceState::Attached
    }
}

/// `text` within the contract: control characters (which the collector
/// refuses, and which a host or interface name may hold) replaced by `?`,
/// at most `max` bytes, cut at a character boundary (names the kernel
/// gives are far shorter).
fn clip(text: &str, max: usize) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        source::{Snapshot, SourceKind},
        system::LoadAvg,
    };

    fn iface(name: &str, ifindex: u32, attached: bool) -> InterfaceCounters {
        InterfaceCounters {
            name: name.into(),
            ifindex,
            rx_bytes: 1_000 + u64::from(ifindex),
            tx_bytes: 2_000 + u64::from(ifindex),
            rx_packets: 10,
            tx_packets: 20,
            attached,
            kind: v1::LinkKind::Physical,
            default_route: ifindex == 2,
            master_ifindex: if ifindex == 9 { 4 } else { 0 },
            link_ifindex: if ifindex == 2 { 0 } else { 3 },
            // eth0 has the split; the others stand for a source without it.
            ipv4: (ifindex == 2).then_some(FamilyCounters {
                rx_bytes: 600,
                tx_bytes: 1_200,
                rx_packets: 6,
                tx_packets: 12,
            }),
            ipv6: (ifindex == 2).then_some(FamilyCounters {
                rx_bytes: 300,
                tx_bytes: 500,
                rx_packets: 3,
                tx_packets: 5,
            }),
        }
    }

    fn reading() -> Reading {
        Reading {
            snapshot: Snapshot {
                source: SourceKind::Ebpf,
                epoch: "00112233445566778899aabbccddeeff".into(),
                epoch_created_unix_ns: 1_700_000_000_000_000_000,
                starts_at_zero: true,
                boot_id: "6a1c0c0e-0000-4000-8000-000000000000".into(),
                load: LoadAvg {
                    one: 0.5,
                    five: 0.25,
                    fifteen: 0.125,
                },
                interfaces: vec![
                    iface(RETIRED_NAME, 0, false),
                    iface("eth0", 2, true),
                    iface("veth9", 9, false),
                ],
            },
            sequence: 123_456_789,
            taken_unix_ns: 1_700_000_001_000_000_000,
        }
    }

    fn node() -> NodeInfo {
        NodeInfo {
            hostname: "web-1".into(),
            kernel_release: "6.18.44".into(),
            agent_version: "0.1.0".into(),
        }
    }

    #[test]
    fn every_field_is_carried() {
        let request = build(&reading(), &node(), 7);
        assert_eq!(request.generation, 7);
        assert_eq!(request.boot_id, "6a1c0c0e-0000-4000-8000-000000000000");
        assert_eq!(request.epoch, "00112233445566778899aabbccddeeff");
        assert_eq!(request.epoch_created_unix_ns, 1_700_000_000_000_000_000);
        assert!(request.counters_start_at_zero);
        assert_eq!(request.sequence, 123_456_789);
        assert_eq!(request.agent_time_unix_ns, 1_700_000_001_000_000_000);
        assert_eq!(
            request.load,
            Some(LoadAverage {
                one: 0.5,
                five: 0.25,
                fifteen: 0.125
            })
        );
        assert_eq!(request.hostname, "web-1");
        assert_eq!(request.kernel_release, "6.18.44");
        assert_eq!(request.agent_version, "0.1.0");
        assert_eq!(request.source, "ebpf");
        let eth0 = &request.interfaces[1];
        assert_eq!(
            (
                eth0.name.as_str(),
                eth0.ifindex,
                eth0.rx_bytes,
                eth0.tx_bytes
            ),
            ("eth0", 2, 1_002, 2_002)
        );
        assert_eq!((eth0.rx_packets, eth0.tx_packets), (10, 20));
        assert_eq!(eth0.kind(), v1::LinkKind::Physical);
        assert!(eth0.default_route);
        let veth9 = &request.interfaces[2];
        assert_eq!(veth9.kind(), v1::LinkKind::Physical);
        assert!(!veth9.default_route);
        assert_eq!((eth0.master_ifindex, eth0.link_ifindex), (0, 0));
        assert_eq!((veth9.master_ifindex, veth9.link_ifindex), (4, 3));
    }

    #[test]
    fn interface_states() {
        let request = build(&reading(), &node(), 1);
        let states: Vec<InterfaceState> = request.interfaces.iter().map(|i| i.state()).collect();
        assert_eq!(
            states,
            [
                InterfaceState::Retired,
                InterfaceState::Attached,
                InterfaceState::Gone
            ]
        );
        assert_eq!(state(&iface("eth7", 0, true)), InterfaceState::Gone);
    }

    #[test]
    fn the_retired_entry_has_no_kind_no_route_and_no_stacking() {
        let mut reading = reading();
        reading.snapshot.interfaces[0].default_route = true;
        reading.snapshot.interfaces[0].master_ifindex = 4;
        let request = build(&reading, &node(), 1);
        let retired = &request.interfaces[0];
        assert_eq!(retired.state(), InterfaceState::Retired);
        assert_eq!(retired.kind(), v1::LinkKind::Unspecified);
        assert!(!retired.default_route);
        assert_eq!((retired.master_ifindex, retired.link_ifindex), (0, 0));
    }

    #[test]
    fn procfs_readings_say_so() {
        let mut reading = reading();
        reading.snapshot.source = SourceKind::Procfs;
        reading.snapshot.starts_at_zero = false;
        let request = build(&reading, &node(), 1);
        assert_eq!(request.source, "procfs");
        assert!(!request.counters_start_at_zero);
    }

    #[test]
    fn families_are_carried_or_left_unset() {
        let request = build(&reading(), &node(), 1);
        let eth0 = &request.interfaces[1];
        assert_eq!(
            eth0.ipv4,
            Some(v1::FamilyCounters {
                rx_bytes: 600,
                rx_packets: 6,
                tx_bytes: 1_200,
                tx_packets: 12,
            })
        );
        assert_eq!(
            eth0.ipv6,
            Some(v1::FamilyCounters {
                rx_bytes: 300,
                rx_packets: 3,
                tx_bytes: 500,
                tx_packets: 5,
            })
        );
        // A source that cannot tell leaves them unset (not zero).
        let veth9 = &request.interfaces[2];
        assert_eq!((veth9.ipv4, veth9.ipv6), (None, None));
    }

    #[test]
    fn long_texts_are_clipped_to_the_limits() {
        let mut node = node();
        node.hostname = "é".repeat(200); // 400 bytes
        let request = build(&reading(), &node, 1);
        assert!(request.hostname.len() <= limits::MAX_HOSTNAME);
        assert_eq!(request.hostname.len(), 252, "cut at a character boundary");
        assert_eq!(clip("eth0", 16), "eth0");
        assert_eq!(
            clip("et\0h\n0\u{85}", 16),
            "et?h?0?",
            "no control character"
        );
    }

    #[test]
    fn this_host_is_described() {
        let node = NodeInfo::current();
        assert!(!node.hostname.is_empty());
        assert_eq!(
            crate::system::parse_kernel_release(&node.kernel_release),
            crate::system::Probe::current().kernel
        );
        assert_eq!(node.agent_version, env!("CARGO_PKG_VERSION"));
    }
}
