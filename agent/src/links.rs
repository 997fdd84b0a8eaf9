//! Interface classes: what kind of link each interface is, and which
//! interfaces carry a default route (the uplinks).
//!
//! The kind comes from rtnetlink's link message: the kind in IFLA_LINKINFO
//! (`veth`, `bridge`, `vlan`, ...) or, without one, a hardware device
//! (PHYSICAL). A bridge named like a container runtime's (`docker*`,
//! `br-<12 hex digits>`, `podman*`, `cni*`, `virbr*`) is a CONTAINER_BRIDGE.
//! The uplinks are the output interfaces (multipath next hops included) of
//! the IPv4 and IPv6 default routes of the main table. Each link's master
//! (IFLA_MASTER: the bridge or bond it is a port of) and the device it is
//! stacked on (IFLA_LINK: a vlan's parent) go along, so that the collector
//! can tell traffic seen twice, on a port and on its bridge.
//!
//! Everything here is pure: the netlink side (dumps, notifications) is in
//! [`crate::netwatch`]. [`LinkClasses`] holds what the last dumps said and
//! fills each reading's entries with it.

use std::collections::{BTreeMap, BTreeSet};

use rtnetlink::packet_core::Nla as _;
use rtnetlink::packet_route::{
    link::{InfoData, InfoKind, InfoTun, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage},
    route::{RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHopFlags, RouteType},
};
pub use tally_proto::v1::LinkKind;

use crate::source::InterfaceCounters;

/// IFLA_TUN_TYPE in a tun device's IFLA_INFO_DATA (`linux/if_link.h`).
const IFLA_TUN_TYPE: u16 = 3;
/// IFF_TUN / IFF_TAP (`linux/if_tun.h`), the values of IFLA_TUN_TYPE.
const IFF_TUN: u8 = 0x0001;
const IFF_TAP: u8 = 0x0002;

/// Is this the name a container runtime gives its bridges? `docker*`,
/// `br-` + 12 hex digits (Docker's user-defined networks), `podman*`,
/// `cni*`, `virbr*` (libvirt).
pub fn is_container_bridge_name(name: &str) -> bool {
    if let Some(id) = name.strip_prefix("br-") {
        return id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    }
    ["docker", "podman", "cni", "virbr"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// The class of a link called `name` whose IFLA_INFO_KIND is `kind` (`None`:
/// the message has none, a hardware device); `tap` tells a tun device in
/// TAP mode from one in TUN mode.
pub fn kind_of(name: &str, kind: Option<&InfoKind>, tap: bool) -> LinkKind {
    let Some(kind) = kind else {
        return LinkKind::Physical;
    };
    match kind {
        InfoKind::Bridge if is_container_bridge_name(name) => LinkKind::ContainerBridge,
        InfoKind::Bridge => LinkKind::Bridge,
        InfoKind::Vlan => LinkKind::Vlan,
        InfoKind::Bond => LinkKind::Bond,
        InfoKind::Veth => LinkKind::Veth,
        InfoKind::Tun if tap => LinkKind::Tap,
        InfoKind::Tun => LinkKind::Tun,
        InfoKind::Wireguard => LinkKind::Wireguard,
        InfoKind::MacVlan | InfoKind::MacVtap => LinkKind::Macvlan,
        InfoKind::Vxlan => LinkKind::Vxlan,
        _ => LinkKind::Other,
    }
}

/// The interface name in a link message.
pub fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

/// One interface of the namespace, as a link message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub kind: LinkKind,
    /// IFLA_MASTER, 0 for none.
    pub master_ifindex: u32,
    /// The device it is stacked on, 0 for none (see [`link_ifindex`]).
    pub link_ifindex: u32,
}

impl Link {
    /// The link a message describes (`None` without a name, which the
    /// kernel always sends).
    pub fn of(msg: &LinkMessage) -> Option<Self> {
        let kind = link_kind(msg);
        Some(Self {
            ifindex: msg.header.index,
            name: link_name(msg)?.to_owned(),
            kind,
            master_ifindex: master_ifindex(msg),
            link_ifindex: link_ifindex(msg, kind),
        })
    }
}

/// IFLA_MASTER of a link message: the bridge or bond it is a port of (0 for
/// none).
pub fn master_ifindex(msg: &LinkMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|attr| match attr {
            LinkAttribute::Controller(index) => Some(*index),
            _ => None,
        })
        .unwrap_or(0)
}

