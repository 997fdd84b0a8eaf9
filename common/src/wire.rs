//! What a packet the TC hooks see would be on the wire.
//!
//! A socket buffer can carry several wire frames: TCP and UDP segmentation
//! offload build one large buffer that the NIC (or the kernel's software
//! GSO, after the egress hook) cuts into frames, and GRO merges received
//! frames into one buffer before the ingress hook. The kernel records how
//! many frames it stands for (`gso_segs`). Each frame repeats the headers
//! that the buffer holds once: the link-layer header (with any VLAN tags in
//! the data), the IPv4 or IPv6 header and the TCP or UDP header. So a
//! buffer of `len` bytes and `segs` frames is `len + (segs − 1) × header`
//! bytes and `segs` packets on the wire, which is what a NIC's statistics
//! count.
//!
//! [`repeated_header_len`] finds that header length by reading the
//! packet's headers through [`PacketBytes`]: the eBPF programs read the
//! socket buffer, the unit tests a byte slice.

/// EtherTypes and IP protocol numbers the parser knows.
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// IPv6 extension headers that can come before TCP or UDP in a merged or
/// segmented packet: hop-by-hop options, routing, destination options.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_DESTINATION: u8 = 60;

/// The Ethernet header before the EtherType: two MAC addresses.
const ETH_ADDRS_LEN: u32 = 12;
const VLAN_TAG_LEN: u32 = 4;
const IPV6_HEADER_LEN: u32 = 40;
const UDP_HEADER_LEN: u32 = 8;

/// Reads a packet's bytes at offsets from the start of its link-layer
/// header; `None` past its end (or when the read fails).
pub trait PacketBytes {
    fn u8_at(&self, offset: u32) -> Option<u8>;

    /// A big-endian (network order) 16-bit field.
    fn be16_at(&self, offset: u32) -> Option<u16>;
}

/// The length of the headers every wire frame of a multi-frame packet
/// repeats: Ethernet, up to two VLAN tags in the data, IPv4 (with options)
/// or IPv6 (with up to two hop-by-hop, routing or destination-options
/// headers), and TCP (with options) or UDP. `None` for anything else
/// (tunnels, other protocols), or when the packet is shorter than its
/// headers claim.
///
/// VLAN tags the kernel keeps beside the data (`vlan_tci`, the NIC inserts
/// or strips them) are not in the data, nor in `len`, nor in what the
/// kernel's statistics count: they are left out here too.
#[inline(always)]
pub fn repeated_header_len<P: PacketBytes>(packet: &P) -> Option<u32> {
    let mut ether_type_at = ETH_ADDRS_LEN;
    let mut ether_type = packet.be16_at(ether_type_at)?;
    // Written out twice rather than as a loop: the eBPF programs run this,
    // and a verifier of an older kernel refuses loops.
    if ether_type == ETH_P_8021AD || ether_type == ETH_P_8021Q {
        ether_type_at += VLAN_TAG_LEN;
        ether_type = packet.be16_at(ether_type_at)?;
    }
    if ether_type == ETH_P_8021Q {
        ether_type_at += VLAN_TAG_LEN;
        ether_type = packet.be16_at(ether_type_at)?;
    }
    let network_at = ether_type_at + 2;
    let (protocol, transport_at) = match ether_type {
        ETH_P_IPV4 => {
            let version_ihl = packet.u8_at(network_at)?;
            let header_len = u32::from(version_ihl & 0x0F) * 4;
            (packet.u8_at(network_at + 9)?, network_at + header_len)
        }
        ETH_P_IPV6 => {
            let mut next = packet.u8_at(network_at + 6)?;
            let mut at = network_at + IPV6_HEADER_LEN;
            if is_ipv6_extension(next) {
                (next, at) = skip_ipv6_extension(packet, at)?;
            }
            if is_ipv6_extension(next) {
                (next, at) = skip_ipv6_extension(packet, at)?;
            }
            (next, at)
        }
        _ => return None,
    };
    let transport_len = match protocol {
        IPPROTO_TCP => u32::from(packet.u8_at(transport_at + 12)? >> 4) * 4,
        IPPROTO_UDP => UDP_HEADER_LEN,
        _ => return None,
    };
    Some(transport_at + transport_len)
}

#[inline(always)]
fn is_ipv6_extension(next: u8) -> bool {
    next == IPV6_HOP_BY_HOP || next == IPV6_ROUTING || next == IPV6_DESTINATION
}

/// The next-header value after the extension header at `at`, and where
/// that next header starts (the length field counts 8-byte units after the
/// first 8).
#[inline(always)]
fn skip_ipv6_extension<P: PacketBytes>(packet: &P, at: u32) -> Option<(u8, u32)> {
    let next = packet.u8_at(at)?;
    let units = u32::from(packet.u8_at(at + 1)?);
    Some((next, at + (units + 1) * 8))
}

