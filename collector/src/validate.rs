//! Checks a heartbeat from the network against the contract's limits
//! (`tally_proto::limits`) and reduces it to what the collector stores.

use tally_proto::{
    limits,
    v1::{FamilyCounters, HeartbeatRequest, InterfaceState, LinkKind},
};

use crate::{
    accounting::{CounterSet, Reading},
    error::Error,
};

/// A checked heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub reading: Reading,
    pub load: [f64; 3],
    pub hostname: String,
    pub kernel: String,
    pub agent_version: String,
    pub source: String,
    pub interfaces: Vec<Interface>,
    /// The node's clock at the reading (Unix ns).
    pub agent_time_unix_ns: i64,
    /// When the epoch began by the node's clock (Unix ns); informational.
    pub epoch_created_unix_ns: i64,
    /// The node's clock minus the collector's at receipt, in milliseconds.
    pub clock_offset_ms: i64,
    /// The last reading of a boot (on stop, or from the reboot journal).
    pub last_of_boot: bool,
}

/// One interface's raw counters, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: i64,
    pub state: &'static str,
    pub rx_bytes: i64,
    pub rx_packets: i64,
    pub tx_bytes: i64,
    pub tx_packets: i64,
    /// The link kind's name (`physical`, `veth`, ...; see [`kind_name`]).
    pub kind: &'static str,
    /// Carries a default route.
    pub default_route: bool,
    /// The IPv4 and IPv6 parts of the counters, when the source tells.
    pub ipv4: Option<Family>,
    pub ipv6: Option<Family>,
    /// The ifindex of its master (bond, bridge) and of the device it is
    /// stacked on (a vlan's parent); 0 for none.
    pub master: i64,
    pub link: i64,
}

/// The part of an interface's counters of one address family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Family {
    pub rx_bytes: i64,
    pub rx_packets: i64,
    pub tx_bytes: i64,
    pub tx_packets: i64,
}

/// The stored name of a link kind ([`LinkKind::name`]); an unspecified kind
/// is taken as physical, as agents that do not report kinds count hardware.
pub fn kind_name(kind: LinkKind) -> &'static str {
    match kind {
        LinkKind::Unspecified => LinkKind::Physical.name(),
        kind => kind.name(),
    }
}

/// The stored name of an interface state: `attached`, `gone`, `retired`,
/// or `unknown` for an unspecified or unknown one (`None`).
pub fn state_name(state: Option<InterfaceState>) -> &'static str {
    match state {
        Some(InterfaceState::Attached) => "attached",
        Some(InterfaceState::Gone) => "gone",
        Some(InterfaceState::Retired) => "retired",
        Some(InterfaceState::Unspecified) | None => "unknown",
    }
}

impl Interface {
    /// A loopback interface (`lo*`): shown, never counted
    /// ([`tally_proto::is_loopback`]).
    pub fn loopback(&self) -> bool {
        tally_proto::is_loopback(&self.name)
    }

    /// Adds `other` (an entry of the same name) into this one; the merged
    /// entry is attached when either is. Sums of checked heartbeats fit.
    pub fn merge(&mut self, other: &Interface) {
        if other.state == "attached" {
            self.state = "attached";
            self.ifindex = other.ifindex;
        }
        self.rx_bytes = self.rx_bytes.saturating_add(other.rx_bytes);
        self.rx_packets = self.rx_packets.saturating_add(other.rx_packets);
        self.tx_bytes = self.tx_bytes.saturating_add(other.tx_bytes);
        self.tx_packets = self.tx_packets.saturating_add(other.tx_packets);
        self.default_route |= other.default_route;
        let add = |a: Option<Family>, b: Option<Family>| match (a, b) {
            (Some(a), Some(b)) => Some(Family {
                rx_bytes: a.rx_bytes.saturating_add(b.rx_bytes),
                rx_packets: a.rx_packets.saturating_add(b.rx_packets),
                tx_bytes: a.tx_bytes.saturating_add(b.tx_bytes),
                tx_packets: a.tx_packets.saturating_add(b.tx_packets),
            }),
            (a, b) => a.or(b),
        };
        self.ipv4 = add(self.ipv4, other.ipv4);
        self.ipv6 = add(self.ipv6, other.ipv6);
    }
}

