//! The eBPF counter source: the pinned maps (and, once, the final counts of
//! a set of an older layout that the agent took over).

use super::{CounterSource, FamilyCounters, InterfaceCounters, LinkKind, Snapshot, SourceKind};
use crate::{
    ebpf::{
        epoch_hex,
        legacy::SupersededSet,
        maps::{IfaceRecord, PinnedMaps},
    },
    pins::PinLayout,
    system,
};

/// Reads the counters pinned under one pin directory.
pub struct EbpfSource {
    layout: PinLayout,
    maps: Option<PinnedMaps>,
}

impl EbpfSource {
    pub fn new(layout: PinLayout) -> Self {
        Self { layout, maps: None }
    }
}

impl CounterSource for EbpfSource {
    fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let maps = match self.maps.take() {
            Some(maps) => maps,
            None => PinnedMaps::open(&self.layout)?,
        };
        let dir = self.layout.dir().display().to_string();
        let meta = maps.checked_meta(&dir)?.ok_or_else(|| {
            anyhow::anyhow!(
                "the counters in {dir} have no epoch yet (is an agent starting right now?)"
            )
        })?;
        let interfaces = maps
            .records()?
            .iter()
            .map(|record| entry(record, Families::Counted))
            .collect();
        self.maps = Some(maps);
        Ok(Snapshot {
            source: SourceKind::Ebpf,
            epoch: epoch_hex(&meta.epoch),
            epoch_created_unix_ns: meta.created_unix_ns,
            starts_at_zero: true,
            boot_id: system::boot_id()?,
            load: system::load_average()?,
            interfaces,
        })
    }
}

/// Whether a counter set counted the address families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Families {
    Counted,
    /// A set of layout 1, from before the family split.
    Unknown,
}

/// One interface's entry in a snapshot.
fn entry(record: &IfaceRecord, families: Families) -> InterfaceCounters {
    let counters = &record.counters;
    let family = |part| (families == Families::Counted).then(|| FamilyCounters::from(part));
    InterfaceCounters {
        name: record.name(),
        ifindex: record.ifindex,
        rx_bytes: counters.rx_bytes,
        tx_bytes: counters.tx_bytes,
        rx_packets: counters.rx_packets,
        tx_packets: counters.tx_packets,
        attached: record.is_attached(),
        // Filled by the agent from rtnetlink (crate::links).
        kind: LinkKind::Unspecified,
        default_route: false,
        master_ifindex: 0,
        link_ifindex: 0,
        ipv4: family(counters.ipv4),
        ipv6: family(counters.ipv6),
    }
}

/// The last reading of a counter set that an agent of an older layout made
/// and this one took over (see [`crate::ebpf::legacy`]): its own epoch, its
/// final counts, the family split if that layout had one. Reported once,
/// as that epoch's last heartbeat.
pub fn superseded_snapshot(set: &SupersededSet) -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        source: SourceKind::Ebpf,
        epoch: epoch_hex(&set.epoch),
        epoch_created_unix_ns: set.created_unix_ns,
        starts_at_zero: true,
        boot_id: system::boot_id()?,
        load: system::load_average()?,
        interfaces: set
            .records
            .iter()
            .map(|record| {
                let families = if set.has_families() {
                    Families::Counted
                } else {
                    Families::Unknown
                };
                entry(record, families)
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use tally_common::{
        FamilyCounters as KernelFamily, IFACE_ATTACHED, IfCounters, IfaceInfo, RETIRED_IFINDEX,
    };

    use super::*;
    use crate::ebpf::maps::{RETIRED_NAME, name_to_bytes};

    fn record(ifindex: u32) -> IfaceRecord {
        let family = |n: u64| KernelFamily {
            rx_bytes: n,
            rx_packets: n / 100,
            tx_bytes: 2 * n,
            tx_packets: n / 50,
        };
        IfaceRecord {
            ifindex,
            info: (ifindex != RETIRED_IFINDEX).then(|| IfaceInfo {
                name: name_to_bytes("eth0"),
                state: IFACE_ATTACHED,
                attach_mode: 1,
                attached_unix_ns: 1,
                gone_unix_ns: 0,
            }),
            counters: IfCounters {
                rx_bytes: 10_000,
                rx_packets: 100,
                tx_bytes: 20_000,
                tx_packets: 200,
                ipv4: family(6_000),
                ipv6: family(3_000),
            },
        }
    }

    #[test]
    fn entries_carry_totals_and_each_family() {
        let eth0 = entry(&record(2), Families::Counted);
        assert_eq!((eth0.name.as_str(), eth0.ifindex), ("eth0", 2));
        assert!(eth0.attached);
        assert_eq!(
            (
                eth0.rx_bytes,
                eth0.tx_bytes,
                eth0.rx_packets,
                eth0.tx_packets
            ),
            (10_000, 20_000, 100, 200)
        );
        assert_eq!(
            eth0.ipv4,
            Some(FamilyCounters {
                rx_bytes: 6_000,
                tx_bytes: 12_000,
                rx_packets: 60,
                tx_packets: 120,
            })
        );
        assert_eq!(
            eth0.ipv6,
            Some(FamilyCounters {
                rx_bytes: 3_000,
                tx_bytes: 6_000,
                rx_packets: 30,
                tx_packets: 60,
            })
        );
        let retired = entry(&record(RETIRED_IFINDEX), Families::Counted);
        assert_eq!(retired.name, RETIRED_NAME);
        assert_eq!(retired.ipv4.map(|f| f.rx_bytes), Some(6_000));
    }

    #[test]
    fn a_set_without_the_split_says_so() {
        let old = entry(&record(2), Families::Unknown);
        assert_eq!((old.ipv4, old.ipv6), (None, None));
        assert_eq!((old.rx_bytes, old.tx_packets), (10_000, 200));
    }
}