/// The bytes on the wire of a packet of `len` bytes that stands for `segs`
/// frames, each repeating `header` bytes: `len + (segs − 1) × header`.
/// Saturates rather than wraps (it cannot come near `u64::MAX` anyway).
#[inline(always)]
pub fn wire_bytes(len: u32, segs: u32, header: u32) -> u64 {
    let extra = u64::from(segs.saturating_sub(1)) * u64::from(header);
    u64::from(len).saturating_add(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Bytes<'a>(&'a [u8]);

    impl PacketBytes for Bytes<'_> {
        fn u8_at(&self, offset: u32) -> Option<u8> {
            self.0.get(offset as usize).copied()
        }
        fn be16_at(&self, offset: u32) -> Option<u16> {
            let at = offset as usize;
            Some(u16::from_be_bytes([*self.0.get(at)?, *self.0.get(at + 1)?]))
        }
    }

    /// An Ethernet header with `tags` (TPIDs) and then `ether_type`.
    fn ethernet(tags: &[u16], ether_type: u16) -> [u8; 64] {
        let mut out = [0u8; 64];
        let mut at = 12;
        for tpid in tags {
            out[at..at + 2].copy_from_slice(&tpid.to_be_bytes());
            out[at + 2..at + 4].copy_from_slice(&[0x00, 0x07]);
            at += 4;
        }
        out[at..at + 2].copy_from_slice(&ether_type.to_be_bytes());
        out
    }

    fn packet(parts: &[&[u8]]) -> [u8; 256] {
        let mut out = [0u8; 256];
        let mut at = 0;
        for part in parts {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    fn ipv4(ihl: u8, protocol: u8) -> [u8; 60] {
        let mut out = [0u8; 60];
        out[0] = 0x40 | ihl;
        out[9] = protocol;
        out
    }

    fn ipv6(next: u8) -> [u8; 40] {
        let mut out = [0u8; 40];
        out[0] = 0x60;
        out[6] = next;
        out
    }

    fn tcp(data_offset_words: u8) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[12] = data_offset_words << 4;
        out
    }

    fn parse(bytes: &[u8]) -> Option<u32> {
        repeated_header_len(&Bytes(bytes))
    }

    #[test]
    fn ipv4_tcp_with_and_without_options() {
        let eth = ethernet(&[], ETH_P_IPV4);
        // 14 + 20 + 20: the 54 bytes per merged frame of the figures.
        let plain = packet(&[&eth[..14], &ipv4(5, IPPROTO_TCP)[..20], &tcp(5)]);
        assert_eq!(parse(&plain), Some(54));
        // Timestamps (TCP header of 32 bytes), IPv4 options (24 bytes).
        let options = packet(&[&eth[..14], &ipv4(6, IPPROTO_TCP)[..24], &tcp(8)]);
        assert_eq!(parse(&options), Some(14 + 24 + 32));
    }

    #[test]
    fn udp_over_both_families() {
        let eth4 = ethernet(&[], ETH_P_IPV4);
        let udp4 = packet(&[&eth4[..14], &ipv4(5, IPPROTO_UDP)[..20]]);
        assert_eq!(parse(&udp4), Some(14 + 20 + 8));
        let eth6 = ethernet(&[], ETH_P_IPV6);
        let udp6 = packet(&[&eth6[..14], &ipv6(IPPROTO_UDP)]);
        assert_eq!(parse(&udp6), Some(14 + 40 + 8));
    }

    #[test]
    fn vlan_tags_in_the_data_count_per_frame() {
        let one = ethernet(&[ETH_P_8021Q], ETH_P_IPV6);
        let tagged = packet(&[&one[..18], &ipv6(IPPROTO_TCP), &tcp(8)]);
        assert_eq!(parse(&tagged), Some(18 + 40 + 32));
        let two = ethernet(&[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IPV4);
        let qinq = packet(&[&two[..22], &ipv4(5, IPPROTO_TCP)[..20], &tcp(5)]);
        assert_eq!(parse(&qinq), Some(22 + 20 + 20));
        // A third tag is not parsed: the packet counts without a header.
        let three = ethernet(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], ETH_P_IPV4);
        let deep = packet(&[&three[..26], &ipv4(5, IPPROTO_TCP)[..20], &tcp(5)]);
        assert_eq!(parse(&deep), None);
    }

    #[test]
    fn ipv6_extension_headers_are_skipped_up_to_two() {
        let eth = ethernet(&[], ETH_P_IPV6);
        // Hop-by-hop (8 bytes) then destination options (16 bytes) then TCP.
        let hop = [IPV6_DESTINATION, 0, 0, 0, 0, 0, 0, 0];
        let dest = [IPPROTO_TCP, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let two = packet(&[&eth[..14], &ipv6(IPV6_HOP_BY_HOP), &hop, &dest, &tcp(5)]);
        assert_eq!(parse(&two), Some(14 + 40 + 8 + 16 + 20));
        let routing = [IPV6_ROUTING, 0, 0, 0, 0, 0, 0, 0];
        let three = packet(&[
            &eth[..14],
            &ipv6(IPV6_HOP_BY_HOP),
            &hop,
            &routing,
            &dest,
            &tcp(5),
        ]);
        assert_eq!(parse(&three), None, "a third extension header");
    }

    #[test]
    fn other_protocols_and_short_packets_have_none() {
        let arp = packet(&[&ethernet(&[], 0x0806)[..14]]);
        assert_eq!(parse(&arp), None);
        let eth = ethernet(&[], ETH_P_IPV4);
        let gre = packet(&[&eth[..14], &ipv4(5, 47)[..20]]);
        assert_eq!(parse(&gre), None);
        let full = packet(&[&eth[..14], &ipv4(5, IPPROTO_TCP)[..20], &tcp(5)]);
        assert_eq!(parse(&full[..14 + 20 + 12]), None, "cut before doff");
        assert_eq!(parse(&full[..13]), None);
    }

    #[test]
    fn wire_bytes_repeat_the_header_per_extra_frame() {
        assert_eq!(wire_bytes(1_514, 1, 54), 1_514);
        assert_eq!(wire_bytes(1_514, 0, 54), 1_514, "no segments recorded");
        // 44 frames of 1,448 bytes of payload merged: 54 + 44 × 1,448.
        assert_eq!(wire_bytes(54 + 44 * 1_448, 44, 54), 44 * (54 + 1_448));
        assert_eq!(
            wire_bytes(u32::MAX, u32::MAX, u32::MAX),
            u64::from(u32::MAX) + u64::from(u32::MAX - 1) * u64::from(u32::MAX)
        );
    }
}
