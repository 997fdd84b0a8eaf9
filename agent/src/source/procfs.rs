//! The fallback counter source: `/proc/net/dev`, the kernel's interface
//! statistics. They count since the interface appeared (usually since boot),
//! so the epoch is the boot, and a first reading is only a baseline.

use super::{CounterSource, InterfaceCounters, Snapshot, SourceKind};
use crate::{filter::IfaceFilter, system};

/// Reads `/proc/net/dev` of the agent's network namespace.
pub struct ProcfsSource {
    filter: IfaceFilter,
}

impl ProcfsSource {
    pub fn new(filter: IfaceFilter) -> Self {
        Self { filter }
    }
}

/// The boot time as Unix nanoseconds (from `/proc/stat`'s `btime`).
fn boot_time_unix_ns() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|s| s.trim().parse::<u64>().ok())
        })
        .map_or(0, |secs| secs.saturating_mul(1_000_000_000))
}

fn ifindex(name: &str) -> u32 {
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: c_name is NUL-terminated.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) }
}

impl CounterSource for ProcfsSource {
    fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let boot_id = system::boot_id()?;
        let mut interfaces: Vec<InterfaceCounters> = procfs::net::dev_status()?
            .into_values()
            .filter(|dev| self.filter.counts(&dev.name))
            .map(|dev| {
                let index = ifindex(&dev.name);
                InterfaceCounters {
                    name: dev.name,
                    ifindex: index,
                    rx_bytes: dev.recv_bytes,
                    tx_bytes: dev.sent_bytes,
                    rx_packets: dev.recv_packets,
                    tx_packets: dev.sent_packets,
                    attached: true,
                }
            })
            .collect();
        interfaces.sort_by_key(|i| i.ifindex);
        Ok(Snapshot {
            source: SourceKind::Procfs,
            epoch: format!("procfs-{boot_id}"),
            epoch_created_unix_ns: boot_time_unix_ns(),
            starts_at_zero: false,
            boot_id,
            load: system::load_average()?,
            interfaces,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_net_dev_without_loopback() {
        let mut source = ProcfsSource::new(IfaceFilter::default());
        let snapshot = source.snapshot().expect("/proc/net/dev");
        assert!(!snapshot.starts_at_zero);
        assert!(snapshot.epoch.starts_with("procfs-"));
        assert!(
            snapshot
                .interfaces
                .iter()
                .all(|i| !i.name.starts_with("lo"))
        );
        assert!(snapshot.epoch_created_unix_ns > 0);
    }
}
