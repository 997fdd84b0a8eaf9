//! Taking over from an agent of an earlier counter layout: 1 (the four
//! totals per interface, no IPv4/IPv6 split) or 2 (with the split, but a
//! packet that stands for several wire frames counted as one).
//!
//! Neither can be counted on in. Layout 1's values are too small for this
//! version's programs (the verifier would refuse to load them against the
//! old maps); layout 2's have this version's shape but another meaning, and
//! counters keep one meaning within their epoch. So the agent starts a new
//! counter set (a new epoch) instead: before it loads its object it unpins
//! the old counter maps and their epoch, keeping them open; its object then
//! creates and pins new ones, and the usual adoption swaps the program
//! behind every pinned link or netlink filter atomically. From then on
//! nothing writes the old maps, so the counts in them are final:
//! [`OldSet::finish`] reads them once, and the agent reports them as the
//! last heartbeat of the old epoch (through the reboot journal, delivered
//! before any other), so no byte is lost or counted twice across the
//! upgrade.
//!
//! `TALLY_IFACES` has the same layout in all versions and is kept (its
//! records tell which hooks to take over or clean up), without the records
//! of gone interfaces: their counts belong to the old set.

use std::{fs, io, mem::size_of, path::Path, thread, time::Duration};

use aya::{
    Pod,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap},
};
use tally_common::{
    IFACE_GONE, IfCounters, IfaceInfo, LAYOUT_VERSION, META_MAGIC, Meta, RETIRED_IFINDEX, is_fast,
};

use super::maps::{IfaceRecord, MapsError};
use crate::pins::PinLayout;

/// The layouts this module takes over.
pub const OLD_LAYOUTS: [u32; 2] = [1, 2];

/// Layout 2: this version's types, counted per socket buffer.
const LAYOUT_PER_SKB: u32 = 2;

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

/// A per-interface counters value of an old layout.
trait OldCounters: Pod + Default {
    /// As counters of the current types.
    fn current(&self) -> IfCounters;
}

impl OldCounters for CountersV1 {
    /// Without a family split (the family parts stay zero; readers must
    /// not take them for counts).
    fn current(&self) -> IfCounters {
        IfCounters {
            rx_bytes: self.rx_bytes,
            rx_packets: self.rx_packets,
            tx_bytes: self.tx_bytes,
            tx_packets: self.tx_packets,
            ..IfCounters::default()
        }
    }
}

impl OldCounters for IfCounters {
    fn current(&self) -> IfCounters {
        *self
    }
}

/// The sum over CPUs, as counters of the current types.
fn sum<V: OldCounters>(values: impl IntoIterator<Item = V>) -> IfCounters {
    values
        .into_iter()
        .fold(IfCounters::default(), |mut total, cpu| {
            total.accumulate(&cpu.current());
            total
        })
}

/// An old set's counter maps, of the value type of its layout.
struct CounterMaps<V: OldCounters> {
    fast: PerCpuArray<MapData, V>,
    counters: PerCpuHashMap<MapData, u32, V>,
}

impl<V: OldCounters> CounterMaps<V> {
    fn open(layout: &PinLayout) -> Result<Self, MapsError> {
        Ok(Self {
            fast: PerCpuArray::try_from(Map::PerCpuArray(open(&layout.fast())?))
                .map_err(layout_err(&layout.fast()))?,
            counters: PerCpuHashMap::try_from(Map::PerCpuHashMap(open(&layout.counters())?))
                .map_err(layout_err(&layout.counters()))?,
        })
    }

