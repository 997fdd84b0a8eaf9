//! Reading and writing the pinned maps: the counters, the interface records
//! and the counter set's identity. `status`, the counter source and the attach
//! engine all go through here, so they see the same kernel objects.

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues};
use tally_common::{
    IFACE_ATTACHED, IFACE_GONE, IFNAMSIZ, IfCounters, IfaceInfo, LAYOUT_VERSION, META_MAGIC, Meta,
    RETIRED_IFINDEX, is_fast,
};

use super::fold::FoldStore;
use crate::pins::PinLayout;

/// `BPF_NOEXIST`: create the element only if it does not exist yet.
const BPF_NOEXIST: u64 = 1;

/// A failure to use the pinned maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(
        "no tally counters are pinned in {dir}: is the agent running (`tally-agent run`), and with \
         the same --pin-dir?"
    )]
    NotPinned { dir: String },
    #[error("cannot open pinned map {path}: {source}")]
    Open { path: String, source: MapError },
    #[error(
        "the pinned map {path} does not have the layout this agent expects ({source}); it was \
         made by another version of tally. Counters of an earlier version are taken over by \
         `tally-agent run` of this one (a new epoch; the old counts are reported first); those \
         of a newer version are read by that version, or removed by `tally-agent detach` (their \
         counts are lost)"
    )]
    Layout { path: String, source: MapError },
    #[error(
        "the counters in {dir} were made by layout version {found}, this agent writes {expected}: \
         `tally-agent detach` removes them (their counts are lost)"
    )]
    Version {
        dir: String,
        found: u32,
        expected: u32,
    },
    #[error("reading or writing {what} failed: {source}")]
    Access { what: String, source: MapError },
    #[error("cannot unpin {path}: {source}")]
    Unpin {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot count the CPUs: {0}")]
    Cpus(String),
}

/// The name under which the retired entry is reported.
pub const RETIRED_NAME: &str = "(retired)";

/// What the maps say about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceRecord {
    pub ifindex: u32,
    pub info: Option<IfaceInfo>,
    pub counters: IfCounters,
}

impl IfaceRecord {
    pub fn name(&self) -> String {
        if self.ifindex == RETIRED_IFINDEX {
            return RETIRED_NAME.to_owned();
        }
        self.info
            .map(|info| name_from_bytes(&info.name))
            .unwrap_or_default()
    }

    pub fn is_attached(&self) -> bool {
        self.info.is_some_and(|info| info.state == IFACE_ATTACHED)
    }
}

/// An interface name as stored in [`IfaceInfo::name`].
pub fn name_to_bytes(name: &str) -> [u8; IFNAMSIZ] {
    let mut bytes = [0u8; IFNAMSIZ];
    let len = name.len().min(IFNAMSIZ - 1);
    bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
    bytes
}

pub fn name_from_bytes(bytes: &[u8; IFNAMSIZ]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Sums the per-CPU copies of one interface's counters.
pub fn sum_per_cpu<'a>(values: impl IntoIterator<Item = &'a IfCounters>) -> IfCounters {
    values
        .into_iter()
        .fold(IfCounters::default(), |mut total, cpu| {
            total.accumulate(cpu);
            total
        })
}

/// The interface records pinned under `layout`, by ifindex, opening
/// `TALLY_IFACES` alone (its layout is the same in every version, so this
/// also works on counters of another layout).
pub fn pinned_ifaces(layout: &PinLayout) -> Result<Vec<(u32, IfaceInfo)>, MapsError> {
    let path = layout.ifaces();
    let ifaces: HashMap<MapData, u32, IfaceInfo> = HashMap::try_from(Map::HashMap(open(&path)?))
        .map_err(|source| MapsError::Layout {
            path: path.display().to_string(),
            source,
        })?;
    let mut out = Vec::new();
    for item in ifaces.iter() {
        out.push(item.map_err(access("TALLY_IFACES"))?);
    }
    out.sort_by_key(|(ifindex, _)| *ifindex);
    Ok(out)
}

/// The pinned maps, opened.
pub struct PinnedMaps {
    fast: PerCpuArray<MapData, IfCounters>,
    counters: PerCpuHashMap<MapData, u32, IfCounters>,
    ifaces: HashMap<MapData, u32, IfaceInfo>,
    meta: Array<MapData, Meta>,
}

fn open(path: &std::path::Path) -> Result<MapData, MapsError> {
    MapData::from_pin(path).map_err(|source| MapsError::Open {
        path: path.display().to_string(),
        source,
    })
}

fn access(what: impl Into<String>) -> impl FnOnce(MapError) -> MapsError {
    let what = what.into();
    move |source| MapsError::Access { what, source }
}