/// The device in this namespace that a link of `kind` is stacked on: its
/// IFLA_LINK (a vlan's or macvlan's parent), or 0 when that names nothing
/// else here: a veth's IFLA_LINK is its peer (not a lower device), a
/// hardware device's is its own index, and with IFLA_LINK_NETNSID the index
/// is one of another namespace.
pub fn link_ifindex(msg: &LinkMessage, kind: LinkKind) -> u32 {
    let mut link = 0;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::LinkNetNsId(_) => return 0,
            LinkAttribute::Link(index) => link = *index,
            _ => {}
        }
    }
    if kind == LinkKind::Veth || link == msg.header.index {
        return 0;
    }
    link
}

/// The parts of IFLA_LINKINFO, if the message has it.
fn link_info(msg: &LinkMessage) -> &[LinkInfo] {
    msg.attributes
        .iter()
        .find_map(|attr| match attr {
            LinkAttribute::LinkInfo(info) => Some(info.as_slice()),
            _ => None,
        })
        .unwrap_or_default()
}

/// IFLA_TUN_TYPE of a tun device (IFF_TUN or IFF_TAP), if the kernel said.
fn tun_type(info: &[LinkInfo]) -> Option<u8> {
    info.iter().find_map(|part| match part {
        LinkInfo::Data(InfoData::Tun(attrs)) => attrs.iter().find_map(|attr| match attr {
            InfoTun::Other(nla) if nla.kind() == IFLA_TUN_TYPE && nla.value_len() == 1 => {
                let mut value = [0u8; 1];
                nla.emit_value(&mut value);
                Some(value[0])
            }
            _ => None,
        }),
        _ => None,
    })
}

/// The class of the link a message describes. Only IFLA_INFO_KIND counts: a
/// hardware device enslaved to a bond or bridge has IFLA_LINKINFO too, with
/// only a port kind, and stays PHYSICAL. A tun device is TAP when its
/// IFLA_TUN_TYPE says so (kernels since 4.15), or else when it is an
/// Ethernet device (a TUN device has no link-layer header).
pub fn link_kind(msg: &LinkMessage) -> LinkKind {
    let info = link_info(msg);
    let kind = info.iter().find_map(|part| match part {
        LinkInfo::Kind(kind) => Some(kind),
        _ => None,
    });
    let tap = match tun_type(info) {
        Some(IFF_TAP) => true,
        Some(IFF_TUN) => false,
        _ => msg.header.link_layer_type == LinkLayerType::Ether,
    };
    kind_of(link_name(msg).unwrap_or_default(), kind, tap)
}

/// The route's table (RTA_TABLE, which holds ids above 255, or the header's).
fn table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// Whether a route (added, changed or deleted) is a default route of the
/// main table: what a route notification must be about to matter here.
pub fn is_main_default(route: &RouteMessage) -> bool {
    route.header.destination_prefix_length == 0
        && table(route) == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// The output interfaces of a main-table unicast default route (its RTA_OIF
/// and every next hop of RTA_MULTIPATH); none for any other route. A dead
/// next hop (its interface is down; the kernel keeps the rest of a
/// multipath route) carries nothing and is left out; one whose link has
/// merely lost its carrier stays. Routes through nexthop objects are
/// included as long as the kernel expands them in dumps
/// (`net.ipv4.nexthop_compat_mode`, on by default).
pub fn default_route_interfaces(route: &RouteMessage) -> Vec<u32> {
    if !is_main_default(route)
        || route.header.kind != RouteType::Unicast
        || route.header.flags.contains(RouteFlags::Dead)
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(index) => out.push(*index),
            RouteAttribute::MultiPath(hops) => out.extend(
                hops.iter()
                    .filter(|hop| !hop.flags.contains(RouteNextHopFlags::Dead))
                    .map(|hop| hop.interface_index),
            ),
            _ => {}
        }
    }
    out.retain(|index| *index != 0);
    out
}

