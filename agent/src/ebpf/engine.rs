//! Loading the programs and keeping them attached to the counted interfaces.
//!
//! Attachments survive the agent: TCX links are pinned under `links/`, and
//! netlink (`cls_bpf`) filters stay in the clsact qdisc by themselves. A
//! restarted (or upgraded) agent *adopts* them by atomically replacing the
//! program behind each one (`bpf_link_update` for TCX, a filter change for
//! netlink), so the kernel never stops counting and never counts a packet
//! twice.

use std::{collections::BTreeMap, time::Duration};

use aya::{Ebpf, EbpfLoader, programs::SchedClassifier};
use tally_common::{
    ATTACH_NETLINK, ATTACH_TCX, IFACE_ATTACHED, IFACE_ATTACHING, IFACE_GONE, IfCounters, IfaceInfo,
    LAYOUT_VERSION, MAX_INTERFACES, META_MAGIC, Meta, maps, programs,
};

pub use super::error::EngineError;
use super::maps::{PinnedMaps, name_to_bytes};
use super::{
    epoch_hex, fold,
    hooks::{self, Attached, ifname},
    legacy::{OldSet, SupersededSet},
};
use crate::{
    clock,
    filter::IfaceFilter,
    pins::{Hook, PinLayout},
};

/// The eBPF object built from `agent-ebpf` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tally"));

/// How the programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX links where the kernel has them (6.6+), else netlink filters.
    Auto,
    /// TCX links only.
    Tcx,
    /// `cls_bpf` filters on the clsact qdisc, via netlink.
    Netlink,
}

fn program_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Ingress => programs::INGRESS,
        Hook::Egress => programs::EGRESS,
    }
}

/// One of the object's classifiers.
fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, EngineError> {
    ebpf.program_mut(name)
        .ok_or(EngineError::MissingProgram(name))?
        .try_into()
        .map_err(|source| EngineError::LoadProgram {
            program: name,
            source,
        })
}

/// A new counter identity: random 128-bit epoch, created now.
pub fn new_meta() -> Result<Meta, EngineError> {
    use rand::TryRngCore as _;
    let mut epoch = [0u8; 16];
    rand::rngs::OsRng
        .try_fill_bytes(&mut epoch)
        .map_err(|e| EngineError::Random(e.to_string()))?;
    Ok(Meta {
        magic: META_MAGIC,
        layout_version: LAYOUT_VERSION,
        folding_ifindex: 0,
        epoch,
        created_unix_ns: clock::unix_ns(),
        next_seq: 1,
        fold_before: IfCounters::default(),
    })
}

/// The loaded programs and the set of interfaces they are attached to.
pub struct Engine {
    ebpf: Ebpf,
    layout: PinLayout,
    maps: PinnedMaps,
    netlink: bool,
    meta: Meta,
    created: bool,
    /// How long a gone interface keeps its own entry before its counts are
    /// folded into the retired entry.
    forget_after: Duration,
    /// ifindex → name of the interfaces attached now.
    attached: BTreeMap<u32, String>,
    /// The final counts of the layout-1 set this start took over.
    superseded: Option<SupersededSet>,
}

/// Gone interfaces are folded regardless of age once the counters map holds
/// this many entries, so that new interfaces always find room.
const FOLD_PRESSURE: usize = MAX_INTERFACES as usize - 256;

/// What set an old layout's counters apart, for the log.
fn old_layout_meaning(layout_version: u32) -> &'static str {
    match layout_version {
        1 => "without the IPv4/IPv6 split",
        _ => "a packet of several wire frames (GSO, GRO) counted as one",
    }
}