/// Checks one family's counters against the interface's.
fn family(
    what: &str,
    counters: Option<FamilyCounters>,
    interface: &Interface,
) -> Result<Option<Family>, Error> {
    let Some(c) = counters else {
        return Ok(None);
    };
    let family = Family {
        rx_bytes: counter(what, c.rx_bytes)?,
        rx_packets: counter(what, c.rx_packets)?,
        tx_bytes: counter(what, c.tx_bytes)?,
        tx_packets: counter(what, c.tx_packets)?,
    };
    if family.rx_bytes > interface.rx_bytes
        || family.rx_packets > interface.rx_packets
        || family.tx_bytes > interface.tx_bytes
        || family.tx_packets > interface.tx_packets
    {
        return Err(invalid(format!(
            "{what} counters of {:?} exceed the interface's",
            interface.name
        )));
    }
    Ok(Some(family))
}

/// Checks `request`, received when the collector's clock said
/// `now_unix_ns`. The node's clock is never a reason to refuse: it is only
/// compared with ours ([`Heartbeat::clock_offset_ms`]).
pub fn heartbeat(request: HeartbeatRequest, now_unix_ns: i64) -> Result<Heartbeat, Error> {
    bounded("boot_id", &request.boot_id, limits::MAX_BOOT_ID)?;
    bounded("epoch", &request.epoch, limits::MAX_EPOCH)?;
    bounded("hostname", &request.hostname, limits::MAX_HOSTNAME)?;
    bounded(
        "kernel_release",
        &request.kernel_release,
        limits::MAX_KERNEL_RELEASE,
    )?;
    bounded(
        "agent_version",
        &request.agent_version,
        limits::MAX_AGENT_VERSION,
    )?;
    bounded("source", &request.source, limits::MAX_SOURCE)?;
    if request.boot_id.is_empty() || request.epoch.is_empty() {
        return Err(invalid("boot_id and epoch must not be empty"));
    }
    let created = counter("epoch_created_unix_ns", request.epoch_created_unix_ns)?;
    let agent_time = counter("agent_time_unix_ns", request.agent_time_unix_ns)?;
    let generation = counter("generation", request.generation)?;
    let sequence = counter("sequence", request.sequence)?;
    if request.interfaces.len() > limits::MAX_INTERFACES {
        return Err(invalid(format!(
            "{} interfaces (at most {})",
            request.interfaces.len(),
            limits::MAX_INTERFACES
        )));
    }
    let load = request
        .load
        .map(|l| [l.one, l.five, l.fifteen])
        .ok_or_else(|| invalid("load is missing"))?;
    if load.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(invalid("load averages must be finite and not negative"));
    }
    let mut interfaces = Vec::with_capacity(request.interfaces.len());
    let (mut rx, mut tx) = (0i64, 0i64);
    for entry in request.interfaces {
        bounded("interface name", &entry.name, limits::MAX_INTERFACE_NAME)?;
        if entry.name.is_empty() {
            return Err(invalid("an interface has an empty name"));
        }
        let mut interface = Interface {
            state: state_name(InterfaceState::try_from(entry.state).ok()),
            ifindex: i64::from(entry.ifindex),
            rx_bytes: counter("rx_bytes", entry.rx_bytes)?,
            rx_packets: counter("rx_packets", entry.rx_packets)?,
            tx_bytes: counter("tx_bytes", entry.tx_bytes)?,
            tx_packets: counter("tx_packets", entry.tx_packets)?,
            kind: kind_name(LinkKind::try_from(entry.kind).unwrap_or(LinkKind::Other)),
            default_route: entry.default_route,
            ipv4: None,
            ipv6: None,
            master: i64::from(entry.master_ifindex),
            link: i64::from(entry.link_ifindex),
            name: entry.name,
        };
        interface.ipv4 = family("ipv4", entry.ipv4, &interface)?;
        interface.ipv6 = family("ipv6", entry.ipv6, &interface)?;
        if let (Some(v4), Some(v6)) = (interface.ipv4, interface.ipv6)
            && (v4
                .rx_bytes
                .checked_add(v6.rx_bytes)
                .is_none_or(|b| b > interface.rx_bytes)
                || v4
                    .tx_bytes
                    .checked_add(v6.tx_bytes)
                    .is_none_or(|b| b > interface.tx_bytes))
        {
            return Err(invalid(format!(
                "the ipv4 and ipv6 counters of {:?} add up to more than the interface's",
                interface.name
            )));
        }
        if !interface.loopback() {
            rx = rx
                .checked_add(interface.rx_bytes)
                .ok_or_else(|| invalid("the rx_bytes sum exceeds 2^63 - 1"))?;
            tx = tx
                .checked_add(interface.tx_bytes)
                .ok_or_else(|| invalid("the tx_bytes sum exceeds 2^63 - 1"))?;
        }
        interfaces.push(interface);
    }
    Ok(Heartbeat {
        reading: Reading {
            set: CounterSet {
                boot_id: request.boot_id,
                epoch: request.epoch,
            },
            generation,
            starts_at_zero: request.counters_start_at_zero,
            sequence,
            rx,
            tx,
        },
        load,
        hostname: request.hostname,
        kernel: request.kernel_release,
        agent_version: request.agent_version,
        source: request.source,
        interfaces,
        agent_time_unix_ns: agent_time,
        epoch_created_unix_ns: created,
        clock_offset_ms: agent_time.saturating_sub(now_unix_ns) / 1_000_000,
        last_of_boot: request.last_of_boot,
    })
}

