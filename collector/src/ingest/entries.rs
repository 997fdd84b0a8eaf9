//! Per-interface deltas of one applied heartbeat: which entries
//! count under the node's rule, which deltas are too large to be real (held
//! as anomalies instead of counted), and the IPv4/IPv6 parts. Pure: the
//! node's previous per-entry raw values come in as [`InterfacePositions`], the new
//! ones go out.
//!
//! Under [`CountRule::All`] the counted delta is the node's summed delta
//! (Σ now − Σ previous over every entry, as [`crate::accounting`] decides
//! it), less what is held. Under [`CountRule::Uplink`] it is the sum of the
//! deltas of the entries that are uplinks now ([`uplinks`]), an entry new in
//! the epoch counting from zero.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{billing::CountRule, validate::Interface};

/// One entry's raw values as stored in `nodes.positions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfacePosition {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "i")]
    pub ifindex: i64,
    pub rx: i64,
    pub tx: i64,
    /// IPv4 rx, tx bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<[i64; 2]>,
    /// IPv6 rx, tx bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<[i64; 2]>,
}

/// Every entry's raw values within the node's current epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfacePositions {
    #[serde(rename = "e")]
    pub entries: Vec<InterfacePosition>,
    /// The sequence of the heartbeat they are of: positions written by a
    /// collector that did not keep them up to date (an older version,
    /// during a rolling upgrade) do not match the node's last sequence and
    /// are not used.
    #[serde(rename = "s", default)]
    pub sequence: i64,
}

impl InterfacePositions {
    /// The positions after a heartbeat with these entries.
    pub fn of(interfaces: &[Interface]) -> Self {
        Self {
            entries: interfaces
                .iter()
                .filter(|i| !i.loopback())
                .map(|i| InterfacePosition {
                    name: i.name.clone(),
                    ifindex: i.ifindex,
                    rx: i.rx_bytes,
                    tx: i.tx_bytes,
                    v4: i.ipv4.map(|f| [f.rx_bytes, f.tx_bytes]),
                    v6: i.ipv6.map(|f| [f.rx_bytes, f.tx_bytes]),
                })
                .collect(),
            sequence: 0,
        }
    }

    /// The entries by (name, ifindex): a heartbeat may list thousands.
    fn index(&self) -> HashMap<(&str, i64), &InterfacePosition> {
        self.entries
            .iter()
            .map(|p| ((p.name.as_str(), p.ifindex), p))
            .collect()
    }
}

/// What the previous values of a heartbeat's entries are.
#[derive(Debug, Clone, Copy)]
pub enum Previous<'a> {
    /// The first heartbeat of an epoch whose counters started at zero:
    /// every entry counts from zero.
    Zero,
    /// The first heartbeat of an epoch whose counters started elsewhere: a
    /// baseline, nothing counts.
    Baseline,
    /// The stored positions of the same epoch.
    Stored(&'a InterfacePositions),
    /// The same epoch, but no per-entry positions are stored (a node last
    /// seen by an older collector): only the summed delta is known.
    Unknown,
}

/// A delta held instead of counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub name: String,
    pub ifindex: i64,
    pub upload: i64,
    pub download: i64,
    /// The most bytes per direction the interface could have carried.
    pub limit: i64,
}

/// What a heartbeat adds, by the node's rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counted {
    pub upload: i64,
    pub download: i64,
    /// IPv4 and IPv6 bytes (upload, download) of the counted entries.
    pub ipv4: (i64, i64),
    pub ipv6: (i64, i64),
    pub held: Vec<Held>,
}

/// The limits of the anomaly guard.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// Bytes per second per interface and direction.
    pub max_rate: i64,
    /// The time the heartbeat covers, nanoseconds (node clock).
    pub elapsed_ns: i64,
}

impl Guard {
    /// The most bytes one direction can carry in the elapsed time, with a
    /// second of slack for timing jitter.
    pub fn limit(&self) -> i64 {
        let nanos = i128::from(self.elapsed_ns.max(0)) + 1_000_000_000;
        let bytes = i128::from(self.max_rate) * nanos / 1_000_000_000;
        i64::try_from(bytes).unwrap_or(i64::MAX)
    }
}

