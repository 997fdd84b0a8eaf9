//! Taking over from an agent of an earlier version whose pinned counters
//! have layout 1 (the four totals per interface, no IPv4/IPv6 split).
//!
//! Those maps cannot be adopted: this version's programs write the family
//! counters past the end of their values (the verifier would refuse to load
//! them against the old maps). So the agent starts a new counter set (a new
//! epoch) instead: before it loads its object it unpins the old counter
//! maps and their epoch, keeping them open; its object then creates and
//! pins new ones, and the usual adoption swaps the program behind every
//! pinned link or netlink filter atomically. From then on nothing writes
//! the old maps, so the counts in them are final: [`OldSet::finish`] reads
//! them once, and the agent reports them as the last heartbeat of the old
//! epoch (through the reboot journal, delivered before any other), so no
//! byte is lost or counted twice across the upgrade.
//!
//! `TALLY_IFACES` has the same layout in both versions and is kept (its
//! records tell which hooks to take over or clean up), without the records
//! of gone interfaces: their counts belong to the old set.

use std::{fs, io, mem::size_of, path::Path, thread, time::Duration};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use tally_common::{IFACE_GONE, IfCounters, IfaceInfo, META_MAGIC, Meta, RETIRED_IFINDEX, is_fast};

use super::maps::{IfaceRecord, MapsError};
use crate::pins::PinLayout;

/// The layout this module takes over.
pub const OLD_LAYOUT: u32 = 1;

/// Layout 1's per-interface counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CountersV1 {
    rx_bytes: u64,
    rx_packets: u64,
    tx_bytes: u64,
    tx_packets: u64,
}

/// Layout 1's `TALLY_META` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MetaV1 {
    magic: u64,
    layout_version: u32,
    folding_ifindex: u32,
    epoch: [u8; 16],
    created_unix_ns: u64,
    next_seq: u64,
    fold_before: CountersV1,
}

// SAFETY: both are `#[repr(C)]`, contain only integers and byte arrays, and
// have no padding (checked by the layout test below).
unsafe impl aya::Pod for CountersV1 {}
unsafe impl aya::Pod for MetaV1 {}

impl CountersV1 {
    fn accumulate(&mut self, other: &Self) {
        self.rx_bytes = self.rx_bytes.saturating_add(other.rx_bytes);
        self.rx_packets = self.rx_packets.saturating_add(other.rx_packets);
        self.tx_bytes = self.tx_bytes.saturating_add(other.tx_bytes);
        self.tx_packets = self.tx_packets.saturating_add(other.tx_packets);
    }

    /// As counters of the current layout, without a family split (the
    /// family parts stay zero; readers must not take them for counts).
    fn totals(&self) -> IfCounters {
        IfCounters {
            rx_bytes: self.rx_bytes,
            rx_packets: self.rx_packets,
            tx_bytes: self.tx_bytes,
            tx_packets: self.tx_packets,
            ..IfCounters::default()
        }
    }
}

fn sum(values: impl IntoIterator<Item = CountersV1>) -> CountersV1 {
    values
        .into_iter()
        .fold(CountersV1::default(), |mut total, cpu| {
            total.accumulate(&cpu);
            total
        })
}

/// The final counts of a layout-1 counter set, read once it was taken over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupersededSet {
    pub epoch: [u8; 16],
    pub created_unix_ns: u64,
    /// Every interface of the old set and its retired entry, by ifindex;
    /// the counters' family parts are zero (layout 1 had none).
    pub records: Vec<IfaceRecord>,
}

/// A layout-1 counter set, unpinned and still open.
pub struct OldSet {
    meta: MetaV1,
    fast: PerCpuArray<MapData, CountersV1>,
    counters: PerCpuHashMap<MapData, u32, CountersV1>,
    /// The interface records as they were at the take-over.
    ifaces: Vec<(u32, IfaceInfo)>,
}

fn open(path: &Path) -> Result<MapData, MapsError> {
    MapData::from_pin(path).map_err(|source| MapsError::Open {
        path: path.display().to_string(),
        source,
    })
}