/// A text field: at most `max` bytes, and no control character (NUL among
/// them, which PostgreSQL refuses in text: one node's NUL must not fail a
/// batch of other nodes' heartbeats).
fn bounded(what: &str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(invalid(format!(
            "{what} is {} bytes long (at most {max})",
            value.len()
        )));
    }
    if let Some(control) = value.chars().find(|c| c.is_control()) {
        return Err(invalid(format!(
            "{what} contains the control character U+{:04X}",
            u32::from(control)
        )));
    }
    Ok(())
}

fn counter(what: &str, value: u64) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| invalid(format!("{what} exceeds 2^63 - 1")))
}

fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}

#[cfg(test)]
mod tests {
    use tally_proto::v1::{InterfaceCounters, LoadAverage};

    use super::*;

    const NOW: i64 = 1_800_000_000_000_000_000;

    fn request() -> HeartbeatRequest {
        HeartbeatRequest {
            boot_id: "b".into(),
            epoch: "e".into(),
            epoch_created_unix_ns: 1,
            counters_start_at_zero: true,
            sequence: 7,
            agent_time_unix_ns: NOW as u64,
            interfaces: vec![iface("eth0", 10, 20), iface("eth1", 5, 6)],
            load: Some(LoadAverage {
                one: 0.5,
                five: 0.25,
                fifteen: 0.0,
            }),
            hostname: "h".into(),
            kernel_release: "6.1".into(),
            agent_version: "0.1.0".into(),
            source: "ebpf".into(),
            ..HeartbeatRequest::default()
        }
    }

    fn iface(name: &str, rx: u64, tx: u64) -> InterfaceCounters {
        InterfaceCounters {
            name: name.into(),
            ifindex: 2,
            rx_bytes: rx,
            rx_packets: 1,
            tx_bytes: tx,
            tx_packets: 1,
            state: InterfaceState::Attached as i32,
            ..InterfaceCounters::default()
        }
    }

