//! tally's kernel side: TC classifiers on ingress and egress that add each
//! packet's length (`skb->len` at the hook, link-layer header included) and 1
//! to the per-CPU counters of the interface it passes, and always let the
//! packet through. A packet that stands for several wire frames (TCP or UDP
//! segmentation offload on egress, GRO on ingress: `gso_segs` > 1) adds
//! those frames and their repeated headers instead (`tally_common::wire`),
//! so the counters are what the NIC's statistics count. An IPv4 or IPv6 packet (`skb->protocol` 0x0800 or 0x86DD
//! at the hook) is also added to that family's part of the same value; what
//! is neither (ARP, ...) is only in the totals.
//!
//! They return `TC_ACT_UNSPEC` (TCX: "next"), never `TC_ACT_OK`: that lets
//! the packet on *and* lets any other program or filter on the same hook run,
//! so tally never changes what the rest of the system does with a packet.
//!
//! Nearly every interface has an ifindex below `FAST_SLOTS` and is counted in
//! a per-CPU array indexed by it (an inlined lookup). Larger ifindexes (hosts
//! where thousands of interfaces came and went) use a per-CPU hash map whose
//! entries the agent creates before it attaches, so the packet path never
//! allocates: a packet on an interface without an entry is passed on
//! uncounted (that cannot happen for an interface the agent attached to).
//! Loopback never gets a program.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{BPF_F_NO_PREALLOC, TC_ACT_UNSPEC},
        macros::{classifier, map},
        maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
        programs::TcContext,
    };
    use tally_common::{
        FAST_SLOTS, IfCounters, IfaceInfo, MAX_INTERFACES, Meta, is_fast,
        wire::{PacketBytes, repeated_header_len, wire_bytes},
    };

    /// Per-interface counters indexed by ifindex, for ifindexes below
    /// `FAST_SLOTS`: the lookup is an inlined array access.
    #[map(name = "TALLY_FAST")]
    static TALLY_FAST: PerCpuArray<IfCounters> = PerCpuArray::with_max_entries(FAST_SLOTS, 0);

    /// Per-interface counters keyed by ifindex, for the larger ifindexes.
    /// Entries are created (zeroed) by the agent, never by these programs.
    #[map(name = "TALLY_COUNTERS")]
    static TALLY_COUNTERS: PerCpuHashMap<u32, IfCounters> =
        PerCpuHashMap::with_max_entries(MAX_INTERFACES, BPF_F_NO_PREALLOC);

    /// What the agent knows about each counted interface; user space only.
    #[map(name = "TALLY_IFACES")]
    static TALLY_IFACES: HashMap<u32, IfaceInfo> =
        HashMap::with_max_entries(MAX_INTERFACES, BPF_F_NO_PREALLOC);

    /// The identity (epoch) of this counter set; user space only.
    #[map(name = "TALLY_META")]
    static TALLY_META: Array<Meta> = Array::with_max_entries(1, 0);

    #[classifier]
    pub fn tally_ingress(ctx: TcContext) -> i32 {
        count(&ctx, Direction::Rx);
        TC_ACT_UNSPEC
    }

    #[classifier]
    pub fn tally_egress(ctx: TcContext) -> i32 {
        count(&ctx, Direction::Tx);
        TC_ACT_UNSPEC
    }

    /// The empty classifier that `cargo xtask bench ebpf` compares ours with.
    #[classifier]
    pub fn tally_noop(_ctx: TcContext) -> i32 {
        TC_ACT_UNSPEC
    }

    enum Direction {
        Rx,
        Tx,
    }

    /// `skb->protocol` of an IPv4 and of an IPv6 packet: the EtherType as the
    /// kernel keeps it, in network byte order (a `__be16` in the low half of
    /// the u32 field).
    const PROTOCOL_IPV4: u32 = u16::to_be(0x0800) as u32;
    const PROTOCOL_IPV6: u32 = u16::to_be(0x86DD) as u32;

    /// The socket buffer's bytes, read with `bpf_skb_load_bytes` (which
    /// also reaches data outside the linear part).
    struct Skb<'a>(&'a TcContext);

    impl PacketBytes for Skb<'_> {
        #[inline(always)]
        fn u8_at(&self, offset: u32) -> Option<u8> {
            self.0.load::<u8>(offset as usize).ok()
        }

        #[inline(always)]
        fn be16_at(&self, offset: u32) -> Option<u16> {
            self.0.load::<u16>(offset as usize).ok().map(u16::from_be)
        }
    }

    /// The bytes and packets a packet stands for on the wire (see
    /// `tally_common::wire`): `len` and 1 for nearly every packet; for one
    /// that carries `segs` > 1 frames (segmentation offload on egress, GRO
    /// on ingress), those frames with their repeated headers.
    #[inline(always)]
    fn wire_counts(ctx: &TcContext, direction: &Direction) -> (u64, u64) {
        // SAFETY: `skb` points at the context the kernel passed in.
        let (len, segs) = unsafe { ((*ctx.skb.skb).len, (*ctx.skb.skb).gso_segs) };
        if segs <= 1 {
            return (u64::from(len), 1);
        }
        let bytes = match direction {
            // On egress the kernel has done the sum already: before the
            // egress hook, `__dev_queue_xmit` sets the packet's qdisc length
            // (`qdisc_pkt_len_init`, what `wire_len` reads) to `len` plus
            // the link-layer, network and TCP or UDP headers once per extra
            // segment, the rule of `wire`, for the qdiscs' byte accounting.
            // SAFETY: as above.
            Direction::Tx => u64::from(unsafe { (*ctx.skb.skb).wire_len }.max(len)),
            // On ingress it has not (the length is plain `len` there), so
            // the headers are read from the packet. A packet whose headers
            // are not parsed (a tunnel, say) counts its frames but only the
            // bytes it holds.
            Direction::Rx => match repeated_header_len(&Skb(ctx)) {
                Some(header) => wire_bytes(len, segs, header),
                None => u64::from(len),
            },
        };
        (bytes, u64::from(segs))
    }

    #[inline(always)]
    fn count(ctx: &TcContext, direction: Direction) {
        // SAFETY: `skb` points at the context the kernel passed in.
        let (ifindex, protocol) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).protocol) };
        let slot = if is_fast(ifindex) {
            TALLY_FAST.get_ptr_mut(ifindex)
        } else {
            TALLY_COUNTERS.get_ptr_mut(ifindex)
        };
        let Some(counters) = slot else {
            return;
        };
        let (bytes, packets) = wire_counts(ctx, &direction);
        // SAFETY: the pointer is this CPU's copy of the value, valid while the
        // program runs. TC programs run with bottom halves disabled, so
        // nothing else on this CPU interleaves with the read-modify-write and
        // plain (non-atomic) additions are exact.
        let counters = unsafe { &mut *counters };
        // The family's counters are updated without a branch that picks
        // one of the two: each addition goes to a fixed offset, adding zero
        // to the other family. A branch let the compiler merge the two
        // updates into one through a pointer whose offset depends on the
        // path, which the verifier refuses without CAP_PERFMON ("pointer
        // arithmetic ... prohibited for !root"), and the agent's unit grants
        // only CAP_BPF and CAP_NET_ADMIN.
        let ipv4 = u64::from(protocol == PROTOCOL_IPV4);
        let ipv6 = u64::from(protocol == PROTOCOL_IPV6);
        match direction {
            Direction::Rx => {
                counters.rx_bytes += bytes;
                counters.rx_packets += packets;
                counters.ipv4.rx_bytes += bytes * ipv4;
                counters.ipv4.rx_packets += packets * ipv4;
                counters.ipv6.rx_bytes += bytes * ipv6;
                counters.ipv6.rx_packets += packets * ipv6;
            }
            Direction::Tx => {
                counters.tx_bytes += bytes;
                counters.tx_packets += packets;
                counters.ipv4.tx_bytes += bytes * ipv4;
                counters.ipv4.tx_packets += packets * ipv4;
                counters.ipv6.tx_bytes += bytes * ipv6;
                counters.ipv6.tx_packets += packets * ipv6;
            }
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Built for the host, this binary is only a placeholder: the programs
    // exist for the BPF target alone (see `cargo xtask build-ebpf`).
}