/// What the agent knows about the links of its namespace: each present
/// link (kind, master, lower device), the links that went away while
/// readings still list them, and which links carry a default route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkClasses {
    /// By ifindex.
    present: BTreeMap<u32, Link>,
    /// Links no longer present, kept while a reading lists their ifindex
    /// (an interface that went away keeps its entry for a while).
    departed: BTreeMap<u32, Link>,
    uplinks: BTreeSet<u32>,
}

impl LinkClasses {
    /// The links present now, from a link dump; returns whether they differ
    /// from the last dump's (a new master counts as a change).
    pub fn set_links(&mut self, links: &[Link]) -> bool {
        let present: BTreeMap<u32, Link> = links
            .iter()
            .map(|link| (link.ifindex, link.clone()))
            .collect();
        if present == self.present {
            return false;
        }
        for (ifindex, known) in std::mem::replace(&mut self.present, present) {
            if !self.present.contains_key(&ifindex) {
                self.departed.insert(ifindex, known);
            }
        }
        self.departed
            .retain(|ifindex, _| !self.present.contains_key(ifindex));
        true
    }

    /// The interfaces that carry a default route now; returns whether the
    /// set changed.
    pub fn set_uplinks(&mut self, uplinks: BTreeSet<u32>) -> bool {
        let changed = self.uplinks != uplinks;
        self.uplinks = uplinks;
        changed
    }

    /// The names of the interfaces that carry a default route (for logs).
    pub fn uplink_names(&self) -> Vec<&str> {
        self.uplinks
            .iter()
            .filter_map(|ifindex| self.present.get(ifindex))
            .map(|link| link.name.as_str())
            .collect()
    }

    /// What is known of the link with this index, present or departed.
    fn known(&self, ifindex: u32) -> Option<&Link> {
        self.present
            .get(&ifindex)
            .or_else(|| self.departed.get(&ifindex))
    }

    /// The kind of the link with this index (UNSPECIFIED when unknown, as
    /// for the retired entry's index 0).
    pub fn kind(&self, ifindex: u32) -> LinkKind {
        self.known(ifindex)
            .map_or(LinkKind::Unspecified, |link| link.kind)
    }

    /// The master of the link with this index (0 for none or unknown).
    pub fn master_ifindex(&self, ifindex: u32) -> u32 {
        self.known(ifindex).map_or(0, |link| link.master_ifindex)
    }

    /// The device the link with this index is stacked on (0 for none or
    /// unknown).
    pub fn link_ifindex(&self, ifindex: u32) -> u32 {
        self.known(ifindex).map_or(0, |link| link.link_ifindex)
    }

    /// Whether the link with this index carries a default route.
    pub fn default_route(&self, ifindex: u32) -> bool {
        self.present.contains_key(&ifindex) && self.uplinks.contains(&ifindex)
    }