    fn refused(request: HeartbeatRequest) -> String {
        match heartbeat(request, NOW) {
            Err(Error::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn sums_the_interfaces() {
        let hb = heartbeat(request(), NOW).expect("valid");
        assert_eq!((hb.reading.rx, hb.reading.tx), (15, 26));
        assert_eq!(hb.reading.sequence, 7);
        assert_eq!(hb.interfaces[0].state, "attached");
    }

    #[test]
    fn limits_are_enforced() {
        let mut r = request();
        r.hostname = "x".repeat(254);
        assert!(refused(r).contains("hostname is 254 bytes"));
        let mut r = request();
        r.interfaces.push(iface("a-very-long-interface-name", 0, 0));
        assert!(refused(r).contains("interface name"));
        let mut r = request();
        r.interfaces = (0..=limits::MAX_INTERFACES)
            .map(|_| iface("x", 0, 0))
            .collect();
        assert!(refused(r).contains("interfaces (at most"));
    }

    #[test]
    fn control_characters_are_refused_in_every_text_field() {
        type Field = fn(&mut HeartbeatRequest) -> &mut String;
        let fields: [(&str, Field); 7] = [
            ("boot_id", |r| &mut r.boot_id),
            ("epoch", |r| &mut r.epoch),
            ("hostname", |r| &mut r.hostname),
            ("kernel_release", |r| &mut r.kernel_release),
            ("agent_version", |r| &mut r.agent_version),
            ("source", |r| &mut r.source),
            ("interface name", |r| &mut r.interfaces[1].name),
        ];
        for (what, field) in fields {
            for control in ['\0', '\n', '\x7f', '\u{85}'] {
                let mut r = request();
                field(&mut r).push(control);
                let message = refused(r);
                assert!(
                    message.starts_with(what) && message.contains("control character U+"),
                    "{what}: {message}"
                );
            }
        }
        // Other characters are fine, multi-byte ones too.
        let mut r = request();
        r.hostname = "hôte-ünïcode".into();
        heartbeat(r, NOW).expect("valid");
    }

    #[test]
    fn a_name_may_appear_twice() {
        // An interface that went away keeps its entry while a new one takes
        // its name: both count.
        let mut r = request();
        r.interfaces.push(iface("eth0", 1, 1));
        let hb = heartbeat(r, NOW).expect("valid");
        assert_eq!((hb.reading.rx, hb.reading.tx), (16, 27));
    }

    #[test]
    fn counters_and_sums_fit_in_bigint() {
        let mut r = request();
        r.sequence = u64::MAX;
        assert!(refused(r).contains("sequence exceeds"));
        let mut r = request();
        r.interfaces = vec![iface("a", i64::MAX as u64, 0), iface("b", 1, 0)];
        assert!(refused(r).contains("rx_bytes sum"));
    }

    #[test]
    fn a_wrong_clock_is_measured_not_refused() {
        let day = 86_400_000_000_000u64;
        let mut r = request();
        r.agent_time_unix_ns = NOW as u64 + 2 * day + 5_000_000;
        r.epoch_created_unix_ns = NOW as u64 + 3 * day;
        let hb = heartbeat(r, NOW).expect("a clock ahead is no refusal");
        assert_eq!(hb.clock_offset_ms, 2 * 86_400_000 + 5);
        assert_eq!(hb.epoch_created_unix_ns, NOW + 3 * day as i64);
        // A clock at 1970.
        let mut r = request();
        r.agent_time_unix_ns = 1_000_000_000;
        r.epoch_created_unix_ns = 0;
        let hb = heartbeat(r, NOW).expect("a clock behind is no refusal");
        assert_eq!(hb.clock_offset_ms, (1_000_000_000 - NOW) / 1_000_000);
        let mut r = request();
        r.agent_time_unix_ns = u64::MAX;
        assert!(refused(r).contains("agent_time_unix_ns exceeds"));
        let mut r = request();
        r.generation = u64::MAX;
        assert!(refused(r).contains("generation exceeds"));
    }

    #[test]
    fn bad_loads_and_empty_ids_are_refused() {
        let mut r = request();
        r.load = Some(LoadAverage {
            one: f64::NAN,
            five: 0.0,
            fifteen: 0.0,
        });
        assert!(refused(r).contains("finite"));
        let mut r = request();
        r.load = None;
        assert!(refused(r).contains("load is missing"));
        let mut r = request();
        r.epoch = String::new();
        assert!(refused(r).contains("must not be empty"));
    }
}