    /// An interface's counts summed over CPUs; `None` when a large
    /// ifindex has no entry.
    fn counts(&self, ifindex: u32) -> Result<Option<IfCounters>, MapsError> {
        let what = || format!("the counters of ifindex {ifindex}");
        if is_fast(ifindex) {
            let per_cpu = self.fast.get(&ifindex, 0).map_err(access(what()))?;
            return Ok(Some(sum(per_cpu.iter().copied())));
        }
        match self.counters.get(&ifindex, 0) {
            Ok(per_cpu) => Ok(Some(sum(per_cpu.iter().copied()))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(access(what())(e)),
        }
    }
}

/// The counter maps of either old layout.
enum AnyCounterMaps {
    V1(CounterMaps<CountersV1>),
    PerSkb(CounterMaps<IfCounters>),
}

impl AnyCounterMaps {
    fn counts(&self, ifindex: u32) -> Result<Option<IfCounters>, MapsError> {
        match self {
            Self::V1(maps) => maps.counts(ifindex),
            Self::PerSkb(maps) => maps.counts(ifindex),
        }
    }
}

/// What an old set's `TALLY_META` holds, in the current types.
#[derive(Debug, Clone, Copy)]
struct OldMeta {
    layout_version: u32,
    magic: u64,
    folding_ifindex: u32,
    epoch: [u8; 16],
    created_unix_ns: u64,
    fold_before: IfCounters,
}

impl From<MetaV1> for OldMeta {
    fn from(meta: MetaV1) -> Self {
        Self {
            layout_version: meta.layout_version,
            magic: meta.magic,
            folding_ifindex: meta.folding_ifindex,
            epoch: meta.epoch,
            created_unix_ns: meta.created_unix_ns,
            fold_before: meta.fold_before.current(),
        }
    }
}

impl From<Meta> for OldMeta {
    fn from(meta: Meta) -> Self {
        Self {
            layout_version: meta.layout_version,
            magic: meta.magic,
            folding_ifindex: meta.folding_ifindex,
            epoch: meta.epoch,
            created_unix_ns: meta.created_unix_ns,
            fold_before: meta.fold_before,
        }
    }
}

/// The final counts of an old counter set, read once it was taken over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupersededSet {
    /// Its layout (one of [`OLD_LAYOUTS`]).
    pub layout_version: u32,
    pub epoch: [u8; 16],
    pub created_unix_ns: u64,
    /// Every interface of the old set and its retired entry, by ifindex;
    /// the counters' family parts are zero when the layout had none
    /// ([`Self::has_families`]).
    pub records: Vec<IfaceRecord>,
}

impl SupersededSet {
    /// Whether its counters have the IPv4/IPv6 split (layout 2 on).
    pub fn has_families(&self) -> bool {
        self.layout_version >= LAYOUT_PER_SKB
    }
}