impl PinnedMaps {
    /// Opens the maps pinned under `layout`.
    pub fn open(layout: &PinLayout) -> Result<Self, MapsError> {
        if !layout.has_counters() {
            return Err(MapsError::NotPinned {
                dir: layout.dir().display().to_string(),
            });
        }
        let layout_err = |path: std::path::PathBuf| {
            move |source| MapsError::Layout {
                path: path.display().to_string(),
                source,
            }
        };
        let fast = PerCpuArray::try_from(Map::PerCpuArray(open(&layout.fast())?))
            .map_err(layout_err(layout.fast()))?;
        let counters = PerCpuHashMap::try_from(Map::PerCpuHashMap(open(&layout.counters())?))
            .map_err(layout_err(layout.counters()))?;
        let ifaces = HashMap::try_from(Map::HashMap(open(&layout.ifaces())?))
            .map_err(layout_err(layout.ifaces()))?;
        let meta = Array::try_from(Map::Array(open(&layout.meta())?))
            .map_err(layout_err(layout.meta()))?;
        Ok(Self {
            fast,
            counters,
            ifaces,
            meta,
        })
    }

    /// The counter set's identity; `None` while it was never initialised.
    pub fn meta(&self) -> Result<Option<Meta>, MapsError> {
        let meta = self.meta.get(&0, 0).map_err(access("TALLY_META"))?;
        Ok((meta.magic == META_MAGIC).then_some(meta))
    }

    /// Like [`Self::meta`], but checks the layout version.
    pub fn checked_meta(&self, dir: &str) -> Result<Option<Meta>, MapsError> {
        let meta = self.meta()?;
        if let Some(meta) = meta
            && meta.layout_version != LAYOUT_VERSION
        {
            return Err(MapsError::Version {
                dir: dir.to_owned(),
                found: meta.layout_version,
                expected: LAYOUT_VERSION,
            });
        }
        Ok(meta)
    }

    pub fn set_meta(&mut self, meta: &Meta) -> Result<(), MapsError> {
        self.meta.set(0, meta, 0).map_err(access("TALLY_META"))
    }

    /// Creates a zeroed counter entry for `ifindex` unless one exists (an
    /// existing entry keeps its counts). Fast-array slots always exist.
    pub fn ensure_counters(&mut self, ifindex: u32) -> Result<(), MapsError> {
        if is_fast(ifindex) {
            return Ok(());
        }
        let cpus = Self::cpus()?;
        let zeroes = PerCpuValues::try_from(vec![IfCounters::default(); cpus])
            .map_err(|e| MapsError::Cpus(e.to_string()))?;
        match self.counters.insert(ifindex, zeroes, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            Err(e) => Err(access(format!("the counters of ifindex {ifindex}"))(e)),
        }
    }

    pub fn iface(&self, ifindex: u32) -> Result<Option<IfaceInfo>, MapsError> {
        match self.ifaces.get(&ifindex, 0) {
            Ok(info) => Ok(Some(info)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(access(format!("the record of ifindex {ifindex}"))(e)),
        }
    }

    pub fn set_iface(&mut self, ifindex: u32, info: &IfaceInfo) -> Result<(), MapsError> {
        self.ifaces
            .insert(ifindex, info, 0)
            .map_err(access(format!("the record of ifindex {ifindex}")))
    }

    /// Marks an interface as no longer counted (since `now_unix_ns`); its
    /// counters stay until they are folded into the retired entry.
    pub fn mark_gone(&mut self, ifindex: u32, now_unix_ns: u64) -> Result<(), MapsError> {
        if let Some(mut info) = self.iface(ifindex)?
            && info.state != IFACE_GONE
        {
            info.state = IFACE_GONE;
            info.gone_unix_ns = now_unix_ns;
            self.set_iface(ifindex, &info)?;
        }
        Ok(())
    }

    fn cpus() -> Result<usize, MapsError> {
        aya::util::nr_cpus().map_err(|(what, e)| MapsError::Cpus(format!("{what}: {e}")))
    }

    /// The number of interface records (the fuller of the two capped maps:
    /// every hash-map entry has a record).
    pub fn len(&self) -> Result<usize, MapsError> {
        let mut n = 0;
        for key in self.ifaces.keys() {
            key.map_err(access("TALLY_IFACES"))?;
            n += 1;
        }
        Ok(n)
    }

    fn per_cpu(&self, values: Vec<IfCounters>) -> Result<PerCpuValues<IfCounters>, MapsError> {
        PerCpuValues::try_from(values).map_err(|e| MapsError::Cpus(e.to_string()))
    }

    /// The interface records (attached or gone), by ifindex.
    pub fn ifaces(&self) -> Result<Vec<(u32, IfaceInfo)>, MapsError> {
        let mut out = Vec::new();
        for item in self.ifaces.iter() {
            out.push(item.map_err(access("TALLY_IFACES"))?);
        }
        out.sort_by_key(|(ifindex, _)| *ifindex);
        Ok(out)
    }

    /// Every interface with a record, and the retired entry unless it is
    /// still zero, with counters summed over the CPUs, by ifindex.
    pub fn records(&self) -> Result<Vec<IfaceRecord>, MapsError> {
        let mut out = Vec::new();
        let retired = self.counters(RETIRED_IFINDEX)?.unwrap_or_default();
        if retired != IfCounters::default() {
            out.push(IfaceRecord {
                ifindex: RETIRED_IFINDEX,
                info: None,
                counters: retired,
            });
        }
        for (ifindex, info) in self.ifaces()? {
            if ifindex == RETIRED_IFINDEX {
                continue;
            }
            // A record whose counters are already gone is a fold that a
            // crash interrupted; the next start finishes it.
            if let Some(counters) = self.counters(ifindex)? {
                out.push(IfaceRecord {
                    ifindex,
                    info: Some(info),
                    counters,
                });
            }
        }
        Ok(out)
    }
}

impl FoldStore for PinnedMaps {
    type Error = MapsError;