/// The counted part of a heartbeat. `summed` is the node's summed delta
/// (download, upload) as [`crate::accounting::decide`] found it.
pub fn count(
    interfaces: &[Interface],
    previous: Previous<'_>,
    rule: CountRule,
    summed: (i64, i64),
    guard: Guard,
) -> Counted {
    let mut counted = Counted::default();
    if matches!(previous, Previous::Baseline) {
        return counted;
    }
    let limit = guard.limit();
    let uplinks = match rule {
        CountRule::All => HashSet::new(),
        CountRule::Uplink => uplinks(interfaces),
    };
    let stored = match previous {
        Previous::Stored(positions) => positions.index(),
        _ => HashMap::new(),
    };
    let (mut rule_down, mut rule_up) = (0i64, 0i64);
    for (index, entry) in interfaces.iter().enumerate() {
        if entry.state == "retired" || entry.loopback() {
            continue;
        }
        let before = match previous {
            Previous::Stored(_) => stored.get(&(entry.name.as_str(), entry.ifindex)).copied(),
            _ => None,
        };
        let known = !matches!(previous, Previous::Unknown);
        let zero = InterfacePosition::default();
        let before = before.unwrap_or(&zero);
        let down = (entry.rx_bytes - before.rx).max(0);
        let up = (entry.tx_bytes - before.tx).max(0);
        let counts = match rule {
            CountRule::All => true,
            CountRule::Uplink => uplinks.contains(&index),
        };
        if !counts || !known {
            continue;
        }
        if down > limit || up > limit {
            counted.held.push(Held {
                name: entry.name.clone(),
                ifindex: entry.ifindex,
                upload: up,
                download: down,
                limit,
            });
            continue;
        }
        rule_down += down;
        rule_up += up;
        let family = |now: Option<crate::validate::Family>, before: Option<[i64; 2]>| {
            now.map_or((0, 0), |f| {
                let [rx, tx] = before.unwrap_or([0, 0]);
                ((f.tx_bytes - tx).max(0), (f.rx_bytes - rx).max(0))
            })
        };
        let v4 = family(entry.ipv4, before.v4);
        let v6 = family(entry.ipv6, before.v6);
        counted.ipv4 = (counted.ipv4.0 + v4.0, counted.ipv4.1 + v4.1);
        counted.ipv6 = (counted.ipv6.0 + v6.0, counted.ipv6.1 + v6.1);
    }
    let held_down: i64 = counted.held.iter().map(|h| h.download).sum();
    let held_up: i64 = counted.held.iter().map(|h| h.upload).sum();
    (counted.download, counted.upload) = match rule {
        CountRule::All => ((summed.0 - held_down).max(0), (summed.1 - held_up).max(0)),
        CountRule::Uplink if known_previous(previous) => (rule_down, rule_up),
        // Without per-entry positions nothing is known per entry: this
        // heartbeat is the baseline of the uplink rule.
        CountRule::Uplink => (0, 0),
    };
    counted
}

/// The entries (by position) that count under [`CountRule::Uplink`]: those
/// carrying a default route, and hardware interfaces that no default-route
/// interface is stacked on, directly or not (a bond or bridge they are a
/// port of, a vlan on them, a bridge over that bond...): traffic crossing a
/// NIC and the bond, bridge or vlan above it is counted once, on the
/// interface that carries the route. The retired entry never counts.
pub fn uplinks(interfaces: &[Interface]) -> HashSet<usize> {
    let live: Vec<(usize, &Interface)> = interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| i.state != "retired" && i.ifindex > 0 && !i.loopback())
        .collect();
    // Which interfaces are stacked on each one (its master; a vlan on it).
    let mut above: HashMap<i64, Vec<i64>> = HashMap::new();
    for (_, i) in &live {
        if i.master > 0 && i.master != i.ifindex {
            above.entry(i.ifindex).or_default().push(i.master);
        }
        if i.link > 0 && i.link != i.ifindex {
            above.entry(i.link).or_default().push(i.ifindex);
        }
    }
    let routed: HashSet<i64> = live
        .iter()
        .filter(|(_, i)| i.default_route)
        .map(|(_, i)| i.ifindex)
        .collect();
    let under_a_route = |ifindex: i64| {
        let mut seen = HashSet::from([ifindex]);
        let mut next = above.get(&ifindex).cloned().unwrap_or_default();
        while let Some(upper) = next.pop() {
            if routed.contains(&upper) {
                return true;
            }
            if seen.insert(upper) {
                next.extend(above.get(&upper).into_iter().flatten());
            }
        }
        false
    };
    live.iter()
        .filter(|(_, i)| i.default_route || (i.kind == "physical" && !under_a_route(i.ifindex)))
        .map(|(index, _)| *index)
        .collect()
}