/// An old counter set, unpinned and still open.
pub struct OldSet {
    meta: OldMeta,
    maps: AnyCounterMaps,
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
    /// When the counters pinned under `layout` are of layout 1 or 2,
    /// unpins them (keeping them open) and returns them; `None` when there
    /// are none or they are of the current layout. Counters of any other
    /// layout (a newer agent's) are left alone and refused.
    pub fn take_over(layout: &PinLayout) -> Result<Option<Self>, MapsError> {
        if !layout.has_complete_counters() {
            unpin_partial(layout)?;
            return Ok(None);
        }
        let Some(meta) = read_meta(layout)? else {
            return Ok(None);
        };
        if meta.magic == META_MAGIC && meta.layout_version == LAYOUT_VERSION {
            return Ok(None);
        }
        let maps = if meta.layout_version == LAYOUT_PER_SKB {
            AnyCounterMaps::PerSkb(CounterMaps::open(layout)?)
        } else {
            AnyCounterMaps::V1(CounterMaps::open(layout)?)
        };
        let mut ifaces_map: HashMap<MapData, u32, IfaceInfo> =
            HashMap::try_from(Map::HashMap(open(&layout.ifaces())?))
                .map_err(layout_err(&layout.ifaces()))?;
        let mut ifaces = Vec::new();
        for item in ifaces_map.iter() {
            ifaces.push(item.map_err(access("TALLY_IFACES"))?);
        }
        ifaces.sort_by_key(|(ifindex, _)| *ifindex);
        // The epoch goes last: a crash before it leaves a partial set with
        // the old layout's `TALLY_META`, which the next start recognises
        // and unpins whole (see `unpin_partial`).
        for path in [layout.fast(), layout.counters(), layout.meta()] {
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
        Ok(Some(Self { meta, maps, ifaces }))
    }

    /// The old set's layout.
    pub fn layout_version(&self) -> u32 {
        if self.meta.magic == META_MAGIC {
            self.meta.layout_version
        } else {
            OLD_LAYOUTS[0]
        }
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
        let retired = self.maps.counts(RETIRED_IFINDEX)?.unwrap_or_default();
        // A fold a crash interrupted after it added the interface's counts
        // to the retired entry: they are counted there, not again below.
        let folded = (self.meta.folding_ifindex != 0 && retired != self.meta.fold_before)
            .then_some(self.meta.folding_ifindex);
        let mut records = Vec::new();
        if retired != IfCounters::default() {
            records.push(IfaceRecord {
                ifindex: RETIRED_IFINDEX,
                info: None,
                counters: retired,
            });
        }
        for (ifindex, info) in &self.ifaces {
            if *ifindex == RETIRED_IFINDEX || Some(*ifindex) == folded {
                continue;
            }
            if let Some(counters) = self.maps.counts(*ifindex)? {
                records.push(IfaceRecord {
                    ifindex: *ifindex,
                    info: Some(*info),
                    counters,
                });
            }
        }
        Ok(Some(SupersededSet {
            layout_version: self.layout_version(),
            epoch,
            created_unix_ns: self.meta.created_unix_ns,
            records,
        }))
    }
}

/// The pinned `TALLY_META` of a complete set, by its value size: layout 1's
/// or the current types (layouts 2 and 3). `None` when it is of the current
/// types and never initialised. A layout it does not know is refused.
fn read_meta(layout: &PinLayout) -> Result<Option<OldMeta>, MapsError> {
    let meta_path = layout.meta();
    let meta_map = open(&meta_path)?;
    let value_size = meta_map
        .info()
        .map_err(access("TALLY_META's description"))?
        .value_size() as usize;
    let meta: OldMeta = if value_size == size_of::<Meta>() {
        let map: Array<MapData, Meta> =
            Array::try_from(Map::Array(meta_map)).map_err(layout_err(&meta_path))?;
        map.get(&0, 0).map_err(access("TALLY_META"))?.into()
    } else if value_size == size_of::<MetaV1>() {
        let map: Array<MapData, MetaV1> =
            Array::try_from(Map::Array(meta_map)).map_err(layout_err(&meta_path))?;
        let meta = OldMeta::from(map.get(&0, 0).map_err(access("TALLY_META"))?);
        // Layout 1's size and uninitialised is still layout 1.
        return if meta.magic == META_MAGIC && meta.layout_version != OLD_LAYOUTS[0] {
            Err(version_err(layout, meta.layout_version))
        } else {
            Ok(Some(meta))
        };
    } else {
        return Err(MapsError::Layout {
            path: meta_path.display().to_string(),
            source: MapError::InvalidValueSize {
                size: size_of::<Meta>(),
                expected: value_size,
            },
        });
    };
    if meta.magic != META_MAGIC {
        return Ok(None);
    }
    if meta.layout_version != LAYOUT_VERSION && meta.layout_version != LAYOUT_PER_SKB {
        return Err(version_err(layout, meta.layout_version));
    }
    Ok(Some(meta))
}

fn version_err(layout: &PinLayout, found: u32) -> MapsError {
    MapsError::Version {
        dir: layout.dir().display().to_string(),
        found,
        expected: LAYOUT_VERSION,
    }
}

/// Unpins what is left of a partial old set (a crash during a take-over,
/// or an earlier agent's start): a partial set gets a new epoch anyway, and
/// this version's object must not count on in old maps. Maps of layout 1's
/// sizes are recognised by size; a partial layout-2 set by its
/// `TALLY_META`, which a take-over unpins last.
fn unpin_partial(layout: &PinLayout) -> Result<(), MapsError> {
    let meta_path = layout.meta();
    if meta_path.exists()
        && value_size(&meta_path)? == size_of::<Meta>()
        && let Some(meta) = read_meta(layout)?
        && meta.layout_version == LAYOUT_PER_SKB
    {
        for path in [layout.fast(), layout.counters(), meta_path] {
            if path.exists() {
                tracing::warn!(path = %path.display(), "unpinning a map left from an incomplete counter set of layout {LAYOUT_PER_SKB}");
                unpin(&path)?;
            }
        }
        return Ok(());
    }
    for (path, old_size) in [
        (meta_path, size_of::<MetaV1>()),
        (layout.fast(), size_of::<CountersV1>()),
        (layout.counters(), size_of::<CountersV1>()),
    ] {
        if path.exists() && value_size(&path)? == old_size {
            tracing::warn!(path = %path.display(), "unpinning a map left from an incomplete counter set of layout 1");
            unpin(&path)?;
        }
    }
    Ok(())
}

fn value_size(path: &Path) -> Result<usize, MapsError> {
    Ok(open(path)?
        .info()
        .map_err(access(format!("the description of {}", path.display())))?
        .value_size() as usize)
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
        const { assert!(OLD_LAYOUTS[0] < LAYOUT_PER_SKB) };
        const { assert!(LAYOUT_PER_SKB < tally_common::LAYOUT_VERSION) };
    }

    #[test]
    fn old_counters_become_totals_without_a_split() {
        let old = CountersV1 {
            rx_bytes: 1,
            rx_packets: 2,
            tx_bytes: 3,
            tx_packets: 4,
        };
        let new = old.current();
        assert_eq!(
            (new.rx_bytes, new.rx_packets, new.tx_bytes, new.tx_packets),
            (1, 2, 3, 4)
        );
        assert_eq!(new.ipv4, Default::default());
        assert_eq!(new.ipv6, Default::default());
        assert_eq!(
            sum([old, old, CountersV1::default()]),
            IfCounters {
                rx_bytes: 2,
                rx_packets: 4,
                tx_bytes: 6,
                tx_packets: 8,
                ..IfCounters::default()
            }
        );
    }
}