fn layout_err(path: &Path) -> impl FnOnce(MapError) -> MapsError {
    let path = path.display().to_string();
    move |source| MapsError::Layout { path, source }
}

fn access(what: impl Into<String>) -> impl FnOnce(MapError) -> MapsError {
    let what = what.into();
    move |source| MapsError::Access { what, source }
}

impl OldSet {
    /// When the counters pinned under `layout` are of layout 1, unpins them
    /// (keeping them open) and returns them; `None` when there are none or
    /// they are of the current layout. Counters of any other layout (a newer
    /// agent's) are left alone and refused.
    pub fn take_over(layout: &PinLayout) -> Result<Option<Self>, MapsError> {
        if !layout.has_complete_counters() {
            unpin_partial(layout)?;
            return Ok(None);
        }
        let meta_path = layout.meta();
        let meta_map = open(&meta_path)?;
        let value_size = meta_map
            .info()
            .map_err(access("TALLY_META's description"))?
            .value_size() as usize;
        if value_size == size_of::<Meta>() {
            return Ok(None);
        }
        if value_size != size_of::<MetaV1>() {
            return Err(MapsError::Layout {
                path: meta_path.display().to_string(),
                source: MapError::InvalidValueSize {
                    size: size_of::<Meta>(),
                    expected: value_size,
                },
            });
        }
        let meta_map: Array<MapData, MetaV1> =
            Array::try_from(Map::Array(meta_map)).map_err(layout_err(&meta_path))?;
        let meta = meta_map.get(&0, 0).map_err(access("TALLY_META"))?;
        if meta.magic == META_MAGIC && meta.layout_version != OLD_LAYOUT {
            return Err(MapsError::Version {
                dir: layout.dir().display().to_string(),
                found: meta.layout_version,
                expected: tally_common::LAYOUT_VERSION,
            });
        }
        let fast = PerCpuArray::try_from(Map::PerCpuArray(open(&layout.fast())?))
            .map_err(layout_err(&layout.fast()))?;
        let counters = PerCpuHashMap::try_from(Map::PerCpuHashMap(open(&layout.counters())?))
            .map_err(layout_err(&layout.counters()))?;
        let mut ifaces_map: HashMap<MapData, u32, IfaceInfo> =
            HashMap::try_from(Map::HashMap(open(&layout.ifaces())?))
                .map_err(layout_err(&layout.ifaces()))?;
        let mut ifaces = Vec::new();
        for item in ifaces_map.iter() {
            ifaces.push(item.map_err(access("TALLY_IFACES"))?);
        }
        ifaces.sort_by_key(|(ifindex, _)| *ifindex);
        // The epoch goes first: a crash from here on leaves a partial set,
        // which the next start replaces with a new one (unpinning what is
        // left of it, see `unpin_partial`).
        for path in [layout.meta(), layout.fast(), layout.counters()] {
            unpin(&path)?;
        }
        for (ifindex, info) in &ifaces {
            if info.state == IFACE_GONE {
                match ifaces_map.remove(ifindex) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(access(format!("the record of ifindex {ifindex}"))(e)),
                }
            }
        }
        Ok(Some(Self {
            meta,
            fast,
            counters,
            ifaces,
        }))
    }

    /// The interfaces the old set's programs were attached (or being
    /// attached) to when it was taken over.
    pub fn attached(&self) -> impl Iterator<Item = u32> + '_ {
        self.ifaces
            .iter()
            .filter(|(_, info)| info.state != IFACE_GONE)
            .map(|(ifindex, _)| *ifindex)
    }

    /// The old set's epoch, when it ever had one.
    pub fn epoch(&self) -> Option<[u8; 16]> {
        (self.meta.magic == META_MAGIC).then_some(self.meta.epoch)
    }

    /// Reads the final counts, once the programs that wrote them were
    /// replaced on every hook; `None` when the old set never had an epoch
    /// (nothing could have reported its counts).
    pub fn finish(self) -> Result<Option<SupersededSet>, MapsError> {
        // A packet that entered an old program just before its hook was
        // taken over may still be in it (programs run for microseconds).
        thread::sleep(Duration::from_millis(20));
        let Some(epoch) = self.epoch() else {
            return Ok(None);
        };
        let retired = self.fast_counts(RETIRED_IFINDEX)?;
        // A fold a crash interrupted after it added the interface's counts
        // to the retired entry: they are counted there, not again below.
        let folded = (self.meta.folding_ifindex != 0 && retired != self.meta.fold_before)
            .then_some(self.meta.folding_ifindex);
        let mut records = Vec::new();
        if retired != CountersV1::default() {
            records.push(IfaceRecord {
                ifindex: RETIRED_IFINDEX,
                info: None,
                counters: retired.totals(),
            });
        }
        for (ifindex, info) in &self.ifaces {
            if *ifindex == RETIRED_IFINDEX || Some(*ifindex) == folded {
                continue;
            }
            let counts = if is_fast(*ifindex) {
                Some(self.fast_counts(*ifindex)?)
            } else {
                match self.counters.get(ifindex, 0) {
                    Ok(per_cpu) => Some(sum(per_cpu.iter().copied())),
                    Err(MapError::KeyNotFound) => None,
                    Err(e) => return Err(access(format!("the counters of ifindex {ifindex}"))(e)),
                }
            };
            if let Some(counts) = counts {
                records.push(IfaceRecord {
                    ifindex: *ifindex,
                    info: Some(*info),
                    counters: counts.totals(),
                });
            }
        }
        Ok(Some(SupersededSet {
            epoch,
            created_unix_ns: self.meta.created_unix_ns,
            records,
        }))
    }

    fn fast_counts(&self, ifindex: u32) -> Result<CountersV1, MapsError> {
        let per_cpu = self
            .fast
            .get(&ifindex, 0)
            .map_err(access(format!("the counters of ifindex {ifindex}")))?;
        Ok(sum(per_cpu.iter().copied()))
    }
}

