//! tally's gRPC contract, `tally.v1` (see `proto/proto/tally/v1/heartbeat.proto`,
//! where every field is documented).

pub mod codec;

/// The `tally.v1` package: messages, the `Heartbeat` client and server.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tally.v1");
}

impl v1::LinkKind {
    /// Every kind, in the order of their numbers (checked by a test).
    pub const ALL: [Self; 13] = [
        Self::Unspecified,
        Self::Physical,
        Self::Vlan,
        Self::Bond,
        Self::Bridge,
        Self::ContainerBridge,
        Self::Veth,
        Self::Tun,
        Self::Tap,
        Self::Wireguard,
        Self::Macvlan,
        Self::Vxlan,
        Self::Other,
    ];

    /// The kind's name in JSON, logs and the database: `physical`, `vlan`,
    /// `bond`, `bridge`, `container_bridge`, `veth`, `tun`, `tap`,
    /// `wireguard`, `macvlan`, `vxlan`, `other`, or `unspecified`.
    pub fn name(self) -> &'static str {
        match self {
            v1::LinkKind::Unspecified => "unspecified",
            v1::LinkKind::Physical => "physical",
            v1::LinkKind::Vlan => "vlan",
            v1::LinkKind::Bond => "bond",
            v1::LinkKind::Bridge => "bridge",
            v1::LinkKind::ContainerBridge => "container_bridge",
            v1::LinkKind::Veth => "veth",
            v1::LinkKind::Tun => "tun",
            v1::LinkKind::Tap => "tap",
            v1::LinkKind::Wireguard => "wireguard",
            v1::LinkKind::Macvlan => "macvlan",
            v1::LinkKind::Vxlan => "vxlan",
            v1::LinkKind::Other => "other",
        }
    }
}

impl v1::StaleReason {
    /// Every reason, in the order of their numbers (checked by a test).
    pub const ALL: [Self; 5] = [
        Self::Unspecified,
        Self::EarlierReading,
        Self::Superseded,
        Self::OlderGeneration,
        Self::EarlierInBoot,
    ];

    /// The reason's name in JSON, events and the database:
    /// `earlier_reading`, `superseded`, `older_generation`,
    /// `earlier_in_boot`, or `unspecified`.
    pub fn name(self) -> &'static str {
        match self {
            v1::StaleReason::Unspecified => "unspecified",
            v1::StaleReason::EarlierReading => "earlier_reading",
            v1::StaleReason::Superseded => "superseded",
            v1::StaleReason::OlderGeneration => "older_generation",
            v1::StaleReason::EarlierInBoot => "earlier_in_boot",
        }
    }
}

impl v1::InterfaceState {
    /// Every state, in the order of their numbers (checked by a test).
    pub const ALL: [Self; 4] = [Self::Unspecified, Self::Attached, Self::Gone, Self::Retired];
}

/// The contract's loopback rule: an interface whose name begins with `lo`
/// (`lo`, and by the seed's rule every `lo*`) is loopback. Agents never
/// count one; a collector never sums one into a node's traffic, whoever
/// sent it.
pub fn is_loopback(interface_name: &str) -> bool {
    interface_name.starts_with("lo")
}

/// The status metadata (gRPC's retry pushback) by which the collector says
/// how many milliseconds to wait before sending again.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Limits every heartbeat is checked against (the contract's numbers).
pub mod limits {
    /// Most interface entries in one heartbeat.
    pub const MAX_INTERFACES: usize = 16_385;
    /// Longest interface name, in bytes.
    pub const MAX_INTERFACE_NAME: usize = 16;
    /// Longest epoch id, in bytes.
    pub const MAX_EPOCH: usize = 64;
    /// Longest boot id, in bytes.
    pub const MAX_BOOT_ID: usize = 64;
    /// Longest host name, in bytes.
    pub const MAX_HOSTNAME: usize = 253;
    /// Longest kernel release, in bytes.
    pub const MAX_KERNEL_RELEASE: usize = 256;
    /// Longest agent version, in bytes.
    pub const MAX_AGENT_VERSION: usize = 64;
    /// Longest source name, in bytes.
    pub const MAX_SOURCE: usize = 16;
    /// The most bytes one interface entry of a valid heartbeat takes on
    /// the wire, with its tag and length: a 16-byte name, ifindex, master
    /// and link at their largest, four counters and two families of four
    /// at 2^63 - 1, the state, kind and default route.
    pub const MAX_ENTRY_BYTES: usize = 169;
    /// The most bytes the other fields of a valid heartbeat take: the ids,
    /// names and versions at their longest, every number at its largest.
    pub const MAX_FIELDS_BYTES: usize = 804;
    /// Room for fields a newer agent may add (fields are only ever added
    /// within v1), so that an older collector still takes its heartbeats.
    pub const ROOM_FOR_NEW_FIELDS: usize = 64 * 1024;
    /// Largest encoded heartbeat the collector decodes: the largest valid
    /// one, and room for new fields (about 2.7 MiB).
    pub const MAX_MESSAGE_BYTES: usize =
        MAX_INTERFACES * MAX_ENTRY_BYTES + MAX_FIELDS_BYTES + ROOM_FOR_NEW_FIELDS;
    /// The shortest heartbeat interval an agent uses, in milliseconds.
    pub const MIN_INTERVAL_MS: u32 = 1_000;
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::{limits, v1};