    /// Fills the kind, default route, master and lower device of a
    /// reading's entries, and forgets departed links the reading no longer
    /// lists.
    pub fn classify(&mut self, interfaces: &mut [InterfaceCounters]) {
        for entry in interfaces.iter_mut() {
            entry.kind = self.kind(entry.ifindex);
            entry.default_route = self.default_route(entry.ifindex);
            entry.master_ifindex = self.master_ifindex(entry.ifindex);
            entry.link_ifindex = self.link_ifindex(entry.ifindex);
        }
        let listed: BTreeSet<u32> = interfaces.iter().map(|entry| entry.ifindex).collect();
        self.departed.retain(|ifindex, _| listed.contains(ifindex));
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_core::DefaultNla;
    use rtnetlink::packet_route::{
        AddressFamily,
        link::InfoPortKind,
        route::{RouteNextHop, RouteProtocol},
    };

    use super::*;

    fn link(name: &str, info: Vec<LinkInfo>) -> LinkMessage {
        let mut msg = LinkMessage::default();
        msg.header.link_layer_type = LinkLayerType::Ether;
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        if !info.is_empty() {
            msg.attributes.push(LinkAttribute::LinkInfo(info));
        }
        msg
    }

    fn tun(name: &str, mode: Option<u8>, layer: LinkLayerType) -> LinkMessage {
        let mut info = vec![LinkInfo::Kind(InfoKind::Tun)];
        if let Some(mode) = mode {
            info.push(LinkInfo::Data(InfoData::Tun(vec![
                InfoTun::Other(DefaultNla::new(1, vec![0; 4])),
                InfoTun::Other(DefaultNla::new(IFLA_TUN_TYPE, vec![mode])),
            ])));
        }
        let mut msg = link(name, info);
        msg.header.link_layer_type = layer;
        msg
    }

    #[test]
    fn kinds_from_the_link_info() {
        let cases = [
            (InfoKind::Vlan, LinkKind::Vlan),
            (InfoKind::Bond, LinkKind::Bond),
            (InfoKind::Bridge, LinkKind::Bridge),
            (InfoKind::Veth, LinkKind::Veth),
            (InfoKind::Wireguard, LinkKind::Wireguard),
            (InfoKind::MacVlan, LinkKind::Macvlan),
            (InfoKind::MacVtap, LinkKind::Macvlan),
            (InfoKind::Vxlan, LinkKind::Vxlan),
            (InfoKind::Dummy, LinkKind::Other),
            (InfoKind::Ifb, LinkKind::Other),
            (InfoKind::IpVlan, LinkKind::Other),
            (InfoKind::Team, LinkKind::Other),
            (InfoKind::Other("newkind".into()), LinkKind::Other),
        ];
        for (info, want) in cases {
            let msg = link("if9", vec![LinkInfo::Kind(info.clone())]);
            assert_eq!(link_kind(&msg), want, "{info:?}");
        }
    }

    #[test]
    fn without_a_kind_a_link_is_physical_even_as_a_port() {
        assert_eq!(link_kind(&link("eth0", vec![])), LinkKind::Physical);
        // A NIC enslaved to a bond: IFLA_LINKINFO with only the port kind.
        let port = link("eth1", vec![LinkInfo::PortKind(InfoPortKind::Bond)]);
        assert_eq!(link_kind(&port), LinkKind::Physical);
        assert_eq!(kind_of("enp3s0", None, true), LinkKind::Physical);
    }

    #[test]
    fn container_runtime_bridges_by_name() {
        for name in [
            "docker0",
            "docker_gwbridge",
            "br-0123456789ab",
            "br-ABCDEF012345",
            "podman0",
            "cni0",
            "cni-podman1",
            "virbr0",
        ] {
            assert!(is_container_bridge_name(name), "{name}");
            assert_eq!(
                kind_of(name, Some(&InfoKind::Bridge), false),
                LinkKind::ContainerBridge,
                "{name}"
            );
        }
        for name in [
            "br0",
            "br-lan",
            "br-0123456789a",
            "br-0123456789abc",
            "br-0123456789ag",
            "mydocker0",
            "vmbr0",
        ] {
            assert!(!is_container_bridge_name(name), "{name}");
            assert_eq!(
                kind_of(name, Some(&InfoKind::Bridge), false),
                LinkKind::Bridge,
                "{name}"
            );
        }
        // Only a bridge becomes a container bridge by its name.
        assert_eq!(
            kind_of("docker0", Some(&InfoKind::Veth), false),
            LinkKind::Veth
        );
        assert_eq!(kind_of("docker0", None, false), LinkKind::Physical);
    }

    #[test]
    fn tun_and_tap_from_the_tun_type() {
        // The kernel's IFLA_TUN_TYPE decides, whatever the link layer.
        assert_eq!(
            link_kind(&tun("tun0", Some(IFF_TUN), LinkLayerType::Ether)),
            LinkKind::Tun
        );
        assert_eq!(
            link_kind(&tun("tap0", Some(IFF_TAP), LinkLayerType::None)),
            LinkKind::Tap
        );
        // Without it: a TAP device is an Ethernet device, a TUN one is not.
        assert_eq!(
            link_kind(&tun("tap1", None, LinkLayerType::Ether)),
            LinkKind::Tap
        );
        assert_eq!(
            link_kind(&tun("tun1", None, LinkLayerType::None)),
            LinkKind::Tun
        );
    }

    #[test]
    fn every_kind_has_its_own_name() {
        let names: BTreeSet<&str> = (0..=12)
            .map(|value| LinkKind::try_from(value).expect("a kind").name())
            .collect();
        assert_eq!(names.len(), 13);
        assert_eq!(LinkKind::ContainerBridge.name(), "container_bridge");
        assert!(LinkKind::try_from(13).is_err(), "a new kind needs a name");
    }

    fn route(
        family: AddressFamily,
        prefix: u8,
        table: u8,
        attrs: Vec<RouteAttribute>,
    ) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        msg.header.destination_prefix_length = prefix;
        msg.header.table = table;
        msg.header.kind = RouteType::Unicast;
        msg.header.protocol = RouteProtocol::Boot;
        msg.attributes = attrs;
        msg
    }