fn known_previous(previous: Previous<'_>) -> bool {
    !matches!(previous, Previous::Unknown | Previous::Baseline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Family;

    fn entry(name: &str, ifindex: i64, kind: &'static str, rx: i64, tx: i64) -> Interface {
        Interface {
            name: name.into(),
            ifindex,
            state: "attached",
            rx_bytes: rx,
            rx_packets: 1,
            tx_bytes: tx,
            tx_packets: 1,
            kind,
            default_route: false,
            ipv4: None,
            ipv6: None,
            master: 0,
            link: 0,
        }
    }

    const WIDE: Guard = Guard {
        max_rate: i64::MAX / 4,
        elapsed_ns: 1_000_000_000,
    };

    /// A container host: uplink eth0 (routed), a docker bridge, a veth port.
    fn host(scale: i64) -> Vec<Interface> {
        let mut uplink = entry("ens3", 2, "veth", 100 * scale, 50 * scale);
        uplink.default_route = true;
        vec![
            uplink,
            entry("docker0", 3, "container_bridge", 80 * scale, 40 * scale),
            entry("veth1a2b", 7, "veth", 40 * scale, 80 * scale),
            entry("eth1", 4, "physical", 5 * scale, 5 * scale),
        ]
    }

    fn sums(interfaces: &[Interface]) -> (i64, i64) {
        interfaces
            .iter()
            .fold((0, 0), |(d, u), i| (d + i.rx_bytes, u + i.tx_bytes))
    }

    #[test]
    fn all_counts_the_summed_delta_and_uplink_only_uplinks_and_hardware() {
        let before = host(1);
        let now = host(3);
        let positions = InterfacePositions::of(&before);
        let (d0, u0) = sums(&before);
        let (d1, u1) = sums(&now);
        let all = count(
            &now,
            Previous::Stored(&positions),
            CountRule::All,
            (d1 - d0, u1 - u0),
            WIDE,
        );
        assert_eq!((all.download, all.upload), (2 * 225, 2 * 175));
        let uplink = count(
            &now,
            Previous::Stored(&positions),
            CountRule::Uplink,
            (d1 - d0, u1 - u0),
            WIDE,
        );
        // ens3 (default route) and eth1 (hardware) only.
        assert_eq!((uplink.download, uplink.upload), (2 * 105, 2 * 55));
    }

    #[test]
    fn a_new_epoch_counts_from_zero_and_a_baseline_counts_nothing() {
        let now = host(1);
        let counted = count(&now, Previous::Zero, CountRule::Uplink, (0, 0), WIDE);
        assert_eq!((counted.download, counted.upload), (105, 55));
        let counted = count(&now, Previous::Baseline, CountRule::All, (9, 9), WIDE);
        assert_eq!(counted, Counted::default());
        // Without stored positions the uplink rule starts a baseline.
        let counted = count(&now, Previous::Unknown, CountRule::Uplink, (9, 9), WIDE);
        assert_eq!((counted.download, counted.upload), (0, 0));
        let counted = count(&now, Previous::Unknown, CountRule::All, (9, 8), WIDE);
        assert_eq!((counted.download, counted.upload), (9, 8));
    }

    #[test]
    fn the_default_route_moving_moves_what_counts() {
        let before = host(1);
        let positions = InterfacePositions::of(&before);
        let mut now = host(2);
        now[0].default_route = false;
        now[2].default_route = true;
        let counted = count(
            &now,
            Previous::Stored(&positions),
            CountRule::Uplink,
            (0, 0),
            WIDE,
        );
        // veth1a2b (now routed, +40/+80) and eth1 (+5/+5).
        assert_eq!((counted.download, counted.upload), (45, 85));
    }

    #[test]
    fn too_large_a_delta_is_held_not_counted() {
        let before = host(1);
        let positions = InterfacePositions::of(&before);
        let mut now = host(1);
        now[1].rx_bytes += 5_000;
        now[3].tx_bytes += 10;
        let guard = Guard {
            max_rate: 1_000,
            elapsed_ns: 2_000_000_000,
        };
        assert_eq!(guard.limit(), 3_000);
        let counted = count(
            &now,
            Previous::Stored(&positions),
            CountRule::All,
            (5_000, 10),
            guard,
        );
        assert_eq!(
            counted.held,
            vec![Held {
                name: "docker0".into(),
                ifindex: 3,
                upload: 0,
                download: 5_000,
                limit: 3_000,
            }]
        );
        assert_eq!((counted.download, counted.upload), (0, 10));
        // Not counted under the uplink rule: not held either.
        let counted = count(
            &now,
            Previous::Stored(&positions),
            CountRule::Uplink,
            (5_000, 10),
            guard,
        );
        assert!(counted.held.is_empty());
        assert_eq!((counted.download, counted.upload), (0, 10));
    }

    #[test]
    fn families_are_split_per_counted_entry() {
        let mut before = host(1);
        before[0].ipv4 = Some(Family {
            rx_bytes: 60,
            tx_bytes: 30,
            ..Family::default()
        });
        before[0].ipv6 = Some(Family {
            rx_bytes: 40,
            tx_bytes: 20,
            ..Family::default()
        });
        let positions = InterfacePositions::of(&before);
        let mut now = before.clone();
        now[0].rx_bytes += 1_000;
        now[0].tx_bytes += 100;
        now[0].ipv4 = Some(Family {
            rx_bytes: 60 + 700,
            tx_bytes: 30 + 60,
            ..Family::default()
        });
        now[0].ipv6 = Some(Family {
            rx_bytes: 40 + 250,
            tx_bytes: 20 + 40,
            ..Family::default()
        });
        let counted = count(
            &now,
            Previous::Stored(&positions),
            CountRule::Uplink,
            (1_000, 100),
            WIDE,
        );
        assert_eq!(counted.ipv4, (60, 700));
        assert_eq!(counted.ipv6, (40, 250));
        assert_eq!((counted.download, counted.upload), (1_000, 100));
    }

    #[test]
    fn hardware_under_a_routed_bond_bridge_or_vlan_is_not_counted_again() {
        let with = |mut i: Interface, master: i64, link: i64, route: bool| {
            i.master = master;
            i.link = link;
            i.default_route = route;
            i
        };
        // eth0, eth1 -> bond0 -> vmbr0 (routed); eth2 -> vlan eth2.7
        // (routed); eth3 alone; a tap port of vmbr0; wg0 routed too.
        let host = vec![
            with(entry("eth0", 2, "physical", 0, 0), 10, 0, false),
            with(entry("eth1", 3, "physical", 0, 0), 10, 0, false),
            with(entry("bond0", 10, "bond", 0, 0), 11, 0, false),
            with(entry("vmbr0", 11, "bridge", 0, 0), 0, 0, true),
            with(entry("tap100", 12, "tap", 0, 0), 11, 0, false),
            with(entry("eth2", 4, "physical", 0, 0), 0, 0, false),
            with(entry("eth2.7", 13, "vlan", 0, 0), 0, 4, true),
            with(entry("eth3", 5, "physical", 0, 0), 0, 0, false),
            with(entry("wg0", 14, "wireguard", 0, 0), 0, 0, true),
        ];
        let mut counted: Vec<&str> = uplinks(&host)
            .into_iter()
            .map(|i| host[i].name.as_str())
            .collect();
        counted.sort_unstable();
        assert_eq!(counted, ["eth2.7", "eth3", "vmbr0", "wg0"]);
        // A loop in what the agent says cannot hang the collector.
        let looped = vec![
            with(entry("a", 2, "physical", 0, 0), 3, 0, false),
            with(entry("b", 3, "bond", 0, 0), 2, 0, false),
        ];
        assert_eq!(uplinks(&looped), HashSet::from([0]));
    }

    #[test]
    fn positions_round_trip_as_json() {
        let positions = InterfacePositions::of(&host(1));
        let text = serde_json::to_string(&positions).expect("serialises");
        assert!(
            text.starts_with(r#"{"e":[{"n":"ens3","i":2,"rx":100,"tx":50}"#),
            "{text}"
        );
        let back: InterfacePositions = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, positions);
    }
}
