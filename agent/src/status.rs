//! `tally-agent status`: the counters as a table for people or JSON for
//! scripts.

use std::fmt::Write as _;

use tally_common::units::human_bytes;

use crate::source::Snapshot;

/// The table `status` prints.
pub fn render_table(snapshot: &Snapshot, pin_dir: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "source   {}", snapshot.source.as_str());
    if let Some(dir) = pin_dir {
        let _ = writeln!(out, "pin dir  {dir}");
    }
    let _ = writeln!(out, "epoch    {}", snapshot.epoch);
    let _ = writeln!(out, "boot id  {}", snapshot.boot_id);
    let _ = writeln!(
        out,
        "load     {:.2} {:.2} {:.2}",
        snapshot.load.one, snapshot.load.five, snapshot.load.fifteen
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:>7} {:<16} {:>20} {:>20} {:>14} {:>14}  STATE",
        "INTERFACE", "IFINDEX", "KIND", "RX BYTES", "TX BYTES", "RX PACKETS", "TX PACKETS"
    );
    for i in &snapshot.interfaces {
        let _ = writeln!(
            out,
            "{:<16} {:>7} {:<16} {:>20} {:>20} {:>14} {:>14}  {}{}",
            i.name,
            i.ifindex,
            i.kind.name(),
            i.rx_bytes,
            i.tx_bytes,
            i.rx_packets,
            i.tx_packets,
            if i.attached { "counting" } else { "gone" },
            if i.default_route {
                ", default route"
            } else {
                ""
            }
        );
    }
    let (rx, tx) = snapshot.totals();
    let _ = writeln!(
        out,
        "{:<16} {:>7} {:<16} {:>20} {:>20}",
        "total",
        "",
        "",
        human_bytes(i128::from(rx)),
        human_bytes(i128::from(tx))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        links::LinkKind,
        source::{InterfaceCounters, SourceKind},
        system::LoadAvg,
    };

    #[test]
    fn table_lists_every_interface() {
        let snapshot = Snapshot {
            source: SourceKind::Ebpf,
            epoch: "ab".repeat(16),
            epoch_created_unix_ns: 1,
            starts_at_zero: true,
            boot_id: "boot".into(),
            load: LoadAvg {
                one: 1.0,
                five: 2.0,
                fifteen: 3.0,
            },
            interfaces: vec![
                InterfaceCounters {
                    name: "eth0".into(),
                    ifindex: 2,
                    rx_bytes: 2048,
                    tx_bytes: 1,
                    rx_packets: 3,
                    tx_packets: 1,
                    attached: true,
                    kind: LinkKind::Physical,
                    default_route: true,
                    master_ifindex: 0,
                    link_ifindex: 0,
                    ipv4: None,
                    ipv6: None,
                },
                InterfaceCounters {
                    name: "veth7".into(),
                    ifindex: 7,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    rx_packets: 0,
                    tx_packets: 0,
                    attached: false,
                    kind: LinkKind::Veth,
                    default_route: false,
                    master_ifindex: 0,
                    link_ifindex: 0,
                    ipv4: None,
                    ipv6: None,
                },
            ],
        };
        let table = render_table(&snapshot, Some("/sys/fs/bpf/tally"));
        assert!(table.contains("source   ebpf"), "{table}");
        assert!(table.contains(&"ab".repeat(16)));
        assert!(table.contains("load     1.00 2.00 3.00"));
        assert!(table.lines().any(|l| l.starts_with("eth0")
            && l.contains(" physical ")
            && l.contains("2048")
            && l.ends_with("counting, default route")));
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("veth7") && l.contains(" veth ") && l.ends_with("gone"))
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("total") && l.contains("2.0 KiB"))
        );
    }
}