    fn hop(ifindex: u32) -> RouteNextHop {
        let mut hop = RouteNextHop::default();
        hop.interface_index = ifindex;
        hop
    }

    const MAIN: u8 = RouteHeader::RT_TABLE_MAIN;

    #[test]
    fn default_routes_of_the_main_table() {
        let v4 = route(AddressFamily::Inet, 0, MAIN, vec![RouteAttribute::Oif(2)]);
        assert_eq!(default_route_interfaces(&v4), [2]);
        let v6 = route(
            AddressFamily::Inet6,
            0,
            MAIN,
            vec![RouteAttribute::Table(254), RouteAttribute::Oif(5)],
        );
        assert_eq!(default_route_interfaces(&v6), [5]);
        let multipath = route(
            AddressFamily::Inet,
            0,
            MAIN,
            vec![RouteAttribute::MultiPath(vec![hop(3), hop(4)])],
        );
        assert_eq!(default_route_interfaces(&multipath), [3, 4]);
        assert!(is_main_default(&multipath));
    }

    #[test]
    fn dead_next_hops_carry_nothing() {
        let mut down = hop(3);
        down.flags = RouteNextHopFlags::Dead | RouteNextHopFlags::Linkdown;
        let mut no_carrier = hop(4);
        no_carrier.flags = RouteNextHopFlags::Linkdown;
        let multipath = route(
            AddressFamily::Inet,
            0,
            MAIN,
            vec![RouteAttribute::MultiPath(vec![down, no_carrier, hop(5)])],
        );
        assert_eq!(default_route_interfaces(&multipath), [4, 5]);
        let mut dead = route(AddressFamily::Inet, 0, MAIN, vec![RouteAttribute::Oif(2)]);
        dead.header.flags = RouteFlags::Dead;
        assert!(default_route_interfaces(&dead).is_empty());
        dead.header.flags = RouteFlags::Linkdown;
        assert_eq!(default_route_interfaces(&dead), [2]);
    }

    #[test]
    fn other_routes_carry_no_default() {
        // Not a default route.
        let subnet = route(AddressFamily::Inet, 24, MAIN, vec![RouteAttribute::Oif(2)]);
        assert!(default_route_interfaces(&subnet).is_empty());
        assert!(!is_main_default(&subnet));
        // A default route of another table (policy routing), by header or
        // by RTA_TABLE (ids above 255 only fit there).
        let other = route(AddressFamily::Inet, 0, 100, vec![RouteAttribute::Oif(2)]);
        assert!(default_route_interfaces(&other).is_empty());
        let big = route(
            AddressFamily::Inet,
            0,
            252,
            vec![RouteAttribute::Table(1000), RouteAttribute::Oif(2)],
        );
        assert!(default_route_interfaces(&big).is_empty());
        assert!(!is_main_default(&big));
        // An unreachable default is a default route without an uplink, but a
        // change to it still matters.
        let mut unreachable = route(AddressFamily::Inet6, 0, MAIN, vec![RouteAttribute::Oif(1)]);
        unreachable.header.kind = RouteType::Unreachable;
        assert!(default_route_interfaces(&unreachable).is_empty());
        assert!(is_main_default(&unreachable));
    }

