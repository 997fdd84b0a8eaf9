//! The `#[repr(C)]` types that tally's eBPF programs and the agent share.
//!
//! Everything here is plain old data with a fixed layout: the kernel side
//! writes it into BPF maps, the user side reads it back byte for byte. A change
//! of layout is a change of [`LAYOUT_VERSION`], which the agent checks against
//! the pinned maps before it adopts them.
#![no_std]

#[cfg(feature = "units")]
extern crate alloc;

#[cfg(feature = "units")]
pub mod units;

pub mod wire;

/// Version of the layout of the types below (and of the pinned maps).
///
/// 1: the four totals per interface. 2: [`IfCounters`] also has the IPv4
/// and IPv6 parts ([`FamilyCounters`]), so [`Meta::fold_before`] grew too.
/// 3: the same types, counted as the wire carries them: a packet that
/// stands for several frames (GSO, GRO) counts as those frames
/// ([`wire`]). A new counting rule is a new layout, so that counters keep
/// one meaning within their epoch.
pub const LAYOUT_VERSION: u32 = 3;

/// `TALLY_META`'s `magic`: "tallyctr" in ASCII.
pub const META_MAGIC: u64 = u64::from_le_bytes(*b"tallyctr");

/// Per-interface traffic counters (one copy per CPU in the kernel map).
///
/// `rx` is what the TC ingress hook saw, `tx` what the TC egress hook saw,
/// as wire frames: a packet's bytes are `skb->len` at the hook, link-layer
/// header included, and one that stands for several frames (segmentation
/// offload, GRO) counts as those frames, with their repeated headers (see
/// [`wire`]). `ipv4` and
/// `ipv6` are the part of the totals whose packets had the protocol 0x0800
/// or 0x86DD (`skb->protocol`) at the hook; the rest (ARP, ...) is the
/// totals minus both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub ipv4: FamilyCounters,
    pub ipv6: FamilyCounters,
}

/// The bytes and packets of one address family within [`IfCounters`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FamilyCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

impl FamilyCounters {
    /// Adds `other` to `self`, saturating (see [`IfCounters::accumulate`]).
    pub fn accumulate(&mut self, other: &Self) {
        self.rx_bytes = self.rx_bytes.saturating_add(other.rx_bytes);
        self.rx_packets = self.rx_packets.saturating_add(other.rx_packets);
        self.tx_bytes = self.tx_bytes.saturating_add(other.tx_bytes);
        self.tx_packets = self.tx_packets.saturating_add(other.tx_packets);
    }
}

impl IfCounters {
    /// Adds `other` to `self` (totals and both families), saturating instead
    /// of wrapping (a u64 of bytes cannot realistically overflow; if it ever
    /// did, a counter that sticks is better than one that goes backwards).
    pub fn accumulate(&mut self, other: &Self) {
        self.rx_bytes = self.rx_bytes.saturating_add(other.rx_bytes);
        self.rx_packets = self.rx_packets.saturating_add(other.rx_packets);
        self.tx_bytes = self.tx_bytes.saturating_add(other.tx_bytes);
        self.tx_packets = self.tx_packets.saturating_add(other.tx_packets);
        self.ipv4.accumulate(&other.ipv4);
        self.ipv6.accumulate(&other.ipv6);
    }
}

/// Maximum length of an interface name, NUL included (`IFNAMSIZ`).
pub const IFNAMSIZ: usize = 16;

/// `IfaceInfo::state`: the agent attached the programs to this interface.
pub const IFACE_ATTACHED: u32 = 1;
/// `IfaceInfo::state`: the interface is gone; its counters are kept so that its
/// last bytes are still reported.
pub const IFACE_GONE: u32 = 2;
/// `IfaceInfo::state`: the agent is attaching the programs (written before
/// it attaches, so that a crash leaves a record to clean up from).
pub const IFACE_ATTACHING: u32 = 3;

/// What the agent remembers about an interface it counts, keyed by ifindex.
/// Written by user space only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceInfo {
    /// The interface name, NUL-padded.
    pub name: [u8; IFNAMSIZ],
    /// [`IFACE_ATTACHING`], [`IFACE_ATTACHED`] or [`IFACE_GONE`].
    pub state: u32,
    /// How the programs are attached: [`ATTACH_TCX`] or [`ATTACH_NETLINK`].
    pub attach_mode: u32,
    /// When the agent first attached to it (Unix time, nanoseconds).
    pub attached_unix_ns: u64,
    /// When it went away or stopped being counted (Unix time, nanoseconds;
    /// zero while attached).
    pub gone_unix_ns: u64,
}

/// `IfaceInfo::attach_mode`: a TCX link (kernel 6.6 and later), pinned.
pub const ATTACH_TCX: u32 = 1;
/// `IfaceInfo::attach_mode`: a `cls_bpf` filter on the clsact qdisc.
pub const ATTACH_NETLINK: u32 = 2;

/// The identity of a set of counters: created with the pinned maps, kept with
/// them. Written by user space only, as the single entry of `TALLY_META`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`META_MAGIC`] once initialised; zero in a freshly created map.
    pub magic: u64,
    /// [`LAYOUT_VERSION`] of the agent that created the counters.
    pub layout_version: u32,
    /// The ifindex being folded into [`RETIRED_IFINDEX`] right now (zero when
    /// no fold is under way); see `fold_before`.
    pub folding_ifindex: u32,
    /// A random 128-bit id of this counter set (the counter epoch).
    pub epoch: [u8; 16],
    /// When the counter set was created (Unix time, nanoseconds), so that of two
    /// epochs the earlier one can be told.
    pub created_unix_ns: u64,
    /// The next heartbeat sequence number (kept here so that it keeps growing
    /// across agent restarts within one epoch).
    pub next_seq: u64,
    /// The retired counters as they were before the fold of
    /// `folding_ifindex` began: lets a restarted agent finish a fold that a
    /// crash interrupted, exactly once.
    pub fold_before: IfCounters,
}