/// Unpins what is left of a partial layout-1 set (a crash during a
/// take-over, or an earlier agent's start): a partial set gets a new epoch
/// anyway, and this version's object cannot use maps of the old sizes.
fn unpin_partial(layout: &PinLayout) -> Result<(), MapsError> {
    for (path, old_size) in [
        (layout.meta(), size_of::<MetaV1>()),
        (layout.fast(), size_of::<CountersV1>()),
        (layout.counters(), size_of::<CountersV1>()),
    ] {
        if !path.exists() {
            continue;
        }
        let size = open(&path)?
            .info()
            .map_err(access(format!("the description of {}", path.display())))?
            .value_size() as usize;
        if size == old_size {
            tracing::warn!(path = %path.display(), "unpinning a map left from an incomplete counter set of layout 1");
            unpin(&path)?;
        }
    }
    Ok(())
}

fn unpin(path: &Path) -> Result<(), MapsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(MapsError::Unpin {
            path: path.display().to_string(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_1_is_what_it_was() {
        // The sizes the kernel knows the old maps by.
        assert_eq!(size_of::<CountersV1>(), 32);
        assert_eq!(size_of::<MetaV1>(), 8 + 4 + 4 + 16 + 8 + 8 + 32);
        // The current layout differs, so the two are told apart by size.
        assert_ne!(size_of::<MetaV1>(), size_of::<Meta>());
        assert_ne!(size_of::<CountersV1>(), size_of::<IfCounters>());
        const { assert!(OLD_LAYOUT < tally_common::LAYOUT_VERSION) };
    }

    #[test]
    fn old_counters_become_totals_without_a_split() {
        let old = CountersV1 {
            rx_bytes: 1,
            rx_packets: 2,
            tx_bytes: 3,
            tx_packets: 4,
        };
        let new = old.totals();
        assert_eq!(
            (new.rx_bytes, new.rx_packets, new.tx_bytes, new.tx_packets),
            (1, 2, 3, 4)
        );
        assert_eq!(new.ipv4, Default::default());
        assert_eq!(new.ipv6, Default::default());
        assert_eq!(
            sum([old, old, CountersV1::default()]),
            CountersV1 {
                rx_bytes: 2,
                rx_packets: 4,
                tx_bytes: 6,
                tx_packets: 8,
            }
        );
    }
}