    fn entry(name: &str, ifindex: u32) -> InterfaceCounters {
        InterfaceCounters {
            name: name.into(),
            ifindex,
            rx_bytes: 0,
            tx_bytes: 0,
            rx_packets: 0,
            tx_packets: 0,
            attached: true,
            kind: LinkKind::Unspecified,
            default_route: false,
            master_ifindex: 0,
            link_ifindex: 0,
            ipv4: None,
            ipv6: None,
        }
    }

    /// A link with no master and no lower device.
    fn plain(ifindex: u32, name: &str, kind: LinkKind) -> Link {
        stacked(ifindex, name, kind, 0, 0)
    }

    fn stacked(ifindex: u32, name: &str, kind: LinkKind, master: u32, lower: u32) -> Link {
        Link {
            ifindex,
            name: name.into(),
            kind,
            master_ifindex: master,
            link_ifindex: lower,
        }
    }

    fn classes_of(entries: &[InterfaceCounters]) -> Vec<(&str, LinkKind, bool)> {
        entries
            .iter()
            .map(|e| (e.name.as_str(), e.kind, e.default_route))
            .collect()
    }

    #[test]
    fn readings_get_the_classes_of_their_links() {
        let mut classes = LinkClasses::default();
        assert!(classes.set_links(&[
            plain(2, "eth0", LinkKind::Physical),
            plain(7, "veth7", LinkKind::Veth)
        ]));
        assert!(!classes.set_links(&[
            plain(7, "veth7", LinkKind::Veth),
            plain(2, "eth0", LinkKind::Physical)
        ]));
        assert!(classes.set_uplinks(BTreeSet::from([2])));
        assert!(!classes.set_uplinks(BTreeSet::from([2])), "unchanged");
        let mut entries = vec![
            entry(crate::ebpf::maps::RETIRED_NAME, 0),
            entry("eth0", 2),
            entry("veth7", 7),
        ];
        classes.classify(&mut entries);
        assert_eq!(
            classes_of(&entries),
            [
                ("(retired)", LinkKind::Unspecified, false),
                ("eth0", LinkKind::Physical, true),
                ("veth7", LinkKind::Veth, false),
            ]
        );

        // veth7 goes away (its entry stays listed for a while): it keeps
        // its kind, and a route naming its old index makes no uplink.
        assert!(classes.set_links(&[plain(2, "eth0", LinkKind::Physical)]));
        classes.set_uplinks(BTreeSet::from([2, 7]));
        assert_eq!(classes.uplink_names(), ["eth0"]);
        classes.classify(&mut entries);
        assert_eq!(entries[2].kind, LinkKind::Veth, "remembered while listed");
        assert!(!entries[2].default_route);

        // Once no reading lists it, it is forgotten.
        entries.truncate(2);
        classes.classify(&mut entries);
        assert_eq!(classes.kind(7), LinkKind::Unspecified);
        assert_eq!(classes.kind(2), LinkKind::Physical);
    }

    #[test]
    fn a_link_that_comes_back_is_present_again() {
        let mut classes = LinkClasses::default();
        classes.set_links(&[plain(4, "tap0", LinkKind::Tap)]);
        classes.set_links(&[]);
        assert_eq!(classes.kind(4), LinkKind::Tap);
        classes.set_links(&[plain(4, "tun0", LinkKind::Tun)]);
        classes.set_uplinks(BTreeSet::from([4]));
        assert_eq!(classes.kind(4), LinkKind::Tun);
        assert!(classes.default_route(4));
        assert!(classes.departed.is_empty());
    }

    fn with(mut msg: LinkMessage, index: u32, attrs: Vec<LinkAttribute>) -> LinkMessage {
        msg.header.index = index;
        msg.attributes.extend(attrs);
        msg
    }

