//! The eBPF counter source: the pinned maps.

use super::{CounterSource, InterfaceCounters, Snapshot, SourceKind};
use crate::{
    ebpf::{epoch_hex, maps::PinnedMaps},
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
            .into_iter()
            .map(|record| InterfaceCounters {
                name: record.name(),
                ifindex: record.ifindex,
                rx_bytes: record.counters.rx_bytes,
                tx_bytes: record.counters.tx_bytes,
                rx_packets: record.counters.rx_packets,
                tx_packets: record.counters.tx_packets,
                attached: record.is_attached(),
            })
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
