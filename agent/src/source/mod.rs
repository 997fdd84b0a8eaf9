//! Counter sources: where the agent's per-interface counters come from. The
//! eBPF source reads the pinned maps; the procfs source reads
//! `/proc/net/dev`, for hosts where eBPF cannot be used. The heartbeat code
//! reads either through [`CounterSource`].

mod ebpf;
mod procfs;

pub use ebpf::{EbpfSource, superseded_snapshot};
pub use procfs::{ProcfsSource, Rebase};
use serde::Serialize;

pub use tally_proto::v1::LinkKind;

use crate::system::LoadAvg;

/// Which source a snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The eBPF programs on the TC hooks (exact, restart-proof).
    Ebpf,
    /// `/proc/net/dev` (the kernel's interface statistics since boot).
    Procfs,
}

impl SourceKind {
    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Ebpf => "ebpf",
            SourceKind::Procfs => "procfs",
        }
    }
}

/// `#[serde(serialize_with = "serialize_kind")]`: a [`LinkKind`] as its
/// name in the contract ([`LinkKind::name`]), shared with the collector.
fn serialize_kind<S: serde::Serializer>(kind: &LinkKind, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind.name())
}

/// One interface's cumulative counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceCounters {
    pub name: String,
    pub ifindex: u32,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// `false` once the interface is gone or no longer counted (its last
    /// counts are still reported).
    pub attached: bool,
    /// The link's kind (`"veth"`, `"physical"`, ...: the contract's name,
    /// [`LinkKind::name`]). The sources leave it `unspecified`; the
    /// agent fills it from rtnetlink (still `unspecified` for the retired
    /// entry).
    #[serde(serialize_with = "serialize_kind")]
    pub kind: LinkKind,
    /// Whether the interface carries an IPv4 or IPv6 default route of the
    /// main table (filled like `kind`).
    pub default_route: bool,
    /// The ifindex of the interface's master (IFLA_MASTER: the bridge or
    /// bond it is a port of), 0 for none; filled like `kind` (0 for the
    /// retired entry and unknown interfaces).
    pub master_ifindex: u32,
    /// The ifindex of the device it is stacked on (IFLA_LINK: a vlan's or
    /// macvlan's parent), 0 for none, for a veth (whose IFLA_LINK is its
    /// peer), and for a parent in another namespace; filled like `kind`.
    pub link_ifindex: u32,
    /// The part of the counters above that were IPv4 packets, and IPv6
    /// packets; what is in neither (ARP, ...) is the rest. `None` when the
    /// source cannot tell (procfs, or eBPF counters of layout 1).
    pub ipv4: Option<FamilyCounters>,
    pub ipv6: Option<FamilyCounters>,
}

/// The bytes and packets of one address family on one interface, cumulative
/// like the totals they are part of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FamilyCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl From<tally_common::FamilyCounters> for FamilyCounters {
    fn from(counters: tally_common::FamilyCounters) -> Self {
        Self {
            rx_bytes: counters.rx_bytes,
            tx_bytes: counters.tx_bytes,
            rx_packets: counters.rx_packets,
            tx_packets: counters.tx_packets,
        }
    }
}

/// A reading of every counter, with what identifies where they started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub source: SourceKind,
    /// The counter set's epoch (eBPF: random, made with the pinned counters;
    /// procfs: derived from the boot id, as those counters start at boot).
    pub epoch: String,
    /// When the epoch began (Unix time, nanoseconds).
    pub epoch_created_unix_ns: u64,
    /// `true` when the counters started at zero with their epoch (eBPF);
    /// `false` when the first reading is only a baseline (procfs).
    pub starts_at_zero: bool,
    pub boot_id: String,
    pub load: LoadAvg,
    pub interfaces: Vec<InterfaceCounters>,
}

impl Snapshot {
    /// Totals over all reported interfaces: `(rx_bytes, tx_bytes)`.
    pub fn totals(&self) -> (u64, u64) {
        self.interfaces.iter().fold((0u64, 0u64), |(rx, tx), i| {
            (rx.saturating_add(i.rx_bytes), tx.saturating_add(i.tx_bytes))
        })
    }
}