    /// Each `ALL` lists every value of its enum, in order: exactly the
    /// numbers that decode, from 0 up.
    #[test]
    fn every_enum_value_is_listed() {
        fn check<E: Copy + PartialEq + std::fmt::Debug + TryFrom<i32>>(all: &[E]) {
            for (number, value) in (0..).zip(all) {
                assert_eq!(E::try_from(number).ok(), Some(*value), "{number}");
            }
            let past = i32::try_from(all.len()).unwrap_or(i32::MAX);
            assert!(E::try_from(past).is_err(), "{all:?} misses {past}");
        }
        check(&v1::LinkKind::ALL);
        check(&v1::StaleReason::ALL);
        check(&v1::InterfaceState::ALL);
    }

    /// A heartbeat at every limit of the contract.
    fn largest() -> v1::HeartbeatRequest {
        let max = i64::MAX as u64;
        let family = v1::FamilyCounters {
            rx_bytes: max,
            rx_packets: max,
            tx_bytes: max,
            tx_packets: max,
        };
        let entry = v1::InterfaceCounters {
            name: "x".repeat(limits::MAX_INTERFACE_NAME),
            ifindex: u32::MAX,
            rx_bytes: max,
            rx_packets: max,
            tx_bytes: max,
            tx_packets: max,
            state: v1::InterfaceState::Retired as i32,
            kind: v1::LinkKind::Other as i32,
            default_route: true,
            ipv4: Some(family),
            ipv6: Some(family),
            master_ifindex: u32::MAX,
            link_ifindex: u32::MAX,
        };
        v1::HeartbeatRequest {
            boot_id: "b".repeat(limits::MAX_BOOT_ID),
            epoch: "e".repeat(limits::MAX_EPOCH),
            epoch_created_unix_ns: max,
            counters_start_at_zero: true,
            sequence: max,
            agent_time_unix_ns: max,
            interfaces: vec![entry; limits::MAX_INTERFACES],
            load: Some(v1::LoadAverage {
                one: f64::MAX,
                five: f64::MAX,
                fifteen: f64::MAX,
            }),
            hostname: "h".repeat(limits::MAX_HOSTNAME),
            kernel_release: "k".repeat(limits::MAX_KERNEL_RELEASE),
            agent_version: "a".repeat(limits::MAX_AGENT_VERSION),
            source: "s".repeat(limits::MAX_SOURCE),
            last_of_boot: true,
            generation: max,
        }
    }

    #[test]
    fn the_message_limit_is_what_the_largest_valid_heartbeat_takes() {
        let heartbeat = largest();
        let entry = heartbeat.interfaces[0].encoded_len();
        assert_eq!(
            entry + 1 + prost::length_delimiter_len(entry),
            limits::MAX_ENTRY_BYTES
        );
        let fields = v1::HeartbeatRequest {
            interfaces: Vec::new(),
            ..heartbeat.clone()
        }
        .encoded_len();
        assert_eq!(fields, limits::MAX_FIELDS_BYTES);
        assert_eq!(
            heartbeat.encoded_len() + limits::ROOM_FOR_NEW_FIELDS,
            limits::MAX_MESSAGE_BYTES
        );
    }
}