    #[test]
    fn masters_and_lower_devices_from_the_link_message() {
        // A veth port of a bridge: its master; its IFLA_LINK is the peer.
        let port = with(
            link("vethc0", vec![LinkInfo::Kind(InfoKind::Veth)]),
            7,
            vec![LinkAttribute::Controller(5), LinkAttribute::Link(6)],
        );
        assert_eq!(
            Link::of(&port),
            Some(stacked(7, "vethc0", LinkKind::Veth, 5, 0))
        );
        // A vlan on eth0, itself a port of bond0.
        let vlan = with(
            link("eth0.10", vec![LinkInfo::Kind(InfoKind::Vlan)]),
            9,
            vec![LinkAttribute::Link(2)],
        );
        assert_eq!(
            Link::of(&vlan),
            Some(stacked(9, "eth0.10", LinkKind::Vlan, 0, 2))
        );
        let enslaved = with(
            link("eth0", vec![LinkInfo::PortKind(InfoPortKind::Bond)]),
            2,
            vec![LinkAttribute::Controller(3), LinkAttribute::Link(2)],
        );
        assert_eq!(
            Link::of(&enslaved),
            Some(stacked(2, "eth0", LinkKind::Physical, 3, 0)),
            "a hardware device's IFLA_LINK is itself"
        );
        // A macvlan whose parent is in another namespace: that index means
        // nothing here, whichever order the attributes come in.
        for attrs in [
            vec![LinkAttribute::Link(4), LinkAttribute::LinkNetNsId(0)],
            vec![LinkAttribute::LinkNetNsId(3), LinkAttribute::Link(4)],
        ] {
            let macvlan = with(
                link("mv0", vec![LinkInfo::Kind(InfoKind::MacVlan)]),
                11,
                attrs,
            );
            assert_eq!(link_ifindex(&macvlan, LinkKind::Macvlan), 0);
        }
        // Nothing said: none.
        let bare = with(link("dummy0", vec![]), 12, vec![]);
        assert_eq!(
            (master_ifindex(&bare), link_ifindex(&bare, LinkKind::Other)),
            (0, 0)
        );
        // No name, no link.
        assert_eq!(Link::of(&LinkMessage::default()), None);
    }

    #[test]
    fn readings_get_masters_and_lower_devices() {
        let mut classes = LinkClasses::default();
        let links = [
            plain(2, "eth0", LinkKind::Physical),
            plain(4, "docker0", LinkKind::ContainerBridge),
            stacked(7, "vethc0", LinkKind::Veth, 4, 0),
            stacked(9, "eth0.10", LinkKind::Vlan, 0, 2),
        ];
        assert!(classes.set_links(&links));
        let mut entries = vec![
            entry(crate::ebpf::maps::RETIRED_NAME, 0),
            entry("eth0", 2),
            entry("vethc0", 7),
            entry("eth0.10", 9),
            entry("unknown", 13),
        ];
        let stacking = |entries: &[InterfaceCounters]| -> Vec<(u32, u32)> {
            entries
                .iter()
                .map(|e| (e.master_ifindex, e.link_ifindex))
                .collect()
        };
        classes.classify(&mut entries);
        assert_eq!(stacking(&entries), [(0, 0), (0, 0), (4, 0), (0, 2), (0, 0)]);

        // vethc0 leaves the bridge: a change, and the next reading says so.
        let mut moved = links.clone();
        moved[2].master_ifindex = 0;
        assert!(classes.set_links(&moved));
        classes.classify(&mut entries);
        assert_eq!(entries[2].master_ifindex, 0);

        // It goes away while still listed: what it was is remembered.
        moved[2].master_ifindex = 4;
        classes.set_links(&moved);
        assert!(classes.set_links(&[links[0].clone(), links[1].clone(), links[3].clone()]));
        classes.classify(&mut entries);
        assert_eq!(stacking(&entries)[2], (4, 0));
        entries.remove(2);
        classes.classify(&mut entries);
        assert_eq!(classes.master_ifindex(7), 0, "forgotten once unlisted");
    }
}