impl Engine {
    /// Loads the programs, creating the pinned maps or reusing them, and
    /// makes sure the counter set has an epoch. Counters of an earlier
    /// layout (an earlier agent's) are taken over: see [`super::legacy`].
    pub fn start(
        layout: PinLayout,
        mode: AttachMode,
        has_tcx: bool,
        forget_after: Duration,
    ) -> Result<Self, EngineError> {
        layout.prepare()?;
        let old = OldSet::take_over(&layout)?;
        if let Some(old) = &old {
            tracing::warn!(
                pin_dir = %layout.dir().display(),
                old_epoch = %old.epoch().map(|e| epoch_hex(&e)).unwrap_or_default(),
                "the pinned counters are of layout {} (an earlier tally-agent: {}), which this \
                 agent cannot keep counting in: starting a new counter set (new epoch); the old \
                 set's final counts are reported as its last heartbeat",
                old.layout_version(),
                old_layout_meaning(old.layout_version()),
            );
        }
        let partial = layout.has_counters() && !layout.has_complete_counters();
        let fresh = !layout.has_complete_counters();
        let (fast, counters, ifaces, meta) = (
            layout.fast(),
            layout.counters(),
            layout.ifaces(),
            layout.meta(),
        );
        let mut ebpf = EbpfLoader::new()
            .map_pin_path(maps::FAST, fast.as_path())
            .map_pin_path(maps::COUNTERS, counters.as_path())
            .map_pin_path(maps::IFACES, ifaces.as_path())
            .map_pin_path(maps::META, meta.as_path())
            .load(OBJECT)
            .map_err(EngineError::Load)?;
        for name in [programs::INGRESS, programs::EGRESS] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| EngineError::LoadProgram {
                    program: name,
                    source,
                })?;
        }
        let mut pinned = PinnedMaps::open(&layout)?;
        let dir = layout.dir().display().to_string();
        let meta = match pinned.checked_meta(&dir)? {
            Some(meta) if !fresh => meta,
            existing => {
                if existing.is_some() || partial {
                    tracing::warn!(pin_dir = %dir, "counter set had no valid identity; giving it a new epoch");
                }
                let meta = new_meta()?;
                pinned.set_meta(&meta)?;
                meta
            }
        };
        if let Some(ifindex) = fold::recover(&mut pinned)? {
            tracing::info!(
                ifindex,
                "finished folding a gone interface that a crash interrupted"
            );
        }
        let netlink = match mode {
            AttachMode::Netlink => true,
            AttachMode::Tcx => false,
            AttachMode::Auto => !has_tcx,
        };
        let mut engine = Self {
            ebpf,
            layout,
            maps: pinned,
            netlink,
            meta,
            created: fresh,
            forget_after,
            attached: BTreeMap::new(),
            superseded: None,
        };
        if let Some(old) = old {
            engine.superseded = engine.take_over_hooks(old);
        }
        Ok(engine)
    }

    /// Swaps this agent's programs in on every hook the old set's programs
    /// are on (or removes them), so that nothing writes the old counters any
    /// more, then reads their final counts. The next [`Self::sync`] applies
    /// the filter as on any start.
    fn take_over_hooks(&mut self, old: OldSet) -> Option<SupersededSet> {
        let mut present = BTreeMap::new();
        for ifindex in old.attached() {
            // An interface that is gone took the old hooks with it.
            let Some(name) = ifname(ifindex) else {
                continue;
            };
            match self.attach(ifindex, &name) {
                Ok(how) => {
                    tracing::info!(iface = %name, ifindex, how = ?how, "took over the interface from the old counter set")
                }
                Err(error) => {
                    tracing::error!(iface = %name, ifindex, %error, "cannot count interface")
                }
            }
            present.insert(ifindex, name);
        }
        // Old hooks nothing above accounted for (and their records) go.
        let present: BTreeMap<u32, &String> = present.iter().map(|(i, n)| (*i, n)).collect();
        self.clean_stale(&present);
        match old.finish() {
            Ok(Some(set)) => Some(set),
            Ok(None) => {
                tracing::warn!(
                    "the old counter set never had an epoch: no counts to report from it"
                );
                None
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    "cannot read the old counter set's final counts: its traffic since its last \
                     heartbeat is not reported"
                );
                None
            }
        }
    }

    /// The final counts of the old counter set this start took over
    /// (once; `None` if there was none).
    pub fn take_superseded(&mut self) -> Option<SupersededSet> {
        self.superseded.take()
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Whether this start created the counter set (and its epoch).
    pub fn created_counters(&self) -> bool {
        self.created
    }

    pub fn uses_netlink(&self) -> bool {
        self.netlink
    }

    pub fn attached(&self) -> &BTreeMap<u32, String> {
        &self.attached
    }

    /// Brings the attachments in line with `links` (every interface of the
    /// namespace, as `(ifindex, name)`): attaches to the counted ones,
    /// detaches from the ones that are gone or no longer pass the filter.
    /// Failures on one interface are logged and do not stop the others.
    pub fn sync(&mut self, links: &[(u32, String)], filter: &IfaceFilter) {
        let present: BTreeMap<u32, &String> = links.iter().map(|(i, n)| (*i, n)).collect();
        for (&ifindex, &name) in &present {
            let counted = filter.counts(name);
            let current = self.attached.get(&ifindex);
            if counted && current != Some(name) {
                match self.attach(ifindex, name) {
                    Ok(how) => {
                        tracing::info!(iface = %name, ifindex, how = ?how, "counting interface")
                    }
                    Err(error) => {
                        tracing::error!(iface = %name, ifindex, %error, "cannot count interface")
                    }
                }
            } else if !counted && current.is_some() {
                self.retire(ifindex, Some(name));
                tracing::info!(iface = %name, ifindex, "interface no longer passes the filter; stopped counting it");
            }
        }
        let gone: Vec<u32> = self
            .attached
            .keys()
            .copied()
            .filter(|i| !present.contains_key(i))
            .collect();
        for ifindex in gone {
            let name = self.attached.get(&ifindex).cloned().unwrap_or_default();
            self.retire(ifindex, None);
            tracing::info!(iface = %name, ifindex, "interface went away; its counters are kept");
        }
        self.clean_stale(&present);
        self.fold_forgotten();
    }

    /// Folds gone interfaces older than `forget_after` (or, when the map is
    /// nearly full, the oldest gone ones) into the retired entry.
    fn fold_forgotten(&mut self) {
        let Ok(records) = self.maps.ifaces() else {
            return;
        };
        let mut gone: Vec<(u64, u32)> = records
            .iter()
            .filter(|(_, info)| info.state == IFACE_GONE)
            .map(|(ifindex, info)| (info.gone_unix_ns, *ifindex))
            .collect();
        gone.sort_unstable();
        let now = clock::unix_ns();
        let age_limit = u64::try_from(self.forget_after.as_nanos()).unwrap_or(u64::MAX);
        let mut excess = self.maps.len().unwrap_or(0).saturating_sub(FOLD_PRESSURE);
        for (gone_at, ifindex) in gone {
            let old_enough = now.saturating_sub(gone_at) >= age_limit;
            if !old_enough && excess == 0 {
                continue;
            }
            match fold::fold(&mut self.maps, ifindex) {
                Ok(()) => {
                    excess = excess.saturating_sub(1);
                    tracing::info!(
                        ifindex,
                        "folded a gone interface's counts into the retired entry"
                    );
                }
                Err(error) => {
                    tracing::warn!(ifindex, %error, "cannot fold a gone interface's counts");
                    return;
                }
            }
        }
    }

    /// Retires records and pins that no current attachment accounts for
    /// (left by an agent that stopped before an interface went away).
    fn clean_stale(&mut self, present: &BTreeMap<u32, &String>) {
        if let Ok(records) = self.maps.ifaces() {
            for (ifindex, info) in records {
                let live = info.state == IFACE_ATTACHED || info.state == IFACE_ATTACHING;
                if live && !self.attached.contains_key(&ifindex) {
                    let name = present.get(&ifindex).map(|n| n.as_str());
                    self.retire(ifindex, name);
                }
            }
        }
        if let Ok(links) = self.layout.pinned_links() {
            for (ifindex, _, path) in links {
                if !self.attached.contains_key(&ifindex) {
                    hooks::remove_link_pin(&path);
                }
            }
        }
    }

    /// Attaches both programs to one interface, or adopts what is pinned.
    pub fn attach(&mut self, ifindex: u32, name: &str) -> Result<Attached, EngineError> {
        self.maps.ensure_counters(ifindex)?;
        let attach_mode = if self.netlink {
            ATTACH_NETLINK
        } else {
            ATTACH_TCX
        };
        let existing = self
            .maps
            .iface(ifindex)?
            .filter(|info| info.state == IFACE_ATTACHED);
        let already = existing.is_some();
        let attached_unix_ns = existing.map_or_else(clock::unix_ns, |info| info.attached_unix_ns);
        let mut info = IfaceInfo {
            name: name_to_bytes(name),
            state: if already {
                IFACE_ATTACHED
            } else {
                IFACE_ATTACHING
            },
            attach_mode,
            attached_unix_ns,
            gone_unix_ns: 0,
        };
        self.maps.set_iface(ifindex, &info)?;
        let mut how = Attached::Adopted;
        for hook in Hook::BOTH {
            let pin = self.layout.link(ifindex, hook);
            let netlink = self.netlink;
            let program = self.program(hook)?;
            let result = if netlink {
                hooks::attach_netlink(program, name, hook)
            } else {
                hooks::attach_tcx(program, &pin, name, hook)
            };
            match result {
                Ok(Attached::New) => how = Attached::New,
                Ok(Attached::Adopted) => {}
                Err(error) => {
                    // Leave nothing half-attached behind.
                    self.detach_hooks(ifindex, Some(name));
                    self.maps.mark_gone(ifindex, clock::unix_ns())?;
                    return Err(error);
                }
            }
        }
        info.state = IFACE_ATTACHED;
        self.maps.set_iface(ifindex, &info)?;
        self.attached.insert(ifindex, name.to_owned());
        Ok(how)
    }

    fn program(&mut self, hook: Hook) -> Result<&mut SchedClassifier, EngineError> {
        classifier(&mut self.ebpf, program_name(hook))
    }

    /// Stops counting one interface: removes its attachments, keeps its
    /// counters (marked gone) so that its last bytes are still reported.
    pub fn retire(&mut self, ifindex: u32, name: Option<&str>) {
        self.detach_hooks(ifindex, name);
        if let Err(error) = self.maps.mark_gone(ifindex, clock::unix_ns()) {
            tracing::warn!(ifindex, %error, "cannot mark interface as gone");
        }
        self.attached.remove(&ifindex);
    }

    fn detach_hooks(&mut self, ifindex: u32, name: Option<&str>) {
        for hook in Hook::BOTH {
            hooks::remove_link_pin(&self.layout.link(ifindex, hook));
            if self.netlink
                && let Some(name) = name
            {
                hooks::detach_netlink(name, hook);
            }
        }
    }
}