/// The counters entry that holds the final counts of interfaces long gone
/// (ifindex 0 is never a real interface). Folding a gone interface into it
/// keeps the sum over all entries, and so every total, unchanged.
pub const RETIRED_IFINDEX: u32 = 0;

/// Names of the maps in the eBPF object (at most 15 characters each: the
/// kernel's limit for object names).
pub mod maps {
    /// `PerCpuArray<IfCounters>` indexed by ifindex, for ifindexes below
    /// [`super::FAST_SLOTS`] (nearly every interface): an array lookup is the
    /// cheapest the packet path can do. Slot 0 is the retired entry.
    pub const FAST: &str = "TALLY_FAST";
    /// `PerCpuHashMap<u32 ifindex, IfCounters>` for ifindexes from
    /// [`super::FAST_SLOTS`] up (hosts where many interfaces came and went).
    pub const COUNTERS: &str = "TALLY_COUNTERS";
    /// `HashMap<u32 ifindex, IfaceInfo>`.
    pub const IFACES: &str = "TALLY_IFACES";
    /// `Array<Meta>` with one entry.
    pub const META: &str = "TALLY_META";
}

/// Names of the programs in the eBPF object.
pub mod programs {
    pub const INGRESS: &str = "tally_ingress";
    pub const EGRESS: &str = "tally_egress";
    /// An empty classifier, the baseline of `cargo xtask bench ebpf`.
    pub const NOOP: &str = "tally_noop";
}

/// Capacity of the per-interface maps.
pub const MAX_INTERFACES: u32 = 16_384;

/// Interfaces with an ifindex below this are counted in the `TALLY_FAST`
/// array; the others in the `TALLY_COUNTERS` hash map.
pub const FAST_SLOTS: u32 = 4096;

/// Whether `ifindex` is counted in the fast array.
pub const fn is_fast(ifindex: u32) -> bool {
    ifindex < FAST_SLOTS
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all four are `#[repr(C)]`, contain only integers and byte arrays,
    // and have no padding (checked by the layout tests below).
    unsafe impl aya::Pod for super::IfCounters {}
    unsafe impl aya::Pod for super::FamilyCounters {}
    unsafe impl aya::Pod for super::IfaceInfo {}
    unsafe impl aya::Pod for super::Meta {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<FamilyCounters>(), 32);
        assert_eq!(size_of::<IfCounters>(), 32 + 2 * 32);
        assert_eq!(size_of::<IfaceInfo>(), 16 + 4 + 4 + 8 + 8);
        assert_eq!(size_of::<Meta>(), 8 + 4 + 4 + 16 + 8 + 8 + 96);
    }

    fn family(n: u64) -> FamilyCounters {
        FamilyCounters {
            rx_bytes: n,
            rx_packets: n + 1,
            tx_bytes: n + 2,
            tx_packets: n + 3,
        }
    }

    #[test]
    fn accumulate_adds_and_saturates() {
        let mut a = IfCounters {
            rx_bytes: 1,
            rx_packets: 2,
            tx_bytes: 3,
            tx_packets: 4,
            ipv4: family(10),
            ipv6: family(100),
        };
        a.accumulate(&IfCounters {
            rx_bytes: 10,
            rx_packets: 20,
            tx_bytes: 30,
            tx_packets: 40,
            ipv4: family(1_000),
            ipv6: family(10_000),
        });
        assert_eq!(
            a,
            IfCounters {
                rx_bytes: 11,
                rx_packets: 22,
                tx_bytes: 33,
                tx_packets: 44,
                ipv4: FamilyCounters {
                    rx_bytes: 1_010,
                    rx_packets: 1_012,
                    tx_bytes: 1_014,
                    tx_packets: 1_016,
                },
                ipv6: FamilyCounters {
                    rx_bytes: 10_100,
                    rx_packets: 10_102,
                    tx_bytes: 10_104,
                    tx_packets: 10_106,
                },
            }
        );
        let mut b = IfCounters {
            rx_bytes: u64::MAX - 1,
            ipv4: family(u64::MAX - 3),
            ipv6: family(7),
            ..Default::default()
        };
        b.accumulate(&IfCounters {
            rx_bytes: 5,
            ipv4: family(5),
            ipv6: family(u64::MAX - 20),
            ..Default::default()
        });
        assert_eq!(b.rx_bytes, u64::MAX);
        let max = u64::MAX;
        assert_eq!(
            b.ipv4,
            FamilyCounters {
                rx_bytes: max,
                rx_packets: max,
                tx_bytes: max,
                tx_packets: max,
            },
            "each family counter saturates"
        );
        assert_eq!(
            b.ipv6,
            FamilyCounters {
                rx_bytes: max - 13,
                rx_packets: max - 11,
                tx_bytes: max - 9,
                tx_packets: max - 7,
            }
        );
    }

    #[test]
    fn names_fit_the_kernel_limit() {
        for name in [
            maps::FAST,
            maps::COUNTERS,
            maps::IFACES,
            maps::META,
            programs::INGRESS,
            programs::EGRESS,
            programs::NOOP,
        ] {
            assert!(name.len() <= 15, "{name}");
        }
    }
}