    fn counters(&self, ifindex: u32) -> Result<Option<IfCounters>, MapsError> {
        if is_fast(ifindex) {
            // An array slot always exists; it stands for an interface while
            // the interface has a record (the retired slot always does).
            if ifindex != RETIRED_IFINDEX && self.iface(ifindex)?.is_none() {
                return Ok(None);
            }
            let per_cpu = self
                .fast
                .get(&ifindex, 0)
                .map_err(access(format!("the counters of ifindex {ifindex}")))?;
            return Ok(Some(sum_per_cpu(per_cpu.iter())));
        }
        match self.counters.get(&ifindex, 0) {
            Ok(per_cpu) => Ok(Some(sum_per_cpu(per_cpu.iter()))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(access(format!("the counters of ifindex {ifindex}"))(e)),
        }
    }

    fn set_retired(&mut self, total: &IfCounters) -> Result<(), MapsError> {
        // User space alone writes this entry: the whole total sits in the
        // first CPU's slot.
        let mut values = vec![IfCounters::default(); Self::cpus()?];
        if let Some(first) = values.first_mut() {
            *first = *total;
        }
        let values = self.per_cpu(values)?;
        self.fast
            .set(RETIRED_IFINDEX, values, 0)
            .map_err(access("the retired counters"))
    }

    /// Zeroes or deletes the counters first, then the record: a crash in
    /// between leaves a record without counts, which the next start's
    /// recovery finishes.
    fn forget(&mut self, ifindex: u32) -> Result<(), MapsError> {
        let what = || format!("the counters of ifindex {ifindex}");
        if is_fast(ifindex) {
            let zeroes = self.per_cpu(vec![IfCounters::default(); Self::cpus()?])?;
            self.fast.set(ifindex, zeroes, 0).map_err(access(what()))?;
        } else {
            match self.counters.remove(&ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(access(what())(e)),
            }
        }
        match self.ifaces.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(access(format!("the record of ifindex {ifindex}"))(e)),
        }
    }

    fn fold_state(&self) -> Result<(u32, IfCounters), MapsError> {
        let meta = self.meta.get(&0, 0).map_err(access("TALLY_META"))?;
        Ok((meta.folding_ifindex, meta.fold_before))
    }

    fn set_fold_state(&mut self, ifindex: u32, before: &IfCounters) -> Result<(), MapsError> {
        let mut meta = self.meta.get(&0, 0).map_err(access("TALLY_META"))?;
        meta.folding_ifindex = ifindex;
        meta.fold_before = *before;
        self.set_meta(&meta)
    }
}

#[cfg(test)]
mod tests {
    use tally_common::FamilyCounters;

    use super::*;

    fn family(rx_bytes: u64, rx_packets: u64, tx_bytes: u64, tx_packets: u64) -> FamilyCounters {
        FamilyCounters {
            rx_bytes,
            rx_packets,
            tx_bytes,
            tx_packets,
        }
    }

    #[test]
    fn per_cpu_values_are_summed() {
        let cpus = [
            IfCounters {
                rx_bytes: 100,
                rx_packets: 1,
                tx_bytes: 0,
                tx_packets: 0,
                ipv4: family(100, 1, 0, 0),
                ipv6: FamilyCounters::default(),
            },
            IfCounters {
                rx_bytes: 1500,
                rx_packets: 2,
                tx_bytes: 102,
                tx_packets: 2,
                ipv4: family(1000, 1, 0, 0),
                ipv6: family(400, 1, 60, 1),
            },
            IfCounters {
                rx_bytes: 0,
                rx_packets: 0,
                tx_bytes: 90,
                tx_packets: 1,
                ipv4: family(0, 0, 90, 1),
                ipv6: FamilyCounters::default(),
            },
        ];
        assert_eq!(
            sum_per_cpu(cpus.iter()),
            IfCounters {
                rx_bytes: 1600,
                rx_packets: 3,
                tx_bytes: 192,
                tx_packets: 3,
                ipv4: family(1100, 2, 90, 1),
                ipv6: family(400, 1, 60, 1),
            },
            "totals and each family are summed over the CPUs, each on its own"
        );
        assert_eq!(sum_per_cpu([].iter()), IfCounters::default());
    }

    #[test]
    fn names_round_trip_and_truncate() {
        assert_eq!(name_from_bytes(&name_to_bytes("veth0")), "veth0");
        let long = "a-very-long-interface-name";
        let stored = name_from_bytes(&name_to_bytes(long));
        assert_eq!(stored.len(), IFNAMSIZ - 1);
        assert!(long.starts_with(&stored));
    }
}