/// A source of counter snapshots.
pub trait CounterSource {
    fn snapshot(&mut self) -> anyhow::Result<Snapshot>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
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
                InterfaceCounters {
                    name: "eth0".into(),
                    ifindex: 2,
                    rx_bytes: 10,
                    tx_bytes: 20,
                    rx_packets: 1,
                    tx_packets: 2,
                    attached: true,
                    kind: LinkKind::Physical,
                    default_route: true,
                    master_ifindex: 0,
                    link_ifindex: 0,
                    ipv4: Some(FamilyCounters {
                        rx_bytes: 6,
                        tx_bytes: 12,
                        rx_packets: 1,
                        tx_packets: 1,
                    }),
                    ipv6: Some(FamilyCounters::default()),
                },
                InterfaceCounters {
                    name: "veth9".into(),
                    ifindex: 9,
                    rx_bytes: u64::MAX,
                    tx_bytes: 5,
                    rx_packets: 1,
                    tx_packets: 1,
                    attached: false,
                    kind: LinkKind::Veth,
                    default_route: false,
                    master_ifindex: 4,
                    link_ifindex: 0,
                    ipv4: None,
                    ipv6: None,
                },
            ],
        }
    }

    #[test]
    fn totals_sum_and_saturate() {
        assert_eq!(snapshot().totals(), (u64::MAX, 25));
    }

    #[test]
    fn json_has_the_documented_shape() {
        let value = serde_json::to_value(snapshot()).expect("serialises");
        assert_eq!(value["epoch"], "00112233445566778899aabbccddeeff");
        assert_eq!(value["boot_id"], "6a1c0c0e-0000-4000-8000-000000000000");
        assert_eq!(value["source"], "ebpf");
        assert_eq!(value["load"]["one"], 0.5);
        assert_eq!(value["load"]["five"], 0.25);
        assert_eq!(value["load"]["fifteen"], 0.125);
        let iface = &value["interfaces"][1];
        for key in [
            "name",
            "ifindex",
            "rx_bytes",
            "tx_bytes",
            "rx_packets",
            "tx_packets",
        ] {
            assert!(iface.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["interfaces"][0]["kind"], "physical");
        assert_eq!(value["interfaces"][0]["default_route"], true);
        assert_eq!(iface["kind"], "veth");
        assert_eq!(iface["default_route"], false);
        assert_eq!(iface["master_ifindex"], 4);
        assert_eq!(iface["link_ifindex"], 0);
        // u64 counters stay exact integers in the agent's JSON.
        assert_eq!(iface["rx_bytes"].as_u64(), Some(u64::MAX));
    }

    #[test]
    fn families_are_in_the_json_or_null() {
        let value = serde_json::to_value(snapshot()).expect("serialises");
        let eth0 = &value["interfaces"][0];
        assert_eq!(
            eth0["ipv4"],
            serde_json::json!({"rx_bytes": 6, "tx_bytes": 12, "rx_packets": 1, "tx_packets": 1})
        );
        assert_eq!(eth0["ipv6"]["rx_bytes"], 0);
        // A source that cannot tell says so (null), rather than 0.
        let veth9 = &value["interfaces"][1];
        assert!(
            veth9["ipv4"].is_null() && veth9["ipv6"].is_null(),
            "{veth9}"
        );
        assert!(veth9.get("ipv4").is_some(), "the key is there");
    }

    #[test]
    fn family_counters_come_from_the_kernel_layout_field_by_field() {
        let kernel = tally_common::FamilyCounters {
            rx_bytes: 1,
            rx_packets: 2,
            tx_bytes: 3,
            tx_packets: 4,
        };
        assert_eq!(
            FamilyCounters::from(kernel),
            FamilyCounters {
                rx_bytes: 1,
                tx_bytes: 3,
                rx_packets: 2,
                tx_packets: 4,
            }
        );
    }
}
